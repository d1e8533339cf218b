"""The TPM hardware share against a real software TPM 2.0 (swtpm): keeps, refuses, locks out, forgets.

Independent checks go through tpm2-tools (``tpm2_*`` over the same TCTI) rather than the module
under test; tpm2-pytss itself is imported by firmware/store/tpm.py only.
"""

import base64
import os
import re
import secrets
import subprocess
from pathlib import Path

import pytest

from firmware.store import HardwareLocked, HardwareShareError
from firmware.store import tpm as tpm_module
from firmware.store.tpm import (
    NOT_THIS_TPM,
    NV_INDEX_COUNT,
    NV_INDEX_FIRST,
    NV_INDEX_LAST,
    TpmShare,
    open_tpm,
)
from lab import LabError
from lab.processes import free_tcp_port, port_is_free, processes_in_group
from lab.swtpm import Swtpm, tpm_answers

TPM2_TOOL_TIMEOUT_SECONDS = 20.0
# Provisioning used by the lockout tests: long enough that no failure is forgotten during a test.
MAX_TRIES = 3
RECOVERY_TIME_S = 600
LOCKOUT_RECOVERY_S = 900
# swtpm's (libtpms's) dictionary-attack settings before anyone provisions it, measured.
SWTPM_DEFAULT_MAX_TRIES = 3
SWTPM_DEFAULT_RECOVERY_TIME_S = 1000
SWTPM_DEFAULT_LOCKOUT_RECOVERY_S = 1000
NAME_LINE = re.compile(r"^name: ([0-9a-f]+)$", re.MULTILINE)


def new_auth() -> bytes:
    return secrets.token_bytes(32)


def tpm2_tool(swtpm, *argv, check=True) -> subprocess.CompletedProcess:
    """Run a tpm2-tools command against ``swtpm``; with ``check``, fail the test on a non-zero exit."""
    result = subprocess.run(
        argv,
        check=False,  # checked below, with the tool's error output in the message
        env={**os.environ, "TPM2TOOLS_TCTI": swtpm.tcti},
        capture_output=True,
        text=True,
        timeout=TPM2_TOOL_TIMEOUT_SECONDS,
    )
    if check:
        assert result.returncode == 0, f"{' '.join(argv)} failed ({result.returncode}): {result.stderr}"
    return result


def loaded_handles(swtpm, kind: str) -> list[int]:
    """The TPM's handles of ``kind`` (tpm2_getcap: handles-transient, handles-loaded-session, handles-nv-index)."""
    listing = tpm2_tool(swtpm, "tpm2_getcap", f"handles-{kind}").stdout
    return [int(handle, 16) for handle in re.findall(r"0x[0-9a-fA-F]+", listing)]


def test_swtpm_answers_and_a_stopped_swtpm_leaves_nothing_behind(swtpm):
    port, group = swtpm.port, swtpm.process.pgid
    assert swtpm.tcti == f"swtpm:host=127.0.0.1,port={port}"
    assert swtpm.ctrl_port == port + 1  # where the swtpm TCTI looks for it
    assert tpm_answers("127.0.0.1", port)

    swtpm.stop()

    assert processes_in_group(group) == []
    assert swtpm.process.returncode == 0
    assert port_is_free(port) and port_is_free(port + 1)
    with pytest.raises(LabError, match="not running"):
        _ = swtpm.tcti
    swtpm.stop()  # again: quiet


def test_one_tpm_state_serves_one_swtpm_at_a_time(swtpm, tmp_path):
    with pytest.raises(LabError, match="(?s)exited with code .*lock"):
        Swtpm(swtpm.state_dir, log_path=tmp_path / "second.log").start()
    assert tpm_answers("127.0.0.1", swtpm.port)


