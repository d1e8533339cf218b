"""The encrypted state store: everything Byline keeps goes through here, encrypted at rest.

Layers (one module each):

- ``kdf``: Argon2id parameters, their calibration for the device, the derivation itself.
- ``vault``: the header file. A random 256-bit master key is wrapped (AEAD) by a key derived
  from the user's secret (PIN or passphrase) with Argon2id and, when a TPM is present, a second
  share sealed in the TPM behind the same secret. Counts wrong secrets, throttles, wipes.
- ``records``: named records, each an AEAD-sealed file, written atomically and durably.
- ``tpm``: the hardware share, the only module that touches tpm2-pytss.

Contract for every error below: its message names what failed and what to do, and never
contains a secret (PIN, passphrase, key, password, record contents).
"""

from __future__ import annotations

from typing import Protocol


class StoreError(Exception):
    """Base of every error the store raises."""


class NoStore(StoreError):
    """There is no store in this directory: the phone is factory fresh (first boot, or wiped)."""


class WrongSecret(StoreError):
    """The PIN or passphrase is wrong. ``failures`` in a row so far, ``wait_s`` before the next try."""

    def __init__(self, failures: int, wait_s: float, remaining: int):
        super().__init__(f"wrong PIN ({failures} in a row; {remaining} left before the store is wiped)")
        self.failures = failures
        self.wait_s = wait_s
        self.remaining = remaining


class Throttled(StoreError):
    """Too soon after wrong secrets: no attempt was made. Try again after ``wait_s`` seconds."""

    def __init__(self, wait_s: float):
        super().__init__(f"too many wrong PINs: wait {wait_s:.0f} s")
        self.wait_s = wait_s


class WipedAfterFailures(StoreError):
    """The last wrong secret was one too many: the store has been wiped."""


class HeaderDamaged(StoreError):
    """The header file cannot be read (corrupt, truncated, tampered with, unknown version)."""


class RecordDamaged(StoreError):
    """One record cannot be decrypted or parsed; ``record`` names it. Other records still open."""

    def __init__(self, record: str, reason: str):
        super().__init__(f"record {record!r} is damaged: {reason}")
        self.record = record
        self.reason = reason


class HardwareShareError(StoreError):
    """The TPM is missing, is not the one this store was made with, or refuses (lockout)."""


class HardwareLocked(HardwareShareError):
    """The TPM's dictionary-attack lockout is active: it refuses every attempt for now."""


class HardwareShare(Protocol):
    """A 32-byte secret held by hardware and released only for the right authorisation value.

    ``auth`` is derived from the user's secret by the vault (never the raw PIN). ``handle`` is
    public metadata the vault keeps in its header to find the share again.
    """

    kind: str
    """Shown on the Security screen, e.g. "TPM 2.0"."""

    def create(self, auth: bytes) -> tuple[bytes, dict]:
        """Make a new random share protected by ``auth``; returns (share, handle)."""

    def read(self, handle: dict, auth: bytes) -> bytes:
        """The share for ``auth``. A wrong ``auth`` raises WrongSecret-free ``PermissionError``
        (the vault turns it into WrongSecret); HardwareLocked during lockout;
        HardwareShareError when this hardware does not hold the share."""

    def destroy(self, handle: dict) -> None:
        """Destroy the share for good (crypto-erase). Never raises for a share already gone."""
