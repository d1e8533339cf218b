"""Argon2id: the parameters kept in the vault header, their calibration, the derivation.

Contract: :class:`KdfParams` only ever holds parameters inside the bounds below (its
constructor raises ``ValueError`` otherwise), so a header that names absurd costs is refused
instead of exhausting the phone's memory. :func:`derive` is deterministic for a secret and a
set of parameters. :func:`calibrate` picks the iteration count for *this* CPU.
"""

from __future__ import annotations

import os
import time
import unicodedata
from dataclasses import dataclass, replace

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

ALGORITHM = "argon2id"
SALT_BYTES = 16
MIN_MEMORY_KIB = 8 * 1024
# The Pi Zero 2 W has 512 MiB of RAM; a header asking for more than this is refused, not obeyed.
MAX_MEMORY_KIB = 256 * 1024
MIN_ITERATIONS = 1
MAX_ITERATIONS = 1000
MAX_LANES = 16

DEFAULT_MEMORY_KIB = 64 * 1024
DEFAULT_ITERATIONS = 3
"""RFC 9106's second recommended option is 64 MiB with 3 passes; calibration adjusts the passes."""
DEFAULT_LANES = 4
DEFAULT_TARGET_S = 1.0
"""One unlock should take about a second on the phone (a Pi Zero 2 W class CPU)."""

CALIBRATION_RUNS = 3
CALIBRATION_SECRET = "calibration only"


@dataclass(frozen=True)
class KdfParams:
    """Argon2id parameters. Nothing here is secret: they are stored in the clear in the header."""

    salt: bytes
    memory_kib: int
    iterations: int
    lanes: int = DEFAULT_LANES
    algorithm: str = ALGORITHM

    def __post_init__(self) -> None:
        if self.algorithm != ALGORITHM:
            raise ValueError(f"KDF algorithm {self.algorithm!r} is not supported (only {ALGORITHM})")
        if not isinstance(self.salt, bytes) or len(self.salt) < SALT_BYTES:
            raise ValueError(f"the KDF salt must be at least {SALT_BYTES} bytes")
        _check_int("iterations", self.iterations, MIN_ITERATIONS, MAX_ITERATIONS)
        _check_int("lanes", self.lanes, 1, MAX_LANES)
        _check_int("memory_kib", self.memory_kib, MIN_MEMORY_KIB, MAX_MEMORY_KIB)

    @classmethod
    def fresh(cls, memory_kib: int = DEFAULT_MEMORY_KIB, iterations: int = DEFAULT_ITERATIONS,
              lanes: int = DEFAULT_LANES) -> KdfParams:
        """Parameters with a new random salt."""
        return cls(salt=os.urandom(SALT_BYTES), memory_kib=memory_kib, iterations=iterations, lanes=lanes)

    def with_new_salt(self) -> KdfParams:
        """The same costs with a new random salt (for a new secret)."""
        return replace(self, salt=os.urandom(SALT_BYTES))

    def to_dict(self) -> dict:
        """JSON-ready form for the header."""
        return {"algorithm": self.algorithm, "salt": self.salt.hex(), "memory_kib": self.memory_kib,
                "iterations": self.iterations, "lanes": self.lanes}

    @classmethod
    def from_dict(cls, data: dict) -> KdfParams:
        """The inverse of :meth:`to_dict`; ``ValueError`` for anything missing, extra or out of bounds."""
        if not isinstance(data, dict) or set(data) != {"algorithm", "salt", "memory_kib", "iterations", "lanes"}:
            raise ValueError("KDF parameters are malformed")
        if not isinstance(data["salt"], str):
            raise ValueError("the KDF salt is not hex text")
        return cls(salt=bytes.fromhex(data["salt"]), memory_kib=data["memory_kib"],
                   iterations=data["iterations"], lanes=data["lanes"], algorithm=data["algorithm"])


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"KDF {name} must be a whole number in {low}..{high}")


def normalise_secret(secret: str) -> str:
    """The canonical form of a PIN or passphrase (NFC), so that the same passphrase typed through
    different input methods (composed or decomposed accents) is the same secret."""
    if not isinstance(secret, str):
        raise TypeError(f"a secret must be text, not {type(secret).__name__}")
    return unicodedata.normalize("NFC", secret)


def derive(secret: str, params: KdfParams, length: int) -> bytes:
    """``length`` bytes from ``secret`` (normalised by :func:`normalise_secret`) with Argon2id."""
    normalised = normalise_secret(secret).encode("utf-8")
    kdf = Argon2id(salt=params.salt, length=length, iterations=params.iterations, lanes=params.lanes,
                   memory_cost=params.memory_kib)
    return kdf.derive(normalised)


def calibrate(target_s: float = DEFAULT_TARGET_S, memory_kib: int = DEFAULT_MEMORY_KIB,
              lanes: int = DEFAULT_LANES) -> KdfParams:
    """Fresh parameters whose derivation takes about ``target_s`` seconds on this CPU.

    A derivation costs a fixed part (allocating and first touching the memory, starting the
    lanes) plus one memory pass per iteration. So: time one pass (the best of
    :data:`CALIBRATION_RUNS`, so a busy moment does not inflate it), then a probe of as many
    passes as that suggests fit in the target (an underestimate, the fixed part being counted
    in every pass), and solve the iteration count from the line through both. Takes about
    ``2 * target_s``. ``memory_kib`` below :data:`MIN_MEMORY_KIB` is raised to it; the
    iteration count is at least :data:`MIN_ITERATIONS`.
    """
    memory_kib = max(memory_kib, MIN_MEMORY_KIB)
    one_pass_s = min(_time(memory_kib, 1, lanes) for _ in range(CALIBRATION_RUNS))
    probe = min(MAX_ITERATIONS, int(target_s / one_pass_s))
    if probe < 2:
        return KdfParams.fresh(memory_kib=memory_kib, iterations=MIN_ITERATIONS, lanes=lanes)
    per_pass_s = max((_time(memory_kib, probe, lanes) - one_pass_s) / (probe - 1), 1e-6)  # 1e-6: timer noise
    fixed_s = max(one_pass_s - per_pass_s, 0.0)
    iterations = round((target_s - fixed_s) / per_pass_s)
    return KdfParams.fresh(memory_kib=memory_kib, iterations=max(MIN_ITERATIONS, min(MAX_ITERATIONS, iterations)),
                           lanes=lanes)


def _time(memory_kib: int, passes: int, lanes: int) -> float:
    params = KdfParams.fresh(memory_kib=memory_kib, iterations=passes, lanes=lanes)
    start = time.perf_counter()
    derive(CALIBRATION_SECRET, params, 32)
    return time.perf_counter() - start
