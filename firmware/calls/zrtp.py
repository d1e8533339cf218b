"""ZRTP key agreement (RFC 6189) through bzrtp, and bzrtp's ZID cache held in memory only.

The only module of Byline that touches bzrtp (Debian libbzrtp0 5.1), and libsqlite3 for the
cache. Both through cffi in ABI mode: the declarations below are copied from
/usr/include/bzrtp/bzrtp.h (bctoolbox's mutex and RNG types are opaque; we pass NULL for them)
and from sqlite3.h.

Contract:

- :class:`ZidCache` is bzrtp's ZID cache (our ZID, and per peer the retained secrets and the
  "SAS verified" flag) as an in-memory SQLite database. It never touches the disk: the caller
  loads it from, and saves :meth:`ZidCache.serialize` into, the encrypted store.
- :class:`ZrtpSession` is one ZRTP stream (the audio stream of one call). Everything is
  synchronous, on the caller's thread: ``start``, ``receive`` and ``tick`` run bzrtp, which calls
  back into this module; those callbacks only queue. Packets to send and events are handed to
  ``send`` and ``on_event`` after bzrtp has returned, so both may do anything, ``close()``
  included. Exceptions raised by ``send`` or ``on_event`` are logged and swallowed.
- ``receive`` never raises for what the network sends: malformed packets are dropped (logged at
  debug level). A Hello that fails the hello-hash check is reported (ZrtpNotice) and the
  session fails (ZrtpFailed) unless a matching Hello follows within HELLO_MISMATCH_GRACE_MS.
- No key material (SRTP keys, salts, retained secrets) ever appears in a repr, a log line or an
  exception message. The SAS is not a secret, but it is only ever logged as "present".

What bzrtp 5.1 does, as measured (tests/test_zrtp.py):

- The role is settled by the Commit contention (RFC 6189 4.2): both ends send Commit, the one
  with the larger hvi becomes the initiator (random: about half the calls each way). Cipher,
  auth tag, hash and SAS rendering follow the initiator's order of preference among what both
  ends offer. The key agreement does not: each end picks its most preferred type among those
  both offer, and the faster of the two picks wins (DH2k < X255 < X448 < DH3k), whoever
  becomes the initiator. E.g. X255-first against X448-first gives X255; X448-first against
  DH3k-first gives X448.
- bzrtp always re-adds the mandatory algorithms (DH3k, AES1, HS32, HS80, S256, B32) to what is
  offered, and "Mult" (multistream) to the key agreements.
- bzrtp 5.1 has no GoClear support: :class:`ZrtpGoClear` is defined for the callers' sake and is
  never emitted by this version.
- bzrtp trusts what ZRTP does not authenticate. Three guards here (see ``receive``): bzrtp gets
  our own sequence numbers, a HelloACK is ignored until the peer's Hello is in, and a stalled
  handshake has its retransmissions restarted. Without them a single forged 28-byte HelloACK
  (the CRC is no secret) stalled the handshake for good.
- What remains (inherent to RFC 6189, measured): someone who sees the packets can stall the
  handshake by injecting a modified copy of a Commit or DHPart1 (their MACs can only be checked
  a message later); and without the peer's hello hash (no ``a=zrtp-hash`` in its SDP) anyone
  can stall it with a made-up Hello. None of this yields keys or a false SECURE: the session
  ends with ZrtpFailed("timeout").
"""

from __future__ import annotations

import itertools
import logging
import re
import struct
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import cffi

log = logging.getLogger(__name__)

BZRTP_LIBRARY = "libbzrtp.so.0"
SQLITE_LIBRARY = "libsqlite3.so.0"

_CDEF_BZRTP = """
typedef struct bctbx_mutex_opaque bctbx_mutex_t;
typedef struct bctbx_rng_context_struct bctbx_rng_context_t;

typedef struct bzrtpSrtpSecrets_struct  {
    uint8_t *selfSrtpKey;
    uint8_t selfSrtpKeyLength;
    uint8_t *selfSrtpSalt;
    uint8_t selfSrtpSaltLength;
    uint8_t *peerSrtpKey;
    uint8_t peerSrtpKeyLength;
    uint8_t *peerSrtpSalt;
    uint8_t peerSrtpSaltLength;
    uint8_t cipherAlgo;
    uint8_t cipherKeyLength;
    uint8_t authTagAlgo;
    char *sas;
    uint8_t sasLength;
    uint8_t hashAlgo;
    uint8_t keyAgreementAlgo;
    uint8_t sasAlgo;
    uint8_t cacheMismatch;
    uint8_t auxSecretMismatch;
} bzrtpSrtpSecrets_t;

typedef struct bzrtpCallbacks_struct {
    int (* bzrtp_statusMessage)(void *clientData, const uint8_t messageLevel, const uint8_t messageId, const char *messageString);
    int bzrtp_messageLevel;
    int (* bzrtp_sendData)(void *clientData, const uint8_t *packetString, uint16_t packetLength);
    int (* bzrtp_srtpSecretsAvailable)(void *clientData, const bzrtpSrtpSecrets_t *srtpSecrets, uint8_t part);
    int (* bzrtp_startSrtpSession)(void *clientData, const bzrtpSrtpSecrets_t *srtpSecrets, int32_t verified);
    int (* bzrtp_contextReadyForExportedKeys)(void *clientData, int zuid, uint8_t role);
} bzrtpCallbacks_t;

typedef struct bzrtpContext_struct bzrtpContext_t;

bzrtpContext_t *bzrtp_createBzrtpContext(void);
int bzrtp_initBzrtpContext(bzrtpContext_t *context, uint32_t selfSSRC);
int bzrtp_destroyBzrtpContext(bzrtpContext_t *context, uint32_t selfSSRC);
int bzrtp_setCallbacks(bzrtpContext_t *context, const bzrtpCallbacks_t *cbs);
int bzrtp_setZIDCache_lock(bzrtpContext_t *context, void *zidCache, const char *selfURI, const char *peerURI, bctbx_mutex_t *zidCacheMutex);
int bzrtp_setClientData(bzrtpContext_t *zrtpContext, uint32_t selfSSRC, void *clientData);
int bzrtp_startChannelEngine(bzrtpContext_t *zrtpContext, uint32_t selfSSRC);
int bzrtp_iterate(bzrtpContext_t *zrtpContext, uint32_t selfSSRC, uint64_t timeReference);
int bzrtp_processMessage(bzrtpContext_t *zrtpContext, uint32_t selfSSRC, uint8_t *zrtpPacketString, uint16_t zrtpPacketStringLength);
void bzrtp_SASVerified(bzrtpContext_t *zrtpContext);
void bzrtp_resetSASVerified(bzrtpContext_t *zrtpContext);
int bzrtp_resetRetransmissionTimer(bzrtpContext_t *zrtpContext, uint32_t selfSSRC);
uint8_t bzrtp_getSupportedCryptoTypes(bzrtpContext_t *zrtpContext, uint8_t algoType, uint8_t supportedTypes[7]);
void bzrtp_setSupportedCryptoTypes(bzrtpContext_t *zrtpContext, uint8_t algoType, uint8_t supportedTypes[7], uint8_t supportedTypesCount);
int bzrtp_setPeerHelloHash(bzrtpContext_t *zrtpContext, uint32_t selfSSRC, uint8_t *peerHelloHashHexString, size_t peerHelloHashHexStringLength);
int bzrtp_getSelfHelloHash(bzrtpContext_t *zrtpContext, uint32_t selfSSRC, uint8_t *output, size_t outputLength);
int bzrtp_getChannelStatus(bzrtpContext_t *zrtpContext, uint32_t selfSSRC);
int bzrtp_initCache_lock(void *db, bctbx_mutex_t *zidCacheMutex);
"""

