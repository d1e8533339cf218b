"""Two media sessions on loopback: ZRTP agrees, SRTP carries G.722 both ways, nothing plain leaves."""

import asyncio
import math
import struct

from firmware.calls.codecs import open_codec
from firmware.calls.media import MediaNotEncrypted, MediaSecure, MediaSession
from firmware.calls.rtp import classify, parse
from firmware.calls.zrtp import ZidCache

RATE = 16000
FRAME_SAMPLES = RATE // 50
G722, PCMU = 9, 0


def tone_frames(frequency: float, count: int, rate: int = RATE) -> list[bytes]:
    samples = rate // 50
    return [struct.pack(f"<{samples}h", *(int(8000 * math.sin(2 * math.pi * frequency * (n * samples + i) / rate))
                                         for i in range(samples))) for n in range(count)]


def tone_power(pcm: bytes, frequency: float, rate: int = RATE) -> float:
    """Goertzel: the share of the signal's energy at ``frequency`` (0..1)."""
    samples = struct.unpack(f"<{len(pcm) // 2}h", pcm)
    coefficient = 2 * math.cos(2 * math.pi * frequency / rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coefficient * s1 - s2, s1
    power = s1 * s1 + s2 * s2 - coefficient * s1 * s2
    energy = sum(x * x for x in samples) or 1
    return 2 * power / (len(samples) * energy)


class Phone:
    def __init__(self, name: str, cache: ZidCache, allow_plain: bool = False):
        self.events = []
        self.sent = []
        self.media = MediaSession(bind_address="127.0.0.1", zid_cache=cache, self_uri=f"sip:{name}@lab",
                                  peer_uri="sip:peer@lab", on_event=self.events.append, device_rate=RATE,
                                  allow_plain=allow_plain)

    async def open(self):
        await self.media.open()
        transport = self.media._rtp
        original = transport.sendto

        def recording_sendto(data, addr=None):
            self.sent.append(bytes(data))
            original(data, addr)

        transport.sendto = recording_sendto

    def secure(self) -> MediaSecure | None:
        return next((e for e in self.events if isinstance(e, MediaSecure)), None)


async def connect(a: Phone, b: Phone, payload_types=(G722, PCMU), hashes=True):
    await a.open()
    await b.open()
    a.media.set_remote("127.0.0.1", b.media.rtp_port, payload_types, b.media.zrtp_hash if hashes else None)
    b.media.set_remote("127.0.0.1", a.media.rtp_port, payload_types, a.media.zrtp_hash if hashes else None)
    a.media.start()
    b.media.start()


async def wait_until(predicate, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.01)


async def talk(a: Phone, b: Phone, frames: int, a_tone=1000.0, b_tone=1600.0):
    """Both exchange 20 ms frames in real time; returns what each played."""
    a_out, b_out = tone_frames(a_tone, frames), tone_frames(b_tone, frames)
    a_played, b_played = [], []
    for i in range(frames):
        a_played.append(a.media.exchange(a_out[i]) or bytes(FRAME_SAMPLES * 2))
        b_played.append(b.media.exchange(b_out[i]) or bytes(FRAME_SAMPLES * 2))
        await asyncio.sleep(0.02)
    return b"".join(a_played), b"".join(b_played)


def test_zrtp_keys_srtp_and_the_tones_cross_both_ways():
    async def scenario():
        a, b = Phone("alice", ZidCache()), Phone("bob", ZidCache())
        await connect(a, b)
        try:
            await wait_until(lambda: a.secure() and b.secure())
            assert a.secure().sas == b.secure().sas and len(a.secure().sas) == 4
            assert not a.secure().verified and not a.secure().cache_mismatch
            a_played, b_played = await talk(a, b, 60)
            return a, b, a_played, b_played
        finally:
            a.media.close()
            b.media.close()

    a, b, a_played, b_played = asyncio.run(scenario())
    late = FRAME_SAMPLES * 2 * 30  # after the jitter buffer filled
    assert tone_power(b_played[late:], 1000) > 0.5, "alice's tone did not reach bob"
    assert tone_power(a_played[late:], 1600) > 0.5, "bob's tone did not reach alice"
    assert tone_power(b_played[late:], 1600) < 0.05
    assert b.media.stats.srtp_errors == 0 and a.media.stats.srtp_errors == 0


def test_nothing_plain_leaves_the_socket():
    async def scenario():
        a, b = Phone("alice", ZidCache()), Phone("bob", ZidCache())
        await connect(a, b)
        try:
            await wait_until(lambda: a.secure() and b.secure())
            await talk(a, b, 30)
            return a
        finally:
            a.media.close()
            b.media.close()

    a = asyncio.run(scenario())
    media = [d for d in a.sent if classify(d) == "rtp"]
    assert len(media) >= 25 and all(classify(d) in ("rtp", "zrtp") for d in a.sent)
    decoder = open_codec("G722")
    decoded = b"".join(decoder.decode(parse(d).payload[:-10]) for d in media)  # as if it were plain G.722
    assert tone_power(decoded, 1000) < 0.05, "the payload must not be the plain tone"
    encoder, reference = open_codec("G722"), open_codec("G722")
    plain = b"".join(reference.decode(encoder.encode(f)) for f in tone_frames(1000, 30))
    assert tone_power(plain, 1000) > 0.5, "the detector must see a plain G.722 tone"


def test_a_peer_without_zrtp_is_not_encrypted_and_silent_unless_allowed():
    async def scenario(allow_plain):
        a, b = Phone("alice", ZidCache(), allow_plain), Phone("bob", ZidCache(), allow_plain)
        await connect(a, b, hashes=False)
        try:
            played = await talk(a, b, 10)
            return a, played
        finally:
            a.media.close()
            b.media.close()

    refused, (a_played, _) = asyncio.run(scenario(False))
    assert isinstance(refused.events[0], MediaNotEncrypted)
    assert not [d for d in refused.sent if classify(d) == "rtp"], "no audio may leave unencrypted"
    allowed, _ = asyncio.run(scenario(True))
    assert isinstance(allowed.events[0], MediaNotEncrypted)
    assert [d for d in allowed.sent if classify(d) == "rtp"], "an allowed plain call carries audio"


def test_verified_sas_is_remembered_and_a_changed_key_is_reported():
    async def call(cache_a, cache_b, verify=False):
        a, b = Phone("alice", cache_a), Phone("bob", cache_b)
        await connect(a, b)
        try:
            await wait_until(lambda: a.secure() and b.secure())
            if verify:
                a.media.set_sas_verified(True)
                b.media.set_sas_verified(True)
            return a.secure(), b.secure()
        finally:
            a.media.close()
            b.media.close()

    cache_a, cache_b = ZidCache(), ZidCache()
    first, _ = asyncio.run(call(cache_a, cache_b, verify=True))
    assert not first.verified
    second, _ = asyncio.run(call(cache_a, cache_b))
    assert second.verified and not second.cache_mismatch
    new_device, _ = asyncio.run(call(cache_a, ZidCache()))
    assert not new_device.cache_mismatch and not new_device.known_peer, "a new device is not an alarm"


def test_packets_from_elsewhere_are_ignored():
    async def scenario():
        a, b = Phone("alice", ZidCache()), Phone("bob", ZidCache())
        await connect(a, b)
        stranger = __import__("socket").socket(2, 2)
        try:
            await wait_until(lambda: a.secure() and b.secure())
            for payload in (b"\x80" * 40, b"\x10\x00\x00\x01ZRTP" + b"\0" * 40, b"junk"):
                stranger.sendto(payload, ("127.0.0.1", a.media.rtp_port))
            await asyncio.sleep(0.1)
            return a.media.stats
        finally:
            stranger.close()
            a.media.close()
            b.media.close()

    stats = asyncio.run(scenario())
    assert stats.dropped_foreign == 3


def test_a_key_press_goes_out_as_encrypted_telephone_events_in_place_of_audio():
    async def scenario():
        a, b = Phone("alice", ZidCache()), Phone("bob", ZidCache())
        await a.open()
        await b.open()
        a.media.set_remote("127.0.0.1", b.media.rtp_port, (G722,), b.media.zrtp_hash, telephone_event_pt=101)
        b.media.set_remote("127.0.0.1", a.media.rtp_port, (G722,), a.media.zrtp_hash)
        a.media.start()
        b.media.start()
        received = []
        original_put = None
        try:
            await wait_until(lambda: a.secure() and b.secure())
            original_put = b.media._jitter.put
            b.media._jitter.put = lambda packet, arrival: (received.append(packet), original_put(packet, arrival))
            assert a.media.send_dtmf("5") and not b.media.send_dtmf("5"), "bob's peer offered no telephone-event"
            await talk(a, b, 15)
            return received
        finally:
            a.media.close()
            b.media.close()

    received = asyncio.run(scenario())
    events = [p for p in received if p.payload_type == 101]
    assert events and events[0].marker and events[0].payload[0] == 5, "digit 5 is event 5 (RFC 4733)"
    assert events[-1].payload[1] & 0x80, "the last packets carry the end bit"
    assert len({p.timestamp for p in events}) == 1, "every packet of one key press has its start timestamp"
    assert any(p.payload_type == G722 for p in received[received.index(events[-1]):]), "audio resumes after"


def test_a_new_offer_without_zrtp_in_a_secure_call_is_reported_at_once_and_silences_the_call():
    async def scenario():
        a, b = Phone("alice", ZidCache()), Phone("bob", ZidCache())
        await connect(a, b)
        try:
            await wait_until(lambda: a.secure() and b.secure())
            await talk(a, b, 5)
            sent_before = len(a.sent)
            a.media.set_remote("127.0.0.1", b.media.rtp_port, (G722,), None)  # a re-INVITE without a=zrtp-hash
            await talk(a, b, 5)
            return a, sent_before
        finally:
            a.media.close()
            b.media.close()

    a, sent_before = asyncio.run(scenario())
    assert isinstance(a.events[-1], MediaNotEncrypted) and "no ZRTP" in a.events[-1].reason
    assert len(a.sent) == sent_before, "nothing more is sent once encryption is gone (plain calls not allowed)"


def test_closing_while_opening_leaves_no_socket_behind():
    async def scenario():
        phone = Phone("alice", ZidCache())
        opening = asyncio.ensure_future(phone.media.open())
        phone.media.close()
        try:
            await opening
        except asyncio.CancelledError:
            pass
        return phone.media

    media = asyncio.run(scenario())
    assert media._rtp is None or media._rtp.is_closing()
    assert media._rtcp is None or media._rtcp.is_closing()


def test_muted_the_peer_hears_silence_but_the_stream_goes_on():
    async def scenario():
        a, b = Phone("alice", ZidCache()), Phone("bob", ZidCache())
        await connect(a, b)
        try:
            await wait_until(lambda: a.secure() and b.secure())
            a.media.set_muted(True)
            sent_before = len(a.sent)
            _, b_played = await talk(a, b, 40)
            return b_played, len(a.sent) - sent_before
        finally:
            a.media.close()
            b.media.close()

    b_played, sent = asyncio.run(scenario())
    assert sent >= 35, "muted, packets still flow (silence), so the call does not look dead"
    assert tone_power(b_played[FRAME_SAMPLES * 2 * 20:], 1000) < 0.05


def test_sender_reports_go_both_ways_as_srtcp():
    async def scenario():
        a, b = Phone("alice", ZidCache()), Phone("bob", ZidCache())
        a.media.rtcp_interval_s = b.media.rtcp_interval_s = 0.1
        await connect(a, b)
        try:
            await wait_until(lambda: a.secure() and b.secure())
            await talk(a, b, 25)
            return a.media.stats, b.media.stats
        finally:
            a.media.close()
            b.media.close()

    a_stats, b_stats = asyncio.run(scenario())
    for stats in (a_stats, b_stats):
        assert stats.reports_sent >= 3 and stats.reports_received >= 3 and stats.srtp_errors == 0, stats
