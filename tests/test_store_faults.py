"""Faults: a process killed at random moments while writing records or changing the secret, and
damaged, truncated, swapped or tampered-with files.

The kill tests fork a child that works on the store and reports each acknowledged write to the
parent over a pipe; the parent SIGKILLs it after a random delay and then checks what is on disk.
The seed is printed on failure (``-rA`` shows it) so a failing run can be replayed.
"""

import hashlib
import os
import random
import signal
import struct
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest

from firmware.store import HeaderDamaged, RecordDamaged, WrongSecret
from firmware.store.vault import Vault
from helpers.store_support import (DURESS_PASSPHRASE, NEW_PIN, OTHER_PASSPHRASE, PASSPHRASE, PIN, FakeShare, files_under,
                              small_kdf)

PUT_KILLS = 200
CHANGE_KILLS = 50
MAX_PUT_KILL_DELAY_S = 0.04
RECORD_NAMES = 12
VALUE_SIZES = (0, 1, 200, 300, 5000, 70_000)
ACK = struct.Struct(">I")


@pytest.fixture
def seed() -> int:
    value = int.from_bytes(os.urandom(4), "big")
    print(f"seed {value}")
    return value


def killed_at_random(work: Callable[[int], None], delay_s: float) -> tuple[list[int], int]:
    """Run ``work(ack_fd)`` in a forked child, SIGKILL it after ``delay_s``; return the sequence
    numbers it acknowledged (written to ``ack_fd``) and its wait status."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        code = 0
        try:
            work(write_fd)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)  # never return into pytest from the child
    os.close(write_fd)
    time.sleep(delay_s)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    return [ACK.unpack_from(data, offset)[0] for offset in range(0, len(data) - ACK.size + 1, ACK.size)], status


def planned_put(seed: int, sequence: int) -> tuple[str, bytes]:
    """The put number ``sequence`` makes: a name among a few (so names are overwritten) and a
    value of varying size that starts with the sequence number."""
    rng = random.Random(seed * 1_000_003 + sequence)
    return f"record-{rng.randrange(RECORD_NAMES)}", ACK.pack(sequence) + rng.randbytes(rng.choice(VALUE_SIZES))


def test_every_acknowledged_put_survives_a_kill(tmp_path, seed):
    directory = tmp_path / "state"
    Vault(directory, None).create(PASSPHRASE, small_kdf())
    rng = random.Random(seed)
    expected: dict[str, bytes] = {}
    next_sequence, acknowledged = 0, 0
    for _ in range(PUT_KILLS):
        first = next_sequence

        def writer(ack_fd: int, first: int = first) -> None:
            store = Vault(directory, None).unlock(PASSPHRASE)
            for sequence in range(first, first + 10**9):
                store.put(*planned_put(seed, sequence))
                os.write(ack_fd, ACK.pack(sequence))

        acks, status = killed_at_random(writer, rng.uniform(0, MAX_PUT_KILL_DELAY_S))
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, "the writer stopped by itself"
        assert acks == list(range(first, first + len(acks)))
        for sequence in acks:
            name, value = planned_put(seed, sequence)
            expected[name] = value
        in_flight_name, in_flight_value = planned_put(seed, first + len(acks))

        store = Vault(directory, None).unlock(PASSPHRASE)
        names = store.names()
        assert store.damaged == []
        assert set(names) <= set(expected) | {in_flight_name}
        for name in names:
            allowed = {expected.get(name), in_flight_value} if name == in_flight_name else {expected[name]}
            assert store.get(name) in allowed
        assert set(expected) <= set(names)
        if in_flight_name in names:
            expected[in_flight_name] = store.get(in_flight_name)
        next_sequence = first + len(acks) + 1
        acknowledged += len(acks)
    assert acknowledged >= 2 * PUT_KILLS, "too few puts were under way when the writer was killed"
    assert not [path for path in files_under(directory) if path.name.startswith(".tmp")]


@pytest.mark.parametrize("with_share", [False, True], ids=["passphrase", "share"])
def test_a_kill_during_change_secret_leaves_exactly_one_working_secret(tmp_path, seed, with_share):
    directory, share_file = tmp_path / "state", tmp_path / "tpm.json"

    def share():
        return FakeShare(share_file) if with_share else None

    current, other = (PIN, NEW_PIN) if with_share else (PASSPHRASE, OTHER_PASSPHRASE)
    store = Vault(directory, share()).create(current, small_kdf())
    records = {f"record-{n}": os.urandom(n * 300) for n in range(6)}
    for name, value in records.items():
        store.put(name, value)
    Vault(directory, share()).set_duress(current, "4" * 16)
    change_s = time_in_child(lambda: Vault(directory, share()).change_secret(current, other))
    current, other = other, current
    rng, outcomes = random.Random(seed), Counter()
    for _ in range(CHANGE_KILLS):
        old, new = current, other
        killed_at_random(lambda _, old=old, new=new: Vault(directory, share()).change_secret(old, new),
                         rng.uniform(0, 1.2 * change_s))
        working = [secret for secret in (old, new) if opens(directory, share(), secret)]
        assert len(working) == 1
        outcomes["new" if working == [new] else "old"] += 1
        current, other = (new, old) if working == [new] else (old, new)
        vault = Vault(directory, share())
        store = vault.unlock(current)
        assert store.names() == sorted(records) and store.damaged == []
        assert all(store.get(name) == value for name, value in records.items())
        assert vault.duress_set is True
    assert outcomes["old"] and outcomes["new"], f"kills landed only on one side: {outcomes}"


def time_in_child(work: Callable[[], None]) -> float:
    """Seconds from fork to exit of a child doing ``work`` (what a kill delay has to span)."""
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            work()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    return time.perf_counter() - start


def opens(directory: Path, share, secret: str) -> bool:
    try:
        Vault(directory, share).unlock(secret)
    except WrongSecret:
        return False
    return True


# Damaged and tampered files.

def flipped(raw: bytes, position: int) -> bytes:
    damaged = bytearray(raw)
    damaged[position] ^= 0xFF
    return bytes(damaged)


@pytest.fixture
def header(tmp_path) -> tuple[Path, bytes]:
    directory = tmp_path / "state"
    vault = Vault(directory, None)
    vault.create(PASSPHRASE, small_kdf()).put("note", b"kept")
    vault.set_duress(PASSPHRASE, DURESS_PASSPHRASE)
    return directory, (directory / "header").read_bytes()


def test_every_flipped_header_byte_is_header_damage(header):
    directory, original = header
    for position in range(len(original)):
        (directory / "header").write_bytes(flipped(original, position))
        vault = Vault(directory, None)
        with pytest.raises(HeaderDamaged):
            vault.unlock(PASSPHRASE)
        with pytest.raises(HeaderDamaged):
            vault.describe()
        assert vault.failures == 0, f"byte {position} counted as an attempt"
    (directory / "header").write_bytes(original)
    assert Vault(directory, None).unlock(PASSPHRASE).get("note") == b"kept"


def test_a_truncated_or_extended_header_is_header_damage(header):
    directory, original = header
    for length in range(len(original)):
        (directory / "header").write_bytes(original[:length])
        with pytest.raises(HeaderDamaged):
            Vault(directory, None).unlock(PASSPHRASE)
    (directory / "header").write_bytes(original + b"\x00")
    with pytest.raises(HeaderDamaged):
        Vault(directory, None).unlock(PASSPHRASE)
    assert Vault(directory, None).failures == 0


def with_checksum(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


def test_an_unknown_header_version_is_named(header):
    directory, original = header
    (directory / "header").write_bytes(with_checksum(original[:12] + (2).to_bytes(2, "big") + original[14:-32]))
    with pytest.raises(HeaderDamaged, match="version 2"):
        Vault(directory, None).unlock(PASSPHRASE)


def test_header_metadata_is_authenticated(header):
    """Metadata edited and the checksum recomputed: the right secret no longer opens it."""
    directory, original = header
    edited = original[:-32].replace(b'"passphrase (no TPM)"', b'"passphrase (NO TPM)"')
    assert edited != original[:-32]
    (directory / "header").write_bytes(with_checksum(edited))
    with pytest.raises(WrongSecret):
        Vault(directory, None).unlock(PASSPHRASE)


@pytest.fixture
def records(tmp_path):
    """A store with two records; the victim's file path and content."""
    directory = tmp_path / "state"
    store = Vault(directory, None).create(PASSPHRASE, small_kdf())
    store.put("other", b"still fine")
    before = set((directory / "records").iterdir())
    store.put("account:victim", b"password" * 20)
    (path,) = set((directory / "records").iterdir()) - before
    return store, path, path.read_bytes()


