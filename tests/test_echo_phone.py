"""The lab's demo contact "echo" (lab/echo_phone.py): secure calls answered and played back late.

A Byline phone in its own process (``./byline scenario``, keypad-driven as in tests/test_calls.py)
calls echo in a private lab: it must reach SECURE, and the keyed tone fed into its microphone file
must come back in its earpiece file, the same pattern, later by the echo's delay and more. Calls
the firmware could never place (no ZRTP, a second caller, a call left running) are made with raw
SIP over UDP through Kamailio, as a scanner or another softphone would.
"""

import hashlib
import math
import os
import random
import re
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import phones
from helpers.phones import (
    RATE,
    TONES,
    ScriptedPhone,
    account_steps,
    best_tone_share,
    contact_steps,
    sas_of,
)

from lab import ECHO_READY_LINE, LabError
from lab.echo_phone import READY_LINE
from lab.processes import ManagedProcess, processes_in_group

ROOT = Path(__file__).resolve().parent.parent
ECHO_DELAY_S = 0.2  # lab/echo_phone.py's DEFAULT_DELAY_MS
CALL_SECONDS = 4
BLOCK = RATE // 100  # 10 ms blocks for the envelope
SYMBOL_BLOCKS = 4  # the microphone's tone is keyed on and off in 40 ms symbols
MAX_LAG_BLOCKS = 150
SIP_TIMEOUT_S = 5.0
ZRTP_HASH = "1.10 " + "ab" * 32
PRIVATE_PATTERNS = (r"\balice", r"\bbob", r"\bsips?:\S", r"\becho@")  # not "firmware.calls.sip: ..."


# --- a keyed tone: its on/off pattern shows where (and how late) it comes back ------------------


def keyed_pattern(seconds: float = 60, seed: int = 7) -> list[bool]:
    """On/off per 10 ms block: 40 ms symbols, a quarter of them off, at random."""
    rng = random.Random(seed)
    symbols = int(seconds * 100) // SYMBOL_BLOCKS
    return [on for on in (rng.random() >= 0.25 for _ in range(symbols)) for _ in range(SYMBOL_BLOCKS)]


