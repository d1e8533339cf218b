"""SRTP with libsrtp2 (firmware.calls.srtp), checked against an independent RFC 3711 reference.

The reference below is written from RFC 3711 (and RFC 6188 for AES-256) with the
``cryptography`` package alone: AES-CM key derivation (labels 0..5), the AES-CM keystream, the
HMAC-SHA1 tag. libsrtp's output must be byte-identical to it, both ways: what libsrtp protects
equals what the reference protects, and what the reference protects libsrtp unprotects.
"""

from __future__ import annotations

import gc
import hmac
import os
import random
import re
import struct
import subprocess
import threading
from hashlib import sha1
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from firmware.calls import srtp as srtp_module
from firmware.calls.srtp import (
    SrtpError,
    SrtpKey,
    SrtpProfile,
    SrtpSession,
    profile_for,
)

PROFILES = list(SrtpProfile)
TAG_32_PROFILES = [p for p in SrtpProfile if p.rtp_tag_length == 4]

# --------------------------------------------------------------------------------------------
# An independent SRTP/SRTCP, from RFC 3711 (AES-CM + HMAC-SHA1; no MKI, key derivation rate 0)
# --------------------------------------------------------------------------------------------

LABEL_RTP_ENC, LABEL_RTP_AUTH, LABEL_RTP_SALT = 0, 1, 2
LABEL_RTCP_ENC, LABEL_RTCP_AUTH, LABEL_RTCP_SALT = 3, 4, 5


def aes_cm(key: bytes, iv: int, length: int) -> bytes:
    """``length`` bytes of AES-CM keystream: E(k, IV), E(k, IV+1), ... (RFC 3711 4.1.1)."""
    encryptor = Cipher(algorithms.AES(key), modes.CTR(iv.to_bytes(16, "big"))).encryptor()
    return encryptor.update(bytes(length)) + encryptor.finalize()


def xor(data: bytes, stream: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, stream, strict=True))


def derive(master_key: bytes, master_salt: bytes, label: int, length: int, index: int = 0, kdr: int = 0) -> bytes:
    """RFC 3711 4.3.1: key_id = label || (index DIV kdr); x = key_id XOR master_salt; AES-CM(x*2^16)."""
    r = index // kdr if kdr else 0
    key_id = (label << 48) | r
    x = key_id ^ int.from_bytes(master_salt, "big")
    return aes_cm(master_key, x << 16, length)


class RefContext:
    """Session keys of one direction, and SRTP/SRTCP protect/unprotect computed from them."""

    def __init__(self, master_key: bytes, master_salt: bytes, rtp_tag: int, rtcp_tag: int):
        n = len(master_key)
        self.rtp_enc = derive(master_key, master_salt, LABEL_RTP_ENC, n)
        self.rtp_auth = derive(master_key, master_salt, LABEL_RTP_AUTH, 20)
        self.rtp_salt = derive(master_key, master_salt, LABEL_RTP_SALT, 14)
        self.rtcp_enc = derive(master_key, master_salt, LABEL_RTCP_ENC, n)
        self.rtcp_auth = derive(master_key, master_salt, LABEL_RTCP_AUTH, 20)
        self.rtcp_salt = derive(master_key, master_salt, LABEL_RTCP_SALT, 14)
        self.rtp_tag, self.rtcp_tag = rtp_tag, rtcp_tag

    @staticmethod
    def iv(salt: bytes, ssrc: int, index: int) -> int:
        """RFC 3711 4.1.1: IV = (k_s * 2^16) XOR (SSRC * 2^64) XOR (i * 2^16)."""
        return (int.from_bytes(salt, "big") << 16) ^ (ssrc << 64) ^ (index << 16)

    def protect_rtp(self, packet: bytes, roc: int) -> bytes:
        header = rtp_header_length(packet)
        seq, ssrc = struct.unpack_from("!H", packet, 2)[0], struct.unpack_from("!I", packet, 8)[0]
        index = (roc << 16) | seq
        payload = packet[header:]
        body = packet[:header] + xor(payload, aes_cm(self.rtp_enc, self.iv(self.rtp_salt, ssrc, index), len(payload)))
        tag = hmac.new(self.rtp_auth, body + roc.to_bytes(4, "big"), sha1).digest()[: self.rtp_tag]
        return body + tag

    def unprotect_rtp(self, packet: bytes, roc: int) -> bytes:
        body, tag = packet[: -self.rtp_tag], packet[-self.rtp_tag :]
        expected = hmac.new(self.rtp_auth, body + roc.to_bytes(4, "big"), sha1).digest()[: self.rtp_tag]
        assert hmac.compare_digest(tag, expected), "reference: bad SRTP tag"
        header = rtp_header_length(body)
        seq, ssrc = struct.unpack_from("!H", body, 2)[0], struct.unpack_from("!I", body, 8)[0]
        payload = body[header:]
        index = (roc << 16) | seq
        return body[:header] + xor(payload, aes_cm(self.rtp_enc, self.iv(self.rtp_salt, ssrc, index), len(payload)))

    def protect_rtcp(self, packet: bytes, index: int, encrypt: bool = True) -> bytes:
        """RFC 3711 3.4: header (8 bytes) clear, the rest encrypted, E||index, then the tag."""
        ssrc = struct.unpack_from("!I", packet, 4)[0]
        payload = packet[8:]
        if encrypt:
            payload = xor(payload, aes_cm(self.rtcp_enc, self.iv(self.rtcp_salt, ssrc, index), len(payload)))
        body = packet[:8] + payload + ((0x8000_0000 if encrypt else 0) | index).to_bytes(4, "big")
        return body + hmac.new(self.rtcp_auth, body, sha1).digest()[: self.rtcp_tag]

    def unprotect_rtcp(self, packet: bytes) -> tuple[bytes, int]:
        body, tag = packet[: -self.rtcp_tag], packet[-self.rtcp_tag :]
        assert hmac.compare_digest(tag, hmac.new(self.rtcp_auth, body, sha1).digest()[: self.rtcp_tag])
        e_index = int.from_bytes(body[-4:], "big")
        index, body = e_index & 0x7FFF_FFFF, body[:-4]
        assert e_index & 0x8000_0000
        ssrc = struct.unpack_from("!I", body, 4)[0]
        payload = xor(body[8:], aes_cm(self.rtcp_enc, self.iv(self.rtcp_salt, ssrc, index), len(body) - 8))
        return body[:8] + payload, index


