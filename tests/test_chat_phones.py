"""Secure chat through the keypad: Byline phones (the whole firmware, in this process) on a real Prosody.

Every step is what a person does: PIN, an XMPP account registered from the phone, a contact added
(and authorised on the other phone), a message typed by multi-tap, the padlock read off the
screen, SMP with a question or a shared secret, fingerprints compared, a key that changes.
"""

import asyncio
import logging
import random
import string
from contextlib import AsyncExitStack, asynccontextmanager

from helpers.canaries import canaries_found, canary, files_under
from firmware.chat.xmpp import AuthFailed, Connected, XmppAccountConfig, XmppClient
from firmware.scenario import SCENARIO_PIN, ScenarioPhone, headless_config
from firmware.state import form_lines, section_items
from firmware.ui.screens import screen_text

NETWORK_S = 20.0
"""A bound for anything that crosses Prosody (AKE, SMP, receipts): never reached when it works."""


def unique(prefix: str) -> str:
    return prefix + "".join(random.choices(string.ascii_lowercase + string.digits, k=6))


def phone(lab, work=None) -> ScenarioPhone:
    overrides = {"chat__ca_file": str(lab.xmpp.ca_path)}
    if work is not None:
        overrides["security__state_dir"] = str(work / "state")
    return ScenarioPhone(headless_config(**overrides))


async def menu(phone: ScenarioPhone, number: str) -> None:
    """From wherever the phone is, back to home and into menu section ``number``."""
    for _ in range(6):
        if phone.state.screen == "home":
            break
        await phone.press("back")
    await phone.press("ok", number)
    await phone.wait_screen("section")


async def select(phone: ScenarioPhone, text: str, skip: str = "\0") -> None:
    """Move the selection of the open section, list or form to the first line containing ``text`` (and not
    starting with ``skip``), press OK."""
    state = phone.state
    if state.screen == "list":
        labels, current = [item.label for item in state.choices.items], state.choices.selected
    elif state.screen == "form":
        labels, current = list(form_lines(state.form)), state.form.selected
    else:
        labels, current = [item.label for item in section_items(state)], state.section_index
    index = next((i for i, label in enumerate(labels) if text in label and not label.startswith(skip)), None)
    assert index is not None, f"{text!r} is not among {labels}"
    await phone.press(*(["down"] * (index - current) if index >= current else ["up"] * (current - index)), "ok")


async def xmpp_account(phone: ScenarioPhone, lab, user: str, password: str, *, register: bool,
                       allow_plain: bool = False) -> None:
    """Type an XMPP account into a new account form and save it (or register it on the server first)."""
    await menu(phone, "4")
    await select(phone, "+ Add account")
    await phone.wait_screen("form")
    await phone.press("ok", "down", "ok")  # Type: xmpp; then Address
    await phone.type(lab.xmpp.jid(user))
    await phone.press("ok", "down", "ok")
    await phone.type(password)
    await phone.press("ok", "down", "down")  # Allow plain
    if allow_plain:
        await phone.press("ok")
    await phone.press("down", "ok")  # Server
    await phone.type(f"{lab.xmpp.host}:{lab.xmpp.port}")
    await phone.press("ok", "down", "down")  # TLS pin, then the first action
    if register:
        await phone.press("down", "ok")  # Register
        await phone.expect("Account created", NETWORK_S)
    else:
        await phone.press("ok")  # Save
        await phone.expect("Saved")
    await phone.expect("(online)", NETWORK_S)


async def chat_contact(phone: ScenarioPhone, name: str, jid: str) -> None:
    await menu(phone, "1")
    await select(phone, "+ Add contact")
    await phone.wait_screen("form")
    await phone.press("ok")
    await phone.type(name)
    await phone.press("ok", "down", "down", "ok")  # Chat
    await phone.type(jid)
    await phone.press("ok", "down", "down", "ok")  # Save
    await phone.expect("Saved")


async def open_chat(phone: ScenarioPhone, name: str) -> None:
    await menu(phone, "3")
    if not any(name in line for line in screen_text(phone.state)):
        await select(phone, "+ New chat")
        await phone.wait_screen("list")
    await select(phone, name, skip="? ")  # a conversation, not a subscription request
    await phone.wait_screen("chat")