def assert_only_victim_damaged(store, path: Path) -> None:
    with pytest.raises(RecordDamaged) as caught:
        store.get("account:victim")
    assert caught.value.record == "account:victim"
    assert store.get("other") == b"still fine"
    assert store.names() == ["other"]
    assert [error.record for error in store.damaged] == [path.name]


def test_every_flipped_record_byte_is_that_records_damage(records):
    store, path, original = records
    for position in range(len(original)):
        path.write_bytes(flipped(original, position))
        assert_only_victim_damaged(store, path)
    path.write_bytes(original)
    assert store.get("account:victim") == b"password" * 20


def test_a_truncated_record_is_damaged(records):
    store, path, original = records
    for length in range(len(original)):
        path.write_bytes(original[:length])
        assert_only_victim_damaged(store, path)


def test_swapped_record_files_are_both_damaged(tmp_path):
    store = Vault(tmp_path / "state", None).create(PASSPHRASE, small_kdf())
    store.put("a", b"A")
    store.put("b", b"B")
    first, second = sorted((tmp_path / "state" / "records").glob("r-*"))
    first_content, second_content = first.read_bytes(), second.read_bytes()
    first.write_bytes(second_content)
    second.write_bytes(first_content)
    for name in ("a", "b"):
        with pytest.raises(RecordDamaged) as caught:
            store.get(name)
        assert caught.value.record == name
    assert store.names() == [] and len(store.damaged) == 2


def test_a_damaged_history_file_is_reported(tmp_path):
    store = Vault(tmp_path / "state", None).create(PASSPHRASE, small_kdf())
    store.put_history("call-1", b"one")
    store.put_history("call-2", b"two")
    victim = next((tmp_path / "state" / "records").glob("h-*"))
    victim.write_bytes(flipped(victim.read_bytes(), 40))
    assert len(store.history_names()) == 1 and [error.record for error in store.damaged] == [victim.name]
