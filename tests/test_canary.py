"""The at-rest promise, end to end: canaries typed on the keypad never reach a file in readable form.

A real phone process (``./byline scenario``, simulated drivers, a real swtpm) sets a PIN and
types accounts, contacts and settings whose values are random canaries; the process ends (the
phone is switched off). No canary may appear, plain, hex, base64 or UTF-16, in any file under
the state directory, the TPM's directory, the temporary directory the phone used, or its log.
A second process unlocks with the PIN and finds every value again.
"""

import os
import random
import string
import subprocess
import sys
from pathlib import Path

from helpers.canaries import canaries_found, canary, files_under

from firmware.profile import ACCOUNTS_RECORD, CONTACTS_RECORD, SETTINGS_RECORD
from firmware.scenario import STATE_DIRECTORY
from firmware.store.tpm import open_tpm
from firmware.store.vault import Vault
from lab.swtpm import Swtpm

ROOT = Path(__file__).resolve().parent.parent
PIN = "305117"


def run_scenario(script: str, tmp_path: Path, work: Path, log: Path, temp: Path) -> None:
    script_path = tmp_path / f"script{len(list(tmp_path.glob('script*')))}.txt"
    script_path.write_text(script)
    env = {"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TMPDIR": str(temp),
           "HOME": str(temp)}
    result = subprocess.run([sys.executable, "-m", "firmware.scenario", str(script_path), str(tmp_path / "out"),
                             "--work-dir", str(work), "--log", str(log)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{result.stderr}\nlog:\n{log.read_text() if log.exists() else ''}"


def test_no_canary_reaches_disk_and_all_come_back_after_a_restart(tmp_path):
    rng = random.Random()
    secrets = {
        "address": f"{canary(rng)}@{canary(rng, 8)}.org",
        "password": canary(rng, 16, string.ascii_letters + string.digits + "!#%+"),
        "contact_name": canary(rng),
        "contact_address": f"{canary(rng)}@byline.lab",
        "contact_chat": f"{canary(rng)}@{canary(rng, 8)}.net",
        "display_name": canary(rng),
    }
    work, temp, log = tmp_path / "work", tmp_path / "temp", tmp_path / "byline.log"
    temp.mkdir()
    set_up = f"""
wait pin
press {' '.join(PIN)} ok {' '.join(PIN)} ok
wait home
press ok 4
wait section
press ok
wait form
press down ok
type "{secrets['address']}"
press ok down ok
type "{secrets['password']}"
press ok down down down down down ok
expect Saved
press back 1
wait section
press ok
wait form
press ok
type "{secrets['contact_name']}"
press ok down ok
type "{secrets['contact_address']}"
press ok down ok
type "{secrets['contact_chat']}"
press ok down down ok
expect Saved
press back 5
wait section
press ok
wait edit
type "{secrets['display_name']}"
press ok
expect Saved
"""
    run_scenario(set_up, tmp_path, work, log, temp)

    assert any(p.parent.name == "records" for p in work.rglob("*")), "the store wrote no records"
    assert not canaries_found(secrets, files_under(work, temp, log))

    check = f"""
wait pin
press {' '.join(PIN)} ok
wait home
press ok 4
wait section
expect "{secrets['address']}"
press back 1
wait section
expect "{secrets['contact_name']}"
press ok
wait form
expect "Address: {secrets['contact_address']}"
expect "Chat: {secrets['contact_chat']}"
press back back 5
wait section
expect "Name: {secrets['display_name']}"
"""
    run_scenario(check, tmp_path, work, log, temp)

    with Swtpm(work / "tpm") as tpm:
        share = open_tpm(tpm.tcti)
        try:
            store = Vault(work / STATE_DIRECTORY, share).unlock(PIN)
            accounts = store.get(ACCOUNTS_RECORD).decode()
            assert secrets["password"] in accounts and secrets["address"] in accounts
            assert secrets["contact_address"] in store.get(CONTACTS_RECORD).decode()
            assert secrets["contact_chat"] in store.get(CONTACTS_RECORD).decode()
            assert secrets["display_name"] in store.get(SETTINGS_RECORD).decode()
        finally:
            share.close()
