"""Off-the-Record messaging, protocol version 3, through libotr 4.1 (Debian libotr5).

The only module of Byline that touches libotr, through cffi in ABI mode: the declarations below
are copied from /usr/include/libotr/*.h (libgcrypt handles are opaque pointers). anonymous
in-memory files (``memfd_create`` + ``fdopen``) feed libotr's FILE* APIs, so keys, fingerprints and instance
tags never touch the disk: the caller loads them into :class:`OtrAccount` and saves
:meth:`OtrAccount.export_state` in the encrypted store.

Contract:

- One :class:`OtrAccount` is one libotr ``OtrlUserState`` for one local account. Sessions are
  keyed by peer (bare JID) and, OTR v3, by the peer's instance tag: libotr keeps a master
  context per peer and one child per instance. Methods taking ``instance=None`` use the
  encrypted instance that most recently proved itself (AKE or decrypted message), else a
  finished one, else plaintext. Not libotr's "best" (most secure first): a stale, verified
  session of a device that came back with a new key must not hide the new, unverified one;
  and not libotr's "recent": any garbage from the network would make it the master context.
- Everything is synchronous, on the caller's thread. libotr's callbacks only queue; messages to
  inject (``send(to, text)``) and events (``on_event(event)``) are handed over after libotr has
  returned, so both may call back into the account. Exceptions they raise are logged and
  swallowed. Nothing raised inside a callback ever crosses into C.
- ``receiving`` never raises for what the network sends: malformed, unreadable, oversized or
  NUL-carrying input gives :class:`OtrError` (and ``None``).
- Policy: OTR v3 only, encryption required, AKE started on whitespace tags and OTR errors.
  ``allow_plaintext=True`` drops "required" (plaintext messages pass and are shown) and tags
  plaintext messages with OTR's whitespace tag, so that a peer able to do OTR starts it.
- No key material (private key, session keys, SMP secrets) appears in a repr, a log line or an
  exception message, and no address (who talks to whom is the journalist's secret too).
  Fingerprints and instance tags are public and may be logged.

Measured on the development host (x86-64, 10 runs): DSA-1024 key generation by libgcrypt takes
14-98 ms (median 34 ms; random prime search, so it varies; expect several times more on the
phone's SoC: run it off the UI thread). A full AKE (query + 5 messages) between two accounts in
one process takes about 6 ms.

Known behaviour: with ERROR_START_AKE, a malformed data message makes us send an OTR error, the
peer restarts the AKE, and the session is re-keyed (Ended then Encrypted are reported). It
never yields plaintext or a false "encrypted".
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import cffi

log = logging.getLogger(__name__)

OTR_LIBRARY = "libotr.so.5"
LIBC = "libc.so.6"

_CDEF = """
typedef unsigned int gcry_error_t;
typedef void *gcry_mpi_t;
typedef void *gcry_cipher_hd_t;
typedef void *gcry_md_hd_t;
typedef void *gcry_sexp_t;
typedef unsigned int otrl_instag_t;
typedef unsigned int OtrlPolicy;
typedef struct context_priv ConnContextPriv;
typedef struct OtrlSMState_opaque OtrlSMState;

typedef struct {
    unsigned int groupid;
    gcry_mpi_t priv, pub;
} DH_keypair;

typedef struct {
    int authstate;
    struct context *context;
    DH_keypair our_dh;
    unsigned int our_keyid;
    unsigned char *encgx;
    size_t encgx_len;
    unsigned char r[16];
    unsigned char hashgx[32];
    gcry_mpi_t their_pub;
    unsigned int their_keyid;
    gcry_cipher_hd_t enc_c, enc_cp;
    gcry_md_hd_t mac_m1, mac_m1p;
    gcry_md_hd_t mac_m2, mac_m2p;
    unsigned char their_fingerprint[20];
    int initiated;
    unsigned int protocol_version;
    unsigned char secure_session_id[20];
    size_t secure_session_id_len;
    int session_id_half;
    char *lastauthmsg;
    int64_t commit_sent_time;  /* time_t, 64-bit on this target */
} OtrlAuthInfo;

typedef struct s_fingerprint {
    struct s_fingerprint *next;
    struct s_fingerprint **tous;
    unsigned char *fingerprint;
    struct context *context;
    char *trust;
} Fingerprint;

typedef struct context {
    struct context * next;
    struct context ** tous;
    ConnContextPriv *context_priv;
    char * username;
    char * accountname;
    char * protocol;
    struct context *m_context;
    struct context *recent_rcvd_child;
    struct context *recent_sent_child;
    struct context *recent_child;
    otrl_instag_t our_instance;
    otrl_instag_t their_instance;
    int msgstate;
    OtrlAuthInfo auth;
    Fingerprint fingerprint_root;
    Fingerprint *active_fingerprint;
    unsigned char sessionid[20];
    size_t sessionid_len;
    int sessionid_half;
    unsigned int protocol_version;
    int otr_offer;
    void *app_data;
    void (*app_data_free)(void *);
    OtrlSMState *smstate;
} ConnContext;

typedef struct s_OtrlInsTag {
    struct s_OtrlInsTag *next;
    struct s_OtrlInsTag **tous;
    char *accountname;
    char *protocol;
    otrl_instag_t instag;
} OtrlInsTag;

typedef struct s_OtrlUserState* OtrlUserState;

typedef struct s_OtrlTLV {
    unsigned short type;
    unsigned short len;
    unsigned char *data;
    struct s_OtrlTLV *next;
} OtrlTLV;

