"""SRTP and SRTCP (RFC 3711) with libsrtp2: the only module of Byline that touches libsrtp2.

ZRTP (``zrtp``) agrees the keys; this module protects the media with them. One
``SrtpSession`` per call holds two libsrtp sessions: one that protects what we send (policy
``ssrc_any_outbound``, keyed with *our* master key and salt) and one that unprotects what the
peer sends (``ssrc_any_inbound``, keyed with the *peer's*). Each covers SRTP and SRTCP.

Binding: cffi in ABI mode against Debian's ``libsrtp2.so.1`` (2.5.0). The declarations below are
copied from ``/usr/include/srtp2/srtp.h`` with every member of ``srtp_policy_t``,
``srtp_crypto_policy_t`` and ``srtp_ssrc_t`` in the header's order (ABI mode cannot check a
layout against the header: a member missing or out of order silently shifts every later one;
the key pointer would then be read from the wrong place). Crypto policies are filled by the
library's own setters (``srtp_crypto_policy_set_aes_cm_*``), never by hand, except for the one
documented change of the SRTCP tag length (``srtcp_tag_32``).

Profiles: AES-CM with a 128- or 256-bit key (RFC 3711, RFC 6188), HMAC-SHA1 with an 80- or
32-bit tag, which is what ZRTP negotiates (cipher ``AES1``/``AES3``, auth ``HS80``/``HS32``).
As RFC 4568 and libsrtp's ``*_32`` profiles have it, SRTCP keeps an 80-bit tag even when SRTP
uses 32 bits; ``srtcp_tag_32`` changes that for Linphone (see ``SrtpSession``).

Secrets: master keys and salts never appear in a repr, a log line or an exception message.
They are copied into a C buffer only for the duration of ``srtp_create`` (libsrtp derives its
session keys from them and keeps no pointer to the buffer), and that buffer is zeroed right
after. Python ``bytes`` cannot be wiped: callers should drop their ``SrtpKey`` objects once the
session exists.

Errors: ``SrtpError`` whose ``reason`` is a short code: ``auth_fail`` (the tag does not match:
tampered, wrong key or not SRTP at all), ``replay_fail`` (a packet index already seen, or too
old for the replay window; also raised by ``protect_rtp`` for a sequence number already
protected, because reusing an index would reuse keystream), ``bad_packet`` (too short, not
RTP/RTCP version 2, a header longer than the packet), ``cant_check`` (an SRTCP packet with its
E flag clear, i.e. sent unencrypted: refused, since our policy requires encryption and a peer
must not downgrade it), ``closed``, or the libsrtp status name
without its prefix for anything else (``key_expired``, ``cipher_fail``...). ``ValueError`` and
``TypeError`` are for wrong arguments (key sizes, profile names, non-bytes packets).

Thread safety: ``srtp_init`` runs once per process under a lock. A session may be used from
several threads: each direction has its own lock (libsrtp contexts are not thread-safe).
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, field
from typing import Self

from cffi import FFI

__all__ = ["SrtpError", "SrtpKey", "SrtpProfile", "SrtpSession", "libsrtp_version", "profile_for"]

_CDEF = """
typedef uint32_t srtp_cipher_type_id_t;
typedef uint32_t srtp_auth_type_id_t;

typedef enum {
    srtp_err_status_ok = 0,
    srtp_err_status_fail = 1,
    srtp_err_status_bad_param = 2,
    srtp_err_status_alloc_fail = 3,
    srtp_err_status_dealloc_fail = 4,
    srtp_err_status_init_fail = 5,
    srtp_err_status_terminus = 6,
    srtp_err_status_auth_fail = 7,
    srtp_err_status_cipher_fail = 8,
    srtp_err_status_replay_fail = 9,
    srtp_err_status_replay_old = 10,
    srtp_err_status_algo_fail = 11,
    srtp_err_status_no_such_op = 12,
    srtp_err_status_no_ctx = 13,
    srtp_err_status_cant_check = 14,
    srtp_err_status_key_expired = 15,
    srtp_err_status_socket_err = 16,
    srtp_err_status_signal_err = 17,
    srtp_err_status_nonce_bad = 18,
    srtp_err_status_read_fail = 19,
    srtp_err_status_write_fail = 20,
    srtp_err_status_parse_err = 21,
    srtp_err_status_encode_err = 22,
    srtp_err_status_semaphore_err = 23,
    srtp_err_status_pfkey_err = 24,
    srtp_err_status_bad_mki = 25,
    srtp_err_status_pkt_idx_old = 26,
    srtp_err_status_pkt_idx_adv = 27
} srtp_err_status_t;

