"""firmware/chat/xmpp.py against the lab's real Prosody 0.12 (STARTTLS, private CA)."""

import asyncio
import hashlib
import logging
import ssl
import time
import uuid

import pytest
import slixmpp

from firmware.chat import xmpp
from firmware.chat.xmpp import (
    AuthFailed,
    Connected,
    Delivered,
    Disconnected,
    MessageReceived,
    Presence,
    RosterChanged,
    RosterItem,
    SubscriptionRequest,
    TlsFailed,
    XmppAccountConfig,
    XmppClient,
    XmppError,
    register_account,
)
from lab.certs import CERT_FILE, create_certificates

WAIT_S = 5.0
POLL_S = 0.02
QUIET_S = 0.5  # how long "nothing more happens" is watched for


class Recorder:
    """Collects posted events; ``until`` waits for one that matches."""

    def __init__(self):
        self.events = []

    def __call__(self, event):
        self.events.append(event)

    def of(self, kind):
        return [event for event in self.events if isinstance(event, kind)]

    async def until(self, predicate, timeout=WAIT_S):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events:
                if predicate(event):
                    return event
            await asyncio.sleep(POLL_S)
        raise AssertionError(f"no matching event within {timeout} s; got {self.events}")

    async def until_count(self, kind, count, timeout=WAIT_S):
        deadline = time.monotonic() + timeout
        while len(self.of(kind)) < count and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
        assert len(self.of(kind)) >= count, self.events
        return self.of(kind)


def account(lab, user, password=None, **options):
    service = lab.xmpp
    options.setdefault("ca_path", service.ca_path)
    return XmppAccountConfig(
        service.jid(user), lab.users[user] if password is None else password,
        host=service.host, port=service.port, **options,
    )


async def online(config):
    """A started client that has reached Connected, and its recorder."""
    events = Recorder()
    client = XmppClient(config, events)
    client.start()
    await events.until(lambda event: isinstance(event, (Connected, AuthFailed, TlsFailed)))
    assert events.of(Connected), events.events
    return client, events


async def new_account(lab):
    """A fresh account registered in-band on the shared lab server (accounts there are never reused)."""
    name = "u" + uuid.uuid4().hex[:12]
    service = lab.xmpp
    config = XmppAccountConfig(
        service.jid(name), "pw-" + uuid.uuid4().hex, host=service.host, port=service.port, ca_path=service.ca_path
    )
    await register_account(config)
    return config


def server_pin(lab):
    pem = (lab.xmpp.ca_path.parent / CERT_FILE).read_text()
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


async def outcome_of(config):
    """Start a client, return its first outcome event and how many attempts it made over QUIET_S."""
    events = Recorder()
    client = XmppClient(config, events)
    client.start()
    try:
        first = await events.until(lambda event: isinstance(event, (Connected, AuthFailed, TlsFailed)))
        await asyncio.sleep(QUIET_S)
        return first, client.attempts, events
    finally:
        await client.stop()


# --- configuration ----------------------------------------------------------------------------


def test_config_hides_the_password_and_checks_its_fields(xmpp_lab):
    config = account(xmpp_lab, "alice")
    assert xmpp_lab.users["alice"] not in repr(config)
    with pytest.raises(XmppError):
        XmppAccountConfig("alice@byline.lab/phone", "pw")
    with pytest.raises(XmppError):
        XmppAccountConfig("alice@byline.lab", "pw", tls_pin="abc")
    with pytest.raises(XmppError):
        XmppAccountConfig("alice@byline.lab", "")


# --- TLS and login ----------------------------------------------------------------------------


def test_login_verified_by_the_lab_ca(xmpp_lab):
    first, attempts, _ = asyncio.run(outcome_of(account(xmpp_lab, "alice")))
    assert first == Connected() and attempts == 1


def test_a_server_not_signed_by_the_trusted_ca_is_refused_for_good(xmpp_lab, tmp_path):
    other_ca = create_certificates(tmp_path / "other", [xmpp_lab.xmpp.domain]).ca_path
    first, attempts, events = asyncio.run(outcome_of(account(xmpp_lab, "alice", ca_path=other_ca)))
    assert isinstance(first, TlsFailed) and "certificate" in first.reason
    assert attempts == 1 and not events.of(Connected)


