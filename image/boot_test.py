#!/usr/bin/env python3
"""Boot test of Byline's image: build it if needed, boot it under QEMU (TCG) with swtpm as
its TPM, read the guest's self-test report from a virtio-serial port, check it.

    python3 image/boot_test.py [--arch amd64|arm64] [--no-build] [--timeout 480]

amd64 boots on q35; arm64 (the Pi image) on `-M virt -cpu cortex-a72`, directly from the image's
kernel and initrd (the virt machine runs no Pi firmware), with byline.target=qemu so that the
phone reads the image's QEMU config.

The image boots twice from one writable copy of the disk, with the same swtpm state (the same
TPM, as a phone keeps its module). Each time the guest runs byline-selftest.service (kernel
command line byline.selftest=1 byline.boot=N), which plays the owner on the phone's keys, writes
one JSON line to the virtio-serial port org.byline.selftest and powers off: boot 1 chooses the
PIN (the LUKS2 data partition is made) and changes a setting; boot 2 tries a wrong PIN, unlocks,
finds the setting, then wipes with a duress PIN. The guest has QEMU's user-mode network: it
must take an address by DHCP, resolve through resolved's stub, listen on nothing reachable, and
reach the lab's XMPP and SIP servers (started here, on loopback, seen from the guest as
10.0.2.2). Around both boots the boot and root
partitions are hashed: nothing may have been written to them. QEMU and swtpm are always killed
by PID, and the console log's tail is printed on a failure. The last line printed is a JSON
summary (build_s, boot_to_report_s, ...); the exit status is non-zero on any failure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
import build  # noqa: E402
from lab import Lab  # noqa: E402

PORT_NAME = "org.byline.selftest"
EXPECTED_CHECKS = (
    "byline_active", "frame_captured", "frame_128x64", "root_erofs_ro", "root_write_fails", "volatile_tmpfs",
    "no_sshd", "no_swap", "journal_volatile", "byline_not_root", "byline_no_new_privileges",
    "byline_protect_system_strict", "tpm_device", "store_uses_tpm", "firmware_display", "firmware_audio",
    "network_address", "network_default_route", "network_dns_stub", "network_time_sync", "network_config_clean",
    "network_no_dbus_wpa_supplicant",
    "network_nothing_listens",
    "lab_xmpp_reachable", "lab_sip_reachable",
)

BOOT_CHECKS = {
    1: ("first_boot_asks_for_a_pin", "no_volume_before_the_pin", "pin_chosen", "data_is_luks2", "data_mounted",
        "setting_changed", "state_in_the_volume", "wifi_access_point", "wifi_found", "wifi_asks_its_key",
        "wifi_given_to_wpa_supplicant", "wifi_joined", "wifi_shown", "wifi_key_not_kept"),
    2: ("asks_for_the_pin", "wifi_access_point", "wifi_nothing_before_the_pin", "wrong_pin_refused",
        "wrong_pin_mounts_nothing", "right_pin_unlocks", "state_is_back", "wifi_rejoined_after_unlock",
        "duress_pin_set", "duress_wipes_to_a_new_phone", "keyslots_gone_after_wipe", "nothing_mounted_after_wipe",
        "wifi_forgotten_after_wipe"),
}
"""What each boot's owner checks on top of EXPECTED_CHECKS (image/overlay/usr/lib/byline/selftest.py)."""
HOST_FROM_GUEST = "10.0.2.2"
"""The host's loopback as QEMU's user-mode network shows it to the guest."""
MBR_ENTRIES = 446
SECTOR = 512

NOT_CHECKED = {
    # QEMU 7.2 offers arm64 virt only the MMIO TPM (tpm-tis-device), whose driver (tpm_tis,
    # CONFIG_TCG_TIS) Debian 12's arm64 kernel does not build: it has tpm_tis_spi for the Pi's SLB9670
    "arm64": dict.fromkeys(("tpm_device", "store_uses_tpm"),
                           "no TPM on arm64 virt: Debian's arm64 kernel lacks tpm_tis (CONFIG_TCG_TIS) for "
                           "QEMU's tpm-tis-device"),
}
"""Guest checks that cannot pass on an architecture's QEMU machine, with the reason (reported, not failed)."""


def log(message: str) -> None:
    print(f"boot-test: {message}", file=sys.stderr, flush=True)


def kill(proc: subprocess.Popen | None, name: str) -> None:
    if proc is None or proc.poll() is not None:
        return
    log(f"stopping {name} (pid {proc.pid})")
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_for(predicate, timeout: float, step: float = 0.1) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


