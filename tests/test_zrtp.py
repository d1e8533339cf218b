"""ZRTP through bzrtp (firmware/calls/zrtp.py): two sessions in one process, joined by in-memory
packet queues and a simulated millisecond clock (no network, no sleeping).

Covers: every algorithm both ways, who decides what (the initiator, mostly), the hello hash,
packet loss and late peers, the ZID cache (verified SAS, cache mismatch, new device, damaged
data, never on disk), malformed and forged packets, callbacks that misbehave, no key in any
repr or log line, and that closed sessions are freed.
"""

from __future__ import annotations

import base64
import gc
import logging
import os
import random
import shutil
import sqlite3
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from firmware.calls import zrtp
from firmware.calls.zrtp import (
    DEFAULT_OPTIONS,
    HELLO_MISMATCH_GRACE_MS,
    ZidCache,
    ZrtpCacheMismatch,
    ZrtpError,
    ZrtpFailed,
    ZrtpNotice,
    ZrtpOptions,
    ZrtpSecure,
    ZrtpSession,
    ZrtpSrtpKeys,
    is_zrtp,
    supported_algorithms,
    zrtp_crc,
)

ROOT = Path(__file__).resolve().parent.parent
ALICE = "sip:alice@byline.test"
BOB = "sip:bob@byline.test"
STEP_MS = 10
BASE32_ALPHABET = set("ybndrfg8ejkmcpqxot1uwisza345h769")  # RFC 6189 5.1.6


class End:
    """One side of a call: a session, its outgoing packet queue and the events it reported."""

    def __init__(self, name: str, cache: ZidCache | None = None, *, ssrc: int,
                 options: ZrtpOptions = DEFAULT_OPTIONS, self_uri: str | None = None,
                 peer_uri: str | None = None, send=None, on_event=None, **kwargs):
        self.name = name
        self.outbox: list[bytes] = []
        self.events: list = []
        self.session = ZrtpSession(
            cache, self_uri or (ALICE if name == "a" else BOB),
            peer_uri or (BOB if name == "a" else ALICE),
            send or self.outbox.append, on_event or self.events.append, ssrc=ssrc,
            options=options, **kwargs)

    def of(self, kind) -> list:
        return [event for event in self.events if isinstance(event, kind)]

    def secure(self) -> ZrtpSecure:
        (event,) = self.of(ZrtpSecure)
        return event

    def keys(self) -> ZrtpSrtpKeys:
        (event,) = self.of(ZrtpSrtpKeys)
        return event


def pair(cache_a: ZidCache | None = None, cache_b: ZidCache | None = None, *,
         options_a: ZrtpOptions = DEFAULT_OPTIONS, options_b: ZrtpOptions = DEFAULT_OPTIONS,
         **kwargs) -> tuple[End, End]:
    a = End("a", cache_a, ssrc=0x0A0A0A0A, options=options_a, **kwargs)
    b = End("b", cache_b, ssrc=0x0B0B0B0B, options=options_b, **kwargs)
    return a, b


def exchange_hashes(a: End, b: End) -> None:
    a.session.set_peer_hello_hash(b.session.hello_hash())
    b.session.set_peer_hello_hash(a.session.hello_hash())


def run(a: End, b: End, *, now: int = 1000, until_ms: int = 20_000, start: bool = True,
        deliver=None, start_b_at: int | None = None) -> int | None:
    """Carry packets both ways every STEP_MS of simulated time and tick both sessions, until both
    are secure (returns the simulated time it took) or one failed or ``until_ms`` passed (None).
    ``deliver(sender, index, packet, now)`` decides each packet's fate: True to deliver it."""
    t0 = now
    if start:
        a.session.start(now)
        if start_b_at is None:
            b.session.start(now)
    sent = {"a": 0, "b": 0}
    while now - t0 <= until_ms:
        if start_b_at is not None and now - t0 >= start_b_at and b.session._started_at is None:
            b.session.start(now)
        for sender, receiver in ((a, b), (b, a)):
            while sender.outbox:
                packet = sender.outbox.pop(0)
                index = sent[sender.name]
                sent[sender.name] += 1
                if deliver is None or deliver(sender.name, index, packet, now):
                    receiver.session.receive(packet, now)
        if a.session.secure and b.session.secure:
            return now - t0
        if a.of(ZrtpFailed) or b.of(ZrtpFailed):
            return None
        now += STEP_MS
        a.session.tick(now)
        b.session.tick(now)
    return None


def handshake(a: End, b: End, **kwargs) -> tuple[ZrtpSecure, ZrtpSecure]:
    exchange_hashes(a, b)
    took = run(a, b, **kwargs)
    assert took is not None, (a.events, b.events)
    secure_a, secure_b = a.secure(), b.secure()
    assert secure_a.sas == secure_b.sas
    keys_a, keys_b = a.keys(), b.keys()
    assert keys_a.self_key == keys_b.peer_key and keys_a.peer_key == keys_b.self_key
    assert keys_a.self_salt == keys_b.peer_salt and keys_a.peer_salt == keys_b.self_salt
    assert keys_a.self_key != keys_a.peer_key
    return secure_a, secure_b


def close(*ends: End) -> None:
    for end in ends:
        end.session.close()


def reopen(cache: ZidCache) -> ZidCache:
    """What the firmware does between calls: serialize into the store, load it back."""
    data = cache.serialize()
    cache.close()
    return ZidCache(data)


