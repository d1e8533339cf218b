"""Byline against a real ZRTP phone: Debian's linphonec 5.1, both registered at the lab's Kamailio.

Byline is ``./byline scenario`` in its own process (alice: her SIP account and a contact typed on
the keypad); linphonec is bob (tests/helpers/linphonec.py: sound from and to WAV files, driven
on stdin, ZRTP mandatory). The acceptance of secure calls with a foreign implementation:

- either side calls, both show the same SAS, and audio decrypts both ways: linphonec's tone is in
  Byline's earpiece file, Byline's microphone tone is in the WAV linphonec records of what it
  received; oRTP's counters show the packets arrived and its verbose log has no SRTP error;
- a SAS confirmed on both sides (OK on Byline, ``zrtp-set-verified`` on linphonec) makes the next
  call "SECURE + verified" on Byline, and linphonec logs "previously verified yes", whoever calls
  (both key the ZID cache by sip:user@host);
- a changed shared secret on the peer's side (rs1 and rs2 of its ZID cache overwritten between
  calls) makes Byline show "KEY CHANGED! Compare";
- a peer without ZRTP never gets a SECURE call from Byline, in either direction: a linphonec with
  media_encryption=none calling is refused before it rings, and a callee without ZRTP is hung up
  on, both with the reason on screen, and no audio leaves Byline. (The callee cannot be
  linphonec: with media_encryption=none it still answers a ZRTP offer with ZRTP, see
  ``PlainCallee``.)
- a caller with a display name gets the same secure call (the screen shows the name).

One Byline process and one linphonec carry the four secure calls (module fixture
``secure_calls``); the tests below each check one property of that record.
"""

from __future__ import annotations

import json
import os
import queue
import re
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from firmware.calls.rtp import classify
from helpers.linphonec import Linphonec, RtpStatistics, free_udp_pair, read_wav
from helpers.phones import TONES, ScriptedPhone, account_steps, best_tone_share, contact_steps, sas_of, tone_share

CALL_AUDIO_S = 3
ROOT = Path(__file__).resolve().parent.parent
SIP_PHONE = ROOT / "tests" / "helpers" / "sip_phone.py"
ENDED = r"Call \d+ with .* (ended|error)"


def best_share(pcm: bytes, frequency: float, rate: int, window_s: float = 0.5) -> float:
    """helpers.phones.best_tone_share at any rate (linphonec records at the codec's, 8 kHz for PCMU)."""
    window = int(rate * window_s) * 2
    return max((tone_share(pcm[i:i + window], frequency, rate) for i in range(0, len(pcm) - window, window)),
               default=0)


def earpiece_size(phone: ScriptedPhone) -> int:
    return phone.playback.stat().st_size if phone.playback.exists() else 0


def recorded(peer: Linphonec, path, seconds: float = 3) -> tuple[bytes, int]:
    """A WAV linphonec finished (it closes it when the call's streams stop): wait until it stops growing."""
    deadline, last = time.monotonic() + seconds, -1
    while time.monotonic() < deadline:
        size = path.stat().st_size if path.exists() else 0
        if size == last and size > 0:
            break
        last = size
        time.sleep(0.2)
    return read_wav(path) if path.exists() else (b"", 0)


def failure_report(phone: ScriptedPhone | None, peer: Linphonec) -> str:
    said = "\n".join(phone.lines[-40:]) if phone is not None else "(not started)"
    return f"\n=== Byline said:\n{said}\n{phone.failure() if phone is not None else ''}\n=== {peer.report()}"


def alter_cached_secret(peer: Linphonec, peer_uri_prefix: str) -> int:
    """Overwrite rs1 and rs2 of the peer's ZID cache entries for ``peer_uri_prefix`` with random bytes
    (both: a still matching rs2 would find the shared secret); return the number of rows changed."""
    db = sqlite3.connect(peer.zid_cache_path)
    try:
        with db:
            return db.execute(
                "UPDATE zrtp SET rs1 = ?, rs2 = ? WHERE zuid IN (SELECT zuid FROM ziduri WHERE peeruri LIKE ?)",
                (secrets.token_bytes(32), secrets.token_bytes(32), peer_uri_prefix + "%")).rowcount
    finally:
        db.close()