typedef struct srtp_ctx_t_ srtp_ctx_t;
typedef srtp_ctx_t *srtp_t;

typedef enum {
    sec_serv_none = 0,
    sec_serv_conf = 1,
    sec_serv_auth = 2,
    sec_serv_conf_and_auth = 3
} srtp_sec_serv_t;

typedef struct srtp_crypto_policy_t {
    srtp_cipher_type_id_t cipher_type;
    int cipher_key_len;
    srtp_auth_type_id_t auth_type;
    int auth_key_len;
    int auth_tag_len;
    srtp_sec_serv_t sec_serv;
} srtp_crypto_policy_t;

typedef enum {
    ssrc_undefined = 0,
    ssrc_specific = 1,
    ssrc_any_inbound = 2,
    ssrc_any_outbound = 3
} srtp_ssrc_type_t;

typedef struct {
    srtp_ssrc_type_t type;
    unsigned int value;
} srtp_ssrc_t;

typedef struct srtp_master_key_t {
    unsigned char *key;
    unsigned char *mki_id;
    unsigned int mki_size;
} srtp_master_key_t;

typedef struct srtp_policy_t {
    srtp_ssrc_t ssrc;
    srtp_crypto_policy_t rtp;
    srtp_crypto_policy_t rtcp;
    unsigned char *key;
    srtp_master_key_t **keys;
    unsigned long num_master_keys;
    void *deprecated_ekt;
    unsigned long window_size;
    int allow_repeat_tx;
    int *enc_xtn_hdr;
    int enc_xtn_hdr_count;
    struct srtp_policy_t *next;
} srtp_policy_t;

srtp_err_status_t srtp_init(void);
srtp_err_status_t srtp_create(srtp_t *session, const srtp_policy_t *policy);
srtp_err_status_t srtp_dealloc(srtp_t s);
srtp_err_status_t srtp_protect(srtp_t ctx, void *rtp_hdr, int *len_ptr);
srtp_err_status_t srtp_unprotect(srtp_t ctx, void *srtp_hdr, int *len_ptr);
srtp_err_status_t srtp_protect_rtcp(srtp_t ctx, void *rtcp_hdr, int *pkt_octet_len);
srtp_err_status_t srtp_unprotect_rtcp(srtp_t ctx, void *srtcp_hdr, int *pkt_octet_len);

void srtp_crypto_policy_set_rtp_default(srtp_crypto_policy_t *p);
void srtp_crypto_policy_set_aes_cm_128_hmac_sha1_32(srtp_crypto_policy_t *p);
void srtp_crypto_policy_set_aes_cm_256_hmac_sha1_80(srtp_crypto_policy_t *p);
void srtp_crypto_policy_set_aes_cm_256_hmac_sha1_32(srtp_crypto_policy_t *p);