def rtp_header_length(packet: bytes) -> int:
    length = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:
        length += 4 + 4 * struct.unpack_from("!H", packet, length + 2)[0]
    return length


def rtp(seq: int, *, ssrc=0x1234_5678, payload=b"\x55" * 160, pt=0, ts=None, csrcs=(), extension=None) -> bytes:
    first = 0x80 | len(csrcs) | (0x10 if extension is not None else 0)
    out = struct.pack("!BBHII", first, pt, seq, seq * 160 if ts is None else ts, ssrc)
    out += b"".join(struct.pack("!I", c) for c in csrcs)
    if extension is not None:
        assert len(extension) % 4 == 0
        out += struct.pack("!HH", 0xBEDE, len(extension) // 4) + extension
    return out + payload


def rtcp_sr(ssrc=0x1234_5678, extra=b"") -> bytes:
    """An RTCP sender report (PT 200, no report blocks), optionally followed by more packets."""
    sr = struct.pack("!BBHIIIIII", 0x80, 200, 6, ssrc, 0xE1234567, 0x89ABCDEF, 48000, 50, 8000)
    return sr + extra


def keys(profile: SrtpProfile, seed: int) -> SrtpKey:
    rng = random.Random(seed)
    return SrtpKey(rng.randbytes(profile.key_length), rng.randbytes(profile.salt_length))


def pair(profile: SrtpProfile, **kwargs) -> tuple[SrtpSession, SrtpSession, SrtpKey, SrtpKey]:
    """Two ends of one call: A's outbound key is B's inbound key and the other way round."""
    a_key, b_key = keys(profile, 1), keys(profile, 2)
    return SrtpSession(profile, a_key, b_key, **kwargs), SrtpSession(profile, b_key, a_key, **kwargs), a_key, b_key


def ref_for(profile: SrtpProfile, key: SrtpKey, rtcp_tag: int | None = None) -> RefContext:
    return RefContext(key.master_key, key.master_salt, profile.rtp_tag_length, rtcp_tag or profile.rtcp_tag_length)


# --------------------------------------------------------------------------------------------
# The reference itself, against the RFCs' known answers
# --------------------------------------------------------------------------------------------


def test_reference_key_derivation_rfc3711_b3():
    master_key = bytes.fromhex("E1F97A0D3E018BE0D64FA32C06DE4139")
    master_salt = bytes.fromhex("0EC675AD498AFEEBB6960B3AABE6")
    assert derive(master_key, master_salt, 0, 16).hex().upper() == "C61E7A93744F39EE10734AFE3FF7A087"
    assert derive(master_key, master_salt, 2, 14).hex().upper() == "30CBBC08863D8C85D49DB34A9AE1"
    assert derive(master_key, master_salt, 1, 94).hex().upper() == (
        "CEBE321F6FF7716B6FD4AB49AF256A156D38BAA48F0A0ACF3C34E2359E6CDBCE"
        "E049646C43D9327AD175578EF72270986371C10C9A369AC2F94A8C5FBCDDDC25"
        "6D6E919A48B610EF17C2041E474035766B68642C59BBFC2F34DB60DBDFB2"
    )


def test_reference_key_derivation_rfc6188_aes256():
    master_key = bytes.fromhex("f0f04914b513f2763a1b1fa130f10e2998f6f6e43e4309d1e622a0e332b9f1b6")
    master_salt = bytes.fromhex("3b04803de51ee7c96423ab5b78d2")
    assert derive(master_key, master_salt, 0, 32).hex() == (
        "5ba1064e30ec51613cad926c5a28ef731ec7fb397f70a960653caf06554cd8c4"
    )
    assert derive(master_key, master_salt, 1, 20).hex() == "fd9c32d39ed5fbb5a9dc96b30818454d1313dc05"
    assert derive(master_key, master_salt, 2, 14).hex() == "fa31791685ca444a9e07c6c64e93"


def test_reference_keystream_rfc3711_b2():
    session_key = bytes.fromhex("2B7E151628AED2A6ABF7158809CF4F3C")
    session_salt = bytes.fromhex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD")
    iv = RefContext.iv(session_salt, ssrc=0, index=0)
    assert iv == int("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000", 16)
    stream = aes_cm(session_key, iv, 16 * 0xFF02)
    expected = {
        0x0000: "E03EAD0935C95E80E166B16DD92B4EB4",
        0x0001: "D23513162B02D0F72A43A2FE4A5F97AB",
        0x0002: "41E95B3BB0A2E8DD477901E4FCA894C0",
        0xFEFF: "EC8CDF7398607CB0F2D21675EA9EA1E4",
        0xFF00: "362B7C3C6773516318A077D7FC5073AE",
        0xFF01: "6A2CC3787889374FBEB4C81B17BA6C44",
    }
    for counter, block in expected.items():
        assert stream[16 * counter : 16 * counter + 16].hex().upper() == block


# libsrtp's own known-answer packets (its test/srtp_driver.c): RFC 3711 B.3's master key, SSRC
# 0xcafebabe, sequence 0x1234, ROC 0; SRTCP index 1 (libsrtp's first SRTCP index).
DRIVER_KEY = SrtpKey(bytes.fromhex("e1f97a0d3e018be0d64fa32c06de4139"), bytes.fromhex("0ec675ad498afeebb6960b3aabe6"))
DRIVER_RTP = bytes.fromhex("800f1234decafbadcafebabe") + b"\xab" * 16
DRIVER_SRTP = bytes.fromhex("800f1234decafbadcafebabe4e55dc4ce79978d88ca4d215949d2402b78d6acc99ea179b8dbb")
DRIVER_RTCP = bytes.fromhex("81c8000bcafebabe") + b"\xab" * 16
DRIVER_SRTCP = bytes.fromhex("81c8000bcafebabe7128035be487b9bdbef89041f977a5a880000001993e08cd54d6c1230798")


def test_known_answer_packets_reference_and_libsrtp():
    profile = SrtpProfile.AES128_HMAC_SHA1_80
    ref = ref_for(profile, DRIVER_KEY)
    assert ref.protect_rtp(DRIVER_RTP, roc=0) == DRIVER_SRTP
    assert ref.protect_rtcp(DRIVER_RTCP, index=1) == DRIVER_SRTCP
    other = keys(profile, 9)
    with SrtpSession(profile, DRIVER_KEY, other) as sender:
        assert sender.protect_rtp(DRIVER_RTP) == DRIVER_SRTP
        assert sender.protect_rtcp(DRIVER_RTCP) == DRIVER_SRTCP
    with SrtpSession(profile, other, DRIVER_KEY) as receiver:
        assert receiver.unprotect_rtp(DRIVER_SRTP) == DRIVER_RTP
        assert receiver.unprotect_rtcp(DRIVER_SRTCP) == DRIVER_RTCP


def test_known_answer_packet_aes256():
    """The same RTP packet under RFC 6188 7.2's AES-256 master key (a value other SRTP test
    suites publish too)."""
    profile = SrtpProfile.AES256_HMAC_SHA1_80
    key = SrtpKey(
        bytes.fromhex("f0f04914b513f2763a1b1fa130f10e2998f6f6e43e4309d1e622a0e332b9f1b6"),
        bytes.fromhex("3b04803de51ee7c96423ab5b78d2"),
    )
    expected = bytes.fromhex("800f1234decafbadcafebabe" "f1d9de17ff251ff1aa007774b0b4b40d" "a08d9d9a5b3a55d8873b")
    assert ref_for(profile, key).protect_rtp(DRIVER_RTP, roc=0) == expected
    with SrtpSession(profile, key, key) as session:
        assert session.protect_rtp(DRIVER_RTP) == expected
        assert session.unprotect_rtp(expected) == DRIVER_RTP


# --------------------------------------------------------------------------------------------
# libsrtp, through the binding, against the reference
# --------------------------------------------------------------------------------------------

# Sequence numbers across a rollover (ROC 0 -> 1), with CSRCs, a header extension, odd sizes.
STREAM = [
    (rtp(65533), 0),
    (rtp(65534, payload=b""), 0),
    (rtp(65535, payload=os.urandom(1)), 0),
    (rtp(0, payload=bytes(range(256)) * 4), 1),
    (rtp(1, csrcs=(0xA, 0xB, 0xC), payload=b"\x01" * 33), 1),
    (rtp(2, extension=b"\x10\xaa\x00\x00\x21\xbb\xcc\x00", payload=b"\x02" * 17, pt=96), 1),
    (rtp(3, csrcs=(7,), extension=b"", payload=b"\x03" * 160), 1),
]


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_srtp_protect_is_byte_identical_to_the_reference(profile):
    a, b, a_key, _ = pair(profile)
    ref = ref_for(profile, a_key)
    with a, b:
        for packet, roc in STREAM:
            protected = a.protect_rtp(packet)
            assert protected == ref.protect_rtp(packet, roc)
            assert len(protected) == len(packet) + profile.rtp_tag_length
            assert b.unprotect_rtp(protected) == packet
        assert a.packets_protected == b.packets_unprotected == len(STREAM)


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_srtp_unprotects_what_the_reference_protects(profile):
    a, b, _, b_key = pair(profile)
    ref_b = ref_for(profile, b_key)  # what B sends, as the reference protects it
    with a, b:
        for packet, roc in STREAM:
            assert a.unprotect_rtp(ref_b.protect_rtp(packet, roc)) == packet
            assert ref_b.unprotect_rtp(b.protect_rtp(packet), roc) == packet


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_srtcp_is_byte_identical_to_the_reference(profile):
    a, b, a_key, b_key = pair(profile)
    ref_a, ref_b = ref_for(profile, a_key), ref_for(profile, b_key)
    # libsrtp keeps an SRTCP index per SSRC (one stream each), starting at 1.
    packets = [
        (rtcp_sr(), 1),
        (rtcp_sr(extra=struct.pack("!BBHI", 0x81, 202, 1, 0x1234_5678)), 2),
        (rtcp_sr(ssrc=99), 1),
        (rtcp_sr(), 3),
    ]
    with a, b:
        for packet, index in packets:
            protected = a.protect_rtcp(packet)
            assert protected == ref_a.protect_rtcp(packet, index)
            assert len(protected) == len(packet) + 4 + 10  # E||index, then an 80-bit tag
            assert b.unprotect_rtcp(protected) == packet
            assert a.unprotect_rtcp(ref_b.protect_rtcp(packet, index)) == packet
        # An SRTCP packet with E=0 (sent unencrypted, correctly authenticated) is refused: our
        # policy asks for confidentiality, and a peer must not downgrade it.
        clear = ref_b.protect_rtcp(rtcp_sr(), 40, encrypt=False)
        with pytest.raises(SrtpError) as refused:
            a.unprotect_rtcp(clear)
        assert refused.value.reason == "cant_check"
        assert a.unprotect_rtcp(ref_b.protect_rtcp(rtcp_sr(), 41)) == rtcp_sr()


@pytest.mark.parametrize("profile", TAG_32_PROFILES, ids=lambda p: p.name)
def test_srtcp_tag_32_mode_matches_the_reference_and_not_the_default(profile):
    a, b, a_key, b_key = pair(profile, srtcp_tag_32=True)
    ref_a = ref_for(profile, a_key, rtcp_tag=4)
    ref_b = ref_for(profile, b_key, rtcp_tag=4)
    with a, b:
        assert a.rtcp_tag_length == 4
        for index in range(1, 4):
            packet = rtcp_sr(extra=bytes(4 * index))
            protected = a.protect_rtcp(packet)
            assert protected == ref_a.protect_rtcp(packet, index)
            assert len(protected) == len(packet) + 4 + 4
            assert b.unprotect_rtcp(protected) == packet
            assert a.unprotect_rtcp(ref_b.protect_rtcp(packet, index)) == packet
        # SRTP itself is unchanged by the option.
        assert a.protect_rtp(rtp(10)) == ref_a.protect_rtp(rtp(10), 0)
        # A peer keyed the libsrtp way (80-bit SRTCP tag) cannot read it, nor we it.
        with SrtpSession(profile, b_key, a_key) as default_b:
            with pytest.raises(SrtpError):
                default_b.unprotect_rtcp(a.protect_rtcp(rtcp_sr()))
            with pytest.raises(SrtpError) as refused:
                a.unprotect_rtcp(default_b.protect_rtcp(rtcp_sr()))
            assert refused.value.reason == "auth_fail"


def test_srtcp_tag_32_is_refused_with_80_bit_profiles():
    for profile in (SrtpProfile.AES128_HMAC_SHA1_80, SrtpProfile.AES256_HMAC_SHA1_80):
        with pytest.raises(ValueError, match="srtcp_tag_32"):
            SrtpSession(profile, keys(profile, 1), keys(profile, 2), srtcp_tag_32=True)


# --------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------


ROUND_TRIP_CASES = [(p, False) for p in PROFILES] + [(p, True) for p in TAG_32_PROFILES]


@pytest.mark.parametrize(
    ("profile", "tag_32"), ROUND_TRIP_CASES, ids=[f"{p.name}-srtcp{32 if t else 80}" for p, t in ROUND_TRIP_CASES]
)
def test_round_trip_both_directions(profile, tag_32):
    a, b, _, _ = pair(profile, srtcp_tag_32=tag_32)
    with a, b:
        for seq in range(1000, 1100):
            packet = rtp(seq, ssrc=0xAAAA, payload=os.urandom(seq % 200))
            reply = rtp(seq + 7, ssrc=0xBBBB, payload=os.urandom(160))
            protected, protected_reply = a.protect_rtp(packet), b.protect_rtp(reply)
            assert protected[12:] != packet[12:] or not packet[12:]
            assert b.unprotect_rtp(protected) == packet
            assert a.unprotect_rtp(protected_reply) == reply
            if seq % 10 == 0:
                assert b.unprotect_rtcp(a.protect_rtcp(rtcp_sr(0xAAAA))) == rtcp_sr(0xAAAA)
                assert a.unprotect_rtcp(b.protect_rtcp(rtcp_sr(0xBBBB))) == rtcp_sr(0xBBBB)
        assert a.packets_protected == b.packets_unprotected == 110
        assert b.packets_protected == a.packets_unprotected == 110
        assert a.auth_failures == a.replay_failures == b.auth_failures == b.replay_failures == 0


def test_own_keys_do_not_unprotect_own_packets():
    """Outbound and inbound keys are distinct: a packet reflected back to its sender is refused."""
    profile = SrtpProfile.AES128_HMAC_SHA1_80
    a, b, _, _ = pair(profile)
    with a, b:
        with pytest.raises(SrtpError) as refused:
            a.unprotect_rtp(a.protect_rtp(rtp(5)))
        assert refused.value.reason == "auth_fail"


def test_several_ssrcs_each_way():
    a, b, _, _ = pair(SrtpProfile.AES256_HMAC_SHA1_32)
    with a, b:
        for seq in range(50):
            for ssrc in (1, 2, 0xFFFF_FFFF):
                packet = rtp(seq, ssrc=ssrc)
                assert b.unprotect_rtp(a.protect_rtp(packet)) == packet


def test_bytearray_and_memoryview_are_accepted_and_str_or_int_are_not():
    a, b, _, _ = pair(SrtpProfile.AES128_HMAC_SHA1_32)
    with a, b:
        assert b.unprotect_rtp(memoryview(a.protect_rtp(bytearray(rtp(1))))) == rtp(1)
        for bad in ("x" * 40, 40, None):
            with pytest.raises(TypeError):
                a.protect_rtp(bad)


# --------------------------------------------------------------------------------------------
# Refusals: tampering, replay, garbage
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_tampered_packets_fail_authentication(profile):
    a, b, _, _ = pair(profile)
    with a, b:
        packet = rtp(100, csrcs=(3,))
        protected = a.protect_rtp(packet)
        # Every byte but the version bits of byte 0 (flipping those is a bad_packet before auth).
        positions = list(range(1, len(protected)))
        for count, position in enumerate(positions, start=1):
            tampered = bytearray(protected)
            tampered[position] ^= 0x01
            with pytest.raises(SrtpError) as refused:
                b.unprotect_rtp(bytes(tampered))
            assert refused.value.reason == "auth_fail", position
            assert b.auth_failures == count
        assert b.packets_unprotected == 0
        # The forgeries did not move the replay window: the genuine packet still gets through.
        assert b.unprotect_rtp(protected) == packet
        assert b.packets_unprotected == 1

        rtcp_protected = bytearray(a.protect_rtcp(rtcp_sr()))
        rtcp_protected[10] ^= 0x80
        with pytest.raises(SrtpError) as refused:
            b.unprotect_rtcp(bytes(rtcp_protected))
        assert refused.value.reason == "auth_fail"
        assert b.auth_failures == len(positions) + 1


def test_replayed_packets_are_refused():
    a, b, _, _ = pair(SrtpProfile.AES128_HMAC_SHA1_80)
    with a, b:
        first = a.protect_rtp(rtp(1000))
        assert b.unprotect_rtp(first) == rtp(1000)
        with pytest.raises(SrtpError) as refused:
            b.unprotect_rtp(first)
        assert refused.value.reason == "replay_fail" and str(refused.value) == "replay_fail"
        assert b.replay_failures == 1 and b.auth_failures == 0

        # Reordering inside the window is fine; far behind the window is a replay failure too.
        later = [a.protect_rtp(rtp(seq)) for seq in range(1001, 1300)]
        for packet in reversed(later[-50:]):
            b.unprotect_rtp(packet)
        with pytest.raises(SrtpError) as refused:
            b.unprotect_rtp(later[0])  # 250 packets behind the newest: outside the 128 window
        assert refused.value.reason == "replay_fail"
        assert b.replay_failures == 2

        rtcp = a.protect_rtcp(rtcp_sr())
        b.unprotect_rtcp(rtcp)
        with pytest.raises(SrtpError) as refused:
            b.unprotect_rtcp(rtcp)
        assert refused.value.reason == "replay_fail"
        assert b.replay_failures == 3
        assert b.packets_unprotected == 1 + 50 + 1


def test_protecting_a_sequence_number_twice_is_refused():
    """Same index, same keystream: libsrtp refuses it rather than leak the XOR of two payloads."""
    with SrtpSession(SrtpProfile.AES128_HMAC_SHA1_80, keys(SrtpProfile.AES128_HMAC_SHA1_80, 1), keys(SrtpProfile.AES128_HMAC_SHA1_80, 2)) as a:
        a.protect_rtp(rtp(7))
        with pytest.raises(SrtpError) as refused:
            a.protect_rtp(rtp(7, payload=b"other"))
        assert refused.value.reason == "replay_fail"
        assert a.replay_failures == 0  # an inbound counter


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x80", id="one-byte"),
        pytest.param(b"\x80" * 11, id="short-header"),
        pytest.param(rtp(1)[:12], id="no-room-for-tag"),
        pytest.param(rtp(1, payload=b"")[:11] + b"\x00" * 3, id="tag-shorter-than-10"),
        pytest.param(b"\x00" * 40, id="version-0"),
        pytest.param(b"\x40" + rtp(1)[1:], id="version-1"),
        pytest.param(b"\x8f" + rtp(1, payload=b"x" * 20)[1:], id="15-csrcs-claimed"),
        pytest.param(rtp(1, extension=b"\x00" * 8)[:18], id="extension-header-cut"),
        pytest.param(
            b"\x90" + rtp(1, payload=b"")[1:12] + struct.pack("!HH", 0xBEDE, 0xFFFF) + b"\x00" * 40,
            id="extension-too-long",
        ),
    ],
)
def test_malformed_srtp_is_bad_packet(packet):
    a, b, _, _ = pair(SrtpProfile.AES128_HMAC_SHA1_80)
    with a, b:
        with pytest.raises(SrtpError) as refused:
            b.unprotect_rtp(packet)
        assert refused.value.reason == "bad_packet"
        assert b.auth_failures == b.replay_failures == b.packets_unprotected == 0


