"""The store unit: performs the state machine's store requests on the encrypted store.

Contract: ``start`` opens the TPM (when configured) and looks at the store directory without
unlocking anything, then posts StoreOpened; a TPM that is configured but cannot be reached
disables the unit (DeviceError naming ``security.tpm``), so the phone never silently falls back
to weaker protection. Requests run one at a time, in order, on one worker thread (Argon2id and
the TPM take about a second); each ends with exactly one result event posted to the loop. No
secret is logged: errors are logged and shown by their message, which the store keeps clean.

``security.tpm = "simulated"`` starts a private swtpm (lab/swtpm.py) whose state lives in a
``tpm`` directory beside the state directory, so the simulated TPM survives restarts as a
soldered one would and a copy of the state directory alone does not open elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from drivers.errors import DeviceError
from firmware import effects as fx
from firmware.config import Config
from firmware.profile import PROFILE_RECORDS, Profile, ProfileError, Settings, from_record, to_record
from firmware.store import (HardwareLocked, HardwareShareError, NoStore, StoreError, Throttled, WipedAfterFailures,
                            WrongSecret)
from firmware.store.kdf import calibrate
from firmware.store.records import Store
from firmware.store.tpm import open_tpm
from firmware.store.vault import Vault
from firmware.store.volume import VolumeArea
from firmware.units import Unit

log = logging.getLogger(__name__)

SIMULATED_TPM = "simulated"
SIMULATED_TPM_DIRECTORY = "tpm"
TPM_MAX_TRIES = 32
"""The TPM's own limit sits well above security.wipe_after_failures (at most 100 is allowed, but
the default 10 wipes long before), leaving room for the one failure the TPM counts for each
power cut after a PIN entry; it is what stops someone who resets our counter on the card."""
TPM_RECOVERY_S = 600
"""After the TPM's limit, one more try per 10 minutes: a million PINs take 19 years."""
TPM_LOCKOUT_RECOVERY_S = 86400


class StoreAccess:
    """The open store, for the units that keep state in it (calls: the ZID cache); None while
    locked at boot or after a wipe. Only the store unit sets it."""

    def __init__(self):
        self.store: Store | None = None