def test_the_right_pin_alone_is_enough(xmpp_lab):
    first, _, _ = asyncio.run(outcome_of(account(xmpp_lab, "alice", ca_path=None, tls_pin=server_pin(xmpp_lab))))
    assert first == Connected()


def test_a_wrong_pin_is_refused_even_with_the_right_ca(xmpp_lab):
    wrong = "00" * 32
    first, attempts, events = asyncio.run(outcome_of(account(xmpp_lab, "alice", tls_pin=wrong)))
    assert first == TlsFailed("the server certificate does not match the pin")
    assert attempts == 1 and not events.of(Connected)
    first, _, _ = asyncio.run(outcome_of(account(xmpp_lab, "alice", ca_path=None, tls_pin=wrong)))
    assert isinstance(first, TlsFailed)


def test_a_wrong_password_gives_auth_failed_and_no_retry(xmpp_lab):
    first, attempts, _ = asyncio.run(outcome_of(account(xmpp_lab, "alice", password="wrong-password")))
    assert first == AuthFailed() and attempts == 1


def test_an_unreachable_server_is_retried_with_growing_delays(xmpp_lab, monkeypatch):
    monkeypatch.setattr(xmpp, "RECONNECT_FIRST_DELAY_S", 0.1)
    monkeypatch.setattr(xmpp, "RECONNECT_MAX_DELAY_S", 0.4)
    with socket_that_refuses() as port:
        config = XmppAccountConfig("alice@byline.lab", "pw", host="127.0.0.1", port=port,
                                   ca_path=xmpp_lab.xmpp.ca_path)

        async def scenario():
            client = XmppClient(config, Recorder())
            client.start()
            await asyncio.sleep(0.3)
            early = client.attempts
            await asyncio.sleep(1.2)
            late = client.attempts
            await client.stop()
            await asyncio.sleep(0.05)
            send_queues = [task for task in asyncio.all_tasks() if "run_filters" in repr(task)]
            return early, late, client._delay, send_queues

        early, late, delay, send_queues = asyncio.run(scenario())
        assert send_queues == []  # the clients of failed attempts leave no task behind
    # 0.1, 0.2, 0.4, 0.4, ... (+ up to 25 %): 2-3 attempts by 0.3 s, about 5 by 1.5 s, capped delay.
    assert 2 <= early <= 3 and 4 <= late <= 7 and delay == 0.4


class socket_that_refuses:
    """A loopback port with nobody listening (bound without listen: connections are refused)."""

    def __enter__(self):
        import socket

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        return self.socket.getsockname()[1]

    def __exit__(self, *exc_info):
        self.socket.close()


