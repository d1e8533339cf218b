"""Two Byline phones call each other through the lab's Kamailio, keyed by ZRTP, audio in SRTP.

Each phone is its own process (``./byline scenario``: simulated drivers, a real swtpm, the
encrypted store, ALSA file PCMs for the microphone and the earpiece), driven through its keypad:
PIN, a SIP account typed by multi-tap, a contact, lift the handset to call, lift to answer. A
tone goes into each microphone file; the other's earpiece file must carry it. tcpdump records
the loopback traffic: every media packet must be ZRTP or SRTP, and no RTP payload may decode to
either tone.
"""

import re
import shutil
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest

from firmware.calls.codecs import open_codec
from firmware.calls.rtp import classify, parse
from helpers.phones import (CALL_SECONDS, PIN, TONES, ScriptedPhone, account_steps, best_tone_share,
                            contact_steps, sas_of)

@pytest.fixture
def tcpdump(tmp_path):
    if shutil.which("tcpdump") is None:
        pytest.fail("tcpdump is not installed (Debian package 'tcpdump'; ./byline setup installs it)")
    capture = tmp_path / "loopback.pcap"
    process = subprocess.Popen(["tcpdump", "-i", "lo", "-U", "-n", "-w", str(capture), "udp"],
                               stderr=subprocess.PIPE)
    time.sleep(0.5)  # tcpdump needs a moment before it captures
    yield capture
    process.send_signal(signal.SIGINT)
    process.wait(timeout=10)


def udp_datagrams(pcap: Path) -> list[tuple[int, int, bytes]]:
    """(source port, destination port, payload) of each IPv4 UDP datagram in a pcap file."""
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
        source, destination = struct.unpack(">HH", ip[header:header + 4])
        payloads.append((source, destination, ip[header + 8:]))
    return payloads


def media_ports(datagrams, sip_port: int) -> set[int]:
    """The RTP ports announced (m=audio PORT ...) in the SDP of SIP messages to or from ``sip_port``."""
    ports = set()
    for source, destination, payload in datagrams:
        if sip_port in (source, destination) and payload.startswith((b"INVITE ", b"SIP/2.0 ")):
            ports.update(int(port) for port in re.findall(rb"\r\nm=audio (\d+) ", payload))
    return ports