def test_a_share_comes_back_for_its_auth_and_the_handle_names_the_tpm(swtpm, tmp_path):
    tpm = TpmShare(swtpm.tcti)
    auth = new_auth()

    share, handle = tpm.create(auth)

    assert isinstance(share, bytes) and len(share) == 32
    assert tpm.read(handle, auth) == share
    assert tpm.read(handle, auth) == share  # reading does not consume it
    assert set(handle) == {"nv_index", "tpm"}
    assert NV_INDEX_FIRST <= handle["nv_index"] <= NV_INDEX_LAST
    # The TPM's public identifier is the name of the owner's standard ECC P-256 primary key.
    context = tmp_path / "primary.ctx"
    tpm2_tool(swtpm, "tpm2_createprimary", "-C", "o", "-G", "ecc256:aes128cfb", "-c", str(context))
    name = NAME_LINE.search(tpm2_tool(swtpm, "tpm2_readpublic", "-c", str(context)).stdout).group(1)
    tpm2_tool(swtpm, "tpm2_flushcontext", "-t")
    assert handle["tpm"] == name


def test_the_share_is_an_ordinary_da_protected_index_readable_by_its_auth_only(swtpm):
    tpm = TpmShare(swtpm.tcti)
    _share, handle = tpm.create(new_auth())

    public = tpm2_tool(swtpm, "tpm2_nvreadpublic", hex(handle["nv_index"])).stdout

    assert re.search(r"friendly: authwrite\|authread\|written$", public, re.MULTILINE), public
    assert "size: 32" in public


def test_shares_are_random(swtpm):
    tpm = TpmShare(swtpm.tcti)
    first, first_handle = tpm.create(new_auth())
    second, second_handle = tpm.create(new_auth())
    assert first != second
    assert first_handle["tpm"] == second_handle["tpm"]


def test_a_wrong_auth_is_a_permission_error_and_counts_toward_the_lockout(swtpm):
    tpm = TpmShare(swtpm.tcti)
    auth = new_auth()
    share, handle = tpm.create(auth)

    with pytest.raises(PermissionError) as refused:
        tpm.read(handle, new_auth())

    assert type(refused.value) is PermissionError  # the vault counts exactly this
    assert tpm.dictionary_attack_state().failed_tries == 1
    assert tpm.read(handle, auth) == share


def test_an_auth_ending_in_zero_bytes_still_opens_its_share(swtpm):
    # A TPM drops an auth value's trailing zero bytes; the client side must agree with it.
    tpm = TpmShare(swtpm.tcti)
    auth = secrets.token_bytes(30) + b"\0\0"
    share, handle = tpm.create(auth)
    assert tpm.read(handle, auth) == share


def test_another_tpm_is_recognised_before_any_auth_is_sent(swtpm_factory):
    phone = swtpm_factory()
    other = swtpm_factory()
    auth = new_auth()
    _share, handle = TpmShare(phone.tcti).create(auth)
    other_tpm = TpmShare(other.tcti)
    _other_share, other_handle = other_tpm.create(new_auth())  # a share at the very same index
    assert other_handle["nv_index"] == handle["nv_index"]

    with pytest.raises(HardwareShareError, match="this TPM does not hold this phone's key") as refused:
        other_tpm.read(handle, auth)

    assert not isinstance(refused.value, HardwareLocked)
    assert other_tpm.dictionary_attack_state().failed_tries == 0
    other_tpm.destroy(handle)  # must not destroy the other TPM's own share at that index
    assert loaded_handles(other, "nv-index") == [handle["nv_index"]]


def test_the_same_tpm_after_a_restart_still_holds_the_share(swtpm_factory):
    phone = swtpm_factory()
    auth = new_auth()
    share, handle = TpmShare(phone.tcti).create(auth)
    phone.stop()

    again = swtpm_factory(phone.state_dir)

    assert TpmShare(again.tcti).read(handle, auth) == share


def test_an_orderly_stop_keeps_the_da_counter_and_a_power_loss_adds_one(swtpm_factory):
    # libtpms counts one failure at a non-orderly start after a DA-protected authorisation
    # (TPM 2.0 Part 1, DA protection): Swtpm.stop() must send TPM2_Shutdown like a clean shutdown.
    phone = swtpm_factory()
    auth = new_auth()
    _share, handle = TpmShare(phone.tcti).create(auth)
    TpmShare(phone.tcti).read(handle, auth)

    phone.stop()
    phone.start()
    assert TpmShare(phone.tcti).dictionary_attack_state().failed_tries == 0

    TpmShare(phone.tcti).read(handle, auth)
    phone.stop(orderly=False)
    phone.start()
    assert TpmShare(phone.tcti).dictionary_attack_state().failed_tries == 1


