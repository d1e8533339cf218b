"""The hardware share: 32 random bytes in a TPM 2.0 NV index, released only for the right auth value.

The only module of Byline that imports tpm2-pytss.

Why a TPM: the vault wraps its master key with a key derived from the PIN *and* this share. A
6-digit PIN has a million values, few enough to try offline against a copied state directory;
with the share in the TPM, every guess must go through the TPM, which counts wrong guesses
(its dictionary-attack, "DA", protection) and refuses all of them for a while once
``max_tries`` have failed. The share is not sealed to PCRs: the phone has no measured boot to
bind it to.

How the share is kept:

- One ordinary NV index per share, attributes AUTHREAD | AUTHWRITE only: readable and writable
  with its auth value alone, not by the owner or platform hierarchy, not by policy; and not
  NO_DA, so every wrong auth value counts toward the lockout. Its auth value is the vault's
  32-byte ``auth`` (derived from the PIN; never the PIN itself).
- Indices live in a small range reserved for Byline in the owner NV range
  (``NV_INDEX_FIRST`` .. ``NV_INDEX_LAST``), so a PIN change can create the new share before it
  destroys the old one.
- The handle the vault keeps is public: ``{"nv_index": int, "tpm": str}``. ``tpm`` is the TPM
  name (hex: 0x000B then the SHA-256 digest of the public area) of an ECC P-256 primary key
  derived from the owner seed with a fixed template (``SALT_KEY_TEMPLATE``). The same TPM gives
  the same name until TPM2_Clear changes its owner seed; another TPM gives another name.
- Every command that carries a secret runs in an HMAC session salted with that primary key
  (ECDH) and with AES-128-CFB parameter encryption, so neither the auth value nor the share
  crosses the bus (SPI on the phone) in clear, and an eavesdropper cannot test PIN guesses
  against a recorded HMAC (an unsalted session's HMAC key would be the auth value alone). The
  primary's name is compared with the handle's before any secret is sent: a substituted TPM,
  or a key substituted on the bus, is refused (trust on first use, at ``create``).
- Nothing secret is stored in this object, logged, or put in an exception message.

Every TPM command runs on a connection of its own, closed (and every transient object and
session flushed) before the method returns: swtpm serves one connection at a time, and a TPM
reached without a resource manager keeps what is not flushed.

Errors: ``HardwareShareError`` (unreachable TPM, another TPM, share gone, TPM refuses),
``HardwareLocked`` (DA lockout; here ``TpmLockedOut`` with ``wait_s``), ``PermissionError``
(wrong auth), ``ValueError`` / ``TypeError`` (arguments of the wrong size or type).
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Self, TypeVar

# tpm2-tss logs a warning to stderr for every wrong PIN; in the simulator stderr is the terminal
# the screen is drawn on. Our own log says what happened.
os.environ.setdefault("TSS2_LOG", "all+none")

from tpm2_pytss import (  # noqa: E402
    ESAPI,
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_PT,
    TPM2_RC,
    TPM2_SE,
    TPM2B_NV_PUBLIC,
    TPM2B_PUBLIC,
    TPMA_NV,
    TPMA_OBJECT,
    TPMA_PERMANENT,
    TPMA_SESSION,
    TPMS_NV_PUBLIC,
    TPMT_SYM_DEF,
    TSS2_Exception,
)

from firmware.store import HardwareLocked, HardwareShareError

__all__ = ["DictionaryAttackState", "TpmLockedOut", "TpmShare", "open_tpm"]

log = logging.getLogger(__name__)

KIND = "TPM 2.0"
SHARE_SIZE = 32
AUTH_SIZE = 32  # the most a SHA-256 index takes: a TPM limits an auth value to its name digest size
LOCKOUT_AUTH_SIZE = 32

# Byline's NV indices: 16 handles in the owner range (TPM_HT_NV_INDEX 0x01, owner indices from
# 0x01000000 to 0x013FFFFF, 0x01B7.... being "B7" for Byline).
NV_INDEX_FIRST = 0x01B7E000
NV_INDEX_COUNT = 16
NV_INDEX_LAST = NV_INDEX_FIRST + NV_INDEX_COUNT - 1
SHARE_NV_ATTRIBUTES = TPMA_NV.AUTHREAD | TPMA_NV.AUTHWRITE
WRITTEN_SHARE_NV_ATTRIBUTES = SHARE_NV_ATTRIBUTES | TPMA_NV.WRITTEN

# The primary key that names the TPM and salts sessions: fixed so that it is the same key every
# time (a primary key is derived from the hierarchy seed and the template).
SALT_KEY_TEMPLATE = "ecc256:aes128cfb"
SALT_KEY_ATTRIBUTES = TPMA_OBJECT.DEFAULT_TPM2_TOOLS_CREATEPRIMARY_ATTRS  # restricted decrypt, fixedTPM
SESSION_CIPHER = "aes128cfb"
SESSION_HASH = TPM2_ALG.SHA256
SESSION_ATTRIBUTE_MASK = TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.DECRYPT | TPMA_SESSION.ENCRYPT

SETTING_NONE = "none"
SETTING_AUTO = "auto"
AUTO_DEVICE = Path("/dev/tpmrm0")  # the kernel's resource manager: flushes what a crashed client leaves

NOT_THIS_TPM = (
    "this TPM does not hold this phone's key: the state directory was made on another phone or the TPM was cleared"
)

# tpm2-tss return codes carry the layer that produced them in bits 16..23; 0 is the TPM itself.
TSS_LAYER_MASK = 0xFF0000
# A format-0 TPM response code is its low 12 bits (TPM 2.0 Part 2, "Response Code Details").
TPM_FORMAT_ZERO_MASK = 0xFFF
# Handle ranges to look for objects and sessions left behind by a client that crashed.
TRANSIENT_HANDLES = 0x80000000
LOADED_SESSION_HANDLES = 0x02000000
LEFTOVER_LOOKUP_COUNT = 64
HANDLE_TYPE_SHIFT = 24  # a handle's top byte is its type (TPM_HT)
SLOTS_FULL = (TPM2_RC.OBJECT_MEMORY, TPM2_RC.SESSION_MEMORY)
WRONG_AUTH = (TPM2_RC.AUTH_FAIL, TPM2_RC.BAD_AUTH)
# Fixed TPM properties (TPM 2.0 Part 2, TPM_PT; tpm2-pytss names only some of them).
PT_MANUFACTURER = 0x105
PT_VENDOR_STRINGS = (0x106, 0x107, 0x108, 0x109)
PT_FIRMWARE_VERSION_1 = 0x10B
UINT32_MAX = 0xFFFFFFFF
SECONDS_PER_MINUTE = 60
SECONDS_PER_HOUR = 3600

T = TypeVar("T")


class TpmLockedOut(HardwareLocked):
    """The TPM's DA lockout is active; ``wait_s`` is the most it lasts (counted while the TPM is powered)."""

    def __init__(self, message: str, wait_s: float):
        super().__init__(message)
        self.wait_s = wait_s


