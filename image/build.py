#!/usr/bin/env python3
"""Build Byline's SD image: mmdebstrap rootfs -> erofs -> MBR disk (genimage).

    python3 image/build.py [--arch amd64|arm64] [--force] [--out build/image]

Run as root (mmdebstrap's root mode; no loop devices, no device-mapper, no mounts of the image).
amd64 (the QEMU target) writes into OUT: byline-amd64.img (MBR: 1 FAT boot with kernel+initrd,
2 root erofs, 3 data reserved for LUKS2), vmlinuz, initrd.img, byline-amd64.manifest (exact Debian
and Python versions), root.erofs, build.json (sizes, timings, the input hash, the PARTUUID).
arm64 (the Raspberry Pi image, also booted by QEMU's virt machine) writes byline-arm64.img (its FAT
partition filled the way the Pi firmware expects: raspi-firmware's files, config.txt, cmdline.txt,
our device-tree overlays), vmlinuz-arm64, initrd-arm64.img, byline-arm64.manifest, root-arm64.erofs,
build-arm64.json. The arm64 rootfs is made under qemu-user-static (binfmt_misc).

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
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMAGE_DIR = REPO / "image"
CACHE = REPO / "build" / "image-cache"
DEFAULT_OUT = REPO / "build" / "image"
SUITE = "bookworm"


@dataclass(frozen=True)
class Target:
    """One image: its Debian architecture, its MBR disk signature and where its files go."""

    arch: str
    disk_signature: int
    """Fixed, so that partition N is always PARTUUID=<signature>-0N."""
    components: str = "main"
    boot_size: str = "64M"

    @property
    def suffix(self) -> str:  # amd64 keeps the names it had before arm64 existed
        return "" if self.arch == "amd64" else f"-{self.arch}"

    @property
    def partuuid_root(self) -> str:
        return f"{self.disk_signature:08x}-02"

    @property
    def partuuid_data(self) -> str:
        return f"{self.disk_signature:08x}-03"

    @property
    def image_name(self) -> str:
        return f"byline-{self.arch}.img"

    @property
    def manifest_name(self) -> str:
        return f"byline-{self.arch}.manifest"

    @property
    def kernel_name(self) -> str:
        return f"vmlinuz{self.suffix}"

    @property
    def initrd_name(self) -> str:
        return f"initrd{self.suffix}.img"

    @property
    def erofs_name(self) -> str:
        return f"root{self.suffix}.erofs"

    @property
    def stamp_name(self) -> str:
        return f"build{self.suffix}.json"

    @property
    def mirrors(self) -> list[str]:
        return [
            f"deb http://deb.debian.org/debian {SUITE} {self.components}",
            f"deb http://deb.debian.org/debian {SUITE}-updates {self.components}",
            f"deb http://deb.debian.org/debian-security {SUITE}-security {self.components}",
        ]


TARGETS = {
    "amd64": Target("amd64", 0xB71E0001),
    # raspi-firmware (the Pi's boot firmware) is in non-free-firmware; the FAT partition holds the
    # firmware, the DTBs, the kernel and the initrd, so it is bigger than amd64's
    "arm64": Target("arm64", 0xB71E0064, components="main non-free-firmware", boot_size="128M"),
}
AMD64 = TARGETS["amd64"]
# the amd64 image's names, as before (tests and boot_test.py use them)
ARCH = AMD64.arch
MIRRORS = AMD64.mirrors
DISK_SIGNATURE = AMD64.disk_signature
PARTUUID_ROOT = AMD64.partuuid_root
PARTUUID_DATA = AMD64.partuuid_data
BOOT_SIZE = AMD64.boot_size
DATA_SIZE = "256M"
IMAGE_NAME = AMD64.image_name
INPUTS = ["image/packages.txt", "image/overlay", "image/build.py", "image/customize.sh", "requirements.txt",
          "firmware", "drivers", "hw"]
ARCH_INPUTS = {"arm64": ["image/packages-arm64.txt", "image/base-arm64", "image/overlay-arm64",
                         "image/build-pjsua2.sh"],
               "amd64": ["image/packages-amd64.txt"]}
NOT_IMAGE_REQUIREMENTS = {"pytest"}
"""Test-only packages of requirements.txt that stay out of the phone."""


def log(message: str) -> None:
    print(f"image: {message}", file=sys.stderr, flush=True)


def run(*args, **kw) -> subprocess.CompletedProcess:
    log("$ " + " ".join(str(a) for a in args)[:300])
    kw.setdefault("check", True)
    return subprocess.run([str(a) for a in args], **kw)


def packages(arch: str = "amd64") -> list[str]:
    """packages.txt (every image) and packages-ARCH.txt (that architecture's kernel, boot firmware)."""
    names = []
    for name in ("packages.txt", f"packages-{arch}.txt"):
        for line in (IMAGE_DIR / name).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                names.append(line)
    return names


def input_hash(arch: str = "amd64") -> str:
    """sha256 over every input file's path, mode and content (caches and bytecode left out)."""
    t = TARGETS[arch]
    files = hash_files(INPUTS + ARCH_INPUTS[arch])
    return hashlib.sha256(f"{t.arch} {SUITE} {t.disk_signature:x} {t.mirrors} {files}".encode()).hexdigest()


def hash_files(inputs: list[str]) -> str:
    h = hashlib.sha256()
    for name in inputs:
        path = REPO / name
        if not path.exists():
            continue
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
ARCH_BASE_INPUTS = {"amd64": ["image/packages-amd64.txt"],
                    "arm64": ["image/packages-arm64.txt", "image/base-arm64"]}

ARM64_HOOKS = [
    # under qemu-user every initramfs costs minutes and the kernel's and raspi-firmware's
    # triggers would build it twice: update-initramfs is a no-op during the install...
    '--essential-hook=chroot "$1" dpkg-divert --local --rename --add /usr/sbin/update-initramfs'
    ' && printf "#!/bin/sh\\necho update-initramfs: deferred by image/build.py >&2\\n" > "$1/usr/sbin/update-initramfs"'
    ' && chmod 755 "$1/usr/sbin/update-initramfs"',
    # ...then the Pi's boot settings (/etc/default/raspi-firmware: after the install, as it is a
    # conffile) and the short initramfs module list (MODULES=list)...
    f'--customize-hook=tar -C "{IMAGE_DIR / "base-arm64"}" --owner=0 --group=0 -cf - . | tar -C "$1" -xf -',
    # ...and it runs once (its post-update hook, raspi-firmware's, fills /boot/firmware)
    '--customize-hook=rm "$1/usr/sbin/update-initramfs"'
    ' && chroot "$1" dpkg-divert --local --rename --remove /usr/sbin/update-initramfs'
    ' && chroot "$1" update-initramfs -c -k all',
]


def mmdebstrap_args(rootfs: Path, apt_cache: Path, arch: str = "amd64") -> list[str]:
    t = TARGETS[arch]
    return [
        "mmdebstrap", "--mode=root", "--variant=apt", f"--architectures={arch}",
        "--include=" + ",".join(packages(arch) + ["passwd"]),
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
        *(ARM64_HOOKS if arch == "arm64" else []),
        # and the .debs kept for the next build
        f'--customize-hook=find "$1/var/cache/apt/archives" -maxdepth 1 -name "*.deb" '
        f'-exec cp -aln -t "{apt_cache}/" {{}} +',
        SUITE, str(rootfs), *t.mirrors,
    ]


def base_rootfs(arch: str = "amd64") -> tuple[Path, bool]:
    """The Debian part of the rootfs (mmdebstrap: packages.txt, kernel, initramfs), cached by its inputs.

    Returns the directory and whether it was reused. A firmware or overlay change only re-runs
    the Byline layer (customize.sh) on a copy of it.
    """
    apt_cache = CACHE / "apt"
    apt_cache.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256(" ".join(mmdebstrap_args(Path("ROOTFS"), apt_cache, arch)).encode())
    h.update(hash_files(BASE_INPUTS + ARCH_BASE_INPUTS[arch]).encode())
    base = CACHE / f"base-{arch}-{h.hexdigest()[:16]}"
    if (base / ".byline-complete").exists():
        return base, True
    for old in CACHE.glob(f"base-{arch}-*"):  # one base per architecture is enough
        shutil.rmtree(old)
    if arch != host_arch():
        enable_binfmt(arch)
    partial = base.with_name(base.name + ".partial")
    run(*mmdebstrap_args(partial, apt_cache, arch))
    partial.rename(base)
    (base / ".byline-complete").touch()
    return base, False


def host_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()


def enable_binfmt(arch: str) -> None:
    """Foreign binaries (arm64 maintainer scripts, pip, gcc) run through qemu-user-static."""
    qemu = {"arm64": "aarch64"}[arch]
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    if not (binfmt / "status").exists():
        run("mount", "-t", "binfmt_misc", "binfmt_misc", binfmt)
    if not (binfmt / f"qemu-{qemu}").exists() or "enabled" not in (binfmt / f"qemu-{qemu}").read_text():
        run("update-binfmts", "--enable", f"qemu-{qemu}")


def in_chroot(rootfs: Path, script: str, env: dict | None = None, binds: dict[Path, str] | None = None,
              **kw) -> subprocess.CompletedProcess:
    """Run ``sh -c script`` chrooted in ``rootfs``, in a private mount namespace with proc, sys, dev,
    a tmpfs /tmp and ``binds`` (host directory -> path inside) mounted only there."""
    mounts = "".join((f'touch "$R{inside}"' if Path(host).is_file() else f'mkdir -p "$R{inside}"') +
                     f' && mount --bind "{host}" "$R{inside}"; ' for host, inside in (binds or {}).items())
    wrapper = ('set -e; R="$1"; mount -t proc proc "$R/proc"; mount -t sysfs sysfs "$R/sys"; '
               'mount --bind /dev "$R/dev"; mount -t tmpfs tmpfs "$R/tmp"; ' + mounts +
               'exec chroot "$R" /usr/bin/env -u PIP_FIND_LINKS /bin/sh -c "$2"')
    return run("unshare", "--mount", "--propagation", "private", "--", "sh", "-c", wrapper, "sh", rootfs, script,
               env=dict(os.environ, **(env or {})), **kw)


# Python packages with no aarch64 wheel on PyPI, built from their sdists in an arm64 build chroot
ARM64_SOURCE_BUILT = ("spidev", "pyalsaaudio", "tpm2-pytss")
BUILDER_PACKAGES = ["build-essential", "python3-dev", "python3-venv", "pkg-config", "libasound2-dev", "libtss2-dev",
                    "libssl-dev", "swig", "curl", "ca-certificates", "patchelf"]
PJSUA2_TIMEOUT_S = 1200
AARCH64_PLATFORMS = ["manylinux2014_aarch64", "linux_aarch64"] + [f"manylinux_2_{v}_aarch64" for v in range(17, 37)]
"""bookworm has glibc 2.36; pip 23 does not expand a manylinux tag to the older ones by itself."""


def builder_rootfs(base: Path) -> Path:
    """The arm64 base plus a compiler and the -dev packages, for the wheels (cached by the base)."""
    builder = CACHE / base.name.replace("base-", "builder-")
    key = " ".join(BUILDER_PACKAGES)
    if (builder / ".byline-complete").exists() and (builder / ".byline-complete").read_text() == key:
        return builder
    for old in CACHE.glob("builder-arm64-*"):
        shutil.rmtree(old)
    partial = builder.with_name(builder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    run("cp", "-a", "--reflink=auto", base, partial)
    # the base's resolv.conf points at resolved's stub (/run, empty here): the host's, for apt
    (partial / "etc/resolv.conf").unlink(missing_ok=True)
    shutil.copy2("/etc/resolv.conf", partial / "etc/resolv.conf")
    in_chroot(partial, "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
              "--no-install-recommends " + " ".join(BUILDER_PACKAGES) + " >/dev/null",
              binds={CACHE / "apt": "/var/cache/apt/archives"})
    partial.rename(builder)
    (builder / ".byline-complete").write_text(key)
    return builder


def build_wheels_arm64(base: Path, timings: dict) -> tuple[Path, list[str]]:
    """The arm64 wheelhouse: PyPI's aarch64 wheels where they exist, the rest built from source
    in the arm64 build chroot under qemu-user, pjsua2 from pjproject's source release
    (image/build-pjsua2.sh). Returns it and what had to be left out (with the reason)."""
    reqs = image_requirements()
    script = (IMAGE_DIR / "build-pjsua2.sh").read_bytes()
    key = hashlib.sha256(("\n".join(reqs) + base.name).encode() + script).hexdigest()[:16]
    wheels = CACHE / "wheels-arm64" / key
    done = wheels / ".complete"
    if done.exists():
        return wheels, json.loads(done.read_text())["left_out"]
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    built = wheels.with_name(key + ".built")  # the wheels made here (kept), copied into WHEELS by pip download
    built.mkdir(exist_ok=True)
    t = time.monotonic()
    builder = builder_rootfs(base)
    timings["wheels_builder_s"] = round(time.monotonic() - t, 1)
    # this host's CA bundle in place of the chroot's (it may hold a proxy's CA that Debian's lacks)
    ca = {Path("/etc/ssl/certs/ca-certificates.crt"): "/etc/ssl/certs/ca-certificates.crt"}

    def have(req: str) -> bool:
        name, version = (part.strip() for part in req.split("=="))
        return bool(list(built.glob(f"{name.replace('-', '_')}-{version}-*.whl")))

    source = [r for r in reqs if r.split("==")[0].strip().lower() in ARM64_SOURCE_BUILT and not have(r)]
    t = time.monotonic()
    if source:
        in_chroot(builder, "python3 -m venv /tmp/wv && /tmp/wv/bin/pip wheel -q --no-deps --use-pep517 -w /wheels " +
                  " ".join(f"'{r}'" for r in source), binds={built: "/wheels", **ca})
    timings["wheels_source_s"] = round(time.monotonic() - t, 1)
    left_out = []
    pjsua2 = [r for r in reqs if r.lower().startswith("pjsua2-python")]
    if pjsua2 and not have(pjsua2[0]):
        t = time.monotonic()
        src = CACHE / "src"
        src.mkdir(exist_ok=True)
        proc = in_chroot(builder, f"timeout {PJSUA2_TIMEOUT_S} /byline/build-pjsua2.sh /wheels /src",
                         binds={built: "/wheels", src: "/src", IMAGE_DIR: "/byline", **ca}, check=False,
                         capture_output=True, text=True)
        timings["pjsua2_s"] = round(time.monotonic() - t, 1)
        wheels.with_name(key + ".pjsua2.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0 or not have(pjsua2[0]):
            tail = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()][-3:]
            reason = "timed out" if proc.returncode == 124 else f"exit {proc.returncode}"
            left_out.append(f"{pjsua2[0]}: image/build-pjsua2.sh failed ({reason}): {' | '.join(tail)}")
            log(left_out[-1])
            reqs = [r for r in reqs if r not in pjsua2]
    (wheels / "requirements-image.txt").write_text("\n".join(reqs) + "\n")
    t = time.monotonic()
    venv_python = REPO / ".venv" / "bin" / "python"
    run(venv_python if venv_python.exists() else sys.executable, "-m", "pip", "download", "-q",
        "--disable-pip-version-check", "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
        "--abi", "cp311", "--abi", "abi3", "--abi", "none",
        *(a for p in AARCH64_PLATFORMS for a in ("--platform", p)), "--find-links", built,
        "-d", wheels, "-r", wheels / "requirements-image.txt",
        env={k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"})
    timings["wheels_download_s"] = round(time.monotonic() - t, 1)
    done.write_text(json.dumps({"left_out": left_out}))
    return wheels, left_out


def customize(base: Path, rootfs: Path, out: Path, wheels: Path, target: Target = AMD64) -> None:
    """Byline's layer (image/customize.sh) on a copy of the base, in a private mount namespace."""
    run("cp", "-a", "--reflink=auto", base, rootfs)
    (rootfs / ".byline-complete").unlink()
    env = dict(os.environ, BYLINE_REPO=str(REPO), BYLINE_WHEELS=str(wheels), BYLINE_OUT=str(out),
               BYLINE_ARCH=target.arch, BYLINE_KERNEL=target.kernel_name, BYLINE_INITRD=target.initrd_name)
    script = ('set -e; R="$1"; mount -t proc proc "$R/proc"; mount -t sysfs sysfs "$R/sys"; '
              'mount --bind /dev "$R/dev"; mount -t tmpfs tmpfs "$R/tmp"; exec "$2" "$R"')
    run("unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", rootfs,
        IMAGE_DIR / "customize.sh", env=env)


def parse_size(size: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)


# ---- the Raspberry Pi's boot partition (arm64) ----

PI_DTPARAMS = ["i2c_arm=on", "spi=on"]
"""The OLED and the WM8960's control port on I2C1, the TPM on SPI0."""


def pi_overlays() -> list[str]:
    """Our device-tree overlays, one per hw/overlays/*.dts, by name."""
    return sorted(p.stem for p in (REPO / "hw" / "overlays").glob("*.dts"))


def pi_cmdline(target: Target) -> str:
    """cmdline.txt: root on partition 2 by PARTUUID, erofs, read-only; the console on the mini UART
    (ttyS1 on a Pi 3, Zero 2 W and 4 with the upstream DTBs, as raspi-firmware's hook has it)."""
    return (f"console=ttyS1,115200 console=tty0 root=PARTUUID={target.partuuid_root} rootfstype=erofs ro "
            "rootwait fsck.mode=skip")


def pi_config_txt(firmware_config: str) -> str:
    """config.txt: raspi-firmware's (kernel, initramfs, upstream DTBs) plus the buses and our overlays."""
    lines = [firmware_config.rstrip("\n"), "",
             "# Byline handset (image/build.py): I2C1 and SPI0 on, the overlays compiled from hw/overlays/",
             *(f"dtparam={p}" for p in PI_DTPARAMS),
             *(f"dtoverlay={name}" for name in pi_overlays())]
    return "\n".join(lines) + "\n"


def compile_overlays(dest: Path) -> list[str]:
    """hw/overlays/*.dts -> DEST/*.dtbo (dtc -@, so the firmware can resolve their labels)."""
    dest.mkdir(parents=True, exist_ok=True)
    names = []
    for name in pi_overlays():
        run("dtc", "-@", "-q", "-I", "dts", "-O", "dtb", "-o", dest / f"{name}.dtbo",
            REPO / "hw" / "overlays" / f"{name}.dts")
        names.append(name)
    return names


def pi_boot_files(rootfs: Path, bootfs: Path, target: Target) -> dict:
    """Fill BOOTFS like the Pi firmware expects: raspi-firmware's hook output (/boot/firmware: start*.elf,
    fixup*.dat, the bcm27xx DTBs, the kernel, the initrd, config.txt), our cmdline.txt and overlays."""
    firmware = rootfs / "boot" / "firmware"
    if not (firmware / "config.txt").exists() or not list(firmware.glob("start*.elf")):
        raise SystemExit(f"image: raspi-firmware left no boot files in {firmware}: {sorted(os.listdir(firmware))}")
    shutil.copytree(firmware, bootfs, symlinks=False)
    (bootfs / "cmdline.txt").write_text(pi_cmdline(target) + "\n")
    (bootfs / "config.txt").write_text(pi_config_txt((firmware / "config.txt").read_text()))
    overlays = compile_overlays(bootfs / "overlays")
    return {"overlays": overlays, "files": len([p for p in bootfs.rglob("*") if p.is_file()])}


def genimage(work: Path, out: Path, target: Target = AMD64, boot_files: list[str] | None = None) -> None:
    config = work / "genimage.cfg"
    files = boot_files or [target.kernel_name, target.initrd_name]
    config.write_text(f"""\
image boot{target.suffix}.vfat {{
  vfat {{
    label = "BYLINEBOOT"
    files = {{ {", ".join(f'"{f}"' for f in files)} }}
  }}
  size = {target.boot_size}
}}

image {target.image_name} {{
  hdimage {{
    partition-table-type = "mbr"
    disk-signature = 0x{target.disk_signature:08x}
  }}
  partition boot {{
    partition-type = 0xC
    bootable = "true"
    image = "boot{target.suffix}.vfat"
  }}
  partition root {{
    partition-type = 0x83
    image = "{target.erofs_name}"
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
    if boot_files is None:
        for name in files:
            shutil.copy2(out / name, work / name)
    empty_root = work / "genimage-root"
    tmp = work / "genimage-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    empty_root.mkdir(exist_ok=True)
    run("genimage", "--config", config, "--inputpath", work, "--outputpath", out, "--tmppath", tmp,
        "--rootpath", empty_root)


def build(out: Path, force: bool, arch: str = "amd64") -> dict:
    target = TARGETS[arch]
    started = time.monotonic()
    digest = input_hash(arch)
    stamp = out / target.stamp_name
    image = out / target.image_name
    if not force and stamp.exists() and image.exists():
        previous = json.loads(stamp.read_text())
        if previous.get("inputs") == digest:
            log(f"inputs unchanged ({digest[:12]}): reusing {image}")
            return dict(previous, reused=True, build_s=round(time.monotonic() - started, 1))
    if os.geteuid() != 0:
        raise SystemExit("image: building needs root (mmdebstrap --mode=root)")
    work = out / f"work{target.suffix}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    left_out: list[str] = []

    t = time.monotonic()
    base, reused_base = base_rootfs(arch)
    timings["base_reused" if reused_base else "mmdebstrap_s"] = True if reused_base else round(time.monotonic() - t, 1)

    t = time.monotonic()
    if arch == host_arch():
        wheels = build_wheels(work)
    else:
        wheels, left_out = build_wheels_arm64(base, timings)
    timings["wheels_s"] = round(time.monotonic() - t, 1)

    t = time.monotonic()
    rootfs = work / "rootfs"
    customize(base, rootfs, out, wheels, target)
    timings["customize_s"] = round(time.monotonic() - t, 1)
    shutil.move(out / "manifest.txt", out / target.manifest_name)

    boot_files = None
    boot_info = {}
    if arch == "arm64":
        bootfs = work / "bootfs"
        boot_info = pi_boot_files(rootfs, bootfs, target)
        boot_files = sorted(os.listdir(bootfs))
        for name in boot_files:
            shutil.move(bootfs / name, work / name)

    t = time.monotonic()
    # /boot stays out of the root filesystem: the kernel and initrd are on partition 1
    for f in (rootfs / "boot").iterdir():
        f.unlink() if not f.is_dir() else shutil.rmtree(f)
    rootfs_bytes = int(subprocess.run(["du", "-sb", rootfs], capture_output=True, text=True, check=True).stdout.split()[0])
    run("mkfs.erofs", "-zlz4hc", work / target.erofs_name, rootfs,
        stdout=subprocess.DEVNULL)
    timings["erofs_s"] = round(time.monotonic() - t, 1)

    t = time.monotonic()
    genimage(work, out, target, boot_files)
    timings["genimage_s"] = round(time.monotonic() - t, 1)

    shutil.move(work / target.erofs_name, out / target.erofs_name)
    shutil.rmtree(work)
    manifest = out / target.manifest_name
    result = {
        "arch": arch,
        "image": str(image),
        "manifest": str(manifest),
        "kernel": str(out / target.kernel_name),
        "initrd": str(out / target.initrd_name),
        "root": f"PARTUUID={target.partuuid_root}",
        "data": f"PARTUUID={target.partuuid_data}",
        "inputs": digest,
        "image_bytes": image.stat().st_size,
        "image_allocated_bytes": image.stat().st_blocks * 512,
        "rootfs_bytes": rootfs_bytes,
        "erofs_bytes": (out / target.erofs_name).stat().st_size,
        "packages": sum(1 for line in manifest.read_text().splitlines() if line.startswith("deb ")),
        "timings": timings,
        "build_s": round(time.monotonic() - started, 1),
        "reused": False,
    }
    if boot_info:
        result["boot"] = boot_info
    if arch != "amd64":
        result["left_out"] = left_out
    stamp.write_text(json.dumps(result, indent=1) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(TARGETS), default="amd64",
                        help="amd64: the QEMU image; arm64: the Raspberry Pi image (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even when the inputs are unchanged")
    args = parser.parse_args(argv)
    result = build(args.out.resolve(), args.force, args.arch)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