typedef struct s_OtrlMessageAppOps {
    OtrlPolicy (*policy)(void *opdata, ConnContext *context);
    void (*create_privkey)(void *opdata, const char *accountname, const char *protocol);
    int (*is_logged_in)(void *opdata, const char *accountname, const char *protocol,
                        const char *recipient);
    void (*inject_message)(void *opdata, const char *accountname, const char *protocol,
                           const char *recipient, const char *message);
    void (*update_context_list)(void *opdata);
    void (*new_fingerprint)(void *opdata, OtrlUserState us, const char *accountname,
                            const char *protocol, const char *username,
                            unsigned char fingerprint[20]);
    void (*write_fingerprints)(void *opdata);
    void (*gone_secure)(void *opdata, ConnContext *context);
    void (*gone_insecure)(void *opdata, ConnContext *context);
    void (*still_secure)(void *opdata, ConnContext *context, int is_reply);
    int (*max_message_size)(void *opdata, ConnContext *context);
    const char *(*account_name)(void *opdata, const char *account, const char *protocol);
    void (*account_name_free)(void *opdata, const char *account_name);
    void (*received_symkey)(void *opdata, ConnContext *context, unsigned int use,
                            const unsigned char *usedata, size_t usedatalen,
                            const unsigned char *symkey);
    const char *(*otr_error_message)(void *opdata, ConnContext *context, int err_code);
    void (*otr_error_message_free)(void *opdata, const char *err_msg);
    const char *(*resent_msg_prefix)(void *opdata, ConnContext *context);
    void (*resent_msg_prefix_free)(void *opdata, const char *prefix);
    void (*handle_smp_event)(void *opdata, int smp_event, ConnContext *context,
                             unsigned short progress_percent, char *question);
    void (*handle_msg_event)(void *opdata, int msg_event, ConnContext *context,
                             const char *message, gcry_error_t err);
    void (*create_instag)(void *opdata, const char *accountname, const char *protocol);
    void (*convert_msg)(void *opdata, ConnContext *context, int convert_type, char ** dest,
                        const char *src);
    void (*convert_free)(void *opdata, ConnContext *context, char *dest);
    void (*timer_control)(void *opdata, unsigned int interval);
} OtrlMessageAppOps;

gcry_error_t otrl_init(unsigned int ver_major, unsigned int ver_minor, unsigned int ver_sub);
const char *otrl_version(void);
char *otrl_proto_default_query_msg(const char *ourname, OtrlPolicy policy);

OtrlUserState otrl_userstate_create(void);
void otrl_userstate_free(OtrlUserState us);

void otrl_privkey_hash_to_human(char human[45], const unsigned char hash[20]);
char *otrl_privkey_fingerprint(OtrlUserState us, char fingerprint[45],
        const char *accountname, const char *protocol);
gcry_error_t otrl_privkey_read_FILEp(OtrlUserState us, FILE *privf);
gcry_error_t otrl_privkey_generate_FILEp(OtrlUserState us, FILE *privf,
        const char *accountname, const char *protocol);
gcry_error_t otrl_privkey_read_fingerprints_FILEp(OtrlUserState us, FILE *storef,
        void (*add_app_data)(void *data, ConnContext *context), void *data);
gcry_error_t otrl_privkey_write_fingerprints_FILEp(OtrlUserState us, FILE *storef);
void *otrl_privkey_find(OtrlUserState us, const char *accountname, const char *protocol);

OtrlInsTag *otrl_instag_find(OtrlUserState us, const char *accountname, const char *protocol);
gcry_error_t otrl_instag_read_FILEp(OtrlUserState us, FILE *instf);
gcry_error_t otrl_instag_generate_FILEp(OtrlUserState us, FILE *instf,
        const char *accountname, const char *protocol);

ConnContext * otrl_context_find(OtrlUserState us, const char *user, const char *accountname,
        const char *protocol, otrl_instag_t their_instance, int add_if_missing, int *addedp,
        void (*add_app_data)(void *data, ConnContext *context), void *data);
int otrl_context_is_fingerprint_trusted(Fingerprint *fprint);
Fingerprint *otrl_context_find_fingerprint(ConnContext *context,
        unsigned char fingerprint[20], int add_if_missing, int *addedp);
void otrl_context_set_trust(Fingerprint *fprint, const char *trust);

void otrl_message_free(char *message);
gcry_error_t otrl_message_sending(OtrlUserState us, const OtrlMessageAppOps *ops,
        void *opdata, const char *accountname, const char *protocol,
        const char *recipient, otrl_instag_t instag, const char *original_msg,
        OtrlTLV *tlvs, char **messagep, int fragPolicy, ConnContext **contextp,
        void (*add_appdata)(void *data, ConnContext *context), void *data);
int otrl_message_receiving(OtrlUserState us, const OtrlMessageAppOps *ops,
        void *opdata, const char *accountname, const char *protocol,
        const char *sender, const char *message, char **newmessagep,
        OtrlTLV **tlvsp, ConnContext **contextp,
        void (*add_appdata)(void *data, ConnContext *context), void *data);
void otrl_message_disconnect(OtrlUserState us, const OtrlMessageAppOps *ops,
        void *opdata, const char *accountname, const char *protocol,
        const char *username, otrl_instag_t instance);
void otrl_message_disconnect_all_instances(OtrlUserState us, const OtrlMessageAppOps *ops,
        void *opdata, const char *accountname, const char *protocol, const char *username);
void otrl_message_initiate_smp(OtrlUserState us, const OtrlMessageAppOps *ops,
        void *opdata, ConnContext *context, const unsigned char *secret, size_t secretlen);
void otrl_message_initiate_smp_q(OtrlUserState us, const OtrlMessageAppOps *ops,
        void *opdata, ConnContext *context, const char *question,
        const unsigned char *secret, size_t secretlen);
void otrl_message_respond_smp(OtrlUserState us, const OtrlMessageAppOps *ops,
        void *opdata, ConnContext *context, const unsigned char *secret, size_t secretlen);
void otrl_message_abort_smp(OtrlUserState us, const OtrlMessageAppOps *ops,
        void *opdata, ConnContext *context);
void otrl_message_poll(OtrlUserState us, const OtrlMessageAppOps *ops, void *opdata);

