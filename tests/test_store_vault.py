"""The vault: creating, unlocking, counting and throttling wrong secrets, duress, changing the
secret, wiping, and working with a hardware share (an in-memory fake; the TPM has its own tests)."""

import json
from pathlib import Path

import pytest

from firmware.store import (HardwareLocked, HardwareShareError, HeaderDamaged, NoStore, StoreError, Throttled,
                            WipedAfterFailures, WrongSecret)
from firmware.store import vault as vault_module
from firmware.store.kdf import MIN_MEMORY_KIB, KdfParams, calibrate, derive
from helpers.store_support import (DURESS_PASSPHRASE, NEW_PIN, OTHER_PASSPHRASE, PASSPHRASE, PIN, WRONG_PASSPHRASE,
                                   WRONG_PIN, FakeClock, FakeShare, files_under, small_kdf)
from firmware.store.vault import (DELAY_STEPS_S, FREE_FAILURES, MAX_DELAY_S, MIN_PASSPHRASE_CHARS, MIN_PIN_DIGITS,
                                  PROTECTION_PASSPHRASE, Vault, WeakSecret, delay_after)

def fail(vault: Vault, secret: str):
    with pytest.raises(WrongSecret) as caught:
        vault.unlock(secret)
    return caught.value


@pytest.fixture
def directory(tmp_path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def made(directory, clock) -> Vault:
    """A passphrase-mode store holding one record, and its vault."""
    vault = Vault(directory, None, clock=clock)
    vault.create(PASSPHRASE, small_kdf()).put("note", b"kept")
    return vault


# KDF parameters.

def test_kdf_params_round_trip_through_the_header_form():
    params = small_kdf()
    assert KdfParams.from_dict(json.loads(json.dumps(params.to_dict()))) == params


@pytest.mark.parametrize("change", [
    {"memory_kib": 4 * 1024}, {"memory_kib": 10**9}, {"iterations": 0}, {"iterations": True},
    {"lanes": 0}, {"algorithm": "argon2i"}, {"salt": "00"}, {"extra": 1},
])
def test_kdf_params_out_of_bounds_are_refused(change):
    with pytest.raises(ValueError):
        KdfParams.from_dict(small_kdf().to_dict() | change)


def test_derive_is_deterministic_and_normalises_the_secret():
    params = small_kdf()
    composed, decomposed = "caf\u00e9 au lait, s'il vous pla\u00eet", "cafe\u0301 au lait, s'il vous pla\u00eet"
    assert derive(composed, params, 64) == derive(decomposed, params, 64)
    assert derive(composed, params, 64) != derive(composed, params.with_new_salt(), 64)
    assert len(derive(composed, params, 64)) == 64


def test_calibrate_scales_iterations_with_the_target_and_keeps_the_floors():
    tiny = calibrate(0.0001, memory_kib=1024, lanes=1)
    assert (tiny.memory_kib, tiny.iterations) == (MIN_MEMORY_KIB, 1)
    short, long = calibrate(0.03, MIN_MEMORY_KIB, lanes=1), calibrate(0.3, MIN_MEMORY_KIB, lanes=1)
    assert long.iterations > 2 * short.iterations
    assert long.salt != short.salt


# Creating and opening.

def test_a_created_store_unlocks_with_its_secret_from_a_new_vault(made, directory):
    store = Vault(directory, None).unlock(PASSPHRASE)
    assert store.get("note") == b"kept"
    assert made.exists()


def test_an_empty_directory_has_no_store(directory):
    vault = Vault(directory, None)
    assert not vault.exists()
    with pytest.raises(NoStore):
        vault.unlock(PASSPHRASE)
    with pytest.raises(NoStore):
        vault.describe()


@pytest.mark.parametrize("share, short, long_enough", [
    (None, "x" * (MIN_PASSPHRASE_CHARS - 1), "x" * MIN_PASSPHRASE_CHARS),
    (FakeShare(), "1" * (MIN_PIN_DIGITS - 1), "1" * MIN_PIN_DIGITS),
])
def test_create_refuses_a_short_secret_and_writes_nothing(directory, share, short, long_enough):
    vault = Vault(directory, share)
    with pytest.raises(WeakSecret) as caught:
        vault.create(short, small_kdf())
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, StoreError)
    assert str(vault.min_secret_length) in str(caught.value) and short not in str(caught.value)
    assert not vault.exists() and files_under(directory) == []
    vault.create(long_enough, small_kdf())
    assert vault.exists()