def test_a_server_without_starttls_gets_no_credentials(xmpp_lab):
    received = bytearray()

    async def plaintext_server(reader, writer):
        received.extend(await reader.read(4096))
        writer.write(
            b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
            b"xmlns:stream='http://etherx.jabber.org/streams' from='byline.lab' id='s1' version='1.0'>"
            b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
            b"<mechanism>PLAIN</mechanism></mechanisms></stream:features>"
        )
        await writer.drain()
        try:
            while chunk := await asyncio.wait_for(reader.read(4096), 1.0):
                received.extend(chunk)
        except (TimeoutError, ConnectionError):
            pass
        writer.close()

    async def scenario():
        server = await asyncio.start_server(plaintext_server, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        config = XmppAccountConfig("alice@byline.lab", "secret-pw", host="127.0.0.1", port=port,
                                   ca_path=xmpp_lab.xmpp.ca_path)
        try:
            return await outcome_of(config)
        finally:
            server.close()

    first, attempts, _ = asyncio.run(scenario())
    assert first == TlsFailed("the server offers no STARTTLS") and attempts == 1
    assert b"<auth" not in received and b"secret" not in received


def test_a_server_that_stops_answering_pings_is_left_and_reconnected(xmpp_lab, monkeypatch):
    monkeypatch.setattr(xmpp, "PING_INTERVAL_S", 0.1)

    async def scenario():
        client, events = await online(account(xmpp_lab, "alice"))
        try:
            await asyncio.sleep(0.5)  # real pings, answered
            assert not events.of(Disconnected)

            async def unanswered(*args, **kwargs):
                raise slixmpp.exceptions.IqTimeout(None)

            monkeypatch.setattr(slixmpp.plugins.xep_0199.XEP_0199, "ping", unanswered)
            await events.until(lambda e: isinstance(e, Disconnected))
            monkeypatch.undo()
            await events.until_count(Connected, 2)
        finally:
            await client.stop()

    asyncio.run(scenario())


# --- messages ---------------------------------------------------------------------------------


def test_two_clients_exchange_messages_both_ways_with_receipts(xmpp_lab, caplog):
    caplog.set_level(logging.DEBUG)
    async def scenario():
        alice, alice_events = await online(account(xmpp_lab, "alice"))
        bob, bob_events = await online(account(xmpp_lab, "bob"))
        try:
            to_bob = alice.send(xmpp_lab.xmpp.jid("bob"), "hello bob ✓")
            received = await bob_events.until(lambda e: isinstance(e, MessageReceived) and e.message_id == to_bob)
            await alice_events.until(lambda e: e == Delivered(to_bob))
            to_alice = bob.send(xmpp_lab.xmpp.jid("alice"), "hi alice\nsecond line")
            back = await alice_events.until(lambda e: isinstance(e, MessageReceived) and e.message_id == to_alice)
            await bob_events.until(lambda e: e == Delivered(to_alice))
            assert alice.outbox == () and bob.outbox == ()
            return received, back
        finally:
            await alice.stop()
            await bob.stop()

    received, back = asyncio.run(scenario())
    assert received.from_jid == xmpp_lab.xmpp.jid("alice") + "/byline" and received.body == "hello bob ✓"
    assert back.from_jid == xmpp_lab.xmpp.jid("bob") + "/byline" and back.body == "hi alice\nsecond line"
    # Nothing private in the log: no password, address or body (slixmpp's stanza dumps stay off).
    for secret in (xmpp_lab.users["alice"], xmpp_lab.users["bob"], "@byline.lab", "hello bob", "127.0.0.1"):
        assert secret not in caplog.text
    assert "session started" in caplog.text


def test_a_message_to_one_resource_is_delivered_and_confirmed(xmpp_lab):
    async def scenario():
        alice, alice_events = await online(account(xmpp_lab, "alice"))
        bob, bob_events = await online(account(xmpp_lab, "bob"))
        try:
            with pytest.raises(XmppError, match="resource"):
                alice.send(xmpp_lab.xmpp.jid("bob") + "/", "no resource")
            to_bob = alice.send(xmpp_lab.xmpp.jid("bob") + "/byline", "for this device")
            received = await bob_events.until(lambda e: isinstance(e, MessageReceived) and e.message_id == to_bob)
            await alice_events.until(lambda e: e == Delivered(to_bob))
            return received
        finally:
            await alice.stop()
            await bob.stop()

    assert asyncio.run(scenario()).body == "for this device"


def test_messages_sent_while_the_connection_is_down_arrive_once_each(xmpp_lab, caplog):
    """Lab cannot restart Prosody on the same port, so the connection is cut under the client."""
    caplog.set_level(logging.INFO, logger="firmware.chat.xmpp")

    async def scenario():
        alice_config, bob_config = await new_account(xmpp_lab), await new_account(xmpp_lab)
        alice, alice_events = await online(alice_config)
        bob, bob_events = await online(bob_config)
        try:
            sent = [alice.send(bob_config.jid, "before the cut")]
            await alice_events.until(lambda e: e == Delivered(sent[0]))
            alice.drop_connection()
            sent.append(alice.send(bob_config.jid, "written into the dying connection"))
            await alice_events.until(lambda e: isinstance(e, Disconnected))
            sent += [alice.send(bob_config.jid, f"while down {n}") for n in range(3)]
            # Bob goes offline too: the server keeps what comes meanwhile (and repeats of it).
            await bob.stop()
            await alice_events.until_count(Connected, 2)
            sent.append(alice.send(bob_config.jid, "while bob is away"))
            alice.drop_connection()  # everything unconfirmed is sent again after this reconnect
            await alice_events.until_count(Connected, 3)
            await asyncio.sleep(0.2)
            bob, bob_events = await online(bob_config)
            for message_id in sent:
                await alice_events.until(lambda e, m=message_id: e == Delivered(m))
            await asyncio.sleep(QUIET_S)
            return sent, alice.outbox, alice_events, bob_events
        finally:
            await alice.stop()
            await bob.stop()

    sent, outbox, alice_events, bob_events = asyncio.run(scenario())
    assert outbox == ()
    received_ids = [event.message_id for event in bob_events.of(MessageReceived)]
    assert sorted(received_ids) == sorted(sent[1:])  # the first one went to the first bob session
    assert sorted(event.message_id for event in alice_events.of(Delivered)) == sorted(sent)  # each once
    # The server stored the resent copies for offline bob as well: the repeats were dropped by id.
    assert "dropped a repeated message" in caplog.text


# --- roster and subscriptions -----------------------------------------------------------------


def roster_entry(events, jid):
    changes = events.of(RosterChanged)
    if not changes:
        return None
    return next((item for item in changes[-1].items if item.jid == jid), None)


async def wait_roster(events, jid, expected):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if roster_entry(events, jid) == expected:
            return
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"roster entry for {jid}: {roster_entry(events, jid)} != {expected}")


