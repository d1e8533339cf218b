"""The whole phone, driven from its keypad, chatting in OTR with peers it did not write itself (on a real
Prosody): the lab's demo contact echo@ (lab/chat_echo.py) and mcabber 1.1.2 with libotr 4.1
(tests/helpers/mcabber.py).

Keypad helpers come from tests/test_chat_phones.py; the mcabber set-up (subscription, OTR policy)
follows tests/test_mcabber_interop.py.
"""

import asyncio
import base64
import traceback

from test_chat_phones import (
    NETWORK_S,
    chat_contact,
    conversation_action,
    count,
    open_chat,
    phone,
    say,
    security_line,
    shown,
    xmpp_account,
)

from firmware.conversations import SECURITY_TEXT
from firmware.ui.screens import screen_text
from tests.helpers.mcabber import Mcabber

ENCRYPTED = SECURITY_TEXT["encrypted"]  # the security line's words, as the firmware spells them
VERIFIED = SECURITY_TEXT["verified"]
PLAINTEXT = SECURITY_TEXT["plaintext"]


def conversation_lines(phone_, peer: str) -> list[tuple[str, str]]:
    conversation = next((c for c in phone_.state.chats if c.peer == peer), None)
    return [(line.status, line.text) for line in conversation.lines] if conversation else []


def report(phone_, peer: str) -> str:
    """What the phone shows and holds for ``peer``: printed when a test fails."""
    return (f"--- phone screen ({phone_.state.screen}) ---\n" + "\n".join(screen_text(phone_.state))
            + f"\n--- phone conversation with {peer} ---\n"
            + "\n".join(f"[{status}] {text}" for status, text in conversation_lines(phone_, peer)))


def chat_unit(phone_):
    return next(u for u in phone_.supervisor.units if getattr(u, "name", None) == "chat")


class Wire:
    """What the phone's chat unit puts on and takes off the XMPP wire, for one account (test-side taps
    on the unit's session client and its message handler: nothing in the firmware changes)."""

    def __init__(self, phone_, address: str):
        unit = chat_unit(phone_)
        session = unit._sessions[address]
        self.out: list[tuple[str, str]] = []
        self.into: list[tuple[str, str]] = []
        client_send, received = session.client.send, unit._received

        def send(to, text, *args, **kwargs):
            self.out.append((to, text))
            return client_send(to, text, *args, **kwargs)

        def receive(session_, event):
            if session_ is session:
                self.into.append((event.from_jid, event.body))
            return received(session_, event)

        session.client.send = send
        unit._received = receive


async def smp_outcome(phone_, since: int) -> str:
    """The first SMP result notice of the open conversation after line ``since`` (either one: a failure
    fails the test at once instead of after a timeout)."""
    outcomes = ("Authenticated", "Authentication FAILED")

    def notices(state):
        conversation = next((c for c in state.chats if c.key == state.chat_open), None)
        lines = conversation.lines[since:] if conversation else ()
        return [line.text for line in lines if line.status == "notice" and line.text in outcomes]

    await phone_.supervisor.wait_for(lambda s: notices(s), NETWORK_S)
    return notices(phone_.state)[0]


def otr_version(body: str) -> int:
    """The protocol version of an OTR AKE/data message ("?OTR:AAMD..." = v3 data)."""
    return int.from_bytes(base64.b64decode(body[5:].split(".")[0] + "==")[:2], "big")


def test_the_lab_echo_contact_chats_in_otr_and_authenticates_by_question(xmpp_lab, tmp_path):
    lab = xmpp_lab
    echo = lab.chat_echo_jid

    async def scenario():
        async with phone(lab, tmp_path / "alice") as alice:
            try:
                await alice.set_up_pin()
                await xmpp_account(alice, lab, "alice", lab.users["alice"], register=False)
                wire = Wire(alice, lab.xmpp.jid("alice"))
                await chat_contact(alice, "Echo", echo)
                # the echo accepts and asks back; the phone authorises a contact of its own by itself
                await alice.supervisor.wait_for(lambda s: any(p == echo and standing == "both"
                                                              for _, p, standing in s.rosters), NETWORK_S)
                await open_chat(alice, "Echo")
                assert security_line(alice) == PLAINTEXT
                await say(alice, "hi")
                await alice.expect(ENCRYPTED, NETWORK_S)
                await shown(alice, "echo: hi")
                assert ("received", "echo: hi") in conversation_lines(alice, echo)
                assert security_line(alice) == ENCRYPTED
                # OTR v3 both ways, and the words never on the wire
                assert all(otr_version(b) == 3 for _, b in wire.out + wire.into if b.startswith("?OTR:"))
                assert any(b.startswith("?OTR:AAMD") for _, b in wire.out)
                assert any(b.startswith("?OTR:AAMD") for _, b in wire.into)
                assert not any("hi" == b or "echo: hi" in b for _, b in wire.out + wire.into)

                # SMP with a question: the echo always answers "byline"
                mark = count(alice)
                await conversation_action(alice, "Ask a question")
                await alice.wait_screen("edit")
                await alice.type("The lab secret?")
                await alice.press("ok")
                await alice.wait_screen("edit")  # "Their answer"
                await alice.type("byline")
                await alice.press("ok")
                await alice.wait_screen("chat")
                await shown(alice, "Asked: The lab secret?", mark)
                assert await smp_outcome(alice, mark) == "Authenticated"
                await alice.expect(VERIFIED, NETWORK_S)
                assert security_line(alice) == VERIFIED
            except BaseException:
                print(report(alice, echo))
                raise

    asyncio.run(scenario())


