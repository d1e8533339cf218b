"""SIP signalling through pjsua2: the only module of the firmware that imports pjsua2.

pjsua2 carries the signalling only (REGISTER, INVITE, re-INVITE, BYE); our own media engine
carries the audio on its own sockets. The bridge between the two is the SDP: every SDP that
pjsua writes for us (offer or answer, first INVITE, re-INVITE, UPDATE, hold) is rewritten on its
way out (``rewrite_local_sdp``) so that its ``m=audio`` port, ``a=rtcp`` port and address are our
media engine's sockets (``MediaOffer``) and it carries our ``a=zrtp-hash``; every SDP that the
peer sends is parsed (``parse_remote_sdp``) and reported as ``RemoteMedia``.

Contracts (see docs of each name):

- ``SipAgent`` lives on the asyncio loop that called ``start()``: its methods must be called on
  that loop's thread, and every event is handed to ``post`` on it, never from inside a pjsua
  callback (``loop.call_soon``), so ``post`` may call back into the agent.
- pjsua runs with no threads of its own (``threadCnt=0``): a loop task pumps
  ``libHandleEvents(0)`` every ``POLL_MS``; every pjsua callback runs on the loop thread, and no
  exception ever leaves a callback into pjsua (it is logged and the agent carries on).
- Every pjsua ``Call`` stays referenced from its creation (including calls created for incoming
  INVITEs, even junk ones that are rejected at once) until pjsua reports it DISCONNECTED: an
  unreferenced Call lets one malformed INVITE abort the whole process. Nor is any call hung up
  inside ``onIncomingCall`` (the same abort, measured with an INVITE without body): rejections
  happen on the next turn of the loop.
- Only one ``SipAgent`` (one pjsua ``Endpoint``) may run per process at a time; a second
  ``start()`` raises ``SipError`` (a second Endpoint would abort the process). Once stopped,
  an agent cannot start again, but a new one can.
- No password appears in a repr, a log line or an exception: ``SipAccountConfig`` hides it, and
  pjsua logs digest responses at most (level 4 and up), never the password. No address, URI or
  display name appears in the log either (accounts are "#N", calls "call-N", pjsua's lines are
  redacted), nor in exception messages: who calls whom stays off the disk.
- Calls carry no media inside pjsua: no sound device (``setNoDev``), SRTP off, and pjsua's
  media transport is a loop transport without sockets (``useLoopMedTp``): pjsua sends no RTP or
  RTCP at all, and an INVITE flood cannot use up socket slots (see ``SipAgent`` on exposure).
- pjsua writes the answer to an incoming INVITE as soon as ``onIncomingCall`` returns, before
  the application has chosen its media: ``answer()`` sends that answer rewritten, through
  ``CallOpParam.sdp``. INVITEs without an SDP offer are therefore refused (488).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import itertools
import logging
import os
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pjsua2 as pj

log = logging.getLogger(__name__)
pjsua_log = logging.getLogger(__name__ + ".pjsua")

__all__ = [
    "DEFAULT_CODECS",
    "POLL_MS",
    "CallEnded",
    "CallProgress",
    "IncomingCall",
    "MediaOffer",
    "Registered",
    "RemoteMedia",
    "RemoteMediaChanged",
    "SipAccountConfig",
    "SipAgent",
    "SipError",
    "SipEvent",
    "parse_remote_sdp",
    "rewrite_local_sdp",
]

POLL_MS = 10
"""How often the loop task lets pjsua handle its sockets and timers."""
MAX_EVENTS_PER_POLL = 64
"""At most this many ``libHandleEvents(0)`` rounds per poll, so a SIP flood cannot starve the loop."""
MAX_CALLS = 8
"""pjsua's call slots; an INVITE beyond them is answered 486 Busy Here by pjsua itself."""
RING_TIMEOUT_S = 120.0
"""An incoming call not answered nor rejected by then is rejected with 480: no slot stays stuck."""
REG_EXPIRES_S = 300
REG_FIRST_RETRY_S = 5
"""After a failed registration (timeout, 5xx, 6xx, refused or lost TCP/TLS connection) pjsua
retries by itself: first after 0-10 s at random (pjsua draws any first retry under 10 s so),
then every ``REG_RETRY_S`` +- 10 s; a lost TCP/TLS connection of a registered account starts the
same. 401/403 are not retried: the password is wrong (``remove_account`` + ``add_account``)."""
REG_RETRY_S = 60
REINVITE_RETRY_S = 0.05
REINVITE_PATIENCE_S = 2.0
BUSY_STATUSES = {70002, 70011, 70013, 171001, 171140}
"""pjsua statuses meaning "an offer/answer is still in progress": PJ_EPENDING, PJ_EBUSY,
PJ_EINVALIDOP (media changing), PJSIP_EBUSY, PJSIP_ESESSIONSTATE."""
STOP_GRACE_S = 1.0
"""``stop()`` waits at most this long for BYEs and un-REGISTERs to be answered."""
DEFAULT_LOG_LEVEL = 2
"""pjsua's log level: 2 = warnings; 3 = informational; 4 and up include every SIP message. At
every level URIs, addresses and quoted strings are redacted unless ``log_private`` (debugging)."""
DEFAULT_USER_AGENT = "Byline"

DEFAULT_CODECS = ("G722", "PCMU", "PCMA")
"""The codecs Byline offers and accepts, best first; pjsua's others are disabled."""
CODEC_IDS = {"G722": "G722/16000/1", "PCMU": "PCMU/8000/1", "PCMA": "PCMA/8000/1"}
CODEC_TOP_PRIORITY = 250
STATIC_ENCODINGS = {0: "PCMU/8000", 3: "GSM/8000", 4: "G723/8000", 8: "PCMA/8000", 9: "G722/8000", 18: "G729/8000"}
TELEPHONE_EVENT = "telephone-event"

TRANSPORTS = ("udp", "tcp", "tls")
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
MAX_SDP_CHARS = 16384
MAX_REASON_CHARS = 64
MAX_DISPLAY_CHARS = 64

# Validation patterns are used with fullmatch: "$" would let a trailing newline through.
ADDRESS_PATTERN = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=%-]+@[A-Za-z0-9.-]+(:[0-9]{1,5})?")
REGISTRAR_PATTERN = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?(;[A-Za-z0-9._=-]+)*")
SIP_URI_PATTERN = re.compile(r"sips?:[\x21-\x7e]+")
ZRTP_HASH_PATTERN = re.compile(r"[0-9]{1,2}\.[0-9]{1,2} [0-9a-fA-F]{64}")
TLS_PIN_PATTERN = re.compile(r"[0-9a-fA-F]{64}")
REASON_PATTERN = re.compile(r"[\x20-\x7e]*")
SDP_LINE_PATTERN = re.compile(r"([a-z])=(.*)")
PORT_PATTERN = re.compile(r"[0-9]{1,5}")
NAME_ADDR_PATTERN = re.compile(r'^\s*(?:"((?:[^"\\]|\\.)*)"|([^<"]*?))\s*<([^>]*)>')
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


class SipError(Exception):
    """A SIP operation that cannot be done (bad argument, unknown call, pjsua refused, bad SDP)."""


