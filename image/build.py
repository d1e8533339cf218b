#!/usr/bin/env python3
"""Build Byline's amd64 SD image (QEMU target): mmdebstrap rootfs -> erofs -> MBR disk (genimage).

    python3 image/build.py [--force] [--out build/image]

Run as root (mmdebstrap's root mode; no loop devices, no device-mapper, no mounts of the image).
Writes into OUT: byline-amd64.img (MBR: 1 FAT boot with kernel+initrd, 2 root erofs, 3 data
reserved for LUKS2), vmlinuz, initrd.img, byline-amd64.manifest (exact Debian and Python
versions), root.erofs, build.json (sizes, timings, the input hash, the PARTUUID).

An image whose inputs (package list, overlay, build scripts, requirements, firmware/ drivers/
hw/) hash the same as the last build's is reused as it is. Downloaded .debs are kept in
build/image-cache/apt and Python wheels in build/image-cache/wheels, so rebuilds are fast.
The last line printed is a JSON summary.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMAGE_DIR = REPO / "image"
CACHE = REPO / "build" / "image-cache"
DEFAULT_OUT = REPO / "build" / "image"
ARCH = "amd64"
SUITE = "bookworm"
MIRRORS = [
    f"deb http://deb.debian.org/debian {SUITE} main",
    f"deb http://deb.debian.org/debian {SUITE}-updates main",
    f"deb http://deb.debian.org/debian-security {SUITE}-security main",
]
DISK_SIGNATURE = 0xB71E0001
"""The MBR disk signature, fixed so that partition N is always PARTUUID=b71e0001-0N."""
PARTUUID_ROOT = f"{DISK_SIGNATURE:08x}-02"
PARTUUID_DATA = f"{DISK_SIGNATURE:08x}-03"
BOOT_SIZE = "64M"
DATA_SIZE = "256M"
IMAGE_NAME = f"byline-{ARCH}.img"
INPUTS = ["image/packages.txt", "image/overlay", "image/build.py", "image/customize.sh", "requirements.txt",
          "firmware", "drivers", "hw"]
NOT_IMAGE_REQUIREMENTS = {"pytest"}
"""Test-only packages of requirements.txt that stay out of the phone."""


def log(message: str) -> None:
    print(f"image: {message}", file=sys.stderr, flush=True)


def run(*args, **kw) -> subprocess.CompletedProcess:
    log("$ " + " ".join(str(a) for a in args)[:300])
    return subprocess.run([str(a) for a in args], check=True, **kw)


def packages() -> list[str]:
    names = []
    for line in (IMAGE_DIR / "packages.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def input_hash() -> str:
    """sha256 over every input file's path, mode and content (caches and bytecode left out)."""
    return hashlib.sha256(f"{ARCH} {SUITE} {DISK_SIGNATURE:x} {MIRRORS} {hash_files(INPUTS)}".encode()).hexdigest()


def hash_files(inputs: list[str]) -> str:
    h = hashlib.sha256()
    for name in inputs:
        path = REPO / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() or p.is_symlink())
        for f in files:
            if "__pycache__" in f.parts or f.suffix == ".pyc":
                continue
            rel = f.relative_to(REPO)
            h.update(f"{rel}\0{f.lstat().st_mode & 0o777}\0".encode())
            h.update(os.readlink(f).encode() if f.is_symlink() else f.read_bytes())
            h.update(b"\0")
    return h.hexdigest()


def image_requirements() -> list[str]:
    lines = []
    for line in (REPO / "requirements.txt").read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        if spec and spec.split("==")[0].strip().lower() not in NOT_IMAGE_REQUIREMENTS:
            lines.append(spec)
    return lines


def build_wheels(work: Path) -> Path:
    """A wheelhouse for the image's venv, built on this host (same Debian and Python as the image),
    so that the image needs no compiler or -dev packages. Kept per requirements in the cache."""
    reqs = image_requirements()
    key = hashlib.sha256("\n".join(reqs).encode()).hexdigest()[:16]
    wheels = CACHE / "wheels" / key
    done = wheels / ".complete"
    if not done.exists():
        shutil.rmtree(wheels, ignore_errors=True)
        wheels.mkdir(parents=True)
        (wheels / "requirements-image.txt").write_text("\n".join(reqs) + "\n")
        venv_python = REPO / ".venv" / "bin" / "python"
        python = venv_python if venv_python.exists() else Path(sys.executable)
        run(python, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w", wheels,
            "-r", wheels / "requirements-image.txt")
        done.touch()
    return wheels


