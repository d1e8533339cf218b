"""Byline's configuration: one TOML file, a documented schema, defaults for everything.

Contract: :func:`load_config` never raises for bad content. Every key it does not understand,
every value of the wrong type or out of range, and a file that does not parse are reported as
:class:`Problem` lines naming the key, and the default is used instead, so the phone still boots.
The schema below is the only list of settings; ``python -m firmware.config`` prints it as the
reference in docs/configuration.md (a test keeps that file current).
"""

from __future__ import annotations

import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from drivers.pinmap import DEFAULT_PINMAP


@dataclass(frozen=True)
class Setting:
    key: str
    default: Any
    doc: str
    check: Callable[[Any], Any]


@dataclass(frozen=True)
class Problem:
    key: str
    message: str

    def __str__(self) -> str:
        return f"config {self.key}: {self.message}"


def one_of(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return value

    return check


def integer(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{value!r} is not a whole number")
        if not low <= value <= high:
            raise ValueError(f"{value} is outside {low}..{high}")
        return value

    return check


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not text")
    return value


def flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    return value


SCHEMA: tuple[Setting, ...] = (
    Setting("display.driver", "sh1106",
            "OLED backend: sh1106 or ssd1306 (real, luma.oled), dummy (keeps the last frame), "
            "capture (a PNG per frame), terminal (the simulator's view)",
            one_of("sh1106", "ssd1306", "dummy", "capture", "terminal")),
    Setting("display.bus", "i2c", "how a real OLED is wired: i2c or spi", one_of("i2c", "spi")),
    Setting("display.i2c_port", 1, "I2C bus number (/dev/i2c-N)", integer(0, 32)),
    Setting("display.i2c_address", 0x3C, "I2C address of the OLED (0x3C or 0x3D)", integer(0x03, 0x77)),
    Setting("display.spi_port", 0, "SPI bus number", integer(0, 6)),
    Setting("display.spi_device", 0, "SPI chip select", integer(0, 2)),
    Setting("display.rotate", 0, "rotation in quarter turns", integer(0, 3)),
    Setting("display.contrast", 200, "OLED contrast", integer(0, 255)),
    Setting("display.capture_dir", "", "where the capture backend writes its PNGs", text),
    Setting("gpio.pin_factory", "lgpio", "gpiozero pin factory: lgpio (a Pi) or mock (simulator, tests)",
            one_of("lgpio", "mock")),
    Setting("gpio.pinmap", str(DEFAULT_PINMAP), "pin map file (hw/pinmap.toml)", text),
    Setting("keys.driver", "matrix",
            "key input: matrix (GPIO key matrix scanned by Byline), keyboard (the simulator's PC keyboard) or "
            "socket (key names written to keys.socket: the image's self-test)",
            one_of("matrix", "keyboard", "socket")),
    Setting("keys.socket", "", "the socket driver's Unix socket", text),
    Setting("keys.scan_hz", 100, "key matrix scan rate", integer(20, 1000)),
    Setting("keys.debounce_ms", 20, "a key must read the same this long before it counts", integer(0, 200)),
    Setting("indicators.enabled", True, "drive the LEDs and the ringer", flag),
    Setting("audio.enabled", True, "open the audio codec", flag),
    Setting("audio.capture_device", "default", "ALSA capture device (microphone)", text),
    Setting("audio.playback_device", "default", "ALSA playback device (earpiece)", text),
    Setting("audio.rate", 16000, "sample rate: 16000 (wideband) or 8000", integer(8000, 48000)),
    Setting("audio.volume", 80, "earpiece volume in percent", integer(0, 100)),
    Setting("audio.alsa_config", "", "extra ALSA configuration file (the simulator uses drivers/audio/asoundrc)", text),
    Setting("audio.paced_by", "device", "who paces 20 ms frames: device (a sound card) or clock (null/file PCMs)",
            one_of("device", "clock")),
    Setting("ui.clock_24h", True, "24-hour clock on the home screen", flag),
    Setting("ui.screen_off_s", 60, "blank the OLED after this many idle seconds (0 = never)", integer(0, 3600)),
    Setting("ui.lock_after_s", 120, "lock the screen behind the PIN after this many idle seconds (0 = never); "
            "the owner can change it in Settings", integer(0, 3600)),
    Setting("security.state_dir", "/var/lib/byline/state",
            "the encrypted store's directory (on the phone: inside the LUKS2 data partition)", text),
    Setting("security.data_volume", "",
            "the data volume helper's socket (a device's LUKS2 partition holds the store); empty: the store's "
            "files in security.state_dir", text),
    Setting("security.tpm", "auto",
            "TPM 2.0 holding the second key share: auto (/dev/tpmrm0 if present), none (then a long "
            "passphrase is required), or a TCTI string such as swtpm:host=127.0.0.1,port=2321", text),
    Setting("security.wipe_after_failures", 10, "wrong PINs in a row that wipe the store", integer(3, 100)),
    Setting("security.kdf_target_ms", 1000, "Argon2id time per unlock, calibrated on this CPU when a PIN is set",
            integer(1, 20000)),
    Setting("security.kdf_memory_mib", 64, "Argon2id memory per unlock", integer(8, 1024)),
    Setting("calls.enabled", True, "SIP calls (pjsua2 signalling, our ZRTP/SRTP media engine)", flag),
    Setting("calls.bind_address", "0.0.0.0", "where SIP listens", text),
    Setting("calls.sip_port", 0, "SIP port for UDP and TCP, opened with the first account that needs it "
            "(0 = any free port: registration tells the server, and scanners looking at 5060 find nothing)",
            integer(0, 65535)),
    Setting("calls.media_address", "",
            "our address in SDP and for RTP (empty: the address of the interface that reaches the registrar)", text),
    Setting("calls.ca_file", "/etc/ssl/certs/ca-certificates.crt",
            "CAs that verify a TLS SIP server (accounts with a TLS pin check the pin instead)", text),
    Setting("chat.enabled", True, "XMPP chat with OTR (slixmpp, libotr)", flag),
    Setting("chat.ca_file", "", "CA certificates (PEM) that XMPP servers are verified against; empty: "
            "the system's (an account's TLS pin replaces it)", text),
    Setting("network.enabled", True, "show how the phone is connected; Wi-Fi through wpa_supplicant", flag),
    Setting("network.wpa_control_dir", "",
            "wpa_supplicant's control sockets, one per Wi-Fi interface (its ctrl_interface DIR; the image: "
            "/run/wpa_supplicant); empty: no Wi-Fi, as in the simulator, which must not touch the PC's", text),
    Setting("network.client_dir", "",
            "where the phone binds its own control socket for wpa_supplicant's answers; empty: a private "
            "temporary directory", text),
    Setting("hooks.screen_text_file", "",
            "test hook: write what the screen says to this file after every change (the image's self-test); "
            "empty on a phone", text),
    Setting("lab.enabled", False, "start the built-in lab (local Prosody and Kamailio) with the phone", flag),
)

SETTINGS = {s.key: s for s in SCHEMA}


@dataclass(frozen=True)
class Config:
    """Checked settings by key ("display.driver"), plus the problems met while reading them."""

    values: dict[str, Any]
    problems: tuple[Problem, ...] = ()

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def section(self, name: str) -> dict[str, Any]:
        """The settings of one section as keyword arguments ("display" -> {"driver": ...})."""
        prefix = name + "."
        return {k[len(prefix):]: v for k, v in self.values.items() if k.startswith(prefix)}

    def with_values(self, **overrides: Any) -> "Config":
        """A copy with some values replaced; keys are written with "__" for "." (display__driver)."""
        values = dict(self.values)
        for name, value in overrides.items():
            key = name.replace("__", ".")
            values[key] = SETTINGS[key].check(value)
        return Config(values, self.problems)


def defaults() -> Config:
    return Config({s.key: s.default for s in SCHEMA})


def parse_config(data: dict[str, Any]) -> Config:
    """Check a parsed TOML document against the schema (see the module contract)."""
    values = {s.key: s.default for s in SCHEMA}
    problems: list[Problem] = []
    for section, entries in data.items():
        if not isinstance(entries, dict):
            problems.append(Problem(section, "expected a [section] table"))
            continue
        for name, value in entries.items():
            key = f"{section}.{name}"
            setting = SETTINGS.get(key)
            if setting is None:
                problems.append(Problem(key, "unknown setting, ignored"))
                continue
            try:
                values[key] = setting.check(value)
            except ValueError as e:
                problems.append(Problem(key, f"{e}; using {setting.default!r}"))
    return Config(values, tuple(problems))


def load_config(path: str | Path | None) -> Config:
    """Read a config file (None: all defaults) following the module contract."""
    if path is None:
        return defaults()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        return Config(defaults().values, (Problem(str(path), f"cannot read: {e.strerror}; using defaults"),))
    except tomllib.TOMLDecodeError as e:
        return Config(defaults().values, (Problem(str(path), f"not valid TOML ({e}); using defaults"),))
    return parse_config(data)


def reference() -> str:
    """The settings reference as Markdown (docs/configuration.md)."""
    lines = [
        "# Configuration reference",
        "",
        "Generated by `python -m firmware.config` from the schema in firmware/config.py; do not edit.",
        "A bad value is reported with its key and the default is used, so the phone still boots.",
        "",
        "| key | default | meaning |",
        "| --- | --- | --- |",
    ]
    for s in SCHEMA:
        default = f"0x{s.default:02X}" if s.key.endswith("_address") and isinstance(s.default, int) else repr(s.default)
        if s.key == "gpio.pinmap":
            default = "'hw/pinmap.toml'"
        lines.append(f"| `{s.key}` | `{default}` | {s.doc} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference())
