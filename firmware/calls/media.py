"""One call's media: our own UDP socket pair carrying ZRTP, then SRTP-protected RTP audio.

Contract:

- ``open()`` binds an RTP socket on a free even port and RTCP on the next, and makes the ZRTP
  session, so ``offer()`` can go into our SDP (ports and ``a=zrtp-hash``).
- ``set_remote(...)`` gives the peer's address, codec list and hello hash (from its SDP), and
  ``start()`` (once the call is connected) begins ZRTP. A peer without a hello hash makes the call
  NOT ENCRYPTED, which the session reports (``MediaNotEncrypted``) and, unless plain calls are
  allowed, it never sends or plays a sample. A later SDP without ZRTP in a secure call is
  reported the same way at once.
- Audio flows only once SRTP is keyed (or, for an allowed plain call, at once). Outbound: the
  audio thread calls ``exchange(captured)`` every 20 ms; it returns the frame to play.
- Every RTCP_INTERVAL_S a sender report goes to the peer's RTCP port as SRTCP (32-bit tag when
  HS32 was negotiated, as Linphone does); the peer's reports count once they authenticate.
- Everything from the network runs on the asyncio loop; only datagrams from the peer's media
  address are looked at. ZRTP's timers tick on the loop. The jitter buffer is the one object the
  two threads share, behind a lock.
- Events go to ``on_event`` on the loop: MediaSecure, MediaNotEncrypted, MediaFailed.
- A bad packet from the peer is counted and dropped; it never raises out of the session.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable

from firmware.calls.codecs import SUPPORTED, Concealer, Resampler, open_codec
from firmware.calls.rtp import (JitterBuffer, RtpError, RtpSender, build_sender_report, classify, ntp_timestamp, parse,
                                parse_rtcp)
from firmware.calls.srtp import SrtpError, SrtpKey, SrtpSession, profile_for
from firmware.calls.zrtp import (ZrtpCacheMismatch, ZrtpFailed, ZrtpGoClear, ZrtpSecure, ZrtpSession, ZrtpSrtpKeys,
                                 ZidCache)

log = logging.getLogger(__name__)

FRAME_MS = 20
ZRTP_TICK_S = 0.02
RTCP_INTERVAL_S = 5.0
"""RFC 3550's minimum interval between our (SRTCP-protected) sender reports."""
RTCP_CNAME = "byline"
"""The same for every phone: RFC 7022 allows a fixed name, and a real one would identify us."""
PORT_ATTEMPTS = 50
FIRST_MEDIA_PORT = 20000
LAST_MEDIA_PORT = 60000


@dataclass(frozen=True)
class MediaSecure:
    """SRTP is keyed by ZRTP: show ``sas``; ``verified`` when both compared it before; ``cache_mismatch``
    when the peer's key changed since (a loud warning until the SAS is compared again)."""

    sas: str
    verified: bool
    cache_mismatch: bool
    known_peer: bool
    cipher: str
    auth_tag: str
    key_agreement: str


@dataclass(frozen=True)
class MediaNotEncrypted:
    """The peer offered no ZRTP (or went clear): no end-to-end encryption on this call."""

    reason: str


@dataclass(frozen=True)
class MediaFailed:
    reason: str


MediaEvent = MediaSecure | MediaNotEncrypted | MediaFailed


@dataclass
class MediaStats:
    """Counters of one call's media; ``stats`` hands out a copy with the losses and libsrtp's
    authentication failures added."""

    sent: int = 0
    received: int = 0
    srtp_errors: int = 0
    dropped_foreign: int = 0
    lost: int = 0
    reports_sent: int = 0
    reports_received: int = 0


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, tuple], None]):
        self._on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr) -> None:
        self._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable before the peer listens
        log.debug("media socket error: %s", exc)