async def say(phone: ScenarioPhone, text: str) -> None:
    await phone.press("ok")
    await phone.wait_screen("edit")
    await phone.type(text)
    await phone.press("ok")
    await phone.wait_screen("chat")


async def conversation_action(phone: ScenarioPhone, action: str) -> None:
    await phone.press("#")
    await phone.wait_screen("list")
    await select(phone, action)


def count(phone: ScenarioPhone) -> int:
    """How many lines the open conversation has: what ``shown(..., since=)`` looks after."""
    conversation = next((c for c in phone.state.chats if c.key == phone.state.chat_open), None)
    return len(conversation.lines) if conversation else 0


async def shown(phone: ScenarioPhone, text: str, since: int = 0, timeout: float = NETWORK_S) -> None:
    """Wait until a line of the open conversation after the first ``since`` (message or notice,
    however it wraps on screen) reads ``text``."""
    def there(state):
        conversation = next((c for c in state.chats if c.key == state.chat_open), None)
        return conversation is not None and any(text in line.text for line in conversation.lines[since:])
    await phone.supervisor.wait_for(there, timeout)


def security_line(phone: ScenarioPhone) -> str:
    return screen_text(phone.state)[1]


def lines_of(phone: ScenarioPhone, peer: str) -> list[str]:
    conversation = next(c for c in phone.state.chats if c.peer == peer)
    return [line.text for line in conversation.lines if line.status != "notice"]


@asynccontextmanager
async def friends(lab, tmp_path, *, alice_allows_plain: bool = False):
    """Two phones with new accounts registered from their keypads, each the other's authorised contact,
    alice's phone showing the conversation with ben."""
    password = "Pw-" + unique("")
    ann, ben = unique("ann"), unique("ben")
    async with AsyncExitStack() as stack:
        alice = await stack.enter_async_context(phone(lab, tmp_path / "alice"))
        bob = await stack.enter_async_context(phone(lab, tmp_path / "bob"))
        for who, user in ((alice, ann), (bob, ben)):
            await who.set_up_pin()
            await xmpp_account(who, lab, user, password, register=True, allow_plain=alice_allows_plain and who is alice)
        await chat_contact(alice, "Ben", lab.xmpp.jid(ben))
        await alice.expect("Ben (waiting)", NETWORK_S)
        await menu(bob, "3")
        await bob.expect(f"? {lab.xmpp.jid(ann)}", NETWORK_S)
        await select(bob, f"? {lab.xmpp.jid(ann)}")
        await bob.wait_screen("list")
        await select(bob, "Authorise")
        await bob.supervisor.wait_for(lambda s: any(c.chat == lab.xmpp.jid(ann) for c in s.profile.contacts),
                                      NETWORK_S)  # authorised, and a contact now
        await menu(alice, "1")
        await alice.supervisor.wait_for(lambda s: any(p == lab.xmpp.jid(ben) and state == "both"
                                                      for _, p, state in s.rosters), NETWORK_S)
        await alice.expect("Ben (online)", NETWORK_S)  # subscribed both ways: presence flows
        await bob.supervisor.wait_for(lambda s: any(p == lab.xmpp.jid(ann) and state == "both"
                                                    for _, p, state in s.rosters), NETWORK_S)
        alice.names = (ann, lab.xmpp.jid(ann))
        bob.names = (ben, lab.xmpp.jid(ben))
        yield alice, bob


