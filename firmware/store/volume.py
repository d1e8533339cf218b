"""The phone's data volume: a LUKS2 partition that holds the vault, opened through a root helper.

On a device the store lives in a LUKS2 partition (the SD card's third partition), so the card
shows nothing but ciphertext and the LUKS2 header. Two halves, and the only module that runs
cryptsetup:

- :class:`VolumeHelper` (``python -m firmware.store.volume serve ...``, run as root by
  byline-volume.service) formats, opens, mounts and erases the partition, and keeps the vault's
  header and wrong-secret counter as LUKS2 tokens (JSON in the LUKS2 header: readable before
  unlocking, so the phone can ask for the PIN; not secret: the header's key is wrapped). It
  listens on a Unix socket that only the phone's group may use, and never logs a key.
- :class:`VolumeArea` is the vault's :class:`firmware.store.vault.KeyArea` over that socket: the
  supervisor, which has no privileges, asks the helper for each step.

Keys: the LUKS2 passphrase is the vault's volume key (HKDF of the master key, 256 random bits
behind the PIN's Argon2id and the TPM share), so LUKS2's own KDF (argon2id) only needs the
smallest cost: it cannot make a 256-bit key harder to guess. A wipe runs ``luksErase`` (every
keyslot destroyed: the data is gone whatever else survives) and removes the tokens.

Protocol: one JSON object per line each way, one request per connection:
``{"op": "status"}`` -> ``{"ok": true, "luks": bool, "open": bool, "header": b64|null,
"attempts": b64|null}``; ``{"op": "put", "token": "header"|"attempts", "data": b64}``;
``{"op": "format", "key": b64}``; ``{"op": "open", "key": b64}`` -> ``{"ok": true, "mount": path}``;
``{"op": "erase"}``. Failures answer ``{"ok": false, "error": "..."}`` (no key in it).
"""

from __future__ import annotations

import argparse
import base64
import grp
import json
import logging
import os
import pwd
import socket
import subprocess
import sys
from pathlib import Path

from firmware.store import StoreError
from firmware.store.vault import RECORDS_DIR

log = logging.getLogger(__name__)

MAPPER_NAME = "byline-data"
TOKENS = {"header": 0, "attempts": 1}
TOKEN_TYPE = "byline-{}"
LUKS_KDF = ("--pbkdf", "argon2id", "--pbkdf-force-iterations", "4", "--pbkdf-memory", "32768",
            "--pbkdf-parallel", "1")
"""The smallest argon2id: the passphrase is already a 256-bit key (see the module docstring)."""
MOUNT_OPTIONS = "nodev,nosuid,noexec,noatime"
DATA_PARTITION = 3
"""The image's layout: 1 boot, 2 root, 3 data (image/build.py)."""
CRYPTSETUP_WRONG_KEY = 2
"""cryptsetup's exit status for "no key available with this passphrase"."""
COMMAND_TIMEOUT_S = 120.0
REQUEST_BYTES = 64 * 1024
SOCKET_TIMEOUT_S = 180.0


class VolumeError(StoreError):
    """The data volume could not do what was asked (the message says what, never a key)."""


# --- the root helper -------------------------------------------------------------------------