def test_a_destroyed_share_is_gone_and_destroying_again_is_quiet(swtpm):
    tpm = TpmShare(swtpm.tcti)
    auth = new_auth()
    _share, handle = tpm.create(auth)

    tpm.destroy(handle)

    assert loaded_handles(swtpm, "nv-index") == []
    with pytest.raises(HardwareShareError, match=re.escape(NOT_THIS_TPM)):
        tpm.read(handle, auth)
    tpm.destroy(handle)


def test_a_pin_change_holds_two_shares_at_once(swtpm):
    tpm = TpmShare(swtpm.tcti)
    old_auth, new_auth_value = new_auth(), new_auth()
    old_share, old_handle = tpm.create(old_auth)

    new_share, new_handle = tpm.create(new_auth_value)

    assert old_handle["nv_index"] != new_handle["nv_index"]
    assert {old_handle["nv_index"], new_handle["nv_index"]} <= set(range(NV_INDEX_FIRST, NV_INDEX_LAST + 1))
    assert tpm.read(old_handle, old_auth) == old_share
    assert tpm.read(new_handle, new_auth_value) == new_share
    with pytest.raises(PermissionError):
        tpm.read(new_handle, old_auth)
    tpm.destroy(old_handle)
    assert tpm.read(new_handle, new_auth_value) == new_share
    _third_share, third_handle = tpm.create(new_auth())  # the freed index is used again
    assert third_handle["nv_index"] == old_handle["nv_index"]


def test_a_full_range_is_a_clear_error(swtpm):
    tpm = TpmShare(swtpm.tcti)
    for _ in range(NV_INDEX_COUNT):
        tpm.create(new_auth())
    with pytest.raises(HardwareShareError, match="NV indices .* are in use"):
        tpm.create(new_auth())
    assert len(loaded_handles(swtpm, "nv-index")) == NV_INDEX_COUNT


def test_swtpm_comes_with_libtpms_dictionary_attack_defaults(swtpm):
    state = TpmShare(swtpm.tcti).dictionary_attack_state()
    assert (state.max_tries, state.recovery_time_s, state.lockout_recovery_s) == (
        SWTPM_DEFAULT_MAX_TRIES, SWTPM_DEFAULT_RECOVERY_TIME_S, SWTPM_DEFAULT_LOCKOUT_RECOVERY_S,
    )
    assert not state.lockout_auth_set and not state.in_lockout and state.failed_tries == 0


def test_after_provisioning_wrong_auths_lock_the_tpm_and_nobody_can_unlock_it(swtpm):
    tpm = TpmShare(swtpm.tcti)
    auth = new_auth()
    _share, handle = tpm.create(auth)

    assert tpm.provision(max_tries=MAX_TRIES, recovery_time_s=RECOVERY_TIME_S, lockout_recovery_s=LOCKOUT_RECOVERY_S)

    state = tpm.dictionary_attack_state()
    assert (state.max_tries, state.recovery_time_s, state.lockout_recovery_s) == (
        MAX_TRIES, RECOVERY_TIME_S, LOCKOUT_RECOVERY_S,
    )
    assert state.lockout_auth_set
    for _ in range(MAX_TRIES):
        with pytest.raises(PermissionError):
            tpm.read(handle, new_auth())
    with pytest.raises(HardwareLocked, match=r"locked .* try again in up to 10 min") as locked:
        tpm.read(handle, new_auth())
    assert locked.value.wait_s == RECOVERY_TIME_S
    with pytest.raises(HardwareLocked):
        tpm.read(handle, auth)  # the right auth too, during the lockout
    assert tpm.dictionary_attack_state().in_lockout
    # The lockout hierarchy's auth is no longer empty: nobody can reset the counter with it.
    reset = tpm2_tool(swtpm, "tpm2_dictionarylockout", "--clear-lockout", check=False)
    assert reset.returncode != 0
    assert "0x98e" in reset.stderr.lower() or "authorization hmac check failed" in reset.stderr.lower(), reset.stderr
    with pytest.raises(HardwareLocked):
        tpm.read(handle, auth)
    tpm.destroy(handle)  # a wipe still works during the lockout (the owner hierarchy is not DA-protected)
    assert loaded_handles(swtpm, "nv-index") == []