_CDEF_SQLITE = """
typedef struct sqlite3 sqlite3;
typedef struct sqlite3_stmt sqlite3_stmt;
int sqlite3_open_v2(const char *filename, sqlite3 **ppDb, int flags, const char *zVfs);
int sqlite3_close(sqlite3 *db);
int sqlite3_deserialize(sqlite3 *db, const char *zSchema, unsigned char *pData, int64_t szDb, int64_t szBuf, unsigned mFlags);
unsigned char *sqlite3_serialize(sqlite3 *db, const char *zSchema, int64_t *piSize, unsigned int mFlags);
void *sqlite3_malloc64(uint64_t n);
void sqlite3_free(void *p);
const char *sqlite3_errmsg(sqlite3 *db);
int sqlite3_prepare_v2(sqlite3 *db, const char *zSql, int nByte, sqlite3_stmt **ppStmt, const char **pzTail);
int sqlite3_bind_blob(sqlite3_stmt *stmt, int i, const void *data, int n, void (*destructor)(void *));
int sqlite3_bind_text(sqlite3_stmt *stmt, int i, const char *text, int n, void (*destructor)(void *));
int sqlite3_step(sqlite3_stmt *stmt);
int sqlite3_column_int(sqlite3_stmt *stmt, int iCol);
const unsigned char *sqlite3_column_text(sqlite3_stmt *stmt, int iCol);
int sqlite3_finalize(sqlite3_stmt *stmt);
"""

_ffi = cffi.FFI()
_ffi.cdef(_CDEF_BZRTP)
_ffi.cdef(_CDEF_SQLITE)

# bzrtp.h constants.
_HASH_TYPE = 0x01
_CIPHER_TYPE = 0x02
_AUTHTAG_TYPE = 0x04
_KEYAGREEMENT_TYPE = 0x08
_SAS_TYPE = 0x10
_SECRETS_FOR_SENDER = 0x01
_SECRETS_FOR_RECEIVER = 0x02
_MESSAGE_ERROR = 0x00
_MESSAGE_WARNING = 0x01
_MESSAGE_LOG = 0x02
_MESSAGE_CACHEMISMATCH = 0x01
_MESSAGE_PEERVERSIONOBSOLETE = 0x02
_MESSAGE_PEERNOTBZRTP = 0x03
_ERROR_HELLOHASH_MISMATCH = 0x0080
_CHANNEL_SECURE = 0x1004
_CHANNEL_ERROR = 0x1008
_CACHE_SETUP = 0x2000
_CACHE_UPDATE = 0x2001

# sqlite3.h constants.
_SQLITE_OK = 0
_SQLITE_ROW = 100
_SQLITE_DONE = 101
_SQLITE_OPEN_READWRITE = 0x00000002
_SQLITE_OPEN_CREATE = 0x00000004
_SQLITE_OPEN_MEMORY = 0x00000080
_SQLITE_OPEN_FULLMUTEX = 0x00010000
_SQLITE_DESERIALIZE_FREEONCLOSE = 1
_SQLITE_DESERIALIZE_RESIZEABLE = 2
_SQLITE_TRANSIENT = _ffi.cast("void (*)(void *)", -1)
_SQLITE_HEADER = b"SQLite format 3\x00"

# RFC 6189 names <-> bzrtp constants. Only what bzrtp 5.1 implements may be asked for.
KEY_AGREEMENTS = {"DH2k": 0x41, "X255": 0x42, "X448": 0x44, "DH3k": 0x45}
CIPHERS = {"AES1": 0x21, "AES3": 0x23}
AUTH_TAGS = {"HS32": 0x31, "HS80": 0x32}
HASHES = {"S256": 0x11, "S384": 0x12}
SAS_TYPES = {"B32": 0x51, "B256": 0x52}
_NAMES = {value: name for table in (KEY_AGREEMENTS, CIPHERS, AUTH_TAGS, HASHES, SAS_TYPES)
          for name, value in table.items()}
_NAMES.update({0x13: "N256", 0x14: "N384", 0x22: "AES2", 0x24: "2FS1", 0x25: "2FS2", 0x26: "2FS3",
               0x33: "SK32", 0x34: "SK64", 0x43: "EC25", 0x46: "EC38", 0x47: "EC52",
               0x4E: "Prsh", 0x4F: "Mult"})

MAX_PACKET_BYTES = 3072
"""Larger datagrams are not ZRTP (the largest, a DH3k DHPart, is under 500 bytes)."""
MAX_CACHE_BYTES = 64 * 1024 * 1024
"""A serialized cache larger than this is refused (same limit as a store record)."""
DEFAULT_TIMEOUT_MS = 15_000
"""bzrtp gives up retransmitting Hello after ~4 s and later messages after ~9 s, silently:
without an answer by then the session reports ZrtpFailed("timeout")."""

STALL_MS = 1_500
"""With nothing accepted from the peer for this long, bzrtp's retransmissions are restarted."""
HELLO_MISMATCH_GRACE_MS = 2_000
"""After a Hello that fails the hello-hash check, how long a matching one may still come (the
peer resends its Hello every 50-200 ms) before the session fails with "hello-hash-mismatch"."""

