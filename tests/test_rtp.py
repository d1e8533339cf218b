"""firmware.calls.rtp: packets (round trips, real captures, fuzzing), the sender, the jitter buffer
on simulated networks, RTCP, RFC 4733 DTMF and demultiplexing."""

from __future__ import annotations

import random
import statistics
import struct

import pytest

from firmware.calls.rtp import (
    DTMF_EVENTS,
    Bye,
    JitterBuffer,
    ReceiverReport,
    ReportBlock,
    RtcpOther,
    RtpError,
    RtpExtension,
    RtpPacket,
    RtpSender,
    SenderReport,
    SourceDescription,
    build_bye,
    build_receiver_report,
    build_sender_report,
    classify,
    dtmf_packets,
    ntp_timestamp,
    parse,
    parse_dtmf,
    parse_rtcp,
    round_trip_time,
)

# Real packets from other implementations' test suites.
# pion/rtp: marker, extension (profile 1, one word), PT 96, seq 27023, ts 3653407706.
PION_RTP = bytes([0x90, 0xE0, 0x69, 0x8F, 0xD9, 0xC2, 0x93, 0xDA, 0x1C, 0x64, 0x27, 0x82, 0x00, 0x01, 0x00,
                  0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0x98, 0x36, 0xBE, 0x88, 0x9E])
# webrtc-rs/rtcp (from a browser): RR, SDES CNAME, BYE, PLI, RRR in one compound packet.
BROWSER_RTCP = bytes.fromhex(
    "81c90007902f9e2ebc5e9a4000000000000046e10000011109f364320002"
    "4a7981ca000c902f9e2e01267b39633030656239322d316166622d396434"
    "392d613437642d3931663634656565363966357d0000000081cb00019"
    "02f9e2e81ce0002902f9e2e902f9e2e85cd0002902f9e2e902f9e2e")
# Firefox transport-wide congestion control feedback (RTPFB 205, FMT 15), from webrtc-rs/srtp#7.
FIREFOX_TWCC = bytes([143, 205, 0, 6, 65, 227, 184, 49, 118, 243, 78, 96, 42, 63, 0, 5, 12, 162, 166, 0,
                      32, 5, 200, 4, 0, 4, 0, 0])
# RFC 5769 section 2.1: a STUN Binding request with SOFTWARE, PRIORITY, ICE-CONTROLLED, USERNAME,
# MESSAGE-INTEGRITY and FINGERPRINT.
RFC5769_STUN = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e2074"
    "65737420636c69656e74002400046e0001ff80290008932ff9b151263b36"
    "000600096576746a3a68367659202020000800149aeaa70cbfd8cb56781e"
    "f2b5b2d3f249c1b571a280280004e57a3bcf")
# bzrtp's packet parser tests: a HelloACK and a Conf2ACK as bzrtp sends them.
ZRTP_HELLO_ACK = bytes([0x10, 0x00, 0x09, 0xF2, 0x5A, 0x52, 0x54, 0x50, 0x12, 0x34, 0x56, 0x78, 0x50, 0x5A,
                        0x00, 0x03, 0x48, 0x65, 0x6C, 0x6C, 0x6F, 0x41, 0x43, 0x4B, 0x77, 0x0E, 0x44, 0x07])
ZRTP_CONF2_ACK = bytes([0x10, 0x00, 0x09, 0xF7, 0x5A, 0x52, 0x54, 0x50, 0x12, 0x34, 0x56, 0x78, 0x50, 0x5A,
                        0x00, 0x03, 0x43, 0x6F, 0x6E, 0x66, 0x32, 0x41, 0x43, 0x4B, 0x23, 0xC1, 0x1B, 0x45])
# A DTLS 1.2 ClientHello record header (content type 22): not ours to handle.
DTLS_RECORD = bytes.fromhex("16fefd000000000000000000f9010000ed000000000000ed")


# --- RTP packets -------------------------------------------------------------------------------------