@pytest.mark.parametrize(
    "packet",
    [b"", b"\x80\xc8", b"\x80\xc8\x00\x01\x00\x00\x00", b"\x00" * 8, b"\x01" * 8],
    ids=["empty", "2-bytes", "7-bytes", "version-0", "version-0-ones"],
)
def test_malformed_rtp_and_rtcp_cannot_be_protected(packet):
    """libsrtp 2.5.0 checks lengths but not the version (it protects an all-zero "RTCP packet"):
    the binding checks both before libsrtp sees a packet."""
    a, b, _, _ = pair(SrtpProfile.AES256_HMAC_SHA1_80)
    with a, b:
        for function in (a.protect_rtcp, a.protect_rtp, b.unprotect_rtcp):
            with pytest.raises(SrtpError) as refused:
                function(packet)
            assert refused.value.reason == "bad_packet"


def test_oversized_packets_are_bad_packets():
    """libsrtp would protect 70,000 bytes; nothing that large can be a datagram of ours."""
    with SrtpSession(SrtpProfile.AES128_HMAC_SHA1_80, DRIVER_KEY, DRIVER_KEY) as session:
        for function in (session.protect_rtp, session.unprotect_rtp, session.protect_rtcp, session.unprotect_rtcp):
            with pytest.raises(SrtpError) as refused:
                function(b"\x80" * 70_000)  # larger than any UDP datagram
            assert refused.value.reason == "bad_packet"