class VolumeHelper:
    """Formats, opens and erases ``device`` and keeps the vault's tokens in its LUKS2 header;
    mounts the opened volume on ``mount_point`` for ``owner`` (user name)."""

    def __init__(self, device: Path, mount_point: Path, owner: str):
        self.device = Path(device)
        self.mount_point = Path(mount_point)
        self.owner = owner

    def handle(self, request: dict) -> dict:
        op = request.get("op")
        try:
            if op == "status":
                return {"ok": True, **self.status()}
            if op == "put":
                self.put(str(request["token"]), base64.b64decode(request["data"], validate=True))
            elif op == "format":
                self.format(_key(request))
            elif op == "open":
                return {"ok": True, "mount": str(self.open(_key(request)))}
            elif op == "erase":
                self.erase()
            else:
                return {"ok": False, "error": f"unknown request {op!r}"}
        except VolumeError as e:
            return {"ok": False, "error": str(e)}
        except (KeyError, TypeError, ValueError):
            return {"ok": False, "error": "malformed request"}
        return {"ok": True}

    def status(self) -> dict:
        luks = self._run("isLuks", check=False).returncode == 0
        tokens = {name: self._token(index) if luks else None for name, index in TOKENS.items()}
        return {"luks": luks, "open": self._mapper.exists(), **tokens}

    def put(self, name: str, data: bytes) -> None:
        if name not in TOKENS:
            raise VolumeError(f"no token {name!r}")
        token = {"type": TOKEN_TYPE.format(name), "keyslots": [], "data": base64.b64encode(data).decode()}
        self._run("token", "import", "--token-id", str(TOKENS[name]), "--token-replace",
                  input=json.dumps(token).encode())

    def format(self, key: bytes) -> None:
        """A new LUKS2 volume (the old one, if any, is gone with its keyslots)."""
        self._close()
        self._run("luksFormat", "-q", "--type", "luks2", *LUKS_KDF, "--key-file", "-", input=key)

    def open(self, key: bytes) -> Path:
        """Unlock and mount; a volume opened for the first time gets its file system."""
        if not self._mapper.exists():
            opened = _command("cryptsetup", "open", "--type", "luks2", "--key-file", "-", str(self.device),
                              MAPPER_NAME, input=key, check=False)
            if opened.returncode == CRYPTSETUP_WRONG_KEY:
                raise VolumeError("the data volume did not open with this key")
            if opened.returncode != 0:
                lines = opened.stderr.decode("utf-8", "replace").strip().splitlines()
                raise VolumeError(f"the data volume did not open: {lines[-1] if lines else opened.returncode}")
        if not _blkid_type(self._mapper):
            _command("mkfs.ext4", "-q", "-L", "byline-data", "-m", "0", str(self._mapper))
        if not os.path.ismount(self.mount_point):
            self.mount_point.mkdir(parents=True, exist_ok=True)
            _command("mount", "-t", "ext4", "-o", MOUNT_OPTIONS, str(self._mapper), str(self.mount_point))
        user = pwd.getpwnam(self.owner)
        os.chown(self.mount_point, user.pw_uid, grp.getgrgid(user.pw_gid).gr_gid)
        os.chmod(self.mount_point, 0o700)
        return self.mount_point

    def erase(self) -> None:
        """Every keyslot destroyed, then the tokens; the device is then no store at all."""
        self._close()
        if self._run("isLuks", check=False).returncode != 0:
            return
        self._run("luksErase", "-q")
        for index in TOKENS.values():
            self._run("token", "remove", "--token-id", str(index), check=False)

    @property
    def _mapper(self) -> Path:
        return Path("/dev/mapper") / MAPPER_NAME

    def _close(self) -> None:
        if os.path.ismount(self.mount_point):
            _command("umount", str(self.mount_point))
        if self._mapper.exists():
            _command("cryptsetup", "close", MAPPER_NAME)

    def _token(self, index: int) -> str | None:
        exported = self._run("token", "export", "--token-id", str(index), check=False)
        if exported.returncode != 0:
            return None
        try:
            return str(json.loads(exported.stdout)["data"])
        except (ValueError, KeyError, TypeError):
            return None  # someone else's token in our slot: as if there were none

    def _run(self, *args: str, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """cryptsetup ARGS DEVICE."""
        return _command("cryptsetup", *args, str(self.device), input=input, check=check)


def _command(*argv: str, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(argv, input=input, capture_output=True, timeout=COMMAND_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise VolumeError(f"{argv[0]} {argv[1] if len(argv) > 1 else ''} failed: {type(e).__name__}") from None
    if check and result.returncode != 0:
        lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
        reason = lines[-1] if lines else f"exit status {result.returncode}"
        raise VolumeError(f"{argv[0]} {argv[1] if len(argv) > 1 else ''} failed: {reason}")
    return result


def data_partition_beside_root(number: int = DATA_PARTITION) -> Path:
    """Partition ``number`` of the disk the root file system is on (/dev/vda3 beside /dev/vda2,
    /dev/mmcblk0p3 beside /dev/mmcblk0p2): the image's data partition, on any board."""
    source = _command("findmnt", "-n", "-o", "SOURCE", "/").stdout.decode().strip()
    partition = Path(os.path.realpath(source)).name
    disk = Path(os.path.realpath(f"/sys/class/block/{partition}")).parent
    for child in sorted(disk.iterdir()):
        number_file = child / "partition"
        if number_file.exists() and number_file.read_text().strip() == str(number):
            return Path("/dev") / child.name
    raise VolumeError(f"the root file system's disk has no partition {number}")


def _blkid_type(device: Path) -> str:
    result = subprocess.run(["blkid", "-o", "value", "-s", "TYPE", str(device)], capture_output=True, text=True)
    return result.stdout.strip()


def _key(request: dict) -> bytes:
    key = base64.b64decode(request["key"], validate=True)
    if len(key) != 32:
        raise ValueError("the key must be 32 bytes")
    return key


def serve(helper: VolumeHelper, socket_path: Path, group: str) -> None:
    """Answer requests on ``socket_path`` (mode 0660, ``group``) until killed, one at a time.

    The socket is bound and listening under a temporary name and renamed into place, so once
    ``socket_path`` exists it accepts connections and already has its final owner and mode."""
    socket_path.unlink(missing_ok=True)
    pending_path = socket_path.with_name(f".{socket_path.name}.{os.getpid()}")
    pending_path.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(pending_path))
        os.chown(pending_path, 0, grp.getgrnam(group).gr_gid)
        os.chmod(pending_path, 0o660)
        server.listen(4)
        os.rename(pending_path, socket_path)
        log.info("data volume helper ready for %s", helper.device)
        while True:
            connection, _ = server.accept()
            with connection:
                connection.settimeout(SOCKET_TIMEOUT_S)
                try:
                    request = json.loads(_read_line(connection))
                    answer = helper.handle(request) if isinstance(request, dict) else {"ok": False, "error": "malformed"}
                except (OSError, ValueError):
                    continue
                operation = request.get("op") if isinstance(request, dict) else None
                log.info("data volume: %s -> %s", operation, "ok" if answer.get("ok") else answer.get("error"))
                try:
                    connection.sendall(json.dumps(answer).encode() + b"\n")
                except OSError:
                    continue


def _read_line(connection: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = connection.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > REQUEST_BYTES:
            raise ValueError("request too long")
    return data


# --- the vault's side ------------------------------------------------------------------------


class VolumeArea:
    """The vault's key area on the data volume, through the helper's socket (see the module docstring)."""

    def __init__(self, socket_path: Path):
        self.socket_path = Path(socket_path)

    def __repr__(self) -> str:
        return f"data volume via {self.socket_path}"

    def header(self) -> bytes | None:
        return self._token("header")

    def attempts(self) -> bytes | None:
        return self._token("attempts")

    def put_header(self, raw: bytes) -> None:
        self._ask({"op": "put", "token": "header", "data": base64.b64encode(raw).decode()})

    def put_attempts(self, raw: bytes) -> None:
        self._ask({"op": "put", "token": "attempts", "data": base64.b64encode(raw).decode()})

    def prepare(self, volume_key: bytes) -> None:
        self._ask({"op": "format", "key": base64.b64encode(volume_key).decode()})

    def records(self, volume_key: bytes) -> Path:
        answer = self._ask({"op": "open", "key": base64.b64encode(volume_key).decode()})
        return Path(answer["mount"]) / RECORDS_DIR

    def erase(self) -> None:
        self._ask({"op": "erase"})

    def _token(self, name: str) -> bytes | None:
        status = self._ask({"op": "status"})
        value = status.get(name)
        return None if value is None else base64.b64decode(value)

    def _ask(self, request: dict) -> dict:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
                connection.settimeout(SOCKET_TIMEOUT_S)
                connection.connect(str(self.socket_path))
                connection.sendall(json.dumps(request).encode() + b"\n")
                answer = json.loads(_read_line(connection) or b"{}")
        except (OSError, ValueError) as e:
            raise VolumeError(f"the data volume helper did not answer ({type(e).__name__})") from None
        if not answer.get("ok"):
            raise VolumeError(f"data volume: {answer.get('error', 'no answer')}")
        return answer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m firmware.store.volume", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve_parser = sub.add_parser("serve", help="run the root helper")
    serve_parser.add_argument("--device", default="auto",
                              help=f"the partition (default: partition {DATA_PARTITION} of the root file system's disk)")
    serve_parser.add_argument("--mount", required=True, type=Path)
    serve_parser.add_argument("--socket", required=True, type=Path)
    serve_parser.add_argument("--owner", default="byline", help="the user the mounted volume belongs to")
    serve_parser.add_argument("--group", default="byline", help="the group that may use the socket")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = data_partition_beside_root() if args.device == "auto" else Path(args.device)
    serve(VolumeHelper(device, args.mount, args.owner), args.socket, args.group)
    return 0


if __name__ == "__main__":
    sys.exit(main())