def test_two_phones_talk_in_private_and_authenticate_by_question_secret_and_fingerprint(xmpp_lab, tmp_path):
    lab = xmpp_lab

    async def scenario():
        async with friends(lab, tmp_path) as (alice, bob):
            ann_jid = alice.names[1]
            await open_chat(alice, "Ben")
            assert security_line(alice) == "NOT ENCRYPTED"
            await say(alice, "Hello Ben")
            # Queued while OTR starts itself, then sent encrypted and confirmed by ben's phone.
            await alice.expect("SECURE, unverified", NETWORK_S)
            await alice.supervisor.wait_for(lambda s: s.chats[-1].lines[-1].status == "delivered", NETWORK_S)
            await alice.expect("> Hello Ben v")
            await bob.supervisor.wait_for(lambda s: any(c.unread == 1 for c in s.chats), NETWORK_S)
            await menu(bob, "1")
            await bob.press("back", "back")
            await bob.expect("1 new message")
            indicators = next(u for u in bob.supervisor.units if type(u).__name__ == "IndicatorsUnit").indicators
            assert indicators.state()["message"] == "blink"
            await open_chat(bob, ann_jid.partition("@")[0])
            assert security_line(bob) == "SECURE, unverified"
            assert lines_of(bob, ann_jid) == ["Hello Ben"]
            await bob.expect("< Hello Ben")
            assert indicators.state()["message"] == "off"
            await say(bob, "Hi Ann")
            await alice.expect("< Hi Ann", NETWORK_S)

            # SMP with a question: a wrong answer fails on both sides, the right one verifies.
            for answer, outcome in (("london", "Authentication FAILED"), ("paris", "Authenticated")):
                marks = count(alice), count(bob)
                await conversation_action(alice, "Ask a question")
                await alice.wait_screen("edit")
                await alice.type("Our city?")
                await alice.press("ok")
                await alice.wait_screen("edit")
                await alice.type("paris")
                await alice.press("ok")
                await shown(bob, "Asks: Our city?", marks[1])
                await conversation_action(bob, "Answer them")
                await bob.wait_screen("edit")
                await bob.type(answer)
                await bob.press("ok")
                await shown(alice, outcome, marks[0])
                await shown(bob, outcome, marks[1])
                if outcome.startswith("Authentication FAILED"):
                    assert security_line(alice) == "SECURE, unverified"
            await alice.expect("SECURE + verified", NETWORK_S)

            # A shared secret, from bob's side: wrong, then right.
            for secret, outcome in (("tuesday", "Authentication FAILED"), ("monday", "Authenticated")):
                marks = count(alice), count(bob)
                await conversation_action(bob, "Shared secret")
                await bob.wait_screen("edit")
                await bob.type("monday")
                await bob.press("ok")
                await shown(alice, "Asks for the shared secret", marks[0])
                await conversation_action(alice, "Answer them")
                await alice.type(secret)
                await alice.press("ok")
                await shown(bob, outcome, marks[1])
            await bob.expect("SECURE + verified", NETWORK_S)

            # Fingerprints in groups on both phones: each sees the other's as the other's own key.
            await conversation_action(alice, "Fingerprints")
            alice_view = screen_text(alice.state)
            await conversation_action(bob, "Fingerprints")
            bob_view = screen_text(bob.state)
            mine = lambda view: view[view.index("Mine:") + 1: view.index("Mine:") + 4]
            theirs = lambda view: view[view.index("Theirs:") + 1: view.index("Theirs:") + 4]
            assert mine(alice_view) == theirs(bob_view) and theirs(alice_view) == mine(bob_view)
            assert all(len(row) == 17 for row in mine(alice_view)[:2]), alice_view
            await select(alice, "They match")
            await shown(alice, "Fingerprint verified")
            await select(bob, "Not verified")
            await bob.expect("SECURE, unverified", NETWORK_S)
            await conversation_action(bob, "Fingerprints")
            await select(bob, "They match")
            await bob.expect("SECURE + verified", NETWORK_S)

            # Alice's phone gets a new key: ben's phone says so, loudly, and stops calling it verified.
            await menu(alice, "3")
            await select(alice, "My key")
            await alice.wait_screen("list")
            await select(alice, "New key")
            await alice.supervisor.wait_for(lambda s: dict(s.chat_keys)[s.accounts[0].address].split()[0]
                                            not in mine(alice_view)[0], NETWORK_S)
            await open_chat(alice, "Ben")
            await conversation_action(alice, "End encryption")
            await alice.expect("NOT ENCRYPTED", NETWORK_S)
            await conversation_action(alice, "Start encryption")
            await shown(bob, "KEY CHANGED: verify again")
            await bob.expect("KEY CHANGED! Verify", NETWORK_S)

    asyncio.run(scenario())