# --- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class SipAccountConfig:
    """One SIP account. The password is never shown (not in repr, logs or exceptions).

    ``address`` is the address of record without scheme (``alice@example.org`` or
    ``alice@127.0.0.1:5060``); its user part is the digest user name. ``registrar`` is a SIP URI
    (``sip:127.0.0.1:5060``) or a host[:port]; with it the agent also sends every call through it
    (as outbound proxy). ``transport`` is ``udp``, ``tcp`` or ``tls``; TLS verifies the server
    against ``ca_path`` (PEM) and/or requires the server certificate's SHA-256 (hex, of the DER)
    to be ``tls_pin``; the pin needs a registrar and is checked on every TLS connection to it,
    when it opens. ``register=False`` makes a local account (no REGISTER; it can call URIs
    directly and answer calls sent straight to the agent's port). With ``register`` and
    ``calls_via_registrar_only`` (the default), an INVITE for the account is accepted only from
    the address the registrar answered REGISTER from: anyone else's is refused with 403 before
    the application hears of it (no ghost calls from SIP scanners, no call slots taken by them).
    """

    account_id: str
    address: str
    password: str = field(repr=False)
    registrar: str | None = None
    transport: str = "udp"
    ca_path: str | None = None
    tls_pin: str | None = None
    display_name: str = ""
    register: bool = True
    calls_via_registrar_only: bool = True

    def __post_init__(self):
        if not self.account_id or CONTROL_CHARACTERS.search(self.account_id):
            raise SipError("account_id must be a non-empty printable string")
        if not ADDRESS_PATTERN.fullmatch(self.address):
            raise SipError("the account address must look like user@host[:port]")
        if self.transport not in TRANSPORTS:
            raise SipError(f"the account transport must be one of {TRANSPORTS}")
        if self.register and not self.registrar:
            raise SipError("an account with register=True needs a registrar")
        if self.registrar is not None:
            _registrar_uri(self.registrar, self.transport)  # raises when malformed
        if CONTROL_CHARACTERS.search(self.display_name) or '"' in self.display_name or "\\" in self.display_name:
            raise SipError("the display name must be printable, without quotes or backslashes")
        if not isinstance(self.password, str) or CONTROL_CHARACTERS.search(self.password):
            raise SipError("the password must be a printable string")
        if self.tls_pin is not None and not TLS_PIN_PATTERN.fullmatch(self.tls_pin.replace(":", "")):
            raise SipError("tls_pin must be a SHA-256 in hex (64 digits)")
        if self.transport == "tls":
            if self.ca_path is None and self.tls_pin is None:
                raise SipError("TLS needs ca_path or tls_pin to check the server")
            if self.ca_path is not None and not Path(self.ca_path).is_file():
                raise SipError(f"the CA file {self.ca_path} does not exist")
        elif self.ca_path is not None or self.tls_pin is not None:
            raise SipError("ca_path and tls_pin need transport 'tls'")
        if self.tls_pin is not None and self.registrar is None:
            raise SipError("tls_pin needs a registrar (the pin is checked on it)")

    @property
    def user(self) -> str:
        return self.address.split("@", 1)[0]

    @property
    def uri(self) -> str:
        return f"sip:{self.address}"

    @property
    def pin(self) -> str | None:
        return None if self.tls_pin is None else self.tls_pin.replace(":", "").lower()


def _registrar_uri(registrar: str, transport: str) -> str:
    uri = registrar if registrar.startswith(("sip:", "sips:")) else f"sip:{registrar}"
    if not REGISTRAR_PATTERN.fullmatch(uri.split(":", 1)[1]):
        raise SipError("the registrar must be sip:host[:port] or host[:port] (and ;parameters)")
    if transport != "udp" and ";transport=" not in uri:
        uri += f";transport={transport}"
    return uri


