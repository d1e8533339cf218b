"""The lab's chat echo (lab/chat_echo.py) over the lab's real Prosody: subscriptions, OTR v3 echoes,
SMP with the secret 'byline', no plaintext ever, garbage survived, a kept OTR key across restarts."""

import asyncio
import base64
import os
import random
import stat

import pytest

import lab as lab_package
from firmware.chat.otr import Encrypted, SmpResult
from firmware.chat.xmpp import Connected
from helpers.otr_client import OtrClient
from lab import CHAT_ECHO_STATE_DIRECTORY, Lab
from lab.chat_echo import INSTAG_FILE, KEY_FILE, LAB_SMP_SECRET, READY_LINE

QUIET_S = 0.5  # how long "no plaintext answer" is watched for
USERS = ["alice", "bob", "carol", "dave", "echo"]


@pytest.fixture(scope="module")
def chat_lab(tmp_path_factory):
    """Prosody and the chat echo, shared by this module's tests (each uses a user of its own)."""
    with Lab(USERS, sip=False, directory=tmp_path_factory.mktemp("chat-lab")) as started:
        yield started


class Peer(OtrClient):
    """A bare OTR client (tests/helpers/otr_client.py) that talks to the echo contact."""

    async def echoed(self, echo, text):
        """Say ``text`` to the echo contact and wait for its decrypted "echo: TEXT"."""
        self.say(echo, text)
        await self.until(lambda: (echo, f"echo: {text}") in self.shown, f"echo of {text!r}")



def run(lab, user, scenario):
    """``scenario(peer, echo_jid)`` on a connected ``Peer`` that is always closed afterwards."""
    async def main():
        peer = Peer(lab, user)
        try:
            await peer.connect()
            return await scenario(peer, lab.chat_echo_jid)
        finally:
            await peer.close()

    return asyncio.run(main())


def otr_version(body):
    """The protocol version of an OTR data/AKE message ("?OTR:AAMD..." = v3 data)."""
    return int.from_bytes(base64.b64decode(body[5:].split(".")[0] + "==")[:2], "big")


def test_the_ready_line_the_lab_waits_for_is_the_one_the_bot_prints():
    assert lab_package.CHAT_ECHO_READY_LINE == READY_LINE


def test_subscribe_then_plaintext_gets_otr_and_messages_come_back_encrypted(chat_lab):
    async def scenario(alice, echo):
        await alice.client.add_contact(echo, "Echo")
        await alice.until(lambda: any(i.jid == echo and i.subscription == "both" for i in alice.client.roster),
                          "subscription both")

        # plaintext (sent around our own OTR): no plaintext answer, an OTR query instead, and the AKE follows
        alice.client.send(echo, "hello in the clear")
        await alice.until(lambda: any(isinstance(e, Encrypted) for e in alice.otr_events), "Encrypted")
        await asyncio.sleep(QUIET_S)
        from_echo = [body for sender, body in alice.wire_in if sender.split("/")[0] == echo]
        assert from_echo and from_echo[0].startswith("?OTRv3?")
        assert all(body.startswith("?OTR") for body in from_echo), from_echo
        assert all(otr_version(body) == 3 for body in from_echo if body.startswith("?OTR:"))
        assert not any("hello in the clear" in text for _, text in alice.shown)

        await alice.echoed(echo, "hello echo")
        await alice.echoed(echo, "grüße, ünïcode ✓")
        from_echo = [body for sender, body in alice.wire_in if sender.split("/")[0] == echo]
        assert not any("hello echo" in body for body in from_echo)  # encrypted on the wire
        assert any(body.startswith("?OTR:AAMD") for body in from_echo)  # v3 data messages
        assert alice.otr.state(echo) == "encrypted"

    run(chat_lab, "alice", scenario)
    assert chat_lab.chat_echo_process.running