def random_packet(rng: random.Random) -> RtpPacket:
    extension = None
    if rng.random() < 0.3:
        extension = RtpExtension(rng.randrange(1 << 16), rng.randbytes(4 * rng.randrange(4)))
    return RtpPacket(
        payload_type=rng.randrange(128),
        sequence=rng.randrange(1 << 16),
        timestamp=rng.randrange(1 << 32),
        ssrc=rng.randrange(1 << 32),
        marker=rng.random() < 0.5,
        payload=rng.randbytes(rng.randrange(200)),
        csrcs=tuple(rng.randrange(1 << 32) for _ in range(rng.choice((0, 0, 1, 15)))),
        extension=extension,
    )


def test_pack_parse_round_trip():
    rng = random.Random(3550)
    for _ in range(2000):
        packet = random_packet(rng)
        data = packet.pack()
        assert parse(data) == packet
        assert parse(bytearray(data)) == packet
        assert parse(data).pack() == data


def test_parse_a_real_packet():
    packet = parse(PION_RTP)
    assert packet.marker and packet.payload_type == 96
    assert (packet.sequence, packet.timestamp, packet.ssrc) == (27023, 3653407706, 476325762)
    assert packet.extension == RtpExtension(1, b"\xff\xff\xff\xff")
    assert packet.payload == bytes([0x98, 0x36, 0xBE, 0x88, 0x9E])
    assert packet.pack() == PION_RTP


def test_parse_strips_padding_and_accepts_an_empty_payload():
    header = RtpPacket(0, 1, 2, 3).pack()
    padded = bytes([header[0] | 0x20]) + header[1:] + b"abc" + b"\x00\x00\x03"
    assert parse(padded).payload == b"abc"
    assert parse(header).payload == b""
    only_padding = bytes([header[0] | 0x20]) + header[1:] + b"\x00\x00\x00\x04"
    assert parse(only_padding).payload == b""


@pytest.mark.parametrize(("data", "message"), [
    (b"", "too short"),
    (b"\x80" * 11, "too short"),
    (b"\x40" + bytes(11), "not RTP version 2"),
    (b"\x00" + bytes(11), "not RTP version 2"),
    (b"\x81" + bytes(11), "CSRC count 1"),
    (b"\x8f" + bytes(11 + 56), "CSRC count 15"),
    (b"\x90" + bytes(11), "extension flagged"),
    (b"\x90" + bytes(11) + b"\x00\x01\x00\x02" + bytes(4), "extension of 2 words"),
    (b"\xa0" + bytes(11), "no padding byte"),
    (b"\xa0" + bytes(11) + b"ab\x00", "padding count 0"),
    (b"\xa0" + bytes(11) + b"ab\x04", "padding count 4"),
])
def test_malformed_packets_raise_rtp_error(data, message):
    with pytest.raises(RtpError, match=message):
        parse(data)


def test_rtp_error_is_a_value_error_and_non_bytes_are_refused():
    assert issubclass(RtpError, ValueError)
    with pytest.raises(RtpError):
        parse("not bytes")
    with pytest.raises(RtpError):
        parse(None)


def test_packets_check_their_fields():
    for bad in [{"payload_type": 128}, {"sequence": 65536}, {"timestamp": -1}, {"ssrc": 1 << 32},
                {"csrcs": tuple(range(16))}, {"sequence": True}]:
        fields = {"payload_type": 0, "sequence": 0, "timestamp": 0, "ssrc": 0} | bad
        with pytest.raises(ValueError):
            RtpPacket(**fields)
    with pytest.raises(TypeError):
        RtpPacket(0, 0, 0, 0, payload="text")
    with pytest.raises(ValueError):
        RtpExtension(0, b"abc")


def mutations(rng: random.Random, valid: list[bytes]):
    """Random buffers, and valid packets truncated, extended and with bits and bytes flipped."""
    for _ in range(3000):
        yield rng.randbytes(rng.randrange(40))
    for _ in range(6000):
        data = bytearray(rng.choice(valid))
        for _ in range(rng.randrange(1, 4)):
            choice = rng.randrange(5)
            if choice == 0 and data:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            elif choice == 1 and data:
                data[rng.randrange(min(len(data), 16))] = rng.randrange(256)
            elif choice == 2:
                del data[rng.randrange(len(data) + 1):]
            elif choice == 3:
                data += rng.randbytes(rng.randrange(8))
            else:
                data[0:1] = bytes([rng.choice((0x80, 0x90, 0xA0, 0xB0, 0x8F, 0xAF, 0x81))])
        yield bytes(data)


