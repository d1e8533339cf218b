"""The vault: the header that wraps the master key, the wrong-secret counter, wiping.

Key hierarchy::

    secret --Argon2id(header kdf)--> 64 bytes = pin key (32) | TPM auth value (32)
    share  = HardwareShare.read(handle, auth)          (TPM mode only; never given the raw PIN)
    KEK    = HKDF-SHA256(pin key | share)              (share omitted in passphrase mode)
    master key (random, 256 bits) = AES-256-GCM-unwrap(KEK, wrapped key, AAD = header metadata)

Every record key derives from the master key (see :mod:`firmware.store.records`), so changing
the secret only re-wraps the master key and wiping only has to destroy the wrapped key and the
share.

Header file format (version 1), ``directory/header``::

    magic           12 bytes   b"BYLINE-VAULT"
    version          2 bytes   big-endian, 1
    metadata length  4 bytes   big-endian
    metadata         n bytes   canonical JSON (sorted keys, no spaces, ASCII):
                               {"duress": {"kdf": {...}, "verifier": hex},
                                "kdf": {"algorithm", "iterations", "lanes", "memory_kib", "salt"},
                                "protection": "PIN + TPM 2.0" | "passphrase (no TPM)",
                                "share": null | {"handle": {...}, "kind": "TPM 2.0"}}
    wrapped key     61 bytes   nonce (12) | AES-256-GCM(master key (32) | flags (1)) with tag (49)
    checksum        32 bytes   SHA-256 of everything above

Flags: bit 0 set when a duress secret is configured (readable only with the right secret).

The AAD of the wrapped key is everything before it (magic, version, length, metadata), so no
metadata can be changed without the key failing to unwrap. The checksum makes random damage to
any byte a :class:`HeaderDamaged`, never a wrong PIN and never a crash; an unknown version is a
HeaderDamaged naming the version.

Duress: the header always holds a duress verifier (Argon2id of the duress secret under its own
salt); without a duress secret it is random, so the header does not tell whether one is set (the
flag saying so is inside the wrapped key), and every wrong secret costs the same two derivations
either way. It is checked only after the real
secret failed. Unlike the real secret it is not behind the TPM: someone with a copy of the disk
can guess the duress secret offline at Argon2id speed, which reveals that secret, not the store.

Throttling: see :func:`delay_after` and :meth:`Vault.wait_remaining`. The counter (``attempts``)
stops guessing through the phone itself; against a copy of the disk the defences are Argon2id and,
in TPM mode, the TPM's own dictionary-attack lockout.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NoReturn, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from firmware.store import (HardwareShare, HardwareShareError, HeaderDamaged, NoStore, StoreError, Throttled,
                            WipedAfterFailures, WrongSecret)
from firmware.store.kdf import KdfParams, derive, normalise_secret
from firmware.store.records import (KEY_BYTES, NONCE_BYTES, TAG_BYTES, Store, derive_key, fsync_directory,
                                    remove_temp_files, write_atomic)

HEADER_FILE = "header"
ATTEMPTS_FILE = "attempts"
RECORDS_DIR = "records"

HEADER_MAGIC = b"BYLINE-VAULT"
HEADER_VERSION = 1
HEADER_PREFIX = struct.Struct(">12sHI")
FLAG_DURESS_SET = 0x01
WRAPPED_PLAINTEXT_BYTES = KEY_BYTES + 1
WRAPPED_KEY_BYTES = NONCE_BYTES + WRAPPED_PLAINTEXT_BYTES + TAG_BYTES
CHECKSUM_BYTES = hashlib.sha256().digest_size
MIN_HEADER_BYTES = HEADER_PREFIX.size + WRAPPED_KEY_BYTES + CHECKSUM_BYTES
METADATA_KEYS = {"duress", "kdf", "protection", "share"}

PIN_KEY_BYTES = 32
AUTH_BYTES = 32
VERIFIER_BYTES = 32
LABEL_KEK = b"byline vault v1: key-encryption key"
LABEL_VOLUME = b"byline vault v1: data volume key"

PROTECTION_PASSPHRASE = "passphrase (no TPM)"
MIN_PIN_DIGITS = 6
MIN_PASSPHRASE_CHARS = 16

DEFAULT_MAX_FAILURES = 10
FREE_FAILURES = 4
DELAY_STEPS_S = (30, 60, 120, 300, 600, 1200, 2400)
MAX_DELAY_S = 3600
UNREADABLE_COUNTER_FAILURES = FREE_FAILURES
"""A counter file that does not parse counts as this many failures: throttled, not forgiven."""

NO_STORE_MESSAGE = "there is no store on this phone yet: set it up"


def delay_after(failures: int) -> float:
    """Seconds to wait before the next try after ``failures`` wrong secrets in a row.

    None for the first :data:`FREE_FAILURES` (typos), then :data:`DELAY_STEPS_S` one by one,
    then :data:`MAX_DELAY_S` for good.
    """
    if failures <= FREE_FAILURES:
        return 0.0
    step = failures - FREE_FAILURES - 1
    return float(DELAY_STEPS_S[step] if step < len(DELAY_STEPS_S) else MAX_DELAY_S)


class WeakSecret(StoreError, ValueError):
    """The new PIN or passphrase is refused (too short, or equal to the other secret)."""


@dataclass(frozen=True)
class VaultInfo:
    """What the header tells without unlocking (for the Security screen)."""

    version: int
    protection: str
    kdf: KdfParams


@dataclass(frozen=True, repr=False)
class _Duress:
    kdf: KdfParams
    verifier: bytes

    @classmethod
    def make(cls, duress: str | None, costs: KdfParams) -> _Duress:
        """The verifier for ``duress``, or a random one (indistinguishable) for none."""
        kdf = costs.with_new_salt()
        if duress is None:
            return cls(kdf, os.urandom(VERIFIER_BYTES))
        return cls(kdf, derive(duress, kdf, VERIFIER_BYTES))

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(derive(secret, self.kdf, VERIFIER_BYTES), self.verifier)

    def to_dict(self) -> dict:
        return {"kdf": self.kdf.to_dict(), "verifier": self.verifier.hex()}

    @classmethod
    def from_dict(cls, data: dict) -> _Duress:
        verifier = bytes.fromhex(data["verifier"])
        if len(verifier) != VERIFIER_BYTES:
            raise ValueError("the duress verifier has the wrong length")
        return cls(KdfParams.from_dict(data["kdf"]), verifier)


@dataclass(frozen=True, repr=False)
class _Header:
    kdf: KdfParams
    protection: str
    share: dict | None
    """None in passphrase mode, else {"kind": ..., "handle": {...}}."""
    duress: _Duress
    aad: bytes
    wrapped_key: bytes

    @property
    def share_handle(self) -> dict | None:
        return None if self.share is None else self.share["handle"]


@dataclass(frozen=True, repr=False)
class _Opened:
    """The result of a right secret: the header it opened, the master key, the KEK."""

    header: _Header
    master_key: bytes
    duress_set: bool
    kek: bytes


def _metadata(kdf: KdfParams, protection: str, share: dict | None, duress: _Duress) -> dict:
    return {"duress": duress.to_dict(), "kdf": kdf.to_dict(), "protection": protection, "share": share}


def _encode_header(metadata: dict, master_key: bytes, duress_set: bool, kek: bytes) -> bytes:
    meta = json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    aad = HEADER_PREFIX.pack(HEADER_MAGIC, HEADER_VERSION, len(meta)) + meta
    nonce = os.urandom(NONCE_BYTES)
    flags = bytes([FLAG_DURESS_SET if duress_set else 0])
    body = aad + nonce + AESGCM(kek).encrypt(nonce, master_key + flags, aad)
    return body + hashlib.sha256(body).digest()


def _decode_header(raw: bytes) -> _Header:
    """The parsed header; HeaderDamaged for anything but a well-formed, intact version 1 header."""
    if len(raw) < MIN_HEADER_BYTES:
        raise HeaderDamaged("the store's header is truncated: the store cannot be opened (wipe to start over)")
    magic, version, meta_length = HEADER_PREFIX.unpack_from(raw)
    if magic != HEADER_MAGIC:
        raise HeaderDamaged("the store's header is not a Byline vault header: the store cannot be opened")
    if version != HEADER_VERSION:
        raise HeaderDamaged(f"the store's header has version {version}, which this firmware does not know "
                            f"(it reads version {HEADER_VERSION}): update the firmware")
    body, checksum = raw[:-CHECKSUM_BYTES], raw[-CHECKSUM_BYTES:]
    if not hmac.compare_digest(hashlib.sha256(body).digest(), checksum):
        raise HeaderDamaged("the store's header is corrupted (checksum mismatch): the store cannot be opened")
    if HEADER_PREFIX.size + meta_length + WRAPPED_KEY_BYTES != len(body):
        raise HeaderDamaged("the store's header has inconsistent lengths: the store cannot be opened")
    aad = body[:HEADER_PREFIX.size + meta_length]
    try:
        return _parse_metadata(json.loads(aad[HEADER_PREFIX.size:]), aad, body[len(aad):])
    except (ValueError, KeyError, TypeError):
        raise HeaderDamaged("the store's header metadata is malformed: the store cannot be opened") from None


def _parse_metadata(metadata: dict, aad: bytes, wrapped_key: bytes) -> _Header:
    if not isinstance(metadata, dict) or set(metadata) != METADATA_KEYS:
        raise ValueError("unexpected metadata fields")
    share = metadata["share"]
    if share is not None and not (isinstance(share, dict) and isinstance(share["kind"], str)
                                  and isinstance(share["handle"], dict)):
        raise ValueError("malformed share")
    if not isinstance(metadata["protection"], str):
        raise ValueError("malformed protection")
    return _Header(KdfParams.from_dict(metadata["kdf"]), metadata["protection"], share,
                   _Duress.from_dict(metadata["duress"]), aad, wrapped_key)


def _secret_keys(secret: str, kdf: KdfParams) -> tuple[bytes, bytes]:
    """(pin key, TPM auth value) for ``secret``."""
    derived = derive(secret, kdf, PIN_KEY_BYTES + AUTH_BYTES)
    return derived[:PIN_KEY_BYTES], derived[PIN_KEY_BYTES:]


def _kek(pin_key: bytes, share: bytes | None) -> bytes:
    return derive_key(pin_key + (share or b""), LABEL_KEK)


class FileArea:
    """A vault kept in files of ``directory``: ``header``, ``attempts`` and the records beside them
    (the simulator, CI, and any phone without a data volume)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return str(self.directory)

    @property
    def _header_path(self) -> Path:
        return self.directory / HEADER_FILE

    @property
    def _attempts_path(self) -> Path:
        return self.directory / ATTEMPTS_FILE

    def header(self) -> bytes | None:
        try:
            return self._header_path.read_bytes()
        except FileNotFoundError:
            return None

    def put_header(self, raw: bytes) -> None:
        write_atomic(self._header_path, raw)

    def attempts(self) -> bytes | None:
        try:
            return self._attempts_path.read_bytes()
        except FileNotFoundError:
            return None

    def put_attempts(self, raw: bytes) -> None:
        write_atomic(self._attempts_path, raw)

    def prepare(self, volume_key: bytes) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.erase()  # whatever an interrupted wipe left: sealed under a lost master key

    def records(self, volume_key: bytes) -> Path:
        remove_temp_files(self.directory)
        return self.directory / RECORDS_DIR

    def erase(self) -> None:
        """Crypto-erase: the header overwritten with random bytes and synced before anything else goes."""
        header = self._header_path
        if header.exists():
            size = header.stat().st_size
            with open(header, "r+b") as file:
                file.write(os.urandom(size))
                file.flush()
                os.fsync(file.fileno())
            header.unlink()
            fsync_directory(self.directory)
        shutil.rmtree(self.directory / RECORDS_DIR, ignore_errors=True)
        self._attempts_path.unlink(missing_ok=True)
        remove_temp_files(self.directory)
        fsync_directory(self.directory)


