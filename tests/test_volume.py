"""The data volume's helper on a real LUKS2 header (cryptsetup on a file: this host has no
device-mapper, so opening and mounting are tested in the image's boot test under QEMU)."""

import base64
import grp
import os
import pwd
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from firmware.store import NoStore
from firmware.store.volume import VolumeArea, VolumeError, VolumeHelper, serve
from firmware.store.vault import Vault
from helpers.store_support import small_kdf

KEY = bytes(range(32))


@pytest.fixture
def device(tmp_path) -> Path:
    if shutil.which("cryptsetup") is None:
        pytest.fail("cryptsetup is not installed (Debian package cryptsetup-bin; ./byline setup installs it)")
    path = tmp_path / "data.img"
    with open(path, "wb") as file:
        file.truncate(32 * 1024 * 1024)
    return path


@pytest.fixture
def area(tmp_path, device):
    """A VolumeArea talking to a real helper on a socket (the helper in a thread of this process)."""
    helper = VolumeHelper(device, tmp_path / "mount", owner=_user())
    socket_path = tmp_path / "volume.sock"
    thread = threading.Thread(target=serve, args=(helper, socket_path, _group()), daemon=True)
    thread.start()
    for _ in range(500):
        if socket_path.exists():
            return VolumeArea(socket_path)
        threading.Event().wait(0.01)
    pytest.fail(f"the volume helper never made {socket_path}")


def _user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def _group() -> str:
    return grp.getgrgid(os.getgid()).gr_name


def luks_dump(device: Path) -> str:
    return subprocess.run(["cryptsetup", "luksDump", str(device)], capture_output=True, text=True).stdout


def test_a_new_volume_has_no_store_until_its_header_is_written(area, device):
    assert area.header() is None and area.attempts() is None
    assert not Vault(area, None).exists()
    area.prepare(KEY)
    assert "Version:       \t2" in luks_dump(device) and "0: luks2" in luks_dump(device)
    assert not Vault(area, None).exists(), "formatted, but no vault header yet"
    area.put_header(b"header bytes")
    area.put_attempts(b'{"failures": 3}')
    assert area.header() == b"header bytes" and Vault(area, None).failures == 3
    area.put_attempts(b'{"failures": 0}')
    assert Vault(area, None).failures == 0, "a token is replaced, not added"
    dump = luks_dump(device)
    assert "byline-header" in dump and "byline-attempts" in dump


def test_the_vault_header_survives_only_as_ciphertext_wrapped_key_in_the_luks2_header(area, device):
    area.prepare(KEY)
    secret = "a passphrase of twenty"
    vault = Vault(area, None)
    with pytest.raises(VolumeError, match="did not open"):  # no device-mapper here: the boot test opens it
        vault.create(secret, small_kdf())
    assert Vault(area, None).exists() and secret.encode() not in device.read_bytes()
    assert Vault(area, None).describe().protection == "passphrase (no TPM)"


def test_erase_destroys_every_keyslot_and_the_tokens(area, device):
    area.prepare(KEY)
    area.put_header(b"header bytes")
    assert "0: luks2" in luks_dump(device)
    area.erase()
    dump = luks_dump(device)
    assert "Keyslots:\nTokens:\nDigests:" in dump, dump
    assert area.header() is None
    with pytest.raises(NoStore):
        Vault(area, None).describe()
    area.erase()  # again: nothing left to do


def test_the_helper_refuses_bad_requests_without_dying(area, device, tmp_path):
    helper = VolumeHelper(device, tmp_path / "mount", owner=_user())
    assert helper.handle({"op": "dance"}) == {"ok": False, "error": "unknown request 'dance'"}
    assert helper.handle({"op": "open", "key": "short"})["ok"] is False
    assert helper.handle({"op": "open", "key": base64.b64encode(b"x" * 31).decode()}) == \
        {"ok": False, "error": "malformed request"}
    assert helper.handle({"op": "put", "token": "other", "data": ""})["ok"] is False
    assert area.header() is None, "the helper still answers"


@pytest.mark.parametrize("line", [b"[1, 2]\n", b"\"op\"\n", b"{not json\n", b"\xff\xfe\n"])
def test_the_helper_survives_garbage_on_its_socket(area, tmp_path, line):
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(5)
        connection.connect(str(tmp_path / "volume.sock"))
        connection.sendall(line)
        connection.recv(4096)
    assert area.header() is None, "the helper still answers"


def test_the_socket_exists_only_once_it_accepts_connections_with_its_final_mode(area, tmp_path):
    socket_path = tmp_path / "volume.sock"
    assert socket_path.stat().st_mode & 0o777 == 0o660
    assert area.attempts() is None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".volume.sock")] == []


def test_the_data_partition_is_found_beside_the_root_file_system():
    """Here the root is some partition of some disk: the helper names that disk's partition 3, or says none."""
    from firmware.store.volume import data_partition_beside_root

    root = subprocess.run(["findmnt", "-n", "-o", "SOURCE", "/"], capture_output=True, text=True).stdout.strip()
    partition = Path(os.path.realpath(root)).name
    if not Path(f"/sys/class/block/{partition}/partition").exists():
        with pytest.raises(VolumeError):
            data_partition_beside_root()
        return
    disk = Path(os.path.realpath(f"/sys/class/block/{partition}")).parent
    threes = [c.name for c in disk.iterdir() if (c / "partition").exists() and (c / "partition").read_text().strip() == "3"]
    if threes:
        assert data_partition_beside_root() == Path("/dev") / threes[0]
    else:
        with pytest.raises(VolumeError, match="no partition 3"):
            data_partition_beside_root()