def test_fuzzed_input_only_ever_raises_rtp_error():
    rng = random.Random(4733)
    sender = RtpSender(0x1234, 0, 8000)
    valid = [PION_RTP, BROWSER_RTCP, FIREFOX_TWCC, sender.next(b"x" * 160), random_packet(rng).pack(),
             build_sender_report(1, ntp_timestamp(1e9), 2, 3, 4, [ReportBlock(5, 6, -7, 8, 9, 10, 11)], cname="a@b"),
             build_bye(1, "bye"), *dtmf_packets("7")]
    outcomes = {"parsed": 0, "refused": 0}
    for data in mutations(rng, valid):
        for parser in (parse, parse_rtcp, parse_dtmf):
            try:
                parser(data)
                outcomes["parsed"] += 1
            except RtpError:
                outcomes["refused"] += 1
        assert classify(data) in ("rtp", "rtcp", "zrtp", "stun", "unknown")
    assert outcomes["parsed"] > 1000 and outcomes["refused"] > 1000


# --- the sender -------------------------------------------------------------------------------------------

def test_sender_numbers_packets_from_random_starts():
    starts = {(s.sequence, s.timestamp) for s in (RtpSender(1, 0, 8000) for _ in range(8))}
    assert len(starts) > 1
    sender = RtpSender(0xDEADBEEF, 9, 8000)
    sender.sequence, sender.timestamp = 65534, (1 << 32) - 160
    packets = [parse(sender.next(bytes(160), marker=i == 0)) for i in range(4)]
    assert [p.sequence for p in packets] == [65534, 65535, 0, 1]
    assert [p.timestamp for p in packets] == [(1 << 32) - 160, 0, 160, 320]
    assert [p.marker for p in packets] == [True, False, False, False]
    assert {(p.ssrc, p.payload_type) for p in packets} == {(0xDEADBEEF, 9)}
    assert (sender.packets_sent, sender.octets_sent) == (4, 640)
    sender.skip(3)
    assert parse(sender.next(b"")).timestamp == 480 + 3 * 160


def test_sender_checks_its_arguments():
    for args in [(-1, 0, 8000), (1, 128, 8000), (1, 0, 0), (1, 0, 8000, 0), (1, 0, 44100, 7)]:
        with pytest.raises(ValueError):
            RtpSender(*args)


# --- DTMF ---------------------------------------------------------------------------------------------------

def test_dtmf_round_trip():
    for digit in DTMF_EVENTS:
        payloads = dtmf_packets(digit, duration_ms=100, volume=10)
        events = [parse_dtmf(p) for p in payloads]
        assert [e.duration for e in events] == [160, 320, 480, 640, 800, 800, 800]
        assert [e.end for e in events] == [False] * 4 + [True] * 3
        assert {(e.digit, e.event, e.volume) for e in events} == {(digit, DTMF_EVENTS.index(digit), 10)}
    assert parse_dtmf(dtmf_packets("a")[0]).digit == "A"
    assert parse_dtmf(bytes([16, 0x8A, 0, 160])).digit is None  # event 16 (flash): not a key
    assert parse_dtmf(bytes([5, 0x40 | 7, 1, 0])).volume == 7  # the reserved bit is ignored
    assert len(dtmf_packets("1", duration_ms=40, clock_rate=16000, packet_ms=20)) == 1 + 3


def test_dtmf_refuses_what_it_cannot_send_or_read():
    for kwargs in [{"digit": "X"}, {"digit": "12"}, {"digit": "1", "volume": 64}, {"digit": "1", "duration_ms": 0},
                   {"digit": "1", "duration_ms": 9000}, {"digit": "1", "duration_ms": 10, "packet_ms": 20}]:
        with pytest.raises(ValueError):
            dtmf_packets(**kwargs)
    for payload in [b"", b"\x01\x0a\x00", b"\x01\x0a\x00\xa0\x00"]:
        with pytest.raises(RtpError):
            parse_dtmf(payload)