@pytest.mark.parametrize("answer", ["authorize", "deny", "ignore"])
def test_subscription_request_and_each_answer_give_the_rfc_6121_roster_states(xmpp_lab, answer):
    async def scenario():
        alice_config, bob_config = await new_account(xmpp_lab), await new_account(xmpp_lab)
        alice, alice_events = await online(alice_config)
        bob, bob_events = await online(bob_config)
        try:
            await alice.add_contact(bob_config.jid, "Bob", "Friends")
            request = await bob_events.until(lambda e: isinstance(e, SubscriptionRequest))
            assert request == SubscriptionRequest(alice_config.jid)
            await wait_roster(alice_events, bob_config.jid,
                              RosterItem(bob_config.jid, "Bob", "Friends", "none", "subscribe"))
            getattr(bob, answer)(alice_config.jid)
            if answer == "authorize":
                await wait_roster(alice_events, bob_config.jid, RosterItem(bob_config.jid, "Bob", "Friends", "to", ""))
                await wait_roster(bob_events, alice_config.jid, RosterItem(alice_config.jid, "", "", "from", ""))
                await alice_events.until(lambda e: e == Presence(bob_config.jid, "byline", True))
            elif answer == "deny":
                await wait_roster(alice_events, bob_config.jid,
                                  RosterItem(bob_config.jid, "Bob", "Friends", "none", ""))
                assert roster_entry(bob_events, alice_config.jid) is None
            else:
                await asyncio.sleep(QUIET_S)
                assert roster_entry(alice_events, bob_config.jid) == RosterItem(
                    bob_config.jid, "Bob", "Friends", "none", "subscribe")
                assert roster_entry(bob_events, alice_config.jid) is None
        finally:
            await alice.stop()
            await bob.stop()

    asyncio.run(scenario())


# --- account management -----------------------------------------------------------------------


def test_in_band_registration_then_login_and_no_second_registration(xmpp_lab):
    async def scenario():
        config = await new_account(xmpp_lab)
        first, _, _ = await outcome_of(config)
        with pytest.raises(XmppError, match="already exists"):
            await register_account(config)
        return first

    assert asyncio.run(scenario()) == Connected()


def test_change_password_then_the_old_one_fails(xmpp_lab):
    async def scenario():
        config = await new_account(xmpp_lab)
        client, _ = await online(config)
        await client.change_password("new-" + uuid.uuid4().hex)
        new_config = client._config
        await client.stop()
        old, _, _ = await outcome_of(config)
        new, _, _ = await outcome_of(new_config)
        return old, new

    old, new = asyncio.run(scenario())
    assert old == AuthFailed() and new == Connected()