# what differs between the architectures' QEMU machines; the rest of the command line is shared
MACHINES = {
    "amd64": {"qemu": ["qemu-system-x86_64", "-machine", "q35", "-cpu", "max"], "console": "ttyS0,115200",
              "cmdline": "", "tpm": "tpm-tis", "serial": "virtio-serial-pci", "disk": "virtio-blk-pci"},
    "arm64": {"qemu": ["qemu-system-aarch64", "-machine", "virt", "-cpu", "cortex-a72"], "console": "ttyAMA0",
              "cmdline": " byline.target=qemu", "tpm": "tpm-tis-device", "serial": "virtio-serial-pci",
              "disk": "virtio-blk-pci"},
}


def partition_hashes(disk: Path, numbers=(1, 2)) -> dict[int, str]:
    """SHA-256 of MBR partitions ``numbers`` of the disk image."""
    import hashlib

    with open(disk, "rb") as file:
        table = file.read(SECTOR)
        hashes = {}
        for number in numbers:
            entry = table[MBR_ENTRIES + 16 * (number - 1):MBR_ENTRIES + 16 * number]
            start, sectors = int.from_bytes(entry[8:12], "little"), int.from_bytes(entry[12:16], "little")
            file.seek(start * SECTOR)
            digest, left = hashlib.sha256(), sectors * SECTOR
            while left:
                chunk = file.read(min(left, 1 << 20))
                if not chunk:
                    break
                digest.update(chunk)
                left -= len(chunk)
            hashes[number] = digest.hexdigest()
    return hashes


def boot(result: dict, run_dir: Path, timeout: float, memory: int, cpus: int, arch: str = "amd64", *,
         disk: Path, number: int, lab_servers: str) -> dict | None:
    """Boot ``disk`` once (boot ``number``); return the guest's report (or None) and fill ``result``.

    ``lab_servers`` (``xmpp:HOST:PORT,sip:HOST:PORT``) is what the guest must reach."""
    boot_dir = run_dir / f"boot{number}"
    boot_dir.mkdir()
    console = boot_dir / "console.log"
    report_file = boot_dir / "selftest.jsonl"
    tpm_dir = run_dir / "tpm"  # the same TPM every boot
    tpm_dir.mkdir(exist_ok=True)
    tpm_sock = tpm_dir / "swtpm.sock"
    swtpm = qemu = None
    try:
        swtpm = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={tpm_dir}",
             "--ctrl", f"type=unixio,path={tpm_sock}", "--log", f"file={boot_dir / 'swtpm.log'},level=1",
             "--terminate"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        if not wait_for(tpm_sock.exists, 10):
            raise RuntimeError("swtpm did not create its socket")
        report_file.touch()
        machine = MACHINES[arch]
        cmdline = (f"root=PARTUUID={build.TARGETS[arch].partuuid_root} rootfstype=erofs ro "
                   f"console={machine['console']} byline.selftest=1 byline.boot={number} byline.lab={lab_servers} "
                   "systemd.show_status=1 panic=-1"
                   + machine["cmdline"])
        args = [
            *machine["qemu"], "-accel", "tcg,thread=multi",
            "-smp", str(cpus), "-m", str(memory),
            "-display", "none", "-monitor", "none", "-serial", f"file:{console}",
            "-kernel", result["kernel"], "-initrd", result["initrd"], "-append", cmdline,
            # a copy of the image: the data partition's writes must last from one boot to the next
            "-drive", f"file={disk},format=raw,if=none,id=disk",
            "-device", f"{machine['disk']},drive=disk",
            "-device", machine["serial"],
            "-chardev", f"file,id=selftest,path={report_file}",
            "-device", f"virtserialport,chardev=selftest,name={PORT_NAME}",
            "-chardev", f"socket,id=chrtpm,path={tpm_sock}",
            "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", f"{machine['tpm']},tpmdev=tpm0",
            "-nic", "user,model=virtio-net-pci", "-no-reboot",
        ]
        log("$ " + " ".join(args))
        booted = time.monotonic()
        qemu = subprocess.Popen(args, stdout=open(boot_dir / "qemu.out", "w"), stderr=subprocess.STDOUT,
                                start_new_session=True)

        def reported() -> bool:
            return report_file.read_text().endswith("\n") or qemu.poll() is not None

        wait_for(reported, timeout, 0.5)
        text = report_file.read_text()
        result["boot_to_report_s"] = round(time.monotonic() - booted, 1)
        report = None
        if text.strip():
            try:
                report = json.loads(text.strip().splitlines()[-1])
            except json.JSONDecodeError as e:
                result["errors"].append(f"the report is not JSON ({e}): {text[:200]!r}")
        else:
            result["errors"].append(f"no report within {timeout} s (qemu {'exited ' + str(qemu.returncode) if qemu.poll() is not None else 'still running'})")
        # the guest powers itself off after reporting (without a report, QEMU is stopped at once)
        if report is None:
            return None
        if wait_for(lambda: qemu.poll() is not None, 90, 0.5):
            result["powered_off_s"] = round(time.monotonic() - booted, 1)
        else:
            result["errors"].append("the guest did not power off within 90 s of its report")
        return report
    finally:
        kill(qemu, "qemu")
        kill(swtpm, "swtpm")