def test_sender_sends_a_key_press_as_one_event():
    sender = RtpSender(7, 9, 8000)
    sender.sequence, start = 100, sender.timestamp
    packets = [parse(p) for p in sender.dtmf("#", payload_type=101)]
    assert [p.sequence for p in packets] == list(range(100, 107))
    assert {p.timestamp for p in packets} == {start}
    assert {p.payload_type for p in packets} == {101}
    assert [p.marker for p in packets] == [True] + [False] * 6
    assert parse_dtmf(packets[-1].payload).end
    # Audio carries on with the time the event took (one frame per packet).
    audio = parse(sender.next(bytes(160)))
    assert (audio.payload_type, audio.sequence, audio.timestamp) == (9, 107, (start + 7 * 160) & 0xFFFF_FFFF)


# --- RTCP ---------------------------------------------------------------------------------------------------

def test_rtcp_round_trip():
    blocks = [ReportBlock(0xBC5E9A40, 25, 1234, 0x0001_46E1, 273, 0x09F3_6432, 150137),
              ReportBlock(1, 0, -5, 2, 3, 0, 0)]
    ntp = ntp_timestamp(1_700_000_000.25)
    sr = build_sender_report(0x902F9E2E, ntp, 0xAAF4EDD5, 1, 2, blocks, cname="byline@phone")
    assert parse_rtcp(sr) == [SenderReport(0x902F9E2E, ntp, 0xAAF4EDD5, 1, 2, tuple(blocks)),
                              SourceDescription(((0x902F9E2E, "byline@phone"),))]
    rr = build_receiver_report(42, blocks[:1])
    assert parse_rtcp(rr) == [ReceiverReport(42, tuple(blocks[:1]))]
    assert parse_rtcp(build_bye(42, "hung up")) == [ReceiverReport(42), Bye((42,), "hung up")]
    assert parse_rtcp(build_bye(42, receiver_report=False)) == [Bye((42,), "")]
    for data in (sr, rr, build_bye(42, "x")):
        assert len(data) % 4 == 0
        assert classify(data) == "rtcp"


def test_parse_real_rtcp():
    rr, sdes, bye, pli, rrr = parse_rtcp(BROWSER_RTCP)
    assert rr == ReceiverReport(0x902F9E2E, (ReportBlock(0xBC5E9A40, 0, 0, 0x46E1, 273, 0x9F36432, 150137),))
    assert sdes == SourceDescription(((0x902F9E2E, "{9c00eb92-1afb-9d49-a47d-91f64eee69f5}"),))
    assert bye == Bye((0x902F9E2E,), "")
    assert (pli.packet_type, pli.count, rrr.packet_type, rrr.count) == (206, 1, 205, 5)
    assert isinstance(pli, RtcpOther)
    (twcc,) = parse_rtcp(FIREFOX_TWCC)
    assert (twcc.packet_type, twcc.count, len(twcc.body)) == (205, 15, 24)


def test_ntp_and_round_trip_time():
    ntp = ntp_timestamp(0.5)
    assert ntp == (2_208_988_800 << 32) | (1 << 31)
    sent = ntp_timestamp(1000.0)
    block = ReportBlock(1, last_sr=(sent >> 16) & 0xFFFF_FFFF, delay_since_last_sr=int(0.25 * 65536))
    assert round_trip_time(block, ntp_timestamp(1000.75)) == pytest.approx(0.5, abs=1e-4)
    assert round_trip_time(ReportBlock(1), ntp_timestamp(1000.75)) is None


def rtcp_header(packet_type: int, count: int, words: int, padding: bool = False) -> bytes:
    return struct.pack("!BBH", 0x80 | (0x20 if padding else 0) | count, packet_type, words)