_ZRTP_HEADER = struct.Struct(">BBHII")  # 0x10, 0x00, sequence, magic cookie "ZRTP", SSRC
_ZRTP_COOKIE = 0x5A525450
_MESSAGE_PREAMBLE = 0x505A
_HELLO_ZID_OFFSET = 12 + 4 + 8 + 4 + 16 + 32  # header, preamble+length, type, version, client, H3
_HELLO_HASH = re.compile(r"([0-9]\.[0-9]{1,2}) ([0-9a-fA-F]{64})")


class ZrtpError(Exception):
    """bzrtp or the cache failed, or a method was called in the wrong state. Never carries keys."""


# --- the libraries ------------------------------------------------------------------------

_load_lock = threading.Lock()
_bz = None
_sq = None


def _libs():
    """(bzrtp, sqlite3), loaded on first use; ZrtpError if a library is missing."""
    global _bz, _sq
    with _load_lock:
        if _bz is None:
            try:
                sq = _ffi.dlopen(SQLITE_LIBRARY)
                bz = _ffi.dlopen(BZRTP_LIBRARY)
            except OSError as error:
                raise ZrtpError(f"cannot load bzrtp or sqlite3 ({error}): install libbzrtp0 "
                                "and libsqlite3-0") from None
            _sq, _bz = sq, bz
    return _bz, _sq


def available() -> bool:
    """True if bzrtp and libsqlite3 can be loaded here."""
    try:
        _libs()
    except ZrtpError:
        return False
    return True


def supported_algorithms() -> dict[str, tuple[str, ...]]:
    """What this bzrtp offers by default, per kind ("key_agreements", "ciphers", "auth_tags",
    "hashes", "sas"), in its default order, by RFC 6189 name."""
    bz, _ = _libs()
    context = bz.bzrtp_createBzrtpContext()
    if context == _ffi.NULL:
        raise ZrtpError("bzrtp could not create a context")
    try:
        if bz.bzrtp_initBzrtpContext(context, 1) != 0:
            raise ZrtpError("bzrtp could not initialise a context")
        return {kind: _get_types(bz, context, algo_type)
                for kind, algo_type in (("key_agreements", _KEYAGREEMENT_TYPE),
                                        ("ciphers", _CIPHER_TYPE), ("auth_tags", _AUTHTAG_TYPE),
                                        ("hashes", _HASH_TYPE), ("sas", _SAS_TYPE))}
    finally:
        bz.bzrtp_destroyBzrtpContext(context, 1)


def _get_types(bz, context, algo_type: int) -> tuple[str, ...]:
    types = _ffi.new("uint8_t[7]")
    count = bz.bzrtp_getSupportedCryptoTypes(context, algo_type, types)
    return tuple(_name(types[i]) for i in range(min(count, 7)))


def _name(value: int) -> str:
    return _NAMES.get(value, f"0x{value:02x}")


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def zrtp_crc(packet_without_crc: bytes) -> bytes:
    """The 4-byte CRC that ends a ZRTP packet (RFC 6189 5.0: CRC-32C, RFC 3309), as sent."""
    return struct.pack("<I", _crc32c(packet_without_crc))


def is_zrtp(packet: bytes) -> bool:
    """Framing check (RFC 6189 5.0): header bits, magic cookie, message preamble, the length
    field against the datagram, and the CRC. Cheap enough for every datagram of a handshake."""
    if not 12 + 12 + 4 <= len(packet) <= MAX_PACKET_BYTES or len(packet) % 4:
        return False
    first, _, _, cookie, _ = _ZRTP_HEADER.unpack_from(packet)
    if first != 0x10 or cookie != _ZRTP_COOKIE:
        return False
    preamble, words = struct.unpack_from(">HH", packet, 12)
    if preamble != _MESSAGE_PREAMBLE or 12 + 4 * words + 4 != len(packet):
        return False
    return packet[-4:] == zrtp_crc(packet[:-4])


# --- the ZID cache ------------------------------------------------------------------------

