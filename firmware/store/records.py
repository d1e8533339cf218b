"""Named records, each an AES-256-GCM sealed file, written atomically and durably.

Contract:

- Only ciphertext ever touches the disk, temporary files included. :meth:`Store.put` returns
  ("acknowledges") only once the record is durable: the ciphertext was written to a temporary
  file in the same directory, fsynced, renamed over the old file and the directory fsynced. A
  crash at any moment therefore leaves either the old or the new record, never a mix.
- File names are opaque: ``r-`` + HMAC-SHA256 of the record name under a key derived from the
  master key, so names such as ``account:alice@example.com`` do not leak.
- Plaintexts are padded to a size bucket (:func:`bucket_size`) so lengths do not leak either.
- A damaged or tampered file raises :class:`RecordDamaged` for that record only; every other
  record still opens. The AAD binds each file to its opaque name, so swapping two files is
  detected as damage of both.
- The history area (``h-`` files) is sealed under its own random history key, kept in a record
  of its own; :meth:`Store.erase_history` deletes the files and replaces that key.

Record file format (version 1)::

    magic b"BYLR" | version (1 byte) | nonce (12 bytes) | AES-256-GCM ciphertext + 16-byte tag
    AAD = magic | version | opaque file name (ASCII)
    plaintext = kind (1 byte) | name length (u16 BE) | name (UTF-8) | data length (u32 BE) | data
                | zero padding up to bucket_size(...)

The Store is for one process at a time (the firmware's), without locking.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import struct
from pathlib import Path
from typing import Any, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from firmware.store import RecordDamaged, StoreError

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
RECORD_MAGIC = b"BYLR"
RECORD_VERSION = 1
FILE_HEADER = struct.Struct(">4sB")
PLAINTEXT_HEADER = struct.Struct(">BH")
DATA_LENGTH = struct.Struct(">I")
MIN_FILE_BYTES = FILE_HEADER.size + NONCE_BYTES + TAG_BYTES

RECORD_PREFIX = "r-"
HISTORY_PREFIX = "h-"
TEMP_PREFIX = ".tmp-"
"""Temporary files of atomic writes (here and in the vault directory): ciphertext, never plaintext."""

MAX_NAME_BYTES = 1024
MAX_DATA_BYTES = 64 * 1024 * 1024
"""A record is held in memory whole (twice while sealing); the phone has 512 MiB."""
MIN_BUCKET = 256
LARGE_BUCKET = 1024 * 1024
"""Plaintexts grow in powers of two up to this, then in whole multiples of it (SQLite databases)."""

KIND_RECORD = 0
KIND_META = 1
KIND_HISTORY = 2
HISTORY_KEY_NAME = "history-key"
HISTORY_KEY_ID_BYTES = 8

LABEL_RECORD_DATA = b"byline store v1: record data"
LABEL_RECORD_NAMES = b"byline store v1: record names"
LABEL_HISTORY_DATA = b"byline store v1: history data"
LABEL_HISTORY_NAMES = b"byline store v1: history names"
LABEL_HISTORY_ID = b"byline store v1: history key id"


def derive_key(key: bytes, label: bytes) -> bytes:
    """A 32-byte subkey of ``key`` for one purpose (HKDF-SHA256, ``label`` as info)."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=label).derive(key)


def fsync_directory(directory: Path) -> None:
    """Make renames and deletions in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` durably: old or new content after any crash, never a mix.

    ``data`` must already be ciphertext (or public): it goes to a temporary file first.
    """
    temp = path.with_name(TEMP_PREFIX + secrets.token_hex(8))
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def remove_temp_files(directory: Path) -> None:
    """Delete leftovers of atomic writes a crash interrupted (they were never acknowledged)."""
    for path in directory.glob(TEMP_PREFIX + "*"):
        path.unlink(missing_ok=True)


def bucket_size(length: int) -> int:
    """The padded plaintext size for ``length`` bytes: a power of two from :data:`MIN_BUCKET` up to
    :data:`LARGE_BUCKET`, beyond that the next multiple of :data:`LARGE_BUCKET`."""
    if length > LARGE_BUCKET:
        return -(-length // LARGE_BUCKET) * LARGE_BUCKET
    size = MIN_BUCKET
    while size < length:
        size *= 2
    return size


def _name_bytes(name: str) -> bytes:
    if not isinstance(name, str) or not name:
        raise ValueError("a record name must be non-empty text")
    encoded = name.encode("utf-8")  # UnicodeEncodeError (a ValueError) for lone surrogates
    if len(encoded) > MAX_NAME_BYTES:
        raise ValueError(f"a record name must be at most {MAX_NAME_BYTES} bytes of UTF-8")
    return encoded


def _as_bytes(data: bytes | bytearray | memoryview) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"record data must be bytes, not {type(data).__name__}")
    return bytes(data)


def _key_id(key: bytes) -> str:
    """A public fingerprint of a history key."""
    return derive_key(key, LABEL_HISTORY_ID)[:HISTORY_KEY_ID_BYTES].hex()