def test_short_srtcp_is_bad_packet_for_both_tag_lengths():
    for tag_32, tag in ((False, 10), (True, 4)):
        a, b, _, _ = pair(SrtpProfile.AES128_HMAC_SHA1_32, srtcp_tag_32=tag_32)
        with a, b:
            protected = a.protect_rtcp(rtcp_sr())
            for cut in range(len(protected)):
                with pytest.raises(SrtpError) as refused:
                    b.unprotect_rtcp(protected[:cut])
                if cut < 8 + 4 + tag:
                    assert refused.value.reason == "bad_packet"


def test_fuzz_random_and_mutated_buffers_never_crash():
    """Thousands of random buffers and mutations of real packets: SrtpError or a result, nothing else."""
    rng = random.Random(20261126)
    outcomes = {"ok": 0, "error": 0}
    for profile, tag_32 in [(p, False) for p in PROFILES] + [(p, True) for p in TAG_32_PROFILES]:
        a, b, _, _ = pair(profile, srtcp_tag_32=tag_32)
        with a, b:
            real = [a.protect_rtp(rtp(s, payload=rng.randbytes(rng.randrange(200)))) for s in range(20)]
            real += [a.protect_rtcp(rtcp_sr()) for _ in range(5)]
            for i in range(700):
                kind = i % 4
                if kind == 0:
                    data = rng.randbytes(rng.randrange(0, 300))
                elif kind == 1:  # version 2 with random flags, CSRC counts, extension lengths
                    data = bytearray(rng.randbytes(rng.randrange(0, 120)))
                    if data:
                        data[0] = 0x80 | (data[0] & 0x3F)
                else:  # a real packet, cut, extended or with bytes changed
                    data = bytearray(rng.choice(real))
                    for _ in range(rng.randrange(1, 4)):
                        action = rng.randrange(3)
                        if action == 0 and data:
                            data[rng.randrange(len(data))] = rng.randrange(256)
                        elif action == 1:
                            data = data[: rng.randrange(len(data) + 1)]
                        else:
                            data += rng.randbytes(rng.randrange(1, 20))
                data = bytes(data)
                for function in (b.unprotect_rtp, b.unprotect_rtcp, a.protect_rtp, a.protect_rtcp):
                    try:
                        out = function(data)
                    except SrtpError as error:
                        assert re.fullmatch(r"[a-z_]+", error.reason)
                        outcomes["error"] += 1
                    else:
                        assert isinstance(out, bytes)
                        outcomes["ok"] += 1
    assert outcomes["error"] > 10_000
    assert outcomes["ok"] > 100  # protect accepts the version-2 ones