BASE_INPUTS = ["image/packages.txt", "image/overlay/usr/share/initramfs-tools"]
"""What the cached Debian base rootfs depends on (with the mmdebstrap command line)."""


def mmdebstrap_args(rootfs: Path, apt_cache: Path) -> list[str]:
    return [
        "mmdebstrap", "--mode=root", "--variant=apt", f"--architectures={ARCH}",
        "--include=" + ",".join(packages() + ["passwd"]),
        "--aptopt=APT::Install-Recommends \"false\"",
        "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-exclude=/usr/share/info/*",
        "--skip=download/empty", "--skip=essential/unlink",
        # the .debs of earlier builds (hard links), so only new versions are downloaded
        f'--setup-hook=mkdir -p "$1/var/cache/apt/archives" && '
        f'find "{apt_cache}" -maxdepth 1 -name "*.deb" -exec cp -al -t "$1/var/cache/apt/archives/" {{}} +',
        # the initramfs's extra modules (erofs) must be there before the kernel's package builds it
        f'--essential-hook=tar -C "{IMAGE_DIR / "overlay"}" --owner=0 --group=0 -cf - usr/share/initramfs-tools'
        ' | tar -C "$1" -xf -',
        # and the .debs kept for the next build
        f'--customize-hook=find "$1/var/cache/apt/archives" -maxdepth 1 -name "*.deb" '
        f'-exec cp -aln -t "{apt_cache}/" {{}} +',
        SUITE, str(rootfs), *MIRRORS,
    ]


def base_rootfs() -> tuple[Path, bool]:
    """The Debian part of the rootfs (mmdebstrap: packages.txt, kernel, initramfs), cached by its inputs.

    Returns the directory and whether it was reused. A firmware or overlay change only re-runs
    the Byline layer (customize.sh) on a copy of it.
    """
    apt_cache = CACHE / "apt"
    apt_cache.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256(" ".join(mmdebstrap_args(Path("ROOTFS"), apt_cache)).encode())
    h.update(hash_files(BASE_INPUTS).encode())
    base = CACHE / f"base-{ARCH}-{h.hexdigest()[:16]}"
    if (base / ".byline-complete").exists():
        return base, True
    for old in CACHE.glob(f"base-{ARCH}-*"):  # one base per architecture is enough
        shutil.rmtree(old)
    partial = base.with_name(base.name + ".partial")
    run(*mmdebstrap_args(partial, apt_cache))
    partial.rename(base)
    (base / ".byline-complete").touch()
    return base, False


def customize(base: Path, rootfs: Path, out: Path, wheels: Path) -> None:
    """Byline's layer (image/customize.sh) on a copy of the base, in a private mount namespace."""
    run("cp", "-a", "--reflink=auto", base, rootfs)
    (rootfs / ".byline-complete").unlink()
    env = dict(os.environ, BYLINE_REPO=str(REPO), BYLINE_WHEELS=str(wheels), BYLINE_OUT=str(out))
    script = ('set -e; R="$1"; mount -t proc proc "$R/proc"; mount -t sysfs sysfs "$R/sys"; '
              'mount --bind /dev "$R/dev"; mount -t tmpfs tmpfs "$R/tmp"; exec "$2" "$R"')
    run("unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", rootfs,
        IMAGE_DIR / "customize.sh", env=env)


def parse_size(size: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)


