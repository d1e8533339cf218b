"""OTR v3 interop: our stack (XmppClient + OtrAccount, glued by tests/helpers/otr_client.py) as alice,
mcabber 1.1.2 (libotr 4.1) as bob, over the lab's real Prosody (STARTTLS with the lab CA)."""

import asyncio
import base64

from firmware.chat.otr import Encrypted, SmpQuestion, SmpRequest, SmpResult
from firmware.chat.xmpp import Connected, Presence
from tests.helpers.mcabber import Mcabber
from tests.helpers.otr_client import OtrClient

WAIT_S = 15.0


def otr_version(body):
    """The protocol version of an OTR data/AKE message ("?OTR:AAMD..." = v3 data)."""
    raw = base64.b64decode(body[5:].split(".")[0] + "==")
    return int.from_bytes(raw[:2], "big"), raw[2]


async def wait_peer(peer, pattern, timeout=WAIT_S):
    return await asyncio.to_thread(peer.wait_log, pattern, timeout)


async def subscribe_both(alice, peer, bob_jid):
    """Mutual subscription: both rosters hold the other with subscription "both"."""
    await alice.client.add_contact(bob_jid, "Bob")
    await wait_peer(peer, rf"<{alice.jid}> wants to subscribe")
    peer.command(f"/authorization allow {alice.jid}")
    peer.command(f"/add {alice.jid} Alice")
    await alice.until(lambda: any(i.jid == bob_jid and i.subscription == "both"
                                  for i in alice.client.roster), "subscription both")
    await wait_peer(peer, rf"<{alice.jid}> has allowed you")


def test_otr_v3_messages_and_smp_both_ways_with_mcabber(lab_factory, tmp_path):
    lab = lab_factory(xmpp=True, sip=False)
    bob_jid = lab.xmpp.jid("bob")
    peer = Mcabber(tmp_path / "mcabber-bob", jid=bob_jid, password=lab.users["bob"], service=lab.xmpp)

    async def scenario():
        alice = OtrClient(lab, "alice")
        alice.client.start()
        try:
            await alice.until(lambda: any(isinstance(e, Connected) for e in alice.xmpp_events), "Connected")
            await asyncio.to_thread(peer.start)
            await subscribe_both(alice, peer, bob_jid)

            # 1. we start: query, AKE, and the message libotr kept reaches mcabber decrypted
            alice.say(bob_jid, "hello from byline")
            await alice.until(lambda: any(isinstance(e, Encrypted) for e in alice.otr_events), "Encrypted")
            # mcabber's buffer: "<O=" is a message received OTR-encrypted
            await asyncio.to_thread(peer.wait_buffer, alice.jid, r"<O= hello from byline", WAIT_S)
            query = [body for _, body in alice.wire_out if body.startswith("?OTRv")]
            assert query and query[0].startswith("?OTRv3?")
            data_out = [body for _, body in alice.wire_out if body.startswith("?OTR:")]
            assert data_out and all(otr_version(b)[0] == 3 for b in data_out)
            assert any(b.startswith("?OTR:AAMD") for b in data_out)  # v3 data message
            data_in = [body for _, body in alice.wire_in if body.startswith("?OTR:")]
            assert data_in and all(otr_version(b)[0] == 3 for b in data_in)  # mcabber's AKE: v3 too
            # v3 instance tags: mcabber's messages name it as sender and our instance as receiver
            their_tag = alice.otr.instances(bob_jid)
            assert len(their_tag) == 1
            for body in data_in:
                raw = base64.b64decode(body[5:].split(".")[0] + "==")
                assert int.from_bytes(raw[3:7], "big") == their_tag[0]
                assert int.from_bytes(raw[7:11], "big") in (0, alice.otr.instance_tag)
            assert "hello from byline" not in " ".join(body for _, body in alice.wire_out)

            # 2. mcabber answers: encrypted on the wire, plaintext for us
            peer.command(f"/say_to {alice.jid} hello from mcabber")
            await alice.until(lambda: (bob_jid, "hello from mcabber") in alice.shown, "mcabber's plaintext")
            await asyncio.to_thread(peer.wait_buffer, alice.jid, r"-O> hello from mcabber", WAIT_S)
            assert any(b.startswith("?OTR:AAMD") for _, b in alice.wire_in)
            assert "hello from mcabber" not in " ".join(b for _, b in alice.wire_in)

            # 3. SMP started by mcabber (it sends no question: libotr's plain SMP), answered by us
            peer.command(f"/otr smpq {alice.jid} blue-harbour")
            await alice.until(lambda: any(isinstance(e, (SmpRequest, SmpQuestion)) for e in alice.otr_events),
                              "mcabber's SMP request")
            # mcabber 1.1.2 only calls otrl_message_initiate_smp: a shared secret, never a question
            assert [e for e in alice.otr_events if isinstance(e, (SmpRequest, SmpQuestion))] == [
                SmpRequest(bob_jid, their_tag[0])]
            assert alice.otr.smp_respond(bob_jid, "blue-harbour")
            await alice.until(lambda: SmpResult(bob_jid, True, alice.otr.instances(bob_jid)[0])
                              in alice.otr_events, "SMP success (mcabber asked)")
            await asyncio.to_thread(peer.wait_buffer, alice.jid, r"Protocol: Success!", WAIT_S)
            peer.command(f"/otr info {alice.jid}")
            await wait_peer(peer, rf"{alice.jid}: encrypted")
            assert alice.otr.trusted(bob_jid)

            # 4. SMP started by us (with a question), answered by mcabber
            before = len(alice.otr_events)
            assert alice.otr.smp_start(bob_jid, "green-lantern", question="Our lighthouse?")
            await asyncio.to_thread(peer.wait_buffer, alice.jid, r"Received SMP Initiation", WAIT_S)
            peer.command(f"/otr smpr {alice.jid} green-lantern")
            await alice.until(lambda: any(isinstance(e, SmpResult) for e in alice.otr_events[before:]),
                              "SMP result (we asked)")
            assert [e.success for e in alice.otr_events[before:] if isinstance(e, SmpResult)] == [True]
            await asyncio.to_thread(peer.wait_buffer, alice.jid, r"Protocol: Success!", WAIT_S, 2)
            return alice
        finally:
            await alice.client.stop()
            alice.otr.close()

    try:
        asyncio.run(scenario())
    except BaseException:
        print(peer.logs())
        print(peer.screen())
        raise
    finally:
        peer.stop()