# --------------------------------------------------------------------------------------------
# Keys, profiles, secrets, lifetime
# --------------------------------------------------------------------------------------------


def test_profile_properties_and_zrtp_names():
    assert [(p.key_length, p.salt_length, p.rtp_tag_length) for p in PROFILES] == [
        (16, 14, 10), (16, 14, 4), (32, 14, 10), (32, 14, 4)
    ]
    assert profile_for("AES1", "HS80") is SrtpProfile.AES128_HMAC_SHA1_80
    assert profile_for("AES1", "HS32") is SrtpProfile.AES128_HMAC_SHA1_32
    assert profile_for("AES3", "HS80") is SrtpProfile.AES256_HMAC_SHA1_80
    assert profile_for("AES3", "HS32") is SrtpProfile.AES256_HMAC_SHA1_32
    for cipher, auth in [("AES2", "HS80"), ("2FS3", "HS32"), ("AES1", "SK32"), ("aes1", "hs80"), (None, "HS80")]:
        with pytest.raises(ValueError):
            profile_for(cipher, auth)


def test_key_lengths_are_checked():
    with pytest.raises(ValueError):
        SrtpKey(b"k" * 24, b"s" * 14)
    with pytest.raises(ValueError):
        SrtpKey(b"k" * 16, b"s" * 12)
    with pytest.raises(TypeError):
        SrtpKey("k" * 16, b"s" * 14)
    k128, k256 = SrtpKey(b"k" * 16, b"s" * 14), SrtpKey(b"k" * 32, b"s" * 14)
    with pytest.raises(ValueError, match="32-byte"):
        SrtpSession(SrtpProfile.AES256_HMAC_SHA1_80, k256, k128)
    with pytest.raises(ValueError, match="16-byte"):
        SrtpSession(SrtpProfile.AES128_HMAC_SHA1_32, k256, k128)
    with pytest.raises(TypeError):
        SrtpSession("AES1", k128, k128)
    with pytest.raises(TypeError):
        SrtpSession(SrtpProfile.AES128_HMAC_SHA1_80, b"k" * 30, k128)
    split = SrtpKey.from_material(SrtpProfile.AES256_HMAC_SHA1_32, bytes(range(46)))
    assert split.master_key == bytes(range(32)) and split.master_salt == bytes(range(32, 46))
    with pytest.raises(ValueError):
        SrtpKey.from_material(SrtpProfile.AES128_HMAC_SHA1_80, bytes(46))


