"""hw/: the wiring tables and the device-tree overlays follow hw/pinmap.toml, and the overlays build."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from drivers.pinmap import DEFAULT_PINMAP, PinMap, load_pinmap
from hw import buses, overlays, wiring

REPO = Path(__file__).resolve().parent.parent
INPUT_EVENT_CODES = Path("/usr/include/linux/input-event-codes.h")  # linux-libc-dev, via python3-dev
COMMAND_TIMEOUT_S = 30
UNRESOLVED_PHANDLE = 0xFFFFFFFF  # what dtc writes for a reference the overlay loader fills in
OVERLAY_SOURCES = sorted((REPO / "hw" / "overlays").glob("*.dts"))
# Labels the mainline (upstream Linux) bcm283x.dtsi defines and the overlays may refer to. The
# Raspberry Pi downstream tree's names (spi0, sound, i2s_gpio18, vdd_3v3_reg, ...) would leave
# an overlay unresolvable on Debian's kernel.
MAINLINE_LABELS = {"gpio", "i2s", "i2c1", "spi"}
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


def require_dtc() -> None:
    assert shutil.which("dtc"), "dtc not found: install the Debian package device-tree-compiler (apt-get install -y device-tree-compiler)"


def compile_overlay(source: Path, out_dir: Path) -> dict[tuple[str, str], list[int] | list[str]]:
    """Build ``source`` with dtc, decompile the .dtbo and return its properties by (node, name)."""
    require_dtc()
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
    assert set(files) == {
        wiring.WIRING_MD,
        wiring.OVERLAYS_DIR / "byline-keypad.dts",
        wiring.OVERLAYS_DIR / "byline-hook.dts",
        wiring.OVERLAYS_DIR / "byline-tpm-slb9670.dts",
    }
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


def test_every_overlay_is_found():
    names = {source.name for source in OVERLAY_SOURCES}
    assert {overlays.KEYPAD_DTS, overlays.HOOK_DTS, overlays.TPM_DTS, overlays.WM8960_DTS} <= names


@pytest.mark.parametrize("source", OVERLAY_SOURCES, ids=lambda source: source.name)
def test_every_overlay_builds_without_warnings(source, tmp_path):
    props = compile_overlay(source, tmp_path)
    assert props, f"{source.name} compiled to an empty tree"
    # Every reference to the base tree is a label the mainline device tree defines.
    assert {label for (node, label) in props if node == "__fixups__"} <= MAINLINE_LABELS


def test_no_pin_map_gpio_is_on_a_bus_pin(pinmap):
    """The keypad, hook, LEDs and ringer stay off I2C1, I2S and SPI0 (the HAT and the TPM need them)."""
    bus_pins = {
        **{pin: f"I2C1 {name}" for name, pin in buses.I2C1.items()},
        **{pin: f"I2S {name}" for name, pin in buses.I2S.items()},
        **{pin: f"SPI0 {name}" for name, pin in buses.SPI0.items()},
    }
    used = {*pinmap.all_pins(), pinmap.spi_dc, pinmap.spi_reset}
    assert {pin: bus_pins[pin] for pin in used if pin in bus_pins} == {}


def test_pin_map_lists_the_spi0_pins_and_the_tpm():
    tpm = buses.load_tpm_wiring()
    assert tpm.spi0 == buses.SPI0
    assert tpm.chip_select == 1 and tpm.cs_pin == buses.SPI0["CE1"] == 7
    text = wiring.WIRING_MD.read_text()
    assert f"| SPI0 CE1 | 7 | {wiring.physical_pin(7)} | TPM CS# |" in text


def test_a_pin_map_that_moves_an_spi0_pin_is_refused(tmp_path, capsys):
    bad = write_pinmap(tmp_path / "pinmap.toml", **{"ce1 = 7": "ce1 = 22"})
    assert wiring.main(["--pinmap", str(bad), "--check"]) == 1
    assert "SPI0 pins are fixed by the SoC: CE1 = 22 (the SoC has it on GPIO 7)" in capsys.readouterr().err


def test_a_pin_map_without_the_tpm_section_is_refused(tmp_path, capsys):
    lines = DEFAULT_PINMAP.read_text().split("\n[tpm]\n")[0]
    bad = tmp_path / "pinmap.toml"
    bad.write_text(lines + "\n")
    assert wiring.main(["--pinmap", str(bad), "--check"]) == 1
    assert "cannot read [spi0]/[tpm]" in capsys.readouterr().err


def test_tpm_overlay_builds_with_the_pin_map(tmp_path):
    tpm = buses.load_tpm_wiring()
    props = compile_overlay(wiring.OVERLAYS_DIR / overlays.TPM_DTS, tmp_path)
    bus = "fragment@1/__overlay__"
    node = f"{bus}/tpm@{tpm.chip_select}"
    assert props[node, "compatible"] == ["infineon,slb9670", "tcg,tpm_tis-spi"]
    assert props[node, "reg"] == [tpm.chip_select]
    assert props[node, "spi-max-frequency"] == [tpm.spi_max_hz]
    # GPIO chip selects in chip-select order: the TPM's is CE1 = GPIO 7.
    cs = gpio_numbers(props[bus, "cs-gpios"])
    assert cs == [buses.SPI0["CE0"], buses.SPI0["CE1"]] and cs[tpm.chip_select] == tpm.cs_pin == 7
    assert props[bus, "status"] == ["okay"]
    pins = "fragment@0/__overlay__"
    assert sorted(props[f"{pins}/byline-spi0-pins", "brcm,pins"]) == sorted([9, 10, 11])
    assert props[f"{pins}/byline-spi0-pins", "brcm,function"] == [overlays.BCM2835_FSEL_ALT0]
    assert props[f"{pins}/byline-spi0-cs-pins", "brcm,pins"] == [8, 7]
    assert props[f"{pins}/byline-spi0-cs-pins", "brcm,function"] == [overlays.BCM2835_FSEL_GPIO_OUT]
    # Mainline names SPI0 `spi` (downstream: `spi0`).
    assert props["__fixups__", "spi"] == ["/fragment@1:target:0"]


def test_tpm_overlay_follows_the_chip_select(tmp_path):
    ce0 = buses.load_tpm_wiring(write_pinmap(tmp_path / "pinmap.toml", chip_select="chip_select = 0"))
    source = tmp_path / overlays.TPM_DTS
    source.write_text(overlays.render_tpm(ce0))
    props = compile_overlay(source, tmp_path)
    assert props["fragment@1/__overlay__/tpm@0", "reg"] == [0]
    assert ce0.cs_pin == 8


def test_wm8960_overlay_builds_for_the_mainline_tree(tmp_path):
    props = compile_overlay(wiring.OVERLAYS_DIR / overlays.WM8960_DTS, tmp_path)
    pins = "fragment@0/__overlay__"
    assert props[f"{pins}/byline-i2s-pins", "brcm,pins"] == [buses.I2S[s] for s in ("BCLK", "LRCLK", "DIN", "DOUT")]
    assert props[f"{pins}/byline-i2c1-pins", "brcm,pins"] == [buses.I2C1["SDA"], buses.I2C1["SCL"]]
    for group in ("byline-i2s-pins", "byline-i2c1-pins"):
        assert props[f"{pins}/{group}", "brcm,function"] == [overlays.BCM2835_FSEL_ALT0]
    # The I2S block: enabled, and given the #sound-dai-cells mainline lacks.
    assert props["fragment@1/__overlay__", "#sound-dai-cells"] == [0]
    assert props["fragment@1/__overlay__", "status"] == ["okay"]
    codec = "fragment@2/__overlay__/audio-codec@1a"
    assert props[codec, "compatible"] == ["wlf,wm8960"]
    assert props[codec, "reg"] == [0x1A]
    assert props["fragment@3/__overlay__/byline-wm8960-mclk", "clock-frequency"] == [12_288_000]
    card = "fragment@3/__overlay__/byline-sound"
    assert props[card, "compatible"] == ["simple-audio-card"]
    assert props[card, "simple-audio-card,format"] == ["i2s"]
    # The codec is bit- and frame-clock master: both point at the codec DAI link's phandle.
    codec_dai = props[f"{card}/simple-audio-card,codec", "phandle"]
    assert props[card, "simple-audio-card,bitclock-master"] == codec_dai
    assert props[card, "simple-audio-card,frame-master"] == codec_dai
    assert props[f"{card}/simple-audio-card,codec", "sound-dai"] == props[codec, "phandle"]
    assert props[f"{card}/simple-audio-card,codec", "clocks"] == props["fragment@3/__overlay__/byline-wm8960-mclk", "phandle"]
    assert props[f"{card}/simple-audio-card,cpu", "sound-dai"] == [UNRESOLVED_PHANDLE]  # &i2s
    assert set(props["__fixups__", "i2s"]) == {
        "/fragment@1:target:0",
        f"/{card}/simple-audio-card,cpu:sound-dai:0",
    }
    # ALSA makes the card id from its name without the punctuation: hw/handset.toml's CARD=.
    name = props[card, "simple-audio-card,name"][0]
    handset = tomllib.loads((REPO / "hw" / "handset.toml").read_text())
    for key in ("capture_device", "playback_device"):
        assert handset["audio"][key].endswith("CARD=" + re.sub(r"[^A-Za-z0-9]", "", name))


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table of ``text`` as rows of stripped cells (the separator row left out)."""
    tables, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not all(set(cell) <= set("-: ") for cell in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def test_bom_prices_add_up():
    text = (REPO / "hw" / "bom.md").read_text()
    assert "2026-11" in text and "indicative" in text
    subtotals = []
    for header, *rows in markdown_tables(text):
        if "Line (EUR)" not in header:
            continue
        qty, each, line = header.index("Qty"), header.index("Each (EUR)"), header.index("Line (EUR)")
        running = 0.0
        for row in rows:
            if row[0].startswith("**Subtotal"):
                subtotals.append(float(row[line].strip("*")))
                assert subtotals[-1] == pytest.approx(running), row[0]
            elif row[line] != "—":
                assert int(row[qty]) * float(row[each]) == pytest.approx(float(row[line])), row[0]
                running += float(row[line])
    total_table = next(t for t in markdown_tables(text) if t[0] == ["Section", "EUR"])
    *sections, total = total_table[1:]
    assert [float(value) for _, value in sections] == pytest.approx(subtotals)
    assert total[0] == "**Total, reference handset**"
    assert float(total[1].strip("*")) == pytest.approx(sum(subtotals))
