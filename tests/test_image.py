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
    assert config["keys.driver"] == "socket" and config["keys.socket"].startswith("/run/byline/")
    assert config["hooks.screen_text_file"].startswith("/run/byline/")
    assert config["security.data_volume"] == "/run/byline-volume/socket"
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
            .replace(data["keys"]["socket"], str(tmp_path / "keys"))
            .replace(data["hooks"]["screen_text_file"], str(tmp_path / "screen.txt"))
            .replace(data["security"]["data_volume"], "")
            .replace("[calls]\n", "[calls]\nsip_port = 0\nbind_address = \"127.0.0.1\"\n"))
    config = tmp_path / "config.toml"
    config.write_text(text)
    assert load_config(config).problems == ()
    proc = subprocess.Popen([sys.executable, "-m", "firmware.phone", "--config", str(config)], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        screen = tmp_path / "screen.txt"

        def asks_for_a_secret() -> bool:
            return screen.exists() and screen.read_text().startswith("Choose ")

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not asks_for_a_secret() and proc.poll() is None:
            time.sleep(0.2)
        assert list(frames.glob("frame_*.png")), "no frame captured"
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output
    assert "supervisor stopped" in output
    assert (tmp_path / "screen.txt").read_text().startswith("Choose passphrase"), "no TPM here: a passphrase"
    from PIL import Image

    with Image.open(sorted(frames.glob("frame_*.png"))[-1]) as image:
        assert image.size == (128, 64)


# ---- the arm64 (Raspberry Pi) image ----

OVERLAY_ARM64 = IMAGE / "overlay-arm64"
PI_OVERLAYS = {"byline-keypad", "byline-hook", "byline-wm8960", "byline-tpm-slb9670"}


def test_each_architecture_has_its_kernel_and_only_arm64_the_pi_firmware():
    amd64, arm64 = set(build.packages("amd64")), set(build.packages("arm64"))
    assert "linux-image-amd64" in amd64 and "linux-image-amd64" not in arm64
    pi_only = {"linux-image-arm64", "raspi-firmware", "firmware-brcm80211"}  # the Pi's boot and Wi-Fi firmware
    assert pi_only <= arm64 and not pi_only & amd64
    # the rest is the same list
    assert amd64 - {"linux-image-amd64"} == arm64 - pi_only
    assert "non-free-firmware" in " ".join(build.TARGETS["arm64"].mirrors)
    assert "non-free-firmware" not in " ".join(build.TARGETS["amd64"].mirrors)


def test_arm64_has_its_own_disk_signature_names_and_input_hash():
    amd64, arm64 = build.TARGETS["amd64"], build.TARGETS["arm64"]
    assert amd64.disk_signature != arm64.disk_signature
    assert arm64.partuuid_root == f"{arm64.disk_signature:08x}-02"
    assert arm64.partuuid_data == f"{arm64.disk_signature:08x}-03"
    assert (amd64.image_name, amd64.kernel_name, amd64.initrd_name, amd64.stamp_name) == \
        ("byline-amd64.img", "vmlinuz", "initrd.img", "build.json")
    assert len({amd64.image_name, arm64.image_name, amd64.kernel_name, arm64.kernel_name, amd64.stamp_name,
                arm64.stamp_name, amd64.erofs_name, arm64.erofs_name}) == 8
    assert build.input_hash("arm64") != build.input_hash("amd64")


def test_arm64_base_defers_the_initramfs_and_points_raspi_firmware_at_partition_2(tmp_path):
    args = build.mmdebstrap_args(tmp_path / "rootfs", tmp_path / "apt", "arm64")
    assert "--architectures=arm64" in args
    joined = " ".join(args)
    assert "dpkg-divert --local --rename --add /usr/sbin/update-initramfs" in joined
    assert "update-initramfs -c -k all" in joined
    assert "update-initramfs" not in " ".join(build.mmdebstrap_args(tmp_path / "rootfs", tmp_path / "apt", "amd64"))
    defaults = (IMAGE / "base-arm64/etc/default/raspi-firmware").read_text()
    assert f'ROOTPART="PARTUUID={build.TARGETS["arm64"].partuuid_root}"' in defaults
    assert "MODULES=list" in (IMAGE / "base-arm64/etc/initramfs-tools/conf.d/byline").read_text()
    modules = (IMAGE / "base-arm64/usr/share/initramfs-tools/modules.d/byline-arm64").read_text().split()
    assert {"erofs", "mmc_block", "sdhci_iproc", "virtio_blk"} <= set(modules)


def test_pi_cmdline_mounts_partition_2_as_read_only_erofs():
    words = build.pi_cmdline(build.TARGETS["arm64"]).split()
    assert f"root=PARTUUID={build.TARGETS['arm64'].partuuid_root}" in words
    assert {"rootfstype=erofs", "ro", "rootwait"} <= set(words)
    assert "rw" not in words and "\n" not in build.pi_cmdline(build.TARGETS["arm64"])


def test_pi_config_txt_keeps_raspi_firmwares_lines_and_adds_buses_and_every_overlay():
    firmware = "arm_64bit=1\nenable_uart=1\nupstream_kernel=1\nkernel=vmlinuz-6.1.0-1-arm64\n"
    text = build.pi_config_txt(firmware)
    assert text.startswith(firmware)
    lines = text.splitlines()
    assert "dtparam=i2c_arm=on" in lines and "dtparam=spi=on" in lines
    overlays = {line.split("=", 1)[1] for line in lines if line.startswith("dtoverlay=")}
    assert overlays == PI_OVERLAYS == {p.stem for p in (ROOT / "hw/overlays").glob("*.dts")}


def test_overlays_compile_to_dtbo_with_symbols(tmp_path):
    import shutil

    assert shutil.which("dtc"), "dtc is missing: Debian package device-tree-compiler (./byline setup installs it)"
    names = build.compile_overlays(tmp_path)
    assert set(names) == PI_OVERLAYS
    for name in names:
        blob = (tmp_path / f"{name}.dtbo").read_bytes()
        assert blob[:4] == b"\xd0\x0d\xfe\xed", name  # the FDT magic
        assert b"__fixups__" in blob, name  # labels (&gpio, &spi, &i2s...) left for the firmware to resolve


def test_pi_config_is_the_handsets_hardware():
    config = load_config(OVERLAY_ARM64 / "etc/byline/config.toml")
    assert config.problems == ()
    handset = tomllib.loads((ROOT / "hw/handset.toml").read_text())
    for section, values in handset.items():
        for key, value in values.items():
            assert config[f"{section}.{key}"] == value, f"{section}.{key}"
    assert config["display.driver"] == "sh1106" and config["gpio.pin_factory"] == "lgpio"
    assert "wm8960" in config["audio.playback_device"]
    assert config["security.tpm"] == "auto"
    assert config["calls.enabled"] and config["chat.enabled"] and not config["lab.enabled"]


def run_generator(tmp_path, cmdline: str) -> Path:
    tmp_path.mkdir()
    (tmp_path / "cmdline").write_text(cmdline + "\n")
    out = tmp_path / "generator"
    out.mkdir()
    subprocess.run([str(OVERLAY_ARM64 / "usr/lib/systemd/system-generators/byline-target"), str(out), str(out),
                    str(out)], check=True, env=dict(os.environ, BYLINE_CMDLINE=str(tmp_path / "cmdline")))
    return out


def test_byline_target_qemu_swaps_in_the_qemu_config_and_nothing_else_does(tmp_path):
    out = run_generator(tmp_path / "a", "root=PARTUUID=b71e0064-02 ro byline.target=qemu byline.selftest=1")
    dropin = (out / "byline.service.d/50-byline-target-qemu.conf").read_text()
    assert "BindReadOnlyPaths=/etc/byline/config-qemu.toml:/etc/byline/config.toml" in dropin.splitlines()
    out = run_generator(tmp_path / "b", "root=PARTUUID=b71e0064-02 ro byline.target=pi")
    assert not any(out.iterdir())
    # customize.sh keeps the QEMU config under the name the drop-in reads
    assert "config-qemu.toml" in (IMAGE / "customize.sh").read_text()


def test_pi_user_gets_the_handsets_buses():
    rules = (OVERLAY_ARM64 / "etc/udev/rules.d/60-byline-devices.rules").read_text()
    for subsystem, group in (("gpio", "gpio"), ("i2c-dev", "i2c"), ("spidev", "spi")):
        assert f'SUBSYSTEM=="{subsystem}"' in rules and f'GROUP="{group}"' in rules
    assert "i2c-dev" in (OVERLAY_ARM64 / "etc/modules-load.d/byline.conf").read_text().split()


def test_build_pjsua2_pins_the_versions_of_requirements():
    import re

    script = (IMAGE / "build-pjsua2.sh").read_text()
    subprocess.run(["sh", "-n", str(IMAGE / "build-pjsua2.sh")], check=True)
    pinned = [line.split("==")[1].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
              if line.lower().startswith("pjsua2-python==")][0]
    assert f"PY_VERSION={pinned}\n" in script
    assert f"PJ_VERSION={pinned.split('.post')[0]}\n" in script
    assert len(re.findall(r"SHA256=\$?\{?\d?:?-?([0-9a-f]{64})", script)) == 2
    assert "sha256sum -c" in script and "--with-ssl=/usr" in script


NAMESPACING = ("PrivateTmp", "PrivateNetwork", "PrivateDevices", "ProtectHome", "ProtectSystem", "PrivateMounts",
               "ReadOnlyPaths", "InaccessiblePaths", "TemporaryFileSystem", "MountFlags", "RootDirectory")
"""Unit settings that give a service a mount namespace of its own."""


def test_the_volume_helper_mounts_where_the_phone_sees_it():
    """A private mount namespace would keep the data volume's mount from the phone (a real bug once)."""
    helper = unit_settings(OVERLAY / "etc/systemd/system/byline-volume.service")
    assert not set(helper) & set(NAMESPACING), set(helper) & set(NAMESPACING)
    assert "firmware.store.volume serve" in helper["ExecStart"][0]
    assert "--socket /run/byline-volume/socket" in helper["ExecStart"][0]
    phone = unit_settings(OVERLAY / "etc/systemd/system/byline.service")
    assert "byline-volume.service" in phone["Requires"][0] and "byline-volume.service" in phone["After"][0]
    config = load_config(OVERLAY / "etc/byline/config.toml")
    assert config["security.data_volume"] == "/run/byline-volume/socket"