def test_no_secret_in_repr_or_errors():
    profile = SrtpProfile.AES256_HMAC_SHA1_80
    a_key, b_key = keys(profile, 1), keys(profile, 2)
    secrets = [a_key.master_key, a_key.master_salt, b_key.master_key, b_key.master_salt]
    texts = [repr(a_key), str(a_key)]
    with SrtpSession(profile, a_key, b_key) as session:
        texts.append(repr(session))
        for attempt in (lambda: session.unprotect_rtp(rtp(1)), lambda: session.unprotect_rtp(b"x")):
            with pytest.raises(SrtpError) as refused:
                attempt()
            texts += [str(refused.value), repr(refused.value)]
    for bad in ((b"k" * 31, a_key.master_salt), (a_key.master_key, b"s" * 13)):
        with pytest.raises(ValueError) as refused:
            SrtpKey(*bad)
        texts.append(str(refused.value))
    joined = "\n".join(texts)
    for secret in secrets:
        for form in (secret.hex(), secret.hex().upper(), repr(secret), secret[:4].hex()):
            assert form not in joined
    assert a_key != SrtpKey(a_key.master_key, a_key.master_salt)  # identity, not a secret compare


def test_close_is_idempotent_and_use_after_close_is_an_error():
    a, b, _, _ = pair(SrtpProfile.AES128_HMAC_SHA1_80)
    protected = a.protect_rtp(rtp(1))
    a.close()
    a.close()
    assert a.closed and "closed" in repr(a)
    for function in (a.protect_rtp, a.unprotect_rtp, a.protect_rtcp, a.unprotect_rtcp):
        with pytest.raises(SrtpError) as refused:
            function(protected)
        assert refused.value.reason in ("closed", "bad_packet")
    with pytest.raises(SrtpError) as refused:
        a.protect_rtp(rtp(2))
    assert refused.value.reason == "closed"
    with b:
        assert b.unprotect_rtp(protected) == rtp(1)
    assert b.closed
    with pytest.raises(SrtpError):
        b.unprotect_rtp(protected)


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_many_sessions_do_not_leak():
    """2000 sessions made, used and closed (and 2000 only dropped) keep RSS flat.

    A libsrtp session pair with one stream each way is ~60 KB: 2000 leaked ones would add
    ~120 MB, far above the slack allowed here.
    """
    profile = SrtpProfile.AES256_HMAC_SHA1_80
    a_key, b_key = keys(profile, 1), keys(profile, 2)

    def one(close: bool) -> None:
        sender, receiver = SrtpSession(profile, a_key, b_key), SrtpSession(profile, b_key, a_key)
        receiver.unprotect_rtp(sender.protect_rtp(rtp(1)))
        receiver.unprotect_rtcp(sender.protect_rtcp(rtcp_sr()))
        if close:
            sender.close()
            receiver.close()

    for _ in range(200):
        one(True)
    gc.collect()
    before = _rss()
    for _ in range(1000):
        one(True)
    for _ in range(1000):
        one(False)  # dropped unclosed: __del__ frees them
    gc.collect()
    assert _rss() - before < 12 * 1024 * 1024