def test_create_refuses_to_overwrite_an_existing_store(made):
    with pytest.raises(StoreError, match="already exists"):
        made.create(OTHER_PASSPHRASE, small_kdf())
    assert made.unlock(PASSPHRASE).get("note") == b"kept"


def test_protection_and_minimum_length_follow_the_share(directory):
    assert Vault(directory, None).protection == PROTECTION_PASSPHRASE == "passphrase (no TPM)"
    assert Vault(directory, None).min_secret_length == 16
    assert Vault(directory, FakeShare()).protection == "PIN + TPM 2.0"
    assert Vault(directory, FakeShare()).min_secret_length == 6


def test_describe_reads_the_header_without_a_secret_or_the_share(directory):
    kdf = small_kdf()
    Vault(directory, FakeShare()).create(PIN, kdf)
    info = Vault(directory, None).describe()
    assert info.protection == "PIN + TPM 2.0" and info.version == 1 and info.kdf == kdf


def test_the_header_has_the_documented_layout(made, directory):
    raw = (directory / "header").read_bytes()
    assert raw.startswith(b"BYLINE-VAULT\x00\x01")
    meta_length = int.from_bytes(raw[14:18], "big")
    metadata = json.loads(raw[18:18 + meta_length])
    assert set(metadata) == {"duress", "kdf", "protection", "share"} and metadata["share"] is None
    assert len(raw) == 18 + meta_length + 61 + 32


def test_the_attempts_file_holds_only_the_count(made, directory):
    fail(made, WRONG_PASSPHRASE)
    assert json.loads((directory / "attempts").read_text()) == {"failures": 1}


# Counting and throttling.

def test_the_delay_table():
    assert [delay_after(n) for n in range(14)] == [0, 0, 0, 0, 0, 30, 60, 120, 300, 600, 1200, 2400, 3600, 3600]
    assert FREE_FAILURES == 4 and DELAY_STEPS_S[:5] == (30, 60, 120, 300, 600) and MAX_DELAY_S == 3600
    assert delay_after(1000) == MAX_DELAY_S


def test_wrong_secrets_are_counted_and_throttled_by_the_table(directory, clock):
    vault = Vault(directory, None, max_failures=20, clock=clock)
    vault.create(PASSPHRASE, small_kdf())
    for failures in range(1, 13):
        error = fail(vault, WRONG_PASSPHRASE)
        delay = delay_after(failures)
        assert (error.failures, error.wait_s, error.remaining) == (failures, delay, 20 - failures)
        assert vault.wait_remaining() == delay
        if delay:
            clock.now += delay - 1
            with pytest.raises(Throttled) as throttled:
                vault.unlock(PASSPHRASE)  # even the right secret is not tried
            assert throttled.value.wait_s == pytest.approx(1)
            assert vault.failures == failures
            clock.now += 1
        assert vault.wait_remaining() == 0


def test_the_counter_is_written_before_the_secret_is_checked(made, monkeypatch):
    seen = []
    real = vault_module._secret_keys

    def spying(secret, kdf):
        seen.append(made.failures)
        return real(secret, kdf)

    monkeypatch.setattr(vault_module, "_secret_keys", spying)
    fail(made, WRONG_PASSPHRASE)
    made.unlock(PASSPHRASE)
    assert seen == [1, 2]  # during the check a power cut would leave the attempt counted
    assert made.failures == 0


def test_the_delay_survives_a_restart_and_is_counted_from_boot(directory, clock):
    vault = Vault(directory, None, clock=clock)
    vault.create(PASSPHRASE, small_kdf()).put("note", b"kept")
    for _ in range(FREE_FAILURES + 1):
        fail(vault, WRONG_PASSPHRASE)
    clock.now += 25  # 5 s of the 30 s wait were left when the power was cut
    restarted = Vault(directory, None, clock=FakeClock(50.0))  # a new boot: the monotonic clock restarts
    assert restarted.wait_remaining() == 30
    restarted._clock.now += 29
    with pytest.raises(Throttled):
        restarted.unlock(PASSPHRASE)
    restarted._clock.now += 1
    assert restarted.unlock(PASSPHRASE).get("note") == b"kept"