def test_provisioning_twice_keeps_the_first_parameters(swtpm):
    tpm = TpmShare(swtpm.tcti)
    assert tpm.provision(max_tries=MAX_TRIES, recovery_time_s=RECOVERY_TIME_S, lockout_recovery_s=LOCKOUT_RECOVERY_S)

    assert not tpm.provision(max_tries=50, recovery_time_s=1, lockout_recovery_s=1)

    state = tpm.dictionary_attack_state()
    assert (state.max_tries, state.recovery_time_s) == (MAX_TRIES, RECOVERY_TIME_S)


@pytest.mark.parametrize(
    "arguments",
    [
        {"max_tries": 0, "recovery_time_s": 60, "lockout_recovery_s": 60},
        {"max_tries": 3, "recovery_time_s": 0, "lockout_recovery_s": 60},  # 0 would turn DA off
        {"max_tries": 3, "recovery_time_s": 60, "lockout_recovery_s": -1},
        {"max_tries": 3, "recovery_time_s": 2**32, "lockout_recovery_s": 60},
    ],
)
def test_provisioning_refuses_parameters_that_weaken_or_break_it(swtpm, arguments):
    tpm = TpmShare(swtpm.tcti)
    with pytest.raises(ValueError):
        tpm.provision(**arguments)
    assert not tpm.dictionary_attack_state().lockout_auth_set


def test_open_tpm_settings(swtpm, monkeypatch, tmp_path):
    assert open_tpm("none") is None
    assert open_tpm(" None ") is None
    monkeypatch.setattr(tpm_module, "AUTO_DEVICE", tmp_path / "no-tpmrm0")
    assert open_tpm("auto") is None
    opened = open_tpm(swtpm.tcti)
    assert isinstance(opened, TpmShare) and opened.kind == "TPM 2.0"
    assert opened.describe().startswith("TPM 2.0 by IBM")
    assert swtpm.tcti in opened.describe()


@pytest.mark.parametrize("setting", ["swtpm:host=127.0.0.1,port={port}", "no-such-tcti:whatever", ""])
def test_open_tpm_names_a_tpm_it_cannot_reach(setting):
    tcti = setting.format(port=free_tcp_port())
    with pytest.raises(HardwareShareError) as failed:
        open_tpm(tcti)
    assert (tcti or "empty") in str(failed.value)


def test_a_tpm_that_goes_away_is_a_hardware_share_error(swtpm):
    tpm = TpmShare(swtpm.tcti)
    auth = new_auth()
    _share, handle = tpm.create(auth)
    swtpm.stop()
    with pytest.raises(HardwareShareError, match="cannot reach the TPM"):
        tpm.read(handle, auth)


@pytest.mark.parametrize(
    "handle",
    [None, {}, {"nv_index": 0x01000000, "tpm": "000b00"}, {"nv_index": NV_INDEX_FIRST}, {"nv_index": "1", "tpm": "x"}],
)
def test_a_damaged_handle_is_a_hardware_share_error(swtpm, handle):
    with pytest.raises(HardwareShareError, match="handle is damaged"):
        TpmShare(swtpm.tcti).read(handle, new_auth())


@pytest.mark.parametrize("auth", [b"", b"short", bytes(33), "a string of 32 characters, text!"])
def test_an_auth_of_the_wrong_shape_is_refused_before_the_tpm_is_asked(swtpm, auth):
    with pytest.raises((ValueError, TypeError), match="auth value must be"):
        TpmShare(swtpm.tcti).create(auth)
    assert loaded_handles(swtpm, "nv-index") == []


def test_neither_auth_nor_share_crosses_the_bus_in_clear(swtpm, tmp_path, monkeypatch):
    capture = tmp_path / "tpm-traffic.pcap"
    monkeypatch.setenv("TCTI_PCAP_FILE", str(capture))  # tpm2-tss's pcap TCTI records every command and response
    tpm = TpmShare("pcap:" + swtpm.tcti)
    auth = new_auth()
    share, handle = tpm.create(auth)
    assert tpm.read(handle, auth) == share
    traffic = capture.read_bytes()
    assert handle["nv_index"].to_bytes(4, "big") in traffic  # the capture did see the commands
    assert auth not in traffic
    assert share not in traffic

    # Control: the same capture shows both when create() sends them without parameter encryption.
    monkeypatch.setattr(tpm_module, "_encrypt", lambda *args, **kwargs: None)
    clear_auth = new_auth()
    clear_share, _clear_handle = tpm.create(clear_auth)
    traffic = capture.read_bytes()
    assert clear_auth in traffic and clear_share in traffic


