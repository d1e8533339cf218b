"""Free loopback ports and lab server processes that are always stopped.

Every server runs under a guardian (``lab/_guardian.py``) in a process group of its own: ``stop()``
ends the whole group by its id (SIGTERM, then SIGKILL after ``STOP_GRACE_SECONDS``), and the
guardian does the same by itself when the owning Python process dies without stopping it. The
owner must not fork without exec while a server runs (a forked copy would keep it alive).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
STOP_GRACE_SECONDS = 5.0
READY_POLL_INTERVAL_SECONDS = 0.05
EXIT_POLL_INTERVAL_SECONDS = 0.02
PORT_ALLOCATION_ATTEMPTS = 50
PORT_RACE_ATTEMPTS = 3
LOG_TAIL_LINES = 60
GUARDIAN_SCRIPT = Path(__file__).with_name("_guardian.py")


class LabError(RuntimeError):
    """The lab cannot do what was asked; a server that failed to start puts its log tail in the message."""


def find_executable(name: str, apt_package: str) -> str:
    """The path of program ``name`` (also looked up in /usr/sbin); ``LabError`` naming the package if absent."""
    path = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"]))
    if path is None:
        raise LabError(f"{name} is not installed (Debian package '{apt_package}'; ./byline setup installs it)")
    return path


def free_tcp_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that nothing listens on now (the kernel picks it at random)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def free_tcp_udp_port(host: str = LOOPBACK) -> int:
    """A port number free for both TCP and UDP on ``host`` (SIP listens on both)."""
    for _ in range(PORT_ALLOCATION_ATTEMPTS):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port
    raise LabError(f"no port free for both TCP and UDP on {host} after {PORT_ALLOCATION_ATTEMPTS} tries")


def port_is_free(port: int, host: str = LOOPBACK, *, udp: bool = False) -> bool:
    """True when nothing listens on TCP (or, with ``udp=True``, is bound to UDP) ``host``:``port``.

    A closed TCP connection still in TIME_WAIT does not count: servers rebind with SO_REUSEADDR.
    """
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as probe:
        if not udp:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def processes_in_group(pgid: int) -> list[int]:
    """The PIDs of the live processes in process group ``pgid`` (zombies, already dead, excluded)."""
    members = []
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = stat_path.read_text()
        except OSError:  # it ended while we looked
            continue
        state, _parent, group = stat[stat.rindex(")") + 2 :].split(" ", 3)[:3]
        if int(group) == pgid and state != "Z":
            members.append(int(stat[: stat.index(" ")]))
    return members


class ManagedProcess:
    """One server process (and every process it forks) whose output goes to ``log_path``.

    ``start()`` launches it in a new process group; ``stop()`` ends that group and is safe to call
    any number of times; ``wait_ready()`` polls a readiness check and raises ``LabError`` with the
    log tail when the server exits or the check keeps failing.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: Path,
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ):
        self.name = name
        self.argv = list(argv)
        self.cwd = Path(cwd)
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else None
        self._guardian: subprocess.Popen | None = None
        self._log_start = 0

    @property
    def pgid(self) -> int | None:
        """The id of the process group (and of the guardian that leads it), once started."""
        return self._guardian.pid if self._guardian else None

    @property
    def returncode(self) -> int | None:
        """The server's exit code (128+N after signal N) once it has ended, else None."""
        if self._guardian is None:
            return None
        if self._guardian.returncode is not None:
            return _exit_code(self._guardian.returncode)
        return self._peek_exit_code()

    @property
    def running(self) -> bool:
        return self._guardian is not None and self.returncode is None

    def start(self) -> None:
        """Launch the server; raises ``LabError`` when it was already started."""
        if self._guardian is not None:
            raise LabError(f"{self.name} was already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self._log_start = log_file.tell()
            self._guardian = subprocess.Popen(
                [sys.executable, "-I", "-S", str(GUARDIAN_SCRIPT), str(STOP_GRACE_SECONDS), "--", *self.argv],
                stdin=subprocess.PIPE,  # the guardian watches it: end-of-file means we are gone
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
            )
        log.info("%s started (process group %d), log %s", self.name, self.pgid, self.log_path)

    def wait_ready(self, check: Callable[[], bool], timeout: float) -> None:
        """Return once ``check()`` is true; raise ``LabError`` if the server ends or ``timeout`` passes."""
        if self._guardian is None:
            raise LabError(f"{self.name} was not started")
        started = time.monotonic()
        deadline = started + timeout
        while True:
            if not self.running:
                raise LabError(
                    f"{self.name} exited with code {self.returncode} before it was ready\n{self.log_tail()}"
                )
            if check():
                log.info("%s ready after %.2f s", self.name, time.monotonic() - started)
                return
            if time.monotonic() >= deadline:
                raise LabError(f"{self.name} was not ready within {timeout:.0f} s\n{self.log_tail()}")
            time.sleep(READY_POLL_INTERVAL_SECONDS)

    def stop(self) -> None:
        """End the server and everything in its process group; safe to call any number of times."""
        guardian = self._guardian
        if guardian is None or guardian.returncode is not None:
            return
        pgid = guardian.pid
        # The guardian is reaped last: until then its pid reserves the group id for this group.
        self._signal_group(pgid, signal.SIGTERM)
        if not self._guardian_exited_within(STOP_GRACE_SECONDS):
            log.warning("%s ignored SIGTERM for %.0f s: killing it", self.name, STOP_GRACE_SECONDS)
        self._signal_group(pgid, signal.SIGKILL)
        guardian.wait()
        guardian.stdin.close()
        if not self._group_gone_within(pgid, STOP_GRACE_SECONDS):
            log.warning("%s: processes %s of group %d outlived SIGKILL", self.name, processes_in_group(pgid), pgid)
        log.info("%s stopped (exit code %s)", self.name, self.returncode)

    def log_text(self) -> str:
        """What this run wrote to the log so far ("" when there is no log file)."""
        try:
            with open(self.log_path, "rb") as log_file:
                log_file.seek(self._log_start)
                return log_file.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the log, under a header naming the server and file."""
        tail = deque(self.log_text().splitlines(), maxlen=lines)
        return f"----- {self.name} log ({self.log_path}), last {len(tail)} lines -----\n" + "\n".join(tail)

    def _peek_exit_code(self) -> int | None:
        """The guardian's exit code if it has ended, without reaping it (``WNOWAIT``)."""
        try:
            status = os.waitid(os.P_PID, self._guardian.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # someone else reaped it (a catch-all SIGCHLD handler)
            return _exit_code(self._guardian.poll() or 0)
        if status is None:
            return None
        if status.si_code == os.CLD_EXITED:
            return status.si_status
        return 128 + status.si_status

    def _guardian_exited_within(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._peek_exit_code() is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(EXIT_POLL_INTERVAL_SECONDS)
        return True

    @staticmethod
    def _group_gone_within(pgid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while processes_in_group(pgid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(EXIT_POLL_INTERVAL_SECONDS)
        return True

    @staticmethod
    def _signal_group(pgid: int, signum: int) -> None:
        try:
            os.killpg(pgid, signum)
        except ProcessLookupError:
            pass


def _exit_code(popen_returncode: int) -> int:
    """Popen's -N for "killed by signal N" as the shell's 128+N."""
    return popen_returncode if popen_returncode >= 0 else 128 - popen_returncode


def start_on_free_port(
    launch: Callable[[int], ManagedProcess],
    is_ready: Callable[[int], bool],
    *,
    allocate_port: Callable[[], int],
    ready_timeout: float,
    port_taken_marker: str,
    attempts: int = PORT_RACE_ATTEMPTS,
) -> tuple[ManagedProcess, int]:
    """Start a server on a fresh free port, again on another when it lost the port to someone else.

    ``launch(port)`` writes the configuration and returns the started process; ``is_ready(port)``
    is its readiness check. A start whose log shows ``port_taken_marker`` is stopped at once and
    retried on a new port, up to ``attempts`` times; any other failure raises ``LabError``.
    """
    attempt = 1
    while True:
        port = allocate_port()
        process = launch(port)

        def ready() -> bool:
            if port_taken_marker in process.log_text():
                raise _PortTaken(f"{process.name} lost port {port} to another program\n{process.log_tail()}")
            return is_ready(port)

        try:
            process.wait_ready(ready, ready_timeout)
        except LabError as error:
            process.stop()
            lost_port = isinstance(error, _PortTaken) or port_taken_marker in process.log_text()
            if lost_port and attempt < attempts:
                log.warning("%s lost port %d to another program: trying another port", process.name, port)
                attempt += 1
                continue
            raise
        except BaseException:  # interrupted, or the readiness check itself broke
            process.stop()
            raise
        return process, port


class _PortTaken(LabError):
    """Another program bound the port between its allocation and the server's start."""