def other_trace() -> list[bytes]:
    """Every packet of a complete handshake between two other sessions."""
    a, b = pair()
    exchange_hashes(a, b)
    trace: list[bytes] = []
    assert run(a, b, deliver=lambda sender, index, packet, now: trace.append(packet) or True) is not None
    close(a, b)
    return trace


def frame(packet: bytes | bytearray) -> bytes:
    """Make ``packet`` well framed again: the length field fits its size, the CRC its content."""
    packet = bytearray(packet[:-4])
    if len(packet) >= 16:
        packet[14:16] = struct.pack(">H", (len(packet) - 12) // 4)
    return bytes(packet) + zrtp_crc(bytes(packet))


def forged(kind: bytes, body: bytes = b"", *, seq: int = 0xFFFF, ssrc: int = 0x12345678) -> bytes:
    message = struct.pack(">HH", 0x505A, (12 + len(body)) // 4) + kind.ljust(8) + body
    packet = struct.pack(">BBHII", 0x10, 0, seq, 0x5A525450, ssrc) + message
    return packet + zrtp_crc(packet)


# --- negotiation ---------------------------------------------------------------------------

def test_this_bzrtp_offers_what_we_ask_for():
    offered = supported_algorithms()
    assert {"X255", "X448", "DH3k", "DH2k"} <= set(offered["key_agreements"])
    assert set(offered["ciphers"]) == {"AES1", "AES3"}
    assert set(offered["auth_tags"]) == {"HS32", "HS80"}
    assert set(offered["hashes"]) == {"S256", "S384"}
    assert set(offered["sas"]) == {"B32", "B256"}


def test_default_handshake_agrees_on_keys_and_sas():
    a, b = pair()
    assert a.session.hello_hash().startswith("1.10 ") and len(a.session.hello_hash()) == 69
    secure_a, secure_b = handshake(a, b)
    assert secure_a == secure_b
    assert (secure_a.key_agreement, secure_a.cipher, secure_a.auth_tag, secure_a.hash) == (
        "X255", "AES3", "HS80", "S384")
    assert secure_a.sas_type == "B32" and len(secure_a.sas) == 4
    assert not (secure_a.sas_verified or secure_a.cache_mismatch or secure_a.known_peer)
    keys = a.keys()
    assert (keys.cipher, keys.auth_tag) == ("AES3", "HS80")
    assert len(keys.self_key) == 32 and len(keys.self_salt) == 14
    assert {a.session.role, b.session.role} == {"initiator", "responder"}
    assert a.session.peer_zid and b.session.peer_zid and a.session.peer_zid != b.session.peer_zid
    # ZrtpSrtpKeys comes before ZrtpSecure, and nothing else is reported.
    assert [type(event) for event in a.events] == [ZrtpSrtpKeys, ZrtpSecure]
    close(a, b)


@pytest.mark.parametrize("key_agreement", ["X255", "X448", "DH3k", "DH2k"])
def test_each_key_agreement(key_agreement):
    options = ZrtpOptions(key_agreements=(key_agreement,))
    a, b = pair(options_a=options, options_b=options)
    secure_a, _ = handshake(a, b)
    assert secure_a.key_agreement == key_agreement
    close(a, b)


@pytest.mark.parametrize("cipher, key_bytes", [("AES1", 16), ("AES3", 32)])
@pytest.mark.parametrize("auth_tag", ["HS32", "HS80"])
def test_each_cipher_and_auth_tag(cipher, key_bytes, auth_tag):
    options = ZrtpOptions(ciphers=(cipher,) + tuple({"AES1", "AES3"} - {cipher}),
                          auth_tags=(auth_tag,) + tuple({"HS32", "HS80"} - {auth_tag}))
    a, b = pair(options_a=options, options_b=options)
    secure_a, _ = handshake(a, b)
    assert (secure_a.cipher, secure_a.auth_tag) == (cipher, auth_tag)
    keys = a.keys()
    assert (keys.cipher, keys.auth_tag) == (cipher, auth_tag)
    assert len(keys.self_key) == len(keys.peer_key) == key_bytes
    assert len(keys.self_salt) == len(keys.peer_salt) == 14
    close(a, b)


@pytest.mark.parametrize("hash_name", ["S256", "S384"])
def test_each_hash(hash_name):
    options = ZrtpOptions(hashes=(hash_name,) + tuple({"S256", "S384"} - {hash_name}))
    a, b = pair(options_a=options, options_b=options)
    secure_a, _ = handshake(a, b)
    assert secure_a.hash == hash_name
    close(a, b)


def test_sas_b32_is_four_base32_characters():
    options = ZrtpOptions(sas=("B32", "B256"))
    for _ in range(5):
        a, b = pair(options_a=options, options_b=options)
        secure_a, _ = handshake(a, b)
        assert secure_a.sas_type == "B32"
        assert len(secure_a.sas) == 4 and set(secure_a.sas) <= BASE32_ALPHABET
        close(a, b)


def test_sas_b256_is_two_pgp_words():
    options = ZrtpOptions(sas=("B256", "B32"))
    seen = set()
    for _ in range(5):
        a, b = pair(options_a=options, options_b=options)
        secure_a, _ = handshake(a, b)
        assert secure_a.sas_type == "B256"
        words = secure_a.sas.split(" ")
        assert len(words) == 2 and all(word.isalpha() for word in words), secure_a.sas
        seen.add(secure_a.sas)
        close(a, b)
    assert len(seen) > 1


def test_the_initiator_preferences_win_except_for_the_key_agreement():
    """Measured: the Commit contention makes either end the initiator (about half the time
    each); cipher, auth tag, hash and SAS are the initiator's first choices. The key agreement
    is the faster of the two ends' first choices (X255 beats X448), whoever initiates."""
    options_a = ZrtpOptions(key_agreements=("X255", "X448", "DH3k"), ciphers=("AES1", "AES3"),
                            auth_tags=("HS32", "HS80"), hashes=("S256", "S384"), sas=("B32", "B256"))
    options_b = ZrtpOptions(key_agreements=("X448", "X255", "DH3k"), ciphers=("AES3", "AES1"),
                            auth_tags=("HS80", "HS32"), hashes=("S384", "S256"), sas=("B256", "B32"))
    roles = set()
    for _ in range(40):
        a, b = pair(options_a=options_a, options_b=options_b)
        secure_a, _ = handshake(a, b)
        initiator = options_a if a.session.role == "initiator" else options_b
        assert b.session.role == ("responder" if a.session.role == "initiator" else "initiator")
        assert secure_a.cipher == initiator.ciphers[0]
        assert secure_a.auth_tag == initiator.auth_tags[0]
        assert secure_a.hash == initiator.hashes[0]
        assert secure_a.sas_type == initiator.sas[0]
        assert secure_a.key_agreement == "X255"
        roles.add(a.session.role)
        close(a, b)
        if len(roles) == 2:
            break
    assert roles == {"initiator", "responder"}


@pytest.mark.parametrize("first_a, first_b, expected", [
    (("X448", "DH3k"), ("DH3k", "X448"), "X448"),
    (("DH3k", "X255"), ("X448", "X255", "DH3k"), "X255"),
    (("DH3k",), ("X255", "X448"), "DH3k"),  # only the mandatory DH3k in common
])
def test_key_agreement_is_the_faster_first_choice(first_a, first_b, expected):
    for _ in range(4):
        a, b = pair(options_a=ZrtpOptions(key_agreements=first_a),
                    options_b=ZrtpOptions(key_agreements=first_b))
        secure_a, _ = handshake(a, b)
        assert secure_a.key_agreement == expected
        close(a, b)


def test_options_are_checked():
    with pytest.raises(ValueError, match="unknown"):
        ZrtpOptions(key_agreements=("EC25",))
    with pytest.raises(ValueError, match="empty"):
        ZrtpOptions(ciphers=())
    with pytest.raises(ValueError, match="repeats"):
        ZrtpOptions(hashes=("S256", "S256"))
    with pytest.raises(TypeError, match="not a string"):
        ZrtpOptions(sas="B32")
    assert ZrtpOptions(ciphers=["AES1"]).ciphers == ("AES1",)
    with pytest.raises(ValueError):
        End("a", ssrc=1 << 32)
    for self_uri in ("", "sip:a\x00@x", None):
        with pytest.raises(ValueError):
            ZrtpSession(None, self_uri, BOB, print, print, ssrc=1)


def test_handshake_cost_in_process():
    """CPU for one whole handshake, both ends, in this process (figures for the report)."""
    costs = {}
    for key_agreement in ("X255", "DH3k"):
        options = ZrtpOptions(key_agreements=(key_agreement,))
        samples = []
        for _ in range(7):
            a, b = pair(options_a=options, options_b=options)
            exchange_hashes(a, b)
            started = time.perf_counter()
            assert run(a, b) is not None
            samples.append(time.perf_counter() - started)
            assert a.secure().key_agreement == key_agreement
            close(a, b)
        costs[key_agreement] = sorted(samples)[len(samples) // 2]
    print(f"handshake, both ends: X255 {costs['X255'] * 1000:.2f} ms, DH3k {costs['DH3k'] * 1000:.2f} ms")
    assert costs["X255"] < 0.05 and costs["DH3k"] < 0.5


# --- the hello hash ------------------------------------------------------------------------

def wrong(hello_hash: str) -> str:
    return hello_hash[:-1] + ("0" if hello_hash[-1] != "0" else "1")


def test_a_wrong_peer_hello_hash_prevents_secure():
    a, b = pair()
    a.session.set_peer_hello_hash(b.session.hello_hash())
    b.session.set_peer_hello_hash(wrong(a.session.hello_hash()))
    assert run(a, b) is None
    for end in (a, b):
        assert not end.of(ZrtpSecure) and not end.of(ZrtpSrtpKeys)
        assert not end.session.secure
    assert b.of(ZrtpNotice)[0].code == "hello-hash-mismatch"
    (failed,) = b.of(ZrtpFailed)
    assert failed.reason == "hello-hash-mismatch"
    assert b.session.peer_zid is None
    close(a, b)


def test_a_hello_hash_mismatch_waits_for_a_matching_hello_then_fails():
    """Reported at the first bad Hello (ZrtpNotice), failed only after the grace period."""
    a, b = pair()
    b.session.set_peer_hello_hash(wrong(a.session.hello_hash()))
    a.session.start(0)
    b.session.start(0)
    now = 0
    failed_at = None
    while failed_at is None and now < 10_000:
        while a.outbox:
            b.session.receive(a.outbox.pop(0), now)
        if b.of(ZrtpFailed):
            failed_at = now
        now += STEP_MS
        a.session.tick(now)
        b.session.tick(now)
    first_notice_at = 0  # A's first Hello went at once
    assert b.of(ZrtpNotice) == [ZrtpNotice("hello-hash-mismatch")]
    assert HELLO_MISMATCH_GRACE_MS <= failed_at - first_notice_at <= HELLO_MISMATCH_GRACE_MS + 2 * STEP_MS
    close(a, b)


def test_a_wrong_hello_hash_learnt_after_the_hello_fails_at_once():
    a, b = pair()
    a.session.start(0)
    b.session.start(0)
    b.session.receive(a.outbox.pop(0), 0)  # bzrtp takes the Hello: no hash to check yet
    assert b.session.peer_zid is not None
    b.session.set_peer_hello_hash(wrong(a.session.hello_hash()))
    assert b.of(ZrtpFailed) == [ZrtpFailed("hello-hash-mismatch")]
    b.session.tick(10)  # a failed session stays quiet
    close(a, b)


def test_a_forged_hello_does_not_stop_the_real_one():
    """A Hello that fails the hash check is dropped and reported; the real one still works."""
    a, b = pair()
    exchange_hashes(a, b)
    impostor = pair()[0]
    impostor.session.start(0)
    (fake_hello,) = impostor.outbox
    a.session.start(1000)
    b.session.start(1000)
    b.session.receive(fake_hello, 1000)
    assert b.of(ZrtpNotice) == [ZrtpNotice("hello-hash-mismatch")]
    assert run(a, b, now=1000, start=False) is not None
    assert a.secure().sas == b.secure().sas
    close(a, b, impostor)


@pytest.mark.parametrize("bad", ["", "1.10", "abc", "1.10 " + "g" * 64, "1.10 " + "a" * 63,
                                 "1.10  " + "a" * 64, "1.10 " + "a" * 65, None, b"1.10"])
def test_a_malformed_hello_hash_fails_the_session_without_raising(bad):
    a, b = pair()
    a.session.set_peer_hello_hash(bad)
    assert a.of(ZrtpFailed) == [ZrtpFailed("hello-hash-invalid")]
    assert run(a, b, until_ms=1_000) is None
    assert not a.of(ZrtpSrtpKeys) and not b.of(ZrtpSrtpKeys)
    close(a, b)


def test_hello_hash_values_tolerate_sdp_leftovers():
    a, b = pair()
    a.session.set_peer_hello_hash(" " + b.session.hello_hash().upper().replace("1.10 ".upper(), "1.10 ") + "\r\n")
    b.session.set_peer_hello_hash(a.session.hello_hash())
    assert run(a, b) is not None
    close(a, b)


def test_without_the_hello_hash_the_handshake_still_runs():
    a, b = pair()
    assert run(a, b) is not None
    assert a.secure().sas == b.secure().sas
    close(a, b)


# --- loss, late peers, timeouts ------------------------------------------------------------

@pytest.mark.parametrize("lost", [1, 2, 3, 5])
def test_retransmission_recovers_from_early_loss(lost):
    a, b = pair()
    exchange_hashes(a, b)
    took = run(a, b, deliver=lambda sender, index, packet, now: index >= lost)
    assert took is not None, (a.events, b.events)
    assert a.secure().sas == b.secure().sas
    close(a, b)


@pytest.mark.parametrize("kind", [b"Hello   ", b"Commit  ", b"DHPart1 ", b"DHPart2 ", b"Confirm1",
                                  b"Confirm2", b"Conf2ACK", b"HelloACK"])
def test_each_message_lost_twice(kind):
    a, b = pair()
    exchange_hashes(a, b)
    dropped = []

    def deliver(sender, index, packet, now):
        if packet[16:24] == kind and len(dropped) < 2:
            dropped.append(packet)
            return False
        return True

    assert run(a, b, deliver=deliver) is not None, (kind, a.events, b.events)
    assert dropped
    close(a, b)


def test_random_loss_of_a_third_of_the_packets():
    rng = random.Random(7)
    for _ in range(10):
        a, b = pair()
        exchange_hashes(a, b)
        assert run(a, b, deliver=lambda *args: rng.random() > 0.33) is not None
        close(a, b)


def test_a_peer_that_starts_late_is_still_met():
    """bzrtp stops resending Hello after ~4 s; the session restarts its retransmissions."""
    a, b = pair()
    exchange_hashes(a, b)
    took = run(a, b, start_b_at=6_000)
    assert took is not None and took >= 6_000
    close(a, b)


def test_a_silent_peer_times_out():
    a, b = pair(timeout_ms=5_000)
    exchange_hashes(a, b)
    assert run(a, b, deliver=lambda sender, *rest: sender == "b") is None
    assert a.of(ZrtpFailed) == [ZrtpFailed("timeout")]
    assert not a.of(ZrtpSrtpKeys) and not b.of(ZrtpSrtpKeys)
    close(a, b)


def test_hellos_keep_coming_until_the_timeout():
    sent_at = []
    now = 0
    a = End("a", ssrc=1, timeout_ms=8_000, send=lambda packet: sent_at.append(now))
    a.session.start(now)
    while not a.of(ZrtpFailed):
        now += STEP_MS
        a.session.tick(now)
    assert 8_000 <= now <= 8_000 + STEP_MS
    assert max(sent_at) > 6_000  # bzrtp alone would have stopped after ~4 s
    a.session.close()


# --- the ZID cache -------------------------------------------------------------------------

def alter_retained_secret(data: bytes, peer_uri: str) -> bytes:
    """A serialized cache in which the retained secret shared with ``peer_uri`` is changed."""
    db = sqlite3.connect(":memory:")
    db.deserialize(data)
    changed = db.execute(
        "UPDATE zrtp SET rs1 = randomblob(32), rs2 = NULL"
        " WHERE zuid IN (SELECT zuid FROM ziduri WHERE peeruri = ?) AND rs1 IS NOT NULL",
        (peer_uri,)).rowcount
    assert changed == 1
    db.commit()
    altered = db.serialize()
    db.close()
    return altered


def cache_rows(data: bytes, sql: str, params=()) -> list:
    db = sqlite3.connect(":memory:")
    db.deserialize(data)
    rows = db.execute(sql, params).fetchall()
    db.close()
    return rows


def test_the_cache_remembers_verified_peers_and_detects_mismatches():
    cache_a, cache_b = ZidCache(None), ZidCache(None)

    # First call: strangers.
    a, b = pair(cache_a, cache_b)
    first_a, first_b = handshake(a, b)
    for secure in (first_a, first_b):
        assert not secure.known_peer and not secure.sas_verified and not secure.cache_mismatch
    zid_of_b, zid_of_a = a.session.peer_zid, b.session.peer_zid
    a.session.set_sas_verified(True)
    b.session.set_sas_verified(True)
    close(a, b)
    cache_a, cache_b = reopen(cache_a), reopen(cache_b)
    (self_zid_b,) = cache_rows(cache_b.serialize(), "SELECT zid FROM ziduri WHERE peeruri = 'self'")
    assert self_zid_b[0].hex() == zid_of_b

    # Second call: known, verified on the first call.
    a, b = pair(cache_a, cache_b)
    second_a, second_b = handshake(a, b)
    for secure in (second_a, second_b):
        assert secure.known_peer and secure.sas_verified and not secure.cache_mismatch
    assert a.session.peer_zid == zid_of_b
    assert not a.of(ZrtpCacheMismatch)
    close(a, b)

    # Third call: B's retained secret for A no longer matches (as if someone were in the middle
    # of the first calls, or A had been cloned).
    cache_a = reopen(cache_a)
    altered = alter_retained_secret(cache_b.serialize(), ALICE)
    cache_b.close()
    cache_b = ZidCache(altered)
    a, b = pair(cache_a, cache_b)
    third_a, third_b = handshake(a, b)
    for end, secure in ((a, third_a), (b, third_b)):
        assert secure.cache_mismatch and secure.known_peer and not secure.sas_verified
        assert end.of(ZrtpCacheMismatch) == [ZrtpCacheMismatch()]
        assert end.events.index(end.of(ZrtpCacheMismatch)[0]) < end.events.index(secure)
    close(a, b)

    # Fourth call: the mismatch stays until the SAS is verified again...
    cache_a, cache_b = reopen(cache_a), reopen(cache_b)
    a, b = pair(cache_a, cache_b)
    fourth_a, _ = handshake(a, b)
    assert fourth_a.cache_mismatch and not fourth_a.sas_verified
    a.session.set_sas_verified(True)
    b.session.set_sas_verified(True)
    close(a, b)

    # ...then all is well again.
    cache_a, cache_b = reopen(cache_a), reopen(cache_b)
    a, b = pair(cache_a, cache_b)
    fifth_a, fifth_b = handshake(a, b)
    for secure in (fifth_a, fifth_b):
        assert secure.sas_verified and not secure.cache_mismatch and secure.known_peer
    # Withdrawing the verification is remembered too.
    a.session.set_sas_verified(False)
    close(a, b)
    cache_a = reopen(cache_a)
    a, b = pair(cache_a, cache_b)
    sixth_a, _ = handshake(a, b)
    assert not sixth_a.sas_verified and not sixth_a.cache_mismatch
    close(a, b)

    # A new device for the same URI (fresh cache, new ZID): unknown, not a mismatch.
    a, b = pair(ZidCache(None), cache_b)
    new_a, new_b = handshake(a, b)
    assert a.session.peer_zid == zid_of_b and b.session.peer_zid not in (None, zid_of_a)
    for secure in (new_a, new_b):
        assert not secure.known_peer and not secure.cache_mismatch and not secure.sas_verified
    assert not b.of(ZrtpCacheMismatch)
    close(a, b)
    assert len(cache_rows(cache_b.serialize(), "SELECT zid FROM ziduri WHERE peeruri = ?",
                          (ALICE,))) == 2
    cache_a.close()
    cache_b.close()


def test_the_cache_is_keyed_by_both_uris():
    """The same device calling under another URI is a stranger to the cache (bzrtp's rule)."""
    cache_a, cache_b = ZidCache(None), ZidCache(None)
    a, b = pair(cache_a, cache_b)
    handshake(a, b)
    close(a, b)
    a = End("a", cache_a, ssrc=1, self_uri="sip:alice@elsewhere.test", peer_uri=BOB)
    b = End("b", cache_b, ssrc=2, peer_uri="sip:alice@elsewhere.test")
    secure_a, secure_b = handshake(a, b)
    assert not secure_a.known_peer and not secure_b.known_peer and not secure_b.cache_mismatch
    close(a, b)


def test_one_cache_serves_simultaneous_calls():
    cache = ZidCache(None)
    carol = "sip:carol@byline.test"
    a1 = End("a", cache, ssrc=1)
    b = End("b", ssrc=2)
    a2 = End("a", cache, ssrc=3, peer_uri=carol)
    c = End("b", ssrc=4, self_uri=carol)
    exchange_hashes(a1, b)
    exchange_hashes(a2, c)
    a1.session.start(0)
    b.session.start(0)
    assert run(a2, c) is not None
    assert run(a1, b, start=False) is not None
    assert a1.session.peer_zid != a2.session.peer_zid
    close(a1, b, a2, c)
    assert len(cache_rows(cache.serialize(), "SELECT zid FROM ziduri WHERE peeruri != 'self'")) == 2
    cache.close()


def test_closing_the_cache_waits_for_its_sessions():
    cache = ZidCache(None)
    a, b = pair(cache, None)
    cache.close()
    assert cache.closed
    with pytest.raises(ZrtpError):
        cache.serialize()
    with pytest.raises(ZrtpError):
        End("a", cache, ssrc=9)
    handshake(a, b)  # still works: the database stays open while a session uses it
    a.session.set_sas_verified(True)
    close(a, b)
    assert cache._db == zrtp._ffi.NULL
    cache.close()


def test_bad_cache_data_is_refused():
    good = ZidCache(None)
    a, b = pair(good, None)
    handshake(a, b)
    close(a, b)
    data = good.serialize()
    good.close()
    for bad in (b"", b"not a database", b"SQLite format 3\x00" + bytes(100), data[:1024],
                data[:100] + bytes(1000) + data[1100:]):
        with pytest.raises(ZrtpError):
            ZidCache(bad)
    ZidCache(data).close()


def test_a_cache_saved_in_wal_mode_loads():
    data = ZidCache(None).serialize()
    wal = data[:18] + b"\x02\x02" + data[20:]
    ZidCache(wal).close()


def test_sas_verified_without_a_cache_is_harmless():
    a, b = pair()
    handshake(a, b)
    a.session.set_sas_verified(True)
    a.session.set_sas_verified(False)
    close(a, b)


def test_set_sas_verified_needs_a_secure_session():
    a, b = pair()
    with pytest.raises(ZrtpError):
        a.session.set_sas_verified(True)
    handshake(a, b)
    close(a, b)
    with pytest.raises(ZrtpError):
        a.session.set_sas_verified(True)


NO_DISK_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from firmware.calls.zrtp import ZidCache, ZrtpSession, ZrtpSecure

    def call(cache_a, cache_b):
        out = {"a": [], "b": []}
        events = {"a": [], "b": []}
        a = ZrtpSession(cache_a, "sip:a@x", "sip:b@x", out["a"].append, events["a"].append, ssrc=1)
        b = ZrtpSession(cache_b, "sip:b@x", "sip:a@x", out["b"].append, events["b"].append, ssrc=2)
        a.set_peer_hello_hash(b.hello_hash()); b.set_peer_hello_hash(a.hello_hash())
        now = 0
        a.start(now); b.start(now)
        while not (a.secure and b.secure):
            for src, dst in (("a", b), ("b", a)):
                while out[src]:
                    dst.receive(out[src].pop(0), now)
            now += 10
            a.tick(now); b.tick(now)
            assert now < 10000
        a.set_sas_verified(True); b.set_sas_verified(True)
        a.close(); b.close()
        return [e for e in events["a"] if isinstance(e, ZrtpSecure)][0]

    cache_a, cache_b = ZidCache(None), ZidCache(None)
    for _ in range(3):
        call(cache_a, cache_b)
        data_a, data_b = cache_a.serialize(), cache_b.serialize()
        cache_a.close(); cache_b.close()
        cache_a, cache_b = ZidCache(data_a), ZidCache(data_b)
    secure = call(cache_a, cache_b)
    assert secure.sas_verified and secure.known_peer
    print("ok", len(data_a))
""")

WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC")


def run_watched(script: str, directory: Path) -> tuple[list[Path], list[str] | None, str]:
    """Run ``script`` in a child process whose working and temporary directories are the empty
    ``directory``: (the files left there, the file writes strace saw anywhere or None without
    strace, stdout). A write is an open for writing or creation outside /dev, or any creation,
    rename, link or deletion."""
    work = directory / "work"
    work.mkdir()
    env = dict(os.environ, TMPDIR=str(work), SQLITE_TMPDIR=str(work), TMP=str(work),
               TEMP=str(work), PYTHONDONTWRITEBYTECODE="1", HOME=str(work))
    command = [sys.executable, "-c", script, str(ROOT)]
    strace = shutil.which("strace")
    trace = directory / "strace.log"
    if strace:
        calls = ("trace=open,openat,openat2,creat,mkdir,mkdirat,rename,renameat,renameat2,"
                 "unlink,unlinkat,truncate,link,linkat,symlink,symlinkat")
        command = [strace, "-f", "-qq", "-o", str(trace), "-e", calls, *command]
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    writes = None
    if strace:
        writes = []
        for line in trace.read_text().splitlines():
            if "resumed>" in line:  # the second half of a call strace split: flags are in the first
                continue
            call = line.split(None, 1)[1]  # after the pid
            if call.startswith(("open", "creat")):
                writing = any(flag in call for flag in WRITE_FLAGS) or call.startswith("creat")
                if writing and '"/dev/' not in call:
                    writes.append(call)
            elif call.startswith(("mkdir", "rename", "unlink", "truncate", "link", "symlink")):
                writes.append(call)
    return sorted(work.iterdir()), writes, result.stdout


def test_the_cache_never_touches_the_disk(tmp_path):
    """Four calls with caches serialized and reloaded in between: no file appears in the
    working or temporary directory, and strace sees no file written anywhere."""
    (tmp_path / "cache").mkdir()
    files, writes, output = run_watched(NO_DISK_SCRIPT, tmp_path / "cache")
    assert output.startswith("ok ")
    assert files == []
    assert not writes, writes[:10]
    # The watch itself works: a script that writes a file is caught both ways.
    (tmp_path / "control").mkdir()
    files, writes, _ = run_watched("open('x', 'w').write('1')", tmp_path / "control")
    assert [file.name for file in files] == ["x"]
    assert writes is None or any('"x"' in call for call in writes)


# --- malformed, forged and hostile input ---------------------------------------------------

def test_framing_check():
    trace = other_trace()
    assert all(is_zrtp(packet) for packet in trace)
    hello = trace[0]
    assert not is_zrtp(hello[:-1])
    assert not is_zrtp(hello[:-4] + bytes(4))
    assert not is_zrtp(b"\x80" + hello[1:])  # an RTP packet
    assert not is_zrtp(bytes(20))  # STUN-sized zeroes
    assert not is_zrtp(b"")
    assert is_zrtp(frame(hello[:40] + hello[-4:]))


def mutations(rng: random.Random, packets: list[bytes]):
    """Endless malformed packets, from these well-formed ones."""
    while True:
        packet = bytearray(rng.choice(packets))
        kind = rng.randrange(9)
        if kind == 0:  # random bytes
            yield bytes(rng.randrange(256) for _ in range(rng.randrange(0, 600)))
        elif kind == 1:  # one bit flipped, CRC left wrong
            packet[rng.randrange(len(packet))] ^= 1 << rng.randrange(8)
            yield bytes(packet)
        elif kind == 2:  # truncated, length and CRC fixed
            size = rng.randrange(16, len(packet))
            yield frame(packet[:size - size % 4])
        elif kind == 3:  # a few bytes changed, CRC fixed
            for _ in range(rng.randint(1, 8)):
                packet[rng.randrange(len(packet))] = rng.randrange(256)
            yield frame(packet)
        elif kind == 4:  # extended with garbage, length and CRC fixed
            yield frame(packet[:-4] + bytes(rng.randrange(256) for _ in range(4 * rng.randint(1, 60)))
                        + packet[-4:])
        elif kind == 5:  # the right header and type, a random body
            yield frame(packet[:24] + bytes(rng.randrange(256) for _ in range(len(packet) - 24)))
        elif kind == 6:  # a message type nobody sent
            packet[16:24] = rng.choice([b"GoClear ", b"ClearACK", b"Error   ", b"ErrorACK",
                                        b"Ping    ", b"PingACK ", b"SASrelay", b"RelayACK",
                                        bytes(rng.randrange(256) for _ in range(8))])
            yield frame(packet)
        elif kind == 7:  # unauthenticated messages with a sequence number at the top
            yield forged(rng.choice([b"HelloACK", b"Conf2ACK", b"ErrorACK"]),
                         seq=rng.choice([0, 1, 0xFFFF, rng.randrange(65536)]))
        else:  # a wrong length field, CRC fixed
            packet[14:16] = struct.pack(">H", rng.randrange(65536))
            yield bytes(packet[:-4]) + zrtp_crc(bytes(packet[:-4]))


def test_garbage_before_the_handshake_is_harmless():
    """Thousands of malformed packets (and well-formed ones from another call) reach both ends
    before the peer's first packet: no crash, and the real handshake then completes."""
    rng = random.Random(1)
    garbage = mutations(rng, other_trace())
    a, b = pair()
    exchange_hashes(a, b)
    a.session.start(0)
    b.session.start(0)
    a.outbox.clear()  # the first Hellos are lost, too
    b.outbox.clear()
    for _ in range(2500):
        a.session.receive(next(garbage), 0)
        b.session.receive(next(garbage), 0)
    for odd in (None, "text", 12, b"", bytearray(b"\x10\x00"), memoryview(b"\x10" * 40)):
        a.session.receive(odd, 0)
    assert not a.of(ZrtpFailed) and not b.of(ZrtpFailed)
    assert run(a, b, now=0, start=False) is not None, (a.events, b.events)
    assert a.secure().sas == b.secure().sas
    close(a, b)


def test_garbage_during_the_handshake_is_harmless():
    """After every real packet, forty malformed ones: truncated copies of it (length and CRC
    fixed), copies with bits flipped, and anything made from another call's packets."""
    rng = random.Random(2)
    foreign = mutations(rng, other_trace())
    count = 0
    for _ in range(3):
        a, b = pair()
        exchange_hashes(a, b)

        def deliver(sender, index, packet, now, a=a, b=b):
            nonlocal count
            receiver = b if sender == "a" else a
            receiver.session.receive(packet, now)
            for _ in range(20):
                size = rng.randrange(16, len(packet))
                receiver.session.receive(frame(packet[:size - size % 4]), now)
                flipped = bytearray(packet)
                flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
                receiver.session.receive(bytes(flipped), now)
                receiver.session.receive(next(foreign), now)
                count += 3
            return False

        assert run(a, b, deliver=deliver) is not None, (a.events, b.events)
        assert a.secure().sas == b.secure().sas
        close(a, b)
    assert count > 2000


def test_a_forged_helloack_cannot_stall_the_handshake():
    """Found here: bzrtp trusted the sequence number of any packet it accepted, and a HelloACK
    carries nothing to check, so one 28-byte forgery with sequence number 0xFFFF made it drop
    every later real packet; and a HelloACK taken before the peer's Hello stopped our Hellos."""
    for seq in (0xFFFF, 1, 0):
        for when in ("before any Hello", "after the peer's Hello"):
            a, b = pair()
            exchange_hashes(a, b)
            a.session.start(0)
            b.session.start(0)
            if when == "before any Hello":
                a.outbox.clear()
                b.outbox.clear()
            else:
                b.session.receive(a.outbox.pop(0), 0)
            b.session.receive(forged(b"HelloACK", seq=seq), 0)
            a.session.receive(forged(b"HelloACK", seq=seq), 0)
            assert run(a, b, now=0, start=False, until_ms=5_000) is not None, (seq, when)
            close(a, b)


def test_receive_tick_and_start_in_any_order():
    a, b = pair()
    exchange_hashes(a, b)
    a.session.tick(0)  # before start: nothing
    assert a.outbox == []
    b.session.receive(forged(b"Commit", bytes(100)), 0)  # before start
    a.session.start(0)
    a.session.start(0)  # twice: once
    assert len(a.outbox) == 1
    a.session.tick(-5)  # a clock before start does no harm
    assert run(a, b, now=0, start=False, start_b_at=0) is not None
    close(a, b)


# --- callbacks, secrecy, lifetime ----------------------------------------------------------

def test_misbehaving_handlers_do_not_break_the_session(caplog):
    calls = {"send": 0, "event": 0}

    def flaky_send(packet):
        calls["send"] += 1
        a.outbox.append(packet)
        if calls["send"] % 2:
            raise OSError("network is down")

    def flaky_event(event):
        calls["event"] += 1
        a.events.append(event)
        raise RuntimeError("UI bug")

    a = End("a", ssrc=1, send=flaky_send, on_event=flaky_event)
    b = End("b", ssrc=2)
    exchange_hashes(a, b)
    with caplog.at_level(logging.ERROR, logger="firmware.calls.zrtp"):
        assert run(a, b) is not None
    assert calls["event"] == 2 and a.secure().sas == b.secure().sas
    assert "UI bug" in caplog.text
    close(a, b)


def test_sessions_wired_directly_to_each_other():
    """``send`` may call straight into the peer's ``receive`` (which sends back into ours):
    packets queued meanwhile go out in order once bzrtp has returned."""
    clock = [0]
    ends: dict[str, End] = {}
    a = End("a", ssrc=1, send=lambda packet: ends["b"].session.receive(packet, clock[0]))
    b = End("b", ssrc=2, send=lambda packet: ends["a"].session.receive(packet, clock[0]))
    ends.update(a=a, b=b)
    exchange_hashes(a, b)
    a.session.start(0)
    b.session.start(0)
    while not (a.session.secure and b.session.secure):
        clock[0] += STEP_MS
        assert clock[0] < 5_000, (a.events, b.events)
        a.session.tick(clock[0])
        b.session.tick(clock[0])
    assert a.secure().sas == b.secure().sas
    assert a.keys().self_key == b.keys().peer_key
    close(a, b)


def test_closing_from_inside_an_event_handler():
    seen = []

    def on_event(event):
        seen.append(event)
        a.session.close()

    a = End("a", ssrc=1, on_event=on_event)
    b = End("b", ssrc=2)
    exchange_hashes(a, b)
    run(a, b, until_ms=3_000)
    assert len(seen) == 1 and isinstance(seen[0], ZrtpSrtpKeys)
    assert a.session.closed
    a.session.receive(b"\x10" * 100, 0)
    a.session.tick(10)
    close(a, b)


def spellings(secret: bytes) -> list[str]:
    return [secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode(),
            repr(secret)[2:-1], secret.hex()[:16]]


def test_no_key_material_in_reprs_or_logs(caplog):
    with caplog.at_level(logging.DEBUG):
        cache_a = ZidCache(None)
        a, b = pair(cache_a, None)
        handshake(a, b)
        a.session.set_sas_verified(True)
    keys = a.keys()
    text = caplog.text + repr(keys) + str(keys) + repr(a.events) + repr(a.session) + repr(cache_a)
    secrets_ = [keys.self_key, keys.self_salt, keys.peer_key, keys.peer_salt]
    (rs1,) = cache_rows(cache_a.serialize(), "SELECT rs1 FROM zrtp WHERE rs1 IS NOT NULL")
    secrets_.append(rs1[0])
    for secret in secrets_:
        for spelling in spellings(secret):
            assert spelling not in text
    assert a.secure().sas not in caplog.text
    assert "hidden" in repr(keys)
    close(a, b)
    cache_a.close()


def test_close_is_idempotent_and_final():
    a, b = pair()
    handshake(a, b)
    a.session.close()
    a.session.close()
    assert a.session.closed and "closed" in repr(a.session)
    a.session.start(0)
    a.session.tick(0)
    a.session.receive(b.outbox[0] if b.outbox else forged(b"Hello", bytes(100)), 0)
    assert a.outbox == []
    b.session.close()


def test_sessions_are_freed():
    """300 handshakes (with a cache, closed and merely dropped): the callback registry empties
    and the resident size stays put."""

    def rss_kib() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGESIZE") // 1024

    cache_a, cache_b = ZidCache(None), ZidCache(None)
    for _ in range(30):  # warm up allocators and caches
        a, b = pair(cache_a, cache_b)
        handshake(a, b)
        close(a, b)
    gc.collect()
    before = rss_kib()
    for index in range(300):
        a, b = pair(cache_a, cache_b)
        handshake(a, b)
        if index % 2:
            close(a, b)
        del a, b
    gc.collect()
    after = rss_kib()
    assert zrtp._sessions == {}
    assert cache_a._users == cache_b._users == 0
    assert after - before < 4096, (before, after)
    cache_a.close()
    cache_b.close()
