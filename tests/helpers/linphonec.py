"""linphonec (Debian linphone-cli 5.1) as a real ZRTP peer on loopback, driven through its stdin.

    peer = Linphonec(tmp_path / "bob", user="bob", password=lab.users["bob"], registrar=lab.sip)
    try:
        peer.start()                         # registers at the lab's Kamailio (digest auth)
        peer.call(lab.sip.uri("alice"))
        sas = peer.sas()                     # "Call N is fully encrypted and auth token is XXXX."
        peer.set_verified()                  # zrtp-set-verified (pvs=1 in its ZID cache)
        peer.terminate()
    finally:
        peer.stop()                          # quit, then SIGKILL by PID

What linphonec 5.1 does here (measured; see the field notes):

- It needs a private HOME with ``~/.local/share/linphone`` (or its core never starts) and rewrites
  its rc on exit: every ``start()`` writes a fresh one. The ZID cache that linphonec really uses
  is ``$HOME/.linphone-zidcache`` (liblinphone also creates an empty
  ``~/.local/share/linphone/zrtp-secrets.db``, which linphonec then replaces by its own file).
- No sound card: ``soundcard use files``, then ``play FILE.wav`` is what it sends (it sends no RTP
  without it) and ``record FILE.wav`` is where it writes what it receives (a WAV at the rate of
  the negotiated codec, finished when the call's streams stop).
- It registers with a Contact made of a GRUU (``sip:bob@127.0.0.1;gr=urn:uuid:...``, no port)
  when the registrar offers one; the lab's Kamailio relays in-dialog requests to that URI as it
  stands (port 5060), so every BYE to linphonec was lost. The rc here leaves "gruu" out of its
  Supported header, so its Contact is its real address.
- stdout: "Call N is fully encrypted and auth token is xxxx." (lower case), "Call N with URI
  connected.", "Call N with URI ended (REASON).", "Call N with URI error.". The verbose log
  (``-d 6 -l log.txt``) has "ZRTP secrets on: SAS is xxxx previously verified yes|no", the
  negotiated algorithms, and at the end of each call oRTP's "AUDIO SESSION'S RTP STATISTICS"
  (packets sent/received, bytes delivered to the application, bad formatted packets).
  ``call-stats`` does not exist in linphonec (linphone-daemon's crashed).
- ``media_encryption=none`` only stops it from offering ZRTP: called with an offer that carries
  ``a=zrtp-hash``, it answers with its own hash and runs ZRTP anyway (liblinphone: "if ZRTP is
  available, set the zrtp hash even if it is not selected"). As a caller it is a plain peer.
- The ZID cache keys a peer as ``sip:user@host`` (no port), whoever called.
"""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
import wave
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 15
QUIT_GRACE_S = 3
ZID_CACHE_NAME = ".linphone-zidcache"
SAS_LINE = re.compile(r"Call (\d+) is fully encrypted and auth token is (\S+)\.")
PREVIOUSLY_VERIFIED = re.compile(r"ZRTP secrets on: SAS is (\S+) previously verified (yes|no)")