const char *srtp_get_version_string(void);
"""

ffi = FFI()
ffi.cdef(_CDEF)
_lib = ffi.dlopen("libsrtp2.so.1")

#: Room libsrtp may append to a packet: the longest tag plus the longest MKI (srtp.h).
SRTP_MAX_TRAILER_LEN = 16 + 128
#: The largest packet accepted (a UDP datagram's payload cannot be larger).
MAX_PACKET_LEN = 65_507

_RTP_HEADER_LEN = 12
_RTCP_HEADER_LEN = 8
_SRTCP_INDEX_LEN = 4
_STATUS_OK = 0
_STATUS_AUTH_FAIL = 7
_STATUS_REPLAY = (9, 10)  # replay_fail, replay_old
_STATUS_BAD_PACKET = (2, 21)  # bad_param (how 2.5 reports a malformed header), parse_err

_init_lock = threading.Lock()
_initialised = False


class SrtpError(Exception):
    """A packet was refused, or libsrtp failed. ``reason`` is a short code (module docstring).

    The message is the code alone: never a key, never packet contents.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _status_name(status: int) -> str:
    if status == _STATUS_AUTH_FAIL:
        return "auth_fail"
    if status in _STATUS_REPLAY:
        return "replay_fail"
    if status in _STATUS_BAD_PACKET:
        return "bad_packet"
    name = str(ffi.string(ffi.cast("srtp_err_status_t", status)))  # a number if not in the enum
    return name.removeprefix("srtp_err_status_") if not name.lstrip("-").isdigit() else f"status_{name}"


def _ensure_init() -> None:
    """``srtp_init`` once per process (it registers the ciphers and auth functions)."""
    global _initialised
    if _initialised:
        return
    with _init_lock:
        if not _initialised:
            status = _lib.srtp_init()
            if status != _STATUS_OK:
                raise SrtpError(_status_name(status))
            _initialised = True


def libsrtp_version() -> str:
    """The libsrtp version string, e.g. ``"libsrtp2 2.5.0"``."""
    return ffi.string(_lib.srtp_get_version_string()).decode("ascii", "replace")


class SrtpProfile(enum.Enum):
    """The SRTP protection profiles ZRTP can agree: AES-CM key size x HMAC-SHA1 SRTP tag size."""

    AES128_HMAC_SHA1_80 = ("aes_cm_128_hmac_sha1_80", 16, 10)
    AES128_HMAC_SHA1_32 = ("aes_cm_128_hmac_sha1_32", 16, 4)
    AES256_HMAC_SHA1_80 = ("aes_cm_256_hmac_sha1_80", 32, 10)
    AES256_HMAC_SHA1_32 = ("aes_cm_256_hmac_sha1_32", 32, 4)

    @property
    def key_length(self) -> int:
        """Master key length in bytes (16 or 32)."""
        return self.value[1]

    @property
    def salt_length(self) -> int:
        """Master salt length in bytes (always 14 for AES-CM)."""
        return 14

    @property
    def rtp_tag_length(self) -> int:
        """SRTP authentication tag length in bytes (10 or 4)."""
        return self.value[2]

    @property
    def rtcp_tag_length(self) -> int:
        """SRTCP tag length in bytes by RFC 4568 and libsrtp: 10, for the _32 profiles too."""
        return 10

    def _set_policy(self, policy) -> None:
        setter = {
            "aes_cm_128_hmac_sha1_80": _lib.srtp_crypto_policy_set_rtp_default,
            "aes_cm_128_hmac_sha1_32": _lib.srtp_crypto_policy_set_aes_cm_128_hmac_sha1_32,
            "aes_cm_256_hmac_sha1_80": _lib.srtp_crypto_policy_set_aes_cm_256_hmac_sha1_80,
            "aes_cm_256_hmac_sha1_32": _lib.srtp_crypto_policy_set_aes_cm_256_hmac_sha1_32,
        }[self.value[0]]
        setter(policy)

    def _set_rtcp_policy(self, policy) -> None:
        # RFC 4568 / libsrtp (srtp_crypto_policy_set_from_profile_for_rtcp): 80-bit SRTCP tags.
        if self.key_length == 16:
            _lib.srtp_crypto_policy_set_rtp_default(policy)
        else:
            _lib.srtp_crypto_policy_set_aes_cm_256_hmac_sha1_80(policy)


_ZRTP_CIPHERS = {"AES1": 16, "AES3": 32}
_ZRTP_AUTHS = {"HS80": 80, "HS32": 32}