@dataclass
class Call:
    """What both ends showed and heard in one call."""

    screen: str = ""  # Byline's first print once the call was secure
    sas: str = ""  # linphonec's "auth token"
    heard: bytes = b""  # Byline's earpiece during the call
    received: tuple[bytes, int] = (b"", 0)  # linphonec's recording of the call


@dataclass
class SecureCalls:
    calls: dict[str, Call] = field(default_factory=dict)
    statistics: list[RtpStatistics] = field(default_factory=list)
    previously_verified: list[tuple[str, bool]] = field(default_factory=list)
    srtp_errors: list[str] = field(default_factory=list)
    algorithms: list[str] = field(default_factory=list)
    linphonec_lines: list[str] = field(default_factory=list)
    report: str = ""


BYLINE_SCRIPT = f"""
# call 1: Byline calls linphonec; the SAS is confirmed on both
lift
expect SECURE 30
print
pause {CALL_AUDIO_S}
press ok
expect "SECURE + verified"
print
hangup
expect "Call ended" 10
print
pause 1
# call 2: Byline calls again
lift
expect SECURE 30
print
pause 1
hangup
expect "Call ended" 10
print
# call 3: linphonec calls Byline
expect "Incoming call" 60
lift
expect SECURE 15
print
pause {CALL_AUDIO_S}
print
expect "Call ended" 30
print
# call 4: linphonec calls with a shared secret that no longer matches
expect "Incoming call" 60
lift
expect "KEY CHANGED" 15
print
pause 1
print
expect "Call ended" 30
"""


@pytest.fixture(scope="module")
def secure_calls(sip_lab, tmp_path_factory) -> SecureCalls:
    sip = sip_lab.sip
    directory = tmp_path_factory.mktemp("linphone-interop")
    bob = Linphonec(directory / "linphonec", user="bob", password=sip_lab.users["bob"], registrar=sip,
                    tone=TONES["bob"])
    alice = None
    record = SecureCalls()
    try:
        bob.start()
        bob.record_to(bob.directory / "call1.wav")
        alice = ScriptedPhone("alice", directory, account_steps(f"alice@{sip.host}:{sip.port}", sip_lab.users["alice"])
                              + contact_steps("Bob", f"bob@{sip.host}:{sip.port}") + BYLINE_SCRIPT)

        def during_call(name: str, *, verify: bool = False) -> Call:
            """From Byline's first print in a secure call to its next one: the audio of the call."""
            call = Call(screen=alice.read_until("screen: ").strip())
            start = earpiece_size(alice)
            call.sas = bob.sas(15)
            if verify:
                bob.set_verified()  # the owner compared the SAS on linphonec as well
            alice.read_until("screen: ")
            call.heard = alice.playback.read_bytes()[start:earpiece_size(alice)]
            record.calls[name] = call
            return call

        during_call("byline_calls", verify=True)
        bob.wait_for(ENDED, 15)
        bob.record_to(bob.directory / "call2.wav")  # before Byline dials again
        alice.read_until("Call ended")

        record.calls["byline_calls_again"] = Call(screen=alice.read_until("screen: ").strip(), sas=bob.sas(15))
        bob.wait_for(ENDED, 15)
        alice.read_until("Call ended")

        bob.record_to(bob.directory / "call3.wav")
        bob.call(sip.uri("alice"))
        during_call("linphonec_calls")
        bob.terminate()
        bob.wait_for(ENDED, 15)
        alice.read_until("Call ended")

        assert alter_cached_secret(bob, "sip:alice@") == 1, "linphonec's ZID cache has no single entry for alice"
        bob.record_to(bob.directory / "call4.wav")
        bob.call(sip.uri("alice"))
        record.calls["key_changed"] = Call(screen=alice.read_until("screen: ").strip(), sas=bob.sas(15))
        alice.read_until("screen: ")
        bob.terminate()
        bob.wait_for(ENDED, 15)
        alice.finish()
    except BaseException:
        print(failure_report(alice, bob))
        raise
    finally:
        bob.stop()
        if alice is not None:
            alice.stop()
    record.calls["byline_calls"].received = recorded(bob, bob.directory / "call1.wav")
    record.calls["linphonec_calls"].received = recorded(bob, bob.directory / "call3.wav")
    record.statistics = bob.rtp_statistics()
    record.previously_verified = bob.previously_verified()
    record.srtp_errors = bob.srtp_errors()
    record.algorithms = bob.zrtp_algorithms()
    record.linphonec_lines = [line.text for line in bob.lines]
    record.report = failure_report(alice, bob)
    return record


