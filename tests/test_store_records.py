"""Records: reading and writing, opaque names and padding, JSON and SQLite, the history area and
its erasure, and that nothing readable (canaries) ever reaches the disk."""

import base64
import os
import secrets
from pathlib import Path

import pytest

from firmware.store import RecordDamaged, StoreError
from firmware.store.records import LARGE_BUCKET, MIN_BUCKET, bucket_size
from firmware.store.vault import Vault
from helpers.store_support import PASSPHRASE, OTHER_PASSPHRASE, files_under, small_kdf


@pytest.fixture
def directory(tmp_path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def vault(directory) -> Vault:
    return Vault(directory, None)


@pytest.fixture
def store(vault):
    return vault.create(PASSPHRASE, small_kdf())


def record_files(directory: Path, prefix: str = "r-") -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in (directory / "records").glob(prefix + "*")}


def test_put_get_overwrite_delete(store):
    store.put("a", b"one")
    store.put("b", bytearray(b"two"))
    store.put("a", b"uno")
    assert (store.get("a"), store.get("b")) == (b"uno", b"two")
    assert store.names() == ["a", "b"]
    store.delete("a")
    assert store.names() == ["b"]
    with pytest.raises(KeyError):
        store.get("a")
    with pytest.raises(KeyError):
        store.delete("a")


def test_empty_and_large_values(store):
    store.put("empty", b"")
    big = os.urandom(3 * LARGE_BUCKET + 5)
    store.put("big", big)
    assert store.get("empty") == b"" and store.get("big") == big


def test_bad_names_and_data_are_refused(store):
    for name in ("", "x" * 2000, "\ud800"):
        with pytest.raises(ValueError):
            store.put(name, b"x")
    with pytest.raises(TypeError):
        store.put("n", "text, not bytes")
    with pytest.raises(TypeError):
        store.put("n", 5)


def test_records_persist_across_unlocks(store, directory):
    store.put("account:alice@example.com", b"secret")
    assert Vault(directory, None).unlock(PASSPHRASE).get("account:alice@example.com") == b"secret"


def test_file_names_are_opaque(store, directory):
    name = "account:alice@example.com"
    store.put(name, b"x")
    (file_name,) = record_files(directory)
    assert file_name.startswith("r-") and len(file_name) == 2 + 64
    assert "alice" not in file_name and name.encode().hex() not in file_name


def test_file_names_differ_between_stores(tmp_path):
    names = set()
    for number in range(2):
        store = Vault(tmp_path / str(number), None).create(PASSPHRASE, small_kdf())
        store.put("settings", b"x")
        names |= set(record_files(tmp_path / str(number)))
    assert len(names) == 2  # keyed by the store's master key, not a plain hash


def test_lengths_are_padded_to_buckets(store, directory):
    store.put("short", b"1")
    store.put("longer", b"a much longer password, 100 bytes".ljust(100, b"!"))
    assert len({len(content) for content in record_files(directory).values()}) == 1
    assert [bucket_size(n) for n in (0, 1, 256, 257, 1000, LARGE_BUCKET, LARGE_BUCKET + 1)] == [
        MIN_BUCKET, MIN_BUCKET, 256, 512, 1024, LARGE_BUCKET, 2 * LARGE_BUCKET]


def test_json_records(store):
    store.put_json("settings", {"ring": "soft", "name": "Zoë", "n": [1, 2]})
    assert store.get_json("settings") == {"ring": "soft", "name": "Zoë", "n": [1, 2]}
    store.put("raw", b"\xffnot json")
    with pytest.raises(StoreError, match="raw"):
        store.get_json("raw")


def test_sqlite_records_live_in_memory(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KeyError):
        store.get_sqlite("contacts")
    db = store.get_sqlite("contacts", create=True)
    db.execute("create table contact(name text, address text)")
    db.execute("insert into contact values ('Alice', 'alice@example.com')")
    with pytest.raises(StoreError, match="commit"):
        store.put_sqlite("contacts", db)
    db.commit()
    store.put_sqlite("contacts", db)
    reopened = store.get_sqlite("contacts")
    assert reopened.execute("select * from contact").fetchall() == [("Alice", "alice@example.com")]
    assert reopened.execute("pragma temp_store").fetchone() == (2,)  # MEMORY: no temporary files
    assert reopened.execute("pragma journal_mode").fetchone() == ("memory",)
    for _ in range(12):  # big enough to spill to disk if anything were file-backed
        reopened.execute("insert into contact select name, randomblob(500) from contact")
    reopened.execute("create temp table sorted as select * from contact order by address")
    reopened.commit()
    assert [path.name for path in tmp_path.iterdir()] == ["state"]


def test_a_damaged_record_does_not_hide_the_others(store, directory):
    for name in ("a", "b", "c"):
        store.put(name, name.encode())
    victim = next(path for path in (directory / "records").glob("r-*") if path.name ==
                  store._records.file_name(0, "b"))
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    with pytest.raises(RecordDamaged) as caught:
        store.get("b")
    assert caught.value.record == "b"
    assert store.names() == ["a", "c"]
    assert [error.record for error in store.damaged] == [victim.name]
    assert store.get("a") == b"a"


