"""What the store's tests share: fast KDF parameters, a hand-moved clock, an in-memory hardware
share (the real TPM has its own tests in tests/test_tpm.py), and the secrets they use."""

import hmac
import json
import os
import secrets
from pathlib import Path

from firmware.store import HardwareLocked, HardwareShareError
from firmware.store.kdf import KdfParams

PASSPHRASE = "correct horse battery staple"
OTHER_PASSPHRASE = "tr0ub4dor&3 is not as good"
DURESS_PASSPHRASE = "everything is fine officer"
WRONG_PASSPHRASE = "definitely not the passphrase"
PIN = "246810"
NEW_PIN = "135799"
WRONG_PIN = "000000"


def small_kdf() -> KdfParams:
    """Fast parameters for tests (the phone's are calibrated: 64 MiB, about a second)."""
    return KdfParams.fresh(memory_kib=8 * 1024, iterations=1, lanes=1)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeShare:
    """A HardwareShare in memory, or in a JSON file (``path``) so that it survives a killed process.

    Each instance is its own "TPM" (a random device id in every handle): another instance does
    not hold this one's shares, as another TPM would not.
    """

    kind = "TPM 2.0"

    def __init__(self, path: Path | None = None):
        self.path = path
        self.device = secrets.token_hex(4)
        self.shares: dict[str, tuple[str, str]] = {}
        self.created_auths: list[bytes] = []
        self.destroyed: list[dict] = []
        self.locked = False
        self.on_destroy = None
        if path is not None and path.exists():
            saved = json.loads(path.read_text())
            self.device, self.shares = saved["device"], {k: tuple(v) for k, v in saved["shares"].items()}

    def create(self, auth: bytes) -> tuple[bytes, dict]:
        self.created_auths.append(auth)
        share_id, share = secrets.token_hex(8), os.urandom(32)
        self.shares[share_id] = (auth.hex(), share.hex())
        self._save()
        return share, {"device": self.device, "id": share_id}

    def read(self, handle: dict, auth: bytes) -> bytes:
        if self.locked:
            raise HardwareLocked("the TPM is in lockout")
        if handle.get("device") != self.device or handle.get("id") not in self.shares:
            raise HardwareShareError("this TPM does not hold the store's share")
        stored_auth, share = self.shares[handle["id"]]
        if not hmac.compare_digest(bytes.fromhex(stored_auth), auth):
            raise PermissionError("wrong authorisation value")
        return bytes.fromhex(share)

    def destroy(self, handle: dict) -> None:
        if self.on_destroy is not None:
            self.on_destroy(handle)
        self.destroyed.append(handle)
        if handle.get("device") == self.device:
            self.shares.pop(handle["id"], None)
            self._save()

    def _save(self) -> None:
        if self.path is not None:
            temp = self.path.with_suffix(".tmp")
            temp.write_text(json.dumps({"device": self.device, "shares": self.shares}))
            os.replace(temp, self.path)


def files_under(directory: Path) -> list[Path]:
    return sorted(path for path in directory.rglob("*") if path.is_file())