void otrl_tlv_free(OtrlTLV *tlv);
OtrlTLV *otrl_tlv_find(OtrlTLV *tlvs, unsigned short type);
"""

_CDEF_LIBC = """
FILE *fdopen(int fd, const char *mode);
int fclose(FILE *stream);
void free(void *ptr);
"""

_ffi = cffi.FFI()
_ffi.cdef(_CDEF)
_ffi.cdef(_CDEF_LIBC)

# proto.h
POLICY_ALLOW_V2 = 0x02
POLICY_ALLOW_V3 = 0x04
POLICY_REQUIRE_ENCRYPTION = 0x08
POLICY_SEND_WHITESPACE_TAG = 0x10
POLICY_WHITESPACE_START_AKE = 0x20
POLICY_ERROR_START_AKE = 0x40
DEFAULT_POLICY = (POLICY_ALLOW_V3 | POLICY_REQUIRE_ENCRYPTION | POLICY_WHITESPACE_START_AKE
                  | POLICY_ERROR_START_AKE)
_FRAGMENT_SEND_SKIP = 0
# instag.h
_INSTAG_MASTER = 0
_INSTAG_BEST = 1
MIN_VALID_INSTAG = 0x100
# context.h
_MSGSTATES = {0: "plaintext", 1: "encrypted", 2: "finished"}
# tlv.h
_TLV_DISCONNECTED = 0x0001
# message.h
(_SMP_NONE, _SMP_ERROR, _SMP_ABORT, _SMP_CHEATED, _SMP_ASK_FOR_ANSWER, _SMP_ASK_FOR_SECRET,
 _SMP_IN_PROGRESS, _SMP_SUCCESS, _SMP_FAILURE) = range(9)
(_MSG_NONE, _MSG_ENCRYPTION_REQUIRED, _MSG_ENCRYPTION_ERROR, _MSG_CONNECTION_ENDED,
 _MSG_SETUP_ERROR, _MSG_MSG_REFLECTED, _MSG_MSG_RESENT, _MSG_RCVD_NOT_IN_PRIVATE,
 _MSG_RCVD_UNREADABLE, _MSG_RCVD_MALFORMED, _MSG_HEARTBEAT_RCVD, _MSG_HEARTBEAT_SENT,
 _MSG_RCVD_GENERAL_ERR, _MSG_RCVD_UNENCRYPTED, _MSG_RCVD_UNRECOGNIZED,
 _MSG_RCVD_FOR_OTHER_INSTANCE) = range(16)

_MSG_EVENT_TEXT = {
    _MSG_ENCRYPTION_ERROR: "a message could not be encrypted and was not sent",
    _MSG_CONNECTION_ENDED: "the peer has ended the private conversation: message not sent",
    _MSG_SETUP_ERROR: "the private conversation could not be set up",
    _MSG_MSG_REFLECTED: "received our own OTR message back",
    _MSG_RCVD_NOT_IN_PRIVATE: "received an encrypted message outside a private conversation",
    _MSG_RCVD_UNREADABLE: "received an encrypted message that cannot be read",
    _MSG_RCVD_MALFORMED: "received a malformed OTR message",
    _MSG_RCVD_UNRECOGNIZED: "received an OTR message of unknown type",
}

TRUST_VERIFIED = "verified"
TRUST_SMP = "smp"
MAX_MESSAGE_CHARS = 256 * 1024
"""Larger incoming or outgoing messages are refused (OtrError) before libotr sees them."""
MAX_STATE_BYTES = 4 * 1024 * 1024
"""Larger private-key or fingerprint blobs are refused."""


class OtrFailure(Exception):
    """libotr is missing or refused a local operation. Never carries key material."""


# --- events -------------------------------------------------------------------------------

@dataclass(frozen=True)
class OtrEvent:
    peer: str


@dataclass(frozen=True)
class Encrypted(OtrEvent):
    verified: bool
    instance: int = 0


@dataclass(frozen=True)
class Ended(OtrEvent):
    instance: int = 0


@dataclass(frozen=True)
class NewFingerprint(OtrEvent):
    fingerprint: str


@dataclass(frozen=True)
class FingerprintChanged(OtrEvent):
    """A known contact presented another key: the session is unverified until checked again."""
    old: str
    new: str
    message: str = "The contact's key has changed: it is not verified. Verify it again."


@dataclass(frozen=True)
class SmpQuestion(OtrEvent):
    question: str
    instance: int = 0


@dataclass(frozen=True)
class SmpRequest(OtrEvent):
    instance: int = 0


@dataclass(frozen=True)
class SmpResult(OtrEvent):
    success: bool
    instance: int = 0


@dataclass(frozen=True)
class Unencrypted(OtrEvent):
    """A plaintext message arrived while encryption is required: shown only flagged as such."""
    text: str


@dataclass(frozen=True)
class OtrError(OtrEvent):
    message: str


# --- the libraries ------------------------------------------------------------------------

_load_lock = threading.Lock()
_otr = None
_libc = None


def _libs():
    global _otr, _libc
    with _load_lock:
        if _otr is None:
            try:
                libc = _ffi.dlopen(LIBC)
                otr = _ffi.dlopen(OTR_LIBRARY)
            except OSError as error:
                raise OtrFailure(f"cannot load libotr ({error}): install libotr5") from None
            if otr.otrl_init(4, 1, 1) != 0:
                raise OtrFailure("libotr refused to initialise (version 4.1 required)")
            _otr, _libc = otr, libc
    return _otr, _libc


def available() -> bool:
    try:
        _libs()
    except OtrFailure:
        return False
    return True


def libotr_version() -> str:
    otr, _ = _libs()
    return _ffi.string(otr.otrl_version()).decode()


def _bare(jid: str) -> str:
    return jid.split("/", 1)[0]


def _human(raw20) -> str:
    otr, _ = _libs()
    buf = _ffi.new("char[45]")
    otr.otrl_privkey_hash_to_human(buf, raw20)
    return _ffi.string(buf).decode()


def _raw_fingerprint(human: str) -> bytes | None:
    compact = "".join(human.split())
    if len(compact) != 40:
        return None
    try:
        return bytes.fromhex(compact)
    except ValueError:
        return None


class _MemFile:
    """A FILE* over an anonymous in-memory file (memfd_create: RAM only, no path, no disk).

    libotr's FILE* readers fstat() the stream for its size and its key generation writes, seeks
    back and re-reads, so fmemopen/open_memstream do not do. ``_MemFile(data)`` opens a copy of
    ``data`` for reading; ``_MemFile()`` an empty file for writing. ``close()`` returns the
    content and wipes it (zeroed, then truncated)."""

    def __init__(self, data: bytes | None = None):
        _, self._libc = _libs()
        self._fd = os.memfd_create("byline-otr", os.MFD_CLOEXEC)
        try:
            if data:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view):]
                os.lseek(self._fd, 0, os.SEEK_SET)
            dup = os.dup(self._fd)
            self.fp = self._libc.fdopen(dup, b"r" if data is not None else b"w+")
            if self.fp == _ffi.NULL:
                os.close(dup)
                raise OtrFailure("fdopen failed")
        except BaseException:
            os.close(self._fd)
            raise

    def close(self) -> bytes:
        if self.fp != _ffi.NULL:
            self._libc.fclose(self.fp)
            self.fp = _ffi.NULL
        try:
            size = os.fstat(self._fd).st_size
            content = os.pread(self._fd, size, 0) if size else b""
            os.pwrite(self._fd, b"\0" * size, 0)
            os.ftruncate(self._fd, 0)
        finally:
            os.close(self._fd)
        return content


# --- callbacks ----------------------------------------------------------------------------

_tokens = itertools.count(1)
_accounts: dict[int, weakref.ref] = {}
"""opdata token -> account (a plain integer travels through C, never a Python object)."""


def _account_for(opdata) -> OtrAccount | None:
    reference = _accounts.get(int(_ffi.cast("uintptr_t", opdata)))
    return None if reference is None else reference()


def _callback(signature: str, default=None):
    """An ffi.callback that never lets an exception reach C (logged; libotr gets ``default``)."""

    def wrap(function):
        def guarded(*args):
            try:
                account = _account_for(args[0])
                if account is not None:
                    result = function(account, *args[1:])
                    return default if result is None else result
            except Exception:  # nothing may unwind into C
                log.exception("OTR: error in a libotr callback (%s)", function.__name__)
            return default

        guarded.__name__ = function.__name__
        if default is None:
            return _ffi.callback(signature, guarded)
        return _ffi.callback(signature, guarded, onerror=lambda *_: default)

    return wrap


def _str(cdata) -> str:
    return "" if cdata == _ffi.NULL else _ffi.string(cdata).decode("utf-8", "replace")


@_callback("OtrlPolicy(void *, ConnContext *)", default=0)
def _cb_policy(account, context):
    return account._policy


@_callback("void(void *, const char *, const char *)")
def _cb_create_privkey(account, accountname, protocol):
    account._need_key(_str(accountname))


@_callback("int(void *, const char *, const char *, const char *)", default=-1)
def _cb_is_logged_in(account, accountname, protocol, recipient):
    # 1: libotr only tells the peer that a conversation ended (and sends heartbeats) if it
    # believes the peer online. A message to an offline contact is harmless.
    return 1


@_callback("void(void *, const char *, const char *, const char *, const char *)")
def _cb_inject(account, accountname, protocol, recipient, message):
    account._inject(_str(recipient), _str(message))


@_callback("void(void *)")
def _cb_update_context_list(account):
    pass


@_callback("void(void *, OtrlUserState, const char *, const char *, const char *, "
           "unsigned char[20])")
def _cb_new_fingerprint(account, us, accountname, protocol, username, fingerprint):
    account._new_fingerprint(_str(username), bytes(_ffi.unpack(fingerprint, 20)))


@_callback("void(void *)")
def _cb_write_fingerprints(account):
    account.needs_save = True


@_callback("void(void *, ConnContext *)")
def _cb_gone_secure(account, context):
    account._gone_secure(context)


@_callback("void(void *, ConnContext *)")
def _cb_gone_insecure(account, context):
    account._gone_insecure(context)


@_callback("void(void *, ConnContext *, int)")
def _cb_still_secure(account, context, is_reply):
    account._gone_secure(context)


@_callback("int(void *, ConnContext *)", default=0)
def _cb_max_message_size(account, context):
    return 0  # XMPP: no fragmentation


_ERROR_TEXT = _ffi.new("char[]", b"Byline could not read your OTR message.")


@_callback("const char *(void *, ConnContext *, int)", default=_ffi.NULL)
def _cb_otr_error_message(account, context, code):
    return _ERROR_TEXT


@_callback("void(void *, const char *)")
def _cb_otr_error_message_free(account, text):
    pass  # static


@_callback("void(void *, int, ConnContext *, unsigned short, char *)")
def _cb_smp_event(account, event, context, percent, question):
    account._smp_event(event, context, _str(question) if question != _ffi.NULL else None)


@_callback("void(void *, int, ConnContext *, const char *, gcry_error_t)")
def _cb_msg_event(account, event, context, message, err):
    account._msg_event(event, context, _str(message))


@_callback("void(void *, const char *, const char *)")
def _cb_create_instag(account, accountname, protocol):
    account._generate_instag()


@_callback("void(void *, unsigned int)")
def _cb_timer_control(account, interval):
    account.poll_interval = int(interval)


def _make_ops():
    ops = _ffi.new("OtrlMessageAppOps *")
    ops.policy = _cb_policy
    ops.create_privkey = _cb_create_privkey
    ops.is_logged_in = _cb_is_logged_in
    ops.inject_message = _cb_inject
    ops.update_context_list = _cb_update_context_list
    ops.new_fingerprint = _cb_new_fingerprint
    ops.write_fingerprints = _cb_write_fingerprints
    ops.gone_secure = _cb_gone_secure
    ops.gone_insecure = _cb_gone_insecure
    ops.still_secure = _cb_still_secure
    ops.max_message_size = _cb_max_message_size
    ops.otr_error_message = _cb_otr_error_message
    ops.otr_error_message_free = _cb_otr_error_message_free
    ops.handle_smp_event = _cb_smp_event
    ops.handle_msg_event = _cb_msg_event
    ops.create_instag = _cb_create_instag
    ops.timer_control = _cb_timer_control
    return ops


_OPS = _make_ops()


# --- the account --------------------------------------------------------------------------

class OtrAccount:
    """One local account's OTR state (libotr userstate) held in memory only.

    ``private_key``, ``instance_tag`` and ``fingerprints`` come from :meth:`export_state`
    (``None``: none yet; without a key, call :meth:`generate_key` before any session).
    ``send(to, text)`` puts an OTR message (query, AKE, SMP, disconnect) on the wire; ``to`` is
    the peer's full JID when its instance is known, else the bare JID. ``on_event`` gets
    :class:`OtrEvent` objects. OtrFailure (ValueError for bad arguments) if the stored state
    cannot be loaded.
    """

    def __init__(self, account_name: str, protocol: str = "xmpp", *,
                 private_key: bytes | None, instance_tag: int | None,
                 fingerprints: bytes | None, send: Callable[[str, str], None],
                 on_event: Callable[[OtrEvent], None], allow_plaintext: bool = False):
        for value in (account_name, protocol):
            if not value or any(c in value for c in "\t\n\r\0\"\\"):
                raise ValueError("account name and protocol must be non-empty, without "
                                 "tabs, newlines, quotes or NULs")
        self._otr, _ = _libs()
        self.account_name = account_name
        self.protocol = protocol
        self._c_account = _ffi.new("char[]", account_name.encode())
        self._c_protocol = _ffi.new("char[]", protocol.encode())
        self._send = send
        self._on_event = on_event
        # Allowing plaintext is libotr's "opportunistic": plain messages carry the whitespace tag,
        # so a peer that can do OTR starts it.
        self._policy = (DEFAULT_POLICY & ~POLICY_REQUIRE_ENCRYPTION | POLICY_SEND_WHITESPACE_TAG
                        if allow_plaintext else DEFAULT_POLICY)
        self._lock = threading.RLock()
        self._outbox: deque = deque()
        self._events: deque = deque()
        self._secure: set[tuple[str, int]] = set()
        self._resources: dict[tuple[str, int], str] = {}
        self._route: str | None = None
        self._smp_pending: set[tuple[str, int]] = set()
        self._recency: dict[tuple[str, int], int] = {}
        self._clock = itertools.count(1)
        self._private_key: bytes | None = None
        self.needs_save = False
        self.poll_interval = 0
        self._us = self._otr.otrl_userstate_create()
        if self._us == _ffi.NULL:
            raise OtrFailure("libotr could not create a user state")
        self._finalizer = weakref.finalize(self, self._otr.otrl_userstate_free, self._us)
        self._token = next(_tokens)
        _accounts[self._token] = weakref.ref(self)
        weakref.finalize(self, _accounts.pop, self._token, None)
        self._opdata = _ffi.cast("void *", self._token)
        try:
            if private_key:
                self._load_private_key(private_key)
            if instance_tag is not None:
                self._load_instag(instance_tag)
            else:
                self._generate_instag()
            if fingerprints:
                self._load_fingerprints(fingerprints)
        except Exception:
            self.close()
            raise

    def __repr__(self) -> str:
        return (f"OtrAccount({self.account_name!r}, {self.protocol!r}, "
                f"key={'present' if self.has_key else 'absent'}, "
                f"instance_tag=0x{self.instance_tag:08x})")

    # -- state in and out ----------------------------------------------------------------

    def _load_private_key(self, data: bytes):
        if len(data) > MAX_STATE_BYTES:
            raise ValueError("private key blob too large")
        stream = _MemFile(bytes(data))
        try:
            err = self._otr.otrl_privkey_read_FILEp(self._us, stream.fp)
        finally:
            stream.close()
        if err or not self.has_key:
            raise OtrFailure("the private key could not be loaded for this account")
        self._private_key = bytes(data)

    def _load_instag(self, tag: int):
        if not MIN_VALID_INSTAG <= int(tag) <= 0xFFFFFFFF:
            raise ValueError("instance tag out of range")
        text = f"{self.account_name}\t{self.protocol}\t{int(tag):08x}\n".encode()
        stream = _MemFile(text)
        try:
            err = self._otr.otrl_instag_read_FILEp(self._us, stream.fp)
        finally:
            stream.close()
        if err or self.instance_tag != int(tag):
            raise OtrFailure("the instance tag could not be loaded")

    def _generate_instag(self):
        stream = _MemFile()
        try:
            self._otr.otrl_instag_generate_FILEp(self._us, stream.fp, self._c_account,
                                                 self._c_protocol)
        finally:
            stream.close()
        self.needs_save = True

    def _load_fingerprints(self, data: bytes):
        if len(data) > MAX_STATE_BYTES:
            raise ValueError("fingerprint blob too large")
        stream = _MemFile(bytes(data))
        try:
            err = self._otr.otrl_privkey_read_fingerprints_FILEp(self._us, stream.fp,
                                                                 _ffi.NULL, _ffi.NULL)
        finally:
            stream.close()
        if err:
            raise OtrFailure("the fingerprints could not be loaded")

    def export_state(self) -> tuple[bytes | None, int, bytes]:
        """(private key, instance tag, known fingerprints with their trust): what to store
        (encrypted) and give back to the constructor."""
        with self._lock:
            if not self._finalizer.alive:
                raise OtrFailure("the account is closed")
            stream = _MemFile()
            try:
                self._otr.otrl_privkey_write_fingerprints_FILEp(self._us, stream.fp)
            finally:
                fingerprints = stream.close()
            self.needs_save = False
            return self._private_key, self.instance_tag, fingerprints

    @property
    def has_key(self) -> bool:
        if not self._finalizer.alive:
            return False
        return self._otr.otrl_privkey_find(self._us, self._c_account,
                                           self._c_protocol) != _ffi.NULL

    @property
    def instance_tag(self) -> int:
        if not self._finalizer.alive:
            return 0
        found = self._otr.otrl_instag_find(self._us, self._c_account, self._c_protocol)
        return 0 if found == _ffi.NULL else int(found.instag)

    def generate_key(self) -> str:
        """Make a new DSA-1024 key (libgcrypt; blocking, tens of ms on x86-64, more on the
        phone) replacing any previous one.
        Returns its fingerprint."""
        with self._lock:
            stream = _MemFile()
            try:
                err = self._otr.otrl_privkey_generate_FILEp(self._us, stream.fp,
                                                            self._c_account, self._c_protocol)
            finally:
                data = stream.close()
            if err or not self.has_key:
                raise OtrFailure("libotr could not generate a key")
            self._private_key = data
            self.needs_save = True
            return self.fingerprint()

    def fingerprint(self) -> str | None:
        """Our fingerprint, 5 groups of 8 hex digits; None without a key."""
        if not self._finalizer.alive:
            return None
        buf = _ffi.new("char[45]")
        if self._otr.otrl_privkey_fingerprint(self._us, buf, self._c_account,
                                              self._c_protocol) == _ffi.NULL:
            return None
        return _ffi.string(buf).decode()

    def close(self):
        """Free libotr's state (keys included). The account is unusable afterwards."""
        with self._lock:
            self._finalizer()
            _accounts.pop(self._token, None)

    # -- sessions ------------------------------------------------------------------------

    def _find(self, peer: str, tag: int):
        if not self._finalizer.alive:
            return _ffi.NULL
        return self._otr.otrl_context_find(self._us, _bare(peer).encode(), self._c_account,
                                           self._c_protocol, tag, 0, _ffi.NULL, _ffi.NULL,
                                           _ffi.NULL)

    def _children(self, master):
        context = master.next
        while context != _ffi.NULL and context.m_context == master:
            yield context
            context = context.next

    def _context(self, peer: str, instance: int | None):
        """The context for ``instance``; for None, the session that counts for this peer: the
        encrypted instance that last proved itself (a decrypted message or an AKE), else the
        most recent finished one, else the master context (plaintext). Unauthenticated input
        (garbage, forged instance tags) never changes that choice."""
        if instance is not None:
            return self._find(peer, int(instance))
        master = self._find(peer, _INSTAG_MASTER)
        if master == _ffi.NULL:
            return master
        peer = _bare(peer)
        children = list(self._children(master))
        for msgstate in (1, 2):
            candidates = [c for c in children if c.msgstate == msgstate]
            if candidates:
                return max(candidates, key=lambda c: self._recency.get(
                    (peer, int(c.their_instance)), 0))
        return master

    def _touch(self, peer: str, instance: int):
        self._recency[(peer, instance)] = next(self._clock)

    def _master(self, peer: str):
        return self._find(peer, _INSTAG_MASTER)

    def instances(self, peer: str) -> list[int]:
        """The peer's instance tags libotr knows (child contexts)."""
        with self._lock:
            master = self._master(peer)
            if master == _ffi.NULL:
                return []
            return [int(c.their_instance) for c in self._children(master)]

    def route(self, peer: str, instance: int | None = None) -> str:
        """Where to send for this peer/instance: the full JID last heard from, else bare."""
        with self._lock:
            context = self._context(peer, instance)
            if context != _ffi.NULL:
                found = self._resources.get((_bare(peer), int(context.their_instance)))
                if found:
                    return found
            return _bare(peer)

    def receiving(self, sender: str, text: str) -> str | None:
        """A message from ``sender`` (full JID). Returns the text to show, or None (OTR
        control message, or refused: then an event says why). Never raises for its input."""
        peer = _bare(sender)
        if not isinstance(text, str) or len(text) > MAX_MESSAGE_CHARS or "\0" in text:
            self._emit(OtrError(peer, "incoming message refused (too large or not text)"))
            self._flush()
            return None
        with self._lock:
            if not self._finalizer.alive:
                return None
            newmsg = _ffi.new("char **")
            tlvs = _ffi.new("OtrlTLV **")
            contextp = _ffi.new("ConnContext **")
            self._route = sender
            try:
                ignore = self._otr.otrl_message_receiving(
                    self._us, _OPS, self._opdata, self._c_account, self._c_protocol,
                    peer.encode(), text.encode("utf-8", "replace"), newmsg, tlvs, contextp,
                    _ffi.NULL, _ffi.NULL)
            finally:
                self._route = None
            context = contextp[0]
            if (context != _ffi.NULL and context.their_instance >= MIN_VALID_INSTAG
                    and context.msgstate == 1 and not ignore and text.startswith("?OTR:")):
                # a data message that decrypted: this instance is genuine and current
                self._resources[(peer, int(context.their_instance))] = sender
                self._touch(peer, int(context.their_instance))
            if tlvs[0] != _ffi.NULL:
                self._otr.otrl_tlv_free(tlvs[0])
            if newmsg[0] != _ffi.NULL:
                shown = _ffi.string(newmsg[0]).decode("utf-8", "replace")
                self._otr.otrl_message_free(newmsg[0])
            else:
                shown = text
            self._sync(peer)
        self._flush()
        return None if ignore else shown

    def sending(self, peer: str, text: str, instance: int | None = None) -> str | None:
        """What to put on the wire for ``text`` to ``peer``: the encrypted message, or (no
        private conversation yet, encryption required) a query; libotr keeps the text and
        resends it once the conversation is private. None if nothing may be sent (an event
        says why)."""
        peer = _bare(peer)
        if not isinstance(text, str) or len(text) > MAX_MESSAGE_CHARS or "\0" in text:
            self._emit(OtrError(peer, "outgoing message refused (too large or not text)"))
            self._flush()
            return None
        with self._lock:
            if not self._finalizer.alive:
                return None
            out = _ffi.new("char **")
            contextp = _ffi.new("ConnContext **")
            target = self._context(peer, instance)
            if instance is not None:
                tag = int(instance)
            elif target != _ffi.NULL and target.their_instance >= MIN_VALID_INSTAG:
                tag = int(target.their_instance)
            else:
                tag = _INSTAG_BEST
            self._route = None if target == _ffi.NULL else self._resource_of(target)
            err = self._otr.otrl_message_sending(
                self._us, _OPS, self._opdata, self._c_account, self._c_protocol,
                peer.encode(), tag, text.encode("utf-8"), _ffi.NULL, out, _FRAGMENT_SEND_SKIP,
                contextp, _ffi.NULL, _ffi.NULL)
            self._route = None
            result = None
            if out[0] != _ffi.NULL:
                result = _ffi.string(out[0]).decode("utf-8", "replace")
                self._otr.otrl_message_free(out[0])
            if err:
                self._emit(OtrError(peer, "the message could not be encrypted"))
                result = None
            elif result == "":
                result = None  # libotr withheld it (e.g. the peer ended: an event says so)
            elif result is None:
                context = contextp[0]
                encrypted = context != _ffi.NULL and context.msgstate == 1
                if self._policy & POLICY_REQUIRE_ENCRYPTION and not encrypted:
                    result = None  # never plaintext under "encryption required"
                    self._emit(OtrError(peer, "not sent: no private conversation"))
                else:
                    result = text
            self._sync(peer)
        self._flush()
        return result

    def start(self, peer: str):
        """Ask ``peer`` for a private conversation (OTR v3 query message, to the bare JID)."""
        peer = _bare(peer)
        with self._lock:
            query = self._otr.otrl_proto_default_query_msg(self._c_account, self._policy)
            if query == _ffi.NULL:
                raise OtrFailure("libotr could not make a query message")
            text = _ffi.string(query).decode("utf-8", "replace")
            self._otr.otrl_message_free(query)
            self._outbox.append((peer, text))
        self._flush()

    def end(self, peer: str, instance: int | None = None):
        """End the private conversation (all instances, or one), telling the peer."""
        peer = _bare(peer)
        with self._lock:
            if not self._finalizer.alive:
                return
            if instance is None:
                self._otr.otrl_message_disconnect_all_instances(
                    self._us, _OPS, self._opdata, self._c_account, self._c_protocol,
                    peer.encode())
            else:
                self._otr.otrl_message_disconnect(
                    self._us, _OPS, self._opdata, self._c_account, self._c_protocol,
                    peer.encode(), int(instance))
            self._sync(peer)
        self._flush()

    def state(self, peer: str, instance: int | None = None) -> str:
        """"plaintext", "encrypted" or "finished" (the peer ended; nothing more is sent)."""
        with self._lock:
            context = self._context(peer, instance)
            return "plaintext" if context == _ffi.NULL else _MSGSTATES.get(
                int(context.msgstate), "plaintext")

    def _active(self, peer: str, instance: int | None):
        context = self._context(peer, instance)
        if context == _ffi.NULL or context.msgstate != 1:
            return _ffi.NULL
        return context.active_fingerprint

    def trusted(self, peer: str, instance: int | None = None) -> bool:
        """True if the private conversation uses a fingerprint verified (manually or SMP)."""
        with self._lock:
            active = self._active(peer, instance)
            return active != _ffi.NULL and bool(
                self._otr.otrl_context_is_fingerprint_trusted(active))

    def peer_fingerprint(self, peer: str, instance: int | None = None) -> str | None:
        """The fingerprint of the peer's key in the private conversation (None outside one)."""
        with self._lock:
            active = self._active(peer, instance)
            if active == _ffi.NULL or active.fingerprint == _ffi.NULL:
                return None
            return _human(active.fingerprint)

    def known_fingerprints(self, peer: str) -> dict[str, bool]:
        """Every fingerprint known for ``peer`` -> trusted."""
        with self._lock:
            master = self._master(peer)
            found = {}
            if master == _ffi.NULL:
                return found
            fp = master.fingerprint_root.next
            while fp != _ffi.NULL:
                if fp.fingerprint != _ffi.NULL:
                    found[_human(fp.fingerprint)] = bool(
                        self._otr.otrl_context_is_fingerprint_trusted(fp))
                fp = fp.next
            return found

    def set_trust(self, peer: str, fingerprint: str, trusted: bool) -> bool:
        """Mark a known fingerprint of ``peer`` verified (or not). False if it is unknown."""
        raw = _raw_fingerprint(fingerprint)
        if raw is None:
            return False
        with self._lock:
            master = self._master(peer)
            if master == _ffi.NULL:
                return False
            fp = self._otr.otrl_context_find_fingerprint(master, raw, 0, _ffi.NULL)
            if fp == _ffi.NULL:
                return False
            self._otr.otrl_context_set_trust(fp, TRUST_VERIFIED.encode() if trusted else b"")
            self.needs_save = True
            return True

    # -- SMP -----------------------------------------------------------------------------

    def _smp_context(self, peer: str, instance: int | None):
        context = self._context(peer, instance)
        if context == _ffi.NULL or context.msgstate != 1:
            self._emit(OtrError(_bare(peer), "authentication needs a private conversation"))
            return _ffi.NULL
        return context

    @staticmethod
    def _secret(secret: str | bytes):
        data = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        buf = _ffi.new("unsigned char[]", max(len(data), 1))
        _ffi.memmove(buf, data, len(data))
        return buf, len(data)

    def _with_secret(self, secret, call) -> None:
        buf, size = self._secret(secret)
        try:
            call(buf, size)
        finally:
            _ffi.memmove(buf, b"\0" * size, size)
            self._route = None

    def _resource_of(self, context) -> str | None:
        return self._resources.get((_str(context.username), int(context.their_instance)))

    def smp_start(self, peer: str, secret: str | bytes, question: str | None = None,
                  instance: int | None = None) -> bool:
        """Start the Socialist Millionaires' Protocol (with a question, or a shared secret)."""
        with self._lock:
            context = self._smp_context(peer, instance)
            ok = context != _ffi.NULL
            if ok:
                self._route = self._resource_of(context)
                if question is None:
                    self._with_secret(secret, lambda b, n: self._otr.otrl_message_initiate_smp(
                        self._us, _OPS, self._opdata, context, b, n))
                else:
                    q = question.replace("\0", "").encode("utf-8")
                    self._with_secret(secret, lambda b, n: self._otr.otrl_message_initiate_smp_q(
                        self._us, _OPS, self._opdata, context, q, b, n))
        self._flush()
        return ok

    def smp_respond(self, peer: str, secret: str | bytes, instance: int | None = None) -> bool:
        """Answer the peer's SMP (after SmpQuestion or SmpRequest; False and OtrError if there
        is none pending: libotr 4.1 would crash answering an SMP that was never asked)."""
        with self._lock:
            context = self._smp_context(peer, instance)
            ok = context != _ffi.NULL
            if ok and (_bare(peer), int(context.their_instance)) not in self._smp_pending:
                self._emit(OtrError(_bare(peer), "no authentication request to answer"))
                ok = False
            if ok:
                self._smp_pending.discard((_bare(peer), int(context.their_instance)))
                self._route = self._resource_of(context)
                self._with_secret(secret, lambda b, n: self._otr.otrl_message_respond_smp(
                    self._us, _OPS, self._opdata, context, b, n))
        self._flush()
        return ok

    def smp_abort(self, peer: str, instance: int | None = None):
        with self._lock:
            context = self._context(peer, instance)
            if context != _ffi.NULL and context.msgstate == 1:
                self._smp_pending.discard((_bare(peer), int(context.their_instance)))
                self._route = self._resource_of(context)
                self._otr.otrl_message_abort_smp(self._us, _OPS, self._opdata, context)
        self._flush()

    def poll(self):
        """libotr's periodic clean-up of stale keys (forward secrecy): call every
        ``poll_interval`` seconds while it is non-zero."""
        with self._lock:
            if self._finalizer.alive:
                self._otr.otrl_message_poll(self._us, _OPS, self._opdata)
        self._flush()

    # -- from libotr's callbacks (inside C: queue only) ----------------------------------

    def _emit(self, event: OtrEvent):
        self._events.append(event)

    def _inject(self, recipient: str, message: str):
        to = recipient
        if self._route and _bare(self._route) == recipient:
            to = self._route
        self._outbox.append((to, message))

    def _need_key(self, accountname: str):
        log.warning("OTR: no private key for this account: generate one first")

    def _new_fingerprint(self, username: str, raw: bytes):
        new = _human(raw)
        master = self._master(username)
        old_trusted, old_any = None, None
        if master != _ffi.NULL:
            fp = master.fingerprint_root.next
            while fp != _ffi.NULL:
                if fp.fingerprint != _ffi.NULL:
                    known = bytes(_ffi.unpack(fp.fingerprint, 20))
                    if known != raw:
                        old_any = _human(fp.fingerprint)
                        if old_trusted is None and self._otr.otrl_context_is_fingerprint_trusted(fp):
                            old_trusted = old_any
                fp = fp.next
        old = old_trusted or old_any
        log.info("OTR: a contact's fingerprint is %s: %s", "changed" if old else "new", new)
        if old:
            self._emit(FingerprintChanged(username, old, new))
        else:
            self._emit(NewFingerprint(username, new))
        self.needs_save = True

    def _gone_secure(self, context):
        peer = _str(context.username)
        instance = int(context.their_instance)
        if (peer, instance) in self._secure:
            return
        self._secure.add((peer, instance))
        self._touch(peer, instance)
        if self._route and _bare(self._route) == peer:
            self._resources[(peer, instance)] = self._route
        active = context.active_fingerprint
        verified = active != _ffi.NULL and bool(
            self._otr.otrl_context_is_fingerprint_trusted(active))
        log.info("OTR: private conversation (instance 0x%08x, v%d)", instance,
                 int(context.protocol_version))
        self._emit(Encrypted(peer, verified, instance))

    def _gone_insecure(self, context):
        self._ended(_str(context.username), int(context.their_instance))

    def _ended(self, peer: str, instance: int):
        if (peer, instance) in self._secure:
            self._secure.discard((peer, instance))
            self._emit(Ended(peer, instance))

    def _sync(self, peer: str):
        """Ended for every instance of ``peer`` that left the encrypted state."""
        for known, instance in list(self._secure):
            if known != peer:
                continue
            context = self._context(peer, instance)
            if context == _ffi.NULL or context.msgstate != 1:
                self._ended(peer, instance)

    def _smp_event(self, event: int, context, question: str | None):
        peer = _str(context.username) if context != _ffi.NULL else ""
        instance = int(context.their_instance) if context != _ffi.NULL else 0
        if event in (_SMP_ASK_FOR_ANSWER, _SMP_ASK_FOR_SECRET):
            self._smp_pending.add((peer, instance))
            self._emit(SmpQuestion(peer, question or "", instance) if event == _SMP_ASK_FOR_ANSWER
                       else SmpRequest(peer, instance))
            return
        self._smp_pending.discard((peer, instance))
        if event == _SMP_SUCCESS:
            if context.active_fingerprint != _ffi.NULL:
                self._otr.otrl_context_set_trust(context.active_fingerprint, TRUST_SMP.encode())
                self.needs_save = True
            self._emit(SmpResult(peer, True, instance))
        elif event == _SMP_FAILURE:
            self._emit(SmpResult(peer, False, instance))
        elif event in (_SMP_ABORT, _SMP_CHEATED, _SMP_ERROR):
            if event != _SMP_ABORT and context != _ffi.NULL:
                self._otr.otrl_message_abort_smp(self._us, _OPS, self._opdata, context)
            self._emit(SmpResult(peer, False, instance))

    def _msg_event(self, event: int, context, message: str):
        peer = _str(context.username) if context != _ffi.NULL else ""
        if event == _MSG_RCVD_UNENCRYPTED:
            self._emit(Unencrypted(peer, message))
        elif event == _MSG_RCVD_GENERAL_ERR:
            self._emit(OtrError(peer, f"the peer reported an OTR error: {message[:200]}"))
        elif event in _MSG_EVENT_TEXT:
            self._emit(OtrError(peer, _MSG_EVENT_TEXT[event]))
        else:
            log.debug("OTR: message event %d", event)

    # -- after libotr returned -----------------------------------------------------------

    def _flush(self):
        while self._outbox or self._events:
            if self._outbox:
                to, text = self._outbox.popleft()
                try:
                    self._send(to, text)
                except Exception:
                    log.exception("OTR: the send callback failed")
            else:
                event = self._events.popleft()
                try:
                    self._on_event(event)
                except Exception:
                    log.exception("OTR: the event callback failed")