def test_the_right_secret_resets_the_counter(made, clock):
    for _ in range(FREE_FAILURES):
        fail(made, WRONG_PASSPHRASE)
    made.unlock(PASSPHRASE)
    assert made.failures == 0 and made.wait_remaining() == 0
    for failures in range(1, FREE_FAILURES + 1):
        assert fail(made, WRONG_PASSPHRASE).wait_s == 0  # free again: the count restarted
    assert made.failures == FREE_FAILURES


def test_max_failures_wrong_secrets_wipe_the_store(directory, clock):
    vault = Vault(directory, None, max_failures=3, clock=clock)
    vault.create(PASSPHRASE, small_kdf()).put("note", b"kept")
    assert fail(vault, WRONG_PASSPHRASE).remaining == 2
    assert fail(vault, WRONG_PASSPHRASE).remaining == 1
    with pytest.raises(WipedAfterFailures):
        vault.unlock(WRONG_PASSPHRASE)
    assert not vault.exists() and files_under(directory) == []
    with pytest.raises(NoStore):
        Vault(directory, None).unlock(PASSPHRASE)


def test_ten_wrong_secrets_wipe_by_default(made, clock, directory):
    for failures in range(1, 10):
        clock.now += made.wait_remaining()
        assert fail(made, WRONG_PASSPHRASE).remaining == 10 - failures
    clock.now += made.wait_remaining()
    with pytest.raises(WipedAfterFailures):
        made.unlock(WRONG_PASSPHRASE)
    assert files_under(directory) == []


def test_a_corrupt_counter_is_throttled_not_forgiven(made, directory):
    (directory / "attempts").write_bytes(b"\x00garbage")
    assert made.failures == FREE_FAILURES
    assert fail(made, WRONG_PASSPHRASE).wait_s == delay_after(FREE_FAILURES + 1)


def test_verify_checks_and_counts_like_unlock(made, clock):
    assert made.verify(PASSPHRASE) is None
    assert fail_verify(made).failures == 1
    made.verify(PASSPHRASE)
    assert made.failures == 0


def fail_verify(vault: Vault) -> WrongSecret:
    with pytest.raises(WrongSecret) as caught:
        vault.verify(WRONG_PASSPHRASE)
    return caught.value


def test_verify_wipes_after_max_failures(directory, clock):
    vault = Vault(directory, None, max_failures=2, clock=clock)
    vault.create(PASSPHRASE, small_kdf())
    fail_verify(vault)
    with pytest.raises(WipedAfterFailures):
        vault.verify(WRONG_PASSPHRASE)
    assert not vault.exists()


# Duress.

def test_the_duress_secret_wipes_silently_and_the_phone_looks_new(made, directory):
    made.set_duress(PASSPHRASE, DURESS_PASSPHRASE)
    assert made.unlock(PASSPHRASE).get("note") == b"kept"
    with pytest.raises(NoStore) as duress:
        Vault(directory, None).unlock(DURESS_PASSPHRASE)
    assert files_under(directory) == [] and not made.exists()
    with pytest.raises(NoStore) as fresh:
        Vault(directory, None).unlock(PASSPHRASE)
    assert str(duress.value) == str(fresh.value)


def test_the_duress_secret_wipes_from_the_lock_screen_too(made):
    made.set_duress(PASSPHRASE, DURESS_PASSPHRASE)
    with pytest.raises(NoStore):
        made.verify(DURESS_PASSPHRASE)
    assert not made.exists()


def test_cleared_duress_is_just_a_wrong_secret(made):
    made.set_duress(PASSPHRASE, DURESS_PASSPHRASE)
    made.set_duress(PASSPHRASE, None)
    fail(made, DURESS_PASSPHRASE)
    assert made.exists()


def test_duress_must_differ_from_the_real_secret_and_be_long_enough(made):
    with pytest.raises(WeakSecret, match="differ"):
        made.set_duress(PASSPHRASE, PASSPHRASE)
    with pytest.raises(WeakSecret, match="too short"):
        made.set_duress(PASSPHRASE, "short")
    assert made.failures == 0  # refused before anything was tried


def test_setting_duress_needs_the_real_secret(made):
    with pytest.raises(WrongSecret):
        made.set_duress(WRONG_PASSPHRASE, DURESS_PASSPHRASE)
    assert fail(made, DURESS_PASSPHRASE).failures == 2  # not set: just another wrong secret