class _Area:
    """One set of sealed files: their file-name prefix and the two keys for them."""

    def __init__(self, directory: Path, prefix: str, data_key: bytes, name_key: bytes):
        self.directory = directory
        self.prefix = prefix
        self._aead = AESGCM(data_key)
        self._name_key = name_key

    def __repr__(self) -> str:
        return f"<store area {self.prefix}* in {self.directory}>"

    def file_name(self, kind: int, name: str) -> str:
        tag = hmac.new(self._name_key, bytes([kind]) + _name_bytes(name), hashlib.sha256).hexdigest()
        return self.prefix + tag

    def files(self) -> Iterator[str]:
        return (path.name for path in self.directory.glob(self.prefix + "*"))

    def seal(self, kind: int, name: str, data: bytes) -> tuple[str, bytes]:
        """(file name, file content) for a record."""
        encoded = _name_bytes(name)
        if len(data) > MAX_DATA_BYTES:
            raise ValueError(f"a record holds at most {MAX_DATA_BYTES} bytes")
        body = PLAINTEXT_HEADER.pack(kind, len(encoded)) + encoded + DATA_LENGTH.pack(len(data)) + data
        padded = body + bytes(bucket_size(len(body)) - len(body))
        file_name = self.file_name(kind, name)
        head = FILE_HEADER.pack(RECORD_MAGIC, RECORD_VERSION)
        nonce = os.urandom(NONCE_BYTES)
        return file_name, head + nonce + self._aead.encrypt(nonce, padded, head + file_name.encode())

    def write(self, kind: int, name: str, data: bytes) -> None:
        file_name, content = self.seal(kind, name, data)
        write_atomic(self.directory / file_name, content)

    def open(self, file_name: str, label: str) -> tuple[int, str, bytes]:
        """(kind, name, data) of one file. ``FileNotFoundError`` when absent; RecordDamaged
        naming ``label`` when it does not authenticate or parse."""
        raw = (self.directory / file_name).read_bytes()
        if len(raw) < MIN_FILE_BYTES:
            raise RecordDamaged(label, "the file is truncated")
        magic, version = FILE_HEADER.unpack_from(raw)
        if magic != RECORD_MAGIC:
            raise RecordDamaged(label, "the file is not a Byline record")
        if version != RECORD_VERSION:
            raise RecordDamaged(label, f"record format version {version} is not supported")
        head, nonce = raw[:FILE_HEADER.size], raw[FILE_HEADER.size:FILE_HEADER.size + NONCE_BYTES]
        try:
            padded = self._aead.decrypt(nonce, raw[FILE_HEADER.size + NONCE_BYTES:], head + file_name.encode())
        except InvalidTag:
            raise RecordDamaged(label, "it fails authentication (corrupted, tampered with or moved)") from None
        kind, name, data = _unpack(padded, label)
        if self.file_name(kind, name) != file_name:
            raise RecordDamaged(label, "it is stored under another record's file name")
        return kind, name, data


def _unpack(padded: bytes, label: str) -> tuple[int, str, bytes]:
    try:
        kind, name_length = PLAINTEXT_HEADER.unpack_from(padded)
        name_end = PLAINTEXT_HEADER.size + name_length
        name = padded[PLAINTEXT_HEADER.size:name_end].decode("utf-8")
        (data_length,) = DATA_LENGTH.unpack_from(padded, name_end)
    except (struct.error, UnicodeDecodeError):
        raise RecordDamaged(label, "its contents are malformed") from None
    data_start = name_end + DATA_LENGTH.size
    if data_start + data_length > len(padded):
        raise RecordDamaged(label, "its contents are malformed")
    return kind, name, padded[data_start:data_start + data_length]


