"""The stored form of the profile: round trips, passwords only where remembered, hostile records refused."""

import json

import pytest

from firmware.profile import (ACCOUNTS_RECORD, CONTACTS_RECORD, NETWORKS_RECORD, SETTINGS_RECORD, Account, Contact,
                              ProfileError, Settings, WifiNetwork, from_record, make_account, to_record)

DEFAULTS = Settings()


def test_every_part_round_trips():
    accounts = (make_account("sip", "ann@sip.example.org", "pw", transport="tls", tls_pin="AB:" * 31 + "AB"),
                make_account("xmpp", "ann@example.org", "pw2", remember_password=False))
    contacts = (Contact("Bob", "bob@example.org"),)
    settings = Settings(display_name="desk", lock_after_s=30, call_history=True)
    assert from_record(ACCOUNTS_RECORD, to_record(ACCOUNTS_RECORD, accounts), DEFAULTS) == (
        accounts[0], Account("xmpp", "ann@example.org", "", remember_password=False))
    assert accounts[0].tls_pin == "ab" * 32
    assert from_record(CONTACTS_RECORD, to_record(CONTACTS_RECORD, contacts), DEFAULTS) == contacts
    assert from_record(SETTINGS_RECORD, to_record(SETTINGS_RECORD, settings), DEFAULTS) == settings


def test_a_password_not_remembered_is_not_stored():
    record = to_record(ACCOUNTS_RECORD, (make_account("sip", "a@b", "s3cret", remember_password=False),))
    assert b"s3cret" not in record


@pytest.mark.parametrize("raw", [
    b"not json", b"{}", b'[{"kind": "sip"}]', b'[{"kind": "irc", "address": "a@b", "remember_password": true}]',
    b'[{"kind": "sip", "address": "nohost", "remember_password": true}]',
    b'[{"kind": "sip", "address": "a@b", "remember_password": true, "transport": "carrier-pigeon"}]',
    b'[{"kind": "sip", "address": "a@b", "remember_password": true, "tls_pin": "zz"}]',
    json.dumps([{"kind": "sip", "address": "a@" + "b" * 300, "remember_password": True}]).encode(),
    b'[{"kind": "sip", "address": "a@b\\u0000c", "remember_password": true}]',
])
def test_a_hostile_accounts_record_is_refused_by_name_without_its_values(raw):
    with pytest.raises(ProfileError, match="record 'accounts'") as caught:
        from_record(ACCOUNTS_RECORD, raw, DEFAULTS)
    assert "b" * 50 not in str(caught.value)


def test_settings_of_the_wrong_type_are_refused_and_unknown_ones_ignored():
    with pytest.raises(ProfileError, match="lock_after_s"):
        from_record(SETTINGS_RECORD, b'{"lock_after_s": "soon"}', DEFAULTS)
    assert from_record(SETTINGS_RECORD, b'{"from_the_future": 1}', DEFAULTS) == DEFAULTS


def test_wifi_networks_round_trip_with_any_ssid_bytes_and_keep_only_the_derived_key():
    networks = (WifiNetwork(b'Caf\xc3\xa9 "\\\n\xff', bytes(range(32))), WifiNetwork(b"Open", None))
    record = to_record(NETWORKS_RECORD, networks)
    assert from_record(NETWORKS_RECORD, record, DEFAULTS) == networks
    assert networks[0].name == 'Café "\\??' and "psk" not in repr(networks[0])


@pytest.mark.parametrize("raw", [
    b'[{"ssid": "zz", "psk": null}]', b'[{"ssid": "", "psk": null}]', b'[{"ssid": "' + b"61" * 33 + b'", "psk": null}]',
    b'[{"ssid": "61", "psk": "abcd"}]', b'[{"ssid": "61"}]', b'[{"ssid": 7, "psk": null}]', b'{"ssid": "61"}',
])
def test_a_hostile_networks_record_is_refused_by_name(raw):
    with pytest.raises(ProfileError, match="record 'networks'"):
        from_record(NETWORKS_RECORD, raw, DEFAULTS)