class MediaSession:
    """One call's media (see the module contract)."""

    def __init__(self, *, bind_address: str, zid_cache: ZidCache | None, self_uri: str, peer_uri: str,
                 on_event: Callable[[MediaEvent], None], device_rate: int = 16000, allow_plain: bool = False):
        self.bind_address = bind_address
        self.zid_cache = zid_cache
        self.self_uri = self_uri
        self.peer_uri = peer_uri
        self.on_event = on_event
        self.device_rate = device_rate
        self.allow_plain = allow_plain
        self.rtp_port = 0
        self.closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rtp: asyncio.DatagramTransport | None = None
        self._rtcp: asyncio.DatagramTransport | None = None
        self._zrtp: ZrtpSession | None = None
        self._srtp: SrtpSession | None = None
        self._remote: tuple[str, int] | None = None
        self._remote_rtcp: tuple[str, int] | None = None
        self.rtcp_interval_s = RTCP_INTERVAL_S
        self._reporter: asyncio.Task | None = None
        self._zrtp_hash: str | None = None
        self._telephone_event_pt: int | None = None
        self._dtmf_digits: collections.deque[str] = collections.deque()
        self._dtmf_packets: list[bytes] = []
        self.held = False
        self.muted = False
        self._started = False
        self._start_requested = False
        self._codec = None
        self._sender: RtpSender | None = None
        self._jitter: JitterBuffer | None = None
        self._jitter_lock = threading.Lock()
        self._concealer: Concealer | None = None
        self._to_codec: Resampler | None = None
        self._to_device: Resampler | None = None
        self._audio_on = False
        self._ticker: asyncio.Task | None = None
        self._counters = MediaStats()
        self._ssrc = int.from_bytes(os.urandom(4), "big")

    async def open(self) -> None:
        """Bind the socket pair and make the ZRTP session (see the module contract)."""
        self._loop = asyncio.get_running_loop()
        self._rtp, self._rtcp, self.rtp_port = await _bind_pair(self._loop, self.bind_address,
                                                                self._on_rtp, self._on_rtcp)
        if self.closed:  # closed while the sockets were being bound: they must not outlive it
            self._rtp.close()
            self._rtcp.close()
            raise asyncio.CancelledError("the media session was closed while opening")
        self._zrtp = ZrtpSession(self.zid_cache, self.self_uri, self.peer_uri, self._send_zrtp, self._on_zrtp,
                                 ssrc=self._ssrc)

    @property
    def zrtp_hash(self) -> str:
        return self._zrtp.hello_hash()

    @property
    def rtcp_port(self) -> int:
        return self.rtp_port + 1

    def set_remote(self, address: str, rtp_port: int, payload_types: tuple[int, ...], zrtp_hash: str | None,
                   telephone_event_pt: int | None = None, rtcp_port: int | None = None) -> None:
        """The peer's media (from its SDP); called again for every later SDP (re-INVITE, hold)."""
        self._remote = (address, rtp_port)
        self._remote_rtcp = (address, rtcp_port or rtp_port + 1)
        self._telephone_event_pt = telephone_event_pt
        if self._codec is None:
            self._choose_codec(payload_types)
        if self._started and zrtp_hash is None and self._zrtp_hash is not None:
            self._go_plain("the other phone's new offer has no ZRTP")
        self._zrtp_hash = zrtp_hash if not self._started else self._zrtp_hash
        if self._start_requested:
            self.start()

    def start(self) -> None:
        """The call is connected: begin ZRTP (as soon as the peer's media is known, which for an
        outgoing call may come just after), or report that the peer offered none."""
        self._start_requested = True
        if self._started or self._remote is None:
            return
        self._started = True
        if self._zrtp_hash is None:
            self._go_plain("the other phone did not offer ZRTP")
            return
        self._zrtp.set_peer_hello_hash(self._zrtp_hash)
        self._zrtp.start(_now_ms())
        self._ticker = self._loop.create_task(self._tick_zrtp(), name="zrtp-timers")

    def _choose_codec(self, payload_types: tuple[int, ...]) -> None:
        for payload_type in payload_types:
            for name in SUPPORTED:
                codec = open_codec(name)
                if codec.payload_type == payload_type:
                    self._use_codec(codec)
                    return
                codec.close()
        self._fail("no audio codec in common with the other phone")

    def _use_codec(self, codec) -> None:
        self._codec = codec
        self._sender = RtpSender(self._ssrc, codec.payload_type, codec.rtp_clock_rate, FRAME_MS)
        self._jitter = JitterBuffer(codec.rtp_clock_rate, FRAME_MS)
        self._concealer = Concealer(codec.sample_rate)
        if codec.sample_rate != self.device_rate:
            self._to_codec = Resampler(self.device_rate, codec.sample_rate)
            self._to_device = Resampler(codec.sample_rate, self.device_rate)

    def _go_plain(self, reason: str) -> None:
        self._stop_audio_crypto()
        self._audio_on = self.allow_plain
        self.on_event(MediaNotEncrypted(reason))

    def _stop_audio_crypto(self) -> None:
        self._audio_on = False
        if self._srtp is not None:
            self._srtp.close()
            self._srtp = None

    def _fail(self, reason: str) -> None:
        self._audio_on = False
        self.on_event(MediaFailed(reason))

    def send_dtmf(self, digit: str) -> bool:
        """Queue one key press for the peer (RFC 4733 events, in place of audio for about 100 ms);
        False when the peer's SDP offered no telephone events."""
        if self._telephone_event_pt is None:
            return False
        self._dtmf_digits.append(digit)
        return True

    def set_muted(self, muted: bool) -> None:
        """Muted, the microphone's frames are replaced by silence (the peer keeps hearing a stream)."""
        self.muted = muted

    def set_held(self, held: bool) -> None:
        """On hold neither side's audio flows (the peer is told through SIP)."""
        self.held = held

    def set_sas_verified(self, verified: bool) -> None:
        if self._zrtp is not None:
            self._zrtp.set_sas_verified(verified)

    # The network, on the loop.

    def _on_rtp(self, data: bytes, addr) -> None:
        if self._remote is None or addr[0] != self._remote[0] or addr[1] != self._remote[1]:
            self._counters.dropped_foreign += 1
            return
        kind = classify(data)
        if kind == "zrtp":
            if self._started:  # before that the peer's Hellos are dropped; it sends them again
                self._zrtp.receive(data, _now_ms())
        elif kind == "rtp":
            self._on_audio_packet(data)

    def _on_audio_packet(self, data: bytes) -> None:
        if not self._audio_on or self._jitter is None:
            return
        try:
            if self._srtp is not None:
                data = self._srtp.unprotect_rtp(data)
            packet = parse(data)
        except (SrtpError, RtpError):
            self._counters.srtp_errors += 1
            return
        self._counters.received += 1
        with self._jitter_lock:
            self._jitter.put(packet, time.monotonic())

    def _on_rtcp(self, data: bytes, addr) -> None:
        """The peer's SRTCP reports: counted once they authenticate; anything else is dropped."""
        if self._remote_rtcp is None or tuple(addr[:2]) != self._remote_rtcp or self._srtp is None:
            self._counters.dropped_foreign += 1
            return
        try:
            parse_rtcp(self._srtp.unprotect_rtcp(data))
        except (SrtpError, RtpError):
            self._counters.srtp_errors += 1
            return
        self._counters.reports_received += 1

    async def _send_reports(self) -> None:
        """A sender report (with our reception report) every interval, as SRTCP."""
        while not self.closed:
            await asyncio.sleep(self.rtcp_interval_s)
            srtp, sender = self._srtp, self._sender
            if srtp is None or sender is None or self._rtcp is None or self.held:
                continue
            with self._jitter_lock:
                block = self._jitter.report_block()
            report = build_sender_report(self._ssrc, ntp_timestamp(time.time()), sender.timestamp,
                                         sender.packets_sent, sender.octets_sent,
                                         (block,) if block else (), cname=RTCP_CNAME)
            self._rtcp.sendto(srtp.protect_rtcp(report), self._remote_rtcp)
            self._counters.reports_sent += 1

    def _send_zrtp(self, packet: bytes) -> None:
        if self._remote is not None and self._rtp is not None:
            self._rtp.sendto(packet, self._remote)

    def _on_zrtp(self, event) -> None:
        if isinstance(event, ZrtpSrtpKeys):
            self._key_srtp(event)
        elif isinstance(event, ZrtpSecure):
            self.on_event(MediaSecure(event.sas, event.sas_verified, event.cache_mismatch, event.known_peer,
                                      event.cipher, event.auth_tag, event.key_agreement))
        elif isinstance(event, ZrtpCacheMismatch):
            pass  # reported with ZrtpSecure's cache_mismatch
        elif isinstance(event, ZrtpGoClear):
            self._go_plain("the other phone switched encryption off")
        elif isinstance(event, ZrtpFailed):
            self._stop_audio_crypto()
            self._fail(f"ZRTP failed: {event.reason}")

    def _key_srtp(self, keys: ZrtpSrtpKeys) -> None:
        profile = profile_for(keys.cipher, keys.auth_tag)
        self._srtp = SrtpSession(profile, SrtpKey(keys.self_key, keys.self_salt), SrtpKey(keys.peer_key, keys.peer_salt),
                                 srtcp_tag_32=keys.auth_tag == "HS32")
        self._audio_on = self._codec is not None
        if self._reporter is None:
            self._reporter = self._loop.create_task(self._send_reports(), name="rtcp-reports")

    async def _tick_zrtp(self) -> None:
        while not self.closed:
            await asyncio.sleep(ZRTP_TICK_S)
            self._zrtp.tick(_now_ms())

    # Audio, on the audio thread.

    def exchange(self, captured: bytes) -> bytes | None:
        """Send ``captured`` (20 ms at the device rate) and return the next 20 ms to play (None: silence)."""
        if not self._audio_on or self.closed or self.held:
            return None
        self._send_audio(bytes(len(captured)) if self.muted else captured)
        return self._next_played()

    def _send_audio(self, captured: bytes) -> None:
        pcm = self._to_codec.resample(captured) if self._to_codec else captured
        if not self._dtmf_packets and self._dtmf_digits:
            self._dtmf_packets = self._sender.dtmf(self._dtmf_digits.popleft(), self._telephone_event_pt)
        if self._dtmf_packets:
            packet = self._dtmf_packets.pop(0)  # a key press replaces the audio of its frames
        else:
            packet = self._sender.next(self._codec.encode(pcm))
        srtp = self._srtp
        if srtp is not None:
            packet = srtp.protect_rtp(packet)
        elif not self.allow_plain:
            return
        self._loop.call_soon_threadsafe(self._send_datagram, packet)

    def _send_datagram(self, packet: bytes) -> None:
        if self._rtp is not None and self._remote is not None:
            self._rtp.sendto(packet, self._remote)
            self._counters.sent += 1

    def _next_played(self) -> bytes:
        with self._jitter_lock:
            packet = self._jitter.get()
        samples = self._codec.sample_rate * FRAME_MS // 1000
        if packet is None or packet.payload_type != self._codec.payload_type:
            # Lost, or a telephone event / comfort noise (in the stream's numbering, not played).
            pcm = self._concealer.conceal(samples)
        else:
            pcm = self._concealer.received(self._codec.decode(packet.payload))
        return self._to_device.resample(pcm) if self._to_device else pcm

    @property
    def stats(self) -> MediaStats:
        lost = self._jitter.stats.lost if self._jitter is not None else 0
        rejected = self._srtp.auth_failures if self._srtp else 0
        return replace(self._counters, lost=lost, srtp_errors=self._counters.srtp_errors + rejected)

    def close(self) -> None:
        """Stop audio, ZRTP and the sockets; idempotent."""
        if self.closed:
            return
        self.closed = True
        self._audio_on = False
        for task in (self._ticker, self._reporter):
            if task is not None:
                task.cancel()
        for transport in (self._rtp, self._rtcp):
            if transport is not None:
                transport.close()
        if self._zrtp is not None:
            self._zrtp.close()
        if self._srtp is not None:
            self._srtp.close()
        if self._codec is not None:
            self._codec.close()


def route_address(host: str) -> str:
    """Our address on the interface that reaches ``host`` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((host, 9))
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"


async def _bind_pair(loop, address: str, on_rtp, on_rtcp):
    """An RTP socket on an even port and RTCP on the next one (RFC 3550's convention)."""
    for _ in range(PORT_ATTEMPTS):
        port = _even_port(address)
        try:
            rtp, _ = await loop.create_datagram_endpoint(lambda: _Socket(on_rtp), local_addr=(address, port))
        except OSError:
            continue
        try:
            rtcp, _ = await loop.create_datagram_endpoint(lambda: _Socket(on_rtcp), local_addr=(address, port + 1))
        except OSError:
            rtp.close()
            continue
        return rtp, rtcp, port
    raise OSError(f"no free pair of UDP ports on {address} after {PORT_ATTEMPTS} tries")


def _even_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((address, 0))
        port = probe.getsockname()[1]
    return port - port % 2 if port % 2 else port


def _now_ms() -> int:
    return int(time.monotonic() * 1000)
