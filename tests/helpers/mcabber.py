"""mcabber 1.1.2 (Debian, built with libotr 4.1) as a real OTR peer, run in a private tmux server.

    peer = Mcabber(tmp_path / "bob", jid=lab.xmpp.jid("bob"), password=lab.users["bob"],
                   service=lab.xmpp)
    try:
        peer.start()                              # waits for hook-post-connect (roster received)
        peer.command("/otr start alice@byline.lab")
        peer.wait_buffer("alice@byline.lab", r"OTR: channel established", timeout=10)
        peer.wait_log(r"wants to subscribe")      # trace, events and history files
    finally:
        peer.stop()                               # SIGKILL mcabber and its tmux server by PID

Measured with mcabber 1.1.2 (Debian):

- Private HOME, a generated ``mcabberrc`` (mode 0600) with the password read from a file through
  ``password_eval = "cat FILE"`` (never on a command line), STARTTLS with the lab CA (``ssl_ca``;
  it verifies the certificate and prints "Remote fingerprint"), ``set otr = 1`` and
  ``otrpolicy default opportunistic``. ``otr_dir`` must exist (0700) or key generation fails.
- Commands go through the ``fifo`` module (one line each, as typed at its prompt).
- The trace log (level 1) holds its status window (subscription requests, "Executing FIFO
  command", ``/otr info`` answers such as "alice@x: encrypted (no offer sent) [opportunistic]");
  ``events.log`` what ``events_command`` got (with the bodies of incoming messages);
  ``histo/<jid>`` its history (plaintext of messages in and out).
- OTR and SMP status lines ("OTR: channel established", "OTR: Socialist Millionaires' Protocol:
  Success!") go only to the contact's chat buffer: ``buddy_buffer`` selects the contact, opens chat
  mode with an Enter key (``/buffer`` refuses without it) and ``/buffer save``s it. There "<O=" is
  a message received OTR-encrypted and "-O>" one sent OTR-encrypted.
- ``/otr smpq JID SECRET`` starts SMP without a question (mcabber only calls
  ``otrl_message_initiate_smp``); a question we send is not shown, only "Received SMP Initiation".
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

START_TIMEOUT_S = 20
POLL_S = 0.05
CONNECTED_MARK = "Running hook-post-connect"


class McabberError(Exception):
    pass


class Mcabber:
    def __init__(self, directory: Path, *, jid: str, password: str, service, resource: str = "mcabber"):
        self.directory = Path(directory)
        self.jid = jid
        self.password = password
        self.service = service
        self.resource = resource
        self.home = self.directory / "home"
        self.rc_path = self.home / ".mcabber" / "mcabberrc"
        self.fifo_path = self.directory / "mcabber.fifo"
        self.trace_path = self.directory / "trace.log"
        self.events_path = self.directory / "events.log"
        self.event_files = self.directory / "event-files"
        self.histo_dir = self.directory / "histo"
        self.socket_path = self.directory / "tmux.sock"
        self.server_pid: int | None = None
        self.mcabber_pid: int | None = None
        self._saves = 0

    # --- lifecycle ---

    def _write_config(self) -> None:
        (self.home / ".mcabber").mkdir(parents=True, exist_ok=True)
        os.chmod(self.home / ".mcabber", 0o700)
        self.event_files.mkdir(parents=True, exist_ok=True)
        for private in (self.histo_dir, self.home / ".mcabber" / "otr"):
            private.mkdir(parents=True, exist_ok=True)
            os.chmod(private, 0o700)
        password_file = self.directory / "password"
        password_file.write_text(self.password)
        os.chmod(password_file, 0o600)
        script = self.directory / "eventcmd"
        script.write_text(
            "#!/bin/sh\n"
            f"out='{self.events_path}'\n"
            'echo "EVENT $1 $2 $3" >> "$out"\n'
            'if [ -n "$4" ] && [ -f "$4" ]; then sed "s/^/BODY $3 /" "$4" >> "$out"; '
            'echo >> "$out"; rm -f "$4"; fi\n'
        )
        os.chmod(script, 0o700)
        lines = [
            f"set jid = {self.jid}",
            f"set password_eval = \"cat {password_file}\"",
            f"set server = {self.service.host}",
            f"set port = {self.service.port}",
            f"set resource = {self.resource}",
            "set disable_random_resource = 1",
            "set tls = 1",
            f"set ssl_ca = {self.service.ca_path}",
            "set otr = 1",
            f"set otr_dir = \"{self.home / '.mcabber' / 'otr'}/\"",
            "otrpolicy default opportunistic",
            f"set fifo_name = {self.fifo_path}",
            "module load fifo",
            f"set events_command = {script}",
            "set event_log_files = 1",
            f"set event_log_dir = {self.event_files}",
            "set logging = 1",
            f"set logging_dir = {self.histo_dir}",
            "set tracelog_level = 1",
            f"set tracelog_file = {self.trace_path}",
            "set hook-post-connect = status online",
            "set beep_on_message = 0",
        ]
        self.rc_path.write_text("\n".join(lines) + "\n")
        os.chmod(self.rc_path, 0o600)

    def start(self) -> Mcabber:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write_config()
        env = {
            "HOME": str(self.home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "TERM": "xterm", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
        }
        # the tmux server has no config (-f /dev/null) and its own socket: nothing is shared
        subprocess.run(
            ["tmux", "-S", str(self.socket_path), "-f", "/dev/null", "new-session", "-d",
             "-x", "200", "-y", "50", "exec mcabber -f " + str(self.rc_path)],
            env=env, check=True, timeout=10, capture_output=True,
        )
        try:
            shown = subprocess.run(
                ["tmux", "-S", str(self.socket_path), "display-message", "-p", "#{pid} #{pane_pid}"],
                env=env, check=True, timeout=10, capture_output=True, text=True,
            ).stdout.split()
            self.server_pid, self.mcabber_pid = int(shown[0]), int(shown[1])
        except (subprocess.SubprocessError, ValueError, IndexError):
            # no PIDs to kill by: end this private server (only ours listens on this socket)
            subprocess.run(["tmux", "-S", str(self.socket_path), "kill-server"], check=False,
                           capture_output=True, timeout=10)
            raise
        self.wait_log(CONNECTED_MARK, timeout=START_TIMEOUT_S)
        deadline = time.monotonic() + 5
        while not self.fifo_path.exists():
            if time.monotonic() > deadline:
                raise McabberError("mcabber made no fifo")
            time.sleep(POLL_S)
        return self

    def stop(self) -> None:
        """Kill mcabber, what it forked and the tmux server, by their PIDs (idempotent).

        mcabber forks for ``events_command``; such a child was seen stuck in a futex before its
        exec (fork of a threaded process) and outliving mcabber: its children are listed first."""
        pids = []
        if self.mcabber_pid is not None:
            pids += _descendants(self.mcabber_pid) + [self.mcabber_pid]
        if self.server_pid is not None:
            pids.append(self.server_pid)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in pids:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(POLL_S)
        self.mcabber_pid = self.server_pid = None

    # --- driving it ---

    def command(self, line: str) -> None:
        """One command line, as typed at mcabber's prompt, through its fifo."""
        if "\n" in line:
            raise ValueError("one line only")
        fd = os.open(self.fifo_path, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def buddy_buffer(self, jid: str) -> str:
        """The text of ``jid``'s chat buffer (where mcabber writes its OTR and SMP status lines):
        selects the buddy and saves the buffer with ``/buffer save``."""
        self._saves += 1
        path = self.directory / f"buffer-{self._saves}.txt"
        self.command(f"/roster search {jid}")
        time.sleep(0.1)
        # /buffer needs chat mode, which only a key opens: Enter on an empty input line
        subprocess.run(["tmux", "-S", str(self.socket_path), "send-keys", "Enter"],
                       capture_output=True, timeout=5, check=True)
        time.sleep(0.1)
        self.command(f"/buffer save {path}")
        deadline = time.monotonic() + 5
        while not path.exists():
            if time.monotonic() > deadline:
                raise McabberError(f"mcabber did not save the buffer of {jid}")
            time.sleep(POLL_S)
        time.sleep(0.1)  # written at once, but be safe
        return path.read_text(errors="replace")

    def wait_buffer(self, jid: str, pattern: str, timeout: float = 10, count: int = 1) -> str:
        """Wait for ``count`` matches of ``pattern`` in ``jid``'s chat buffer; returns the buffer."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            text = self.buddy_buffer(jid)
            if len(regex.findall(text)) >= count:
                return text
            if time.monotonic() > deadline:
                raise McabberError(f"no {pattern!r} (x{count}) in mcabber's buffer of {jid} within "
                                   f"{timeout} s:\n{text}")
            time.sleep(0.3)

    def logs(self) -> str:
        parts = []
        for path in (self.trace_path, self.events_path, *sorted(self.histo_dir.glob("*"))):
            if path.is_file():
                parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')}")
        return "\n".join(parts)

    def screen(self) -> str:
        if self.server_pid is None:
            return ""
        result = subprocess.run(["tmux", "-S", str(self.socket_path), "capture-pane", "-p"],
                                check=False, capture_output=True, text=True, timeout=5)
        return result.stdout

    def wait_log(self, pattern: str, timeout: float = 10, *, start: int = 0) -> re.Match:
        """Wait for ``pattern`` in the trace log, the events log or the history files."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = regex.search(self.logs(), start)
            if found:
                return found
            if time.monotonic() > deadline:
                raise McabberError(f"no {pattern!r} from mcabber within {timeout} s")
            if self.mcabber_pid is not None and not _alive(self.mcabber_pid):
                raise McabberError("mcabber exited")
            time.sleep(POLL_S)


def _descendants(pid: int) -> list[int]:
    """The PIDs of ``pid``'s children, grandchildren, ... (from /proc), deepest first."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        children = parents.get(pending.pop(), [])
        found.extend(children)
        pending.extend(children)
    return found[::-1]


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie that is not our child still answers kill(0): check its state
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def available() -> bool:
    return shutil.which("mcabber") is not None and shutil.which("tmux") is not None
