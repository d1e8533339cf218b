"""Encrypted store figures on this machine: unlocking, putting and getting records, changing the secret.

Prints one JSON object on the last line. The Argon2id parameters are calibrated here for the
phone's target (about a second at 64 MiB), so ``unlock_kdf_ms`` shows how well calibration hits
the target on this CPU, and ``kdf_params`` what it chose; ``unlock_kdf_ms_64mib_t3`` is the fixed
RFC 9106 setting for comparison between machines. Record figures include the two fsyncs of every
durable put, so they depend on the file system under ``--dir`` (default: the system temp
directory; on the phone, point it at the SD card). Passphrase mode only: TPM figures come from
:func:`measure_unlock` with a TPM-backed vault.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from firmware.store.kdf import DEFAULT_LANES, DEFAULT_MEMORY_KIB, DEFAULT_TARGET_S, KdfParams, calibrate, derive  # noqa: E402
from firmware.store.vault import Vault  # noqa: E402

RECORD_COUNT = 500
RECORD_SIZES = (64, 300, 2000)
"""A setting, an account with its password, a small contact list."""
KDF_RUNS = 3
SECRET = "bench passphrase, long enough"
NEW_SECRET = "another bench passphrase"
RFC_ITERATIONS = 3


def measure_unlock(vault: Vault, secret: str) -> float:
    """Milliseconds for one ``vault.unlock(secret)``: the whole unlock (KDF, share if any, counter
    writes, opening the records), as the owner waits for it."""
    start = time.perf_counter()
    vault.unlock(secret)
    return (time.perf_counter() - start) * 1000


def kdf_ms(params: KdfParams) -> float:
    """Median milliseconds of the vault's derivation (64 bytes) under ``params``."""
    samples = []
    for _ in range(KDF_RUNS):
        start = time.perf_counter()
        derive(SECRET, params, 64)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def record_figures(vault: Vault) -> dict[str, float]:
    store = vault.unlock(SECRET)
    payloads = [os.urandom(RECORD_SIZES[i % len(RECORD_SIZES)]) for i in range(RECORD_COUNT)]
    put_ms = []
    for i, payload in enumerate(payloads):
        start = time.perf_counter()
        store.put(f"record-{i}", payload)
        put_ms.append((time.perf_counter() - start) * 1000)
    get_ms = []
    for i in range(RECORD_COUNT):
        start = time.perf_counter()
        store.get(f"record-{i}")
        get_ms.append((time.perf_counter() - start) * 1000)
    ordered = sorted(put_ms)
    return {
        "put_latency_ms_median": round(statistics.median(put_ms), 3),
        "put_latency_ms_p95": round(ordered[int(len(ordered) * 0.95) - 1], 3),
        "put_throughput_records_per_s": round(RECORD_COUNT / (sum(put_ms) / 1000), 1),
        "get_latency_ms_median": round(statistics.median(get_ms), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to make the scratch store")
    args = parser.parse_args()
    params = calibrate(DEFAULT_TARGET_S, DEFAULT_MEMORY_KIB)
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        vault = Vault(Path(scratch) / "state", None)
        vault.create(SECRET, params)
        results = {"kdf_params": {"memory_kib": params.memory_kib, "iterations": params.iterations,
                                  "lanes": params.lanes},
                   "kdf_target_ms": DEFAULT_TARGET_S * 1000,
                   "unlock_kdf_ms": round(kdf_ms(params), 1),
                   "unlock_ms": round(statistics.median(measure_unlock(vault, SECRET) for _ in range(KDF_RUNS)), 1),
                   "unlock_kdf_ms_64mib_t3": round(kdf_ms(KdfParams.fresh(DEFAULT_MEMORY_KIB, RFC_ITERATIONS,
                                                                          DEFAULT_LANES)), 1)}
        results |= record_figures(vault)
        start = time.perf_counter()
        vault.change_secret(SECRET, NEW_SECRET)
        results["change_secret_ms"] = round((time.perf_counter() - start) * 1000, 1)
        results["record_count"] = RECORD_COUNT
    print(json.dumps(results))


if __name__ == "__main__":
    main()