def check_sas_and_audio(record: SecureCalls, name: str, index: int) -> None:
    call = record.calls[name]
    assert "SECURE" in call.screen, call.screen + record.report
    # Byline prints the B32 SAS as it shows it; linphonec prints it lower case: compare without case.
    assert re.fullmatch(r"[0-9a-z]{4}", call.sas.lower()) and sas_of(call.screen).lower() == call.sas.lower(), \
        (call.screen, call.sas)
    assert best_tone_share(call.heard, TONES["bob"]) > 0.5, f"{name}: linphonec's tone not in Byline's earpiece"
    pcm, rate = call.received
    assert rate and best_share(pcm, TONES["alice"], rate) > 0.5, f"{name}: Byline's tone not in linphonec's recording"
    statistics = record.statistics[index]
    assert statistics.received_packets > 100 and statistics.bad_formatted == 0, statistics
    assert record.srtp_errors == [], record.srtp_errors


def test_byline_calls_linphonec_same_sas_and_audio_decrypts_both_ways(secure_calls):
    check_sas_and_audio(secure_calls, "byline_calls", 0)
    assert "SECURE, not verified" in secure_calls.calls["byline_calls"].screen
    assert secure_calls.previously_verified[0] == (secure_calls.calls["byline_calls"].sas, False)


def test_linphonec_calls_byline_same_sas_and_audio_decrypts_both_ways(secure_calls):
    check_sas_and_audio(secure_calls, "linphonec_calls", 2)


def test_sas_confirmed_on_both_makes_the_next_call_verified(secure_calls):
    again = secure_calls.calls["byline_calls_again"]
    assert "SECURE + verified" in again.screen, again.screen + secure_calls.report
    assert sas_of(again.screen).lower() == again.sas.lower()
    assert secure_calls.previously_verified[1] == (again.sas, True), secure_calls.previously_verified


def test_a_verified_peer_is_verified_when_it_calls_back(secure_calls):
    """Both ends key the ZID cache by sip:user@host whoever calls (dialled with a port, or a From without
    one): the SAS verified when Byline called is still verified when linphonec calls, on both sides."""
    back = secure_calls.calls["linphonec_calls"]
    assert "SECURE + verified" in back.screen, back.screen
    assert secure_calls.previously_verified[2] == (back.sas, True), secure_calls.previously_verified


def test_a_changed_secret_on_the_peer_shows_key_changed(secure_calls):
    changed = secure_calls.calls["key_changed"]
    assert "KEY CHANGED! Compare" in changed.screen, changed.screen + secure_calls.report
    assert sas_of(changed.screen).lower() == changed.sas.lower()
    assert len(secure_calls.statistics) == 4 and all(s.received_packets > 20 for s in secure_calls.statistics), \
        secure_calls.statistics


class PlainCallee:
    """A SIP phone without ZRTP for Byline to call: the firmware's SipAgent alone (no media engine) in a
    child process (tests/helpers/sip_phone.py), answering every call with an SDP that has no zrtp-hash
    and whose audio port is a socket of this test, so every datagram Byline sends there is seen.

    linphonec cannot be this peer: it answers an offer that has a zrtp-hash with ZRTP even with
    media_encryption=none (liblinphone sets its hash "even if it is not selected" and starts ZRTP
    when the remote offered it), so a call to it is genuinely secure.
    """

    def __init__(self, directory: Path, registrar, user: str, password: str):
        self.log_path = directory / "plain-callee.log"
        self.media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.media.bind(("127.0.0.1", free_udp_pair()))
        self.media.settimeout(0.2)
        self.datagrams: list[bytes] = []
        self.events: list[dict] = []
        self._stop = threading.Event()
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([sys.executable, str(SIP_PHONE)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self._log, text=True,
                                        env={**os.environ, "PYTHONPATH": str(ROOT)})
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._receive, daemon=True).start()
        port = self.media.getsockname()[1]
        self._send({"bind_address": "127.0.0.1", "log_level": 3})
        self.wait("Started")
        self._send({"id": 1, "cmd": "auto", "incoming": "answer",
                    "offer": {"rtp_port": port, "rtcp_port": port + 1, "address": "127.0.0.1", "zrtp_hash": None}})
        self._send({"id": 2, "cmd": "add_account", "config": {
            "account_id": user, "address": f"{user}@{registrar.host}:{registrar.port}", "password": password,
            "registrar": registrar.registrar_uri}})
        registered = self.wait("Registered")
        assert registered.get("ok"), registered

    def _send(self, message: dict) -> None:
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                self._lines.put(json.loads(line))
            except ValueError:
                pass

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                self.datagrams.append(self.media.recv(65535))
            except OSError:
                continue

    def wait(self, event: str, timeout: float = 15) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                message = self._lines.get(timeout=0.2)
            except queue.Empty:
                continue
            self.events.append(message)
            if message.get("event") == event:
                return message
        raise AssertionError(f"plain callee: no {event} in {timeout} s; events {self.events}\n"
                             + self.log_path.read_text(errors="replace")[-3000:])

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                self._send({"cmd": "stop"})
                self.process.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
        self._stop.set()
        self.media.close()
        self._log.close()


