"""The SoC buses on the 40-pin header and the pin map's [spi0] and [tpm] sections.

drivers/pinmap.py reads only the GPIOs the firmware drives itself; the bus pins are fixed by the
SoC's pin functions, and the TPM sits on one of them. hw/pinmap.toml still lists the SPI0 pins
(so the wiring table and the TPM overlay read them from the one pin map) and this module checks
them against the SoC: a pin map that moves them is refused.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from drivers.pinmap import DEFAULT_PINMAP

# Fixed by the BCM283x/BCM2711 ALT0 functions on the header (bcm283x.dtsi: i2c1_gpio2,
# pcm_gpio18, spi0_gpio7, uart0_gpio14).
I2C1 = {"SDA": 2, "SCL": 3}
I2S = {"BCLK": 18, "LRCLK": 19, "DIN": 20, "DOUT": 21}
SPI0 = {"MOSI": 10, "MISO": 9, "SCLK": 11, "CE0": 8, "CE1": 7}
UART0 = {"TXD": 14, "RXD": 15}

SPI0_CHIP_SELECTS = ("CE0", "CE1")


class BusError(ValueError):
    """The pin map's [spi0] or [tpm] section does not fit the SoC."""


@dataclass(frozen=True)
class TpmWiring:
    """The SPI0 pins (by SPI0 signal name) and the TPM's place on that bus."""

    spi0: dict[str, int]
    chip_select: int
    spi_max_hz: int

    @property
    def cs_pin(self) -> int:
        """BCM GPIO of the TPM's chip select."""
        return self.spi0[SPI0_CHIP_SELECTS[self.chip_select]]

    @property
    def cs_gpios(self) -> tuple[int, ...]:
        """Chip-select GPIOs in chip-select order (the SPI controller's cs-gpios)."""
        return tuple(self.spi0[name] for name in SPI0_CHIP_SELECTS)

    @property
    def data_pins(self) -> tuple[int, ...]:
        return tuple(self.spi0[name] for name in ("MISO", "MOSI", "SCLK"))


def load_tpm_wiring(path: str | Path = DEFAULT_PINMAP) -> TpmWiring:
    """The [spi0] and [tpm] sections of a pin map; BusError if they are missing or do not fit."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
        spi0 = {name: int(data["spi0"][name.lower()]) for name in SPI0}
        tpm = data["tpm"]
        wiring = TpmWiring(spi0=spi0, chip_select=int(tpm["chip_select"]), spi_max_hz=int(tpm["spi_max_hz"]))
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as e:
        raise BusError(f"cannot read [spi0]/[tpm] of {path}: {e!r}") from None
    moved = [f"{name} = {pin} (the SoC has it on GPIO {SPI0[name]})" for name, pin in spi0.items() if pin != SPI0[name]]
    if moved:
        raise BusError(f"{path}: SPI0 pins are fixed by the SoC: " + "; ".join(moved))
    if wiring.chip_select not in range(len(SPI0_CHIP_SELECTS)):
        raise BusError(f"{path}: tpm.chip_select must be 0 (CE0) or 1 (CE1), not {wiring.chip_select}")
    if not 0 < wiring.spi_max_hz <= 43_000_000:
        raise BusError(f"{path}: tpm.spi_max_hz must be 1..43000000 (the SLB9670's limit), not {wiring.spi_max_hz}")
    return wiring