def test_threads_share_a_session_safely():
    a, b, _, _ = pair(SrtpProfile.AES128_HMAC_SHA1_32)
    errors = []

    def send(start: int) -> None:
        try:
            for seq in range(start, start + 300):
                packet = rtp(seq, ssrc=start)
                assert b.unprotect_rtp(a.protect_rtp(packet)) == packet
        except (AssertionError, SrtpError) as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=send, args=(start,)) for start in (1000, 5000, 9000, 20000)]
    with a, b:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        assert a.packets_protected == b.packets_unprotected == 1200


def test_throughput_protect_and_unprotect():
    """A call's worth of packets (20 ms frames for 40 s, each way): no timing assert, just done."""
    a, b, _, _ = pair(SrtpProfile.AES256_HMAC_SHA1_80)
    payload = os.urandom(160)
    with a, b:
        for seq in range(2000):
            packet = rtp(seq & 0xFFFF, payload=payload)
            assert b.unprotect_rtp(a.protect_rtp(packet)) == packet
            reply = rtp(seq, ssrc=7, payload=payload)
            assert a.unprotect_rtp(b.protect_rtp(reply)) == reply


# --------------------------------------------------------------------------------------------
# The ABI-mode declarations against the C header (a wrong layout would misplace the key pointer)
# --------------------------------------------------------------------------------------------