# --- hostile peers ----------------------------------------------------------------------------


async def raw_peer(lab, user):
    """A bare slixmpp client logged in as ``user``, for sending what the firmware never would."""
    client = slixmpp.ClientXMPP(lab.xmpp.jid(user) + "/raw", lab.users[user])
    client.enable_direct_tls = False
    client.ssl_context.load_verify_locations(lab.xmpp.ca_path)
    started = asyncio.get_running_loop().create_future()
    client.add_event_handler("session_start", lambda _: started.done() or started.set_result(True))
    client.connect(lab.xmpp.host, lab.xmpp.port)
    await asyncio.wait_for(started, WAIT_S)
    return client


def test_oversized_garbage_and_repeated_stanzas_do_not_crash_or_fool_the_client(xmpp_lab):
    async def scenario():
        events = Recorder()
        alice = XmppClient(account(xmpp_lab, "alice"), events, already_received=[(xmpp_lab.xmpp.jid("echo"), "old")])
        alice.start()
        await events.until(lambda e: isinstance(e, Connected))
        peer = await raw_peer(xmpp_lab, "echo")
        to = xmpp_lab.xmpp.jid("alice") + "/byline"
        pending = alice.send(xmpp_lab.xmpp.jid("bob"), "waiting for bob")  # bob is offline
        big = "x" * (xmpp.MAX_BODY_CHARS + 1)
        stanzas = [
            f"<message to='{to}' type='chat' id='big'><body>{big}</body></message>",
            f"<message to='{to}' type='headline' id='h'><body>headline</body></message>",
            f"<message to='{to}' type='normal' id='n'><body>normal</body></message>",
            f"<message to='{to}' type='error' id='e'><body>error</body></message>",
            f"<message to='{to}' type='chat' id='empty'><body/></message>",
            f"<message to='{to}' type='chat' id='nested'><body>a<b xmlns='x'>b</b>c</body></message>",
            f"<message to='{to}' type='chat' id='{'i' * 500}'><body>long id</body></message>",
            f"<message to='{to}' type='chat'><received xmlns='urn:xmpp:receipts' id='{pending}'/></message>",
            f"<message to='{to}' type='chat'><received xmlns='urn:xmpp:receipts'/></message>",
            f"<message to='{to}' type='chat' id='w'><weird xmlns='urn:nobody'><deep><deeper/></deep></weird></message>",
            f"<presence to='{to}'><priority>not a number</priority><show>sleepy</show></presence>",
            f"<presence to='{to}' type='bogus'/>",
            (f"<iq to='{to}' type='set' id='r1'><query xmlns='jabber:iq:roster'>"
             "<item jid='mallory@evil' subscription='both'/></query></iq>"),
            f"<iq to='{to}' type='result' id='unknown'><query xmlns='jabber:iq:roster'/></iq>",
            (f"<message to='{to}' type='chat' id='dup'><body>once</body>"
             "<request xmlns='urn:xmpp:receipts'/></message>"),
            (f"<message to='{to}' type='chat' id='dup'><body>once</body>"
             "<request xmlns='urn:xmpp:receipts'/></message>"),
            f"<message to='{to}' type='chat' id='old'><body>stored before a restart</body></message>",
            f"<message to='{to}' type='chat' id='last'><body>still alive</body></message>",
        ]
        for stanza in stanzas:
            peer.send_raw(stanza)
        try:
            await events.until(lambda e: isinstance(e, MessageReceived) and e.message_id == "last")
            await asyncio.sleep(0.2)
            assert alice.connected and alice.outbox == (pending,)  # the foreign receipt did not count
            return events, alice.roster
        finally:
            await alice.stop()
            await asyncio.wait_for(peer.disconnect(), WAIT_S)

    events, roster = asyncio.run(scenario())
    received = [(e.message_id, e.body) for e in events.of(MessageReceived)]
    # slixmpp reads a body's own text only: what follows a foreign child element is not part of it.
    assert received == [("nested", "a"), ("", "long id"), ("dup", "once"), ("last", "still alive")]
    assert not events.of(Delivered)
    assert all(item.jid != "mallory@evil" for item in roster)