def profile_for(cipher: str, auth: str) -> SrtpProfile:
    """The profile for a ZRTP cipher (``AES1``, ``AES3``) and SRTP auth tag type (``HS32``, ``HS80``).

    Other names (``2FS3``, ``SK32``...) raise ``ValueError``: we do not offer them.
    """
    try:
        key = _ZRTP_CIPHERS[cipher]
        tag = _ZRTP_AUTHS[auth]
    except (KeyError, TypeError):
        raise ValueError(f"no SRTP profile for ZRTP cipher {cipher!r} with auth {auth!r}") from None
    return SrtpProfile[f"AES{key * 8}_HMAC_SHA1_{tag}"]


@dataclass(frozen=True, eq=False)
class SrtpKey:
    """One direction's SRTP master key and master salt (as ZRTP exports them).

    The lengths are checked here against AES-CM (16 or 32-byte key, 14-byte salt) and against
    the session's profile when the session is made (``check``). The repr shows neither value.
    ``eq=False``: keys compare by identity, so nobody compares secrets with ``==`` (not
    constant time).
    """

    master_key: bytes = field(repr=False)
    master_salt: bytes = field(repr=False)

    def __post_init__(self):
        for name in ("master_key", "master_salt"):
            value = getattr(self, name)
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise TypeError(f"SrtpKey.{name} must be bytes, not {type(value).__name__}")
            object.__setattr__(self, name, bytes(value))
        if len(self.master_key) not in (16, 32):
            raise ValueError(f"SRTP master key must be 16 or 32 bytes, not {len(self.master_key)}")
        if len(self.master_salt) != 14:
            raise ValueError(f"SRTP master salt must be 14 bytes, not {len(self.master_salt)}")

    @classmethod
    def from_material(cls, profile: SrtpProfile, material: bytes) -> SrtpKey:
        """Split ``key || salt`` (the SDES / libsrtp layout) for ``profile``."""
        material = bytes(material)
        need = profile.key_length + profile.salt_length
        if len(material) != need:
            raise ValueError(f"{profile.name} key material must be {need} bytes, not {len(material)}")
        return cls(material[: profile.key_length], material[profile.key_length :])

    def check(self, profile: SrtpProfile) -> None:
        """Raise ``ValueError`` unless the lengths are those of ``profile``."""
        if len(self.master_key) != profile.key_length:
            raise ValueError(
                f"{profile.name} needs a {profile.key_length}-byte master key, not {len(self.master_key)}"
            )
        if len(self.master_salt) != profile.salt_length:
            raise ValueError(
                f"{profile.name} needs a {profile.salt_length}-byte master salt, not {len(self.master_salt)}"
            )


def _bytes_of(packet) -> bytes:
    if isinstance(packet, bytes):
        return packet
    if isinstance(packet, (bytearray, memoryview)):
        return bytes(packet)
    raise TypeError(f"a packet must be bytes, not {type(packet).__name__}")


def _rtp_header_length(data: bytes) -> int:
    """Length of a version-2 RTP header (with CSRCs and extension), or SrtpError bad_packet."""
    n = len(data)
    if n < _RTP_HEADER_LEN or n > MAX_PACKET_LEN or data[0] >> 6 != 2:
        raise SrtpError("bad_packet")
    length = _RTP_HEADER_LEN + 4 * (data[0] & 0x0F)
    if data[0] & 0x10:  # header extension: 16-bit profile, 16-bit length in words
        if length + 4 > n:
            raise SrtpError("bad_packet")
        length += 4 + 4 * int.from_bytes(data[length + 2 : length + 4], "big")
    if length > n:
        raise SrtpError("bad_packet")
    return length


def _check_rtcp(data: bytes, minimum: int) -> None:
    if len(data) < minimum or len(data) > MAX_PACKET_LEN or data[0] >> 6 != 2:
        raise SrtpError("bad_packet")