def test_a_phone_and_mcabber_talk_in_otr_v3_both_ways(lab_factory, tmp_path):
    lab = lab_factory(xmpp=True, sip=False, users=["alice", "bob"])
    alice_jid, bob_jid = lab.xmpp.jid("alice"), lab.xmpp.jid("bob")
    peer = Mcabber(tmp_path / "mcabber-bob", jid=bob_jid, password=lab.users["bob"], service=lab.xmpp)

    async def wait_peer(pattern):
        return await asyncio.to_thread(peer.wait_log, pattern, NETWORK_S)

    async def wait_buffer(pattern, times=1):
        return await asyncio.to_thread(peer.wait_buffer, alice_jid, pattern, NETWORK_S, times)

    async def scenario():
        async with phone(lab, tmp_path / "alice") as alice:
            try:
                await asyncio.to_thread(peer.start)
                await alice.set_up_pin()
                await xmpp_account(alice, lab, "alice", lab.users["alice"], register=False)
                wire = Wire(alice, alice_jid)

                # mutual subscription: the phone asks, mcabber allows and asks back, the phone authorises
                await chat_contact(alice, "Bob", bob_jid)
                await wait_peer(rf"<{alice_jid}> wants to subscribe")
                peer.command(f"/authorization allow {alice_jid}")
                peer.command(f"/add {alice_jid} Alice")
                await alice.supervisor.wait_for(lambda s: any(p == bob_jid and standing == "both"
                                                              for _, p, standing in s.rosters), NETWORK_S)
                await wait_peer(rf"<{alice_jid}> has allowed you")

                # 1. the phone speaks first: its query, the AKE, the message mcabber reads decrypted
                await open_chat(alice, "Bob")
                await say(alice, "hello from byline")
                await alice.expect(ENCRYPTED, NETWORK_S)
                await wait_buffer(r"<O= hello from byline")
                await alice.supervisor.wait_for(  # out of the outbox: sent (or confirmed by a receipt)
                    lambda s: any(status in ("sent", "delivered") for status, text in conversation_lines(alice, bob_jid)
                                  if text == "hello from byline"), NETWORK_S)

                # 2. mcabber answers: the phone shows it, encrypted
                mark = count(alice)
                peer.command(f"/say_to {alice_jid} hello from mcabber")
                await shown(alice, "hello from mcabber", mark)
                assert ("received", "hello from mcabber") in conversation_lines(alice, bob_jid)
                assert security_line(alice) == ENCRYPTED
                await wait_buffer(r"-O> hello from mcabber")

                # the wire: a v3 query, v3 AKE and data both ways, no plaintext
                queries = [b for _, b in wire.out if b.startswith("?OTRv")]
                assert queries and queries[0].startswith("?OTRv3?"), wire.out
                data_out = [b for _, b in wire.out if b.startswith("?OTR:")]
                data_in = [b for _, b in wire.into if b.startswith("?OTR:")]
                assert data_out and all(otr_version(b) == 3 for b in data_out)
                assert data_in and all(otr_version(b) == 3 for b in data_in)
                assert any(b.startswith("?OTR:AAMD") for b in data_out)
                assert any(b.startswith("?OTR:AAMD") for b in data_in)
                everything = " ".join(b for _, b in wire.out + wire.into)
                assert "hello from byline" not in everything and "hello from mcabber" not in everything

                # 3. SMP from mcabber (a shared secret: mcabber 1.1.2 asks no questions), answered on the keypad
                mark = count(alice)
                peer.command(f"/otr smpq {alice_jid} blue-harbour")
                await shown(alice, "Asks for the shared secret", mark)
                await conversation_action(alice, "Answer them")
                await alice.wait_screen("edit")
                await alice.type("blue-harbour")
                await alice.press("ok")
                await alice.wait_screen("chat")
                assert await smp_outcome(alice, mark) == "Authenticated"
                await wait_buffer(r"Protocol: Success!")
                await alice.expect(VERIFIED, NETWORK_S)
            except BaseException:
                print(report(alice, bob_jid))
                traceback.print_exc()
                raise

    try:
        asyncio.run(scenario())
    except BaseException:
        print(peer.logs())
        print(peer.screen())
        raise
    finally:
        peer.stop()
