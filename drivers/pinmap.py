"""The handset pin map (hw/pinmap.toml) as data, checked once when it is loaded."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from drivers.errors import DeviceError

DEFAULT_PINMAP = Path(__file__).resolve().parent.parent / "hw" / "pinmap.toml"


@dataclass(frozen=True)
class PinMap:
    """BCM pin numbers of every GPIO the handset uses.

    ``keys[r][c]`` is the name of the key that closes row ``rows[r]`` onto column ``columns[c]``.
    """

    rows: tuple[int, ...]
    columns: tuple[int, ...]
    keys: tuple[tuple[str, ...], ...]
    hook: int
    hook_closed_on_hook: bool
    leds: dict[str, int]
    ringer: int
    spi_dc: int
    spi_reset: int

    def all_pins(self) -> list[int]:
        return [*self.rows, *self.columns, self.hook, *self.leds.values(), self.ringer]


def load_pinmap(path: str | Path = DEFAULT_PINMAP) -> PinMap:
    """Read and check a pin map; raise DeviceError (setting ``pinmap``) if it is unusable."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
        keypad = data["keypad"]
        pinmap = PinMap(
            rows=tuple(int(p) for p in keypad["rows"]),
            columns=tuple(int(p) for p in keypad["columns"]),
            keys=tuple(tuple(str(k) for k in row) for row in keypad["keys"]),
            hook=int(data["hook"]["pin"]),
            hook_closed_on_hook=data["hook"].get("on_hook_level", "low") == "low",
            leds={str(name): int(pin) for name, pin in data["leds"].items()},
            ringer=int(data["ringer"]["pin"]),
            spi_dc=int(data["display"]["spi_dc"]),
            spi_reset=int(data["display"]["spi_reset"]),
        )
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as e:
        raise DeviceError("pin map", "pinmap", f"cannot read {path}: {e}") from None
    if len(pinmap.keys) != len(pinmap.rows) or any(len(r) != len(pinmap.columns) for r in pinmap.keys):
        raise DeviceError("pin map", "pinmap", f"{path}: keypad.keys must be {len(pinmap.rows)} rows of {len(pinmap.columns)} keys")
    pins = pinmap.all_pins()
    if len(set(pins)) != len(pins):
        raise DeviceError("pin map", "pinmap", f"{path}: a GPIO is used twice")
    return pinmap