def test_leftover_temporary_files_are_ignored_and_cleaned_at_open(store, directory):
    store.put("a", b"1")
    leftover = directory / "records" / ".tmp-0123456789abcdef"
    leftover.write_bytes(os.urandom(300))
    assert store.names() == ["a"] and store.damaged == []
    Vault(directory, None).unlock(PASSPHRASE)
    assert not leftover.exists()


def test_puts_leave_no_temporary_file(store, directory):
    for number in range(20):
        store.put(f"n{number % 3}", os.urandom(number * 50))
    assert all(not path.name.startswith(".tmp") for path in files_under(directory))


# History.

def test_history_is_separate_from_records(store):
    store.put("call-1", b"record")
    store.put_history("call-1", b"history")
    assert store.names() == ["call-1"] and store.history_names() == ["call-1"]
    assert store.get("call-1") == b"record" and store.get_history("call-1") == b"history"
    with pytest.raises(KeyError):
        store.get_history("call-2")


def test_history_persists_across_unlocks(store, directory):
    store.put_history("2025-01-01 Alice", b"12 min")
    assert Vault(directory, None).unlock(PASSPHRASE).get_history("2025-01-01 Alice") == b"12 min"


def test_erase_history_deletes_files_and_replaces_the_key(store, directory):
    store.put("settings", b"kept")
    for number in range(5):
        store.put_history(f"call-{number}", os.urandom(100))
    old_history = record_files(directory, "h-")
    old_records = record_files(directory)
    old_key_id = store.history_key_id
    store.erase_history()
    assert store.history_names() == [] and store.damaged == []
    assert record_files(directory, "h-") == {}
    assert store.history_key_id != old_key_id
    new_records = record_files(directory)
    assert set(new_records) == set(old_records)  # the key record was replaced, not added
    changed = [name for name in old_records if old_records[name] != new_records[name]]
    assert len(changed) == 1  # the history key record
    assert store.get("settings") == b"kept"
    store.put_history("call-new", b"new")
    assert store.history_names() == ["call-new"]
    assert not set(old_history) & set(record_files(directory, "h-"))


def test_old_history_files_put_back_are_dropped(store, directory):
    """What an erase interrupted after replacing the key leaves is removed at the next open."""
    store.put_history("call", b"old")
    saved = record_files(directory, "h-")
    store.erase_history()
    for name, content in saved.items():
        (directory / "records" / name).write_bytes(content)
    reopened = Vault(directory, None).unlock(PASSPHRASE)
    assert record_files(directory, "h-") == {}
    assert reopened.history_names() == [] and reopened.damaged == []


# Canaries: nothing readable reaches the disk.

def canary_forms(canary: str) -> list[bytes]:
    raw = canary.encode()
    return [raw, raw.hex().encode(), raw.hex().upper().encode(), base64.b64encode(raw).rstrip(b"="),
            base64.urlsafe_b64encode(raw).rstrip(b"="), canary.encode("utf-16-le")]


def assert_no_canary(root: Path, canaries: list[str]) -> None:
    files = [path for path in root.rglob("*") if path.is_file()]
    assert files
    for path in files:
        content = path.read_bytes()
        for canary in canaries:
            for form in canary_forms(canary):
                assert form not in content, f"{canary!r} found in {path.name}"


def test_no_canary_reaches_the_disk(tmp_path):
    directory = tmp_path / "state"
    vault = Vault(directory, None)
    store = vault.create(PASSPHRASE, small_kdf())
    canaries = [PASSPHRASE, OTHER_PASSPHRASE]
    for number in range(8):
        name, value = f"canary-name-{secrets.token_hex(8)}", f"canary-value-{secrets.token_hex(12)}"
        canaries += [name, value]
        store.put(name, value.encode() * (number + 1))
    history_name, history_value = f"canary-call-{secrets.token_hex(8)}", f"canary-note-{secrets.token_hex(8)}"
    store.put_history(history_name, history_value.encode())
    json_value, db_value = f"canary-json-{secrets.token_hex(8)}", f"canary-db-{secrets.token_hex(8)}"
    store.put_json("settings", {"password": json_value})
    db = store.get_sqlite("db", create=True)
    db.execute("create table t(x)")
    db.execute("insert into t values (?)", (db_value,))
    db.commit()
    store.put_sqlite("db", db)
    canaries += [history_name, history_value, json_value, db_value]
    assert_no_canary(tmp_path, canaries)
    vault.change_secret(PASSPHRASE, OTHER_PASSPHRASE)
    assert_no_canary(tmp_path, canaries)
    reopened = Vault(directory, None).unlock(OTHER_PASSPHRASE)
    assert reopened.get_json("settings") == {"password": json_value}
    assert reopened.get_history(history_name) == history_value.encode()


def test_the_canary_check_finds_plaintext(tmp_path):
    """The scanner itself works: it spots each encoding."""
    for form in canary_forms("canary-xyz"):
        (tmp_path / "plain").write_bytes(b"..." + form + b"...")
        with pytest.raises(AssertionError):
            assert_no_canary(tmp_path, ["canary-xyz"])
