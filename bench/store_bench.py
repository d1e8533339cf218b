"""Encrypted store figures on this machine: unlocking, putting and getting records, changing the secret.

Prints one JSON object on the last line. The Argon2id parameters are calibrated here for the
phone's target (about a second at 64 MiB), so ``unlock_kdf_ms`` shows how well calibration hits
the target on this CPU, and ``kdf_params`` what it chose; ``unlock_kdf_ms_64mib_t3`` is the fixed
RFC 9106 setting for comparison between machines. Record figures include the two fsyncs of every
durable put, so they depend on the file system under ``--dir`` (default: the system temp
directory; on the phone, point it at the SD card).

Three unlocks under the same calibrated Argon2id parameters, measured in interleaved rounds (one
of each per round) so that a CPU that speeds up or slows down during the run affects all three alike:

- ``unlock_ms``: the passphrase-only vault.
- ``unlock_tpm_ms_median``: a vault with a PIN and the hardware share in a real software TPM
  (swtpm, provisioned as the phone provisions its TPM); ``tpm_share_read_ms_median`` is
  TpmShare.read alone, timed inside those unlocks, and ``tpm_unlock_overhead_ms`` the median of
  the per-round differences from the passphrase unlock. swtpm runs on this CPU over loopback, so a
  TPM chip on a slow bus costs more.
- ``luks2_unlock_ms_median``: a real peer, LUKS2 (cryptsetup ``open --test-passphrase`` on a plain
  file, no device-mapper) formatted with the same memory, iterations and lanes. cryptsetup caps
  the lanes at the number of online CPUs: the keyslot it actually wrote is in
  ``luks2_keyslot_params``, and when that differs from ``kdf_params``,
  ``unlock_kdf_ms_luks2_params`` is our derivation under exactly those parameters.
  ``luks2_iter_time_1000_params`` is what cryptsetup's own benchmark picks for a one-second
  ``--iter-time`` at the same memory.

Without cryptsetup (Debian package ``cryptsetup-bin``), or when it fails (it refuses Argon2id
with fewer than 4 iterations, which calibration picks on a slow CPU), ``luks2_error`` says why
and the other figures are still printed; likewise ``tpm_error`` for the TPM. swtpm is always stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from firmware.store import HardwareShare, StoreError  # noqa: E402
from firmware.store.kdf import DEFAULT_LANES, DEFAULT_MEMORY_KIB, DEFAULT_TARGET_S, KdfParams, calibrate, derive  # noqa: E402
from firmware.store.tpm import open_tpm  # noqa: E402
from firmware.store.vault import Vault  # noqa: E402
from lab.processes import LabError  # noqa: E402
from lab.swtpm import Swtpm  # noqa: E402

RECORD_COUNT = 500
RECORD_SIZES = (64, 300, 2000)
"""A setting, an account with its password, a small contact list."""
KDF_RUNS = 3
UNLOCK_RUNS = 5
SECRET = "bench passphrase, long enough"
NEW_SECRET = "another bench passphrase"
PIN = "480613"
"""With a TPM the vault takes a 6-digit PIN (Argon2id costs the same whatever the secret's length)."""
NEW_PIN = "739152"
RFC_ITERATIONS = 3

# As the phone provisions its TPM: lockout after 32 wrong PINs, one forgotten per 10 minutes,
# a wrong lockout auth value blocks the lockout hierarchy for a day.
TPM_MAX_TRIES = 32
TPM_RECOVERY_S = 600
TPM_LOCKOUT_RECOVERY_S = 86400
TPM_ERRORS = (LabError, StoreError, OSError)
"""swtpm would not start, the TPM refused (HardwareShareError is a StoreError), a socket failed."""

LUKS_FILE_BYTES = 16 * 1024 * 1024
LUKS_ITER_TIME_MS = 1000
CRYPTSETUP_TIMEOUT_S = 60
CRYPTSETUP_PACKAGE = "cryptsetup-bin"
KEYSLOT_FIELDS = (("Time cost", "iterations"), ("Memory", "memory_kib"), ("Threads", "threads"))
"""luksDump's keyslot lines (Memory in KiB) and the names they get here."""

T = TypeVar("T")


def ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def timed_ms(action: Callable[[], object]) -> float:
    """Milliseconds ``action()`` took."""
    start = time.perf_counter()
    action()
    return ms_since(start)


def measure_unlock(vault: Vault, secret: str) -> float:
    """Milliseconds for one ``vault.unlock(secret)``: the whole unlock (KDF, share if any, counter
    writes, opening the records), as the owner waits for it."""
    return timed_ms(lambda: vault.unlock(secret))


def kdf_ms(params: KdfParams) -> float:
    """Median milliseconds of the vault's derivation (64 bytes) under ``params``."""
    return statistics.median(timed_ms(lambda: derive(SECRET, params, 64)) for _ in range(KDF_RUNS))


def record_figures(vault: Vault) -> dict[str, float]:
    store = vault.unlock(SECRET)
    payloads = [os.urandom(RECORD_SIZES[i % len(RECORD_SIZES)]) for i in range(RECORD_COUNT)]
    put_ms = []
    for i, payload in enumerate(payloads):
        start = time.perf_counter()
        store.put(f"record-{i}", payload)
        put_ms.append(ms_since(start))
    get_ms = []
    for i in range(RECORD_COUNT):
        start = time.perf_counter()
        store.get(f"record-{i}")
        get_ms.append(ms_since(start))
    ordered = sorted(put_ms)
    return {
        "put_latency_ms_median": round(statistics.median(put_ms), 3),
        "put_latency_ms_p95": round(ordered[int(len(ordered) * 0.95) - 1], 3),
        "put_throughput_records_per_s": round(RECORD_COUNT / (sum(put_ms) / 1000), 1),
        "get_latency_ms_median": round(statistics.median(get_ms), 3),
    }


def error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


# --- the TPM ---


class TimedShare:
    """A :class:`HardwareShare` that passes every call to ``inner`` and keeps how long each took."""

    def __init__(self, inner: HardwareShare):
        self.inner = inner
        self.kind = inner.kind
        self.ms: dict[str, list[float]] = {"create": [], "read": [], "destroy": []}

    def _timed(self, name: str, call: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return call()
        finally:
            self.ms[name].append(ms_since(start))

    def create(self, auth: bytes) -> tuple[bytes, dict]:
        return self._timed("create", lambda: self.inner.create(auth))

    def read(self, handle: dict, auth: bytes) -> bytes:
        return self._timed("read", lambda: self.inner.read(handle, auth))

    def destroy(self, handle: dict) -> None:
        self._timed("destroy", lambda: self.inner.destroy(handle))


def start_tpm_vault(stack: ExitStack, params: KdfParams, scratch: Path) -> tuple[Vault, TimedShare, float]:
    """(PIN + TPM vault made with ``params``, its timed share, create milliseconds), in a provisioned
    swtpm that ``stack`` stops (and whose state it deletes) on the way out."""
    tpm_state = stack.enter_context(tempfile.TemporaryDirectory(prefix="byline-bench-tpm-"))
    tpm = stack.enter_context(Swtpm(tpm_state))
    tpm_share = open_tpm(tpm.tcti)
    tpm_share.provision(TPM_MAX_TRIES, TPM_RECOVERY_S, TPM_LOCKOUT_RECOVERY_S)
    share = TimedShare(tpm_share)
    vault = Vault(scratch / "state-tpm", share)
    return vault, share, timed_ms(lambda: vault.create(PIN, params))


# --- LUKS2 ---


class CryptsetupFailed(Exception):
    """cryptsetup is missing, failed, or said something this benchmark cannot read."""


class Luks2:
    """A LUKS2 header on a plain file in ``scratch``, driven by the cryptsetup at ``executable``."""

    def __init__(self, executable: str, scratch: Path):
        self.executable = executable
        self.image = scratch / "luks2.img"
        self.passphrase = SECRET.encode("utf-8")

    @classmethod
    def find(cls, scratch: Path) -> Luks2:
        search_path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
        executable = shutil.which("cryptsetup", path=search_path)
        if executable is None:
            raise CryptsetupFailed(f"cryptsetup is not installed (Debian package {CRYPTSETUP_PACKAGE})")
        return cls(executable, scratch)

    def version(self) -> str | None:
        words = self.run(["--version"]).split()  # "cryptsetup 2.6.1 flags: ..."
        return words[1] if len(words) > 1 else None

    def format(self, params: KdfParams, *cost: str) -> dict:
        """A new header with one keyslot for the passphrase, Argon2id at ``params``'s memory and
        lanes and ``cost`` for the time; the keyslot's parameters as cryptsetup wrote them."""
        with open(self.image, "wb") as file:
            file.truncate(LUKS_FILE_BYTES)
        self.run(["luksFormat", "--type", "luks2", "--batch-mode", "--pbkdf", "argon2id",
                  "--pbkdf-memory", str(params.memory_kib), "--pbkdf-parallel", str(params.lanes), *cost,
                  "--key-file=-", str(self.image)], self.passphrase)
        return keyslot_params(self.run(["luksDump", str(self.image)]))

    def unlock_ms(self) -> float:
        """Milliseconds for ``cryptsetup open --test-passphrase``: the whole command, as one waits for it."""
        return timed_ms(lambda: self.run(["open", "--test-passphrase", "--key-file=-", str(self.image)],
                                         self.passphrase))

    def run(self, arguments: list[str], stdin: bytes = b"") -> str:
        """cryptsetup's standard output; ``CryptsetupFailed`` with its last error line otherwise."""
        try:
            done = subprocess.run([self.executable, *arguments], input=stdin, capture_output=True, check=False,
                                  timeout=CRYPTSETUP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise CryptsetupFailed(f"cryptsetup {arguments[0]} took over {CRYPTSETUP_TIMEOUT_S} s") from None
        except OSError as error:
            raise CryptsetupFailed(f"cannot run cryptsetup: {error}") from None
        if done.returncode != 0:
            lines = done.stderr.decode(errors="replace").strip().splitlines() or ["(no message)"]
            raise CryptsetupFailed(f"cryptsetup {arguments[0]} exited with {done.returncode}: {lines[-1]}")
        return done.stdout.decode(errors="replace")


def keyslot_params(dump: str) -> dict:
    """The first keyslot's PBKDF and costs from ``cryptsetup luksDump`` text."""
    if "Keyslots:" not in dump:
        raise CryptsetupFailed("luksDump shows no keyslots")
    section = dump.split("Keyslots:", 1)[1].split("Tokens:", 1)[0]
    pbkdf = re.search(r"^\s*PBKDF:\s*(\S+)", section, re.MULTILINE)
    params = {"pbkdf": pbkdf.group(1) if pbkdf else None}
    for label, name in KEYSLOT_FIELDS:
        found = re.search(rf"^\s*{label}:\s*(\d+)", section, re.MULTILINE)
        if found is None:
            raise CryptsetupFailed(f"luksDump shows no keyslot {label!r}")
        params[name] = int(found.group(1))
    return params


def luks2_exact_kdf(params: KdfParams, keyslot: dict) -> dict:
    """Our derivation under the keyslot's own parameters, when cryptsetup changed ours."""
    if (keyslot["iterations"], keyslot["memory_kib"], keyslot["threads"]) == (
            params.iterations, params.memory_kib, params.lanes):
        return {}
    try:
        same = KdfParams.fresh(keyslot["memory_kib"], keyslot["iterations"], keyslot["threads"])
    except ValueError as error:  # outside the vault's bounds
        return {"unlock_kdf_ms_luks2_params_error": str(error)}
    return {"unlock_kdf_ms_luks2_params": round(kdf_ms(same), 1)}


# --- the run ---


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to make the scratch store")
    args, _ = parser.parse_known_args()  # ./byline bench passes every bench the same arguments
    params = calibrate(DEFAULT_TARGET_S, DEFAULT_MEMORY_KIB)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="byline-bench-") as scratch_dir, ExitStack() as stack:
        scratch = Path(scratch_dir)
        results = {"kdf_params": {"memory_kib": params.memory_kib, "iterations": params.iterations,
                                  "lanes": params.lanes},
                   "kdf_target_ms": DEFAULT_TARGET_S * 1000,
                   "cpu_count": os.cpu_count(),
                   "unlock_kdf_ms": round(kdf_ms(params), 1),
                   "unlock_kdf_ms_64mib_t3": round(kdf_ms(KdfParams.fresh(DEFAULT_MEMORY_KIB, RFC_ITERATIONS,
                                                                          DEFAULT_LANES)), 1)}
        vault = Vault(scratch / "state", None)
        results["create_ms"] = round(timed_ms(lambda: vault.create(SECRET, params)), 1)

        tpm_vault = share = None
        try:
            tpm_vault, share, create_tpm_ms = start_tpm_vault(stack, params, scratch)
            results["create_tpm_ms"] = round(create_tpm_ms, 1)
        except TPM_ERRORS as error:
            results["tpm_error"] = error_text(error)
        luks = None
        try:
            luks = Luks2.find(scratch)
            results["luks2_cryptsetup_version"] = luks.version()
            results["luks2_keyslot_params"] = luks.format(params, "--pbkdf-force-iterations", str(params.iterations))
        except CryptsetupFailed as error:
            results["luks2_error"] = str(error)
            luks = None

        unlock_ms, unlock_tpm_ms, luks2_ms = [], [], []
        for _ in range(UNLOCK_RUNS):
            unlock_ms.append(measure_unlock(vault, SECRET))
            if tpm_vault is not None:
                try:
                    unlock_tpm_ms.append(measure_unlock(tpm_vault, PIN))
                except TPM_ERRORS as error:
                    results["tpm_error"] = error_text(error)
                    tpm_vault = None
            if luks is not None:
                try:
                    luks2_ms.append(luks.unlock_ms())
                except CryptsetupFailed as error:
                    results["luks2_error"] = str(error)
                    luks = None
        results["unlock_ms"] = round(statistics.median(unlock_ms), 1)
        if tpm_vault is not None:
            results["unlock_tpm_ms_median"] = round(statistics.median(unlock_tpm_ms), 1)
            results["tpm_share_read_ms_median"] = round(statistics.median(share.ms["read"]), 1)
            results["tpm_unlock_overhead_ms"] = round(statistics.median(
                tpm - plain for tpm, plain in zip(unlock_tpm_ms, unlock_ms)), 1)
        if luks is not None:
            results["luks2_unlock_ms_median"] = round(statistics.median(luks2_ms), 1)

        results |= record_figures(vault)
        results["change_secret_ms"] = round(timed_ms(lambda: vault.change_secret(SECRET, NEW_SECRET)), 1)
        results["record_count"] = RECORD_COUNT
        if tpm_vault is not None:
            try:
                results["change_pin_tpm_ms"] = round(timed_ms(lambda: tpm_vault.change_secret(PIN, NEW_PIN)), 1)
                results["tpm_share_create_ms_median"] = round(statistics.median(share.ms["create"]), 1)
                results["tpm_share_destroy_ms"] = round(statistics.median(share.ms["destroy"]), 1)
                tpm_vault.unlock(NEW_PIN)  # the new share answers the new PIN
            except TPM_ERRORS as error:
                results["tpm_error"] = error_text(error)
        if luks is not None:
            try:
                results |= luks2_exact_kdf(params, results["luks2_keyslot_params"])
                results[f"luks2_iter_time_{LUKS_ITER_TIME_MS}_params"] = luks.format(
                    params, "--iter-time", str(LUKS_ITER_TIME_MS))
            except CryptsetupFailed as error:
                results["luks2_error"] = str(error)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