def test_the_header_does_not_tell_whether_duress_is_set(made, directory):
    before = (directory / "header").read_bytes()
    made.set_duress(PASSPHRASE, DURESS_PASSPHRASE)
    after = (directory / "header").read_bytes()
    assert len(before) == len(after)
    assert made.duress_set is True
    fresh = Vault(directory, None)
    assert fresh.duress_set is None
    fresh.unlock(PASSPHRASE)
    assert fresh.duress_set is True
    made.set_duress(PASSPHRASE, None)
    assert made.duress_set is False and Vault(directory, None).describe().protection == PROTECTION_PASSPHRASE


# Changing the secret.

def test_change_secret_rewraps_without_touching_records(made, directory):
    records_before = {path.name: path.read_bytes() for path in files_under(directory / "records")}
    salt_before = made.describe().kdf.salt
    made.change_secret(PASSPHRASE, OTHER_PASSPHRASE)
    assert {path.name: path.read_bytes() for path in files_under(directory / "records")} == records_before
    assert made.describe().kdf.salt != salt_before
    fail(made, PASSPHRASE)
    assert Vault(directory, None).unlock(OTHER_PASSPHRASE).get("note") == b"kept"


def test_change_secret_takes_new_costs(made):
    made.change_secret(PASSPHRASE, OTHER_PASSPHRASE, KdfParams.fresh(memory_kib=16 * 1024, iterations=2, lanes=2))
    kdf = made.describe().kdf
    assert (kdf.memory_kib, kdf.iterations, kdf.lanes) == (16 * 1024, 2, 2)
    made.unlock(OTHER_PASSPHRASE)


def test_change_secret_checks_and_counts_the_old_secret(made):
    with pytest.raises(WrongSecret):
        made.change_secret(WRONG_PASSPHRASE, OTHER_PASSPHRASE)
    assert made.failures == 1
    made.unlock(PASSPHRASE)


def test_change_secret_refuses_a_weak_or_duress_new_secret(made):
    with pytest.raises(WeakSecret):
        made.change_secret(PASSPHRASE, "short")
    assert made.failures == 0
    made.set_duress(PASSPHRASE, DURESS_PASSPHRASE)
    with pytest.raises(WeakSecret, match="duress"):
        made.change_secret(PASSPHRASE, DURESS_PASSPHRASE)
    made.unlock(PASSPHRASE)


def test_duress_survives_a_change_of_secret(made, directory):
    made.set_duress(PASSPHRASE, DURESS_PASSPHRASE)
    made.change_secret(PASSPHRASE, OTHER_PASSPHRASE)
    fresh = Vault(directory, None)
    fresh.unlock(OTHER_PASSPHRASE)
    assert fresh.duress_set is True
    with pytest.raises(NoStore):
        fresh.unlock(DURESS_PASSPHRASE)


# Wiping.

def test_wipe_leaves_no_file_and_is_repeatable(made, directory):
    store = made.unlock(PASSPHRASE)
    store.put_history("call", b"x")
    (directory / ".tmp-leftover").write_bytes(b"ciphertext")
    made.wipe()
    assert not made.exists() and files_under(directory) == []
    made.wipe()
    with pytest.raises(NoStore):
        made.unlock(PASSPHRASE)


def test_wipe_overwrites_the_header_before_deleting_it(made, directory, monkeypatch):
    original = (directory / "header").read_bytes()
    seen = []
    real_unlink = Path.unlink

    def spying_unlink(path, *args, **kwargs):
        if path.name == "header":
            seen.append(path.read_bytes())
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", spying_unlink)
    made.wipe()
    assert len(seen) == 1 and len(seen[0]) == len(original) and seen[0] != original
    assert original[-93:-32] not in seen[0]  # the wrapped key is gone from the file before deletion


def test_a_new_store_can_be_made_after_a_wipe(made, directory):
    made.wipe()
    store = made.create(OTHER_PASSPHRASE, small_kdf())
    assert store.names() == []


def test_a_damaged_header_can_still_be_wiped(made, directory):
    (directory / "header").write_bytes(b"BYLINE-VAULT junk")
    with pytest.raises(HeaderDamaged):
        made.unlock(PASSPHRASE)
    made.wipe()
    assert files_under(directory) == []


# With a hardware share.

@pytest.fixture
def share() -> FakeShare:
    return FakeShare()


@pytest.fixture
def tpm_vault(directory, share, clock) -> Vault:
    vault = Vault(directory, share, clock=clock)
    vault.create(PIN, small_kdf()).put("note", b"kept")
    return vault