@dataclass(frozen=True)
class DictionaryAttackState:
    """The TPM's dictionary-attack state (TPM2_GetCapability, readable without any authorisation)."""

    failed_tries: int
    max_tries: int
    recovery_time_s: int
    """One failure is forgotten per this many seconds of powered time; 0 means DA protection is off."""
    lockout_recovery_s: int
    in_lockout: bool
    lockout_auth_set: bool
    """True once ``provision`` (or anyone) set the lockout hierarchy's auth value."""


class TpmShare:
    """``HardwareShare`` backed by the TPM 2.0 reached through TCTI ``tcti`` (tpm2-tss syntax).

    Constructing it does not connect; ``open_tpm`` does, once, to fail early. Each method
    connects, works, and disconnects, so nothing stays open between calls: ``close()`` (and
    the context manager) exist for owners that treat it as a resource, and free nothing.
    """

    kind = KIND

    def __init__(self, tcti: str):
        self.tcti = tcti

    def __repr__(self) -> str:
        return f"TpmShare(tcti={self.tcti!r})"

    def close(self) -> None:
        """Nothing to release: every call has closed its connection already. Safe to repeat."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def describe(self) -> str:
        """One line for the Security screen: maker, firmware version and where the TPM is."""
        with self._connection() as ectx:
            properties = self._properties(ectx, PT_MANUFACTURER, PT_FIRMWARE_VERSION_1)
        maker = _ascii(properties.get(PT_MANUFACTURER, 0))
        vendor = "".join(_ascii(properties.get(pt, 0)) for pt in PT_VENDOR_STRINGS)
        firmware = properties.get(PT_FIRMWARE_VERSION_1, 0)
        model = f" ({' '.join(vendor.split())})" if vendor.strip() else ""
        return f"{KIND} by {maker}{model}, firmware {firmware >> 16}.{firmware & 0xFFFF}, at {self.tcti}"

    def check(self) -> None:
        """Connect once and ask the TPM one harmless question; ``HardwareShareError`` if that fails."""
        with self._connection() as ectx:
            self._properties(ectx, PT_MANUFACTURER, PT_MANUFACTURER)

    def create(self, auth: bytes) -> tuple[bytes, dict]:
        """A new random 32-byte share in a free index of Byline's range, readable with ``auth`` only.

        Returns (share, handle). ``HardwareShareError`` when the range is full or the TPM refuses
        (then nothing is left behind in the TPM).
        """
        auth = _checked_auth(auth)
        share = secrets.token_bytes(SHARE_SIZE)
        with self._connection() as ectx, self._salted_session(ectx, expected_tpm=None) as (session, tpm_name):
            nv_index = self._free_index(ectx)
            public = TPM2B_NV_PUBLIC(
                nvPublic=TPMS_NV_PUBLIC(
                    nvIndex=nv_index,
                    nameAlg=TPM2_ALG.SHA256,
                    attributes=SHARE_NV_ATTRIBUTES,
                    dataSize=SHARE_SIZE,
                )
            )
            _encrypt(ectx, session, command=True)  # the auth value is the command's first parameter
            nv = self._call(ectx, "define the share's NV index", lambda: ectx.nv_define_space(
                auth, public, ESYS_TR.OWNER, session1=session))
            try:
                ectx.tr_set_auth(nv, auth)
                self._call(ectx, "write the share", lambda: ectx.nv_write(nv, share, 0, session1=session))
            except BaseException:
                _quietly(lambda: ectx.nv_undefine_space(nv, ESYS_TR.OWNER), "undefine a half-made index")
                raise
        log.info("hardware share created in TPM NV index 0x%08x", nv_index)
        return share, {"nv_index": nv_index, "tpm": tpm_name}

    def read(self, handle: dict, auth: bytes) -> bytes:
        """The share for ``handle`` if ``auth`` is right.

        ``PermissionError`` for a wrong ``auth`` (the TPM counted it); ``HardwareLocked`` while
        the TPM is locked out (nothing counted); ``HardwareShareError`` when this TPM does not
        hold the share (another TPM, cleared, or destroyed) or refuses otherwise.
        """
        nv_index, tpm_name = _checked_handle(handle)
        auth = _checked_auth(auth)
        with self._connection() as ectx, self._salted_session(ectx, expected_tpm=tpm_name) as (session, _):
            nv = self._share_index(ectx, session, nv_index)
            if nv is None:
                raise HardwareShareError(NOT_THIS_TPM)
            ectx.tr_set_auth(nv, auth)
            _encrypt(ectx, session, response=True)  # the share is the response's first parameter
            try:
                data = ectx.nv_read(nv, SHARE_SIZE, 0, session1=session)
            except TSS2_Exception as error:
                if _tpm_code(error) in WRONG_AUTH:
                    raise PermissionError("the TPM refused the authorisation value for the hardware share") from None
                raise self._translated(ectx, error, "read the share") from error
        return bytes(data)

    def destroy(self, handle: dict) -> None:
        """Undefine the share's index (crypto-erase). Quiet when it is gone already or this is another TPM.

        Needs the owner hierarchy's auth value, which Byline leaves empty. An index at that
        handle that is not a share (other attributes) is left alone.
        """
        nv_index, tpm_name = _checked_handle(handle)
        with self._connection() as ectx, self._salted_session(ectx, expected_tpm=None) as (session, this_tpm):
            if this_tpm != tpm_name:
                # The handle names another TPM: this one's index at that number is someone else's.
                log.warning("not destroying NV index 0x%08x: the share was made in another TPM", nv_index)
                return
            nv = self._share_index(ectx, session, nv_index)
            if nv is None:
                log.info("hardware share in NV index 0x%08x was already gone", nv_index)
                return
            self._call(ectx, "destroy the share", lambda: ectx.nv_undefine_space(nv, ESYS_TR.OWNER))
        log.info("hardware share in TPM NV index 0x%08x destroyed", nv_index)

    def provision(self, max_tries: int, recovery_time_s: int, lockout_recovery_s: int) -> bool:
        """Set the TPM's DA parameters once, then lock them: True if done now, False if done before.

        - TPM2_DictionaryAttackLockReset, then TPM2_DictionaryAttackParameters: after
          ``max_tries`` wrong auth values the TPM refuses every DA-protected authorisation; one
          failure is forgotten per ``recovery_time_s`` seconds the TPM is powered (must be at
          least 1: 0 would turn DA protection off); ``lockout_recovery_s`` is how long a wrong
          lockout auth value blocks the lockout hierarchy.
        - Then the lockout hierarchy's auth value is set to 32 random bytes that are thrown away
          at once (sent in an encrypted session, kept nowhere). Whoever holds the phone can
          therefore neither reset the DA counter (TPM2_DictionaryAttackLockReset) nor change
          these parameters nor TPM2_Clear through the lockout hierarchy, and nor can Byline.
        - What remains: TPM2_Clear through the platform hierarchy (its auth is empty unless boot
          firmware sets it) resets the counter and the lockout auth, but it also replaces the
          owner seed and deletes every owner NV index: the share is destroyed, never revealed.
          The owner hierarchy's auth stays empty, so software on the phone can destroy a share
          (denial of service) but cannot read one.

        Once the lockout auth value is set (by an earlier ``provision`` or anyone else), this
        does nothing and returns False. ``ValueError`` for out-of-range parameters.
        """
        _check_uint32("max_tries", max_tries, minimum=1)
        _check_uint32("recovery_time_s", recovery_time_s, minimum=1)
        _check_uint32("lockout_recovery_s", lockout_recovery_s, minimum=0)
        with self._connection() as ectx:
            if self._dictionary_attack_state(ectx).lockout_auth_set:
                log.info("TPM dictionary-attack parameters were set before: leaving them")
                return False
            with self._salted_session(ectx, expected_tpm=None) as (session, _):
                self._call(ectx, "reset the DA counter", lambda: ectx.dictionary_attack_lock_reset(ESYS_TR.LOCKOUT))
                self._call(ectx, "set the DA parameters", lambda: ectx.dictionary_attack_parameters(
                    max_tries, recovery_time_s, lockout_recovery_s, ESYS_TR.LOCKOUT))
                _encrypt(ectx, session, command=True)  # the new auth value is the first parameter
                self._call(ectx, "set the lockout auth value", lambda: ectx.hierarchy_change_auth(
                    ESYS_TR.LOCKOUT, secrets.token_bytes(LOCKOUT_AUTH_SIZE), session1=session))
        log.info(
            "TPM provisioned: lockout after %d wrong tries, one forgotten per %d s; lockout auth thrown away",
            max_tries, recovery_time_s,
        )
        return True

    def dictionary_attack_state(self) -> DictionaryAttackState:
        """The TPM's DA counter, parameters and lockout state."""
        with self._connection() as ectx:
            return self._dictionary_attack_state(ectx)

    # --- connection, sessions, errors ---

    @contextmanager
    def _connection(self) -> Iterator[ESAPI]:
        """An ESAPI context on a fresh TCTI connection, finalised (socket closed) on exit."""
        try:
            ectx = ESAPI(self.tcti)
        except TSS2_Exception as error:
            raise HardwareShareError(f"cannot reach the TPM at {self.tcti!r}: {error}") from error
        with ectx:
            yield ectx

    @contextmanager
    def _salted_session(self, ectx: ESAPI, expected_tpm: str | None) -> Iterator[tuple[ESYS_TR, str]]:
        """(HMAC session salted with the TPM's naming primary key, that key's name in hex).

        With ``expected_tpm``, ``HardwareShareError`` (NOT_THIS_TPM) before any session when the
        name differs. The key and the session are flushed on exit.
        """
        primary = self._with_free_slots(ectx, "create the TPM's naming key", lambda: ectx.create_primary(
            None, TPM2B_PUBLIC.parse(SALT_KEY_TEMPLATE, objectAttributes=SALT_KEY_ATTRIBUTES))[0])
        try:
            tpm_name = bytes(ectx.tr_get_name(primary)).hex()
            if expected_tpm is not None and tpm_name != expected_tpm:
                raise HardwareShareError(NOT_THIS_TPM)
            session = self._with_free_slots(ectx, "start an encrypted session", lambda: ectx.start_auth_session(
                primary, ESYS_TR.NONE, TPM2_SE.HMAC, TPMT_SYM_DEF.parse(SESSION_CIPHER), SESSION_HASH))
        finally:
            _quietly(lambda: ectx.flush_context(primary), "flush the naming key")
        try:
            yield session, tpm_name
        finally:
            _quietly(lambda: ectx.flush_context(session), "flush the session")

    def _with_free_slots(self, ectx: ESAPI, doing: str, action: Callable[[], T]) -> T:
        """``action()``; when the TPM's object or session slots are full, flush leftovers and retry once.

        Leftovers come from a client that died before flushing, on a TPM reached without a
        resource manager (swtpm, /dev/tpm0), where only one client at a time is connected; with
        a resource manager (/dev/tpmrm0) a client sees only its own handles, and has none here.
        """
        try:
            return action()
        except TSS2_Exception as error:
            if _tpm_code(error) not in SLOTS_FULL:
                raise self._translated(ectx, error, doing) from error
        log.warning("the TPM's slots are full of leftovers from an earlier client: flushing them")
        self._flush_leftovers(ectx)
        return self._call(ectx, doing, action)

    def _flush_leftovers(self, ectx: ESAPI) -> None:
        for first in (TRANSIENT_HANDLES, LOADED_SESSION_HANDLES):
            _more, data = self._call(ectx, "list loaded handles", lambda first=first: ectx.get_capability(
                TPM2_CAP.HANDLES, first, LEFTOVER_LOOKUP_COUNT))
            for tpm_handle in data.data.handles:
                if tpm_handle >> HANDLE_TYPE_SHIFT != first >> HANDLE_TYPE_SHIFT:  # the list runs on past the type
                    break
                _quietly(lambda tpm_handle=tpm_handle: ectx.flush_context(ectx.tr_from_tpmpublic(tpm_handle)),
                         "flush a leftover")

    def _call(self, ectx: ESAPI, doing: str, action: Callable[[], T]) -> T:
        """``action()``, its ``TSS2_Exception`` turned into the store's error (see ``_translated``)."""
        try:
            return action()
        except TSS2_Exception as error:
            raise self._translated(ectx, error, doing) from error

    def _translated(self, ectx: ESAPI, error: TSS2_Exception, doing: str) -> HardwareShareError:
        """The store's error for a failed command; ``doing`` completes "the TPM refused to ...".

        The messages carry the TSS's decoding of the return code, which never contains data.
        """
        code = _tpm_code(error)
        if code is None:
            return HardwareShareError(f"lost the TPM at {self.tcti!r} while trying to {doing}: {error}")
        if code == TPM2_RC.LOCKOUT:
            return self._lockout_error(ectx)
        if code == TPM2_RC.NV_RATE:
            return TpmLockedOut("the TPM is slowing down PIN attempts: try again in a few seconds", wait_s=1.0)
        if code == TPM2_RC.INITIALIZE:
            return HardwareShareError("the TPM was not started up (no TPM2_Startup): restart the phone")
        if code in WRONG_AUTH:
            return HardwareShareError(f"the TPM refused to {doing}: a hierarchy has an auth value Byline does not know")
        return HardwareShareError(f"the TPM refused to {doing}: {error}")

    def _lockout_error(self, ectx: ESAPI) -> TpmLockedOut:
        try:
            state = self._dictionary_attack_state(ectx)
        except HardwareShareError:
            return TpmLockedOut("the TPM is locked after too many wrong PINs: try again later", wait_s=0.0)
        return TpmLockedOut(
            f"the TPM is locked after {state.max_tries} wrong PINs in a row: "
            f"try again in up to {_duration(state.recovery_time_s)} with the phone switched on",
            wait_s=float(state.recovery_time_s),
        )

    def _dictionary_attack_state(self, ectx: ESAPI) -> DictionaryAttackState:
        properties = self._properties(ectx, TPM2_PT.PERMANENT, TPM2_PT.LOCKOUT_RECOVERY)
        permanent = TPMA_PERMANENT(properties.get(TPM2_PT.PERMANENT, 0))
        return DictionaryAttackState(
            failed_tries=properties.get(TPM2_PT.LOCKOUT_COUNTER, 0),
            max_tries=properties.get(TPM2_PT.MAX_AUTH_FAIL, 0),
            recovery_time_s=properties.get(TPM2_PT.LOCKOUT_INTERVAL, 0),
            lockout_recovery_s=properties.get(TPM2_PT.LOCKOUT_RECOVERY, 0),
            in_lockout=bool(permanent & TPMA_PERMANENT.INLOCKOUT),
            lockout_auth_set=bool(permanent & TPMA_PERMANENT.LOCKOUTAUTHSET),
        )

    def _properties(self, ectx: ESAPI, first: int, last: int) -> dict[int, int]:
        """TPM properties ``first`` .. ``last`` (TPM2_PT values) by property."""
        _more, data = self._call(ectx, "report its properties", lambda: ectx.get_capability(
            TPM2_CAP.TPM_PROPERTIES, first, last - first + 1))
        return {int(p.property): int(p.value) for p in data.data.tpmProperties if first <= p.property <= last}

    def _free_index(self, ectx: ESAPI) -> int:
        _more, data = self._call(ectx, "list its NV indices", lambda: ectx.get_capability(
            TPM2_CAP.HANDLES, NV_INDEX_FIRST, NV_INDEX_COUNT))
        taken = {int(h) for h in data.data.handles}
        for nv_index in range(NV_INDEX_FIRST, NV_INDEX_LAST + 1):
            if nv_index not in taken:
                return nv_index
        raise HardwareShareError(
            f"all {NV_INDEX_COUNT} of Byline's TPM NV indices "
            f"(0x{NV_INDEX_FIRST:08x}..0x{NV_INDEX_LAST:08x}) are in use: reset the phone to factory state"
        )

    def _share_index(self, ectx: ESAPI, session: ESYS_TR, nv_index: int) -> ESYS_TR | None:
        """The ESYS_TR of a finished share at ``nv_index``; None if there is none (or something else is there).

        The index's public area is read through ``session``, so ESAPI checks its name with the
        session's key rather than taking the bus's word for it.
        """
        _encrypt(ectx, session, response=True)  # NV_ReadPublic's response starts with a TPM2B
        try:
            nv = ectx.tr_from_tpmpublic(nv_index, session1=session)
        except TSS2_Exception as error:
            if _tpm_code(error) == TPM2_RC.HANDLE:
                return None
            raise self._translated(ectx, error, "find the share's NV index") from error
        public, _name = self._call(ectx, "describe the share's NV index", lambda: ectx.nv_read_public(nv))
        area = public.nvPublic
        if (area.attributes, area.dataSize, area.nameAlg, bytes(area.authPolicy)) != (
            WRITTEN_SHARE_NV_ATTRIBUTES, SHARE_SIZE, TPM2_ALG.SHA256, b""
        ):
            log.warning("NV index 0x%08x is not a finished hardware share (attributes %s)", nv_index, area.attributes)
            _quietly(lambda: ectx.tr_close(nv), "forget an NV index")
            return None
        return nv


