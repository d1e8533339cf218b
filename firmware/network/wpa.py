"""The firmware's only client of wpa_supplicant: its control interface, and the parsing of its answers.

wpa_supplicant runs with ``ctrl_interface=DIR=...`` and creates one Unix datagram socket per
interface in that directory (``DIR/wlan0``). A client binds a datagram socket of its own, sends
one command per datagram and gets one answer per datagram; once attached it also receives
unsolicited event datagrams that start with ``<level>``, interleaved with answers at any time.

Contracts kept here:

- No passphrase ever reaches wpa_supplicant, the store or a log: ``wpa_psk`` derives the key
  and only the key is sent (as 64 hex digits); exception messages and log lines name a command
  by its verb (plus network id and field for ``SET_NETWORK``), never by its value.
- SSIDs are arbitrary bytes: they go to wpa_supplicant as hex, and come back printf-escaped
  (``printf_decode`` undoes that), so no SSID is ever quoted or escaped by us.
- Nothing blocks the event loop: the socket is non-blocking and read by one loop reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import secrets
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from firmware.profile import PSK_BYTES, SSID_MAX_BYTES, passphrase_problem

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 5.0
MAX_DATAGRAM_BYTES = 65536

PSK_ITERATIONS = 4096

SECURED_FLAG_WORDS = ("WPA", "RSN", "WEP", "SAE")  # "WPA" also covers WPA2 and WPA3 flags

_EVENT_PATTERN = re.compile(r"<(\d+)>(.*)", re.DOTALL)
_BSSID_PATTERN = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
_CLIENT_SOCKET_PREFIX = "byline-wpa-"
_SIMPLE_ESCAPES = {"\\": 0x5C, '"': 0x22, "e": 0x1B, "n": 0x0A, "r": 0x0D, "t": 0x09}
_HEX_DIGITS = set("0123456789abcdefABCDEF")
_REFUSALS = ("FAIL", "UNKNOWN COMMAND")


class WpaError(Exception):
    """wpa_supplicant refused, did not answer, or answered nonsense (the message says which, never a secret).

    ``answer`` is wpa_supplicant's answer when it refused (e.g. ``"FAIL-BUSY"``), otherwise None.
    """

    def __init__(self, message: str, answer: str | None = None):
        super().__init__(message)
        self.answer = answer


def wpa_psk(passphrase: str, ssid: bytes) -> bytes:
    """The IEEE 802.11i pre-shared key: PBKDF2-HMAC-SHA1(passphrase, ssid, 4096 iterations, 32 bytes).

    Derived here so the passphrase never reaches wpa_supplicant or the store: only this key does.
    Raises ValueError (whose message never contains the passphrase) unless the passphrase is
    8..63 printable ASCII characters (0x20-0x7e) and the SSID 1..32 bytes.
    """
    if not isinstance(passphrase, str):
        raise TypeError("the passphrase must be text")
    problem = passphrase_problem(passphrase)
    if problem:
        raise ValueError(problem)
    _check_ssid(ssid)
    return hashlib.pbkdf2_hmac("sha1", passphrase.encode("ascii"), bytes(ssid), PSK_ITERATIONS, PSK_BYTES)


@dataclass(frozen=True)
class Bss:
    """One line of SCAN_RESULTS: a base station as seen by the last scan."""

    bssid: str
    frequency_mhz: int
    signal_dbm: int
    flags: str
    ssid: bytes

    @property
    def secured(self) -> bool:
        """True when the network needs a key (WPA, WPA2, WPA3/SAE, RSN or WEP in its flags)."""
        return any(word in self.flags for word in SECURED_FLAG_WORDS)


@dataclass(frozen=True)
class KnownNetwork:
    """One line of LIST_NETWORKS: a network configured in wpa_supplicant."""

    network_id: int
    ssid: bytes
    flags: str


def parse_scan_results(text: str) -> list[Bss]:
    """The BSSs of a SCAN_RESULTS answer, strongest signal first, one per SSID (its strongest).

    Lines are ``bssid<TAB>frequency<TAB>signal<TAB>flags<TAB>ssid``; the header and malformed
    lines are skipped, so garbage gives [] rather than an exception. All hidden BSSs (empty SSID)
    count as one SSID too: which hidden network is which cannot be told from a scan.
    """
    strongest_by_ssid: dict[bytes, Bss] = {}
    for line in text.splitlines():
        bss = _parse_scan_line(line)
        if bss is None:
            continue
        known = strongest_by_ssid.get(bss.ssid)
        if known is None or bss.signal_dbm > known.signal_dbm:
            strongest_by_ssid[bss.ssid] = bss
    return sorted(strongest_by_ssid.values(), key=lambda bss: (-bss.signal_dbm, bss.ssid, bss.bssid))


def _parse_scan_line(line: str) -> Bss | None:
    fields = line.split("\t")
    if len(fields) != 5:
        return None
    bssid, frequency, signal, flags, escaped_ssid = fields
    if not _BSSID_PATTERN.fullmatch(bssid):
        return None  # also the header, "bssid / frequency / ..."
    try:
        return Bss(bssid=bssid.lower(), frequency_mhz=int(frequency), signal_dbm=int(signal), flags=flags,
                   ssid=printf_decode(escaped_ssid))
    except (ValueError, WpaError):
        return None


def parse_list_networks(text: str) -> list[KnownNetwork]:
    """The networks of a LIST_NETWORKS answer, in wpa_supplicant's order; header and malformed lines skipped.

    Lines are ``id<TAB>ssid<TAB>bssid<TAB>flags``; the SSID is printf-decoded back to its bytes.
    """
    networks = []
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) != 4 or not fields[0].isdigit():
            continue  # the header "network id / ssid / bssid / flags" fails the digit test
        try:
            ssid = printf_decode(fields[1])
        except WpaError:
            continue
        networks.append(KnownNetwork(network_id=int(fields[0]), ssid=ssid, flags=fields[3]))
    return networks


def parse_status(text: str) -> dict[str, str]:
    """The ``key=value`` lines of a STATUS answer (lines without "=" are skipped).

    Values stay text as wpa_supplicant sent them: "ssid" is still printf-escaped here
    (``printf_decode(status["ssid"])`` gives its bytes).
    """
    status = {}
    for line in text.splitlines():
        key, separator, value = line.partition("=")
        if separator and key:
            status[key] = value
    return status


def printf_decode(text: str) -> bytes:
    """The bytes behind wpa_supplicant's printf_encode: ``\\\\ \\" \\e \\n \\r \\t \\xNN``, other characters printable ASCII.

    Stricter than wpa_supplicant's own decoder on purpose: anything printf_encode cannot have
    produced (a malformed or unknown escape, a control or non-ASCII character) raises WpaError,
    because it means the answer is not what we think it is.
    """
    decoded = bytearray()
    position = 0
    while position < len(text):
        char = text[position]
        if char != "\\":
            if not " " <= char <= "~":
                raise WpaError("wpa_supplicant answered nonsense: an unescaped non-printable character")
            decoded.append(ord(char))
            position += 1
            continue
        escape = text[position + 1:position + 2]
        if escape in _SIMPLE_ESCAPES:
            decoded.append(_SIMPLE_ESCAPES[escape])
            position += 2
        elif escape == "x":
            digits = text[position + 2:position + 4]
            if len(digits) != 2 or not set(digits) <= _HEX_DIGITS:
                raise WpaError("wpa_supplicant answered nonsense: a malformed \\x escape")
            decoded.append(int(digits, 16))
            position += 4
        else:
            raise WpaError("wpa_supplicant answered nonsense: an unknown escape")
    return bytes(decoded)


def control_sockets(control_dir: Path) -> list[Path]:
    """The control sockets in control_dir, one per interface, sorted; [] when the directory is missing.

    Skips anything that is not a socket and names starting with "." (not interfaces).
    """
    try:
        entries = list(Path(control_dir).iterdir())
    except FileNotFoundError:
        return []
    sockets = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            mode = entry.lstat().st_mode
        except FileNotFoundError:
            continue  # went away while we looked (wpa_supplicant stopping)
        if stat.S_ISSOCK(mode):
            sockets.append(entry)
    return sorted(sockets)


def _check_ssid(ssid: bytes) -> None:
    if not isinstance(ssid, (bytes, bytearray)):
        raise TypeError("an SSID is bytes")
    if not 1 <= len(ssid) <= SSID_MAX_BYTES:
        raise ValueError(f"an SSID is 1 to {SSID_MAX_BYTES} bytes long")


def _describe(command: str) -> str:
    """How a command is named in messages and logs: its verb, and for SET_NETWORK the id and field.

    Never a value: the value of ``SET_NETWORK id psk`` is the key.
    """
    words = command.split()
    if not words:
        return "(empty command)"
    if words[0] in ("SET_NETWORK", "GET_NETWORK"):
        return " ".join(words[:3])
    return words[0]


class WpaControl:
    """A client of one wpa_supplicant control socket. Requests are answered in order, one at a
    time; unsolicited event datagrams (those starting with "<N>") received at any time go to
    ``on_event(level: int, text: str)`` once ``attach()`` was called (and never count as an answer).

    A request that times out closes the client: a late answer would otherwise be taken for the
    answer to the next request. ``open()`` may be called again after ``close()``.
    """

    def __init__(self, socket_path: Path, client_dir: Path, on_event: Callable[[int, str], None] | None = None,
                 timeout_s: float = REQUEST_TIMEOUT_S):
        self._socket_path = Path(socket_path)
        self._client_dir = Path(client_dir)
        self._on_event = on_event
        self._timeout_s = timeout_s
        self._socket: socket.socket | None = None
        self._client_path: Path | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: asyncio.Future[str] | None = None
        self._attached = False
        self._one_request_at_a_time = asyncio.Lock()

    @property
    def interface(self) -> str:
        """The interface this socket controls: the socket's file name (e.g. "wlan0")."""
        return self._socket_path.name

    @property
    def is_open(self) -> bool:
        return self._socket is not None

    async def open(self) -> None:
        """Bind our own datagram socket in client_dir (a unique name), connect, and check that PING answers PONG.

        Raises WpaError when wpa_supplicant cannot be reached or does not answer PONG (the client
        is then closed again).
        """
        if self._socket is not None:
            return
        self._loop = asyncio.get_running_loop()
        client_path = self._client_dir / f"{_CLIENT_SOCKET_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind(str(client_path))
        except OSError as error:
            sock.close()
            raise WpaError(f"cannot bind a control client socket at {client_path}: {error.strerror}") from error
        try:
            sock.connect(str(self._socket_path))
        except OSError as error:
            sock.close()
            client_path.unlink(missing_ok=True)
            raise WpaError(f"cannot reach wpa_supplicant on {self.interface} ({self._socket_path}): "
                           f"{error.strerror}") from error
        self._socket = sock
        self._client_path = client_path
        self._loop.add_reader(sock.fileno(), self._receive_datagrams)
        try:
            answer = await self._exchange("PING")
            if answer.strip() != "PONG":
                raise WpaError(f"wpa_supplicant on {self.interface} answered nonsense to PING")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop talking to wpa_supplicant: DETACH when attached (best effort), close and remove our socket.

        Idempotent. A request still waiting fails with WpaError.
        """
        sock, self._socket = self._socket, None
        if sock is None:
            return
        if self._attached:
            # Best effort and unanswered: wpa_supplicant would drop us after failed sends anyway.
            with contextlib.suppress(OSError):
                sock.send(b"DETACH")
        self._attached = False
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(sock.fileno())
        sock.close()
        if self._client_path is not None:
            self._client_path.unlink(missing_ok=True)
            self._client_path = None
        if self._pending is not None and not self._pending.done():
            self._pending.set_exception(WpaError(f"the connection to wpa_supplicant on {self.interface} was closed"))

    async def request(self, command: str) -> str:
        """Send one command and return wpa_supplicant's raw answer (trailing newline included).

        Raises WpaError when closed, when no answer comes within the timeout ("no answer from
        wpa_supplicant on wlan0 to SCAN"), or when the answer is "FAIL..." or "UNKNOWN COMMAND".
        """
        answer = await self._exchange(command)
        _raise_if_refused(answer, command, self.interface)
        return answer

    async def attach(self) -> None:
        """Receive events from now on (they go to on_event)."""
        # Set before the request: events may follow the "OK" datagram before this coroutine resumes.
        self._attached = True
        try:
            await self._request_ok("ATTACH")
        except BaseException:
            self._attached = False
            raise

    async def scan(self) -> None:
        """Start a scan; a scan already running (a "FAIL-BUSY" answer) is fine. Results come with CTRL-EVENT-SCAN-RESULTS."""
        answer = await self._exchange("SCAN")
        if answer.strip() == "FAIL-BUSY":
            return
        _raise_if_refused(answer, "SCAN", self.interface)

    async def scan_results(self) -> list[Bss]:
        """The BSSs of the last scan (see parse_scan_results)."""
        return parse_scan_results(await self.request("SCAN_RESULTS"))

    async def status(self) -> dict[str, str]:
        """The STATUS answer as key/value text (see parse_status)."""
        return parse_status(await self.request("STATUS"))

    async def list_networks(self) -> list[KnownNetwork]:
        """The networks configured in wpa_supplicant (see parse_list_networks)."""
        return parse_list_networks(await self.request("LIST_NETWORKS"))

    async def add_network(self, ssid: bytes, psk: bytes | None, *, priority: int = 0) -> int:
        """Configure and enable a network; return its id.

        ``psk`` is the 32-byte key from ``wpa_psk`` (WPA-PSK), or None for an open network. The
        SSID goes as hex and scan_ssid is on, so hidden networks are found too. If any step fails
        the half-made network is removed and the WpaError raised (naming the step, never the key).
        Raises ValueError before talking to wpa_supplicant when ssid or psk has the wrong length.
        """
        _check_ssid(ssid)
        if psk is not None and (not isinstance(psk, (bytes, bytearray)) or len(psk) != PSK_BYTES):
            raise ValueError(f"a PSK is {PSK_BYTES} bytes (derive it with wpa_psk)")
        if not isinstance(priority, int):
            raise TypeError("the priority is an integer")
        answer = (await self.request("ADD_NETWORK")).strip()
        if not answer.isdigit():
            raise WpaError(f"wpa_supplicant on {self.interface} answered nonsense to ADD_NETWORK")
        network_id = int(answer)
        steps = [f"SET_NETWORK {network_id} ssid {bytes(ssid).hex()}"]
        if psk is None:
            steps.append(f"SET_NETWORK {network_id} key_mgmt NONE")
        else:
            steps.append(f"SET_NETWORK {network_id} key_mgmt WPA-PSK")
            steps.append(f"SET_NETWORK {network_id} psk {bytes(psk).hex()}")
        steps.append(f"SET_NETWORK {network_id} scan_ssid 1")
        steps.append(f"SET_NETWORK {network_id} priority {priority}")
        steps.append(f"ENABLE_NETWORK {network_id}")
        try:
            for command in steps:
                await self._request_ok(command)
        except BaseException:
            # Also on cancellation: a half-configured network must not stay behind.
            if self.is_open:
                with contextlib.suppress(WpaError):
                    await self.request(f"REMOVE_NETWORK {network_id}")
            raise
        return network_id

    async def remove_network(self, network_id: int | str) -> None:
        """Remove one configured network (its id), or all of them ("all")."""
        if network_id != "all" and not (isinstance(network_id, int) and network_id >= 0):
            raise ValueError('a network id is a non-negative integer or "all"')
        await self._request_ok(f"REMOVE_NETWORK {network_id}")

    async def select_network(self, network_id: int) -> None:
        """Connect to this network only (the others are disabled until re-enabled)."""
        if not (isinstance(network_id, int) and network_id >= 0):
            raise ValueError("a network id is a non-negative integer")
        await self._request_ok(f"SELECT_NETWORK {network_id}")

    async def disconnect(self) -> None:
        """Disconnect and stay disconnected until reconnect()."""
        await self._request_ok("DISCONNECT")

    async def reconnect(self) -> None:
        """Connect again after disconnect()."""
        await self._request_ok("RECONNECT")

    async def _request_ok(self, command: str) -> None:
        answer = await self.request(command)
        if answer.strip() != "OK":
            raise WpaError(f"wpa_supplicant on {self.interface} answered nonsense to {_describe(command)}")

    async def _exchange(self, command: str) -> str:
        """Send a command and wait for the next datagram that is not an event: its answer."""
        async with self._one_request_at_a_time:
            if self._socket is None or self._loop is None:
                raise WpaError(f"not connected to wpa_supplicant on {self.interface} (for {_describe(command)})")
            self._pending = self._loop.create_future()
            try:
                log.debug("wpa_supplicant %s <- %s", self.interface, _describe(command))
                try:
                    self._socket.send(command.encode("utf-8"))
                except OSError as error:
                    raise WpaError(f"cannot send {_describe(command)} to wpa_supplicant on {self.interface}: "
                                   f"{error.strerror}") from None
                try:
                    return await asyncio.wait_for(self._pending, self._timeout_s)
                except TimeoutError:
                    self.close()
                    raise WpaError(f"no answer from wpa_supplicant on {self.interface} to {_describe(command)}") \
                        from None
            finally:
                self._pending = None

    def _receive_datagrams(self) -> None:
        """The loop reader: each datagram is either an event (to on_event) or the pending request's answer."""
        while self._socket is not None:
            try:
                datagram = self._socket.recv(MAX_DATAGRAM_BYTES)
            except BlockingIOError:
                return
            except OSError as error:
                # The peer went away (ECONNREFUSED): fail the request now rather than at its timeout.
                if self._pending is not None and not self._pending.done():
                    self._pending.set_exception(
                        WpaError(f"lost wpa_supplicant on {self.interface}: {error.strerror}"))
                return
            text = datagram.decode("utf-8", errors="replace")
            event = _EVENT_PATTERN.match(text)
            if event is not None:
                self._dispatch_event(int(event.group(1)), event.group(2))
            elif self._pending is not None and not self._pending.done():
                self._pending.set_result(text)
            else:
                log.debug("wpa_supplicant %s: dropped an answer nobody waits for", self.interface)

    def _dispatch_event(self, level: int, text: str) -> None:
        if not self._attached or self._on_event is None:
            return
        try:
            self._on_event(level, text)
        except Exception:
            # One broken listener must not stop the answers to requests from being read.
            log.exception("wpa_supplicant %s: the event handler failed", self.interface)


def _raise_if_refused(answer: str, command: str, interface: str) -> None:
    refusal = answer.strip()
    if refusal in _REFUSALS or refusal.startswith("FAIL-"):
        raise WpaError(f"wpa_supplicant on {interface} refused {_describe(command)}: {refusal}", answer=refusal)
