"""The SD image's inputs (image/): what goes into the phone, checked without building it.

Building and booting the image takes minutes and root: that is ``./byline image-test``. These
tests keep its inputs honest: the QEMU config is valid, the unit is hardened, logs stay in memory,
no test peer or SSH server is listed, and the image's launcher brings the supervisor up to a frame.
"""

import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from firmware.config import load_config

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "image"
OVERLAY = IMAGE / "overlay"

sys.path.insert(0, str(IMAGE))
import build  # noqa: E402


def unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_qemu_config_is_valid_and_headless():
    config = load_config(OVERLAY / "etc/byline/config.toml")
    assert config.problems == ()
    assert config["display.driver"] == "capture"
    assert config["display.capture_dir"] == "/run/byline/frames"
    assert config["gpio.pin_factory"] == "mock"
    assert config["keys.driver"] == "matrix"
    assert config["security.tpm"] == "auto"
    assert config["security.state_dir"].startswith("/var/lib/byline/")
    assert config["calls.enabled"] and config["chat.enabled"] and not config["lab.enabled"]
    assert config["audio.alsa_config"] == "/opt/byline/drivers/audio/asoundrc"
    assert (ROOT / "drivers/audio/asoundrc").exists()


def test_phone_unit_is_hardened():
    unit = unit_settings(OVERLAY / "etc/systemd/system/byline.service")
    assert unit["User"] == ["byline"]
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["DevicePolicy"] == ["closed"]
    assert unit["CapabilityBoundingSet"] == [""]
    assert "/dev/tpmrm0 rw" in unit["DeviceAllow"]
    assert unit["StateDirectory"] == ["byline"]
    assert "byline/frames" in unit["RuntimeDirectory"][0].split()


def test_selftest_runs_only_when_asked():
    unit = unit_settings(OVERLAY / "etc/systemd/system/byline-selftest.service")
    assert unit["ConditionKernelCommandLine"] == ["byline.selftest=1"]


def test_logs_in_memory_and_volatile_directories_on_tmpfs():
    assert "Storage=volatile" in (OVERLAY / "etc/systemd/journald.conf.d/volatile.conf").read_text().split()
    mounts = {}
    for line in (OVERLAY / "etc/fstab").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            source, target, fstype, *_ = line.split()
            mounts[target] = fstype
    for directory in ("/tmp", "/var/tmp", "/var/log", "/var/lib/byline"):
        assert mounts.get(directory) == "tmpfs", directory
    assert "swap" not in mounts.values()


def test_package_list_has_the_runtime_and_no_test_peers_or_ssh():
    names = set(build.packages())
    for needed in ("systemd", "linux-image-amd64", "python3-venv", "cryptsetup", "libbzrtp0", "libsrtp2-1",
                   "libspandsp2", "libotr5", "libsqlite3-0", "alsa-utils", "fonts-terminus-otb",
                   "libtss2-esys-3.0.2-0", "tpm-udev"):
        assert needed in names, needed
    for unwanted in ("prosody", "kamailio", "linphone-cli", "mcabber", "openssh-server", "dropbear", "gcc",
                     "python3-dev"):
        assert unwanted not in names, unwanted
    assert not any(line.strip().lower().startswith("pytest") for line in build.image_requirements())


def test_input_hash_is_stable_and_ignores_bytecode(tmp_path):
    first = build.input_hash()
    cache = ROOT / "firmware" / "__pycache__" / "image-test-probe.pyc"
    cache.parent.mkdir(exist_ok=True)
    cache.write_bytes(b"not an input")
    try:
        assert build.input_hash() == first
    finally:
        cache.unlink()


def test_partuuids_follow_the_fixed_disk_signature():
    assert build.PARTUUID_ROOT == f"{build.DISK_SIGNATURE:08x}-02"
    assert build.PARTUUID_DATA == f"{build.DISK_SIGNATURE:08x}-03"


def test_the_phone_with_the_images_config_draws_a_frame_and_stops_cleanly(tmp_path):
    """The image's entry point (firmware.phone), run here with the image's config pointed at temporary
    directories."""
    frames, state = tmp_path / "frames", tmp_path / "state"
    frames.mkdir()
    data = tomllib.loads((OVERLAY / "etc/byline/config.toml").read_text())
    text = (OVERLAY / "etc/byline/config.toml").read_text()
    text = (text.replace(data["display"]["capture_dir"], str(frames))
            .replace(data["security"]["state_dir"], str(state))
            .replace(data["audio"]["alsa_config"], str(ROOT / "drivers/audio/asoundrc"))
            .replace('tpm = "auto"', 'tpm = "none"')
            .replace("[calls]\n", "[calls]\nsip_port = 0\nbind_address = \"127.0.0.1\"\n"))
    config = tmp_path / "config.toml"
    config.write_text(text)
    assert load_config(config).problems == ()
    proc = subprocess.Popen([sys.executable, "-m", "firmware.phone", "--config", str(config)], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list(frames.glob("frame_*.png")) and proc.poll() is None:
            time.sleep(0.2)
        assert list(frames.glob("frame_*.png")), "no frame captured"
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output
    assert "supervisor stopped" in output
    from PIL import Image

    with Image.open(sorted(frames.glob("frame_*.png"))[-1]) as image:
        assert image.size == (128, 64)
