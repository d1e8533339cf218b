#!/usr/bin/env python3
"""Boot test of Byline's amd64 image: build it if needed, boot it under QEMU (TCG) with swtpm as
its TPM, read the guest's self-test report from a virtio-serial port, check it.

    python3 image/boot_test.py [--no-build] [--timeout 480]

The guest runs byline-selftest.service (kernel command line byline.selftest=1), which writes one
JSON line to the virtio-serial port org.byline.selftest and powers off. Here that line is
checked; QEMU and swtpm are always killed by PID, and the console log's tail is printed on a
failure. The last line printed is a JSON summary (build_s, boot_to_report_s, ...); the exit
status is non-zero on any failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build  # noqa: E402

PORT_NAME = "org.byline.selftest"
EXPECTED_CHECKS = (
    "byline_active", "frame_captured", "frame_128x64", "root_erofs_ro", "root_write_fails", "volatile_tmpfs",
    "no_sshd", "no_swap", "journal_volatile", "byline_not_root", "byline_no_new_privileges",
    "byline_protect_system_strict", "tpm_device", "store_uses_tpm",
)


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


def boot(result: dict, run_dir: Path, timeout: float, memory: int, cpus: int) -> dict | None:
    """Boot once; return the guest's report (or None) and fill ``result`` with what happened."""
    out = Path(result["image"]).parent
    console = run_dir / "console.log"
    report_file = run_dir / "selftest.jsonl"
    tpm_dir = run_dir / "tpm"
    tpm_dir.mkdir()
    tpm_sock = tpm_dir / "swtpm.sock"
    swtpm = qemu = None
    try:
        swtpm = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={tpm_dir}",
             "--ctrl", f"type=unixio,path={tpm_sock}", "--log", f"file={run_dir / 'swtpm.log'},level=1",
             "--terminate"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        if not wait_for(tpm_sock.exists, 10):
            raise RuntimeError("swtpm did not create its socket")
        report_file.touch()
        cmdline = (f"root=PARTUUID={build.PARTUUID_ROOT} rootfstype=erofs ro console=ttyS0,115200 "
                   "byline.selftest=1 systemd.show_status=1 panic=-1")
        args = [
            "qemu-system-x86_64", "-machine", "q35", "-accel", "tcg,thread=multi", "-cpu", "max",
            "-smp", str(cpus), "-m", str(memory),
            "-display", "none", "-monitor", "none", "-serial", f"file:{console}",
            "-kernel", result["kernel"], "-initrd", result["initrd"], "-append", cmdline,
            # snapshot=on: the guest's writes (none to the erofs root) never reach the image file
            "-drive", f"file={result['image']},format=raw,if=virtio,snapshot=on",
            "-device", "virtio-serial-pci",
            "-chardev", f"file,id=selftest,path={report_file}",
            "-device", f"virtserialport,chardev=selftest,name={PORT_NAME}",
            "-chardev", f"socket,id=chrtpm,path={tpm_sock}",
            "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0",
            "-nic", "none", "-no-reboot",
        ]
        log("$ " + " ".join(args))
        booted = time.monotonic()
        qemu = subprocess.Popen(args, stdout=open(run_dir / "qemu.out", "w"), stderr=subprocess.STDOUT,
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


def check(report: dict | None, result: dict) -> None:
    if report is None:
        return
    checks = report.get("checks", {})
    result["checks"] = checks
    result["guest"] = {k: report.get("info", {}).get(k) for k in
                       ("first_frame_s", "uptime_s", "frame_size", "frames", "root", "tpmrm0", "byline_uid",
                        "failed_units", "journald_storage")}
    for name in EXPECTED_CHECKS:
        if checks.get(name) is not True:
            result["errors"].append(f"guest check failed: {name}")
    for name, ok in checks.items():
        if name not in EXPECTED_CHECKS and ok is not True:
            result["errors"].append(f"guest check failed: {name}")
    if result["errors"]:
        result["guest_byline_log"] = report.get("info", {}).get("byline_log_tail")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
        built = json.loads((out / "build.json").read_text())
        built["reused"] = True
    else:
        built = build.build(out, force=False)
    result = {"ok": False, "image": built["image"], "reused_image": built.get("reused", False),
              "build_s": round(time.monotonic() - started, 1), "errors": []}
    if not built.get("reused"):
        result["build_timings"] = built.get("timings")
    result["image_bytes"] = built.get("image_bytes")
    result["rootfs_bytes"] = built.get("rootfs_bytes")
    result["erofs_bytes"] = built.get("erofs_bytes")
    result["kernel"], result["initrd"] = built["kernel"], built["initrd"]
    run_dir = Path(tempfile.mkdtemp(prefix="byline-boot-test-"))
    result["run_dir"] = str(run_dir)
    try:
        report = boot(result, run_dir, args.timeout, args.memory, args.cpus)
        check(report, result)
    except Exception as e:  # report it, with the console, like any failure
        result["errors"].append(f"{type(e).__name__}: {e}")
    result["ok"] = not result["errors"]
    if not result["ok"]:
        console = run_dir / "console.log"
        tail = console.read_text(errors="replace").splitlines()[-60:] if console.exists() else []
        print("---- console log (tail) ----\n" + "\n".join(tail) + "\n----", file=sys.stderr)
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