def test_no_connection_object_or_session_is_left_behind(swtpm):
    tpm = TpmShare(swtpm.tcti)
    open_sockets_before = _open_sockets()
    auth = new_auth()
    _share, handle = tpm.create(auth)
    tpm.read(handle, auth)
    with pytest.raises(PermissionError):
        tpm.read(handle, new_auth())
    with pytest.raises(HardwareShareError):
        tpm.read({**handle, "tpm": "000b" + "00" * 32}, auth)
    tpm.destroy(handle)
    tpm.destroy(handle)
    tpm.provision(max_tries=MAX_TRIES, recovery_time_s=RECOVERY_TIME_S, lockout_recovery_s=LOCKOUT_RECOVERY_S)

    assert _open_sockets() == open_sockets_before
    assert loaded_handles(swtpm, "transient") == []
    assert loaded_handles(swtpm, "loaded-session") == []


def test_objects_left_by_a_crashed_client_are_flushed_to_make_room(swtpm, tmp_path):
    for number in range(3):  # tpm2-tools without a resource manager leaves each primary loaded
        tpm2_tool(swtpm, "tpm2_createprimary", "-C", "o", "-G", "ecc", "-c", str(tmp_path / f"left{number}.ctx"))
    assert len(loaded_handles(swtpm, "transient")) == 3  # all of swtpm's object slots
    tpm = TpmShare(swtpm.tcti)
    auth = new_auth()

    share, handle = tpm.create(auth)

    assert tpm.read(handle, auth) == share
    assert loaded_handles(swtpm, "transient") == []


def test_no_secret_in_any_error_log_line_or_repr(swtpm_factory, caplog):
    caplog.set_level("DEBUG")
    phone = swtpm_factory()
    other = swtpm_factory()
    tpm = TpmShare(phone.tcti)
    auth = new_auth()
    share, handle = tpm.create(auth)
    errors = []

    def collect(action):
        with pytest.raises(Exception) as raised:
            action()
        errors.append(raised.value)

    collect(lambda: tpm.read(handle, auth[::-1]))
    collect(lambda: TpmShare(other.tcti).read(handle, auth))
    tpm.provision(max_tries=MAX_TRIES, recovery_time_s=RECOVERY_TIME_S, lockout_recovery_s=LOCKOUT_RECOVERY_S)
    for _ in range(MAX_TRIES):
        collect(lambda: tpm.read(handle, auth[::-1]))
    collect(lambda: tpm.read(handle, auth))  # locked out
    collect(lambda: tpm.read({**handle, "nv_index": handle["nv_index"] + 1}, auth))
    collect(lambda: tpm.create(auth[:-1]))
    other.stop()
    collect(lambda: TpmShare(other.tcti).read(handle, auth))

    texts = [text for error in errors for text in _error_texts(error)]
    texts += [record.getMessage() for record in caplog.records]
    texts += [repr(tpm), tpm.describe()]
    assert {type(error).__name__ for error in errors} >= {
        "PermissionError", "HardwareShareError", "TpmLockedOut", "ValueError",
    }
    for secret in (auth, auth[::-1], share):
        for form in _spellings(secret):
            assert not any(form in text for text in texts), f"a secret appears in {texts}"


def _error_texts(error: BaseException) -> list[str]:
    """str and repr of ``error`` and of every exception it chains to."""
    texts = []
    while error is not None:
        texts += [str(error), repr(error)]
        error = error.__cause__ or error.__context__
    return texts


def _spellings(secret: bytes) -> list[str]:
    """The ways a secret could be written into text: hex (either case), base64, raw, bytes repr, a long enough piece."""
    return [
        secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode(),
        secret.decode("latin-1"), repr(secret)[2:-1], secret.hex()[:16],
    ]


def _open_sockets() -> int:
    fd_directory = Path("/proc/self/fd")
    count = 0
    for fd in fd_directory.iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:  # closed while we looked (the listing's own descriptor)
            continue
    return count