class KeyArea(Protocol):
    """Where a vault keeps its header and wrong-secret counter (readable before unlocking) and,
    once unlocked, its records. ``header``/``attempts`` return None when there is none; the
    ``put_`` methods are atomic and durable. ``prepare(volume_key)`` makes an empty place for a
    new store; ``records(volume_key)`` opens the records' place of the unlocked store and returns
    its directory; ``erase()`` destroys the header first (crypto-erase), then everything else.
    ``volume_key`` (32 bytes, derived from the master key) is for an area that encrypts its own
    data too (firmware.store.volume: the phone's LUKS2 partition); the file area ignores it."""

    def header(self) -> bytes | None: ...
    def put_header(self, raw: bytes) -> None: ...
    def attempts(self) -> bytes | None: ...
    def put_attempts(self, raw: bytes) -> None: ...
    def prepare(self, volume_key: bytes) -> None: ...
    def records(self, volume_key: bytes) -> Path: ...
    def erase(self) -> None: ...


def volume_key(master_key: bytes) -> bytes:
    return derive_key(master_key, LABEL_VOLUME)


class Vault:
    """The store in ``place`` (a directory, or a :class:`KeyArea` such as the phone's data volume):
    its header, its wrong-secret counter, its records.

    ``share`` is the hardware share (the TPM) or None for passphrase mode. ``max_failures`` wrong
    secrets in a row wipe the store. ``clock`` is a monotonic clock in seconds (tests pass a fake).
    """

    def __init__(self, place: Path | KeyArea, share: HardwareShare | None, *,
                 max_failures: int = DEFAULT_MAX_FAILURES, clock: Callable[[], float] = time.monotonic):
        if max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        self.area: KeyArea = place if hasattr(place, "put_header") else FileArea(Path(place))
        self.share = share
        self.max_failures = max_failures
        self._clock = clock
        self._started = clock()
        self._last_failure: float | None = None
        self._duress_set: bool | None = None

    def __repr__(self) -> str:
        return f"<Vault {self.area!r} ({self.protection})>"

    # What the phone shows before unlocking.

    def exists(self) -> bool:
        """Whether there is a store here (False on first boot and after a wipe)."""
        return self.area.header() is not None

    @property
    def protection(self) -> str:
        """How a store made by this vault is protected, e.g. "PIN + TPM 2.0"."""
        return PROTECTION_PASSPHRASE if self.share is None else f"PIN + {self.share.kind}"

    @property
    def min_secret_length(self) -> int:
        """The shortest secret :meth:`create` and :meth:`change_secret` accept.

        With a hardware share a 6-digit PIN is enough: guessing needs the TPM, which rate-limits
        and locks out, and the counter here wipes after ``max_failures``. Without one, whoever
        copies the disk can try PINs offline at Argon2id speed (the million 6-digit PINs fall
        within days on one desktop), so the phone asks for a passphrase of at least 16
        characters instead.
        """
        return MIN_PASSPHRASE_CHARS if self.share is None else MIN_PIN_DIGITS

    def describe(self) -> VaultInfo:
        """The existing store's header, read without a secret. NoStore, or HeaderDamaged."""
        header = self._read_header()
        return VaultInfo(HEADER_VERSION, header.protection, header.kdf)

    @property
    def duress_set(self) -> bool | None:
        """Whether a duress secret is set; None until this Vault has seen the right secret (the
        header alone does not tell)."""
        return self._duress_set

    @property
    def failures(self) -> int:
        """Wrong secrets in a row so far (from the ``attempts`` file, which holds nothing else)."""
        raw = self.area.attempts()
        if raw is None:
            return 0
        try:
            failures = json.loads(raw)["failures"]
        except (ValueError, KeyError, TypeError):
            return UNREADABLE_COUNTER_FAILURES
        if not isinstance(failures, int) or failures < 0:
            return UNREADABLE_COUNTER_FAILURES
        return failures

    def wait_remaining(self) -> float:
        """Seconds before the next secret may be tried (0 when it may be tried now).

        Rule: the delay for the current failure count (:func:`delay_after`) runs from the later of
        this Vault's construction (process start) and the last wrong secret seen by it, on the
        monotonic clock. The Pi has no real-time clock, so no wall-clock time is stored or
        trusted: after a power cycle the full delay starts again from boot, which means cutting
        the power never shortens a wait.
        """
        delay = delay_after(self.failures)
        since = self._started if self._last_failure is None else max(self._started, self._last_failure)
        return max(0.0, delay - (self._clock() - since))

    # Secrets.

    def create(self, secret: str, kdf: KdfParams) -> Store:
        """Make a new store (first boot) protected by ``secret``; returns it unlocked.

        WeakSecret if ``secret`` is shorter than :attr:`min_secret_length`; StoreError if a
        store already exists (wipe it first). The header is written atomically.
        """
        if self.exists():
            raise StoreError("a store already exists here: unlock it, or wipe it before making a new one")
        self._check_strength(secret, "PIN or passphrase")
        master_key = os.urandom(KEY_BYTES)
        self.area.prepare(volume_key(master_key))
        self._write_failures(0)
        self._install_header(secret, kdf, master_key, _Duress.make(None, kdf), duress_set=False)
        self._duress_set = False
        return Store(self.area.records(volume_key(master_key)), master_key)

    def unlock(self, secret: str) -> Store:
        """The store, for the right secret.

        Raises NoStore (none here), HeaderDamaged, HardwareShareError (no or another TPM),
        Throttled (too soon: nothing tried), WrongSecret, WipedAfterFailures (that was the
        last try), or NoStore after a silent wipe when ``secret`` is the duress secret. Header
        and hardware errors never count as attempts.
        """
        opened = self._open(secret)
        return Store(self.area.records(volume_key(opened.master_key)), opened.master_key)

    def verify(self, secret: str) -> None:
        """Check ``secret`` for the lock screen while unlocked: the same checks, counting and
        errors as :meth:`unlock`; returns None for the right secret."""
        self._open(secret)

    def change_secret(self, old: str, new: str, kdf: KdfParams | None = None) -> None:
        """Protect the store with ``new`` instead of ``old`` (checked and counted like unlock).

        ``kdf`` gives the costs for the new secret (default: the current ones); a fresh salt is
        always drawn. Only the master key is re-wrapped: records are not re-encrypted. With a
        share, the new share is made, the new header written atomically, and only then the old
        share destroyed, so a crash at any point leaves exactly one working secret (at worst an
        unused share in the TPM). The new header takes this Vault's protection: a passphrase
        store changed through a Vault with a share becomes a TPM store.
        """
        self._check_strength(new, "new PIN or passphrase")
        opened = self._open(old)
        if opened.duress_set and opened.header.duress.matches(new):
            raise WeakSecret("the new PIN or passphrase must differ from the duress one")
        self._install_header(new, (kdf or opened.header.kdf).with_new_salt(), opened.master_key,
                             opened.header.duress, duress_set=opened.duress_set)
        old_handle = opened.header.share_handle
        if old_handle is not None and self.share is not None:
            self.share.destroy(old_handle)

    def set_duress(self, secret: str, duress: str | None) -> None:
        """Set (or with None, clear) the duress secret; ``secret`` is the real one, checked and
        counted like unlock. Entering the duress secret later wipes the store silently and the
        phone reports NoStore, as if factory fresh. It must differ from the real secret and be
        as long as :attr:`min_secret_length` (so that it looks like a real one)."""
        if duress is not None:
            self._check_strength(duress, "duress PIN or passphrase")
            if normalise_secret(duress) == normalise_secret(secret):
                raise WeakSecret("the duress PIN or passphrase must differ from the real one")
        opened = self._open(secret)
        header = opened.header
        metadata = _metadata(header.kdf, header.protection, header.share, _Duress.make(duress, header.kdf))
        self.area.put_header(_encode_header(metadata, opened.master_key, duress is not None, opened.kek))
        self._duress_set = duress is not None

    def wipe(self) -> None:
        """Destroy the store for good; afterwards :meth:`exists` is False.

        Crypto-erase first: destroy the share, then the area destroys the header (the wrapped key;
        on the data volume, its LUKS2 keyslots too) before the records and the counter. Safe to
        repeat, and safe on a damaged or missing header.
        """
        handle = self._handle_for_wipe()
        if handle is not None and self.share is not None:
            try:
                self.share.destroy(handle)
            except HardwareShareError:
                pass  # erasing the wrapped key below already makes the master key unrecoverable
        self.area.erase()
        self._duress_set = None

    # Internals.

    def _check_strength(self, secret: str, what: str) -> None:
        unit = "characters" if self.share is None else "digits"
        if len(normalise_secret(secret)) < self.min_secret_length:
            raise WeakSecret(f"the {what} is too short: use at least {self.min_secret_length} {unit}")

    def _read_header(self) -> _Header:
        try:
            raw = self.area.header()
        except OSError as error:
            raise HeaderDamaged(f"the store's header cannot be read ({error.strerror or error})") from None
        if raw is None:
            raise NoStore(NO_STORE_MESSAGE)
        return _decode_header(raw)

    def _open(self, secret: str) -> _Opened:
        """Check ``secret`` against the header with throttling and counting (see :meth:`unlock`)."""
        normalise_secret(secret)  # TypeError before anything is counted
        header = self._read_header()
        if header.share is not None and self.share is None:
            kind = header.share["kind"]
            raise HardwareShareError(f"this store is protected by {kind}, but no {kind} is available: "
                                     "check the module is fitted")
        wait = self.wait_remaining()
        if wait > 0:
            raise Throttled(wait)
        previous = self.failures
        self._write_failures(previous + 1)  # before trying: cutting the power mid-check still counts
        try:
            opened = self._try(header, secret)
        except HardwareShareError:
            self._write_failures(previous)  # the hardware refused without judging the secret
            raise
        if opened is None:
            self._wrong_secret(header, secret, previous + 1)
        self._write_failures(0)
        self._duress_set = opened.duress_set
        return opened

    def _try(self, header: _Header, secret: str) -> _Opened | None:
        """The opened store for the right secret, None for a wrong one."""
        pin_key, auth = _secret_keys(secret, header.kdf)
        share = None
        if header.share is not None:
            try:
                share = self.share.read(header.share["handle"], auth)
            except PermissionError:
                return None
        kek = _kek(pin_key, share)
        try:
            plaintext = AESGCM(kek).decrypt(header.wrapped_key[:NONCE_BYTES], header.wrapped_key[NONCE_BYTES:],
                                            header.aad)
        except InvalidTag:
            return None
        return _Opened(header, plaintext[:KEY_BYTES], bool(plaintext[KEY_BYTES] & FLAG_DURESS_SET), kek)

    def _wrong_secret(self, header: _Header, secret: str, failures: int) -> NoReturn:
        self._last_failure = self._clock()
        if header.duress.matches(secret):
            self.wipe()
            raise NoStore(NO_STORE_MESSAGE)
        if failures >= self.max_failures:
            self.wipe()
            raise WipedAfterFailures(f"{failures} wrong PINs in a row: the store has been wiped; set the phone up again")
        raise WrongSecret(failures, delay_after(failures), self.max_failures - failures)

    def _install_header(self, secret: str, kdf: KdfParams, master_key: bytes, duress: _Duress, *,
                        duress_set: bool) -> None:
        """Write a header wrapping ``master_key`` under ``secret`` (and a new share, if any)."""
        pin_key, auth = _secret_keys(secret, kdf)
        share, share_meta = None, None
        if self.share is not None:
            share, handle = self.share.create(auth)
            share_meta = {"handle": handle, "kind": self.share.kind}
        metadata = _metadata(kdf, self.protection, share_meta, duress)
        self.area.put_header(_encode_header(metadata, master_key, duress_set, _kek(pin_key, share)))

    def _write_failures(self, failures: int) -> None:
        self.area.put_attempts(json.dumps({"failures": failures}).encode("ascii"))

    def _handle_for_wipe(self) -> dict | None:
        try:
            return self._read_header().share_handle
        except StoreError:  # NoStore, HeaderDamaged: nothing to find the share by
            return None
