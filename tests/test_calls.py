"""Two Byline phones call each other through the lab's Kamailio, keyed by ZRTP, audio in SRTP.

Each phone is its own process (``./byline scenario``: simulated drivers, a real swtpm, the
encrypted store, ALSA file PCMs for the microphone and the earpiece), driven through its keypad:
PIN, a SIP account typed by multi-tap, a contact, lift the handset to call, lift to answer. A
tone goes into each microphone file; the other's earpiece file must carry it. tcpdump records
the loopback traffic: every media packet must be ZRTP or SRTP, and no RTP payload may decode to
either tone.
"""

import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firmware.calls.codecs import open_codec
from firmware.calls.rtp import classify, parse

ROOT = Path(__file__).resolve().parent.parent
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
    """Goertzel: the share of the signal's energy at ``frequency`` (0..1; a pure tone gives about 1)."""
    samples = struct.unpack(f"<{len(pcm) // 2}h", pcm[: len(pcm) // 2 * 2])
    coefficient = 2 * math.cos(2 * math.pi * frequency / rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coefficient * s1 - s2, s1
    energy = sum(x * x for x in samples) or 1
    return 2 * (s1 * s1 + s2 * s2 - coefficient * s1 * s2) / (len(samples) * energy)


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
press ok down down down ok
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
press ok down down ok
expect Saved
"""


class Phone:
    def __init__(self, name: str, tmp_path: Path, script: str):
        self.name = name
        self.dir = tmp_path / name
        self.dir.mkdir()
        self.playback = self.dir / "earpiece.raw"
        self.log = self.dir / "byline.log"
        (self.dir / "script.txt").write_text(script)
        capture = tone_file(self.dir / "microphone.raw", TONES[name])
        self.process = subprocess.Popen(
            [sys.executable, "-m", "firmware.scenario", str(self.dir / "script.txt"), str(self.dir / "out"),
             "--work-dir", str(self.dir / "work"), "--log", str(self.log),
             "--capture", str(capture), "--playback", str(self.playback)],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
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


@pytest.fixture
def tcpdump(tmp_path, sip_lab):
    if shutil.which("tcpdump") is None:
        pytest.fail("tcpdump is not installed (Debian package 'tcpdump'; ./byline setup installs it)")
    capture = tmp_path / "loopback.pcap"
    process = subprocess.Popen(["tcpdump", "-i", "lo", "-U", "-n", "-w", str(capture),
                                f"udp and not port {sip_lab.sip.port}"], stderr=subprocess.PIPE)
    time.sleep(0.5)  # tcpdump needs a moment before it captures
    yield capture
    process.send_signal(signal.SIGINT)
    process.wait(timeout=10)


def udp_payloads(pcap: Path) -> list[bytes]:
    """UDP payloads of a Linux cooked or Ethernet/loopback pcap, IPv4 only."""
    data = pcap.read_bytes()
    link_type = struct.unpack("<I", data[20:24])[0]
    link_header = {1: 14, 113: 16, 276: 20, 0: 4}[link_type]
    offset, payloads = 24, []
    while offset + 16 <= len(data):
        captured = struct.unpack("<I", data[offset + 8:offset + 12])[0]
        frame = data[offset + 16:offset + 16 + captured]
        offset += 16 + captured
        ip = frame[link_header:]
        if len(ip) < 28 or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        header = (ip[0] & 0x0F) * 4
        payloads.append(ip[header + 8:])
    return payloads


def test_two_byline_phones_call_each_other_securely(tmp_path, sip_lab, tcpdump):
    sip = sip_lab.sip
    alice_address, bob_address = f"alice@{sip.host}:{sip.port}", f"bob@{sip.host}:{sip.port}"
    bob = Phone("bob", tmp_path, account_steps(bob_address, sip_lab.users["bob"]) + contact_steps("Alice", alice_address)
                + f"""
press back back
wait home
print
expect "Incoming call" 60
lift
expect SECURE 15
print
expect "Call ended" 30
hangup
press back ok 1
wait section
lift
expect SECURE 30
print
pause {CALL_SECONDS}
hangup
expect "Call ended" 10
""")
    alice = None
    try:
        bob.read_until("screen: ")  # registered, with alice as a contact, waiting at home
        alice = Phone("alice", tmp_path, account_steps(alice_address, sip_lab.users["alice"])
                      + contact_steps("Bob", bob_address) + f"""
lift
expect SECURE 30
print
pause {CALL_SECONDS}
hangup
expect "Call ended" 10
press back back back
wait home
expect "Incoming call" 60
lift
expect SECURE 15
print
expect "Call ended" 30
""")
        alice.finish()
        bob.finish()
    finally:
        bob.stop()
        if alice is not None:
            alice.stop()

    alice_sas, bob_sas = [sas_of(line) for line in alice.sas_lines()], [sas_of(line) for line in bob.sas_lines()]
    assert len(alice_sas) == len(bob_sas) == 2, (alice.lines, bob.lines)
    assert alice_sas == bob_sas and all(re.fullmatch(r"[a-z0-9]{4}", sas) for sas in alice_sas)

    alice_heard, bob_heard = alice.playback.read_bytes(), bob.playback.read_bytes()
    assert best_tone_share(bob_heard, TONES["alice"]) > 0.5, "alice's tone never reached bob's earpiece"
    assert best_tone_share(alice_heard, TONES["bob"]) > 0.5, "bob's tone never reached alice's earpiece"

    payloads = udp_payloads(tcpdump)
    media = [p for p in payloads if classify(p) == "rtp"]
    assert len(media) > 200, f"too little media captured ({len(media)} of {len(payloads)} datagrams)"
    assert any(classify(p) == "zrtp" for p in payloads)
    assert all(classify(p) in ("rtp", "zrtp", "rtcp", "stun") for p in payloads)
    decoder = open_codec("G722")
    decoded = b"".join(decoder.decode(parse(p).payload[:-10] or b"\0\0") for p in media)
    for name, frequency in TONES.items():
        assert best_tone_share(decoded, frequency) < 0.2, f"{name}'s tone is readable in the captured media"
