"""firmware/calls/sip.py: SDP parsing and rewriting, and real SIP through the lab's Kamailio.

pjsua2 allows one Endpoint per process, so every SipAgent here runs in its own process
(tests/helpers/sip_phone.py), driven by JSON lines. A phone's log (pjsua's SIP messages included)
is in the message of a failed wait, and printed at teardown (pytest shows it for failed tests).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from firmware.calls.sip import (
    MediaOffer,
    RemoteMedia,
    SipAccountConfig,
    SipError,
    parse_remote_sdp,
    rewrite_local_sdp,
    sdp_body,
    split_name_addr,
)
from lab.certs import create_certificates

ROOT = Path(__file__).resolve().parent.parent
PHONE_SCRIPT = Path(__file__).resolve().parent / "helpers" / "sip_phone.py"
EVENT_TIMEOUT_S = 15.0
"""A bound, not a measurement: CI machines under load answer in seconds, not milliseconds."""
STOP_TIMEOUT_S = 5.0
LOG_TAIL_LINES = 120
HASH_A = "1.10 " + "ab" * 32
HASH_B = "1.10 " + "cd" * 32
OFFER_A = {"rtp_port": 30000, "rtcp_port": 30001, "zrtp_hash": HASH_A}
OFFER_B = {"rtp_port": 40002, "rtcp_port": 40003, "zrtp_hash": HASH_B}
FLOOD_DATAGRAMS = 3000
DISPLAY_CANARY = "Alice Qwzxv"
REGISTER_RETRY_WAIT_S = 12.0  # pjsua's first retry: REG_FIRST_RETRY_S < 10 s means 0-10 s at random

PJSUA_SDP = (
    "v=0\r\n"
    "o=- 3917 3917 IN IP4 192.0.2.2\r\n"
    "s=pjmedia\r\n"
    "b=AS:84\r\n"
    "t=0 0\r\n"
    "a=X-nat:0\r\n"
    "m=audio 4000 RTP/AVP 9 0 8 3 120\r\n"
    "c=IN IP4 192.0.2.2\r\n"
    "b=TIAS:64000\r\n"
    "a=rtcp:4001 IN IP4 192.0.2.2\r\n"
    "a=sendrecv\r\n"
    "a=rtpmap:9 G722/8000\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:3 GSM/8000\r\n"
    "a=rtpmap:120 telephone-event/8000\r\n"
    "a=fmtp:120 0-16\r\n"
    "a=ssrc:1370487874 cname:008ab2c654ca92a7\r\n"
)

PEER_SDP = (
    "v=0\r\n"
    "o=bob 1 2 IN IP4 10.0.0.7\r\n"
    "s=-\r\n"
    "c=IN IP4 10.0.0.7\r\n"
    "t=0 0\r\n"
    f"a=zrtp-hash:{HASH_B}\r\n"
    "m=audio 7078 RTP/AVP 0 9 101\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=rtcp:7079\r\n"
    "a=sendonly\r\n"
    "m=video 9078 RTP/AVP 96\r\n"
    "a=rtpmap:96 H264/90000\r\n"
    "a=recvonly\r\n"
)


# --- pure functions ---------------------------------------------------------------------------


def test_parse_remote_sdp_reads_the_audio_section():
    media = parse_remote_sdp(PEER_SDP)
    assert media == RemoteMedia(
        address="10.0.0.7",
        rtp_port=7078,
        rtcp_port=7079,
        payload_types=(0, 9, 101),
        zrtp_hash=HASH_B,
        telephone_event_pt=101,
        direction="sendonly",
        encodings=((0, "PCMU/8000"), (9, "G722/8000"), (101, "telephone-event/8000")),
    )


def test_parse_remote_sdp_media_level_overrides_and_old_style_hold():
    sdp = PEER_SDP.replace("a=rtcp:7079\r\n", "a=rtcp-mux\r\nc=IN IP4 0.0.0.0\r\n").replace("a=sendonly", "a=sendrecv")
    media = parse_remote_sdp(sdp.replace("\r\n", "\n"))
    assert (media.address, media.rtcp_port, media.direction) == ("0.0.0.0", 7078, "sendonly")


@pytest.mark.parametrize("sdp, complaint", [
    ("", "empty"),
    ("v=1\r\nm=audio 1 RTP/AVP 0\r\n", "v=0"),
    ("v=0\r\nc=IN IP4 1.2.3.4\r\n", "no m=audio"),
    ("v=0\r\nm=audio 5000 RTP/AVP 0\r\n", "no c= line"),
    ("v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 70000 RTP/AVP 0\r\n", "port"),
    ("v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio -1 RTP/AVP 0\r\n", "port"),
    ("v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 5000 RTP/AVP\r\n", "incomplete"),
    ("v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 5000 RTP/AVP 0 200\r\n", "payload type"),
    ("v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 5000 UDP/TLS/RTP/SAVPF 0\r\n", "not RTP"),
    ("v=0\r\nc=IN IP4 example.org\r\nm=audio 5000 RTP/AVP 0\r\n", "not an IP address"),
    ("v=0\r\nc=IN IP6 1.2.3.4\r\nm=audio 5000 RTP/AVP 0\r\n", "not IP6"),
    ("v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 5000 RTP/AVP 0\r\na=zrtp-hash:1.10 xyz\r\n", "zrtp-hash"),
    ("v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 5000 RTP/AVP 0\r\na=rtcp:abc\r\n", "a=rtcp"),
    ("v=0\r\ngarbage\r\n", "line 2"),
    ("v=0\r\n" + "a=x\r\n" * 5000, "characters long"),
])
def test_parse_remote_sdp_says_what_is_wrong(sdp, complaint):
    with pytest.raises(SipError, match=complaint):
        parse_remote_sdp(sdp)


def test_parse_remote_sdp_survives_fuzzing():
    """Mutated SDP gives a RemoteMedia or a SipError, never another exception."""
    rng = random.Random(1234)
    seeds = [PEER_SDP, PJSUA_SDP, rewrite_local_sdp(PJSUA_SDP, MediaOffer(**OFFER_A))]
    alphabet = "v=mcoa0123456789 :/\r\n\x00\xff-.IPN4\u2028\ud800é"
    outcomes = {"parsed": 0, "refused": 0}
    for _ in range(6000):
        text = rng.choice(seeds)
        for _ in range(rng.randint(1, 6)):
            operation = rng.randrange(6)
            position = rng.randrange(len(text) + 1)
            if operation == 0:
                text = text[:position] + rng.choice(alphabet) + text[position + 1:]
            elif operation == 1:
                text = text[:position] + "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 20))) + text[position:]
            elif operation == 2:
                text = text[:position]
            elif operation == 3:
                lines = text.split("\r\n")
                rng.shuffle(lines)
                text = "\r\n".join(lines)
            elif operation == 4:
                lines = text.split("\r\n")
                if lines:
                    del lines[rng.randrange(len(lines))]
                text = "\r\n".join(lines)
            else:
                text = text.replace(rng.choice(["4000", "IN", "m=", "a=", "\r\n", " "]), rng.choice(["", "99999", "x", "\n", "  "]))
        try:
            result = parse_remote_sdp(text)
        except SipError as error:
            assert str(error)
            outcomes["refused"] += 1
        else:
            assert isinstance(result, RemoteMedia)
            assert 0 <= result.rtp_port <= 65535 and result.payload_types
            outcomes["parsed"] += 1
    assert outcomes["parsed"] > 100 and outcomes["refused"] > 100, outcomes


def test_message_helpers_survive_fuzzing():
    """sdp_body and split_name_addr read what anyone may send: never an exception."""
    rng = random.Random(4321)
    for number in range(3000):
        message = malformed_datagram(rng, number, 5060, 5062).decode("utf-8", errors="surrogateescape")
        body = sdp_body(message)
        assert body is None or isinstance(body, str)
        header = "".join(rng.choice('"<>\\;: sip@a\x00\r\n') for _ in range(rng.randint(0, 40)))
        display, uri = split_name_addr(header)
        assert len(display) <= 64 and "\n" not in display and "\r" not in uri


def test_rewrite_points_pjsuas_sdp_at_our_media_and_is_idempotent():
    offer = MediaOffer(rtp_port=30000, rtcp_port=30001, address="127.0.0.1", zrtp_hash=HASH_A)
    once = rewrite_local_sdp(PJSUA_SDP, offer)
    assert rewrite_local_sdp(once, offer) == once
    assert "192.0.2.2" not in once and "a=ssrc" not in once and "GSM" not in once
    assert "m=audio 30000 RTP/AVP 9 0 8 120\r\n" in once
    assert once.count("a=zrtp-hash:") == 1 and once.count("a=rtcp:") == 1
    media = parse_remote_sdp(once)
    assert (media.address, media.rtp_port, media.rtcp_port, media.zrtp_hash) == ("127.0.0.1", 30000, 30001, HASH_A)
    assert media.direction == "sendrecv" and media.telephone_event_pt == 120

    held = rewrite_local_sdp(once.replace("a=sendrecv", "a=sendonly"), MediaOffer(30000, 30001, zrtp_hash=None, codecs=("PCMU",)))
    media = parse_remote_sdp(held)
    assert media.direction == "sendonly" and media.zrtp_hash is None and media.payload_types == (0, 120)
    with pytest.raises(SipError, match="none of the codecs"):
        rewrite_local_sdp(PJSUA_SDP.replace("9 0 8 3 120", "3 120"), offer)


def test_sdp_body_is_found_in_plain_compact_and_multipart_messages():
    head = "INVITE sip:bob@h SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n"
    assert sdp_body(head + "Content-Type: application/sdp\r\n\r\n" + PEER_SDP) == PEER_SDP
    assert sdp_body(head + "c: application/sdp\r\n\r\n" + PEER_SDP) == PEER_SDP
    assert sdp_body(head + "Content-Type: application/sdp\r\nContent-Length: 0\r\n\r\n") is None
    assert sdp_body(head + "Content-Type: text/plain\r\n\r\nhello") is None
    multipart = (
        head + 'Content-Type: multipart/mixed;boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
        "--b1\r\nContent-Type: application/sdp\r\n\r\n" + PEER_SDP + "\r\n--b1--\r\n"
    )
    assert parse_remote_sdp(sdp_body(multipart)) == parse_remote_sdp(PEER_SDP)
    assert sdp_body(head + "Content-Type: multipart/mixed\r\n\r\n--x\r\n") is None
    assert sdp_body("garbage without a blank line") is None


def test_name_addr_is_split_and_cleaned():
    assert split_name_addr('"Alice \\"A\\"" <sip:alice@h>;tag=1') == ('Alice "A"', "sip:alice@h")
    assert split_name_addr("Bob <sip:bob@h>") == ("Bob", "sip:bob@h")
    assert split_name_addr("sip:carol@h;tag=2") == ("", "sip:carol@h")
    assert split_name_addr('"\x07Evil\r\n" <sip:e@h>') == ("Evil", "sip:e@h")


def test_account_config_never_shows_the_password():
    secret = "s3cret-Pa55word"
    config = SipAccountConfig("a", "alice@example.org", secret, registrar="sip:127.0.0.1:5060")
    assert secret not in repr(config) and secret not in str(config)
    for bad in (
        {"address": "not an address"},
        {"address": "alice@example.org\n"},
        {"registrar": "sip:127.0.0.1;lr>,<sip:evil"},
        {"transport": "sctp"},
        {"registrar": "sip:bad host\r\n"},
        {"transport": "tls"},  # neither CA nor pin
        {"display_name": 'x"y'},
        {"tls_pin": "12"},
    ):
        fields = {"account_id": "a", "address": "alice@example.org", "password": secret,
                  "registrar": "sip:127.0.0.1:5060"}
        fields.update(bad)
        with pytest.raises(SipError) as raised:
            SipAccountConfig(**fields)
        assert secret not in str(raised.value)


def test_media_offer_refuses_what_could_inject_sdp():
    with pytest.raises(SipError, match="zrtp_hash"):
        MediaOffer(30000, 30001, zrtp_hash=HASH_A + "\r\na=evil")
    with pytest.raises(SipError, match="zrtp_hash"):
        MediaOffer(30000, 30001, zrtp_hash=HASH_A + "\n")
    with pytest.raises(SipError, match="address"):
        MediaOffer(30000, 30001, address="127.0.0.1\r\n")
    with pytest.raises(SipError, match="codecs"):
        MediaOffer(30000, 30001, codecs=("opus",))
    with pytest.raises(SipError, match="port"):
        MediaOffer(0, 30001)


# --- phones in subprocesses -------------------------------------------------------------------


def helper_environment():
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": python_path}


class PhoneProcess:
    """A SipAgent in a child process (tests/helpers/sip_phone.py)."""

    def __init__(self, name: str, log_dir: Path, **start):
        self.name = name
        self.log_path = log_dir / f"phone-{name}.log"
        self._log_file = open(self.log_path, "w")  # noqa: SIM115 - the child's stderr, closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, str(PHONE_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
            env=helper_environment(),
        )
        self.events: list[dict] = []
        self._consumed: set[int] = set()
        self._changed = threading.Condition()
        self._ids = itertools.count(1)
        threading.Thread(target=self._read, daemon=True).start()
        self._send({"log_level": 4, **start})
        self.ports = self.wait("Started")["ports"]

    def _read(self):
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self._changed:
                self.events.append(event)
                self._changed.notify_all()
        with self._changed:
            self.events.append({"event": "Exited"})
            self._changed.notify_all()

    def _send(self, message: dict):
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- phone {self.name} (pid {self.process.pid}) log tail ---\n" + "\n".join(text)

    def wait(self, event: str, timeout: float = EVENT_TIMEOUT_S, **fields) -> dict:
        """The first event of type ``event`` with ``fields`` not returned before (waits for it)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for index, candidate in enumerate(self.events):
                    if index in self._consumed or candidate.get("event") != event:
                        continue
                    if all(candidate.get(key) == value for key, value in fields.items()):
                        self._consumed.add(index)
                        return candidate
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.events and self.events[-1].get("event") == "Exited"):
                    break
                self._changed.wait(remaining)
        seen = "\n".join(json.dumps(e)[:300] for e in self.events[-20:])
        raise AssertionError(f"phone {self.name}: no {event} {fields} within {timeout} s; last events:\n{seen}\n"
                             + self.log_tail())

    def unseen(self, event: str) -> list[dict]:
        with self._changed:
            return [e for i, e in enumerate(self.events) if i not in self._consumed and e.get("event") == event]

    def command(self, cmd: str, **arguments):
        result = self.try_command(cmd, **arguments)
        assert result["ok"], f"phone {self.name}: {cmd} failed: {result.get('error')}\n{self.log_tail()}"
        return result["value"]

    def try_command(self, cmd: str, **arguments) -> dict:
        command_id = next(self._ids)
        self._send({"id": command_id, "cmd": cmd, **arguments})
        return self.wait("Result", id=command_id)

    def register(self, user: str, password: str, lab, transport: str = "udp", **extra) -> tuple[dict, float]:
        started = time.monotonic()
        self.command("add_account", config=account(user, password, lab, transport, **extra))
        registered = self.wait("Registered", account_id=user)
        return registered, registered["t"] - started

    def stop(self):
        try:
            if self.process.poll() is None:
                self._send({"cmd": "stop"})
                self.process.wait(STOP_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            if self.process.poll() is None:
                os.kill(self.process.pid, 9)
                self.process.wait(STOP_TIMEOUT_S)
            self._log_file.close()


def account(user: str, password: str, lab, transport: str = "udp", **extra) -> dict:
    return {
        "account_id": user,
        "address": f"{user}@{lab.sip.domain}:{lab.sip.port}",
        "password": password,
        "registrar": lab.sip.registrar_uri,
        "transport": transport,
        **extra,
    }


class PhoneFactory:
    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.phones: list[PhoneProcess] = []

    def __call__(self, name: str, **start) -> PhoneProcess:
        phone = PhoneProcess(name, self.log_dir, **start)
        self.phones.append(phone)
        return phone

    def stop_all(self):
        for phone in self.phones:
            phone.stop()
        for phone in self.phones:
            print(phone.log_tail(60))  # shown by pytest only when the test failed


@pytest.fixture
def phones(tmp_path):
    factory = PhoneFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture(scope="module")
def alice_and_bob(sip_lab, tmp_path_factory):
    """Two phones registered at the session's Kamailio as alice and bob (UDP), shared by the module."""
    factory = PhoneFactory(tmp_path_factory.mktemp("sip-phones"))
    try:
        alice, bob = factory("alice"), factory("bob")
        for phone in (alice, bob):
            display = {"display_name": DISPLAY_CANARY} if phone is alice else {}
            registered, _ = phone.register(phone.name, sip_lab.users[phone.name], sip_lab, **display)
            assert registered["ok"], registered
        yield alice, bob
    finally:
        factory.stop_all()


def call(caller, callee, lab, *, answer=True):
    """caller calls callee through Kamailio; callee rings (and answers); returns both call ids."""
    started = time.monotonic()
    caller_call = caller.command("make_call", account_id=caller.name, uri=lab.sip.uri(callee.name), offer=OFFER_A)
    incoming = callee.wait("IncomingCall", account_id=callee.name)
    callee_call = incoming["call_id"]
    callee.command("ring", call_id=callee_call)
    caller.wait("CallProgress", call_id=caller_call, state="ringing", code=180)
    if answer:
        callee.command("answer", call_id=callee_call, offer=OFFER_B)
        connected = caller.wait("CallProgress", call_id=caller_call, state="connected")
        callee.wait("CallProgress", call_id=callee_call, state="connected")
        caller.setup_seconds = connected["t"] - started
    return caller_call, callee_call, incoming


# --- real SIP ---------------------------------------------------------------------------------


def test_registration_needs_the_right_password(sip_lab, phones):
    phone = phones("echo")
    registered, seconds = phone.register("echo", sip_lab.users["echo"], sip_lab)
    assert (registered["ok"], registered["code"]) == (True, 200)
    print(f"REGISTER with digest auth over UDP: {seconds * 1000:.1f} ms")

    wrong = account("bob", "not-" + sip_lab.users["bob"], sip_lab)
    wrong["account_id"] = "bob-wrong"
    phone.command("add_account", config=wrong)
    refused = phone.wait("Registered", account_id="bob-wrong")
    assert refused["ok"] is False and refused["code"] in (401, 403), refused
    assert wrong["password"] not in phone.log_path.read_text()


def test_registration_over_tcp(sip_lab, phones):
    phone = phones("echo", nameservers=["127.0.0.1"])  # pjsua's own resolver (unused for an IP registrar)
    registered, seconds = phone.register("echo", sip_lab.users["echo"], sip_lab, transport="tcp")
    assert (registered["ok"], registered["code"]) == (True, 200)
    assert "SIP/2.0/TCP" in phone.log_path.read_text()
    print(f"REGISTER with digest auth over TCP: {seconds * 1000:.1f} ms")


def test_failed_registration_is_reported_and_retried(phones):
    """A registrar that refuses the connection: Registered(ok=False), then pjsua tries again by itself."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: connecting to it is refused
    phone = phones("echo")
    phone.command("add_account", config={"account_id": "echo", "address": f"echo@127.0.0.1:{port}", "password": "x",
                                         "registrar": f"sip:127.0.0.1:{port}", "transport": "tcp"})
    failed = phone.wait("Registered", account_id="echo")
    assert failed["ok"] is False and failed["code"] >= 400, failed
    with socket.socket() as registrar:  # now something listens there: the retry arrives (0-10 s, random)
        registrar.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        registrar.bind(("127.0.0.1", port))
        registrar.listen()
        registrar.settimeout(REGISTER_RETRY_WAIT_S)
        connection, _ = registrar.accept()
        with connection:
            connection.settimeout(EVENT_TIMEOUT_S)
            assert connection.recv(65535).startswith(b"REGISTER ")


def test_call_through_kamailio_carries_our_media_both_ways(alice_and_bob, sip_lab):
    alice, bob = alice_and_bob
    alice_call, bob_call, incoming = call(alice, bob, sip_lab)
    print(f"INVITE to CONFIRMED through Kamailio (with 407 challenge): {alice.setup_seconds * 1000:.1f} ms")

    offered = incoming["remote_media"]  # what bob sees of alice
    assert (offered["address"], offered["rtp_port"], offered["rtcp_port"]) == ("127.0.0.1", 30000, 30001)
    assert offered["zrtp_hash"] == HASH_A and offered["payload_types"][:3] == [9, 0, 8]
    assert incoming["remote_uri"] == f"sip:alice@{sip_lab.sip.domain}"
    assert incoming["remote_display"] == DISPLAY_CANARY
    answered = alice.wait("RemoteMediaChanged", call_id=alice_call)["remote_media"]  # what alice sees of bob
    assert (answered["rtp_port"], answered["rtcp_port"], answered["zrtp_hash"]) == (40002, 40003, HASH_B)
    assert answered["payload_types"][0] == 9 and answered["direction"] == "sendrecv"

    bob.command("hangup", call_id=bob_call)
    assert bob.wait("CallEnded", call_id=bob_call)
    ended = alice.wait("CallEnded", call_id=alice_call)
    assert ended["code"] == 200
    assert alice.command("calls") == [] and bob.command("calls") == []


def test_hold_and_resume_reach_the_peer_with_our_zrtp_hash(alice_and_bob, sip_lab):
    alice, bob = alice_and_bob
    alice_call, bob_call, _ = call(alice, bob, sip_lab)
    alice.wait("RemoteMediaChanged", call_id=alice_call)

    alice.command("hold", call_id=alice_call)
    held = bob.wait("RemoteMediaChanged", call_id=bob_call)["remote_media"]
    assert (held["direction"], held["zrtp_hash"], held["rtp_port"]) == ("sendonly", HASH_A, 30000)
    assert alice.wait("RemoteMediaChanged", call_id=alice_call)["remote_media"]["direction"] == "recvonly"

    alice.command("resume", call_id=alice_call)
    resumed = bob.wait("RemoteMediaChanged", call_id=bob_call)["remote_media"]
    assert (resumed["direction"], resumed["zrtp_hash"]) == ("sendrecv", HASH_A)
    assert alice.wait("RemoteMediaChanged", call_id=alice_call)["remote_media"]["direction"] == "sendrecv"

    bob.command("hold", call_id=bob_call)  # the callee holds: the caller hears of it the same way
    held = alice.wait("RemoteMediaChanged", call_id=alice_call)["remote_media"]
    assert (held["direction"], held["zrtp_hash"], held["rtp_port"]) == ("sendonly", HASH_B, 40002)

    alice.command("hangup", call_id=alice_call)
    assert alice.wait("CallEnded", call_id=alice_call)
    assert bob.wait("CallEnded", call_id=bob_call)["code"] == 200


def test_no_address_uri_or_name_reaches_the_log(alice_and_bob, sip_lab):
    """pjsua logs here at level 4 (every SIP message), redacted: who called whom stays off the disk."""
    alice, bob = alice_and_bob
    alice_call, bob_call, _ = call(alice, bob, sip_lab)
    alice.command("hangup", call_id=alice_call)
    bob.wait("CallEnded", call_id=bob_call)
    alice.wait("CallEnded", call_id=alice_call)
    for phone in (alice, bob):
        text = phone.log_path.read_text(errors="replace")
        assert "INVITE" in text and "REGISTER" in text  # the SIP messages are there...
        for private in ("alice@", "bob@", "sip:alice", "sip:bob", "Qwzxv", sip_lab.users["alice"], sip_lab.users["bob"]):
            assert private not in text, f"{private!r} in the log of {phone.name}"  # ...without who


def test_rejected_call_ends_with_the_given_code(alice_and_bob, sip_lab):
    alice, bob = alice_and_bob
    alice_call, bob_call, _ = call(alice, bob, sip_lab, answer=False)
    bob.command("reject", call_id=bob_call, code=488, reason="ZRTP required")
    ended = alice.wait("CallEnded", call_id=alice_call)
    assert (ended["code"], ended["reason"]) == (488, "ZRTP required")
    assert bob.wait("CallEnded", call_id=bob_call)["code"] == 488


def test_caller_can_cancel_a_ringing_call(alice_and_bob, sip_lab):
    alice, bob = alice_and_bob
    alice_call, bob_call, _ = call(alice, bob, sip_lab, answer=False)
    alice.command("hangup", call_id=alice_call)
    assert alice.wait("CallEnded", call_id=alice_call)["code"] == 487
    assert bob.wait("CallEnded", call_id=bob_call)["code"] == 487


def test_call_to_an_unknown_user_ends_with_404(alice_and_bob, sip_lab):
    alice, _ = alice_and_bob
    alice_call = alice.command("make_call", account_id="alice", uri=sip_lab.sip.uri("nobody"), offer=OFFER_A)
    ended = alice.wait("CallEnded", call_id=alice_call)
    assert ended["code"] == 404, ended
    result = alice.try_command("make_call", account_id="alice", uri="sip:bad uri\r\n", offer=OFFER_A)
    assert result["ok"] is False and "SIP URI" in result["error"]


def test_agent_survives_a_flood_of_malformed_sip(alice_and_bob, sip_lab, phones):
    _, bob = alice_and_bob
    target = phones("echo", log_level=3)  # level 4 would log every datagram, slowly
    # An account that takes INVITEs from anyone, so the flood reaches onIncomingCall (the pitfall).
    target.command("add_account", config={"account_id": "local", "address": "echo@127.0.0.1", "password": "x",
                                          "register": False})
    target.command("auto", incoming="reject", code=486)
    port = target.ports["udp"]
    rng = random.Random(99)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.bind(("127.0.0.1", 0))
        sender.setblocking(False)
        here = sender.getsockname()[1]
        for number in range(FLOOD_DATAGRAMS):
            try:
                sender.sendto(malformed_datagram(rng, number, port, here), ("127.0.0.1", port))
            except OSError:
                pass
            if number % 25 == 0:
                time.sleep(0.004)  # about the rate the agent reads; not a bandwidth test
                drain(sender)
        time.sleep(0.3)
        drain(sender)
    assert target.process.poll() is None, target.log_tail()
    assert target.command("calls") is not None  # it still answers its commands
    incoming = len(target.unseen("IncomingCall"))
    print(f"flood: {FLOOD_DATAGRAMS} datagrams, {incoming} reached the application as IncomingCall")
    assert incoming > 20  # the flood did reach onIncomingCall, where the pitfall was

    target.command("remove_account", account_id="local")
    target.command("auto", incoming="answer", offer=OFFER_B)
    registered, _ = target.register("echo", sip_lab.users["echo"], sip_lab, transport="tcp")
    assert registered["ok"], registered
    bob_call = bob.command("make_call", account_id="bob", uri=sip_lab.sip.uri("echo"), offer=OFFER_A)
    bob.wait("CallProgress", call_id=bob_call, state="connected")
    bob.command("hangup", call_id=bob_call)
    assert bob.wait("CallEnded", call_id=bob_call)
    target.wait("CallEnded", timeout=EVENT_TIMEOUT_S)
    assert target.process.poll() is None


def test_no_tcp_listener_unless_a_tcp_account_needs_one(sip_lab, phones):
    """About 66 quick TCP connect+close to a pjsua listener abort the process (I/O queue assertion)."""
    phone = phones("echo")
    assert set(phone.ports) == {"udp"}
    registered, _ = phone.register("echo", sip_lab.users["echo"], sip_lab, transport="tcp")
    assert registered["ok"]
    listening = phones("listening", listen_tcp=True)
    assert set(listening.ports) == {"udp", "tcp"}


def test_a_phone_without_accounts_listens_on_nothing(sip_lab, phones):
    """The firmware's agent (listen_udp off): a locked or fresh phone has no SIP socket at all."""
    phone = phones("echo", listen_udp=False, bind_address="127.0.0.1")
    assert phone.ports == {}
    assert not udp_sockets_of(phone.process.pid)
    registered, _ = phone.register("echo", sip_lab.users["echo"], sip_lab)
    assert registered["ok"]
    ports = phone.command("ports")
    assert set(ports) == {"udp"} and ports["udp"] in udp_sockets_of(phone.process.pid)


def udp_sockets_of(pid: int) -> set[int]:
    """The local ports of the UDP sockets process ``pid`` holds (IPv4 and IPv6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("udp", "udp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_registered_account_takes_calls_only_from_its_registrar(sip_lab, phones):
    phone = phones("echo")
    registered, _ = phone.register("echo", sip_lab.users["echo"], sip_lab)
    assert registered["ok"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as scanner:
        scanner.bind(("127.0.0.1", 0))
        scanner.settimeout(EVENT_TIMEOUT_S)
        here = scanner.getsockname()[1]
        invite = next(d for seed in range(100)
                      if (d := malformed_datagram(random.Random(seed), 12, phone.ports["udp"], here)).startswith(b"INVITE"))
        assert b"m=audio" in invite
        scanner.sendto(invite, ("127.0.0.1", phone.ports["udp"]))
        final = next(r for r in iter(lambda: scanner.recv(65535), None) if not r.startswith(b"SIP/2.0 1"))
    assert final.startswith(b"SIP/2.0 403 "), final[:80]
    assert not phone.unseen("IncomingCall") and not phone.unseen("CallEnded")


def test_unanswered_incoming_call_is_rejected_after_the_ring_timeout(alice_and_bob, sip_lab, phones):
    alice, _ = alice_and_bob
    slow = phones("echo", ring_timeout_s=0.3)
    registered, _ = slow.register("echo", sip_lab.users["echo"], sip_lab)
    assert registered["ok"]
    alice_call = alice.command("make_call", account_id="alice", uri=sip_lab.sip.uri("echo"), offer=OFFER_A)
    incoming = slow.wait("IncomingCall")
    assert slow.wait("CallEnded", call_id=incoming["call_id"])["code"] == 480
    assert alice.wait("CallEnded", call_id=alice_call)["code"] == 480


def test_offer_with_one_codec_is_answered_with_it(alice_and_bob, sip_lab):
    alice, bob = alice_and_bob
    pcmu_only = {**OFFER_A, "codecs": ["PCMU"]}
    alice_call = alice.command("make_call", account_id="alice", uri=sip_lab.sip.uri("bob"), offer=pcmu_only)
    incoming = bob.wait("IncomingCall")
    assert [pt for pt, name in incoming["remote_media"]["encodings"] if not name.startswith("telephone-event")] == [0]
    bob.command("answer", call_id=incoming["call_id"], offer=OFFER_B)
    answer = alice.wait("RemoteMediaChanged", call_id=alice_call)["remote_media"]
    assert answer["payload_types"][0] == 0 and answer["zrtp_hash"] == HASH_B
    alice.command("hangup", call_id=alice_call)
    alice.wait("CallEnded", call_id=alice_call)
    bob.wait("CallEnded", call_id=incoming["call_id"])


def drain(sock):
    try:
        while True:
            sock.recv(65535)
    except (BlockingIOError, OSError):
        pass


def malformed_datagram(rng: random.Random, number: int, port: int, here: int) -> bytes:
    """One of many kinds of broken SIP: empty and multipart bodies, bad headers, huge headers, garbage."""
    branch = f"z9hG4bK{number}x{rng.randrange(10**9)}"
    call_id = f"flood-{number}-{rng.randrange(10**9)}"
    method = "INVITE" if rng.random() < 0.7 else rng.choice(["OPTIONS", "BYE", "CANCEL", "ACK", "REGISTER", "UPDATE", "INFO"])
    headers = [
        f"{method} sip:echo@127.0.0.1:{port} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{here};branch={branch};rport",
        "Max-Forwards: 70",
        f"From: \"Flood\" <sip:flood@127.0.0.1:{here}>;tag={number}",
        f"To: <sip:echo@127.0.0.1:{port}>",
        f"Call-ID: {call_id}",
        f"CSeq: {rng.randint(1, 9)} {method}",
        f"Contact: <sip:flood@127.0.0.1:{here}>",
    ]
    sdp = PEER_SDP.replace("10.0.0.7", "127.0.0.1")
    kind = number % 16
    body = ""
    if kind == 0:  # empty body announced as SDP
        headers.append("Content-Type: application/sdp")
    elif kind == 1:  # multipart with SDP and junk
        headers.append('Content-Type: multipart/mixed;boundary="xyz"')
        body = f"--xyz\r\nContent-Type: application/sdp\r\n\r\n{sdp}\r\n--xyz\r\nContent-Type: text/plain\r\n\r\nhi\r\n--xyz--\r\n"
    elif kind == 2:  # multipart without boundary, or empty
        headers.append(rng.choice(["Content-Type: multipart/mixed", 'Content-Type: multipart/mixed;boundary="q"']))
        body = rng.choice(["", "--q\r\n", "--q--", "garbage"])
    elif kind == 3:  # a huge header
        headers.append("X-Huge: " + "A" * rng.randint(1000, 60000))
    elif kind == 4:  # a missing mandatory header
        del headers[rng.randrange(1, len(headers))]
    elif kind == 5:  # lying Content-Length
        headers.append("Content-Type: application/sdp")
        headers.append(f"Content-Length: {rng.choice(['-1', '999999', 'abc', '0', '5'])}")
        body = sdp
    elif kind == 6:  # broken SDP
        headers.append("Content-Type: application/sdp")
        body = rng.choice(["v=0\r\n", "v=0\r\nm=audio x\r\n", sdp.replace("m=audio 7078", "m=audio 99999"), "\x00" * 50])
    elif kind == 7:  # garbage
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 1500)))
    elif kind == 8:  # a response to nothing
        headers[0] = f"SIP/2.0 {rng.choice([100, 180, 200, 401, 487, 999])} Whatever"
    elif kind == 9:  # bad header values
        headers[rng.randrange(1, len(headers))] = rng.choice(
            ["Via: ", "CSeq: x INVITE", "From: <<<", "To: sip:", "Max-Forwards: -5", "Call-ID:", ": :"])
    elif kind == 10:  # non-UTF-8 bytes
        return ("\r\n".join(headers) + "\r\nContent-Type: application/sdp\r\n\r\n").encode() + bytes(range(128, 256))
    elif kind == 11:  # many Via headers
        headers[1:1] = [f"Via: SIP/2.0/UDP 10.0.0.{i}:5060;branch=z9hG4bK{i}" for i in range(rng.randint(50, 400))]
    elif kind == 12:  # a good-looking INVITE with SDP (rejected by the phone's policy)
        headers.append("Content-Type: application/sdp")
        body = sdp
    text = "\r\n".join(headers) + "\r\n"
    if not any(h.startswith("Content-Length") for h in headers):
        text += f"Content-Length: {len(body.encode())}\r\n"
    data = (text + "\r\n" + body).encode()
    if kind >= 13:  # random mutations of a valid message
        data = bytearray(data)
        for _ in range(rng.randint(1, 20)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if kind == 15:
            data = data[: rng.randrange(len(data))]
        data = bytes(data)
    return data[:65000]


# --- TLS --------------------------------------------------------------------------------------


def test_tls_call_verified_by_ca_and_pin(tmp_path, phones):
    """The lab's Kamailio has no TLS module, so a second SipAgent listens on TLS with a lab-CA certificate."""
    good = create_certificates(tmp_path / "good", ["127.0.0.1"])
    other = create_certificates(tmp_path / "other", ["127.0.0.1"])
    bob = phones("bob-tls", tls_cert=str(good.cert_path), tls_key=str(good.key_path))
    bob.command("add_account", config={"account_id": "bob", "address": "bob@127.0.0.1", "password": "x", "register": False,
                                       "transport": "tls", "ca_path": str(good.ca_path)})
    bob.command("auto", incoming="answer", offer=OFFER_B)
    tls_port = bob.ports["tls"]
    target = f"sip:bob@127.0.0.1:{tls_port};transport=tls"
    alice = phones("alice-tls")

    def tls_account(name, **check):
        return {"account_id": name, "address": "alice@127.0.0.1", "password": "x", "register": False,
                "transport": "tls", **check}

    alice.command("add_account", config=tls_account("trusting", ca_path=str(good.ca_path)))
    started = time.monotonic()
    trusted = alice.command("make_call", account_id="trusting", uri=target, offer=OFFER_A)
    connected = alice.wait("CallProgress", call_id=trusted, state="connected")
    print(f"INVITE to CONFIRMED over TLS (new connection): {(connected['t'] - started) * 1000:.1f} ms")
    remote = alice.wait("RemoteMediaChanged", call_id=trusted)["remote_media"]
    assert (remote["rtp_port"], remote["zrtp_hash"]) == (40002, HASH_B)
    alice.command("hangup", call_id=trusted)
    alice.wait("CallEnded", call_id=trusted)
    assert bob.wait("CallEnded")["code"] == 200  # the BYE reached bob, over TLS to his Contact

    alice.command("add_account", config=tls_account("distrusting", ca_path=str(other.ca_path)))
    refused = alice.command("make_call", account_id="distrusting", uri=target, offer=OFFER_A)
    ended = alice.wait("CallEnded", call_id=refused)
    assert ended["code"] >= 400, ended
    assert not [e for e in alice.events if e.get("call_id") == refused and e.get("state") == "connected"]

    registrar = f"sip:127.0.0.1:{tls_port}"
    pin = certificate_sha256(good.cert_path)
    alice.command("add_account", config=tls_account("pinned", tls_pin=pin, registrar=registrar))
    pinned = alice.command("make_call", account_id="pinned", uri=target, offer=OFFER_A)
    alice.wait("CallProgress", call_id=pinned, state="connected")
    alice.command("hangup", call_id=pinned)
    alice.wait("CallEnded", call_id=pinned)
    assert bob.wait("CallEnded")["code"] == 200

    # A pin is checked when a connection to the registrar opens: a fresh phone, a fresh connection.
    mallory = phones("alice-mispinned")
    mallory.command("add_account", config=tls_account("mispinned", tls_pin="00" * 32, registrar=registrar))
    mispinned = mallory.command("make_call", account_id="mispinned", uri=target, offer=OFFER_A)
    ended = mallory.wait("CallEnded", call_id=mispinned)
    assert ended["code"] >= 400, ended
    assert mallory.wait("Registered", account_id="mispinned")["ok"] is False
    assert len([e for e in bob.events if e.get("event") == "IncomingCall"]) == 2  # trusting and pinned only


def certificate_sha256(path: Path) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    return x509.load_pem_x509_certificate(path.read_bytes()).fingerprint(hashes.SHA256()).hex()


# --- one agent in one process ----------------------------------------------------------------

LIFECYCLE_SCRIPT = r"""
import asyncio, json, logging, sys
from firmware.calls.sip import MediaOffer, SipAccountConfig, SipAgent, SipError

logging.basicConfig(level=logging.INFO, stream=sys.stderr)

async def main():
    events = []
    def post(event):
        events.append(event)
        raise RuntimeError("the application's handler failed")  # must not disturb the agent

    async def until(predicate):
        for _ in range(500):
            if predicate():
                return True
            await asyncio.sleep(0.01)
        return False

    def seen(kind, **fields):
        return [e for e in events if type(e).__name__ == kind
                and all(getattr(e, k) == v for k, v in fields.items())]

    agent = SipAgent(post)
    agent.start()
    result = {}
    try:
        SipAgent(post).start()
    except SipError as error:
        result["second_agent"] = str(error)
    agent.add_account(SipAccountConfig("a", "a@127.0.0.1", "pw", register=False))
    outgoing = agent.make_call("a", f"sip:a@127.0.0.1:{agent.ports['udp']}", MediaOffer(30000, 30001))
    result["incoming"] = await until(lambda: seen("IncomingCall"))
    incoming = seen("IncomingCall")[0].call_id
    agent.answer(incoming, MediaOffer(40000, 40001))
    result["connected"] = await until(lambda: seen("CallProgress", call_id=outgoing, state="connected")
                                      and seen("CallProgress", call_id=incoming, state="connected"))
    result["calls_before_stop"] = sorted(agent.call_ids())
    agent.stop()
    agent.stop()  # idempotent
    await asyncio.sleep(0.05)
    result["ended"] = sorted(e.call_id for e in seen("CallEnded"))
    try:
        agent.make_call("a", "sip:x@127.0.0.1", MediaOffer(30000, 30001))
    except SipError as error:
        result["after_stop"] = str(error)
    again = SipAgent(post)  # one at a time: a new agent may start once the first stopped
    again.start()
    again.add_account(SipAccountConfig("b", "b@127.0.0.1", "pw", register=False))
    await asyncio.sleep(0.05)
    again.stop()
    result["restarted"] = True
    print(json.dumps(result))

asyncio.run(main())
"""


def test_one_agent_per_process_at_a_time_and_a_clean_stop_with_calls_up(tmp_path):
    done = subprocess.run([sys.executable, "-c", LIFECYCLE_SCRIPT], check=False, capture_output=True, text=True,
                          env=helper_environment(), timeout=30)
    assert done.returncode == 0, done.stderr[-6000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "one SIP agent per process at a time" in result["second_agent"]
    assert result["restarted"]
    assert result["incoming"] and result["connected"], done.stderr[-6000:]
    assert result["calls_before_stop"] == ["call-1", "call-2"]
    assert result["ended"] == ["call-1", "call-2"]
    assert "not running" in result["after_stop"]
    assert "the application's handler failed" in done.stderr  # logged, and the agent went on