def test_subscription_requests_are_authorised_denied_or_ignored_from_the_keypad(xmpp_lab, tmp_path):
    lab = xmpp_lab

    async def scenario():
        password = "Pw-" + unique("")
        owner = unique("own")
        asking = {answer: unique(answer[:3]) for answer in ("authorise", "deny", "ignore")}
        async with phone(lab, tmp_path / "owner") as owner_phone:
            await owner_phone.set_up_pin()
            await xmpp_account(owner_phone, lab, owner, password, register=True)
            clients = {}
            try:
                for answer, user in asking.items():
                    config = XmppAccountConfig(lab.xmpp.jid(user), password, host=lab.xmpp.host, port=lab.xmpp.port,
                                               ca_path=lab.xmpp.ca_path)
                    await XmppClient.register_account(config)
                    connected = asyncio.Event()
                    client = XmppClient(config, lambda e, c=connected: c.set() if isinstance(e, Connected) else None)
                    client.start()
                    await asyncio.wait_for(connected.wait(), NETWORK_S)
                    await client.add_contact(lab.xmpp.jid(owner))
                    clients[answer] = client
                await menu(owner_phone, "3")
                for answer, user in asking.items():
                    await owner_phone.expect(f"? {lab.xmpp.jid(user)}", NETWORK_S)
                    await select(owner_phone, f"? {lab.xmpp.jid(user)}")
                    await owner_phone.wait_screen("list")
                    await select(owner_phone, answer.capitalize())
                    await owner_phone.wait_screen("section")
                    assert not any(user in line for line in screen_text(owner_phone.state))

                def standing(answer):
                    item = next((i for i in clients[answer].roster if i.jid == lab.xmpp.jid(owner)), None)
                    return item and (item.subscription, item.ask)

                async def settles(answer, expected):
                    for _ in range(int(NETWORK_S * 10)):
                        if standing(answer) in expected:
                            return
                        await asyncio.sleep(0.1)
                    raise AssertionError(f"{answer}: the requester's roster says {standing(answer)}")

                # Authorised: they see the owner (and the owner asked back, so it ends as "both").
                await settles("authorise", {("to", ""), ("both", "")})
                await settles("deny", {("none", "")})  # refused: no subscription, no pending ask
                await settles("ignore", {("none", "subscribe")})  # still pending
                await owner_phone.supervisor.wait_for(
                    lambda s: any(c.chat == lab.xmpp.jid(asking["authorise"]) for c in s.profile.contacts), NETWORK_S)
                assert not any(c.chat == lab.xmpp.jid(asking["deny"]) for c in owner_phone.state.profile.contacts)
            finally:
                for client in clients.values():
                    await client.stop()

    asyncio.run(scenario())


def test_password_change_from_the_phone_makes_the_old_password_fail(xmpp_lab, tmp_path):
    lab = xmpp_lab

    async def scenario():
        user, old, new = unique("pat"), "Old-" + unique(""), "New-" + unique("")
        async with phone(lab, tmp_path / "pat") as pat:
            await pat.set_up_pin()
            await xmpp_account(pat, lab, user, old, register=True)
            await select(pat, "XMPP")
            await pat.wait_screen("form")
            await select(pat, "New password")
            await pat.wait_screen("edit")
            await pat.type(new)
            await pat.press("ok")
            await pat.expect("Password changed", NETWORK_S)
            account = next(a for a in pat.state.accounts if a.kind == "xmpp")
            assert account.password == new

        async def login(password):
            outcome: asyncio.Future = asyncio.get_running_loop().create_future()
            config = XmppAccountConfig(lab.xmpp.jid(user), password, host=lab.xmpp.host, port=lab.xmpp.port,
                                       ca_path=lab.xmpp.ca_path)

            def seen(event):
                if isinstance(event, (Connected, AuthFailed)) and not outcome.done():
                    outcome.set_result(type(event).__name__)
            client = XmppClient(config, seen)
            client.start()
            try:
                return await asyncio.wait_for(outcome, NETWORK_S)
            finally:
                await client.stop()

        assert await login(old) == "AuthFailed"
        assert await login(new) == "Connected"

    asyncio.run(scenario())


def statuses_of(state, peer: str) -> dict[str, str]:
    """Text -> status of each message the phone wrote to ``peer``."""
    conversation = next((c for c in state.chats if c.peer == peer), None)
    return {line.text: line.status for line in conversation.lines if not line.incoming} if conversation else {}


async def all_delivered(phone: ScenarioPhone, peer: str, texts) -> None:
    await phone.supervisor.wait_for(lambda s: all(statuses_of(s, peer).get(t) == "delivered" for t in texts),
                                    NETWORK_S * 2)


