"""Canaries: random values that must never be found readable in a file (the at-rest promise)."""

import base64
import random
import string
from collections.abc import Iterable, Mapping
from pathlib import Path


def canary(rng: random.Random, length: int = 14, alphabet: str = string.ascii_lowercase + string.digits) -> str:
    return "".join(rng.choice(alphabet) for _ in range(length))


def forms(secret: str) -> dict[str, bytes]:
    """The ways a careless program could write ``secret``: plain, hex, base64, UTF-16."""
    raw = secret.encode()
    return {
        "plain": raw,
        "hex": raw.hex().encode(),
        "HEX": raw.hex().upper().encode(),
        "base64": base64.b64encode(raw).rstrip(b"="),
        "base64url": base64.urlsafe_b64encode(raw).rstrip(b"="),
        "utf-16-le": secret.encode("utf-16-le"),
        "utf-16-be": secret.encode("utf-16-be"),
    }


def files_under(*places: Path) -> list[Path]:
    """Every file under the given directories, and the given files themselves."""
    return [p for place in places for p in ([place] if place.is_file() else place.rglob("*")) if p.is_file()]


def canaries_found(secrets: Mapping[str, str], files: Iterable[Path]) -> list[str]:
    """"NAME as FORM in PATH" for every canary found in a readable form in one of ``files``."""
    contents = {path: path.read_bytes() for path in files}
    return [f"{name} as {form} in {path}" for name, secret in secrets.items()
            for form, needle in forms(secret).items() for path, data in contents.items() if needle in data]