def test_byline_is_never_secure_with_a_peer_without_zrtp(tmp_path, sip_lab):
    """Byline calls a callee without ZRTP: the call ends with the reason; linphonec without ZRTP calls
    Byline: refused before it rings. Never SECURE, and no audio leaves Byline."""
    sip = sip_lab.sip
    bob = Linphonec(tmp_path / "linphonec", user="bob", password=sip_lab.users["bob"], registrar=sip,
                    tone=TONES["bob"], media_encryption="none", register=False)
    plain = alice = None
    try:
        plain = PlainCallee(tmp_path, sip, "bob", sip_lab.users["bob"])
        bob.start()
        alice = ScriptedPhone("alice", tmp_path, account_steps(f"alice@{sip.host}:{sip.port}", sip_lab.users["alice"])
                              + contact_steps("Bob", f"bob@{sip.host}:{sip.port}") + """
lift
expect "Call ended" 30
print
expect "refused" 60
print
""")
        ended = alice.read_until("screen: ")  # Byline called the plain callee, which answered
        plain.wait("CallEnded")
        bob.call(sip.uri("alice"))
        refused = alice.read_until("screen: ")
        bob.wait_for(ENDED, 15)
        alice.finish()
    except BaseException:
        print(failure_report(alice, bob))
        raise
    finally:
        bob.stop()
        if plain is not None:
            plain.stop()
        if alice is not None:
            alice.stop()

    report = failure_report(alice, bob)
    assert not any("SECURE" in line for line in alice.lines), report
    assert "ZRTP: secure" not in alice.log.read_text(), report
    assert re.search(r"\| Call ended \| .*(ncrypt|ZRTP)", ended), ended + report
    assert "refused: caller has no ZRTP" in refused, refused + report
    assert not any(classify(d) == "rtp" for d in plain.datagrams), \
        f"Byline sent RTP to a peer without ZRTP: {[classify(d) for d in plain.datagrams]}"
    # linphonec was refused before any media: it received nothing from Byline.
    assert not bob.rtp_statistics() or all(s.received_packets == 0 for s in bob.rtp_statistics()), bob.rtp_statistics()


def test_a_caller_with_a_display_name_gets_a_secure_call(tmp_path, sip_lab):
    """The media events of an incoming call reach it even when the screen shows the caller's display name."""
    sip = sip_lab.sip
    bob = Linphonec(tmp_path / "linphonec", user="bob", password=sip_lab.users["bob"], registrar=sip,
                    tone=TONES["bob"], display_name="Bob")
    alice = None
    try:
        bob.start()
        alice = ScriptedPhone("alice", tmp_path, account_steps(f"alice@{sip.host}:{sip.port}", sip_lab.users["alice"])
                              + """
print
expect "Incoming call" 60
lift
pause 3
print
""")
        alice.read_until("screen: ")
        bob.call(sip.uri("alice"))
        sas = bob.sas(15)
        shown = alice.read_until("screen: ")
        bob.terminate()
        alice.finish()
    except BaseException:
        print(failure_report(alice, bob))
        raise
    finally:
        bob.stop()
        if alice is not None:
            alice.stop()
    assert shown.startswith("screen: Bob | SECURE"), shown
    assert sas_of(shown).lower() == sas.lower(), (shown, sas)
    assert best_tone_share(alice.playback.read_bytes(), TONES["bob"]) > 0.5, "the call's audio was not routed"
