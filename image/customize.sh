#!/bin/sh
# Byline's layer on top of the cached Debian base rootfs (run by image/build.py on the build host,
# as root, in a private mount namespace, with a copy of the base in $1 and /proc, /sys, /dev
# mounted inside it).
# Environment from build.py: BYLINE_REPO (the repo), BYLINE_WHEELS (wheelhouse with
# requirements-image.txt), BYLINE_OUT (where the manifest, kernel and initrd go), BYLINE_ARCH
# (amd64 or arm64; arm64 runs under qemu-user), BYLINE_KERNEL and BYLINE_INITRD (their names in OUT).
set -eu
R="$1"
ARCH="${BYLINE_ARCH:-amd64}"
in_root() { chroot "$R" "$@"; }

# the overlay, owned by root whoever checked out the repo
tar -C "$BYLINE_REPO/image/overlay" --owner=0 --group=0 -cf - . | tar -C "$R" -xf -
GROUPS_="tss audio"
if [ "$ARCH" = arm64 ]; then
  # the Pi image: the handset's config as /etc/byline/config.toml, QEMU's kept as config-qemu.toml
  # (selected by byline.target=qemu on the kernel command line: overlay-arm64's generator)
  mv "$R/etc/byline/config.toml" "$R/etc/byline/config-qemu.toml"
  tar -C "$BYLINE_REPO/image/overlay-arm64" --owner=0 --group=0 -cf - . | tar -C "$R" -xf -
  for group in gpio i2c spi; do in_root groupadd --system -f "$group"; done
  GROUPS_="$GROUPS_ gpio i2c spi"
fi

# the phone's user: no home, no shell, in the groups of the devices it drives
in_root useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin byline
for group in $GROUPS_; do
  if in_root getent group "$group" >/dev/null; then in_root usermod -a -G "$group" byline; fi
done
mkdir -p "$R/var/lib/byline"

# the firmware and its Python packages (wheels built on the host: no compiler in the image)
mkdir -p "$R/opt/byline"
tar -C "$BYLINE_REPO" --owner=0 --group=0 --exclude=__pycache__ --exclude='*.pyc' -cf - firmware drivers hw \
  | tar -C "$R/opt/byline" -xf -
in_root python3 -m venv /opt/byline/venv
mkdir -p "$R/tmp/wheels"
cp "$BYLINE_WHEELS"/* "$R/tmp/wheels/"
in_root env -u PIP_FIND_LINKS /opt/byline/venv/bin/pip install -q --disable-pip-version-check --no-index --find-links /tmp/wheels \
  -r /tmp/wheels/requirements-image.txt
rm -rf "$R/tmp/wheels"
in_root /opt/byline/venv/bin/python -m compileall -q /opt/byline/firmware /opt/byline/drivers /usr/lib/byline/selftest.py
# the venv's pip is not needed on a phone
in_root env -u PIP_FIND_LINKS /opt/byline/venv/bin/pip uninstall -q -y pip setuptools

# the manifest: every Debian package and every Python package at its exact version
{
  echo "# Byline image manifest: Debian packages (dpkg-query), then the venv's Python packages"
  in_root dpkg-query -W -f='deb ${binary:Package} ${Version}\n'
  in_root /opt/byline/venv/bin/python -c 'import importlib.metadata as m
for d in sorted(m.distributions(), key=lambda d: d.metadata["Name"].lower()):
    print("pypi", d.metadata["Name"] + "==" + d.version)'
} > "$BYLINE_OUT/manifest.txt"

# units: the phone on, the self-test (conditional on the kernel command line) on, no logins;
# the network (DHCP, DNS through resolved's stub, the clock) on; Debian's D-Bus-driven
# wpa_supplicant off (the phone's own, byline-wifi@IFACE, has no D-Bus interface)
in_root systemctl enable byline.service byline-selftest.service \
  systemd-networkd.service systemd-resolved.service systemd-timesyncd.service
ln -sfn ../run/systemd/resolve/stub-resolv.conf "$R/etc/resolv.conf"
in_root systemctl mask serial-getty@ttyS0.service serial-getty@ttyS1.service serial-getty@ttyAMA0.service \
  getty@tty1.service console-getty.service \
  systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer 2>/dev/null || true
in_root systemctl disable wpa_supplicant.service
in_root systemctl mask wpa_supplicant.service
in_root systemctl set-default multi-user.target

# a machine-id made at each boot (root is read-only), nothing left of the build
: > "$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id"
if [ -e "$R/usr/sbin/sshd" ] || [ -e "$R/usr/sbin/dropbear" ]; then echo "customize: an SSH server got in" >&2; exit 1; fi

# the kernel and initrd for QEMU's direct boot (and amd64's FAT boot partition)
cp "$(ls "$R"/boot/vmlinuz-* | sort -V | tail -n1)" "$BYLINE_OUT/${BYLINE_KERNEL:-vmlinuz}"
cp "$(ls "$R"/boot/initrd.img-* | sort -V | tail -n1)" "$BYLINE_OUT/${BYLINE_INITRD:-initrd.img}"