@pytest.mark.parametrize(("data", "message"), [
    (b"\x80\xc9\x00", "too short"),
    (b"\x40\xc9\x00\x01" + bytes(4), "not version 2"),
    (rtcp_header(201, 0, 5) + bytes(4), "claims 24 bytes"),
    (rtcp_header(201, 0, 1) + bytes(4) + b"\x80\xc9", "stray bytes"),
    (rtcp_header(201, 1, 1) + bytes(4), "RR with 1 report blocks"),
    (rtcp_header(200, 0, 5) + bytes(20), "SR with 0 report blocks needs 24"),
    (rtcp_header(201, 0, 1, padding=True) + bytes(4) + rtcp_header(201, 0, 1) + bytes(4), "only allowed in the last"),
    (rtcp_header(201, 0, 1, padding=True) + bytes(4), "padding count 0"),
    (rtcp_header(201, 0, 1, padding=True) + b"\x00\x00\x00\x09", "padding count 9"),
    (rtcp_header(203, 2, 1) + bytes(4), "BYE with 2 sources"),
    (rtcp_header(203, 1, 2) + bytes(4) + b"\x09abc", "reason runs past"),
    (rtcp_header(202, 1, 2) + bytes(4) + b"\x01\x09ab", "item runs past"),
    (rtcp_header(202, 1, 2) + bytes(4) + b"\x01\x02ab", "no end item"),
    (rtcp_header(202, 2, 2) + bytes(4) + b"\x00\x00\x00\x00", "chunk runs past"),
])
def test_malformed_rtcp_raises_rtp_error(data, message):
    with pytest.raises(RtpError, match=message):
        parse_rtcp(data)


def test_rtcp_builders_check_their_arguments():
    with pytest.raises(ValueError):
        build_receiver_report(1, [ReportBlock(2)] * 32)
    with pytest.raises(TypeError):
        build_receiver_report(1, ["not a block"])
    with pytest.raises(ValueError):
        build_sender_report(1, 1 << 64, 0, 0, 0)
    with pytest.raises(ValueError):
        build_sender_report(1, 0, 0, -1, 0)
    with pytest.raises(ValueError):
        ReportBlock(1, cumulative_lost=1 << 23)
    with pytest.raises(ValueError):
        build_bye(1, "x" * 256)
    # Counts wrap modulo 2**32 as RFC 3550 says.
    (sr,) = parse_rtcp(build_sender_report(1, 0, 0, (1 << 32) + 5, 1 << 33))
    assert (sr.packet_count, sr.octet_count) == (5, 0)


# --- demultiplexing ------------------------------------------------------------------------------------------

def test_classify_real_packets():
    sender = RtpSender(0x1234, 0, 8000)
    assert classify(PION_RTP) == "rtp"
    assert classify(sender.next(bytes(160))) == "rtp"
    assert classify(sender.next(bytes(160), marker=True)) == "rtp"  # marker + PT 0 = 0x80: not RTCP
    assert classify(RtpPacket(96, 1, 2, 3, marker=True).pack()) == "rtp"  # 0xE0 = 224: beyond RTCP's range
    assert classify(BROWSER_RTCP) == "rtcp"
    assert classify(FIREFOX_TWCC) == "rtcp"
    assert classify(build_receiver_report(1)) == "rtcp"
    assert classify(RFC5769_STUN) == "stun"
    assert classify(ZRTP_HELLO_ACK) == "zrtp"
    assert classify(ZRTP_CONF2_ACK) == "zrtp"
    assert classify(DTLS_RECORD) == "unknown"
    assert classify(b"") == "unknown"
    assert classify(b"\x80\x00\x00") == "unknown"
    assert classify(RFC5769_STUN[:-1]) == "unknown"  # its length field no longer matches
    assert classify(b"\x10\x00\x00\x00ZRTQ" + bytes(20)) == "unknown"
    assert classify(bytes(30)) == "unknown"
    assert classify(None) == "unknown"
    assert classify(bytearray(PION_RTP)) == "rtp"


# --- the jitter buffer on simulated networks ----------------------------------------------------------------

FRAME_S = 0.020
STEP = 160