def test_smp_succeeds_with_the_answer_byline_and_fails_with_another(chat_lab):
    assert LAB_SMP_SECRET == "byline"

    async def scenario(bob, echo):
        await bob.echoed(echo, "hi")

        def results():
            return [e.success for e in bob.otr_events if isinstance(e, SmpResult)]

        assert not bob.otr.trusted(echo)

        assert bob.otr.smp_start(echo, "wrong answer", question="What is the lab's secret?")
        await bob.until(lambda: len(results()) == 1, "the first SMP result")
        assert results() == [False]
        assert not bob.otr.trusted(echo)

        assert bob.otr.smp_start(echo, "byline", question="What is the lab's secret?")
        await bob.until(lambda: len(results()) == 2, "the second SMP result")
        assert results() == [False, True]
        assert bob.otr.trusted(echo)

        assert bob.otr.smp_start(echo, "byline")  # a shared secret, no question: the same answer
        await bob.until(lambda: len(results()) == 3, "the third SMP result")
        assert results() == [False, True, True]
        await bob.echoed(echo, "after SMP")

    run(chat_lab, "bob", scenario)


def test_garbage_does_not_kill_the_bot_and_it_still_answers(chat_lab):
    rng = random.Random(1234)

    def noise(size):  # random bytes as text, minus what XML 1.0 cannot carry
        text = bytes(rng.randrange(256) for _ in range(size)).decode("latin-1")
        return "".join(c for c in text if c >= " " or c in "\t\n\r") or "x"

    async def scenario(carol, echo):
        await carol.echoed(echo, "before")
        garbage = [
            noise(300),
            "?OTR:" + base64.b64encode(os.urandom(120)).decode() + ".",
            "?OTR:AAMD" + base64.b64encode(os.urandom(200)).decode() + ".",
            "?OTR:AAMD" + "%%%%not base64%%%%.",
            "?OTR:AAMC",  # a truncated D-H commit
            "?OTR|3c9a1b2f|00000100,00001,00002,?OTR:AAMD,",  # a fragment that will never be completed
            "?OTR Error: garbage from the test",
            "?OTRv3?" + noise(50),
            "?OTR:" + "A" * 60000 + ".",
        ]
        for body in garbage:
            carol.client.send(echo, body)
        await asyncio.sleep(QUIET_S)
        assert chat_lab.chat_echo_process.running
        await carol.echoed(echo, "after the garbage")
        from_echo = [body for sender, body in carol.wire_in if sender.split("/")[0] == echo]
        assert all(body.startswith("?OTR") for body in from_echo), from_echo  # never plaintext

    run(chat_lab, "carol", scenario)
    assert chat_lab.chat_echo_process.running
    assert "Traceback" not in chat_lab.chat_echo_process.log_text()


def test_a_kept_lab_keeps_the_echo_fingerprint_and_the_bot_stops_cleanly(tmp_path):
    directory = tmp_path / "kept-lab"

    async def fingerprint(dave, echo):
        await dave.echoed(echo, "who are you?")
        return dave.otr.peer_fingerprint(echo)

    seen = []
    for _ in range(2):
        with Lab(["dave", "echo"], sip=False, directory=directory) as lab:
            seen.append(run(lab, "dave", fingerprint))
            process = lab.chat_echo_process
        assert process.returncode == 0
        assert "chat echo stopped" in process.log_text()
    assert seen[0] is not None and seen[0] == seen[1]
    state = directory / CHAT_ECHO_STATE_DIRECTORY
    for name in (KEY_FILE, INSTAG_FILE):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600

    with Lab(["dave", "echo"], sip=False, directory=tmp_path / "new-lab") as lab:  # a new lab, a new key
        assert run(lab, "dave", fingerprint) != seen[0]


def test_the_bot_reconnects_by_itself_after_prosody_restarts(lab_factory):
    lab = lab_factory(sip=False, users=["erin", "echo"])

    async def scenario(erin, echo):
        await erin.echoed(echo, "before the restart")
        await asyncio.to_thread(lab.stop_xmpp)
        await asyncio.to_thread(lab.start_xmpp)
        await erin.until(lambda: sum(isinstance(e, Connected) for e in erin.xmpp_events) == 2, "erin reconnected")
        await erin.echoed(echo, "after the restart")  # queued until the bot is back, same OTR session

    run(lab, "erin", scenario)
    assert "logged in again" in lab.chat_echo_process.log_text()