class Store:
    """The unlocked store: named records and the call history, sealed under keys derived from
    the master key. Made by :class:`firmware.store.vault.Vault` (create or unlock).

    Opening removes temporary files left by interrupted writes and history files left by an
    interrupted :meth:`erase_history`.
    """

    def __init__(self, directory: Path, master_key: bytes):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        remove_temp_files(directory)
        self.directory = directory
        self._records = _Area(directory, RECORD_PREFIX, derive_key(master_key, LABEL_RECORD_DATA),
                              derive_key(master_key, LABEL_RECORD_NAMES))
        self.damaged: list[RecordDamaged] = []
        """The damaged files found by the last :meth:`names` or :meth:`history_names`."""
        self._drop_stale_history()

    def __repr__(self) -> str:
        return f"<Store {self.directory}>"

    # Records.

    def get(self, name: str) -> bytes:
        """The data of record ``name``; KeyError if there is none, RecordDamaged if it is damaged."""
        return self._get(self._records, KIND_RECORD, name)

    def put(self, name: str, data: bytes) -> None:
        """Create or replace record ``name``; returns once it is durable (acknowledged)."""
        self._records.write(KIND_RECORD, name, _as_bytes(data))

    def delete(self, name: str) -> None:
        """Delete record ``name`` durably; KeyError if there is none."""
        path = self.directory / self._records.file_name(KIND_RECORD, name)
        try:
            path.unlink()
        except FileNotFoundError:
            raise KeyError(name) from None
        fsync_directory(self.directory)

    def names(self) -> list[str]:
        """The names of all readable records, sorted. Damaged files are left out and listed in
        :attr:`damaged` (named by their opaque file name) instead of failing the listing."""
        return self._list(self._records, KIND_RECORD)

    def get_json(self, name: str) -> Any:
        """Record ``name`` decoded from JSON (as written by :meth:`put_json`)."""
        try:
            return json.loads(self.get(name))
        except ValueError:
            raise StoreError(f"record {name!r} does not hold JSON") from None

    def put_json(self, name: str, value: Any) -> None:
        """Store ``value`` as compact UTF-8 JSON under ``name``."""
        self.put(name, json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))

    def get_sqlite(self, name: str, *, create: bool = False) -> sqlite3.Connection:
        """Record ``name`` as an in-memory SQLite database: nothing of it touches the disk.

        KeyError if there is no such record, unless ``create``, which gives an empty database.
        Save changes with :meth:`put_sqlite`.
        """
        try:
            data = self.get(name)
        except KeyError:
            if not create:
                raise
            data = None
        connection = sqlite3.connect(":memory:")
        if data is not None:
            connection.deserialize(data)
        # Large sorts and temporary tables would otherwise spill to (plaintext) temporary files.
        connection.execute("PRAGMA temp_store = MEMORY")
        return connection

    def put_sqlite(self, name: str, connection: sqlite3.Connection) -> None:
        """Store the whole database of ``connection`` under ``name``. Commit first: an open
        transaction raises StoreError rather than saving half of it."""
        if connection.in_transaction:
            raise StoreError(f"commit or roll back before saving database {name!r}")
        self.put(name, connection.serialize())

    # History.

    def put_history(self, name: str, data: bytes) -> None:
        """Create or replace history entry ``name``; durable on return, like :meth:`put`."""
        self._history().write(KIND_HISTORY, name, _as_bytes(data))

    def get_history(self, name: str) -> bytes:
        """The data of history entry ``name``; KeyError if absent, RecordDamaged if damaged."""
        return self._get(self._history(), KIND_HISTORY, name)

    def history_names(self) -> list[str]:
        """The names of all readable history entries, sorted (damaged ones go to :attr:`damaged`)."""
        return self._list(self._history(), KIND_HISTORY)

    def erase_history(self) -> None:
        """Forget the whole history: first replace the history key (from then on no history file
        can be decrypted: crypto-erase), then delete every history file."""
        self._records.write(KIND_META, HISTORY_KEY_NAME, os.urandom(KEY_BYTES))
        for path in list(self.directory.glob(HISTORY_PREFIX + "*")):
            path.unlink(missing_ok=True)
        fsync_directory(self.directory)

    @property
    def history_key_id(self) -> str:
        """A public fingerprint of the current history key (it changes with :meth:`erase_history`)."""
        return _key_id(self._history_key())

    def _history_key(self) -> bytes:
        """The current history key, made on first use."""
        try:
            return self._get(self._records, KIND_META, HISTORY_KEY_NAME)
        except KeyError:
            key = os.urandom(KEY_BYTES)
            self._records.write(KIND_META, HISTORY_KEY_NAME, key)
            return key

    def _history(self) -> _Area:
        return self._history_area(self._history_key())

    def _history_area(self, key: bytes) -> _Area:
        # History files carry the key's fingerprint in their names, so files of an erased
        # generation are recognisable without any key.
        return _Area(self.directory, f"{HISTORY_PREFIX}{_key_id(key)}-", derive_key(key, LABEL_HISTORY_DATA),
                     derive_key(key, LABEL_HISTORY_NAMES))

    def _drop_stale_history(self) -> None:
        """Delete history files of an earlier history key (an erase interrupted by a crash)."""
        try:
            key = self._get(self._records, KIND_META, HISTORY_KEY_NAME)
        except (KeyError, RecordDamaged):
            return  # no key yet, or unreadable: leave the files for an explicit erase_history
        current = self._history_area(key).prefix
        stale = [path for path in self.directory.glob(HISTORY_PREFIX + "*") if not path.name.startswith(current)]
        for path in stale:
            path.unlink(missing_ok=True)
        if stale:
            fsync_directory(self.directory)

    # Shared.

    def _get(self, area: _Area, kind: int, name: str) -> bytes:
        # open() checks that the file's own kind and name hash to the requested file name.
        try:
            return area.open(area.file_name(kind, name), name)[2]
        except FileNotFoundError:
            raise KeyError(name) from None

    def _list(self, area: _Area, kind: int) -> list[str]:
        names, damaged = [], []
        for file_name in area.files():
            try:
                found_kind, name, _ = area.open(file_name, file_name)
            except FileNotFoundError:
                continue  # deleted meanwhile
            except RecordDamaged as error:
                damaged.append(error)
                continue
            if found_kind == kind:
                names.append(name)
        self.damaged = damaged
        return sorted(names)
