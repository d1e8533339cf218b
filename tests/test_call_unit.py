"""The calls unit's own decisions, with the SIP agent replaced by a recorder (the agent itself is
tested against Kamailio in test_sip.py and whole calls in test_calls.py): which accounts it
registers, and registering again when the network changes (which cannot be made to happen here)."""

from firmware import effects as fx
from firmware.call_unit import CallsUnit, zid_cache_uri
from firmware.profile import Account, Profile
from firmware.scenario import headless_config
from firmware.state import PhoneState
from firmware.store_unit import StoreAccess
from firmware.units import AudioRoute


class RecordingAgent:
    def __init__(self):
        self.log = []

    def add_account(self, config):
        self.log.append(("add", config.account_id, config.transport))

    def remove_account(self, account_id):
        self.log.append(("remove", account_id))


def unit_with(*accounts: Account):
    unit = CallsUnit(headless_config(), StoreAccess(), AudioRoute())
    unit._agent, events = RecordingAgent(), []
    unit._post = events.append
    unit.show(PhoneState(profile=Profile(accounts=accounts)))
    return unit, events


SIP = Account("sip", "ann@10.0.0.1:5060", "pw")


def test_sip_accounts_with_a_password_are_registered_and_follow_the_profile():
    unit, events = unit_with(SIP, Account("xmpp", "ann@example.org", "pw"), Account("sip", "bob@10.0.0.1", ""))
    assert unit._agent.log == [("add", SIP.address, "udp")]
    assert events == [fx.AccountStatus(SIP.address, "registering")]
    unit.show(PhoneState(profile=Profile()))
    assert unit._agent.log[-1] == ("remove", SIP.address)
    unit.show(PhoneState())  # wiped or not unlocked: no account at all
    assert unit._accounts == {}


def test_a_new_local_address_registers_the_account_again():
    unit, _ = unit_with(SIP)
    routes = iter(["10.0.0.2", "10.0.0.2", "192.168.1.7"])
    unit.route = lambda host: next(routes)
    unit.check_network()
    unit.check_network()
    assert unit._agent.log == [("add", SIP.address, "udp")], "the same address changes nothing"
    unit.check_network()
    assert unit._agent.log[1:] == [("remove", SIP.address), ("add", SIP.address, "udp")]


def test_the_zid_cache_knows_a_party_by_user_and_host_whichever_way_the_call_went():
    assert zid_cache_uri("sip:bob@127.0.0.1:5060") == zid_cache_uri('"Bob" <sip:bob@127.0.0.1>;tag=x') \
        == "sip:bob@127.0.0.1"
    assert zid_cache_uri("sip:Bob@Example.ORG") == "sip:Bob@example.org", "the user part keeps its case"