@dataclass(frozen=True)
class MediaOffer:
    """Where our media engine receives a call's audio, and what it offers.

    Written into every SDP pjsua sends for the call (``rewrite_local_sdp``). ``zrtp_hash`` is
    the value of ``a=zrtp-hash:`` (``"1.10 " + 64 hex digits``), or None for no such line.
    ``codecs`` are names from ``DEFAULT_CODECS``, best first; others are removed from the SDP.
    """

    rtp_port: int
    rtcp_port: int
    address: str = "127.0.0.1"
    zrtp_hash: str | None = None
    codecs: tuple[str, ...] = DEFAULT_CODECS

    def __post_init__(self):
        for name in ("rtp_port", "rtcp_port"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
                raise SipError(f"MediaOffer.{name} must be a port number 1-65535, not {value!r}")
        try:
            ipaddress.ip_address(self.address)
        except ValueError:
            raise SipError(f"MediaOffer.address {self.address!r} must be an IP address") from None
        if self.zrtp_hash is not None and not ZRTP_HASH_PATTERN.fullmatch(self.zrtp_hash):
            raise SipError(f"MediaOffer.zrtp_hash {self.zrtp_hash!r} must be 'VERSION HEX64' like '1.10 ab12...'")
        codecs = tuple(self.codecs)
        object.__setattr__(self, "codecs", codecs)
        if not codecs or len(set(codecs)) != len(codecs) or any(c not in CODEC_IDS for c in codecs):
            raise SipError(f"MediaOffer.codecs {codecs!r} must be distinct names from {DEFAULT_CODECS}")


@dataclass(frozen=True)
class RemoteMedia:
    """What the peer's SDP says about its audio (the first ``m=audio`` section).

    ``rtcp_port`` is from ``a=rtcp`` (else ``rtp_port + 1``; equal to ``rtp_port`` with
    ``a=rtcp-mux``). ``payload_types`` are in the peer's order of preference; ``encodings`` maps
    them to ``NAME/RATE`` (from ``a=rtpmap`` or the static table). ``direction`` is the peer's:
    ``sendonly`` means it puts us on hold (a ``c=`` of 0.0.0.0 counts as not receiving).
    ``rtp_port`` 0 means the peer refused the audio stream.
    """

    address: str
    rtp_port: int
    rtcp_port: int
    payload_types: tuple[int, ...]
    zrtp_hash: str | None
    telephone_event_pt: int | None
    direction: str
    encodings: tuple[tuple[int, str], ...] = ()
    protocol: str = "RTP/AVP"


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SipEvent:
    """Base of everything the agent posts."""


@dataclass(frozen=True)
class Registered(SipEvent):
    """A final answer to REGISTER (or a failure to send it: code 408/503 and pjsua's reason)."""

    account_id: str
    ok: bool
    code: int
    reason: str


@dataclass(frozen=True)
class IncomingCall(SipEvent):
    """An INVITE for ``account_id``; answer with ``ring``/``answer`` or ``reject``.

    ``remote_display`` is untrusted text from the peer (control characters removed, shortened).
    ``remote_media`` is the peer's offer. The agent itself refuses, without reporting them:
    INVITEs without a usable SDP offer (488), INVITEs for a registering account that do not come
    from its registrar (403, see ``calls_via_registrar_only``), and calls beyond ``MAX_CALLS``
    (486, by pjsua). An incoming call left unanswered for ``ring_timeout_s`` gets 480.
    """

    call_id: str
    account_id: str
    remote_uri: str
    remote_display: str
    remote_media: RemoteMedia | None


@dataclass(frozen=True)
class CallProgress(SipEvent):
    """``state`` is calling, ringing (180), early (183 or other 1xx), connected or disconnected."""

    call_id: str
    state: str
    code: int
    reason: str


@dataclass(frozen=True)
class RemoteMediaChanged(SipEvent):
    """The peer sent an SDP whose media differs from its last one (answer, re-INVITE, UPDATE, hold).

    For an outgoing call the first one is the answer; for an incoming call the offer comes in
    ``IncomingCall`` and this reports only later changes.
    """

    call_id: str
    remote_media: RemoteMedia


@dataclass(frozen=True)
class CallEnded(SipEvent):
    """The call is over; its call_id is no longer valid. ``code`` is the last SIP status seen."""

    call_id: str
    code: int
    reason: str


# --- SDP ------------------------------------------------------------------------------------


def parse_remote_sdp(sdp: str) -> RemoteMedia:
    """The audio description of the peer's SDP ``sdp``; ``SipError`` saying what is wrong, if malformed.

    Pure and total: any string gives a RemoteMedia or a SipError, never another exception.
    """
    if not isinstance(sdp, str):
        raise SipError(f"SDP must be text, not {type(sdp).__name__}")
    if len(sdp) > MAX_SDP_CHARS:
        raise SipError(f"SDP is {len(sdp)} characters long (at most {MAX_SDP_CHARS})")
    lines = [line for line in re.split(r"\r\n|\n", sdp.strip("\r\n")) if line.strip()]
    if not lines:
        raise SipError("SDP is empty")
    parsed = []
    for number, line in enumerate(lines, 1):
        match = SDP_LINE_PATTERN.fullmatch(line.rstrip("\r"))
        if not match:
            raise SipError(f"SDP line {number} is not 'x=value': {line[:40]!r}")
        parsed.append((match.group(1), match.group(2).strip()))
    if parsed[0] != ("v", "0"):
        raise SipError("SDP does not start with v=0")

    session, sections = [], []
    for kind, value in parsed:
        if kind == "m":
            sections.append([(kind, value)])
        elif sections:
            sections[-1].append((kind, value))
        else:
            session.append((kind, value))
    audio = next((s for s in sections if s[0][1].split(" ", 1)[0] == "audio"), None)
    if audio is None:
        raise SipError("SDP has no m=audio line")

    fields = audio[0][1].split()
    if len(fields) < 4:
        raise SipError(f"SDP m=audio line is incomplete: {audio[0][1][:60]!r}")
    rtp_port = _port(fields[1].split("/", 1)[0], "m=audio port")
    protocol = fields[2]
    if protocol not in ("RTP/AVP", "RTP/AVPF", "RTP/SAVP", "RTP/SAVPF"):
        raise SipError(f"SDP m=audio protocol {protocol[:20]!r} is not RTP")
    payload_types = []
    for text in fields[3:]:
        if not re.fullmatch(r"[0-9]{1,3}", text) or int(text) > 127:
            raise SipError(f"SDP m=audio payload type {text[:10]!r} is not 0-127")
        if int(text) not in payload_types:
            payload_types.append(int(text))

    address = _connection_address(audio, "media") or _connection_address(session, "session")
    if address is None:
        raise SipError("SDP has no c= line for its audio")

    rtcp_port = rtp_port + 1 if rtp_port else 0
    rtpmap: dict[int, str] = {}
    zrtp_hash = _zrtp_hash(session)
    direction = _direction(session) or "sendrecv"
    media_hash = _zrtp_hash(audio)
    if media_hash is not None:
        zrtp_hash = media_hash
    direction = _direction(audio) or direction
    for kind, value in audio[1:]:
        if kind != "a":
            continue
        name, _, rest = value.partition(":")
        if name == "rtcp":
            rtcp_port = _port(rest.split(" ", 1)[0], "a=rtcp port")
        elif name == "rtcp-mux":
            rtcp_port = rtp_port
        elif name == "rtpmap":
            pt_text, _, encoding = rest.partition(" ")
            if re.fullmatch(r"[0-9]{1,3}", pt_text) and encoding.strip():
                rtpmap.setdefault(int(pt_text), encoding.strip()[:40])
    encodings = tuple(
        (pt, rtpmap.get(pt) or STATIC_ENCODINGS.get(pt, "")) for pt in payload_types
    )
    telephone_event_pt = next(
        (pt for pt, encoding in encodings if encoding.lower().startswith(TELEPHONE_EVENT + "/")), None
    )
    if address in ("0.0.0.0", "::"):  # RFC 2543 hold: the peer receives nothing
        direction = {"sendrecv": "sendonly", "recvonly": "inactive"}.get(direction, direction)
    return RemoteMedia(
        address=address,
        rtp_port=rtp_port,
        rtcp_port=rtcp_port,
        payload_types=tuple(payload_types),
        zrtp_hash=zrtp_hash,
        telephone_event_pt=telephone_event_pt,
        direction=direction,
        encodings=encodings,
        protocol=protocol,
    )


def _port(text: str, what: str) -> int:
    if not PORT_PATTERN.fullmatch(text) or int(text) > 65535:
        raise SipError(f"SDP {what} {text[:10]!r} is not a port number")
    return int(text)


def _connection_address(lines, level: str) -> str | None:
    for kind, value in lines:
        if kind != "c":
            continue
        parts = value.split()
        if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
            raise SipError(f"SDP {level} c= line is malformed: {value[:60]!r}")
        text = parts[2].split("/", 1)[0]
        try:
            parsed = ipaddress.ip_address(text)
        except ValueError:
            raise SipError(f"SDP {level} c= address {text[:40]!r} is not an IP address") from None
        if (parsed.version == 4) != (parts[1] == "IP4"):
            raise SipError(f"SDP {level} c= address {text!r} is not {parts[1]}")
        return str(parsed)
    return None


def _zrtp_hash(lines) -> str | None:
    for kind, value in lines:
        if kind == "a" and value.startswith("zrtp-hash:"):
            hash_value = " ".join(value[len("zrtp-hash:"):].split())
            if not ZRTP_HASH_PATTERN.fullmatch(hash_value):
                raise SipError(f"SDP a=zrtp-hash is malformed: {hash_value[:80]!r}")
            return hash_value
    return None


def _direction(lines) -> str | None:
    found = None
    for kind, value in lines:
        if kind == "a" and value in DIRECTIONS:
            found = value
    return found


def rewrite_local_sdp(sdp: str, offer: MediaOffer) -> str:
    """pjsua's SDP ``sdp`` pointed at our media engine: idempotent, keeps pjsua's direction.

    In the first ``m=audio`` section: the port becomes ``offer.rtp_port``, ``a=rtcp`` names
    ``offer.rtcp_port``, ``a=zrtp-hash`` is ``offer.zrtp_hash`` (or removed), payload types of
    codecs not in ``offer.codecs`` are dropped (telephone-event stays) and pjsua's ``a=ssrc``
    lines are removed (our media engine picks its own SSRC). Every ``c=`` and the ``o=`` address
    become ``offer.address``. ``SipError`` if the SDP has no audio or no codec is left.
    """
    family = "IP6" if ipaddress.ip_address(offer.address).version == 6 else "IP4"
    lines = [line for line in re.split(r"\r\n|\n", sdp) if line]
    audio_start = next((i for i, line in enumerate(lines) if line.startswith("m=audio ")), None)
    if audio_start is None:
        raise SipError("pjsua's SDP has no m=audio line")
    audio_end = next((i for i in range(audio_start + 1, len(lines)) if lines[i].startswith("m=")), len(lines))
    head, audio, tail = lines[:audio_start], lines[audio_start:audio_end], lines[audio_end:]

    head = [_rewrite_address_line(line, offer.address, family) for line in head]
    m_fields = audio[0].split()
    if len(m_fields) < 4:
        raise SipError("pjsua's m=audio line is incomplete")
    rtpmap = {}
    for line in audio[1:]:
        if line.startswith("a=rtpmap:"):
            pt, _, encoding = line[len("a=rtpmap:"):].partition(" ")
            rtpmap[pt] = encoding
    allowed = {name.upper() for name in offer.codecs}

    def codec_name(pt: str) -> str:
        static = STATIC_ENCODINGS.get(int(pt), "") if PORT_PATTERN.fullmatch(pt) else ""
        return (rtpmap.get(pt) or static).split("/", 1)[0]

    kept = [pt for pt in m_fields[3:] if codec_name(pt).upper() in allowed or codec_name(pt).lower() == TELEPHONE_EVENT]
    dropped = set(m_fields[3:]) - set(kept)
    if not any(codec_name(pt).upper() in allowed for pt in kept):
        raise SipError(f"pjsua's SDP offers none of the codecs {offer.codecs}")
    body = []
    for line in audio[1:]:
        if line.startswith(("a=rtcp:", "a=zrtp-hash:", "a=ssrc:")):
            continue
        if line.startswith(("a=rtpmap:", "a=fmtp:")) and line.split(":", 1)[1].split(" ", 1)[0] in dropped:
            continue
        body.append(_rewrite_address_line(line, offer.address, family))
    # a=rtcp goes after the media-level c= and b= lines, where pjsua puts it.
    insert_at = 0
    while insert_at < len(body) and body[insert_at][:2] in ("i=", "c=", "b=", "k="):
        insert_at += 1
    body.insert(insert_at, f"a=rtcp:{offer.rtcp_port} IN {family} {offer.address}")
    if offer.zrtp_hash is not None:
        body.append(f"a=zrtp-hash:{offer.zrtp_hash}")
    m_line = " ".join([m_fields[0], str(offer.rtp_port), m_fields[2], *kept])
    return "\r\n".join([*head, m_line, *body, *tail]) + "\r\n"


def _rewrite_address_line(line: str, address: str, family: str) -> str:
    if line.startswith("c="):
        return f"c=IN {family} {address}"
    if line.startswith("o="):
        parts = line.split(" ")
        if len(parts) == 6:
            return " ".join([*parts[:4], family, address])
    return line


def sdp_body(message: str) -> str | None:
    """The SDP body of the SIP message text ``message`` (also inside multipart), or None."""
    head, separator, body = message.partition("\r\n\r\n")
    if not separator:
        head, separator, body = message.partition("\n\n")
        if not separator:
            return None
    content_type = ""
    for line in re.split(r"\r?\n", head)[1:]:
        name, colon, value = line.partition(":")
        if colon and name.strip().lower() in ("content-type", "c"):
            content_type = value.strip()
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/sdp":
        return body if body.strip() else None
    if media_type.startswith("multipart/"):
        match = re.search(r'boundary\s*=\s*"?([^";]+)"?', content_type, re.IGNORECASE)
        if not match:
            return None
        for part in body.split("--" + match.group(1))[1:]:
            found = sdp_body("X\r\n" + part.lstrip("\r\n")) if "\r\n\r\n" in part or "\n\n" in part else None
            if found:
                return found.rstrip("\r\n") + "\r\n"
    return None


def split_name_addr(text: str) -> tuple[str, str]:
    """(display name, URI) of a From/To value like ``"Alice" <sip:alice@host>;tag=x``."""
    match = NAME_ADDR_PATTERN.match(text or "")
    if match:
        display = match.group(1) if match.group(1) is not None else match.group(2)
        display = re.sub(r"\\(.)", r"\1", display or "")
        uri = match.group(3)
    else:
        display, uri = "", (text or "").split(";", 1)[0].strip()
    display = CONTROL_CHARACTERS.sub("", display).strip()[:MAX_DISPLAY_CHARS]
    return display, CONTROL_CHARACTERS.sub("", uri)[:256]


# --- pjsua glue -----------------------------------------------------------------------------

_account_numbers = itertools.count(1)
_endpoint_lock = threading.Lock()
_endpoint_taken = False
"""pjsua2 allows one Endpoint per process at a time: a second one aborts the process (field
notes). After ``libDestroy`` a new one works (measured: three rounds in one process)."""


@contextlib.contextmanager
def _stdout_silenced():
    """File descriptor 1 goes to /dev/null meanwhile: in the simulator it is the phone's screen."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _release_endpoint() -> None:
    global _endpoint_taken
    with _endpoint_lock:
        _endpoint_taken = False


def _guarded(what: str):
    """Decorator for pjsua callbacks: an exception is logged and never reaches pjsua."""

    def wrap(method):
        def guarded(self, *args):
            try:
                return method(self, *args)
            except BaseException:  # an exception into pjsua aborts the process
                log.exception("SIP: %s failed (ignored)", what)
                return None

        guarded.__name__ = method.__name__
        guarded.__doc__ = method.__doc__
        return guarded

    return wrap


PRIVATE_TEXT = [
    (re.compile(r'"(?:[^"\\\r\n]|\\.)*"'), '"***"'),  # display names, realms, nonces
    (re.compile(r"([:,]\s*)[^<>\"\s:,][^<>\"\r\n:,]*?(\s*<(?:sips?|tel):)", re.IGNORECASE), r"\1***\2"),  # bare names
    (re.compile(r"\b(sips?|tel):[^\s<>\";,]+", re.IGNORECASE), r"\1:***"),  # URIs
    (re.compile(r"[\w.!%+~-]+@[\w.-]+"), "***@***"),  # addresses
]
"""What ``redact`` hides in pjsua's log: who calls whom must not reach the phone's log file."""


PJSUA_LOG_LEVELS = {0: logging.CRITICAL, 1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO}


def redact(text: str) -> str:
    """``text`` without SIP URIs, user@host addresses and quoted strings."""
    for pattern, replacement in PRIVATE_TEXT:
        text = pattern.sub(replacement, text)
    return text


class _LogWriter(pj.LogWriter):
    """pjsua's log into ``logging`` (logger firmware.calls.sip.pjsua), redacted unless ``private``."""

    def __init__(self, private: bool):
        super().__init__()
        self.private = private

    def write(self, entry):
        try:
            text = entry.msg.rstrip("\n")
            pjsua_log.log(PJSUA_LOG_LEVELS.get(entry.level, logging.DEBUG), "%s", text if self.private else redact(text))
        except BaseException:  # noqa: BLE001, S110 - the log writer must never raise into pjsua
            pass


class _Endpoint(pj.Endpoint):
    def __init__(self, agent: SipAgent):
        super().__init__()
        self._agent = agent

    @_guarded("onTransportState")
    def onTransportState(self, prm):
        self._agent._on_transport_state(prm)


class _Account(pj.Account):
    def __init__(self, agent: SipAgent, config: SipAccountConfig):
        super().__init__()
        self.agent = agent
        self.config = config
        self.number = next(_account_numbers)  # names the account in logs (its address must not be there)
        self.removed = False
        self.unregistering = False  # an un-REGISTER sent at stop() awaits its answer
        self.registrar_source: str | None = None  # "host:port" the last 2xx to REGISTER came from
        self.last_registration: tuple[bool, int] | None = None

    @_guarded("onRegState")
    def onRegState(self, prm):
        self.agent._on_reg_state(self, prm)

    @_guarded("onIncomingCall")
    def onIncomingCall(self, prm):
        self.agent._on_incoming_call(self, prm)


class _Call(pj.Call):
    def __init__(self, agent: SipAgent, account: _Account, call_id: str, pj_call_id=pj.PJSUA_INVALID_ID):
        super().__init__(account, pj_call_id)
        self.agent = agent
        self.account_id = account.config.account_id
        self.call_id = call_id
        self.offer: MediaOffer | None = None
        self.incoming = pj_call_id != pj.PJSUA_INVALID_ID
        self.answered = False
        self.silent = False  # rejected by the agent before the application heard of it
        self.pjsua_sdp: str | None = None  # pjsua's own answer, before we knew our media
        self.remote_media: RemoteMedia | None = None
        self.progress: tuple[str, int] | None = None
        self.ring_timer: asyncio.TimerHandle | None = None

    @_guarded("onCallState")
    def onCallState(self, prm):
        self.agent._on_call_state(self, prm)

    @_guarded("onCallTsxState")
    def onCallTsxState(self, prm):
        event = prm.e
        if event.type == pj.PJSIP_EVENT_TSX_STATE:
            state = event.body.tsxState
            if state.type == pj.PJSIP_EVENT_RX_MSG:
                self.agent._on_remote_message(self, state.src.rdata.wholeMsg)

    @_guarded("onCallSdpCreated")
    def onCallSdpCreated(self, prm):
        self.agent._on_sdp_created(self, prm)


# --- the agent ------------------------------------------------------------------------------


class SipAgent:
    """SIP signalling for the phone: accounts, registration, calls; reports ``SipEvent``s to ``post``.

    ``bind_address`` is where the SIP transports listen, on free ports or ``sip_port``: UDP from
    ``start()`` with ``listen_udp`` or else from the first UDP account on; TCP with ``listen_tcp``
    or else from the first TCP account on (a phone with no account listens on nothing); TLS with
    ``tls_cert_path`` + ``tls_key_path`` (and a TLS account opens a TLS transport of its own, to
    verify its server with its CA). ``ports`` tells the listening ports. ``nameservers`` (IP
    addresses) switch pjsua to its own asynchronous DNS resolver (with SRV lookups); without them
    pjsua resolves host names with the system's blocking resolver, on the loop thread: use IP
    addresses, or give nameservers, or a slow DNS server freezes the phone's loop meanwhile.

    Exposure: pjsua has 64 I/O queue slots and ABORTS THE PROCESS (an assertion in
    ``pj_ioqueue_register_sock2``) when a socket is registered while every free slot is still
    in its 500 ms closing delay: about 66 TCP connections opened and closed quickly by anyone who
    reaches a TCP/TLS listener kill the phone. So no TCP listener exists unless needed; where one
    is, the firewall must stop inbound connections to it (the registrar reuses ours). UDP and
    calls open no sockets (pjsua's media is a loop transport), so a UDP flood cannot do this.
    """

    def __init__(
        self,
        post: Callable[[SipEvent], None],
        *,
        bind_address: str = "127.0.0.1",
        sip_port: int = 0,
        tls_cert_path: str | None = None,
        tls_key_path: str | None = None,
        listen_udp: bool = True,
        listen_tcp: bool = False,
        nameservers: tuple[str, ...] = (),
        user_agent: str = DEFAULT_USER_AGENT,
        log_level: int = DEFAULT_LOG_LEVEL,
        log_private: bool = False,
        ring_timeout_s: float = RING_TIMEOUT_S,
    ):
        if (tls_cert_path is None) != (tls_key_path is None):
            raise SipError("tls_cert_path and tls_key_path go together")
        self._post = post
        self._bind_address = bind_address
        self._sip_port = sip_port
        self._tls_cert_path = tls_cert_path
        self._tls_key_path = tls_key_path
        self._listen_udp = listen_udp
        self._listen_tcp = listen_tcp
        self._nameservers = tuple(nameservers)
        self._user_agent = user_agent
        self._log_level = log_level
        self._log_private = log_private
        self._ring_timeout_s = ring_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._endpoint: _Endpoint | None = None
        self._log_writer: _LogWriter | None = None
        self._pump_task: asyncio.Task | None = None
        self._transports: dict[str, int] = {}
        self._tls_client_transports: dict[str | None, int] = {}
        self._tls_listen_ports: set[int] = set()
        self._ports: dict[str, int] = {}
        self._accounts: dict[str, _Account] = {}
        self._calls: dict[str, _Call] = {}
        self._call_numbers = itertools.count(1)
        self._codecs: tuple[str, ...] | None = None
        self._stopped = False

    # -- life cycle

    @property
    def running(self) -> bool:
        return self._endpoint is not None

    @property
    def ports(self) -> dict[str, int]:
        """Local SIP ports by transport name (``udp``, ``tcp``, and ``tls`` when listening)."""
        return dict(self._ports)

    def start(self) -> None:
        """Create pjsua's Endpoint and transports, and start pumping it from the running loop."""
        global _endpoint_taken
        loop = asyncio.get_running_loop()
        if self._endpoint is not None or self._stopped:
            raise SipError("a SipAgent starts once")
        with _endpoint_lock:
            if _endpoint_taken:
                raise SipError("pjsua2 allows one SIP agent per process at a time, and one is running")
            _endpoint_taken = True
        self._loop = loop
        self._thread = threading.get_ident()
        endpoint = _Endpoint(self)
        self._endpoint = endpoint
        try:
            with _stdout_silenced():
                endpoint.libCreate()  # pjlib prints its banner before our log writer exists
            config = pj.EpConfig()
            config.uaConfig.threadCnt = 0
            config.uaConfig.mainThreadOnly = True
            config.uaConfig.maxCalls = MAX_CALLS
            config.uaConfig.userAgent = self._user_agent
            for server in self._nameservers:
                config.uaConfig.nameserver.append(server)
            self._log_writer = _LogWriter(self._log_private)
            config.logConfig.writer = self._log_writer
            config.logConfig.level = self._log_level
            config.logConfig.consoleLevel = self._log_level
            config.logConfig.msgLogging = self._log_level >= 4
            config.medConfig.noVad = True
            endpoint.libInit(config)
            if self._listen_udp:
                self._create_transport("udp")
            if self._listen_tcp:
                self._create_transport("tcp")
            if self._tls_cert_path is not None:
                self._create_transport("tls")
            endpoint.libStart()
            endpoint.audDevManager().setNoDev()
            self._set_codecs(DEFAULT_CODECS)
        except pj.Error as error:
            self._destroy()
            raise SipError(f"pjsua did not start: {_error_text(error)}") from None
        except BaseException:
            self._destroy()
            raise
        self._pump_task = loop.create_task(self._pump(), name="sip-pump")
        log.info("SIP agent listening on %s %s", self._bind_address, self._ports)

    def stop(self) -> None:
        """Hang up every call, unregister, drop every Call and destroy pjsua (idempotent).

        Blocks the loop for at most ``STOP_GRACE_S`` (about 10 ms on a LAN). Call it before the
        loop ends: pjsua objects left to the interpreter's exit can abort the process.
        """
        if self._endpoint is None:
            self._stopped = True
            return
        if threading.get_ident() != self._thread:
            raise SipError("SipAgent.stop must be called on the thread of its asyncio loop")
        self._stopped = True
        if self._pump_task is not None:
            self._pump_task.cancel()
            self._pump_task = None
        endpoint = self._endpoint
        try:
            endpoint.hangupAllCalls()
        except pj.Error as error:
            log.warning("SIP: hanging up at stop failed: %s", _error_text(error))
        for account in self._accounts.values():
            account.removed = True
            if account.last_registration is not None and account.last_registration[0]:
                try:
                    account.setRegistration(False)
                    account.unregistering = True
                except pj.Error:
                    pass
        # Waiting for the answers here spares libDestroy its fixed one-second wait for them.
        self._pump_sync(lambda: not self._calls and not any(a.unregistering for a in self._accounts.values()),
                        STOP_GRACE_S)
        self._destroy()
        log.info("SIP agent stopped")

    def _destroy(self) -> None:
        for call in self._calls.values():
            if call.ring_timer is not None:
                call.ring_timer.cancel()
        self._calls.clear()  # every Call must be gone before libDestroy
        for account in self._accounts.values():
            try:
                account.shutdown()
            except pj.Error:
                pass
        self._accounts.clear()
        endpoint, self._endpoint = self._endpoint, None
        if endpoint is not None:
            try:
                endpoint.libDestroy(pj.PJSUA_DESTROY_NO_RX_MSG)
            except pj.Error as error:
                log.warning("SIP: libDestroy failed: %s", _error_text(error))
            _release_endpoint()
        self._log_writer = None

    async def _pump(self) -> None:
        endpoint = self._endpoint
        while self._endpoint is endpoint:
            try:
                for _ in range(MAX_EVENTS_PER_POLL):
                    if endpoint.libHandleEvents(0) <= 0:
                        break
            except BaseException as error:
                if isinstance(error, asyncio.CancelledError):
                    raise
                log.exception("SIP: handling pjsua events failed (carrying on)")
            await asyncio.sleep(POLL_MS / 1000)

    def _pump_sync(self, done: Callable[[], bool], timeout_s: float) -> None:
        deadline = self._loop.time() + timeout_s if self._loop else 0
        while not done() and self._loop is not None and self._loop.time() < deadline:
            self._endpoint.libHandleEvents(POLL_MS)

    def _check(self) -> _Endpoint:
        if self._endpoint is None:
            raise SipError("the SIP agent is not running")
        if threading.get_ident() != self._thread:
            raise SipError("SipAgent methods must be called on the thread of its asyncio loop")
        return self._endpoint

    def _emit(self, event: SipEvent) -> None:
        self._loop.call_soon(self._deliver, event)

    def _deliver(self, event: SipEvent) -> None:
        try:
            self._post(event)
        except Exception:
            log.exception("SIP: posting %s failed", type(event).__name__)

    def _set_codecs(self, codecs: tuple[str, ...]) -> None:
        if codecs == self._codecs:
            return
        wanted = {CODEC_IDS[name]: CODEC_TOP_PRIORITY - rank for rank, name in enumerate(codecs)}
        for info in self._endpoint.codecEnum2():
            self._endpoint.codecSetPriority(info.codecId, wanted.get(info.codecId, 0))
        self._codecs = codecs

    def _create_transport(self, name: str) -> int:
        if name == "tls":
            transport_id = self._create_tls_transport(None)
        else:
            transport = pj.TransportConfig()
            transport.boundAddress = self._bind_address
            transport.port = self._sip_port
            kind = pj.PJSIP_TRANSPORT_UDP if name == "udp" else pj.PJSIP_TRANSPORT_TCP
            transport_id = self._endpoint.transportCreate(kind, transport)
        self._transports[name] = transport_id
        self._ports[name] = int(self._endpoint.transportGetInfo(transport_id).localName.rsplit(":", 1)[1])
        return transport_id

    def _create_tls_transport(self, ca_path: str | None) -> int:
        tls = pj.TransportConfig()
        tls.boundAddress = self._bind_address
        tls.port = 0
        tls.tlsConfig.method = pj.PJSIP_TLSV1_2_METHOD
        tls.tlsConfig.proto = pj.PJ_SSL_SOCK_PROTO_TLS1_2
        if self._tls_cert_path is not None:
            tls.tlsConfig.certFile = str(self._tls_cert_path)
            tls.tlsConfig.privKeyFile = str(self._tls_key_path)
        if ca_path is not None:
            tls.tlsConfig.CaListFile = str(ca_path)
            tls.tlsConfig.verifyServer = True
        transport_id = self._endpoint.transportCreate(pj.PJSIP_TRANSPORT_TLS, tls)
        self._tls_listen_ports.add(_port_of(self._endpoint.transportGetInfo(transport_id).localName))
        return transport_id

    # -- accounts

    def add_account(self, config: SipAccountConfig) -> None:
        """Add an account; with ``register`` it registers now (``Registered`` tells the outcome)."""
        self._check()
        if config.account_id in self._accounts:
            raise SipError("that account_id is taken")
        if config.transport == "tls":
            if config.ca_path not in self._tls_client_transports:
                try:
                    self._tls_client_transports[config.ca_path] = self._create_tls_transport(config.ca_path)
                except pj.Error as error:
                    raise SipError(f"the TLS transport failed: {_error_text(error)}") from None
            transport_id = self._tls_client_transports[config.ca_path]
        elif config.transport in self._transports:
            transport_id = self._transports[config.transport]
        else:
            try:
                transport_id = self._create_transport(config.transport)
            except pj.Error as error:
                raise SipError(f"the {config.transport} transport failed: {_error_text(error)}") from None
        account_config = pj.AccountConfig()
        display = f'"{config.display_name}" ' if config.display_name else ""
        account_config.idUri = f"{display}<{config.uri}>"
        registrar = None
        if config.registrar is not None:
            registrar = _registrar_uri(config.registrar, config.transport)
            account_config.sipConfig.proxies.append(registrar + ";lr")
        reg = account_config.regConfig
        reg.registrarUri = registrar if config.register else ""
        reg.registerOnAdd = config.register
        reg.timeoutSec = REG_EXPIRES_S
        reg.firstRetryIntervalSec = REG_FIRST_RETRY_S
        reg.retryIntervalSec = REG_RETRY_S
        reg.dropCallsOnFail = False
        account_config.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", config.user, 0, config.password))
        account_config.sipConfig.transportId = transport_id
        media = account_config.mediaConfig
        media.srtpUse = pj.PJMEDIA_SRTP_DISABLED
        media.srtpSecureSignaling = 0
        media.lockCodecEnabled = False
        # pjsua's own media goes nowhere: a loop media transport, no RTP/RTCP sockets at all (a
        # socket per call would also let an INVITE flood exhaust pjsua's 64 I/O queue slots).
        media.useLoopMedTp = True
        media.enableLoopback = False
        account = _Account(self, config)
        try:
            account.create(account_config)
        except pj.Error as error:
            raise SipError(f"pjsua refused the account: {_error_text(error)}") from None
        self._accounts[config.account_id] = account
        log.info("SIP account #%d (over %s) added%s", account.number, config.transport,
                 ", registering" if config.register else "")

    def remove_account(self, account_id: str) -> None:
        """Hang up the account's calls, unregister it and forget it."""
        self._check()
        account = self._accounts.pop(account_id, None)
        if account is None:
            raise SipError("no such account")
        account.removed = True
        for call in list(self._calls.values()):
            if call.account_id == account_id:
                self._hangup_quietly(call)
        try:
            account.shutdown()  # pjsua un-REGISTERs by itself
        except pj.Error as error:
            log.warning("SIP: removing account #%d: %s", account.number, _error_text(error))

    def _on_reg_state(self, account: _Account, prm) -> None:
        if account.removed:
            account.unregistering = False
            return
        code, reason = int(prm.code), str(prm.reason)
        ok = 200 <= code < 300 and prm.expiration > 0
        if code == 0 and prm.status != 0:
            code = 503
        if ok:
            try:
                account.registrar_source = str(prm.rdata.srcAddress) or account.registrar_source
            except Exception:  # noqa: BLE001, S110 - no rdata with this answer
                pass
        key = (ok, code)
        if ok and account.last_registration == key:
            return  # a refresh
        account.last_registration = key
        log.info("SIP account #%d registration: %s", account.number, code)
        self._emit(Registered(account.config.account_id, ok, code, reason))

    def _on_transport_state(self, prm) -> None:
        state = prm.state
        if state == pj.PJSIP_TP_STATE_DISCONNECTED:
            # pjsua re-registers the accounts that used this transport (retryIntervalSec > 0).
            log.info("SIP transport %s disconnected: %s", prm.type, prm.lastError)
            return
        if state != pj.PJSIP_TP_STATE_CONNECTED or not prm.tlsInfo.established:
            return
        tls = prm.tlsInfo
        if _port_of(tls.localAddr) in self._tls_listen_ports:
            return  # a connection to us (a client certificate, if any, is not our business)
        pinned = [a.config for a in self._accounts.values() if a.config.pin is not None]
        if not pinned:
            return  # every TLS transport verifies its server against a CA (verifyServer)
        fingerprint = None if tls.remoteCertInfo.isEmpty() else _certificate_fingerprint(tls.remoteCertInfo.raw)
        remote = tls.remoteAddr
        here = [c for c in pinned if _same_host_port(_registrar_uri(c.registrar, "udp"), remote)]
        mismatched = [c for c in here if c.pin != fingerprint]
        unverified = tls.verifyStatus != 0 and fingerprint not in {c.pin for c in pinned}
        if not mismatched and not unverified:
            return
        log.warning("SIP: a TLS server has neither a pinned nor a verified certificate: connection closed")
        self._endpoint.transportShutdown(prm.hnd)
        for config in mismatched:
            self._emit(Registered(config.account_id, False, 0, "TLS certificate does not match the pin"))

    # -- calls

    def make_call(self, account_id: str, uri: str, offer: MediaOffer) -> str:
        """Call ``uri`` from ``account_id`` with our media at ``offer``; returns the call_id."""
        endpoint = self._check()
        account = self._account(account_id)
        if not SIP_URI_PATTERN.fullmatch(uri) or endpoint.utilVerifySipUri(uri) != 0:
            raise SipError("not a SIP URI")
        self._set_codecs(offer.codecs)
        call_id = f"call-{next(self._call_numbers)}"
        call = _Call(self, account, call_id)
        call.offer = offer
        call.answered = True  # outgoing: never "an unanswered incoming call"
        self._calls[call_id] = call  # before makeCall: its callbacks run inside it
        try:
            call.makeCall(uri, pj.CallOpParam(True))
        except pj.Error as error:
            self._calls.pop(call_id, None)
            raise SipError(f"the call failed: {_error_text(error)}") from None
        log.info("SIP %s: calling from account #%d", call_id, account.number)
        return call_id

    def ring(self, call_id: str) -> None:
        """Send 180 Ringing for an incoming call."""
        call = self._incoming(call_id)
        self._answer(call, 180, None)

    def answer(self, call_id: str, offer: MediaOffer) -> None:
        """Answer an incoming call with 200, our media at ``offer``."""
        call = self._incoming(call_id)
        if call.pjsua_sdp is None:
            raise SipError(f"{call_id}: pjsua has no SDP answer to send")
        sdp = rewrite_local_sdp(call.pjsua_sdp, offer)
        call.offer = offer
        self._answer(call, 200, sdp)
        call.answered = True
        if call.ring_timer is not None:
            call.ring_timer.cancel()
            call.ring_timer = None

    def reject(self, call_id: str, code: int = 486, reason: str = "") -> None:
        """Refuse an incoming call with a final ``code`` (4xx-6xx), e.g. 488 "ZRTP required"."""
        call = self._incoming(call_id)
        if not 400 <= code <= 699:
            raise SipError(f"reject needs a 4xx-6xx code, not {code}")
        self._hangup(call, code, reason)

    def hangup(self, call_id: str, code: int | None = None, reason: str = "") -> None:
        """End a call: BYE when connected, CANCEL when ours is ringing, ``code`` (default 603) when theirs is."""
        self._check()
        call = self._call(call_id)
        if code is not None and not 400 <= code <= 699:
            raise SipError(f"hangup code must be 4xx-6xx, not {code}")
        self._hangup(call, code, reason)

    def hold(self, call_id: str) -> None:
        """Put the call on hold (re-INVITE with a=sendonly; our media stays in the SDP).

        While an earlier offer/answer of the call is still being completed, the re-INVITE is sent
        as soon as it is done (retried every ``REINVITE_RETRY_S`` for ``REINVITE_PATIENCE_S``).
        """
        self._check()
        self._reinvite(self._connected(call_id), "hold", lambda call: call.setHold(pj.CallOpParam(True)))

    def resume(self, call_id: str) -> None:
        """Take the call off hold (re-INVITE with a=sendrecv); deferred like ``hold``."""
        self._check()

        def unhold(call: _Call) -> None:
            param = pj.CallOpParam(True)
            param.opt.flag = pj.PJSUA_CALL_UNHOLD
            call.reinvite(param)

        self._reinvite(self._connected(call_id), "resume", unhold)

    def _reinvite(self, call: _Call, what: str, action: Callable[[_Call], None], attempt: int = 0) -> None:
        if self._calls.get(call.call_id) is not call:
            return  # ended meanwhile
        self._set_codecs(call.offer.codecs)
        try:
            action(call)
        except pj.Error as error:
            if error.status in BUSY_STATUSES and attempt < REINVITE_PATIENCE_S / REINVITE_RETRY_S:
                self._loop.call_later(REINVITE_RETRY_S, self._reinvite_later, call, what, action, attempt + 1)
                return
            if attempt == 0:
                raise SipError(f"{call.call_id}: {what} failed: {_error_text(error)}") from None
            log.warning("SIP %s: %s failed: %s", call.call_id, what, _error_text(error))

    def _reinvite_later(self, call: _Call, what: str, action: Callable[[_Call], None], attempt: int) -> None:
        try:
            self._reinvite(call, what, action, attempt)
        except Exception:  # a timer callback
            log.exception("SIP %s: %s failed", call.call_id, what)

    def call_ids(self) -> list[str]:
        """The calls pjsua still knows (until their CallEnded)."""
        return list(self._calls)

    def _account(self, account_id: str) -> _Account:
        account = self._accounts.get(account_id)
        if account is None:
            raise SipError("no such account")
        return account

    def _call(self, call_id: str) -> _Call:
        call = self._calls.get(call_id)
        if call is None:
            raise SipError(f"no call {call_id}")
        return call

    def _incoming(self, call_id: str) -> _Call:
        self._check()
        call = self._call(call_id)
        if not call.incoming or call.answered:
            raise SipError(f"{call_id} is not an unanswered incoming call")
        return call

    def _connected(self, call_id: str) -> _Call:
        call = self._call(call_id)
        if call.offer is None or not call.answered:
            raise SipError(f"{call_id} is not an answered call")
        return call

    def _answer(self, call: _Call, code: int, sdp: str | None) -> None:
        param = pj.CallOpParam()
        param.statusCode = code
        if sdp is not None:
            param.sdp.wholeSdp = sdp
        try:
            call.answer(param)
        except pj.Error as error:
            raise SipError(f"{call.call_id}: answering {code} failed: {_error_text(error)}") from None

    def _hangup(self, call: _Call, code: int | None, reason: str) -> None:
        if not REASON_PATTERN.fullmatch(reason) or len(reason) > MAX_REASON_CHARS:
            raise SipError(f"reason must be printable ASCII of at most {MAX_REASON_CHARS} characters")
        param = pj.CallOpParam()
        if code is not None:
            param.statusCode = code
        if reason:
            param.reason = reason
        try:
            call.hangup(param)
        except pj.Error as error:
            raise SipError(f"{call.call_id}: hangup failed: {_error_text(error)}") from None

    def _hangup_quietly(self, call: _Call, code: int | None = None, reason: str = "") -> None:
        try:
            self._hangup(call, code, reason)
        except SipError as error:
            log.warning("SIP: %s", error)

    # -- pjsua call callbacks (run inside libHandleEvents, on the loop thread)

    def _on_incoming_call(self, account: _Account, prm) -> None:
        call_id = f"call-{next(self._call_numbers)}"
        call = _Call(self, account, call_id, prm.callId)
        self._calls[call_id] = call  # first of all: an unreferenced Call can abort the process
        call.silent = True
        # Never hang up inside this callback: pjsua goes on with the INVITE after it returns, and a
        # call ended in here (an INVITE without SDP, say) aborts the process in
        # pjsip_rx_data_free_cloned. Rejections wait for the next turn of the loop.
        try:
            refusal = self._screen_incoming(call, account, prm)
        except Exception:  # whatever it was, the call must not stay half-open
            log.exception("SIP %s: incoming INVITE could not be read, rejected 400", call_id)
            refusal = (400, "Bad Request")
        if refusal is not None:
            self._loop.call_soon(self._reject_unreported, call_id, *refusal)

    def _screen_incoming(self, call: _Call, account: _Account, prm) -> tuple[int, str] | None:
        """Report an acceptable incoming call; else the (code, reason) to reject it with, unreported."""
        config = account.config
        if account.removed:
            return 480, "Temporarily Unavailable"
        source = str(prm.rdata.srcAddress)
        if config.register and config.calls_via_registrar_only and source != account.registrar_source:
            log.info("SIP %s: INVITE for account #%d not from its registrar: rejected 403", call.call_id, account.number)
            return 403, "Forbidden"
        body = sdp_body(prm.rdata.wholeMsg)
        if body is None:
            log.info("SIP %s: INVITE without SDP offer: rejected 488", call.call_id)
            return 488, "SDP offer required"
        try:
            remote_media = parse_remote_sdp(body)
        except SipError as error:
            log.info("SIP %s: bad SDP offer (%s): rejected 488", call.call_id, error)
            return 488, "Bad SDP"
        info = call.getInfo()
        display, uri = split_name_addr(info.remoteUri)
        call.remote_media = remote_media
        call.silent = False
        call.ring_timer = self._loop.call_later(self._ring_timeout_s, self._ring_timed_out, call.call_id)
        log.info("SIP %s: incoming call for account #%d", call.call_id, account.number)
        self._emit(IncomingCall(call.call_id, config.account_id, uri, display, remote_media))
        return None

    def _reject_unreported(self, call_id: str, code: int, reason: str) -> None:
        call = self._calls.get(call_id)
        if call is not None and self._endpoint is not None:
            self._hangup_quietly(call, code, reason)

    def _ring_timed_out(self, call_id: str) -> None:
        call = self._calls.get(call_id)
        if call is not None and not call.answered:
            log.info("SIP %s: not answered in %.0f s, rejected 480", call_id, self._ring_timeout_s)
            self._hangup_quietly(call, 480, "No answer")

    def _on_call_state(self, call: _Call, prm) -> None:
        info = call.getInfo()
        state, code, reason = info.state, int(info.lastStatusCode), str(info.lastReason)
        event = prm.e
        if event.type == pj.PJSIP_EVENT_RX_MSG:  # e.g. an ACK that carries the answer
            self._on_remote_message(call, event.body.rxMsg.rdata.wholeMsg)
        if state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self._calls.pop(call.call_id, None)  # pjsua2 lets the Call go in this very callback
            if call.ring_timer is not None:
                call.ring_timer.cancel()
            if not call.silent:
                log.info("SIP %s ended: %s", call.call_id, code)
                self._progress(call, "disconnected", code, reason)
                self._emit(CallEnded(call.call_id, code, reason))
            return
        if call.silent:
            return
        if state == pj.PJSIP_INV_STATE_CALLING:
            self._progress(call, "calling", code, reason)
        elif state == pj.PJSIP_INV_STATE_EARLY:
            self._progress(call, "ringing" if code in (180, 181, 182) else "early", code, reason)
        elif state == pj.PJSIP_INV_STATE_CONFIRMED:
            self._progress(call, "connected", code, reason)

    def _progress(self, call: _Call, state: str, code: int, reason: str) -> None:
        if call.progress == (state, code):
            return
        call.progress = (state, code)
        self._emit(CallProgress(call.call_id, state, code, reason))

    def _on_remote_message(self, call: _Call, message: str) -> None:
        if call.silent:
            return
        body = sdp_body(message)
        if body is not None:
            self._remote_sdp(call, body)

    def _remote_sdp(self, call: _Call, sdp: str) -> None:
        try:
            remote_media = parse_remote_sdp(sdp)
        except SipError as error:
            log.warning("SIP %s: the peer's SDP is malformed, ignored: %s", call.call_id, error)
            return
        if remote_media != call.remote_media:
            call.remote_media = remote_media
            self._emit(RemoteMediaChanged(call.call_id, remote_media))

    def _on_sdp_created(self, call: _Call, prm) -> None:
        remote = prm.remSdp.wholeSdp
        if remote and not call.silent and call.offer is not None:
            self._remote_sdp(call, remote)
        if call.offer is None:
            # An incoming call: pjsua writes its answer before we know our media; answer() rewrites it.
            call.pjsua_sdp = prm.sdp.wholeSdp
            return
        try:
            prm.sdp.wholeSdp = rewrite_local_sdp(prm.sdp.wholeSdp, call.offer)
        except SipError as error:
            log.error("SIP %s: cannot point pjsua's SDP at our media (%s): hanging up", call.call_id, error)
            self._loop.call_soon(self._hangup_if_present, call.call_id)

    def _hangup_if_present(self, call_id: str) -> None:
        call = self._calls.get(call_id)
        if call is not None:
            self._hangup_quietly(call, 488 if call.incoming and not call.answered else None)


def _error_text(error) -> str:
    try:
        return f"{error.reason} ({error.status})"
    except Exception:  # noqa: BLE001 - only a message is wanted here
        return "pjsua error"


def _certificate_fingerprint(pem: str) -> str | None:
    match = re.search(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", pem or "", re.DOTALL)
    if not match:
        return None
    der = base64.b64decode("".join(match.group(1).split()))
    return hashlib.sha256(der).hexdigest()


def _port_of(address: str) -> int:
    try:
        return int(address.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return -1


def _same_host_port(uri: str, address: str) -> bool:
    hostport = uri.split(":", 1)[1].split(";", 1)[0]
    host, _, port = hostport.partition(":")
    remote_host, _, remote_port = address.rpartition(":")
    return host == remote_host.strip("[]") and (port or "5061") == remote_port
