#!/bin/sh
# Build the pjsua2-python wheel of requirements.txt from source, for a machine with no wheel on
# PyPI (aarch64): pjproject's source release (signalling, TLS against the system OpenSSL 3, ALSA
# sound), its SWIG Python module, packaged by the pjsua2-python sdist of the same version, so the
# wheel is `pjsua2_python-2.15.1.post1-cp311-cp311-linux_<machine>.whl` and installs like PyPI's.
#
#   image/build-pjsua2.sh OUT_DIR [SRC_DIR] [PJPROJECT_URL PJPROJECT_SHA256]
#
# Run where the wheel will be used (image/build.py runs it in the arm64 build chroot under
# qemu-user), with build-essential, python3-dev, python3-venv, pkg-config, swig, libssl-dev,
# libasound2-dev and curl (or python3) installed. Downloads go to SRC_DIR (default: OUT_DIR) and are
# reused when their SHA-256 matches; a mismatch is an error. Exit status: 0 wheel in OUT_DIR,
# 3 download or checksum failure, anything else a build failure.
set -eu

OUT=${1:?usage: build-pjsua2.sh OUT_DIR [SRC_DIR] [PJPROJECT_URL PJPROJECT_SHA256]}
SRC=${2:-$OUT}
PJ_VERSION=2.15.1
PJ_URL=${3:-https://github.com/pjsip/pjproject/archive/refs/tags/$PJ_VERSION.tar.gz}
# pjproject 2.15.1's GitHub source tarball. Not verifiable from the machine this was written on
# (no route to github.com): taken from another public project's pinned fetch list; the check
# below refuses any other content, so a wrong pin fails loudly and never builds.
PJ_SHA256=${4:-8f3bd99caf003f96ed8038b8a36031eb9d8cd9eaea1eaff7e01c2eef6bd55706}
# the packaging: the pjsua2-python sdist pinned in requirements.txt (PyPI's SHA-256)
PY_VERSION=2.15.1.post1
PY_URL=https://files.pythonhosted.org/packages/e5/ab/81adbf9c9e810d2312957cf2f5d9c7790c22a721eb7909b541f9dcb092ea/pjsua2_python-$PY_VERSION.tar.gz
PY_SHA256=283da3b61ad5a0c4b6067892e8455602a027a25595c4f4d0142d8977d3ef4c90
JOBS=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)

say() { echo "build-pjsua2: $*" >&2; }

fetch() {  # URL SHA256 FILE: download once, verify always
  url=$1 sum=$2 file=$3
  if [ ! -f "$file" ] || ! echo "$sum  $file" | sha256sum -c --status; then
    say "downloading $url"
    rm -f "$file.part"
    if command -v curl >/dev/null; then
      curl -fsSL --retry 2 -m 600 -o "$file.part" "$url" || { say "download failed: $url"; exit 3; }
    else
      python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "$url" "$file.part" \
        || { say "download failed: $url"; exit 3; }
    fi
    mv "$file.part" "$file"
  fi
  if ! echo "$sum  $file" | sha256sum -c --status; then
    say "checksum mismatch for $file: expected $sum, got $(sha256sum "$file" | cut -d' ' -f1)"
    exit 3
  fi
  say "verified $file ($sum)"
}

mkdir -p "$OUT" "$SRC"
fetch "$PJ_URL" "$PJ_SHA256" "$SRC/pjproject-$PJ_VERSION.tar.gz"
fetch "$PY_URL" "$PY_SHA256" "$SRC/pjsua2_python-$PY_VERSION.tar.gz"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pjsua2-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
tar -C "$WORK" -xzf "$SRC/pjproject-$PJ_VERSION.tar.gz"
tar -C "$WORK" -xzf "$SRC/pjsua2_python-$PY_VERSION.tar.gz"
PJ="$WORK/pjproject-$PJ_VERSION"
PKG="$WORK/pjsua2_python-$PY_VERSION"
[ "$(cat "$PKG/pjsua2/_pjproject_ref")" = "$PJ_VERSION" ] || { say "sdist is for pjproject $(cat "$PKG/pjsua2/_pjproject_ref")"; exit 1; }

# no video; audio through ALSA; TLS (SIP over TLS, SRTP keying helpers) through the system OpenSSL 3
cat > "$PJ/pjlib/include/pj/config_site.h" <<'SITE'
#define PJMEDIA_HAS_VIDEO 0
#define PJSUA_HAS_VIDEO 0
#define PJMEDIA_AUDIO_DEV_HAS_ALSA 1
#define PJ_HAS_SSL_SOCK 1
SITE
cd "$PJ"
say "configure (openssl $(pkg-config --modversion openssl), alsa $(pkg-config --modversion alsa))"
CFLAGS="-fPIC -O2" CXXFLAGS="-fPIC -O2" ./configure --disable-shared --with-ssl=/usr \
  --disable-video --disable-v4l2 --disable-sdl --disable-ffmpeg --disable-openh264 --disable-libyuv \
  --disable-libwebrtc --disable-android-mediacodec --disable-darwin-ssl --disable-gnutls \
  > "$WORK/configure.log" 2>&1 || { tail -30 "$WORK/configure.log" >&2; exit 1; }
grep -q "Checking if libssl is available... yes\|OpenSSL library found" "$WORK/configure.log" \
  || grep -qi "ssl.*yes" "$WORK/configure.log" || { say "configure did not find OpenSSL"; exit 1; }
grep -qi "alsa" "$WORK/configure.log" || { say "configure did not pick ALSA"; exit 1; }
say "make (-j$JOBS)"
make dep > "$WORK/make-dep.log" 2>&1 || { tail -30 "$WORK/make-dep.log" >&2; exit 1; }
make -j"$JOBS" lib > "$WORK/make.log" 2>&1 || make -j"$JOBS" > "$WORK/make.log" 2>&1 \
  || { tail -40 "$WORK/make.log" >&2; exit 1; }

# the SWIG module (pjsip-apps/src/swig/python), with setuptools from a throwaway venv
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q --disable-pip-version-check "setuptools>=69" wheel
say "swig python module"
make -C pjsip-apps/src/swig/python PYTHON_EXE="$WORK/venv/bin/python" > "$WORK/swig.log" 2>&1 \
  || { tail -40 "$WORK/swig.log" >&2; exit 1; }

# packaged as pjsua2-python (the package of requirements.txt), then a wheel
"$WORK/venv/bin/python" "$PKG/scripts/stage_bindings.py" --source-dir pjsip-apps/src/swig/python \
  --package-dir "$PKG/pjsua2"
"$WORK/venv/bin/pip" wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w "$OUT" "$PKG"
WHEEL=$(ls "$OUT"/pjsua2_python-"$PY_VERSION"-*.whl)
# smoke test: the module loads and makes an endpoint
"$WORK/venv/bin/pip" install -q --disable-pip-version-check --no-deps "$WHEEL"
"$WORK/venv/bin/python" -c 'import pjsua2 as pj; ep = pj.Endpoint(); ep.libCreate(); print("pjsua2", ep.libVersion().full); ep.libDestroy()'
say "built $WHEEL"