class _Direction:
    """One libsrtp session (one direction) and the lock that serialises its use."""

    __slots__ = ("ctx", "lock")

    def __init__(self, profile: SrtpProfile, key: SrtpKey, ssrc_type: int, srtcp_tag_32: bool):
        material = ffi.new("unsigned char[]", profile.key_length + profile.salt_length)
        policy = ffi.new("srtp_policy_t *")  # zero-filled: no MKI, no EKT, no header encryption
        try:
            ffi.memmove(material, key.master_key + key.master_salt, len(material))
            policy.ssrc.type = ssrc_type
            policy.ssrc.value = 0
            profile._set_policy(ffi.addressof(policy.rtp))
            profile._set_rtcp_policy(ffi.addressof(policy.rtcp))
            if srtcp_tag_32:
                policy.rtcp.auth_tag_len = 4
            policy.key = material
            policy.window_size = 0  # libsrtp's default replay window: 128 packets
            policy.allow_repeat_tx = 0
            policy.next = ffi.NULL
            session = ffi.new("srtp_t *")
            status = _lib.srtp_create(session, policy)
        finally:
            ffi.memmove(material, bytes(len(material)), len(material))
        if status != _STATUS_OK:
            raise SrtpError(_status_name(status))
        self.ctx = session[0]
        self.lock = threading.Lock()

    def close(self) -> None:
        with self.lock:
            ctx, self.ctx = self.ctx, None
            if ctx is not None:
                _lib.srtp_dealloc(ctx)

    def run(self, function, data: bytes) -> tuple[int, bytes]:
        n = len(data)
        buffer = ffi.new("unsigned char[]", n + SRTP_MAX_TRAILER_LEN)
        ffi.memmove(buffer, data, n)
        length = ffi.new("int *", n)
        with self.lock:
            if self.ctx is None:
                raise SrtpError("closed")
            status = function(self.ctx, buffer, length)
        if status != _STATUS_OK:
            return status, b""
        out = length[0]
        if not 0 <= out <= n + SRTP_MAX_TRAILER_LEN:  # pragma: no cover - libsrtp's contract
            raise SrtpError("bad_length")
        return status, ffi.buffer(buffer, out)[:]


