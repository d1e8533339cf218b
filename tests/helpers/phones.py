"""Byline phones as separate processes for call tests: keypad scripts, tone files, a pcap reader.

A ``ScriptedPhone`` is ``./byline scenario`` in its own process (one pjsua2 endpoint each) with
a microphone file carrying a tone and an earpiece file recording what it plays. The step
builders type a PIN, a SIP account and a contact on the keypad as a person would.
"""

import math
import os
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

from firmware.selftest import tone_share as goertzel_share

ROOT = Path(__file__).resolve().parents[2]
PIN = "264813"
RATE = 16000
TONES = {"alice": 1000.0, "bob": 1600.0}
CALL_SECONDS = 3
PHONE_TIMEOUT_S = 120


def tone_file(path: Path, frequency: float, seconds: float = 60) -> Path:
    samples = int(RATE * seconds)
    path.write_bytes(struct.pack(f"<{samples}h", *(int(8000 * math.sin(2 * math.pi * frequency * i / RATE))
                                                  for i in range(samples))))
    return path


def tone_share(pcm: bytes, frequency: float, rate: int = RATE) -> float:
    """The share of the S16_LE signal's energy at ``frequency`` (0..1; a pure tone gives about 1)."""
    return goertzel_share(struct.unpack(f"<{len(pcm) // 2}h", pcm[: len(pcm) // 2 * 2]), frequency, rate)


def best_tone_share(pcm: bytes, frequency: float, window_s: float = 0.5) -> float:
    window = int(RATE * window_s) * 2
    return max((tone_share(pcm[i:i + window], frequency) for i in range(0, len(pcm) - window, window)), default=0)


def account_steps(address: str, password: str) -> str:
    return f"""
wait pin
press {' '.join(PIN)} ok {' '.join(PIN)} ok
wait home 30
press ok 4
wait section
press ok
wait form
press down ok
type "{address}"
press ok down ok
type "{password}"
press ok down down down down down ok
expect registered 15
press back back
wait home
"""


def contact_steps(name: str, address: str) -> str:
    return f"""
press ok 1
wait section
press ok
wait form
press ok
type "{name}"
press ok down ok
type "{address}"
press ok down down down ok
expect Saved
"""


class ScriptedPhone:
    def __init__(self, name: str, tmp_path: Path, script: str, tone: float | None = None, *,
                 directory: str | None = None, work: Path | None = None):
        """``work`` reuses another run's work directory (its store and TPM): the same phone, restarted."""
        self.name = name
        self.dir = tmp_path / (directory or name)
        self.dir.mkdir()
        self.playback = self.dir / "earpiece.raw"
        self.log = self.dir / "byline.log"
        (self.dir / "script.txt").write_text(script)
        capture = tone_file(self.dir / "microphone.raw", tone or TONES[name])
        self.process = subprocess.Popen(
            [sys.executable, "-m", "firmware.scenario", str(self.dir / "script.txt"), str(self.dir / "out"),
             "--work-dir", str(work or self.dir / "work"), "--log", str(self.log),
             "--capture", str(capture), "--playback", str(self.playback)],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []

    def read_until(self, pattern: str, timeout: float = PHONE_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.lines.append(line.rstrip())
            if re.search(pattern, line):
                return line
        raise AssertionError(f"{self.name}: {pattern!r} never came; said {self.lines}; {self.failure()}")

    def tell(self, name: str) -> None:
        """Let the script go on past its ``await NAME`` step."""
        self.process.stdin.write(name + "\n")
        self.process.stdin.flush()

    def take_turn_after(self, other: "ScriptedPhone", mark: str) -> None:
        """Wait until ``other`` writes ``mark: MARK``, then let this phone past its ``await MARK``."""
        other.read_until(f"^mark: {re.escape(mark)}$")
        self.tell(mark)

    def finish(self) -> None:
        out, err = self.process.communicate(timeout=PHONE_TIMEOUT_S)
        self.lines += out.splitlines()
        assert self.process.returncode == 0, f"{self.name}: {self.failure(err)}"

    def failure(self, err: str = "") -> str:
        log = self.log.read_text() if self.log.exists() else "(no log)"
        return f"stderr: {err}\nlog:\n{log[-6000:]}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def sas_lines(self) -> list[str]:
        return [line for line in self.lines if "SECURE" in line]


def sas_of(line: str) -> str:
    fields = line.removeprefix("screen: ").split(" | ")
    return fields[2]