class Network:
    """Sends a stream of 20 ms packets at 8000 Hz and delivers them with loss, jitter, duplicates,
    and pauses (talkspurts); ``run`` calls ``get`` every 20 ms and records what came out."""

    def __init__(self, frames: int, *, seed: int = 1, loss: float = 0.0, duplicates: float = 0.0,
                 jitter_s=lambda i: 0.0, sequence: int = 65000, timestamp: int = (1 << 32) - 40 * STEP,
                 pauses: dict | None = None, ssrc: int = 0x5EED):
        rng = random.Random(seed)
        self.sent = []  # index -> RtpPacket
        self.lost: set[int] = set()
        self.duplicated = 0
        self.arrivals = []  # (time, index, packet)
        send_time = 0.0
        for i in range(frames):
            if pauses and i in pauses:
                ts_jump, pause_s = pauses[i]
                timestamp = (timestamp + ts_jump) & 0xFFFF_FFFF
                send_time += pause_s
            packet = RtpPacket(0, sequence, timestamp, ssrc, marker=bool(pauses and i in pauses),
                               payload=i.to_bytes(4, "big"))
            self.sent.append(packet)
            if rng.random() < loss and 0 < i < frames - 1:  # a loss before the first or after the last goes unseen
                self.lost.add(i)
            else:
                arrival = send_time + 0.030 + jitter_s(i) * rng.random()
                self.arrivals.append((arrival, i, packet))
                if rng.random() < duplicates:
                    self.duplicated += 1
                    self.arrivals.append((arrival + rng.random() * 0.05, i, packet))
            sequence = (sequence + 1) & 0xFFFF
            timestamp = (timestamp + STEP) & 0xFFFF_FFFF
            send_time += FRAME_S
        self.arrivals.sort(key=lambda a: (a[0], a[1]))

    def run(self, buffer: JitterBuffer, phase_s: float = 0.007, tail_s: float = 1.0):
        played, delays = [], []
        now, k = phase_s, 0
        end = self.arrivals[-1][0] + tail_s
        while now < end:
            while k < len(self.arrivals) and self.arrivals[k][0] <= now:
                buffer.put(self.arrivals[k][2], self.arrivals[k][0])
                k += 1
            packet = buffer.get()
            played.append(None if packet is None else int.from_bytes(packet.payload, "big"))
            stats = buffer.stats
            delays.append((now, stats.current_delay_ms, stats.target_delay_ms))
            now += FRAME_S
        return played, delays


def delivered(played):
    return [i for i in played if i is not None]


def mean_delay(delays, start_s, end_s):
    return statistics.mean(d for t, d, _ in delays if start_s <= t < end_s)


def mean_target(delays, start_s, end_s):
    return statistics.mean(target for t, _, target in delays if start_s <= t < end_s)


def test_a_clean_network_plays_everything_at_the_minimum_delay():
    network = Network(500)
    buffer = JitterBuffer(8000)
    played, delays = network.run(buffer)
    assert delivered(played) == list(range(500))
    stats = buffer.stats
    assert (stats.received, stats.lost, stats.late, stats.duplicates, stats.discarded) == (500, 0, 0, 0, 0)
    assert mean_delay(delays, 1, 9) == 40
    assert stats.jitter_ms < 0.01


def test_a_bad_network_delivers_in_order_and_accounts_for_every_packet():
    # 10 % loss, 0-60 ms jitter (so reordering), 5 % duplicates; sequence numbers wrap at 65535
    # and timestamps at 2**32 early on.
    network = Network(3000, loss=0.10, duplicates=0.05, jitter_s=lambda i: 0.060, seed=7)
    buffer = JitterBuffer(8000)
    played, _ = network.run(buffer)
    got = delivered(played)
    assert got == sorted(got) and len(set(got)) == len(got)
    assert network.sent[0].sequence > network.sent[-1].sequence  # it wrapped
    stats = buffer.stats
    assert set(got).isdisjoint(network.lost)
    # Every packet sent is played, lost (never arrived), late (arrived after its turn) or discarded.
    assert len(got) + stats.lost + stats.late + stats.discarded == 3000
    assert stats.lost == len(network.lost)
    assert stats.received == 3000 - len(network.lost)
    assert stats.duplicates == network.duplicated
    assert stats.late + stats.discarded < 15  # 0.5 %: the delay covers the jitter
    assert 12 < stats.jitter_ms < 30  # RFC 3550 J of uniform 0-60 ms jitter: about 20
    # Concealment is asked for each frame not played: losses, late ones, and a few adaptation frames.
    assert played.count(None) >= stats.lost + stats.late
    block = buffer.report_block()
    assert block.ssrc == 0x5EED
    assert block.cumulative_lost == len(network.lost)
    assert block.fraction_lost == pytest.approx(256 * 0.10, abs=5)
    assert block.highest_sequence == (1 << 16) + network.sent[-1].sequence
    assert buffer.report_block().fraction_lost == 0  # nothing new since the last report