class SrtpSession:
    """SRTP and SRTCP for one call: ``outbound`` keys protect what we send, ``inbound`` keys
    unprotect what the peer sends (so A's outbound key is B's inbound key).

    Any SSRC is accepted each way (libsrtp's ``ssrc_any_outbound`` / ``ssrc_any_inbound``
    templates; a stream per SSRC is made on first use). Replay protection: a 128-packet window
    for SRTP and for SRTCP. ``protect_rtp`` refuses a sequence number it has already protected
    (``replay_fail``), since the same index would reuse keystream.

    ``srtcp_tag_32``: RFC 4568 and libsrtp give SRTCP an 80-bit tag even with the ``*_32``
    profiles (a 32-bit SRTP tag is a bandwidth compromise for voice packets; RTCP is rare and
    keeps the full tag). Linphone, when ZRTP agrees ``HS32``, keys its SRTCP with the same
    32-bit suite as SRTP (mediastreamer/bzrtp use one crypto suite for both), so against
    Linphone SRTCP only verifies with a 4-byte tag both ways. ``srtcp_tag_32=True`` sets the
    SRTCP policy's ``auth_tag_len`` to 4 after libsrtp's setter filled it; it is refused with
    the ``*_80`` profiles, where it would only weaken SRTCP and break interoperability.

    Counters (SRTP and SRTCP together): ``packets_protected``, ``packets_unprotected``,
    ``auth_failures`` and ``replay_failures`` (inbound packets refused for that reason).

    ``close()`` frees both libsrtp sessions; it is idempotent, and the session is a context
    manager. Any use after ``close()`` raises ``SrtpError("closed")``.
    """

    def __init__(self, profile: SrtpProfile, outbound: SrtpKey, inbound: SrtpKey, *, srtcp_tag_32: bool = False):
        if not isinstance(profile, SrtpProfile):
            raise TypeError(f"profile must be an SrtpProfile, not {type(profile).__name__}")
        for name, key in (("outbound", outbound), ("inbound", inbound)):
            if not isinstance(key, SrtpKey):
                raise TypeError(f"{name} must be an SrtpKey, not {type(key).__name__}")
            key.check(profile)
        if srtcp_tag_32 and profile.rtp_tag_length != 4:
            raise ValueError(f"srtcp_tag_32 is for the HMAC_SHA1_32 profiles, not {profile.name}")
        _ensure_init()
        self.profile = profile
        self.srtcp_tag_32 = bool(srtcp_tag_32)
        self.rtcp_tag_length = 4 if srtcp_tag_32 else profile.rtcp_tag_length
        self.packets_protected = 0
        self.packets_unprotected = 0
        self.auth_failures = 0
        self.replay_failures = 0
        self._counters_lock = threading.Lock()
        self._out = self._in = None
        self._out = _Direction(profile, outbound, _lib.ssrc_any_outbound, self.srtcp_tag_32)
        try:
            self._in = _Direction(profile, inbound, _lib.ssrc_any_inbound, self.srtcp_tag_32)
        except BaseException:
            self._out.close()
            raise

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (
            f"<SrtpSession {self.profile.name} srtcp_tag={self.rtcp_tag_length * 8}bit {state} "
            f"protected={self.packets_protected} unprotected={self.packets_unprotected} "
            f"auth_failures={self.auth_failures} replay_failures={self.replay_failures}>"
        )

    @property
    def closed(self) -> bool:
        return self._out is None or self._out.ctx is None

    # -- sending

    def protect_rtp(self, packet: bytes) -> bytes:
        """The SRTP packet for a plain RTP packet (version 2; same header, payload encrypted,
        tag appended). ``SrtpError``: ``bad_packet``, ``replay_fail`` (sequence number already
        protected), ``closed``."""
        data = _bytes_of(packet)
        _rtp_header_length(data)
        return self._protect(_lib.srtp_protect, data)

    def protect_rtcp(self, packet: bytes) -> bytes:
        """The SRTCP packet for a plain RTCP (compound) packet: encrypted after its first 8
        bytes, then E flag + 31-bit SRTCP index and the tag. ``SrtpError``: ``bad_packet``,
        ``closed``."""
        data = _bytes_of(packet)
        _check_rtcp(data, _RTCP_HEADER_LEN)
        return self._protect(_lib.srtp_protect_rtcp, data)

    def _protect(self, function, data: bytes) -> bytes:
        direction = self._out
        if direction is None:
            raise SrtpError("closed")
        status, out = direction.run(function, data)
        if status != _STATUS_OK:
            raise SrtpError(_status_name(status))
        with self._counters_lock:
            self.packets_protected += 1
        return out

    # -- receiving

    def unprotect_rtp(self, packet: bytes) -> bytes:
        """The RTP packet inside an SRTP packet from the peer, authenticated and replay-checked.
        ``SrtpError``: ``bad_packet``, ``auth_fail``, ``replay_fail``, ``closed``."""
        data = _bytes_of(packet)
        header = _rtp_header_length(data)
        if len(data) < header + self.profile.rtp_tag_length:
            raise SrtpError("bad_packet")
        return self._unprotect(_lib.srtp_unprotect, data)

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        """The RTCP packet inside an SRTCP packet from the peer, authenticated and replay-checked.
        ``SrtpError``: ``bad_packet``, ``auth_fail``, ``replay_fail``, ``closed``."""
        data = _bytes_of(packet)
        _check_rtcp(data, _RTCP_HEADER_LEN + _SRTCP_INDEX_LEN + self.rtcp_tag_length)
        return self._unprotect(_lib.srtp_unprotect_rtcp, data)

    def _unprotect(self, function, data: bytes) -> bytes:
        direction = self._in
        if direction is None:
            raise SrtpError("closed")
        status, out = direction.run(function, data)
        if status != _STATUS_OK:
            reason = _status_name(status)
            with self._counters_lock:
                if reason == "auth_fail":
                    self.auth_failures += 1
                elif reason == "replay_fail":
                    self.replay_failures += 1
            raise SrtpError(reason)
        with self._counters_lock:
            self.packets_unprotected += 1
        return out

    # -- lifetime

    def close(self) -> None:
        """Free both libsrtp sessions (idempotent)."""
        for direction in (self._out, self._in):
            if direction is not None:
                direction.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - interpreter shutdown: the module may be gone
            pass