def keyed_tone_file(path: Path, frequency: float, seconds: float = 60) -> Path:
    """``tone_file``'s tone, silent in the blocks where ``keyed_pattern`` is off (phase kept)."""
    pattern = keyed_pattern(seconds)
    samples = [int(8000 * math.sin(2 * math.pi * frequency * i / RATE)) if pattern[i // BLOCK] else 0
               for i in range(len(pattern) * BLOCK)]
    path.write_bytes(struct.pack(f"<{len(samples)}h", *samples))
    return path


def loud_blocks(pcm: bytes) -> list[bool]:
    samples = struct.unpack(f"<{len(pcm) // 2}h", pcm[: len(pcm) // 2 * 2])
    energies = [sum(x * x for x in samples[i:i + BLOCK]) / BLOCK for i in range(0, len(samples) - BLOCK + 1, BLOCK)]
    loudest = max(energies, default=0)
    return [energy > loudest / 10 for energy in energies]


def echo_lag(heard: bytes) -> tuple[float, float]:
    """(lag in seconds, share of blocks that agree) of the microphone's pattern in ``heard``."""
    pattern, loud = keyed_pattern(), loud_blocks(heard)
    first = next(i for i, on in enumerate(loud) if on)
    last = len(loud) - next(i for i, on in enumerate(reversed(loud)) if on)
    span = range(first + SYMBOL_BLOCKS, last - SYMBOL_BLOCKS)  # not the edges of the call
    best = max(range(MAX_LAG_BLOCKS), key=lambda lag: sum(loud[b] == pattern[b - lag] for b in span if b >= lag))
    agreement = sum(loud[b] == pattern[b - best] for b in span if b >= best) / len(span)
    return best * BLOCK / RATE, agreement


# --- raw SIP over UDP through the lab's Kamailio -------------------------------------------------


class RawSipPhone:
    """A minimal UAC (and UAS for BYE) on one UDP socket, logged in as a lab user by digest."""

    def __init__(self, lab, user: str):
        self.lab, self.user, self.password = lab, user, lab.users[user]
        self.proxy = (lab.sip.host, lab.sip.port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(SIP_TIMEOUT_S)
        self.port = self.sock.getsockname()[1]
        self.media_port = self.port + 2  # nothing listens there: echo's ZRTP Hellos go nowhere

    def close(self) -> None:
        self.sock.close()

    def sdp(self, zrtp: bool) -> str:
        lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
                 f"m=audio {self.media_port} RTP/AVP 9 0", "a=rtpmap:9 G722/8000", "a=rtpmap:0 PCMU/8000",
                 "a=sendrecv"]
        if zrtp:
            lines.append(f"a=zrtp-hash:{ZRTP_HASH}")
        return "\r\n".join(lines) + "\r\n"

    def invite(self, uri: str, *, zrtp: bool) -> dict:
        """INVITE ``uri`` (answering the 407 challenge); the final response, ACKed, as a dict."""
        dialog = {"uri": uri, "call_id": f"raw-{secrets.token_hex(8)}", "from_tag": secrets.token_hex(4), "cseq": 1}
        response = self._invite_once(dialog, zrtp, None)
        if response["code"] == 407:
            self._ack_failure(dialog, response)
            dialog["cseq"] += 1
            response = self._invite_once(dialog, zrtp, self._authorization(response, uri))
        if response["code"] >= 300:
            self._ack_failure(dialog, response)
        else:
            self._ack_success(dialog, response)
        response["dialog"] = dialog
        return response

    def wait_for_bye(self, dialog: dict, timeout: float) -> float:
        """Answer the peer's BYE for ``dialog`` with 200; the time it came (monotonic)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                message = self.sock.recv(65535).decode(errors="replace")
            except TimeoutError:
                break
            if message.startswith("BYE ") and dialog["call_id"] in message:
                arrived = time.monotonic()
                self._reply(message, 200, "OK")
                return arrived
        raise AssertionError(f"no BYE within {timeout} s")

    def bye(self, dialog: dict) -> int:
        dialog["cseq"] += 1
        branch = self._branch()
        self.sock.sendto(self._request("BYE", dialog, branch, to_tag=dialog["to_tag"], cseq=dialog["cseq"],
                                       target=dialog["contact"], route=dialog["route"]), self.proxy)
        return self._final(dialog["call_id"], "BYE")["code"]

    def _invite_once(self, dialog: dict, zrtp: bool, authorization: str | None) -> dict:
        body = self.sdp(zrtp)
        extra = [f"Contact: <sip:{self.user}@127.0.0.1:{self.port}>", "Content-Type: application/sdp"]
        if authorization:
            extra.append(f"Proxy-Authorization: {authorization}")
        dialog["branch"] = self._branch()
        self.sock.sendto(self._request("INVITE", dialog, dialog["branch"], cseq=dialog["cseq"], extra=extra,
                                       body=body), self.proxy)
        return self._final(dialog["call_id"], "INVITE")

    def _final(self, call_id: str, method: str) -> dict:
        self.sock.settimeout(SIP_TIMEOUT_S)
        while True:
            message = self.sock.recv(65535).decode(errors="replace")
            if call_id not in message:
                continue
            if not message.startswith("SIP/2.0 "):
                if message.startswith("BYE "):
                    self._reply(message, 200, "OK")
                continue
            code = int(message.split(" ", 2)[1])
            if code >= 200 and f" {method}" in header(message, "CSeq"):
                return {"code": code, "message": message, "to": header(message, "To"),
                        "contact": (re.search(r"<([^>]+)>", header(message, "Contact") or "") or [None, None])[1],
                        "route": [h for h in headers(message, "Record-Route")]}

    def _ack_failure(self, dialog: dict, response: dict) -> None:
        """ACK of a non-2xx final response: same branch and Request-URI as the INVITE, hop by hop."""
        self.sock.sendto(self._request("ACK", dialog, dialog["branch"], to_header=response["to"],
                                       cseq=dialog["cseq"]), self.proxy)

    def _ack_success(self, dialog: dict, response: dict) -> None:
        """ACK of a 2xx: a new transaction to the callee's Contact, along the Record-Route."""
        dialog["to_tag"] = re.search(r";tag=([^;>\s]+)", response["to"])[1]
        dialog["contact"] = response["contact"]
        dialog["route"] = response["route"]
        self.sock.sendto(self._request("ACK", dialog, self._branch(), to_tag=dialog["to_tag"], cseq=dialog["cseq"],
                                       target=dialog["contact"], route=dialog["route"]), self.proxy)

    def _request(self, method: str, dialog: dict, branch: str, *, cseq: int, to_tag: str | None = None,
                 to_header: str | None = None, target: str | None = None, route=(), extra=(), body: str = "") -> bytes:
        to = to_header or f"<{dialog['uri']}>" + (f";tag={to_tag}" if to_tag else "")
        lines = [
            f"{method} {target or dialog['uri']} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch};rport",
            "Max-Forwards: 70",
            f"From: <{self.lab.sip.uri(self.user)}>;tag={dialog['from_tag']}",
            f"To: {to}",
            f"Call-ID: {dialog['call_id']}",
            f"CSeq: {cseq} {method}",
            *[f"Route: {r}" for r in route],
            *extra,
            f"Content-Length: {len(body.encode())}",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()

    def _reply(self, request: str, code: int, reason: str) -> None:
        lines = [f"SIP/2.0 {code} {reason}", *[f"Via: {v}" for v in headers(request, "Via")],
                 f"From: {header(request, 'From')}", f"To: {header(request, 'To')}",
                 f"Call-ID: {header(request, 'Call-ID')}", f"CSeq: {header(request, 'CSeq')}", "Content-Length: 0"]
        self.sock.sendto(("\r\n".join(lines) + "\r\n\r\n").encode(), self.proxy)

    def _authorization(self, challenge: dict, uri: str) -> str:
        fields = dict(re.findall(r'(\w+)="?([^",]*)"?', header(challenge["message"], "Proxy-Authenticate")))
        realm, nonce = fields["realm"], fields["nonce"]
        ha1 = md5(f"{self.user}:{realm}:{self.password}")
        ha2 = md5(f"INVITE:{uri}")
        if "qop" in fields:
            cnonce, count = secrets.token_hex(8), "00000001"
            response = md5(f"{ha1}:{nonce}:{count}:{cnonce}:auth:{ha2}")
            qop = f", qop=auth, nc={count}, cnonce=\"{cnonce}\""
        else:
            response, qop = md5(f"{ha1}:{nonce}:{ha2}"), ""
        return (f'Digest username="{self.user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
                f'response="{response}", algorithm=MD5{qop}')

    @staticmethod
    def _branch() -> str:
        return f"z9hG4bK{secrets.token_hex(8)}"


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def headers(message: str, name: str) -> list[str]:
    head = message.split("\r\n\r\n", 1)[0]
    return [line.split(":", 1)[1].strip() for line in head.split("\r\n")[1:]
            if line.split(":", 1)[0].strip().lower() == name.lower()]


def header(message: str, name: str) -> str | None:
    found = headers(message, name)
    return found[0] if found else None


def echo_log(lab) -> str:
    return lab.echo_process.log_text()


def assert_private(text: str, *secrets_: str) -> None:
    for pattern in (*PRIVATE_PATTERNS, *(rf"\b{re.escape(secret)}\b" for secret in secrets_)):
        assert not re.search(pattern, text), f"{pattern!r} is in the echo phone's log"


# --- tests -------------------------------------------------------------------------------------


def test_byline_phone_calls_echo_securely_and_hears_itself_late(tmp_path, lab_factory, monkeypatch):
    lab = lab_factory(xmpp=False)
    sip = lab.sip
    alice_address = f"alice@{sip.host}:{sip.port}"
    echo_address = lab.echo_uri.removeprefix("sip:")
    monkeypatch.setattr(phones, "tone_file", keyed_tone_file)  # ScriptedPhone's microphone: a keyed tone
    alice = ScriptedPhone("alice", tmp_path, account_steps(alice_address, lab.users["alice"])
                          + contact_steps("Echo", echo_address) + f"""
print
lift
expect SECURE 30
print
pause {CALL_SECONDS}
hangup
expect "Call ended" 10
print
""")
    busy = RawSipPhone(lab, "bob")
    try:
        alice.read_until("screen: ")  # the contact is saved: the next step lifts the handset
        dialled = time.monotonic()
        secure_line = alice.read_until("SECURE")
        dial_to_secure = time.monotonic() - dialled
        refused = busy.invite(lab.echo_uri, zrtp=True)  # a second caller while echo is in a call
        alice.finish()
    finally:
        alice.stop()
        busy.close()
    print(f"echo: dial to SECURE {dial_to_secure:.2f} s (keypad script step to printed screen)")
    assert refused["code"] == 486, refused["message"]

    sas = sas_of(secure_line)
    assert re.fullmatch(r"[a-z0-9]{4}", sas), secure_line
    heard = alice.playback.read_bytes()
    assert best_tone_share(heard, TONES["alice"]) > 0.5, "alice's tone never came back from echo"
    lag, agreement = echo_lag(heard)
    print(f"echo: alice hears herself {lag * 1000:.0f} ms late ({agreement:.0%} of 10 ms blocks agree)")
    assert agreement > 0.9, f"the earpiece does not carry the microphone's pattern ({agreement:.0%})"
    assert ECHO_DELAY_S <= lag < 1.0, lag

    deadline = time.monotonic() + SIP_TIMEOUT_S
    while "ended after" not in echo_log(lab) and time.monotonic() < deadline:
        time.sleep(0.05)
    log_text = echo_log(lab)
    assert re.search(r"call-1: secure after [0-9.]+ s", log_text), log_text
    assert re.search(r"call-1 ended after [0-9.]+ s: 200", log_text), log_text  # alice hung up
    assert re.search(r"call-2: busy with call-1: refused 486", log_text), log_text
    assert_private(log_text, sas, lab.users["echo"])
    assert lab.echo_process.running


def test_echo_refuses_calls_without_zrtp_with_488(lab_factory):
    lab = lab_factory(xmpp=False)
    caller = RawSipPhone(lab, "alice")
    try:
        refused = caller.invite(lab.echo_uri, zrtp=False)
    finally:
        caller.close()
    assert refused["code"] == 488, refused["message"]
    assert "ZRTP required" in refused["message"].split("\r\n", 1)[0]
    assert "refused 488" in echo_log(lab)
    assert lab.echo_process.running
    assert_private(echo_log(lab), lab.users["echo"])


def test_echo_phone_keeps_its_password_off_the_command_line_and_stops_with_the_lab(lab_factory):
    lab = lab_factory(xmpp=False)
    process = lab.echo_process
    password = lab.users["echo"]
    pids = processes_in_group(process.pgid)  # the guardian and the echo phone
    command_lines = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in pids}
    phone_pids = [pid for pid, line in command_lines.items() if line.split(b"\0")[1:3] == [b"-m", b"lab.echo_phone"]]
    assert len(phone_pids) == 1, command_lines
    assert not any(password.encode() in line for line in command_lines.values())
    assert not (lab.directory / "echo.password").exists()  # read at start, then removed by the lab
    assert ECHO_READY_LINE == READY_LINE  # what the lab waits for is what the phone prints

    caller = RawSipPhone(lab, "alice")  # echo is in a call when the lab stops: the caller gets a BYE
    answered = caller.invite(lab.echo_uri, zrtp=True)
    assert answered["code"] == 200, answered["message"]
    bye = {}
    listener = threading.Thread(target=lambda: bye.update(at=caller.wait_for_bye(answered["dialog"], SIP_TIMEOUT_S)))
    listener.start()
    try:
        stopping = time.monotonic()
        lab.stop()
        stopped = time.monotonic()
    finally:
        listener.join()
        caller.close()
    print(f"echo: lab.stop() with echo in a call took {stopped - stopping:.2f} s")
    assert stopping < bye.get("at", 0) < stopped

    assert processes_in_group(process.pgid) == []
    assert [pid for pid in pids if Path(f"/proc/{pid}").exists()] == []
    assert process.returncode == 0, process.log_tail()  # stopped by SIGTERM, cleanly
    log_text = process.log_text()
    assert "SIP agent stopped" in log_text and "echo phone stopped after answering 1 call(s)" in log_text
    with pytest.raises(LabError, match="no echo phone"):
        _ = lab.echo_uri


def start_echo_by_hand(lab, tmp_path, *options: str) -> ManagedProcess:
    """``python -m lab.echo_phone`` as a lab server would run it (under the guardian), password in a file."""
    password_file = tmp_path / "echo.password"
    password_file.touch(mode=0o600)
    password_file.write_text(lab.users["echo"] + "\n")
    process = ManagedProcess(
        "echo phone (by hand)",
        [sys.executable, "-m", "lab.echo_phone", "--registrar", lab.sip.registrar_uri, "--user", "echo",
         "--password-file", str(password_file), "--log", str(tmp_path / "echo.log"), *options],
        cwd=tmp_path, log_path=tmp_path / "echo.log", env={**os.environ, "PYTHONPATH": str(ROOT)})
    process.start()
    return process


def test_echo_hangs_up_at_its_call_limit(tmp_path, lab_factory):
    """With a 1 s limit, a call it answered (raw SIP, whose ZRTP never answers) gets its BYE."""
    lab = lab_factory(xmpp=False, echo=False)
    echo = start_echo_by_hand(lab, tmp_path, "--max-call-seconds", "1")
    caller = RawSipPhone(lab, "alice")
    try:
        echo.wait_ready(lambda: "echo phone ready" in echo.log_text(), SIP_TIMEOUT_S)
        answered = caller.invite(lab.sip.uri("echo"), zrtp=True)
        assert answered["code"] == 200, answered["message"]
        connected = time.monotonic()
        bye_at = caller.wait_for_bye(answered["dialog"], timeout=SIP_TIMEOUT_S)
        assert 0.8 < bye_at - connected < 3.0
    finally:
        caller.close()
        echo.stop()
    assert echo.returncode == 0, echo.log_tail()
    log_text = echo.log_text()
    assert "call-1: 1 s reached: hanging up" in log_text, log_text
    assert "call-1 ended after" in log_text and "echo phone stopped after answering 1 call(s)" in log_text
    assert_private(log_text, lab.users["echo"])


def test_echo_phone_with_a_wrong_password_from_standard_input_exits_with_1(lab_factory):
    lab = lab_factory(xmpp=False, echo=False)
    wrong = "not-" + lab.users["echo"]
    finished = subprocess.run(
        [sys.executable, "-m", "lab.echo_phone", "--registrar", lab.sip.registrar_uri, "--user", "echo",
         "--password-file", "-"],
        check=False, input=wrong + "\n", capture_output=True, text=True, timeout=30, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert finished.returncode == 1, finished.stderr
    assert "echo phone ready" not in finished.stdout
    assert re.search(r"registration refused: 40[13]", finished.stderr), finished.stderr
    assert wrong not in finished.stderr + finished.stdout
