#!/usr/bin/python3
"""The image's self-test (byline-selftest.service, only with byline.selftest=1).

Waits for byline.service and its first captured frame, checks the running system, writes one
JSON line to the virtio-serial port /dev/virtio-ports/org.byline.selftest and powers off.
Standard library only: it runs on the system python3, not the phone's venv.
"""

import glob
import json
import os
import struct
import subprocess
import time

PORT = "/dev/virtio-ports/org.byline.selftest"
FRAMES = "/run/byline/frames"
WAIT_S = 300
started = time.monotonic()


def sh(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True).stdout.strip()


def wait(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.5)
    return predicate()


def show(unit: str, *props: str) -> dict:
    out = sh("systemctl", "show", unit, *(f"--property={p}" for p in props))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def png_size(path: str) -> tuple[int, int] | None:
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def main() -> None:
    result: dict = {"checks": {}, "info": {}}
    checks, info = result["checks"], result["info"]

    checks["byline_active"] = wait(lambda: sh("systemctl", "is-active", "byline.service") == "active", WAIT_S)
    frames: list[str] = []

    def have_frame() -> bool:
        frames[:] = sorted(glob.glob(os.path.join(FRAMES, "frame_*.png")))
        return bool(frames)

    checks["frame_captured"] = wait(have_frame, WAIT_S)
    info["first_frame_s"] = round(time.monotonic() - started, 1)
    info["uptime_s"] = float(open("/proc/uptime").read().split()[0])
    if frames:
        time.sleep(2)  # let the PIN screen settle, then look at the newest frame
        have_frame()
        size = png_size(frames[-1])
        info["frames"] = len(frames)
        info["frame_size"] = size
        checks["frame_128x64"] = size == (128, 64)
    else:
        checks["frame_128x64"] = False

    # root: erofs, read-only, and a write fails
    info["root"] = sh("findmnt", "-n", "-o", "SOURCE,FSTYPE,OPTIONS", "/")
    checks["root_erofs_ro"] = sh("findmnt", "-n", "-o", "FSTYPE", "/") == "erofs" and \
        "ro" in sh("findmnt", "-n", "-o", "OPTIONS", "/").split(",")
    try:
        with open("/byline-write-test", "w") as f:
            f.write("x")
        checks["root_write_fails"] = False
    except OSError as e:
        checks["root_write_fails"] = True
        info["root_write_error"] = e.strerror
    info["cmdline"] = open("/proc/cmdline").read().strip()

    # volatile directories on tmpfs
    tmpfs = {d: sh("findmnt", "-n", "-o", "FSTYPE", d) for d in ("/tmp", "/var/tmp", "/var/log", "/var/lib/byline", "/run")}
    info["volatile"] = tmpfs
    checks["volatile_tmpfs"] = all(fs == "tmpfs" for fs in tmpfs.values())

    # no SSH server, no swap
    ssh_units = sh("systemctl", "list-unit-files", "--no-legend", "ssh*", "sshd*", "dropbear*")
    checks["no_sshd"] = not any(os.path.exists(p) for p in ("/usr/sbin/sshd", "/usr/sbin/dropbear")) and not ssh_units
    checks["no_swap"] = sh("swapon", "--show", "--noheadings") == "" and \
        len(open("/proc/swaps").read().strip().splitlines()) == 1

    # journald: in memory only
    journald = sh("systemd-analyze", "cat-config", "systemd/journald.conf")
    storage = [line for line in journald.splitlines() if line.strip().startswith("Storage=")]
    info["journald_storage"] = storage[-1] if storage else None
    checks["journal_volatile"] = bool(storage) and storage[-1].strip() == "Storage=volatile" and \
        not os.path.isdir("/var/log/journal") and os.path.isdir("/run/log/journal")

    # the phone's unit: its own user, hardened
    props = show("byline.service", "User", "MainPID", "NoNewPrivileges", "ProtectSystem", "DevicePolicy",
                 "CapabilityBoundingSet", "ActiveState", "NRestarts")
    info["byline_unit"] = props
    uid = None
    pid = props.get("MainPID", "0")
    if pid != "0" and os.path.exists(f"/proc/{pid}/status"):
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
    info["byline_uid"] = uid
    checks["byline_not_root"] = props.get("User") == "byline" and uid not in (None, 0)
    checks["byline_no_new_privileges"] = props.get("NoNewPrivileges") == "yes"
    checks["byline_protect_system_strict"] = props.get("ProtectSystem") == "strict"

    # the TPM (swtpm on the host) and its owner
    checks["tpm_device"] = os.path.exists("/dev/tpmrm0")
    if checks["tpm_device"]:
        st = os.stat("/dev/tpmrm0")
        info["tpmrm0"] = {"uid": st.st_uid, "gid": st.st_gid, "mode": oct(st.st_mode & 0o777)}

    # the store reached the TPM from inside byline.service's sandbox (user byline, group tss)
    journal = sh("journalctl", "-u", "byline.service", "--no-pager", "-o", "cat")
    checks["store_uses_tpm"] = "protection: PIN + TPM 2.0" in journal

    info["byline_log_tail"] = sh("journalctl", "-u", "byline.service", "-n", "15", "--no-pager", "-o", "cat").splitlines()
    info["failed_units"] = sh("systemctl", "list-units", "--failed", "--no-legend", "--plain").splitlines()
    result["ok"] = all(checks.values())
    result["selftest_s"] = round(time.monotonic() - started, 1)

    line = json.dumps(result, sort_keys=True) + "\n"
    print(line, end="", flush=True)
    try:
        with open(PORT, "w") as port:
            port.write(line)
            port.flush()
    finally:
        subprocess.run(["systemctl", "poweroff", "--no-block"])


if __name__ == "__main__":
    main()