def test_no_message_is_lost_or_doubled_when_the_server_or_the_phone_restarts(lab_factory, tmp_path):
    lab = lab_factory(sip=False, echo=False)

    async def scenario():
        async with friends(lab, tmp_path) as (alice, bob):
            ann, ben = alice.names[1], bob.names[1]
            await open_chat(alice, "Ben")
            await say(alice, "before")
            await all_delivered(alice, ben, ["before"])

            await asyncio.to_thread(lab.stop_xmpp)
            await alice.supervisor.wait_for(lambda s: s.status_of(ann) == "offline", NETWORK_S)
            for text in ("while down 1", "while down 2"):
                await say(alice, text)
            assert statuses_of(alice.state, ben)["while down 2"] == "queued"
            await alice.expect("> while down 2 ..")
            await asyncio.to_thread(lab.start_xmpp)
            await all_delivered(alice, ben, ["while down 1", "while down 2"])

            # Typed with the server down, then the phone is switched off: the store keeps it.
            assert (ben, ann) in bob.state.present
            await asyncio.to_thread(lab.stop_xmpp)
            await alice.supervisor.wait_for(lambda s: s.status_of(ann) == "offline", NETWORK_S)
            await bob.supervisor.wait_for(lambda s: (ben, ann) not in s.present, NETWORK_S)
            await say(alice, "across a restart")
            await alice.__aexit__(None, None, None)
            async with phone(lab, tmp_path / "alice") as again:
                await again.wait_screen("pin")
                await again.press(*SCENARIO_PIN, "ok")
                await again.wait_screen("home", NETWORK_S)
                await again.supervisor.wait_for(lambda s: statuses_of(s, ben).get("across a restart") == "queued",
                                                NETWORK_S)
                await asyncio.to_thread(lab.start_xmpp)
                await all_delivered(again, ben, ["across a restart"])
            received = lines_of(bob, ann)
            assert received == ["before", "while down 1", "while down 2", "across a restart"], received

    asyncio.run(scenario())


def test_message_history_is_kept_only_in_the_store_when_on_and_erasing_it_leaves_nothing(xmpp_lab, tmp_path,
                                                                                         caplog):
    lab = xmpp_lab
    caplog.set_level(logging.DEBUG)
    rng = random.Random()
    secrets = {"said": canary(rng), "answered": canary(rng), "question": canary(rng), "secret": canary(rng)}

    async def restarted_alice(check):
        async with phone(lab, tmp_path / "alice") as again:
            await again.wait_screen("pin")
            await again.press(*SCENARIO_PIN, "ok")
            await again.wait_screen("home", NETWORK_S)
            await asyncio.sleep(0.5)  # the chat unit reads the history after the unlock
            await check(again)

    async def scenario():
        async with friends(lab, tmp_path) as (alice, bob):
            ben = bob.names[1]
            await menu(alice, "3")
            await select(alice, "Msg history: off")
            await alice.expect("Msg history: on")
            await open_chat(alice, "Ben")
            await say(alice, secrets["said"])
            await open_chat(bob, alice.names[0])
            await shown(bob, secrets["said"])
            await say(bob, secrets["answered"])
            await shown(alice, secrets["answered"])
            await conversation_action(alice, "Ask a question")
            await alice.type(secrets["question"])
            await alice.press("ok")
            await alice.type(secrets["secret"])
            await alice.press("ok")
            await shown(bob, "Asks: " + secrets["question"])
            await all_delivered(alice, ben, [secrets["said"]])
        work = [tmp_path / "alice", tmp_path / "bob"]
        assert not canaries_found(secrets, files_under(*work)), "a message is readable on disk"

        async def kept(again):
            lines = [line.text for c in again.state.chats if c.peer == ben for line in c.lines]
            assert secrets["said"] in lines and secrets["answered"] in lines, lines
            assert not any(secrets["secret"] in line for line in lines)
        await restarted_alice(kept)

        async def erase(again):
            await menu(again, "5")
            await select(again, "Erase all history")
            await again.expect("History erased", NETWORK_S)
        await restarted_alice(erase)

        async def gone(again):
            assert not any(c.lines for c in again.state.chats), [c.lines for c in again.state.chats]
        await restarted_alice(gone)
        assert not canaries_found(secrets, files_under(*work))
        log_text = caplog.text
        assert log_text and not [name for name, secret in secrets.items() if secret in log_text]
        assert ben not in log_text, "who talks to whom stays out of the log"

    asyncio.run(scenario())