def open_tpm(setting: str) -> TpmShare | None:
    """The TPM for configuration value ``setting``, connected once to check it answers.

    "none": None (no TPM; the vault relies on Argon2id alone). "auto": the kernel's TPM resource
    manager (``device:/dev/tpmrm0``) when that device exists, else None. Anything else is a
    tpm2-tss TCTI string, e.g. ``swtpm:host=127.0.0.1,port=2321`` or ``device:/dev/tpmrm0``.
    ``HardwareShareError`` naming the TCTI when the TPM cannot be reached.
    """
    value = setting.strip()
    if value.lower() == SETTING_NONE:
        return None
    if value.lower() == SETTING_AUTO:
        if not AUTO_DEVICE.exists():
            log.info("no TPM: %s does not exist", AUTO_DEVICE)
            return None
        value = f"device:{AUTO_DEVICE}"
    if not value:
        raise HardwareShareError(
            f"the TPM setting is empty: use {SETTING_NONE!r}, {SETTING_AUTO!r} or a TCTI such as 'device:{AUTO_DEVICE}'"
        )
    tpm = TpmShare(value)
    tpm.check()
    return tpm


def _encrypt(ectx: ESAPI, session: ESYS_TR, *, command: bool = False, response: bool = False) -> None:
    """Parameter encryption for the next command: its first command and/or response parameter.

    A TPM refuses (TPM_RC_ATTRIBUTES) to encrypt a parameter that is not a sized buffer, so
    each command gets exactly the directions it can take.
    """
    attributes = TPMA_SESSION.CONTINUESESSION
    if command:
        attributes |= TPMA_SESSION.DECRYPT
    if response:
        attributes |= TPMA_SESSION.ENCRYPT
    ectx.trsess_set_attributes(session, attributes, SESSION_ATTRIBUTE_MASK)