def test_the_delay_follows_the_jitter_up_and_back_down():
    # No jitter for 10 s, 0-60 ms for 10 s, none again for 20 s.
    network = Network(2000, jitter_s=lambda i: 0.060 if 500 <= i < 1000 else 0.0, seed=3)
    buffer = JitterBuffer(8000)
    played, delays = network.run(buffer)
    assert delivered(played) == sorted(delivered(played))
    calm_before = mean_delay(delays, 2, 10)
    jittery = mean_delay(delays, 14, 20)
    calm_after = mean_delay(delays, 30, 40)
    assert calm_before <= 40
    assert mean_target(delays, 14, 20) >= 70
    assert jittery >= calm_before + 15  # the mean depth; its peaks reach the target
    assert calm_after <= 40
    assert mean_target(delays, 30, 40) == 40
    stats = buffer.stats
    assert stats.late + stats.lost <= 10


@pytest.mark.parametrize("jitter_s", [0.02, 0.06, 0.10])
def test_few_packets_come_too_late(jitter_s):
    network = Network(3000, jitter_s=lambda i: jitter_s, seed=11)
    buffer = JitterBuffer(8000)
    network.run(buffer)
    stats = buffer.stats
    assert stats.late + stats.lost <= 15  # 0.5 %
    assert stats.discarded + stats.stretched <= 20  # adjustments are rare


def test_the_delay_stays_within_its_bounds():
    network = Network(1000, jitter_s=lambda i: 0.5, seed=5)
    buffer = JitterBuffer(8000, min_delay_ms=60, max_delay_ms=200)
    _, delays = network.run(buffer)
    assert all(d <= 200 + 20 for _, d, _ in delays)
    assert all(60 <= target <= 200 for _, _, target in delays)
    assert max(target for _, _, target in delays) == 200


def test_silence_and_timestamp_jumps_are_not_losses():
    # A 1 s pause with the timestamp jumping accordingly (a talkspurt, marker set), a short one (DTX,
    # 100 ms), and a jump of the timestamp by an arbitrary amount (the sender reset its clock).
    pauses = {200: (8000, 1.0), 400: (5 * STEP, 0.1), 600: (123_456_789, 0.0), 800: ((1 << 32) - 100_000, 0.0)}
    network = Network(1000, pauses=pauses)
    buffer = JitterBuffer(8000)
    played, _ = network.run(buffer)
    assert delivered(played) == list(range(1000))
    stats = buffer.stats
    assert (stats.lost, stats.late, stats.discarded) == (0, 0, 0)
    # The 1 s of silence is played as silence (concealment fades out): about 50 frames of None.
    first_after = played.index(200)
    last_before = played.index(199)
    assert 45 <= first_after - last_before - 1 <= 53


def test_a_burst_after_a_stall_is_cut_down():
    # Packets 100-149 are held up 1 s and then arrive at once.
    network = Network(400)
    network.arrivals = sorted(((1.0 + 0.030 + 100 * FRAME_S, i, p) if 100 <= i < 150 else (t, i, p)
                               for t, i, p in network.arrivals), key=lambda a: (a[0], a[1]))
    buffer = JitterBuffer(8000, max_delay_ms=300)
    played, delays = network.run(buffer)
    got = delivered(played)
    assert got == sorted(got)
    assert max(d for _, d, _ in delays) <= 300 + 20
    assert mean_delay(delays, 6, 8) <= 60


def test_late_and_duplicate_packets():
    buffer = JitterBuffer(8000, min_delay_ms=40)
    packets = [RtpPacket(0, 10 + i, 1000 + STEP * i, 1, payload=bytes([i])) for i in range(10)]
    for i in (0, 1, 3):
        buffer.put(packets[i], 0.0)
    buffer.put(packets[1], 0.001)  # duplicate while buffered
    out = [buffer.get() for _ in range(3)]
    assert [p and p.sequence for p in out] == [10, 11, None]  # 12 missing: lost for now
    buffer.put(packets[2], 0.06)  # too late: dropped, and counted late instead of lost
    buffer.put(packets[2], 0.07)  # and a copy of it is a duplicate
    buffer.put(packets[0], 0.08)  # a copy of a packet already played: duplicate
    stats = buffer.stats
    assert (stats.received, stats.lost, stats.late, stats.duplicates) == (4, 0, 1, 3)
    assert buffer.get().sequence == 13