def test_two_byline_phones_call_each_other_securely(tmp_path, sip_lab, tcpdump):
    sip = sip_lab.sip
    alice_address, bob_address = f"alice@{sip.host}:{sip.port}", f"bob@{sip.host}:{sip.port}"
    bob = ScriptedPhone("bob", tmp_path, account_steps(bob_address, sip_lab.users["bob"]) + contact_steps("Alice", alice_address)
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
await alice-at-home
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
        alice = ScriptedPhone("alice", tmp_path, account_steps(alice_address, sip_lab.users["alice"]) + """
press ok 5
wait section
press down down down down ok
expect "Call history: on"
press back back
wait home
""" + contact_steps("Bob", bob_address) + f"""
lift
expect SECURE 30
print
pause {CALL_SECONDS}
hangup
expect "Call ended" 10
press back back back
wait home
mark alice-at-home
expect "Incoming call" 60
lift
expect SECURE 15
print
expect "Call ended" 30
""")
        bob.take_turn_after(alice, "alice-at-home")  # a key pressed on the way home would decline bob's call
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

    # Alice keeps a call log (history on): after a restart it is read back from her encrypted store.
    again = ScriptedPhone("alice", tmp_path, f"""
wait pin
press {' '.join(PIN)} ok
wait home 30
press ok down ok
wait section
expect ">bob"
expect "<bob"
print
""", directory="alice-again", work=alice.dir / "work")
    try:
        again.finish()
    finally:
        again.stop()
    assert any("answ" in line for line in again.lines), again.lines

    datagrams = udp_datagrams(tcpdump)
    ports = media_ports(datagrams, sip_lab.sip.port)
    assert len(ports) >= 4, f"two calls announce four media ports, found {ports}"
    # Between the announced ports only: other programs on this machine may use loopback too.
    between = [(s, d, p) for s, d, p in datagrams if s in ports and d in ports]
    payloads = [p for _, _, p in between]
    media = [p for p in payloads if classify(p) == "rtp"]
    assert len(media) > 200, f"too little media captured ({len(media)} of {len(payloads)} datagrams)"
    assert any(classify(p) == "zrtp" for p in payloads)
    others = [(s, d, p[:12].hex()) for s, d, p in between if classify(p) not in ("rtp", "zrtp")]
    assert not others, f"the media ports carry only ZRTP and SRTP, not {others[:5]}"
    decoder = open_codec("G722")
    decoded = b"".join(decoder.decode(parse(p).payload[:-10] or b"\0\0") for p in media)
    for name, frequency in TONES.items():
        assert best_tone_share(decoded, frequency) < 0.2, f"{name}'s tone is readable in the captured media"


def test_missed_declined_and_held_calls(tmp_path, sip_lab):
    sip = sip_lab.sip
    alice_address, bob_address = f"alice@{sip.host}:{sip.port}", f"bob@{sip.host}:{sip.port}"
    bob = ScriptedPhone("bob", tmp_path, account_steps(bob_address, sip_lab.users["bob"]) + """
print
expect "Incoming call" 60
expect "Call ended" 30
press back
expect "1 missed call"
print
mark bob-at-home
expect "Incoming call" 30
press back
expect "Call ended" 10
press back
wait home
mark bob-at-home-again
expect "Incoming call" 30
lift
expect SECURE 15
expect "Call ended" 30
""")
    alice = None
    try:
        bob.read_until("screen: ")
        alice = ScriptedPhone("alice", tmp_path, account_steps(alice_address, sip_lab.users["alice"])
                              + contact_steps("Bob", bob_address) + """
lift
expect Ringing 15
pause 1
hangup
expect "Call ended" 10
press back
await bob-at-home
lift
expect "Call ended" 15
print
hangup
press back
await bob-at-home-again
lift
expect SECURE 30
press up
expect "ON HOLD" 10
press up
expect "OK:same" 10
press 5
pause 1
hangup
expect "Call ended" 10
""")
        # Bob's keys must not meet alice's next call early: each call waits until bob is home.
        alice.take_turn_after(bob, "bob-at-home")
        alice.take_turn_after(bob, "bob-at-home-again")
        alice.finish()
        bob.finish()
    finally:
        bob.stop()
        if alice is not None:
            alice.stop()
    assert any("1 missed call" in line for line in bob.lines), bob.lines
    assert any("486" in line for line in alice.lines), alice.lines


def test_a_second_call_while_in_a_call_holds_the_first(tmp_path, sip_lab):
    sip = sip_lab.sip
    address = {name: f"{name}@{sip.host}:{sip.port}" for name in ("alice", "bob", "echo")}
    bob = ScriptedPhone("bob", tmp_path, account_steps(address["bob"], sip_lab.users["bob"]) + """
print
expect "Incoming call" 60
lift
expect SECURE 15
print
expect "Incoming call" 60
press ok
expect "echo@" 15
expect SECURE 15
print
expect "ON HOLD" 30
print
press up
expect "alice@" 10
expect "OK:same" 10
print
hangup
expect "Call ended" 10
""")
    others = []
    try:
        bob.read_until("screen: ")
        others.append(ScriptedPhone("alice", tmp_path, account_steps(address["alice"], sip_lab.users["alice"])
                                    + contact_steps("Bob", address["bob"]) + """
lift
expect SECURE 30
print
expect "Call ended" 60
"""))
        bob.read_until("SECURE")
        others.append(ScriptedPhone("echo", tmp_path, account_steps(address["echo"], sip_lab.users["echo"])
                                    + contact_steps("Bob", address["bob"]) + """
lift
expect SECURE 30
print
pause 2
hangup
expect "Call ended" 10
""", tone=800.0))
        for phone in others:
            phone.finish()
        bob.finish()
    finally:
        for phone in (bob, *others):
            phone.stop()
    screens = [line for line in bob.lines if line.startswith("screen:")]
    assert "echo@" in screens[2] and "SECURE" in screens[2], screens
    assert "alice@" in screens[3] and "ON HOLD" in screens[3], "back to the first call, still held"
    assert "alice@" in screens[4] and "OK:same" in screens[4], "resumed"
