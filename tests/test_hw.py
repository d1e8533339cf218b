"""hw/: the wiring tables and the device-tree overlays follow hw/pinmap.toml, and the overlays build."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.pinmap import DEFAULT_PINMAP, PinMap, load_pinmap
from hw import overlays, wiring

REPO = Path(__file__).resolve().parent.parent
INPUT_EVENT_CODES = Path("/usr/include/linux/input-event-codes.h")  # linux-libc-dev, via python3-dev
COMMAND_TIMEOUT_S = 30
UNRESOLVED_PHANDLE = 0xFFFFFFFF  # what dtc writes for a reference the overlay loader fills in
TABLE_ROW = re.compile(r"^\| (?P<signal>[^|]+?) \| (?P<source>[^|]+?) \| (?P<pin>\d+) \| [^|]+ \| [^|]+ \|$")


@pytest.fixture(scope="module")
def pinmap() -> PinMap:
    return load_pinmap()


def linux_constant(name: str) -> int:
    match = re.search(rf"^#define {re.escape(name)}\s+(\w+)", INPUT_EVENT_CODES.read_text(), re.MULTILINE)
    assert match, f"{name} not in {INPUT_EVENT_CODES}"
    return int(match[1], 0)


def write_pinmap(path: Path, **replacements: str) -> Path:
    """A copy of the real pin map with whole lines replaced (``line start -> new line``)."""
    lines = DEFAULT_PINMAP.read_text().splitlines()
    for start, new in replacements.items():
        hits = [i for i, line in enumerate(lines) if line.startswith(start)]
        assert len(hits) == 1, f"{start!r} matches {len(hits)} lines of the pin map"
        lines[hits[0]] = new
    path.write_text("\n".join(lines) + "\n")
    return path


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)


def compile_overlay(source: Path, out_dir: Path) -> dict[tuple[str, str], list[int] | list[str]]:
    """Build ``source`` with dtc, decompile the .dtbo and return its properties by (node, name)."""
    dtbo = out_dir / (source.stem + ".dtbo")
    built = run(["dtc", "-@", "-I", "dts", "-O", "dtb", "-o", str(dtbo), str(source)])
    assert built.returncode == 0 and built.stderr == "", f"dtc {source.name}:\n{built.stderr}"
    # Unresolved &gpio references are expected in an overlay: that check alone is silenced.
    back = run(["dtc", "-I", "dtb", "-O", "dts", "-W", "no-gpios_property", str(dtbo)])
    assert back.returncode == 0 and back.stderr == "", f"dtc -I dtb {dtbo.name}:\n{back.stderr}"
    return parse_decompiled(back.stdout)


def parse_decompiled(dts: str) -> dict[tuple[str, str], list[int] | list[str]]:
    path: list[str] = []
    properties: dict[tuple[str, str], list[int] | list[str]] = {}
    for line in (raw.strip() for raw in dts.splitlines()):
        if line.endswith("{"):
            path.append(line[:-1].strip())
        elif line == "};":
            path.pop()
        elif cells := re.fullmatch(r"(\S+) = <([^>]*)>;", line):
            properties["/".join(path[1:]), cells[1]] = [int(cell, 16) for cell in cells[2].split()]
        elif strings := re.fullmatch(r'(\S+) = "(.*)";', line):
            properties["/".join(path[1:]), strings[1]] = strings[2].split("\\0")
    return properties


def gpio_numbers(cells: list[int], flags: int = overlays.GPIO_ACTIVE_LOW) -> list[int]:
    """GPIO numbers of a <&gpio N flags>... list, checking each is a &gpio reference with ``flags``."""
    triples = [cells[i : i + 3] for i in range(0, len(cells), 3)]
    assert all(len(t) == 3 and t[0] == UNRESOLVED_PHANDLE and t[2] == flags for t in triples), cells
    return [t[1] for t in triples]


def test_header_table_is_the_standard_40_pin_header():
    assert len(wiring.HEADER) == 40
    assert sorted(wiring.PHYSICAL_PIN) == list(range(28))  # BCM 0-27, each exactly once
    known = {2: 3, 3: 5, 4: 7, 14: 8, 17: 11, 18: 12, 27: 13, 24: 18, 10: 19, 25: 22, 7: 26, 0: 27, 12: 32, 19: 35, 26: 37, 21: 40}
    assert {bcm: wiring.physical_pin(bcm) for bcm in known} == known
    supplies = {name: [i + 1 for i, p in enumerate(wiring.HEADER) if p == name] for name in wiring.SUPPLIES}
    assert supplies == {"3V3": [1, 17], "5V": [2, 4], "GND": [6, 9, 14, 20, 25, 30, 34, 39]}
    with pytest.raises(ValueError, match="BCM GPIO 28 is not on the 40-pin header"):
        wiring.physical_pin(28)


def test_generated_files_match_the_pin_map(pinmap):
    files = wiring.generated_files(pinmap)
    assert set(files) == {wiring.WIRING_MD, wiring.OVERLAYS_DIR / "byline-keypad.dts", wiring.OVERLAYS_DIR / "byline-hook.dts"}
    assert wiring.stale_files(files) == [], "run: python3 -m hw.wiring"


def test_check_mode_runs_as_a_script():
    result = run([sys.executable, "hw/wiring.py", "--check"])
    assert (result.returncode, result.stderr) == (0, "")


def test_wiring_md_gives_every_signal_its_own_header_pin(pinmap):
    text = wiring.WIRING_MD.read_text()
    block = text[text.index(wiring.BEGIN_MARKER) : text.index(wiring.END_MARKER)]
    rows = [m.groupdict() for m in map(TABLE_ROW.match, block.splitlines()) if m]
    assert len(rows) == sum(len(group) for _, group in wiring.wiring_groups(pinmap))
    signal_pins: dict[int, str] = {}
    for row in rows:
        pin, source = int(row["pin"]), row["source"]
        expected = source if source in wiring.SUPPLIES else int(source)
        assert wiring.HEADER[pin - 1] == expected, f"{row['signal']}: header pin {pin} is not {source}"
        if source not in wiring.SUPPLIES:
            assert pin not in signal_pins, f"header pin {pin} carries {signal_pins[pin]} and {row['signal']}"
            signal_pins[pin] = row["signal"]
    wired = {wiring.HEADER[pin - 1] for pin in signal_pins}
    assert {*pinmap.all_pins(), pinmap.spi_dc, pinmap.spi_reset} <= wired
    assert {2, 3, 18, 19, 20, 21, 7, 8, 9, 10, 11} <= wired  # I2C1, I2S, SPI0


def test_a_pin_map_that_collides_with_a_bus_is_refused(tmp_path, capsys):
    bad = write_pinmap(tmp_path / "pinmap.toml", **{"pin = 17": "pin = 18"})  # hook onto I2S BCLK
    assert wiring.main(["--pinmap", str(bad), "--check"]) == 1
    assert "header pin 12 would carry I2S BCLK and Hook switch" in capsys.readouterr().err


def test_a_key_without_a_linux_code_is_refused(tmp_path, capsys):
    bad = write_pinmap(tmp_path / "pinmap.toml", **{'  ["*", "0", "#", "back"]': '  ["*", "0", "#", "redial"]'})
    assert wiring.main(["--pinmap", str(bad), "--check"]) == 1
    assert "pin map key 'redial' has no Linux key code" in capsys.readouterr().err


def test_key_codes_are_the_kernels():
    for name, (macro, value) in overlays.KEY_CODES.items():
        assert linux_constant(macro) == value, name
    assert linux_constant("EV_SW") == overlays.EV_SW
    assert linux_constant("SW_DOCK") == overlays.SW_DOCK


def test_keypad_overlay_builds_with_the_pin_map_and_keymap(pinmap, tmp_path):
    props = compile_overlay(wiring.OVERLAYS_DIR / overlays.KEYPAD_DTS, tmp_path)
    node = "fragment@1/__overlay__/byline-keypad"
    # The driver senses its rows and drives its columns: the pin map's columns and rows.
    assert gpio_numbers(props[node, "row-gpios"]) == list(pinmap.columns)
    assert gpio_numbers(props[node, "col-gpios"]) == list(pinmap.rows)
    assert props[node, "debounce-delay-ms"] == [overlays.KEYPAD_DEBOUNCE_MS]
    assert props[node, "col-scan-delay-us"] == [overlays.KEYPAD_COL_SCAN_DELAY_US]
    keys = {}
    for cell in props[node, "linux,keymap"]:
        sensed, driven, code = cell >> 24, (cell >> 16) & 0xFF, cell & 0xFFFF
        keys[driven, sensed] = code
    assert keys == {
        (r, c): linux_constant(overlays.KEY_CODES[name][0]) for r, row in enumerate(pinmap.keys) for c, name in enumerate(row)
    }
    pins = "fragment@0/__overlay__/byline-keypad-pins"
    assert sorted(props[pins, "brcm,pins"]) == sorted(pinmap.rows + pinmap.columns)
    assert props[pins, "brcm,pull"] == [overlays.BCM2835_PUD_UP]
    assert len(props["__fixups__", "gpio"]) == 1 + len(pinmap.rows) + len(pinmap.columns)


def test_hook_overlay_builds_with_the_pin_map(pinmap, tmp_path):
    props = compile_overlay(wiring.OVERLAYS_DIR / overlays.HOOK_DTS, tmp_path)
    switch = "fragment@1/__overlay__/byline-hook/hook-switch"
    assert pinmap.hook_closed_on_hook  # so the line is active low: 1 = on hook
    assert gpio_numbers(props[switch, "gpios"]) == [pinmap.hook]
    assert props[switch, "linux,input-type"] == [linux_constant("EV_SW")]
    assert props[switch, "linux,code"] == [linux_constant("SW_DOCK")]
    assert props[switch, "debounce-interval"] == [overlays.HOOK_DEBOUNCE_MS]
    assert props["fragment@0/__overlay__/byline-hook-pins", "brcm,pins"] == [pinmap.hook]


def test_hook_overlay_follows_an_active_high_hook_switch(tmp_path):
    high = load_pinmap(write_pinmap(tmp_path / "pinmap.toml", **{"on_hook_level": 'on_hook_level = "high"'}))
    source = tmp_path / overlays.HOOK_DTS
    source.write_text(overlays.render_hook(high))
    props = compile_overlay(source, tmp_path)
    gpios = props["fragment@1/__overlay__/byline-hook/hook-switch", "gpios"]
    assert gpio_numbers(gpios, flags=overlays.GPIO_ACTIVE_HIGH) == [high.hook]
