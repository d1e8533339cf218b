"""Prosody stopped and started again (Lab.stop_xmpp / Lab.start_xmpp): same port, same accounts and
rosters, and clients that reconnect by themselves and deliver what was queued meanwhile, once."""

import asyncio
import time

from firmware.chat.xmpp import (
    Connected,
    Delivered,
    Disconnected,
    MessageReceived,
    XmppAccountConfig,
    XmppClient,
    register_account,
)
from lab.prosody import xmpp_stream_opens

WAIT_S = 10.0
POLL_S = 0.02
QUIET_S = 1.0  # how long a second copy of the message is watched for


class Client:
    """An XmppClient for a lab user, recording its events."""

    def __init__(self, lab, user, password=None):
        service = lab.xmpp
        self.jid = service.jid(user)
        self.events = []
        self.client = XmppClient(XmppAccountConfig(self.jid, password or lab.users[user], host=service.host,
                                                   port=service.port, ca_path=service.ca_path), self.events.append)

    def count(self, kind):
        return sum(isinstance(event, kind) for event in self.events)

    async def until(self, predicate, what, timeout=WAIT_S):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            await asyncio.sleep(POLL_S)
        raise AssertionError(f"no {what} within {timeout} s; events {self.events[-10:]}")


def test_restarted_prosody_keeps_port_and_data_and_a_message_queued_meanwhile_arrives_once(lab_factory):
    lab = lab_factory(sip=False, users=["alice", "bob"])
    service = lab.xmpp
    first_process = lab.processes[0]

    async def scenario(alice, bob):
        for client in (alice, bob):
            client.client.start()
            await client.until(lambda c=client: c.count(Connected) == 1, f"{client.jid} connected")
        await alice.client.add_contact(bob.jid, "Bob")
        frank = XmppAccountConfig(service.jid("frank"), "frank-secret", host=service.host, port=service.port,
                                  ca_path=service.ca_path)
        await register_account(frank)  # in-band, while it runs: kept in prosody-data

        await asyncio.to_thread(lab.stop_xmpp)
        for client in (alice, bob):
            await client.until(lambda c=client: c.count(Disconnected) == 1, f"{client.jid} disconnected")
        assert not xmpp_stream_opens(service.host, service.port, service.domain)
        message_id = alice.client.send(bob.jid, "sent while the server was down")
        assert alice.client.outbox == (message_id,)
        lab.stop_xmpp()  # again: nothing happens

        restarted = await asyncio.to_thread(lab.start_xmpp)
        assert restarted == service and lab.xmpp.port == service.port
        assert lab.processes[0] is not first_process and lab.processes[0].running

        for client in (alice, bob):  # by themselves, with their backoff
            await client.until(lambda c=client: c.count(Connected) == 2, f"{client.jid} reconnected")
        await alice.until(lambda: Delivered(message_id) in alice.events, "the receipt")
        await asyncio.sleep(QUIET_S)
        received = [e for e in bob.events if isinstance(e, MessageReceived)]
        assert [(e.from_jid.split("/")[0], e.body, e.message_id) for e in received] == [
            (alice.jid, "sent while the server was down", message_id)]
        assert alice.client.outbox == ()
        assert [e.message_id for e in alice.events if isinstance(e, Delivered)] == [message_id]
        assert any(item.jid == bob.jid and item.name == "Bob" for item in alice.client.roster)  # the roster

        frank_client = Client(lab, "frank", "frank-secret")
        frank_client.client.start()
        try:
            await frank_client.until(lambda: frank_client.count(Connected) == 1, "frank's login after the restart")
        finally:
            await frank_client.client.stop()

    async def main():
        alice, bob = Client(lab, "alice"), Client(lab, "bob")
        try:
            await scenario(alice, bob)
        finally:
            await alice.client.stop()
            await bob.client.stop()

    asyncio.run(main())
    assert lab.start_xmpp() == service  # it runs: nothing happens
    assert xmpp_stream_opens(service.host, service.port, service.domain)