class ZidCache:
    """bzrtp's ZID cache in an in-memory SQLite database; nothing of it touches the disk.

    ``ZidCache(None)`` makes a new, empty cache (bzrtp creates its schema and, at the first
    session, our ZID); ``ZidCache(data)`` loads one saved with :meth:`serialize`. ZrtpError if
    the data is not a usable cache. Sessions using the cache keep it open: :meth:`close` only
    marks it for closing until the last of them is closed.

    One cache serves any number of sessions and local URIs (bzrtp keys everything by our URI,
    the peer's URI and the peer's ZID). It is not locked: use it from one thread.
    """

    def __init__(self, data: bytes | None = None):
        _, sq = _libs()
        self._sq = sq
        self._users = 0
        self._closing = False
        holder = _ffi.new("sqlite3 **")
        flags = (_SQLITE_OPEN_READWRITE | _SQLITE_OPEN_CREATE | _SQLITE_OPEN_MEMORY
                 | _SQLITE_OPEN_FULLMUTEX)
        rc = sq.sqlite3_open_v2(b":memory:", holder, flags, _ffi.NULL)
        self._db = holder[0]
        if rc != _SQLITE_OK or self._db == _ffi.NULL:
            if self._db != _ffi.NULL:
                sq.sqlite3_close(self._db)
            raise ZrtpError(f"cannot open an in-memory database (sqlite error {rc})")
        self._finalizer = weakref.finalize(self, sq.sqlite3_close, self._db)
        try:
            # Sorts and temporary tables would otherwise spill into (plaintext) temporary files.
            self._execute(b"PRAGMA temp_store = MEMORY")
            self._execute(b"PRAGMA trusted_schema = OFF")
            if data is not None:
                self._load(bytes(data))
            bz, _ = _libs()
            rc = bz.bzrtp_initCache_lock(self._db, _ffi.NULL)
            if rc not in (0, _CACHE_SETUP, _CACHE_UPDATE):
                raise ZrtpError(f"bzrtp refused the ZID cache (error 0x{rc:04x})")
        except BaseException:
            self._finalizer()
            self._db = _ffi.NULL
            raise

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self._users} session(s)"
        return f"<ZidCache in memory, {state}>"

    @property
    def closed(self) -> bool:
        return self._db == _ffi.NULL or self._closing

    def serialize(self) -> bytes:
        """The whole database, for the caller to save in the encrypted store."""
        if self.closed:
            raise ZrtpError("the ZID cache is closed")
        size = _ffi.new("int64_t *")
        pointer = self._sq.sqlite3_serialize(self._db, b"main", size, 0)
        if pointer == _ffi.NULL:
            raise ZrtpError("sqlite could not serialize the ZID cache")
        try:
            return bytes(_ffi.buffer(pointer, size[0]))
        finally:
            self._sq.sqlite3_free(pointer)

    def close(self) -> None:
        """Close the database (once no session uses it any more). Idempotent."""
        self._closing = True
        if self._users == 0 and self._db != _ffi.NULL:
            self._finalizer()
            self._db = _ffi.NULL

    # Internal: sessions.

    def _acquire(self):
        if self.closed:
            raise ZrtpError("the ZID cache is closed")
        self._users += 1
        return self._db

    def _release(self) -> None:
        self._users -= 1
        if self._closing:
            self.close()

    def _has_secret(self, self_uri: bytes, peer_uri: bytes, peer_zid: bytes) -> bool:
        """True if the cache holds a retained secret (rs1) for this peer ZID and URI pair."""
        if self._db == _ffi.NULL:
            return False
        sql = (b"SELECT count(*) FROM ziduri JOIN zrtp ON zrtp.zuid = ziduri.zuid"
               b" WHERE ziduri.zid = ?1 AND ziduri.selfuri = ?2 AND ziduri.peeruri = ?3"
               b" AND zrtp.rs1 IS NOT NULL")
        try:
            rows = self._query(sql, (peer_zid, self_uri.decode("utf-8"), peer_uri.decode("utf-8")))
        except ZrtpError as error:
            log.warning("ZID cache lookup failed: %s", error)
            return False
        return bool(rows and int(rows[0]) > 0)

    def _load(self, data: bytes) -> None:
        if not data.startswith(_SQLITE_HEADER) or len(data) < 512:
            raise ZrtpError("not a ZID cache (no SQLite header)")
        if len(data) > MAX_CACHE_BYTES:
            raise ZrtpError(f"ZID cache too large ({len(data)} bytes)")
        if data[18:20] == b"\x02\x02":
            # A database last written in WAL mode: memdb cannot read it as such; the pages are
            # the same, only the header says WAL (the usual in-memory deserialize fix-up).
            data = data[:18] + b"\x01\x01" + data[20:]
        buffer = self._sq.sqlite3_malloc64(len(data))
        if buffer == _ffi.NULL:
            raise ZrtpError("out of memory loading the ZID cache")
        _ffi.memmove(buffer, data, len(data))
        rc = self._sq.sqlite3_deserialize(
            self._db, b"main", _ffi.cast("unsigned char *", buffer), len(data), len(data),
            _SQLITE_DESERIALIZE_FREEONCLOSE | _SQLITE_DESERIALIZE_RESIZEABLE)
        if rc != _SQLITE_OK:  # sqlite frees the buffer itself on failure (FREEONCLOSE)
            raise ZrtpError(f"sqlite could not load the ZID cache (error {rc})")
        result = self._query(b"PRAGMA quick_check", (), text=True)
        if result != ["ok"]:
            raise ZrtpError("the ZID cache is damaged (quick_check failed)")

    def _execute(self, sql: bytes) -> None:
        self._query(sql, ())

    def _query(self, sql: bytes, params: tuple, *, text: bool = False) -> list:
        """Run one statement; the first column of every row (int, or str if ``text``)."""
        sq = self._sq
        holder = _ffi.new("sqlite3_stmt **")
        rc = sq.sqlite3_prepare_v2(self._db, sql, len(sql), holder, _ffi.NULL)
        statement = holder[0]
        if rc != _SQLITE_OK:
            if statement != _ffi.NULL:
                sq.sqlite3_finalize(statement)
            raise ZrtpError(f"sqlite error {rc}: {self._errmsg()}")
        try:
            for index, value in enumerate(params, start=1):
                if isinstance(value, str):  # str binds as TEXT, bytes as BLOB
                    value = value.encode("utf-8")
                    rc = sq.sqlite3_bind_text(statement, index, value, len(value), _SQLITE_TRANSIENT)
                else:
                    rc = sq.sqlite3_bind_blob(statement, index, value, len(value), _SQLITE_TRANSIENT)
                if rc != _SQLITE_OK:
                    raise ZrtpError(f"sqlite bind error {rc}")
            rows: list = []
            while True:
                rc = sq.sqlite3_step(statement)
                if rc == _SQLITE_DONE:
                    return rows
                if rc != _SQLITE_ROW:
                    raise ZrtpError(f"sqlite error {rc}: {self._errmsg()}")
                if text:
                    value = sq.sqlite3_column_text(statement, 0)
                    rows.append(None if value == _ffi.NULL
                                else _ffi.string(value).decode("utf-8", "replace"))
                else:
                    rows.append(sq.sqlite3_column_int(statement, 0))
        finally:
            sq.sqlite3_finalize(statement)

    def _errmsg(self) -> str:
        message = self._sq.sqlite3_errmsg(self._db)
        return "?" if message == _ffi.NULL else _ffi.string(message).decode("utf-8", "replace")


# --- options and events -------------------------------------------------------------------

@dataclass(frozen=True)
class ZrtpOptions:
    """What we offer, most preferred first, by RFC 6189 name. bzrtp adds the mandatory
    algorithms (DH3k, AES1, HS32, HS80, S256, B32) whatever is given here. The initiator's order
    decides cipher, auth tag, hash and SAS; for the key agreement the faster of the two ends'
    first common choices wins (see the module docstring). ValueError for an unknown, repeated
    or missing name; TypeError for a bare string."""

    key_agreements: tuple[str, ...] = ("X255", "DH3k")
    ciphers: tuple[str, ...] = ("AES3", "AES1")
    auth_tags: tuple[str, ...] = ("HS80", "HS32")
    hashes: tuple[str, ...] = ("S384", "S256")
    sas: tuple[str, ...] = ("B32", "B256")

    def __post_init__(self):
        for kind, table in self._tables():
            names = getattr(self, kind)
            if isinstance(names, str):
                raise TypeError(f"ZrtpOptions.{kind} must be a sequence of names, not a string")
            names = tuple(names)
            object.__setattr__(self, kind, names)
            if not names:
                raise ValueError(f"ZrtpOptions.{kind} is empty")
            if len(set(names)) != len(names):
                raise ValueError(f"ZrtpOptions.{kind} repeats a name: {names}")
            unknown = [name for name in names if name not in table]
            if unknown:
                raise ValueError(f"ZrtpOptions.{kind}: unknown {unknown}; choose from {sorted(table)}")

    @staticmethod
    def _tables():
        return (("key_agreements", KEY_AGREEMENTS), ("ciphers", CIPHERS),
                ("auth_tags", AUTH_TAGS), ("hashes", HASHES), ("sas", SAS_TYPES))