LAYOUT_C = r"""
#include <stdio.h>
#include <stddef.h>
#include <srtp2/srtp.h>
#define O(t, m) printf(#t "." #m " %zu\n", offsetof(t, m))
int main(void) {
    printf("srtp_policy_t %zu\n", sizeof(srtp_policy_t));
    printf("srtp_crypto_policy_t %zu\n", sizeof(srtp_crypto_policy_t));
    printf("srtp_ssrc_t %zu\n", sizeof(srtp_ssrc_t));
    O(srtp_policy_t, ssrc); O(srtp_policy_t, rtp); O(srtp_policy_t, rtcp); O(srtp_policy_t, key);
    O(srtp_policy_t, keys); O(srtp_policy_t, num_master_keys); O(srtp_policy_t, deprecated_ekt);
    O(srtp_policy_t, window_size); O(srtp_policy_t, allow_repeat_tx); O(srtp_policy_t, enc_xtn_hdr);
    O(srtp_policy_t, enc_xtn_hdr_count); O(srtp_policy_t, next);
    O(srtp_crypto_policy_t, cipher_type); O(srtp_crypto_policy_t, cipher_key_len);
    O(srtp_crypto_policy_t, auth_type); O(srtp_crypto_policy_t, auth_key_len);
    O(srtp_crypto_policy_t, auth_tag_len); O(srtp_crypto_policy_t, sec_serv);
    O(srtp_ssrc_t, type); O(srtp_ssrc_t, value);
    printf("SRTP_MAX_TRAILER_LEN %d\n", SRTP_MAX_TRAILER_LEN);
    return 0;
}
"""


def test_struct_layout_matches_the_installed_header(tmp_path):
    source, binary = tmp_path / "layout.c", tmp_path / "layout"
    source.write_text(LAYOUT_C)
    subprocess.run(["gcc", "-o", str(binary), str(source)], check=True, capture_output=True)
    ffi = srtp_module.ffi
    seen = 0
    for line in subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout.splitlines():
        name, value = line.split()
        if name == "SRTP_MAX_TRAILER_LEN":
            assert srtp_module.SRTP_MAX_TRAILER_LEN == int(value)
        elif "." in name:
            struct_name, member = name.split(".")
            assert ffi.offsetof(struct_name, member) == int(value), name
        else:
            assert ffi.sizeof(name) == int(value), name
        seen += 1
    assert seen == 24


def test_library_version_and_setters():
    assert srtp_module.libsrtp_version().startswith("libsrtp2 2.")
    ffi, lib = srtp_module.ffi, srtp_module._lib
    expectations = {
        lib.srtp_crypto_policy_set_rtp_default: (16 + 14, 20, 10),
        lib.srtp_crypto_policy_set_aes_cm_128_hmac_sha1_32: (16 + 14, 20, 4),
        lib.srtp_crypto_policy_set_aes_cm_256_hmac_sha1_80: (32 + 14, 20, 10),
        lib.srtp_crypto_policy_set_aes_cm_256_hmac_sha1_32: (32 + 14, 20, 4),
    }
    for setter, (cipher_key_len, auth_key_len, tag_len) in expectations.items():
        policy = ffi.new("srtp_crypto_policy_t *")
        setter(policy)
        assert (policy.cipher_key_len, policy.auth_key_len, policy.auth_tag_len) == (cipher_key_len, auth_key_len, tag_len)
        assert policy.sec_serv == lib.sec_serv_conf_and_auth