def test_otr_v3_with_mcabber_on_two_resources_at_once(lab_factory, tmp_path):
    """bob on two mcabbers (resources one and two): one v3 session per instance tag, each message
    to one instance is read by that mcabber only."""
    lab = lab_factory(xmpp=True, sip=False)
    bob_jid = lab.xmpp.jid("bob")
    peers = [Mcabber(tmp_path / f"mcabber-{name}", jid=bob_jid, password=lab.users["bob"],
                     service=lab.xmpp, resource=name) for name in ("one", "two")]

    async def scenario():
        alice = OtrClient(lab, "alice")
        alice.client.start()
        try:
            await alice.until(lambda: any(isinstance(e, Connected) for e in alice.xmpp_events), "Connected")
            await asyncio.to_thread(peers[0].start)
            await subscribe_both(alice, peers[0], bob_jid)
            await asyncio.to_thread(peers[1].start)
            await alice.until(lambda: {("bob@" + lab.xmpp.domain, "one"), ("bob@" + lab.xmpp.domain, "two")}
                              <= {(e.jid, e.resource) for e in alice.xmpp_events
                                  if isinstance(e, Presence) and e.available}, "both resources online")
            # the query goes to the bare JID: Prosody gives it to both resources, both answer
            alice.say(bob_jid, "hello both")
            await alice.until(lambda: len({e.instance for e in alice.otr_events
                                           if isinstance(e, Encrypted)}) == 2, "two sessions")
            tags = alice.otr.instances(bob_jid)
            assert len(tags) == 2
            for peer in peers:  # mcabber is private once our last AKE message reached it
                await asyncio.to_thread(peer.wait_buffer, alice.jid, r"OTR: channel established", WAIT_S)
                peer.command(f"/say_to {alice.jid} from {peer.resource}")
            await alice.until(lambda: {("bob@" + lab.xmpp.domain, "from one"), ("bob@" + lab.xmpp.domain, "from two")}
                              <= set(alice.shown), "both plaintexts")
            # each instance is known by the resource its messages came from
            by_name = {alice.otr.route(bob_jid, tag).rsplit("/", 1)[-1]: tag for tag in tags}
            assert set(by_name) == {"one", "two"}
            for name, tag in by_name.items():
                wire = alice.otr.sending(bob_jid, f"only for {name}", instance=tag)
                assert wire and wire.startswith("?OTR:AAMD")
                assert int.from_bytes(base64.b64decode(wire[5:].split(".")[0] + "==")[7:11], "big") == tag
                alice._send(alice.otr.route(bob_jid, tag), wire)
            for peer in peers:
                other = "two" if peer.resource == "one" else "one"
                text = await asyncio.to_thread(peer.wait_buffer, alice.jid, rf"<O= only for {peer.resource}",
                                               WAIT_S)
                assert f"only for {other}" not in text
            # the message kept during the AKE was resent once, to the instance that was private first
            texts = [await asyncio.to_thread(peer.buddy_buffer, alice.jid) for peer in peers]
            assert sum("<O= hello both" in text for text in texts) == 1
        finally:
            await alice.client.stop()
            alice.otr.close()

    try:
        asyncio.run(scenario())
    except BaseException:
        for peer in peers:
            print(peer.logs())
            print(peer.screen())
        raise
    finally:
        for peer in peers:
            peer.stop()