DEFAULT_OPTIONS = ZrtpOptions()

_OPTION_TYPES = {"key_agreements": _KEYAGREEMENT_TYPE, "ciphers": _CIPHER_TYPE,
                 "auth_tags": _AUTHTAG_TYPE, "hashes": _HASH_TYPE, "sas": _SAS_TYPE}


@dataclass(frozen=True)
class ZrtpEvent:
    """Base of everything a session reports through ``on_event``."""


@dataclass(frozen=True)
class ZrtpSecure(ZrtpEvent):
    """The keys are agreed: show ``sas`` (B32: 4 characters; B256: two PGP words separated by
    a space) and whether it was verified on an earlier call (``sas_verified``).

    ``cache_mismatch``: the cache held a secret for this peer device (same ZID) and the peer
    did not know it: either the peer lost its cache or someone is in the middle. Treat the
    SAS as unverified and ask the user to compare it. ``known_peer``: the cache held a secret
    for this peer device (same ZID, same URIs) before this call. A peer that shows up with a
    new ZID (new device, reset cache) is an unknown peer, not a mismatch."""

    sas: str
    sas_verified: bool
    cache_mismatch: bool
    known_peer: bool
    cipher: str
    auth_tag: str
    key_agreement: str
    hash: str
    sas_type: str


@dataclass(frozen=True)
class ZrtpSrtpKeys(ZrtpEvent):
    """SRTP master keys and salts: ``self_*`` protect what we send, ``peer_*`` what we receive.
    Emitted once, just before :class:`ZrtpSecure`. The repr shows lengths only."""

    cipher: str
    auth_tag: str
    self_key: bytes = field(repr=False)
    self_salt: bytes = field(repr=False)
    peer_key: bytes = field(repr=False)
    peer_salt: bytes = field(repr=False)

    def __repr__(self) -> str:
        return (f"ZrtpSrtpKeys(cipher={self.cipher!r}, auth_tag={self.auth_tag!r}, "
                f"key={len(self.self_key)} bytes, salt={len(self.self_salt)} bytes, <hidden>)")


@dataclass(frozen=True)
class ZrtpCacheMismatch(ZrtpEvent):
    """bzrtp found that the peer device (same ZID) no longer shares our retained secret.
    Precedes ZrtpSecure(cache_mismatch=True)."""


@dataclass(frozen=True)
class ZrtpFailed(ZrtpEvent):
    """The handshake cannot succeed; the session stops (later packets are ignored).

    ``reason``: "hello-hash-mismatch" (the peer's Hello does not match the hash in its SDP: an
    attacker in the middle, or broken signalling), "hello-hash-invalid" (its SDP's zrtp-hash
    is malformed), "protocol-error" (bzrtp put the channel in error), "timeout" (no secure
    state within the session's timeout; a peer without ZRTP), "start-failed"."""

    reason: str


@dataclass(frozen=True)
class ZrtpGoClear(ZrtpEvent):
    """The peer asked to stop encrypting. Never emitted with bzrtp 5.1 (no GoClear support)."""


@dataclass(frozen=True)
class ZrtpNotice(ZrtpEvent):
    """Another status message from bzrtp: ``code`` is "peer-version-obsolete",
    "peer-not-bzrtp" or "bzrtp-<level>-<id>"; ``text`` is bzrtp's own message (no secrets)."""

    code: str
    text: str = ""


# --- sessions -----------------------------------------------------------------------------

_tokens = itertools.count(1)
_sessions: dict[int, weakref.ref] = {}
"""clientData token -> session: bzrtp's callbacks find their session here (a plain integer
travels through C, never a Python object)."""


def _session_for(client_data) -> ZrtpSession | None:
    reference = _sessions.get(int(_ffi.cast("uintptr_t", client_data)))
    return None if reference is None else reference()


def _callback(signature: str):
    """An ffi.callback that never lets an exception reach C (logged; bzrtp gets 0)."""

    def wrap(function):
        def guarded(*args):
            try:
                session = _session_for(args[0])
                if session is not None:
                    function(session, *args[1:])
            except Exception:  # nothing may unwind into C
                log.exception("ZRTP: error in a bzrtp callback (%s)", function.__name__)
            return 0

        guarded.__name__ = function.__name__
        return _ffi.callback(signature, guarded)

    return wrap


@_callback("int(void *, const uint8_t, const uint8_t, const char *)")
def _cb_status(session, level, message_id, text):
    session._status(level, message_id, None if text == _ffi.NULL else _ffi.string(text))


@_callback("int(void *, const uint8_t *, uint16_t)")
def _cb_send(session, data, length):
    session._queue_send(bytes(_ffi.buffer(data, length)))


@_callback("int(void *, const bzrtpSrtpSecrets_t *, uint8_t)")
def _cb_secrets(session, secrets, part):
    session._secrets(secrets, part)


@_callback("int(void *, const bzrtpSrtpSecrets_t *, int32_t)")
def _cb_start_srtp(session, secrets, verified):
    session._secure(secrets, verified)


class _Context:
    """The bzrtp context and its cache reference, freed exactly once (by close or the GC)."""

    def __init__(self, bz, token: int, ssrc: int, cache: ZidCache | None):
        self.bz = bz
        self.token = token
        self.ssrc = ssrc
        self.cache = cache
        self.pointer = _ffi.NULL

    def destroy(self) -> None:
        _sessions.pop(self.token, None)
        if self.pointer != _ffi.NULL:
            pointer, self.pointer = self.pointer, _ffi.NULL
            self.bz.bzrtp_destroyBzrtpContext(pointer, self.ssrc)
        if self.cache is not None:
            cache, self.cache = self.cache, None
            cache._release()