def _tpm_code(error: TSS2_Exception) -> int | None:
    """The TPM's response code with handle, session and parameter numbers removed; None unless from the TPM."""
    if error.rc & TSS_LAYER_MASK:
        return None  # the TSS itself (connection lost, bad response, ...)
    return error.error if error.fmt1 else error.rc & TPM_FORMAT_ZERO_MASK


def _quietly(action: Callable[[], object], doing: str) -> None:
    """Clean-up that must not hide the error being raised: failures are logged and dropped."""
    try:
        action()
    except TSS2_Exception as error:
        log.debug("could not %s: %s", doing, error)


def _checked_auth(auth: bytes) -> bytes:
    if not isinstance(auth, (bytes, bytearray, memoryview)):
        raise TypeError(f"the TPM auth value must be bytes, not {type(auth).__name__}")
    auth = bytes(auth)
    if len(auth) != AUTH_SIZE:
        raise ValueError(f"the TPM auth value must be {AUTH_SIZE} bytes, not {len(auth)}")
    return auth


def _checked_handle(handle: dict) -> tuple[int, str]:
    """(nv_index, tpm name) from a handle made by ``create``; ``HardwareShareError`` if it is not one."""
    try:
        nv_index, tpm_name = handle["nv_index"], handle["tpm"]
    except (TypeError, KeyError):
        raise HardwareShareError("the store's TPM handle is damaged (not a dict with nv_index and tpm)") from None
    if not isinstance(nv_index, int) or not NV_INDEX_FIRST <= nv_index <= NV_INDEX_LAST:
        raise HardwareShareError(f"the store's TPM handle is damaged: NV index {nv_index!r} is not Byline's")
    if not isinstance(tpm_name, str) or not tpm_name:
        raise HardwareShareError("the store's TPM handle is damaged: no TPM name")
    return nv_index, tpm_name


def _check_uint32(name: str, value: int, *, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= UINT32_MAX:
        raise ValueError(f"{name} must be a whole number from {minimum} to {UINT32_MAX}, not {value!r}")


def _ascii(value: int) -> str:
    """A TPM property that packs 4 ASCII characters into a 32-bit number, as text."""
    return "".join(chr(c) for c in value.to_bytes(4, "big") if 32 <= c < 127)


def _duration(seconds: int) -> str:
    if seconds < SECONDS_PER_MINUTE:
        return f"{seconds} s"
    if seconds < SECONDS_PER_HOUR:
        return f"{-(-seconds // SECONDS_PER_MINUTE)} min"
    return f"{seconds / SECONDS_PER_HOUR:.1f} h"