class StoreUnit(Unit):
    name = "store"
    section = "security"
    performs = fx.STORE_EFFECTS

    def __init__(self, config: Config, settings_defaults: Settings, access: StoreAccess):
        self._access = access
        self._config = config
        self._defaults = settings_defaults
        self._swtpm = None
        self._share = None
        self._vault: Vault | None = None
        self._worker: ThreadPoolExecutor | None = None
        self._post: Callable[[object], None] | None = None

    def start(self, post: Callable[[object], None]) -> None:
        loop = asyncio.get_running_loop()
        self._post = lambda event: loop.call_soon_threadsafe(post, event)
        directory = Path(self._config["security.state_dir"])
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise DeviceError("store", "state_dir", f"cannot create {directory}: {e.strerror}") from None
        self._share = self._open_share(directory)
        volume = self._config["security.data_volume"]
        place = VolumeArea(Path(volume)) if volume else directory
        self._vault = Vault(place, self._share, max_failures=self._config["security.wipe_after_failures"])
        try:
            exists = self._vault.exists()
        except StoreError as e:  # the data volume's helper is missing or failing
            self.stop()
            raise DeviceError("store", "data_volume", str(e)) from None
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="store")
        log.info("store %s in %s; protection: %s", "found" if exists else "absent", self._vault.area,
                 self.protection)
        post(fx.StoreOpened(exists, self.protection, self._vault.min_secret_length))

    @property
    def _store(self) -> Store | None:
        return self._access.store

    @_store.setter
    def _store(self, store: Store | None) -> None:
        self._access.store = store

    @property
    def protection(self) -> str:
        return self._vault.protection if self._vault else "none"

    def _open_share(self, directory: Path):
        setting = self._config["security.tpm"]
        try:
            if setting == SIMULATED_TPM:
                from lab.swtpm import Swtpm

                self._swtpm = Swtpm(directory.parent / SIMULATED_TPM_DIRECTORY).start()
                setting = self._swtpm.tcti
            return open_tpm(setting)
        except (HardwareShareError, OSError) as e:
            self.stop()
            raise DeviceError("store", "tpm", str(e)) from None
        except Exception as e:  # the lab's errors: swtpm missing or failing to start
            self.stop()
            raise DeviceError("store", "tpm", f"simulated TPM did not start: {e}") from None

    def perform(self, request) -> None:
        self._worker.submit(self._run, request)

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None
        self._store = None
        close = getattr(self._share, "close", None)
        if close is not None:
            close()
        self._share = None
        if self._swtpm is not None:
            self._swtpm.stop()
            self._swtpm = None

    # On the worker thread.

    def _run(self, request) -> None:
        try:
            result = self._answer(request)
        except (WrongSecret, Throttled, HardwareLocked) as e:
            result = fx.SecretRefused(_short_refusal(e), getattr(e, "wait_s", 0.0))
        except WipedAfterFailures:
            self._store = None
            log.warning("store wiped after %d wrong secrets in a row", self._config["security.wipe_after_failures"])
            result = fx.FactoryFresh(f"Wiped: {self._config['security.wipe_after_failures']} wrong")
        except NoStore:
            self._store = None  # a duress secret, or no store: say nothing, look new
            result = fx.FactoryFresh()
        except StoreError as e:
            log.error("store: %s failed: %s", type(request).__name__, e)
            result = fx.StoreFailed(str(e))
        except Exception:  # a bug must cost one request, not the phone
            log.exception("store: %s failed", type(request).__name__)
            result = fx.StoreFailed("store error: see the log")
        self._post(result)

    def _answer(self, request):
        if isinstance(request, fx.CreateStore):
            kdf = calibrate(self._config["security.kdf_target_ms"] / 1000, self._config["security.kdf_memory_mib"] * 1024)
            if self._share is not None:
                self._share.provision(TPM_MAX_TRIES, TPM_RECOVERY_S, TPM_LOCKOUT_RECOVERY_S)
            self._store = self._vault.create(request.secret, kdf)
            profile = Profile(settings=self._defaults)
            self._store.put(PROFILE_RECORDS[0], to_record(PROFILE_RECORDS[0], profile.settings))
            return fx.Unlocked(profile)
        if isinstance(request, fx.Unlock):
            self._store = self._vault.unlock(request.secret)
            profile, problems = self._load_profile()
            return fx.Unlocked(profile, self._vault.duress_set, problems)
        if isinstance(request, fx.VerifySecret):
            self._vault.verify(request.secret)
            return fx.SecretAccepted()
        if isinstance(request, fx.ChangeSecret):
            self._vault.change_secret(request.current, request.new)
            return fx.SecretAccepted()
        if isinstance(request, fx.SetDuress):
            self._vault.set_duress(request.current, request.duress)
            return fx.SecretAccepted()
        if self._store is None:
            return fx.StoreFailed("the store is not open")
        if isinstance(request, fx.SaveProfilePart):
            self._store.put(request.part, to_record(request.part, request.value))
            return fx.Saved("Saved")
        if isinstance(request, fx.EraseHistory):
            self._store.erase_history()
            return fx.Saved("History erased")
        raise TypeError(f"not a store request: {type(request).__name__}")

    def _load_profile(self) -> tuple[Profile, tuple[str, ...]]:
        """The stored profile; a part that cannot be read is named in the problems and left empty."""
        profile, problems = Profile(settings=self._defaults), []
        for part in PROFILE_RECORDS:
            try:
                raw = self._store.get(part)
            except KeyError:
                continue
            except StoreError as e:
                problems.append(str(e))
                continue
            try:
                profile = profile.with_part(part, from_record(part, raw, self._defaults))
            except ProfileError as e:
                problems.append(str(e))
        for problem in problems:
            log.error("store: %s", problem)
        return profile, tuple(problems)


def _short_refusal(error: StoreError) -> str:
    """A refusal short enough for the PIN screen's one line."""
    if isinstance(error, WrongSecret):
        return f"Wrong: {error.remaining} left" if error.wait_s <= 0 else f"Wrong: wait {error.wait_s:.0f} s"
    if isinstance(error, Throttled):
        return f"Wait {error.wait_s:.0f} s"
    return "TPM locked out"