def test_an_account_that_allows_plain_messages_says_so_and_one_that_requires_otr_never_sends_plain(xmpp_lab, tmp_path):
    lab = xmpp_lab

    async def scenario():
        async with friends(lab, tmp_path, alice_allows_plain=True) as (alice, bob):
            ann, ben = alice.names[1], bob.names[1]
            await open_chat(alice, "Ben")
            await say(alice, "in the clear")
            assert security_line(alice) == "NOT ENCRYPTED"
            await alice.supervisor.wait_for(lambda s: statuses_of(s, ben).get("in the clear") in ("sent", "delivered"),
                                            NETWORK_S)  # not held back for OTR: this account allows plain
            await open_chat(bob, alice.names[0])
            await shown(bob, "in the clear")
            assert bob.state.chats[-1].lines[0].status == "plain"
            await bob.expect("!< in the clear")
            # OTR's whitespace tag on alice's message made the phones go private by themselves.
            await alice.expect("SECURE, unverified", NETWORK_S)
            await bob.expect("SECURE, unverified", NETWORK_S)
            await say(alice, "now private")
            await shown(bob, "now private")
            assert [line.status for line in bob.state.chats[-1].lines if line.text == "now private"] == ["received"]
            # Bob's account requires OTR: when alice ends it, bob's next message waits, queued.
            await conversation_action(alice, "End encryption")
            await bob.expect("NOT ENCRYPTED:ended", NETWORK_S)
            await say(bob, "only in private")
            await asyncio.sleep(1)
            assert statuses_of(bob.state, ann)["only in private"] == "queued"
            assert not any(line.text == "only in private" for c in alice.state.chats for line in c.lines)

    asyncio.run(scenario())


def test_one_phone_with_two_chat_accounts_answers_from_the_account_it_was_written_to(xmpp_lab, tmp_path):
    lab = xmpp_lab

    async def scenario():
        password = "Pw-" + unique("")
        first, second, ben = unique("one"), unique("two"), unique("ben")
        async with phone(lab, tmp_path / "two") as both, phone(lab, tmp_path / "ben") as bob:
            await both.set_up_pin()
            for user in (first, second):
                await xmpp_account(both, lab, user, password, register=True)
            await bob.set_up_pin()
            await xmpp_account(bob, lab, ben, password, register=True)
            await chat_contact(bob, "Second", lab.xmpp.jid(second))
            await open_chat(bob, "Second")
            await say(bob, "to the second")
            key = (lab.xmpp.jid(second), lab.xmpp.jid(ben))
            await both.supervisor.wait_for(lambda s: any(c.key == key and c.lines for c in s.chats), NETWORK_S)
            assert not any(c.account == lab.xmpp.jid(first) for c in both.state.chats)
            await open_chat(both, lab.xmpp.jid(ben))
            assert both.state.chat_open == key
            await shown(both, "to the second")
            await say(both, "from the second")
            await shown(bob, "from the second")
            assert bob.state.chat_open == (lab.xmpp.jid(ben), lab.xmpp.jid(second))

    asyncio.run(scenario())


def test_a_refused_password_is_said_and_a_corrected_one_logs_in(xmpp_lab, tmp_path):
    lab = xmpp_lab

    async def scenario():
        user, password = unique("cat"), "Pw-" + unique("")
        config = XmppAccountConfig(lab.xmpp.jid(user), password, host=lab.xmpp.host, port=lab.xmpp.port,
                                   ca_path=lab.xmpp.ca_path)
        await XmppClient.register_account(config)
        async with phone(lab, tmp_path / "cat") as cat:
            await cat.set_up_pin()
            await menu(cat, "4")
            await select(cat, "+ Add account")
            await cat.press("ok", "down", "ok")
            await cat.type(lab.xmpp.jid(user))
            await cat.press("ok", "down", "ok")
            await cat.type("not-" + password)
            await cat.press("ok", "down", "down", "down", "ok")
            await cat.type(f"{lab.xmpp.host}:{lab.xmpp.port}")
            await cat.press("ok", "down", "down", "ok")
            await cat.expect("(failed: wrong password)", NETWORK_S)
            await select(cat, "XMPP")
            await cat.wait_screen("form")
            await select(cat, "Password")
            await cat.press(*["back"] * len("not-" + password))  # empty the field, then type the right one
            await cat.type(password)
            await cat.press("ok")
            await select(cat, "Save")
            await cat.expect("(online)", NETWORK_S)

    asyncio.run(scenario())