def check(report: dict | None, result: dict, arch: str = "amd64", number: int = 1) -> None:
    """Fill ``result`` (one boot's part of the summary) from its report; failures go to its errors."""
    if report is None:
        return
    waived = NOT_CHECKED.get(arch, {})
    if waived:
        result["not_checked"] = waived
    result["checks"] = report.get("checks", {})
    checks = {name: ok for name, ok in result["checks"].items() if name not in waived}
    info = report.get("info", {})
    result["guest"] = {k: info.get(k) for k in
                       ("first_frame_s", "uptime_s", "frame_size", "frames", "root", "tpmrm0", "byline_uid",
                        "failed_units", "journald_storage", "asked", "luks_keyslots", "records", "firmware_selftest",
                        "luks_keyslots_after_wipe", "network", "wifi_list", "wifi_address", "network_list", "error")}
    expected = (*EXPECTED_CHECKS, *BOOT_CHECKS.get(number, ()))
    for name in (n for n in expected if n not in waived):
        if checks.get(name) is not True:
            result["errors"].append(f"boot {number}: guest check failed: {name}")
    for name, ok in checks.items():
        if name not in expected and ok is not True:
            result["errors"].append(f"boot {number}: guest check failed: {name}")
    if result["errors"]:
        result["guest_byline_log"] = info.get("byline_log_tail")
        result["guest_volume_log"] = info.get("byline_volume_log")
        result["guest_screen"] = info.get("screen")
        result["guest_wifi_diagnosis"] = info.get("wifi_diagnosis")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(build.TARGETS), default="amd64")
    parser.add_argument("--no-build", action="store_true", help="use the image in --out as it is")
    parser.add_argument("--out", type=Path, default=build.DEFAULT_OUT)
    parser.add_argument("--timeout", type=float, default=480, help="seconds from QEMU's start to the report")
    parser.add_argument("--memory", type=int, default=1024)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the run directory (console log, report)")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    started = time.monotonic()
    if args.no_build:
        built = json.loads((out / build.TARGETS[args.arch].stamp_name).read_text())
        built["reused"] = True
    else:
        built = build.build(out, force=False, arch=args.arch)
    result = {"ok": False, "arch": args.arch, "image": built["image"], "reused_image": built.get("reused", False),
              "build_s": round(time.monotonic() - started, 1), "errors": []}
    if not built.get("reused"):
        result["build_timings"] = built.get("timings")
    result["image_bytes"] = built.get("image_bytes")
    result["rootfs_bytes"] = built.get("rootfs_bytes")
    result["erofs_bytes"] = built.get("erofs_bytes")
    result["kernel"], result["initrd"] = built["kernel"], built["initrd"]
    if built.get("left_out"):
        result["left_out"] = built["left_out"]
    run_dir = Path(tempfile.mkdtemp(prefix="byline-boot-test-"))
    result["run_dir"] = str(run_dir)
    disk = run_dir / "disk.img"
    lab = Lab(users=("alice",), echo=False)
    try:
        lab.start()
        lab_servers = f"xmpp:{HOST_FROM_GUEST}:{lab.xmpp.port},sip:{HOST_FROM_GUEST}:{lab.sip.port}"
        subprocess.run(["cp", "--sparse=always", built["image"], str(disk)], check=True)
        before = partition_hashes(disk)
        for number in sorted(BOOT_CHECKS):
            part = {"image": result["image"], "kernel": result["kernel"], "initrd": result["initrd"], "errors": []}
            report = boot(part, run_dir, args.timeout, args.memory, args.cpus, args.arch, disk=disk, number=number,
                          lab_servers=lab_servers)
            check(report, part, args.arch, number)
            for key in ("kernel", "initrd", "image"):
                part.pop(key)
            result[f"boot{number}"] = part
            result["errors"] += part["errors"]
            if part["errors"]:
                break  # the next boot builds on this one
        after = partition_hashes(disk)
        result["boot_and_root_unchanged"] = before == after
        if before != after:
            result["errors"].append(f"the boot or root partition changed: {before} -> {after}")
    except Exception as e:  # report it, with the console, like any failure
        result["errors"].append(f"{type(e).__name__}: {e}")
    finally:
        lab.stop()
    result["ok"] = not result["errors"]
    if not result["ok"]:
        for console in sorted(run_dir.glob("boot*/console.log")):
            tail = console.read_text(errors="replace").splitlines()[-60:]
            print(f"---- {console.parent.name} console log (tail) ----\n" + "\n".join(tail) + "\n----",
                  file=sys.stderr)
    result["total_s"] = round(time.monotonic() - started, 1)
    for key in ("kernel", "initrd"):
        result.pop(key)
    if result["ok"] and not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
        result.pop("run_dir")
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