def test_a_new_source_or_a_restarted_sequence_starts_over():
    buffer = JitterBuffer(8000)
    for i in range(5):
        buffer.put(RtpPacket(0, 100 + i, STEP * i, 1), i * FRAME_S)
    assert buffer.get().sequence == 100
    # A new SSRC: the old stream is dropped.
    for i in range(3):
        buffer.put(RtpPacket(0, 7000 + i, 999 + STEP * i, 2), 1 + i * FRAME_S)
    assert [buffer.get().sequence for _ in range(3)] == [7000, 7001, 7002]
    # A jump of the sequence number by more than 3000 is ignored, unless the next packet confirms it.
    buffer.put(RtpPacket(0, 40000, 5000, 2), 1.05)
    buffer.put(RtpPacket(0, 7003, 999 + 3 * STEP, 2), 1.06)
    assert buffer.get().sequence == 7003
    buffer.put(RtpPacket(0, 50000, 999 + 4 * STEP, 2), 1.08)
    buffer.put(RtpPacket(0, 50001, 999 + 5 * STEP, 2), 1.10)
    buffer.put(RtpPacket(0, 50002, 999 + 6 * STEP, 2), 1.12)
    assert [p.sequence for p in (buffer.get(), buffer.get())] == [50000, 50001]
    assert buffer.stats.lost == 0


def test_telephone_events_pass_through_in_sequence():
    sender = RtpSender(9, 0, 8000)
    datagrams = [sender.next(bytes(160)) for _ in range(5)]
    datagrams += sender.dtmf("5", payload_type=101)
    datagrams += [sender.next(bytes(160)) for _ in range(5)]
    buffer = JitterBuffer(8000)
    out = []
    for n, datagram in enumerate(datagrams):
        buffer.put(parse(datagram), n * FRAME_S)
        out.append(buffer.get())
    out += [buffer.get() for _ in range(4)]
    got = [p for p in out if p is not None]
    assert [p.payload_type for p in got] == [0] * 5 + [101] * 7 + [0] * 5
    assert buffer.stats.lost == 0


def test_jitter_buffer_survives_garbage_streams():
    # Sequence and timestamp jumps of any size, reordering, bursts, other SSRCs, repeated gets: no
    # exception, counters that make sense, and no call that loops over the size of a jump.
    rng = random.Random(1889)
    for _ in range(40):
        buffer = JitterBuffer(rng.choice((8000, 16000)), min_delay_ms=rng.choice((20, 40, 60)),
                              max_delay_ms=rng.choice((60, 300)))
        step = buffer.clock_rate // 50
        sequence, timestamp, now = rng.randrange(1 << 16), rng.randrange(1 << 32), 0.0
        for _ in range(1000):
            if rng.random() < 0.05:
                sequence = rng.randrange(1 << 16)
            if rng.random() < 0.05:
                timestamp = rng.randrange(1 << 32)
            packet = RtpPacket(rng.choice((0, 101)), (sequence + rng.randint(-5, 3)) & 0xFFFF,
                               (timestamp + rng.randint(-500, 500)) & 0xFFFF_FFFF,
                               1 if rng.random() < 0.99 else rng.randrange(3))
            buffer.put(packet, now + rng.random() * rng.choice((0, 0.1, 2)))
            for _ in range(rng.choice((0, 1, 1, 2))):
                buffer.get()
            sequence, timestamp, now = (sequence + 1) & 0xFFFF, (timestamp + step) & 0xFFFF_FFFF, now + FRAME_S
        stats = buffer.stats
        assert min(stats.received, stats.lost, stats.late, stats.duplicates, stats.discarded) >= 0
        assert len(buffer) < 400


def test_jitter_buffer_checks_its_arguments():
    for args in [(0,), (8000, 0), (8000, 20, 10), (8000, 20, 40, 30), (44100, 7, 40)]:
        with pytest.raises(ValueError):
            JitterBuffer(*args)
    with pytest.raises(TypeError):
        JitterBuffer(8000).put(b"raw bytes", 0.0)
    assert JitterBuffer(8000).get() is None
    assert JitterBuffer(8000).report_block() is None