def free_udp_pair(host: str = LOOPBACK) -> int:
    """An even port P with P and P+1 free for UDP (RTP and RTCP)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1] & ~1
        if port < 1024 or port + 1 > 65535:
            continue
        sockets = []
        try:
            for candidate in (port, port + 1):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(s)
                s.bind((host, candidate))
            return port
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free UDP port pair on loopback")


def free_udp_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def tone_wav(path: Path, frequency: float, seconds: float = 30, rate: int = 16000) -> Path:
    """A mono 16-bit WAV of a sine tone (linphonec resamples it to the codec's rate)."""
    samples = int(rate * seconds)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(struct.pack(f"<{samples}h", *(int(8000 * math.sin(2 * math.pi * frequency * i / rate))
                                                       for i in range(samples))))
    return path


def read_wav(path: Path) -> tuple[bytes, int]:
    """(S16_LE mono PCM, rate) of a WAV linphonec recorded; tolerant of a header it never finished."""
    data = path.read_bytes()
    if len(data) < 44 or data[:4] != b"RIFF":
        return b"", 0
    rate = struct.unpack("<I", data[24:28])[0]
    channels = struct.unpack("<H", data[22:24])[0]
    offset = 12
    while offset + 8 <= len(data):
        chunk, size = data[offset:offset + 4], struct.unpack("<I", data[offset + 4:offset + 8])[0]
        if chunk == b"data":
            pcm = data[offset + 8:]  # to the end: the size may be 0 if the file was not closed
            break
        offset += 8 + size
    else:
        pcm = data[44:]
    if channels == 2:
        frames = struct.unpack(f"<{len(pcm) // 2}h", pcm[: len(pcm) // 4 * 4])
        pcm = struct.pack(f"<{len(frames) // 2}h", *frames[::2])
    return pcm, rate


@dataclass(frozen=True)
class RtpStatistics:
    """oRTP's end-of-stream statistics of one audio session, from linphonec's verbose log."""

    sent_packets: int
    received_packets: int
    delivered_bytes: int
    lost_packets: int
    bad_formatted: int


@dataclass(frozen=True)
class Line:
    at: float  # time.monotonic() when the line was read
    text: str


class Linphonec:
    """One linphonec process in ``directory`` (its HOME, rc, log, tone and recording live there).

    ``registrar``: the lab's ``SipService`` (or None: no proxy, call by address); calls go
    through it and answer its digest challenges; ``register=False`` sends no REGISTER.
    ``media_encryption``: "zrtp" (mandatory unless ``mandatory=False``) or "none".
    ``tone``: the frequency it plays to the far end (a WAV written here); ``record``: keep
    what it receives in ``recording``; ``record_to(path)`` names the file for the next call (use
    one per call). ``display_name`` goes into its identity (the From header of its calls).
    """

    def __init__(self, directory: Path | str, sip_port: int | None = None, rtp_port: int | None = None, *,
                 user: str, password: str | None = None, registrar=None, extra_rc: str = "",
                 auto_answer: bool = True, media_encryption: str = "zrtp", mandatory: bool = True,
                 tone: float = 1600.0, record: bool = True, name: str | None = None, debug_level: int = 6,
                 display_name: str | None = None, register: bool = True):
        self.directory = Path(directory)
        self.sip_port = sip_port or free_udp_port()
        self.rtp_port = rtp_port or free_udp_pair()
        self.user = user
        self.password = password
        self.registrar = registrar
        self.extra_rc = extra_rc
        self.auto_answer = auto_answer
        self.media_encryption = media_encryption
        self.mandatory = mandatory
        self.tone = tone
        self.record = record
        self.name = name or user
        self.debug_level = debug_level
        self.display_name = display_name
        self.register_at_start = register
        self.home = self.directory / "home"
        self.rc_path = self.directory / "linphonerc"
        self.log_path = self.directory / "linphonec.log"
        self.play_path = self.directory / "tone.wav"
        self.recording = self.directory / "received.wav"
        self.process: subprocess.Popen | None = None
        self.lines: list[Line] = []
        self.sent: list[Line] = []
        self._cursor = 0
        self._changed = threading.Condition()
        self._reader: threading.Thread | None = None
        self.last_match_at = 0.0

    # Life cycle.

    @property
    def zid_cache_path(self) -> Path:
        return self.home / ZID_CACHE_NAME

    @property
    def address(self) -> str:
        """Where it can be called without the registrar."""
        return f"sip:{self.user}@{LOOPBACK}:{self.sip_port}"

    def start(self, timeout: float = START_TIMEOUT_S) -> Linphonec:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"{self.name}: linphonec already runs")
        (self.home / ".local" / "share" / "linphone").mkdir(parents=True, exist_ok=True)
        self.rc_path.write_text(self._rc())
        if not self.play_path.exists():
            tone_wav(self.play_path, self.tone)
        self.lines, self._cursor = [], 0
        command = ["linphonec", "-c", str(self.rc_path), "-d", str(self.debug_level), "-l", str(self.log_path)]
        if self.auto_answer:
            command.append("-a")
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, bufsize=1, cwd=self.directory,
                                        env={**os.environ, "HOME": str(self.home), "LANG": "C"})
        self._reader = threading.Thread(target=self._read, name=f"linphonec-{self.name}", daemon=True)
        self._reader.start()
        self.send("soundcard use files")
        self.wait_for(r"Using wav files instead of soundcard", timeout)
        self.send(f"play {self.play_path}")
        if self.record:
            self.send(f"record {self.recording}")
        if self.registrar is not None and self.register_at_start:
            self.register(timeout)
        return self

    def stop(self) -> None:
        """``quit``, then SIGKILL by PID whatever happened; safe to repeat."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            try:
                process.stdin.write("quit\n")
                process.stdin.flush()
            except (OSError, ValueError):
                pass
            try:
                process.wait(QUIT_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        if process.poll() is None:
            try:
                os.kill(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(10)
        if self._reader is not None:
            self._reader.join(2)
        for stream in (process.stdin, process.stdout):
            try:
                stream.close()
            except (OSError, ValueError):
                pass

    def __enter__(self) -> Linphonec:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    # Commands.

    def send(self, command: str) -> float:
        """Write one command line; return time.monotonic() just before it was written."""
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"{self.name}: linphonec is not running\n{self.report()}")
        at = time.monotonic()
        self.sent.append(Line(at, command))
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return at

    def register(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until the rc's proxy (the lab's Kamailio, digest auth) has registered us.

        ``status register`` prints "registered, identity=URI duration=N" once the registrar said
        200, "registered=-1" while it is still trying (or was refused) and "registered=0" without
        a proxy.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            mark = self.mark()
            self.send("status register")
            line = self.wait_for(r"^registered(, identity=|=-?\d)", 5, since=mark)
            if line.group(1) == ", identity=":
                return
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: never registered at {self.registrar}\n{self.report()}")

    def call(self, uri: str) -> int:
        """Place a call; return linphonec's call id."""
        mark = len(self.lines)
        self.send(f"call {uri}")
        return int(self.wait_for(r"assigned id (\d+)", 5, since=mark).group(1))

    def record_to(self, path: Path | str) -> None:
        """Record what the far end sends into ``path`` from the next call on (one file per call)."""
        self.recording = Path(path)
        self.send(f"record {self.recording}")

    def answer(self) -> None:
        self.send("answer")

    def terminate(self) -> None:
        self.send("terminate")

    def set_verified(self) -> None:
        """The SAS was compared: ``zrtp-set-verified`` on the current call (pvs=1 in the ZID cache)."""
        mark = len(self.lines)
        self.send("zrtp-set-verified")
        self.wait_for(r"fully encrypted and auth token", 5, since=mark)

    # Output.

    def _read(self) -> None:
        for raw in self.process.stdout:
            text = raw.rstrip("\n")
            while text.startswith("linphonec> "):
                text = text[len("linphonec> "):]
            with self._changed:
                self.lines.append(Line(time.monotonic(), text))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 10, since: int | None = None) -> re.Match:
        """The first stdout line at or after ``since`` (default: after the last match) matching ``pattern``."""
        regex = re.compile(pattern)
        index = self._cursor if since is None else since
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                while index < len(self.lines):
                    match = regex.search(self.lines[index].text)
                    index += 1
                    if match:
                        self._cursor = index
                        self.last_match_at = self.lines[index - 1].at
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.process.poll() is not None and index >= len(self.lines)):
                    break
                self._changed.wait(min(remaining, 0.2))
        raise AssertionError(f"{self.name}: {pattern!r} never came in {timeout} s\n{self.report()}")

    def mark(self) -> int:
        """The index of the next stdout line (for ``wait_for(..., since=mark)``)."""
        with self._changed:
            return len(self.lines)

    def sas(self, timeout: float = 15, since: int | None = None) -> str:
        """The SAS of the next "fully encrypted" line, as linphonec prints it (lower case)."""
        return self.wait_for(SAS_LINE.pattern, timeout, since).group(2)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def previously_verified(self) -> list[tuple[str, bool]]:
        """(SAS, previously verified) of each ZRTP session so far, from the verbose log."""
        return [(m.group(1), m.group(2) == "yes") for m in PREVIOUSLY_VERIFIED.finditer(self.log_text())]

    def zrtp_algorithms(self) -> list[str]:
        return re.findall(r"ZRTP algo used during negotiation: (.*)", self.log_text())

    def srtp_errors(self) -> list[str]:
        """Log lines where SRTP/SRTCP refused or failed on a packet ("srtp_unprotect() failed (N)").

        Case-sensitive on purpose: mediastreamer's "MSRtpSend" filter lines are no SRTP lines.
        """
        return [line for line in self.log_text().splitlines()
                if re.search(r"(srtp|srtcp|SRTP|SRTCP)\S*.*(fail|error|Error)", line)]

    def rtp_statistics(self) -> list[RtpStatistics]:
        """oRTP's statistics block of every audio stream that ended, in order."""
        def number(block: str, label: str) -> int:
            match = re.search(label + r"\s+(\d+)", block)
            return int(match.group(1)) if match else -1

        return [RtpStatistics(sent_packets=number(block, r"-sent"), received_packets=number(block, r"-received"),
                              delivered_bytes=number(block, r"incoming delivered to the app"),
                              lost_packets=number(block, r"incoming cumulative lost"),
                              bad_formatted=number(block, r"incoming bad formatted"))
                for block in self.log_text().split("AUDIO SESSION'S RTP STATISTICS")[1:]]

    def received_audio(self) -> tuple[bytes, int]:
        """(PCM, rate) of what it recorded from the far end (``record``); (b"", 0) if nothing."""
        return read_wav(self.recording) if self.recording.exists() else (b"", 0)

    def report(self, log_lines: int = 80) -> str:
        """stdout so far, the commands sent, and the tail of the verbose log (for failure messages)."""
        stdout = "\n".join(f"  {line.text}" for line in self.lines[-60:] if "Could not find a suitable soundcard" not in line.text)
        log = self.log_text().splitlines()[-log_lines:]
        return (f"--- linphonec {self.name} (pid {self.pid}, sip {self.sip_port}, rtp {self.rtp_port}) stdout:\n"
                f"{stdout}\n--- sent: {[line.text for line in self.sent]}\n--- log tail:\n" + "\n".join(log))

    # Configuration.

    def _rc(self) -> str:
        encryption = self.media_encryption
        mandatory = 1 if (self.mandatory and encryption != "none") else 0
        proxy = ""
        if self.registrar is not None:
            host, port, realm = self.registrar.host, self.registrar.port, self.registrar.realm
            display = f'"{self.display_name}" ' if self.display_name else ""
            proxy = f"""
[proxy_0]
reg_proxy=<sip:{host}:{port};transport=udp>
reg_identity={display}<sip:{self.user}@{host}:{port}>
reg_expires=600
reg_sendregister={1 if self.register_at_start else 0}
publish=0
dial_escape_plus=0
quality_reporting_enabled=0
avpf=0

[auth_info_0]
username={self.user}
passwd={self.password}
realm={realm}
domain={host}
"""
        return f"""[sip]
sip_port={self.sip_port}
sip_tcp_port=-1
sip_tls_port=-1
bind_address={LOOPBACK}
guess_hostname=0
contact=sip:{self.user}@{LOOPBACK}:{self.sip_port}
supported=replaces, outbound
media_encryption={encryption}
media_encryption_mandatory={mandatory}
default_proxy={0 if self.registrar is not None else -1}
register_only_when_network_is_up=0
ping_with_options=0
inc_timeout=60

[rtp]
audio_rtp_port={self.rtp_port}
bind_address={LOOPBACK}
audio_jitt_comp=60

[net]
mtu=1300

[video]
enabled=0
capture=0
display=0

[sound]
echocancellation=0
{proxy}
{self.extra_rc}
"""