class ZrtpSession:
    """One ZRTP stream (RFC 6189) for the audio of one call, between ``self_uri`` and
    ``peer_uri`` (the SIP URIs, as bzrtp's cache keys), sent with our RTP ``ssrc``.

    ``send(packet)`` must put a fully framed ZRTP packet on the media socket, to the peer's
    RTP address. ``on_event(event)`` receives the :class:`ZrtpEvent` s. With ``cache`` None the
    session is cache-less: a fresh random ZID, no retained secrets, nothing remembered.
    ``timeout_ms`` (None: never) bounds the time from :meth:`start` to the secure state.

    Time is the caller's monotonic clock in milliseconds (``now_ms``), the same for every call.
    ZrtpError if bzrtp cannot set the session up or ``options`` asks for what it lacks.

    bzrtp keys its cache by the exact URI strings: pass them normalised (``sip:user@host``,
    no parameters, no display name) or a known peer looks new. Keep feeding ZRTP packets to
    :meth:`receive` after ZrtpSecure until the call ends: the responder must answer a repeated
    Confirm2 whose Conf2ACK was lost.
    """

    def __init__(self, cache: ZidCache | None, self_uri: str, peer_uri: str,
                 send: Callable[[bytes], None], on_event: Callable[[ZrtpEvent], None], *,
                 ssrc: int, options: ZrtpOptions = DEFAULT_OPTIONS,
                 timeout_ms: int | None = DEFAULT_TIMEOUT_MS):
        if not 0 <= ssrc <= 0xFFFFFFFF:
            raise ValueError("ssrc must be a 32-bit unsigned integer")
        self._self_uri = _uri_bytes(self_uri, "self_uri")
        self._peer_uri = _uri_bytes(peer_uri, "peer_uri")
        bz, _ = _libs()
        self._bz = bz
        self._send = send
        self._on_event = on_event
        self._ssrc = ssrc
        self.options = options
        self._timeout_ms = timeout_ms
        self._started_at: int | None = None
        self._outbox: list[tuple[str, object]] = []
        self._flushing = False
        self._done: str | None = None  # "secure" or "failed"
        self._keys: dict[str, bytes] = {}
        self._keys_sent = False
        self._peer_zid: bytes | None = None
        self._known_peer = False
        self._role: str | None = None
        self._mismatch_at: int | None = None
        self._rx_seq = 0
        self._progress_at = 0
        self._cache = cache
        self._hello_hash = ""

        token = next(_tokens)
        self._handle = _Context(bz, token, ssrc, None)
        self._finalizer = weakref.finalize(self, self._handle.destroy)
        try:
            self._setup(cache, token)
        except BaseException:
            self.close()
            raise

    def _setup(self, cache: ZidCache | None, token: int) -> None:
        bz = self._bz
        context = bz.bzrtp_createBzrtpContext()
        if context == _ffi.NULL:
            raise ZrtpError("bzrtp could not create a context")
        self._handle.pointer = context
        if bz.bzrtp_setCallbacks(context, _CALLBACKS) != 0:
            raise ZrtpError("bzrtp refused the callbacks")
        for kind, algo_type in _OPTION_TYPES.items():
            names = getattr(self.options, kind)
            table = dict(ZrtpOptions._tables())[kind]
            wanted = _ffi.new("uint8_t[7]", [table[name] for name in names])
            bz.bzrtp_setSupportedCryptoTypes(context, algo_type, wanted, len(names))
            offered = _get_types(bz, context, algo_type)
            missing = [name for name in names if name not in offered]
            if missing:
                raise ZrtpError(f"this bzrtp does not support {kind} {missing}")
        if cache is not None:
            db = cache._acquire()
            self._handle.cache = cache
            rc = bz.bzrtp_setZIDCache_lock(context, db, self._self_uri, self._peer_uri, _ffi.NULL)
            if rc not in (0, _CACHE_SETUP):
                raise ZrtpError(f"bzrtp refused the ZID cache (error 0x{rc:04x})")
        if bz.bzrtp_initBzrtpContext(context, self._ssrc) != 0:
            raise ZrtpError("bzrtp could not initialise the context")
        _sessions[token] = weakref.ref(self)
        if bz.bzrtp_setClientData(context, self._ssrc, _ffi.cast("void *", token)) != 0:
            raise ZrtpError("bzrtp refused the client data")
        output = _ffi.new("uint8_t[]", 128)
        if bz.bzrtp_getSelfHelloHash(context, self._ssrc, output, 128) != 0:
            raise ZrtpError("bzrtp gave no hello hash")
        self._hello_hash = _ffi.string(_ffi.cast("char *", output)).decode("ascii")

    def __repr__(self) -> str:
        state = ("closed" if self.closed else self._done
                 or ("started" if self._started_at is not None else "new"))
        return f"<ZrtpSession ssrc=0x{self._ssrc:08x} {state}>"

    # The caller's side.

    @property
    def closed(self) -> bool:
        return self._handle.pointer == _ffi.NULL

    @property
    def secure(self) -> bool:
        """True once ZrtpSecure has been reported."""
        return self._done == "secure"

    @property
    def peer_zid(self) -> str | None:
        """The peer's ZID (24 hex digits), from the first Hello that bzrtp accepted; else None."""
        return None if self._peer_zid is None else self._peer_zid.hex()

    @property
    def role(self) -> str | None:
        """"initiator" or "responder" once the Commit contention settled it (known when
        ZrtpSecure is reported); None before. The initiator's preferences won."""
        return self._role

    def hello_hash(self) -> str:
        """Our Hello hash for the SDP ``a=zrtp-hash:`` attribute: "1.10 " + 64 hex digits."""
        return self._hello_hash

    def set_peer_hello_hash(self, value: str) -> None:
        """The peer's ``a=zrtp-hash:`` value, whole ("1.10 <64 hex digits>"). Call it before
        :meth:`start`, as soon as the peer's SDP is known: without it, bzrtp takes the first
        well-formed Hello, whoever sent it.

        A Hello that does not match is dropped and reported (ZrtpNotice("hello-hash-mismatch"));
        unless a matching one follows within HELLO_MISMATCH_GRACE_MS the session fails with
        ZrtpFailed("hello-hash-mismatch"). If bzrtp already took a Hello that does not match,
        the session fails at once. A value not of that form (the peer's SDP is not ours to
        trust) fails the session with ZrtpFailed("hello-hash-invalid"): never an exception."""
        match = _HELLO_HASH.fullmatch(value.strip()) if isinstance(value, str) else None
        if match is None:
            if self._usable():
                log.warning("ZRTP: the peer's zrtp-hash is not 'VERSION HEX64'")
                self._fail("hello-hash-invalid")
                self._flush()
            return
        if self._usable():
            text = f"{match.group(1)} {match.group(2).lower()}".encode("ascii")
            buffer = _ffi.new("uint8_t[]", text + b"\x00")
            rc = self._call(self._bz.bzrtp_setPeerHelloHash, buffer, len(text))
            if rc == _ERROR_HELLOHASH_MISMATCH:
                self._fail("hello-hash-mismatch")
            elif rc != 0:
                log.warning("ZRTP: bzrtp refused the peer hello hash (0x%04x)", rc)
            self._flush()

    def start(self, now_ms: int) -> None:
        """Start the handshake: sends our Hello (through ``send``) and arms the timers."""
        if not self._usable() or self._started_at is not None:
            return
        self._started_at = self._progress_at = now_ms
        rc = self._call(self._bz.bzrtp_startChannelEngine)
        if rc != 0:
            log.warning("ZRTP: bzrtp could not start the channel (0x%04x)", rc)
            self._fail("start-failed")
        else:
            self._call(self._bz.bzrtp_iterate, _time(now_ms))  # the first Hello goes now
        self._flush()

    def receive(self, packet: bytes, now_ms: int) -> None:
        """An incoming datagram the caller took for ZRTP. Anything that is not a well-framed
        ZRTP packet (see :func:`is_zrtp`) is dropped; bzrtp drops the rest of what it does
        not like. Never raises for the packet's content."""
        if not self._usable():
            return
        try:
            packet = bytes(packet)
        except TypeError:
            return
        if not is_zrtp(packet):
            log.debug("ZRTP: dropped a %d-byte datagram that is not a ZRTP packet", len(packet))
            return
        if self._peer_zid is None and packet[16:24] == b"HelloACK":
            # A HelloACK carries nothing to check. Taken before the peer's Hello, a forged one
            # stops our Hello retransmissions while the peer may not have our Hello yet, and
            # the handshake deadlocks (measured). The peer acknowledges our next Hello again.
            log.debug("ZRTP: HelloACK before the peer's Hello, ignored")
            return
        hello_zid = None
        known = False
        if (self._peer_zid is None and packet[16:24] == b"Hello   "
                and len(packet) >= _HELLO_ZID_OFFSET + 12 + 4):
            # Whether the cache knows this peer device must be read before bzrtp takes the
            # Hello (it creates the peer's cache entry as it does).
            hello_zid = packet[_HELLO_ZID_OFFSET:_HELLO_ZID_OFFSET + 12]
            if self._cache is not None:
                known = self._cache._has_secret(self._self_uri, self._peer_uri, hello_zid)
        # bzrtp drops a packet whose sequence number is not above that of the last packet it
        # accepted, and the sequence number is not authenticated (nor is a HelloACK, and the CRC
        # is no secret): one forged HelloACK with sequence number 0xFFFF stalled the handshake
        # for good. bzrtp gets our own count of accepted packets instead; ZRTP's security rests
        # on its hash chain and MACs, not on that number.
        seq = min(self._rx_seq + 1, 0xFFFF)
        packet = packet[:2] + seq.to_bytes(2, "big") + packet[4:-4]
        packet += zrtp_crc(packet)
        self._call(self._bz.bzrtp_iterate, _time(now_ms))
        buffer = _ffi.new("uint8_t[]", packet)  # bzrtp may write into it: always a copy
        rc = self._call(self._bz.bzrtp_processMessage, buffer, len(packet))
        if rc == 0:
            self._rx_seq = seq
            self._progress_at = now_ms
        if rc == 0 and hello_zid is not None and self._peer_zid is None:
            self._peer_zid = hello_zid
            self._known_peer = known
        elif rc == _ERROR_HELLOHASH_MISMATCH:
            # bzrtp drops that Hello and waits for another: it may be a forgery injected by
            # anyone who can reach our port, while the real Hello is on its way. Fail only if no
            # matching Hello follows within the grace period (see _check).
            if self._mismatch_at is None:
                self._mismatch_at = now_ms
                log.warning("ZRTP: a Hello does not match the peer's hello hash")
                self._outbox.append(("event", ZrtpNotice("hello-hash-mismatch")))
        elif rc != 0:
            log.debug("ZRTP: bzrtp dropped a %s packet (0x%04x)", _message_type(packet), rc)
        self._check(now_ms)
        self._flush()

    def tick(self, now_ms: int) -> None:
        """Let bzrtp retransmit what is due; call every 10-20 ms while the handshake runs
        (it costs nothing once secure)."""
        if not self._usable():
            return
        if self._done is None and self._started_at is not None:
            self._call(self._bz.bzrtp_iterate, _time(now_ms))
            self._check(now_ms)
        self._flush()

    def set_sas_verified(self, verified: bool) -> None:
        """The user compared the SAS with the peer (True) or found it different / withdrew the
        verification (False). Stored in the ZID cache for later calls with this peer device.
        ZrtpError before the session is secure."""
        if self.closed or self._done != "secure":
            raise ZrtpError("the SAS can only be (un)verified on a secure session")
        if verified:
            self._call(self._bz.bzrtp_SASVerified, ssrc=False)
        else:
            self._call(self._bz.bzrtp_resetSASVerified, ssrc=False)
        self._flush()

    def close(self) -> None:
        """Destroy the bzrtp context (the keys it holds go with it). Idempotent; later calls
        to start/receive/tick are ignored."""
        self._outbox.clear()
        self._keys.clear()
        self._finalizer()

    # Internal.

    def _usable(self) -> bool:
        return not self.closed and self._done in (None, "secure")

    def _call(self, function, *args, ssrc: bool = True):
        """Call bzrtp. Its callbacks only queue, so no caller code runs inside C and nothing
        can close the context under bzrtp's feet."""
        if ssrc:
            return function(self._handle.pointer, self._ssrc, *args)
        return function(self._handle.pointer, *args)

    def _check(self, now_ms: int) -> None:
        """After bzrtp ran: report an error or a timeout; restart a stalled handshake."""
        if self._done is not None or self.closed or self._started_at is None:
            return
        status = self._bz.bzrtp_getChannelStatus(self._handle.pointer, self._ssrc)
        if status == _CHANNEL_SECURE:
            return
        if status == _CHANNEL_ERROR:
            self._fail("protocol-error")
        elif (self._mismatch_at is not None and self._peer_zid is None
              and now_ms - self._mismatch_at >= HELLO_MISMATCH_GRACE_MS):
            self._fail("hello-hash-mismatch")
        elif self._timeout_ms is not None and now_ms - self._started_at >= self._timeout_ms:
            self._fail("timeout")
        elif now_ms - self._progress_at >= STALL_MS:
            # Nothing accepted for a while: bzrtp may have given up retransmitting (it does
            # after ~4 s of Hellos), or a forged HelloACK stopped our Hellos before the peer
            # had one. Restart its retransmissions; the timeout bounds the whole.
            self._progress_at = now_ms
            log.debug("ZRTP: handshake stalled, retransmitting")
            self._call(self._bz.bzrtp_resetRetransmissionTimer)
            self._call(self._bz.bzrtp_iterate, _time(now_ms))

    def _fail(self, reason: str) -> None:
        if self._done is None:
            self._done = "failed"
            log.warning("ZRTP: handshake failed (%s)", reason)
            self._outbox.append(("event", ZrtpFailed(reason)))

    def _flush(self) -> None:
        """Hand queued packets and events to the caller, in order, outside of bzrtp."""
        if self._flushing:
            return  # a send/on_event that re-entered us: the outer loop carries on
        self._flushing = True
        try:
            while self._outbox and not self.closed:
                kind, item = self._outbox.pop(0)
                try:
                    if kind == "send":
                        self._send(item)
                    else:
                        self._on_event(item)
                except Exception:  # the caller's bug must not stop the session
                    log.exception("ZRTP: the %s handler raised (%s)", kind, type(item).__name__)
        finally:
            self._flushing = False

    # From bzrtp's callbacks (inside C: queue only).

    def _queue_send(self, packet: bytes) -> None:
        kind = packet[16:24]
        if kind == b"Confirm1":  # RFC 6189: the responder sends Confirm1, the initiator Confirm2
            self._role = "responder"
        elif kind == b"Confirm2":
            self._role = "initiator"
        self._outbox.append(("send", packet))

    def _status(self, level: int, message_id: int, text: bytes | None) -> None:
        # The text may quote the peer (its client identifier): printable characters only.
        message = "" if text is None else "".join(
            char if char.isprintable() else "?" for char in text.decode("utf-8", "replace"))[:80]
        if message_id == _MESSAGE_CACHEMISMATCH and level == _MESSAGE_ERROR:
            log.warning("ZRTP: cache mismatch with the peer")
            self._outbox.append(("event", ZrtpCacheMismatch()))
        elif message_id == _MESSAGE_PEERVERSIONOBSOLETE:
            self._outbox.append(("event", ZrtpNotice("peer-version-obsolete", message)))
        elif message_id == _MESSAGE_PEERNOTBZRTP:
            self._outbox.append(("event", ZrtpNotice("peer-not-bzrtp", message)))
        elif level <= _MESSAGE_WARNING:
            self._outbox.append(("event", ZrtpNotice(f"bzrtp-{level}-{message_id}", message)))
        else:
            log.debug("ZRTP: bzrtp says (%d, %d) %s", level, message_id, message)

    def _secrets(self, secrets, part: int) -> None:
        if part & _SECRETS_FOR_SENDER:
            self._keys["self_key"] = _bytes(secrets.selfSrtpKey, secrets.selfSrtpKeyLength)
            self._keys["self_salt"] = _bytes(secrets.selfSrtpSalt, secrets.selfSrtpSaltLength)
        if part & _SECRETS_FOR_RECEIVER:
            self._keys["peer_key"] = _bytes(secrets.peerSrtpKey, secrets.peerSrtpKeyLength)
            self._keys["peer_salt"] = _bytes(secrets.peerSrtpSalt, secrets.peerSrtpSaltLength)
        self._emit_keys(secrets)

    def _emit_keys(self, secrets) -> None:
        names = ("self_key", "self_salt", "peer_key", "peer_salt")
        if self._keys_sent or not all(self._keys.get(name) for name in names):
            return
        self._keys_sent = True
        self._outbox.append(("event", ZrtpSrtpKeys(
            _name(secrets.cipherAlgo), _name(secrets.authTagAlgo),
            **{name: self._keys[name] for name in names})))
        self._keys.clear()

    def _secure(self, secrets, verified: int) -> None:
        if self._done is not None:
            return
        if not self._keys_sent:
            self._secrets(secrets, _SECRETS_FOR_SENDER | _SECRETS_FOR_RECEIVER)
        if not self._keys_sent:
            log.error("ZRTP: secure without SRTP keys")
            self._fail("protocol-error")
            return
        sas = "" if secrets.sas == _ffi.NULL else _ffi.string(secrets.sas).decode("ascii", "replace")
        sas_type = _name(secrets.sasAlgo)
        if sas_type == "B256":
            sas = " ".join(word for word in re.split(r"[:\s]+", sas) if word)
        self._done = "secure"
        event = ZrtpSecure(sas=sas, sas_verified=bool(verified),
                           cache_mismatch=bool(secrets.cacheMismatch),
                           known_peer=self._known_peer, cipher=_name(secrets.cipherAlgo),
                           auth_tag=_name(secrets.authTagAlgo),
                           key_agreement=_name(secrets.keyAgreementAlgo),
                           hash=_name(secrets.hashAlgo), sas_type=sas_type)
        log.info("ZRTP: secure (%s/%s/%s/%s/%s, SAS present, verified=%s, mismatch=%s, known=%s)",
                 event.key_agreement, event.cipher, event.auth_tag, event.hash, sas_type,
                 event.sas_verified, event.cache_mismatch, event.known_peer)
        self._outbox.append(("event", event))


def _bytes(pointer, length: int) -> bytes:
    if pointer == _ffi.NULL or length == 0:
        return b""
    return bytes(_ffi.buffer(pointer, length))


def _time(now_ms: int) -> int:
    return max(0, int(now_ms))


def _message_type(packet: bytes) -> str:
    return packet[16:24].decode("ascii", "replace").strip() or "?"


def _uri_bytes(uri: str, what: str) -> bytes:
    if not isinstance(uri, str) or not uri or "\x00" in uri:
        raise ValueError(f"{what} must be a non-empty string without NUL")
    return uri.encode("utf-8")


_CALLBACKS = _ffi.new("bzrtpCallbacks_t *")
_CALLBACKS.bzrtp_statusMessage = _cb_status
_CALLBACKS.bzrtp_messageLevel = _MESSAGE_LOG
_CALLBACKS.bzrtp_sendData = _cb_send
_CALLBACKS.bzrtp_srtpSecretsAvailable = _cb_secrets
_CALLBACKS.bzrtp_startSrtpSession = _cb_start_srtp
# contextReadyForExportedKeys stays NULL: we export no keys.
