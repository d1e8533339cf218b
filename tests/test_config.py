"""The config schema: defaults, bad values reported by key, the generated reference."""

from pathlib import Path

from firmware.config import SCHEMA, defaults, load_config, reference

ROOT = Path(__file__).resolve().parent.parent


def test_every_default_passes_its_own_check():
    for setting in SCHEMA:
        assert setting.check(setting.default) == setting.default, setting.key


def test_good_values_are_taken(tmp_path):
    path = tmp_path / "byline.toml"
    path.write_text('[display]\ndriver = "ssd1306"\ni2c_address = 0x3D\n[ui]\nclock_24h = false\n')
    config = load_config(path)
    assert config.problems == ()
    assert config["display.driver"] == "ssd1306"
    assert config["display.i2c_address"] == 0x3D
    assert config["ui.clock_24h"] is False
    assert config.section("display")["driver"] == "ssd1306"


def test_bad_values_are_reported_by_key_and_defaults_used(tmp_path):
    path = tmp_path / "byline.toml"
    path.write_text('[display]\ndriver = "crt"\ncontrast = 999\n[keys]\nscan_hz = "fast"\n'
                    '[ui]\nclock_24h = 1\ncolour = "red"\nwhatever = 3\nlab = 4\n')
    config = load_config(path)
    by_key = {p.key: str(p) for p in config.problems}
    assert set(by_key) == {"display.driver", "display.contrast", "keys.scan_hz", "ui.clock_24h",
                           "ui.colour", "ui.whatever", "ui.lab"}
    assert "'crt' is not one of" in by_key["display.driver"] and "using 'sh1106'" in by_key["display.driver"]
    assert "999 is outside 0..255" in by_key["display.contrast"]
    assert "unknown setting" in by_key["ui.colour"]
    assert config["display.driver"] == "sh1106"
    assert config["display.contrast"] == defaults()["display.contrast"]
    assert config["ui.clock_24h"] is True


def test_a_file_that_does_not_parse_gives_defaults_and_one_problem(tmp_path):
    path = tmp_path / "byline.toml"
    path.write_text("[display\ndriver = ")
    config = load_config(path)
    assert config.values == defaults().values
    assert len(config.problems) == 1 and "not valid TOML" in str(config.problems[0])


def test_a_missing_file_gives_defaults_and_one_problem(tmp_path):
    config = load_config(tmp_path / "absent.toml")
    assert config.values == defaults().values
    assert "cannot read" in str(config.problems[0])


def test_a_section_that_is_not_a_table_is_reported(tmp_path):
    path = tmp_path / "byline.toml"
    path.write_text('display = "sh1106"\n')
    assert [p.key for p in load_config(path).problems] == ["display"]


def test_the_reference_in_docs_is_current():
    assert (ROOT / "docs" / "configuration.md").read_text() == reference(), \
        "regenerate: .venv/bin/python -m firmware.config > docs/configuration.md"