def test_the_share_gets_a_derived_auth_value_never_the_pin(tpm_vault, share):
    (auth,) = share.created_auths
    assert len(auth) == 32 and PIN.encode() not in auth and auth != PIN.encode().ljust(32, b"\0")


def test_a_tpm_store_needs_its_share(tpm_vault, directory, share):
    assert Vault(directory, share).unlock(PIN).get("note") == b"kept"
    with pytest.raises(HardwareShareError):
        Vault(directory, FakeShare()).unlock(PIN)  # another TPM
    with pytest.raises(HardwareShareError, match="TPM 2.0"):
        Vault(directory, None).unlock(PIN)  # no TPM
    assert tpm_vault.failures == 0  # neither was a counted attempt


def test_a_wrong_pin_refused_by_the_share_is_counted(tpm_vault, share):
    assert fail(tpm_vault, WRONG_PIN).failures == 1
    assert tpm_vault.unlock(PIN).get("note") == b"kept"


def test_a_share_in_lockout_is_reported_and_not_counted(tpm_vault, share):
    fail(tpm_vault, WRONG_PIN)
    share.locked = True
    with pytest.raises(HardwareLocked):
        tpm_vault.unlock(PIN)
    assert tpm_vault.failures == 1


def test_the_pin_alone_does_not_open_a_tpm_store(tpm_vault, directory, share):
    """Without the share, the PIN-derived key does not unwrap the master key."""
    header = vault_module._decode_header((directory / "header").read_bytes())
    pin_key, _ = vault_module._secret_keys(PIN, header.kdf)
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    with pytest.raises(InvalidTag):
        AESGCM(vault_module._kek(pin_key, None)).decrypt(header.wrapped_key[:12], header.wrapped_key[12:], header.aad)


def test_wipe_destroys_the_share(tpm_vault, share):
    (handle,) = [{"device": share.device, "id": share_id} for share_id in share.shares]
    tpm_vault.wipe()
    assert share.destroyed == [handle] and share.shares == {}


def test_wipe_after_failures_and_duress_destroy_the_share(directory, share, clock):
    vault = Vault(directory, share, max_failures=1, clock=clock)
    vault.create(PIN, small_kdf())
    with pytest.raises(WipedAfterFailures):
        vault.unlock(WRONG_PIN)
    assert share.shares == {} and len(share.destroyed) == 1
    vault.create(PIN, small_kdf())
    vault.set_duress(PIN, "999999")
    with pytest.raises(NoStore):
        vault.unlock("999999")
    assert share.shares == {} and len(share.destroyed) == 2


def test_change_secret_destroys_the_old_share_after_writing_the_new_header(tpm_vault, directory, share):
    (old_id,) = share.shares
    headers_at_destroy = []
    share.on_destroy = lambda handle: headers_at_destroy.append((directory / "header").read_bytes())
    tpm_vault.change_secret(PIN, NEW_PIN)
    (new_id,) = share.shares
    assert share.destroyed == [{"device": share.device, "id": old_id}]
    (header,) = headers_at_destroy
    assert new_id.encode() in header and old_id.encode() not in header
    fail(tpm_vault, PIN)
    assert Vault(directory, share).unlock(NEW_PIN).get("note") == b"kept"


# Nothing secret in messages or reprs.

def test_no_secret_in_errors_or_reprs(directory, clock):
    share = FakeShare()
    vault = Vault(directory, share, max_failures=FREE_FAILURES + 2, clock=clock)
    texts = [repr(vault)]
    store = vault.create(PIN, small_kdf())
    store.put("account:alice@example.com", b"hunter2-password")
    texts += [repr(store), repr(vault.describe())]
    attempts = [lambda: vault.create(PIN, small_kdf()), lambda: vault.set_duress(PIN, PIN),
                lambda: vault.change_secret(PIN, "12")] + [lambda: vault.unlock(WRONG_PIN)] * (FREE_FAILURES + 2)
    for attempt in attempts:
        with pytest.raises(StoreError) as caught:
            attempt()
        texts += [str(caught.value), repr(caught.value)]
    (directory / "header").write_bytes(b"x" * 200)
    with pytest.raises(HeaderDamaged) as damaged:
        vault.unlock(PIN)
    texts.append(str(damaged.value))
    secrets_ = [PIN, WRONG_PIN, "hunter2", *[auth.hex() for auth in share.created_auths]]
    assert len(texts) > 10
    for text in texts:
        for secret in secrets_:
            assert secret not in text, text
