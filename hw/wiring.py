"""The pin tables of hw/wiring.md and the overlays in hw/overlays/, generated from hw/pinmap.toml.

After editing the pin map run ``python3 -m hw.wiring`` (or ``python3 hw/wiring.py``) from the
repository root; ``--check`` writes nothing and exits 1 when a generated file is stale.
Physical pin numbers come from HEADER, the standard 40-pin Raspberry Pi header.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

HW_DIR = Path(__file__).resolve().parent
if __package__ in (None, ""):  # run as a file: make `drivers` and `hw` importable
    sys.path.insert(0, str(HW_DIR.parent))

from drivers.errors import DeviceError  # noqa: E402
from drivers.pinmap import DEFAULT_PINMAP, PinMap, load_pinmap  # noqa: E402
from hw.buses import I2C1, I2S, SPI0, UART0, TpmWiring, load_tpm_wiring  # noqa: E402
from hw.overlays import render_overlays  # noqa: E402

WIRING_MD = HW_DIR / "wiring.md"
OVERLAYS_DIR = HW_DIR / "overlays"
BEGIN_MARKER = "<!-- pins:begin -->"
END_MARKER = "<!-- pins:end -->"

SUPPLIES = ("3V3", "5V", "GND")
# Physical pins 1..40 of the 40-pin header (Pi Zero 2 W, 3, 4, 5): a BCM GPIO number or a supply.
HEADER: tuple[int | str, ...] = (
    "3V3", "5V",  # 1, 2
    2, "5V",      # 3, 4
    3, "GND",     # 5, 6
    4, 14,        # 7, 8
    "GND", 15,    # 9, 10
    17, 18,       # 11, 12
    27, "GND",    # 13, 14
    22, 23,       # 15, 16
    "3V3", 24,    # 17, 18
    10, "GND",    # 19, 20
    9, 25,        # 21, 22
    11, 8,        # 23, 24
    "GND", 7,     # 25, 26
    0, 1,         # 27, 28
    5, "GND",     # 29, 30
    6, 12,        # 31, 32
    13, "GND",    # 33, 34
    19, 16,       # 35, 36
    26, 20,       # 37, 38
    "GND", 21,    # 39, 40
)
PHYSICAL_PIN = {bcm: i + 1 for i, bcm in enumerate(HEADER) if isinstance(bcm, int)}

# The bus pins (I2C1, I2S, SPI0, UART0) are fixed by the SoC's pin functions: hw/buses.py.
# Plug-on SLB9670 boards (LetsTrust TPM, Infineon Iridium) sit on header pins 17-26 and tie the
# TPM's RST# to BCM 24. Linux's tpm-slb9670 overlay never drives that line, so a hand-wired
# module works with RST# simply held high.
TPM_BOARD_PINS = range(17, 27)
TPM_BOARD_RESET_BCM = 24
LAST_PULL_UP_AT_RESET = 8  # BCM 0-8 come out of reset pulled up, 9-27 pulled down

ROW_COLOURS = ("brown", "red", "orange", "yellow")
COLUMN_COLOURS = ("green", "blue", "purple", "grey")
TABLE_HEADER = "| Signal | BCM GPIO | Header pin | Other end | Wire |"
HAT_SOCKET = "(HAT socket)"
LED_RESISTOR = "330 Ω"
RINGER_BASE_RESISTOR = "1 kΩ"


class WiringError(ValueError):
    """The pin map cannot be wired as asked (a header pin would carry two signals)."""


@dataclass(frozen=True)
class Wire:
    """One wire from a header pin: ``source`` is a BCM GPIO number or a supply name."""

    signal: str
    source: int | str
    pin: int
    other_end: str
    colour: str

    @property
    def is_supply(self) -> bool:
        return isinstance(self.source, str)


def physical_pin(bcm: int) -> int:
    """Header pin (1-40) of a BCM GPIO; ValueError if the header does not carry it."""
    try:
        return PHYSICAL_PIN[bcm]
    except KeyError:
        raise WiringError(f"BCM GPIO {bcm} is not on the 40-pin header (0-27 are)") from None


def gpio(signal: str, bcm: int, other_end: str, colour: str) -> Wire:
    return Wire(signal, bcm, physical_pin(bcm), other_end, colour)


def supply(signal: str, pin: int, other_end: str) -> Wire:
    """A power or ground wire from header pin ``pin``, which must be a supply pin."""
    name = HEADER[pin - 1]
    if name not in SUPPLIES:
        raise WiringError(f"header pin {pin} is BCM {name}, not a supply pin")
    colour = {"3V3": "red", "5V": "orange", "GND": "black"}[name]
    return Wire(signal, name, pin, other_end, colour)


def wiring_groups(pinmap: PinMap, tpm: TpmWiring | None = None) -> list[tuple[str, list[Wire]]]:
    """Every wire of the handset, grouped by table, in the order a person solders them.

    ``tpm`` is the pin map's [spi0]/[tpm] sections (default: those of hw/pinmap.toml).
    """
    tpm = tpm or load_tpm_wiring()
    spi0 = tpm.spi0
    chip_select_users = {"CE0": "SPI OLED CS (SPI variant only)", "CE1": "SPI OLED CS (SPI variant only)"}
    chip_select_users[f"CE{tpm.chip_select}"] = "TPM CS#"
    rows = [
        gpio(f"Keypad row R{r + 1}", pin, "keys " + " ".join(pinmap.keys[r]), ROW_COLOURS[r % len(ROW_COLOURS)])
        for r, pin in enumerate(pinmap.rows)
    ]
    columns = [
        gpio(
            f"Keypad column C{c + 1}",
            pin,
            "keys " + " ".join(row[c] for row in pinmap.keys),
            COLUMN_COLOURS[c % len(COLUMN_COLOURS)],
        )
        for c, pin in enumerate(pinmap.columns)
    ]
    on_hook = "closed (low) = on hook" if pinmap.hook_closed_on_hook else "open (high) = on hook"
    return [
        ("Power and ground", [
            supply("OLED VCC", 1, "OLED module VCC (3.3 V only: its pull-ups then stay at 3.3 V)"),
            supply("OLED GND", 9, "OLED module GND"),
            supply("Ringer supply", 4, "active buzzer +"),
            supply("Ringer ground", 6, "NPN emitter"),
            supply("Hook and LED ground", 14, "a ground bus for the hook switch COM and the LED cathodes"),
            supply("TPM VCC", 17, "TPM module 3V3"),
            supply("TPM GND", 25, "TPM module GND"),
        ]),
        ("I2C1: OLED and WM8960 control", [
            gpio("I2C1 SDA", I2C1["SDA"], "OLED SDA; WM8960 HAT (through its socket)", "blue"),
            gpio("I2C1 SCL", I2C1["SCL"], "OLED SCL; WM8960 HAT (through its socket)", "yellow"),
        ]),
        ("I2S: WM8960 audio (through the HAT's socket)", [
            gpio("I2S BCLK", I2S["BCLK"], "WM8960 BCLK", HAT_SOCKET),
            gpio("I2S LRCLK", I2S["LRCLK"], "WM8960 LRCLK / WS", HAT_SOCKET),
            gpio("I2S DIN (codec ADC to Pi)", I2S["DIN"], "WM8960 ADCDAT", HAT_SOCKET),
            gpio("I2S DOUT (Pi to codec DAC)", I2S["DOUT"], "WM8960 DACDAT", HAT_SOCKET),
        ]),
        ("SPI0: TPM and the optional SPI OLED", [
            gpio("SPI0 MOSI", spi0["MOSI"], "TPM MOSI; SPI OLED D1/SDA", "green"),
            gpio("SPI0 MISO", spi0["MISO"], "TPM MISO", "blue"),
            gpio("SPI0 SCLK", spi0["SCLK"], "TPM SCLK; SPI OLED D0/CLK", "yellow"),
            gpio("SPI0 CE0", spi0["CE0"], chip_select_users["CE0"], "white"),
            gpio("SPI0 CE1", spi0["CE1"], chip_select_users["CE1"], "white"),
            gpio("OLED DC (SPI variant only)", pinmap.spi_dc, "SPI OLED DC", "grey"),
            gpio("OLED RST (SPI variant only)", pinmap.spi_reset, "SPI OLED RES", "purple"),
        ]),
        ("Key matrix: 4x3 keypad and the navigation buttons", rows + columns),
        ("Hook switch, LEDs and ringer", [
            gpio("Hook switch", pinmap.hook, f"hook switch to ground: {on_hook}", "white"),
            *[
                gpio(f"LED {name}", pin, f"{LED_RESISTOR} → LED anode; cathode → ground", "green")
                for name, pin in pinmap.leds.items()
            ],
            gpio("Ringer", pinmap.ringer, f"{RINGER_BASE_RESISTOR} → NPN base", "purple"),
        ]),
    ]


def shared_pins(wires: list[Wire]) -> list[str]:
    """A message for every header pin that two signals would share (supplies may share)."""
    users: dict[int, list[str]] = {}
    for wire in wires:
        if not wire.is_supply:
            users.setdefault(wire.pin, []).append(wire.signal)
    return [
        f"header pin {pin} would carry {' and '.join(names)}" for pin, names in sorted(users.items()) if len(names) > 1
    ]


def _notes(pinmap: PinMap, wires: list[Wire]) -> list[str]:
    notes = []
    spi_pins = set(SPI0.values())
    on_tpm_board = sorted(
        (w for w in wires if w.pin in TPM_BOARD_PINS and not w.is_supply and w.source not in spi_pins),
        key=lambda w: w.pin,
    )
    if on_tpm_board:
        taken = ", ".join(f"{w.signal} on pin {w.pin}" for w in on_tpm_board)
        note = (
            "**Plug-on TPM boards** (LetsTrust TPM, Infineon Iridium SLB9670) sit on header pins "
            f"{TPM_BOARD_PINS.start}–{TPM_BOARD_PINS.stop - 1}, which here also carry {taken}: "
            "wire the module by hand (3V3, GND, MOSI, MISO, SCLK, CE1 as above) instead of plugging it on."
        )
        if any(w.source == TPM_BOARD_RESET_BCM for w in on_tpm_board):
            note += (
                f" Those boards tie the TPM's RST# to BCM {TPM_BOARD_RESET_BCM} "
                f"(pin {physical_pin(TPM_BOARD_RESET_BCM)}), which this pin map gives to another signal: "
                "do not connect the board's RST# there, pull it up to 3V3 through 10 kΩ."
            )
        notes.append(note)
    on_uart = sorted({pinmap.spi_dc, pinmap.spi_reset} & set(UART0.values()))
    if on_uart:
        notes.append(
            "**Serial console:** the SPI OLED's DC/RST lines use the UART pins "
            f"(BCM {', '.join(map(str, on_uart))}): with the SPI OLED fitted, turn the serial console off "
            "(`enable_uart=0`, no `console=serial0` on the kernel command line)."
        )
    if pinmap.ringer <= LAST_PULL_UP_AT_RESET:
        notes.append(
            f"**Ringer at boot:** BCM {pinmap.ringer} is pulled up until the firmware runs, which would sound the "
            "buzzer: add 100 kΩ from the NPN base to ground."
        )
    return notes


def render_wiring(pinmap: PinMap, tpm: TpmWiring | None = None) -> str:
    """The Markdown between the pin markers of wiring.md; WiringError if two signals share a pin."""
    groups = wiring_groups(pinmap, tpm)
    wires = [w for _, group in groups for w in group]
    clashes = shared_pins(wires)
    if clashes:
        raise WiringError("; ".join(clashes))
    lines = [
        "<!-- Generated by `python3 -m hw.wiring` from hw/pinmap.toml: edit the pin map, not these lines. -->",
    ]
    for title, group in groups:
        lines += ["", f"### {title}", "", TABLE_HEADER, "| --- | --- | --- | --- | --- |"]
        lines += [f"| {w.signal} | {w.source} | {w.pin} | {w.other_end} | {w.colour} |" for w in group]
    for note in _notes(pinmap, wires):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def replace_block(text: str, block: str) -> str:
    """``text`` with everything between the pin markers replaced by ``block``."""
    start, end = text.find(BEGIN_MARKER), text.find(END_MARKER)
    if start < 0 or end < start:
        raise WiringError(f"wiring.md needs the markers {BEGIN_MARKER} and {END_MARKER}, in that order")
    return text[: start + len(BEGIN_MARKER)] + "\n" + block + text[end:]


def generated_files(
    pinmap: PinMap, wiring_md: Path = WIRING_MD, overlays_dir: Path = OVERLAYS_DIR, tpm: TpmWiring | None = None
) -> dict[Path, str]:
    """The content every generated file must have for this pin map (``tpm``: its [spi0]/[tpm])."""
    tpm = tpm or load_tpm_wiring()
    files = {wiring_md: replace_block(wiring_md.read_text(encoding="utf-8"), render_wiring(pinmap, tpm))}
    files.update({overlays_dir / name: text for name, text in render_overlays(pinmap, tpm).items()})
    return files


def stale_files(files: dict[Path, str]) -> list[Path]:
    """The files whose content on disk differs from ``files``."""
    return [path for path, text in files.items() if not path.exists() or path.read_text(encoding="utf-8") != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m hw.wiring", description=__doc__.splitlines()[0])
    parser.add_argument("--pinmap", type=Path, default=DEFAULT_PINMAP, help="pin map to read (default: hw/pinmap.toml)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a generated file is stale")
    args = parser.parse_args(argv)
    try:
        files = generated_files(load_pinmap(args.pinmap), tpm=load_tpm_wiring(args.pinmap))
    except (DeviceError, ValueError, OSError) as e:
        print(f"wiring: {e}", file=sys.stderr)
        return 1
    stale = stale_files(files)
    if args.check:
        for path in stale:
            print(f"wiring: {path} is out of date: run python3 -m hw.wiring", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[path], encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