def genimage(work: Path, out: Path) -> None:
    config = work / "genimage.cfg"
    config.write_text(f"""\
image boot.vfat {{
  vfat {{
    label = "BYLINEBOOT"
    files = {{ "vmlinuz", "initrd.img" }}
  }}
  size = {BOOT_SIZE}
}}

image {IMAGE_NAME} {{
  hdimage {{
    partition-table-type = "mbr"
    disk-signature = 0x{DISK_SIGNATURE:08x}
  }}
  partition boot {{
    partition-type = 0xC
    bootable = "true"
    image = "boot.vfat"
  }}
  partition root {{
    partition-type = 0x83
    image = "root.erofs"
  }}
  partition data {{
    partition-type = 0x83
    image = "data.img"
  }}
}}
""")
    # the data partition, empty (sparse) until the first boot makes it LUKS2 (a later step)
    with open(work / "data.img", "wb") as f:
        f.truncate(parse_size(DATA_SIZE))
    for name in ("vmlinuz", "initrd.img"):
        shutil.copy2(out / name, work / name)
    empty_root = work / "genimage-root"
    tmp = work / "genimage-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    empty_root.mkdir(exist_ok=True)
    run("genimage", "--config", config, "--inputpath", work, "--outputpath", out, "--tmppath", tmp,
        "--rootpath", empty_root)


def build(out: Path, force: bool) -> dict:
    started = time.monotonic()
    digest = input_hash()
    stamp = out / "build.json"
    if not force and stamp.exists() and (out / IMAGE_NAME).exists():
        previous = json.loads(stamp.read_text())
        if previous.get("inputs") == digest:
            log(f"inputs unchanged ({digest[:12]}): reusing {out / IMAGE_NAME}")
            return dict(previous, reused=True, build_s=round(time.monotonic() - started, 1))
    if os.geteuid() != 0:
        raise SystemExit("image: building needs root (mmdebstrap --mode=root)")
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}

    t = time.monotonic()
    wheels = build_wheels(work)
    timings["wheels_s"] = round(time.monotonic() - t, 1)

    t = time.monotonic()
    base, reused_base = base_rootfs()
    timings["base_reused" if reused_base else "mmdebstrap_s"] = True if reused_base else round(time.monotonic() - t, 1)

    t = time.monotonic()
    rootfs = work / "rootfs"
    customize(base, rootfs, out, wheels)
    timings["customize_s"] = round(time.monotonic() - t, 1)
    shutil.move(out / "manifest.txt", out / f"byline-{ARCH}.manifest")

    t = time.monotonic()
    # /boot stays out of the root filesystem: the kernel and initrd are on partition 1
    for f in (rootfs / "boot").iterdir():
        f.unlink() if not f.is_dir() else shutil.rmtree(f)
    rootfs_bytes = int(subprocess.run(["du", "-sb", rootfs], capture_output=True, text=True, check=True).stdout.split()[0])
    run("mkfs.erofs", "-zlz4hc", work / "root.erofs", rootfs,
        stdout=subprocess.DEVNULL)
    timings["erofs_s"] = round(time.monotonic() - t, 1)

    t = time.monotonic()
    genimage(work, out)
    timings["genimage_s"] = round(time.monotonic() - t, 1)

    shutil.move(work / "root.erofs", out / "root.erofs")
    shutil.rmtree(work)
    result = {
        "image": str(out / IMAGE_NAME),
        "manifest": str(out / f"byline-{ARCH}.manifest"),
        "kernel": str(out / "vmlinuz"),
        "initrd": str(out / "initrd.img"),
        "root": f"PARTUUID={PARTUUID_ROOT}",
        "data": f"PARTUUID={PARTUUID_DATA}",
        "inputs": digest,
        "image_bytes": (out / IMAGE_NAME).stat().st_size,
        "image_allocated_bytes": (out / IMAGE_NAME).stat().st_blocks * 512,
        "rootfs_bytes": rootfs_bytes,
        "erofs_bytes": (out / "root.erofs").stat().st_size,
        "packages": sum(1 for line in (out / f"byline-{ARCH}.manifest").read_text().splitlines() if line.startswith("deb ")),
        "timings": timings,
        "build_s": round(time.monotonic() - started, 1),
        "reused": False,
    }
    stamp.write_text(json.dumps(result, indent=1) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even when the inputs are unchanged")
    args = parser.parse_args(argv)
    result = build(args.out.resolve(), args.force)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
