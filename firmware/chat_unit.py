"""The chat unit: XMPP accounts from the profile, OTR v3 on every conversation, an outbox that loses nothing.

Contract:

- ``show(state)`` keeps one session (an ``XmppClient`` and an ``OtrAccount``) per XMPP account of
  the unlocked profile that has a password; a locked-at-boot or wiped phone has none. How each
  stands comes back as AccountStatus (online, offline, failed: why).
- Encryption: an account's policy is "required" unless it allows plain messages
  (``Account.allow_plain``). Under "required" a message is never sent in the clear: it waits in
  the outbox (queued) while the unit asks the peer for a private conversation, and goes out
  encrypted once there is one. Every change of a conversation's security is posted at once as a
  ConversationChanged, so the screen always tells the truth.
- The outbox: every message typed is kept in the encrypted store (record ``chat-outbox:ADDRESS``)
  until the peer's client confirms it (XEP-0184), across reconnections and restarts. A message
  is queued, then sent, then delivered (ChatLineStatus).
- The OTR key, instance tag, known fingerprints and their trust, and the ids of received
  messages (so repeats are dropped after a restart) live in the store (record ``chat:ADDRESS``).
  A new account gets a key at once (ChatKey tells its fingerprint).
- Subscriptions: a request from someone among the contacts is authorised (the owner added
  them); any other is shown (SubscriptionAsked) and answered with Authorise, Deny or Ignore.
  A contact with a chat address that is not on the server's roster is added and asked for.
- Messages are kept (store history area) only with message history on; otherwise a
  conversation lives in memory while the phone runs.
- Nothing a peer sends can stop the unit: every handler is guarded; a bad message costs itself.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from drivers.errors import DeviceError
from firmware import effects as fx
from firmware.chat import otr as otr_events
from firmware.chat import xmpp as xmpp_events
from firmware.chat.otr import OtrAccount, OtrFailure
from firmware.chat.xmpp import (
    XmppAccountConfig,
    XmppClient,
    XmppError,
    register_account,
)
from firmware.config import Config
from firmware.profile import Account, split_server
from firmware.state import PhoneState
from firmware.store import StoreError
from firmware.store_unit import StoreAccess
from firmware.units import GuardedTasks, Unit

log = logging.getLogger(__name__)

XMPP_PORT = 5222
SEEN_IDS_STORED = 512
"""Received message ids kept in the store per account, so repeats are dropped after a restart."""
ACCOUNT_RECORD = "chat:{}"
OUTBOX_RECORD = "chat-outbox:{}"
HISTORY_PREFIX = "msg:"
OTR_POLL_S = 10.0
EXPECTED_FAILURES = (XmppError, OtrFailure)
"""What a request can meet in normal use (no connection, a refusal): said to the owner, no traceback."""
OTR_WHITESPACE_TAG = " \t  \t\t\t\t \t \t \t  "
"""The start of OTR's whitespace tag: a plain message that carries it makes libotr start the AKE itself."""


@dataclass
class _Outgoing:
    peer: str
    text: str = field(repr=False)
    when: float
    sent: bool = False


@dataclass
class _Session:
    account: Account
    client: XmppClient | None = None
    otr: OtrAccount | None = None
    outbox: OrderedDict = field(default_factory=OrderedDict)
    """Local message id -> _Outgoing, oldest first."""
    seen: deque = field(default_factory=lambda: deque(maxlen=SEEN_IDS_STORED))
    key_changed: set = field(default_factory=set)
    asks: dict = field(default_factory=dict)
    asked: set = field(default_factory=set)
    """Peers we asked for a private conversation since it was last up (one query each)."""
    views: dict = field(default_factory=dict)
    """Peer -> the ConversationView last posted (so a change is posted once, and every change is)."""
    roster: dict = field(default_factory=dict)
    present: dict = field(default_factory=dict)
    """Peer -> the resources (devices) it has online."""
    online: bool = False


class ChatUnit(Unit):
    name = "chat"
    section = "chat"
    performs = fx.CHAT_EFFECTS

    def __init__(self, config: Config, store: StoreAccess):
        self._config = config
        self._store = store
        self._post: Callable[[object], None] | None = None
        self._sessions: dict[str, _Session] = {}
        self._contacts: dict[str, tuple[str, str]] = {}
        self._history_on = False
        self._history_loaded = False
        self._tasks = GuardedTasks("chat: a request", self._request_failed, expected=EXPECTED_FAILURES)

    def start(self, post: Callable[[object], None]) -> None:
        if not otr_events.available():
            raise DeviceError("chat", "enabled", "libotr 4.1 is missing (Debian package libotr5)")
        self._post = post
        self._spawn(self._poll_otr())

    async def stop(self) -> None:
        self._tasks.cancel()
        for address in list(self._sessions):
            await self._close(self._sessions.pop(address))

    # The profile decides which sessions run.

    def show(self, state: PhoneState) -> None:
        profile = state.profile
        self._history_on = profile is not None and state.settings.message_history
        if profile is not None and not self._history_loaded:
            self._history_loaded = True
            if self._history_on:
                self._load_history()
        elif profile is None:
            self._history_loaded = False
        wanted = {a.address: a for a in state.accounts if a.kind == "xmpp" and a.password} if profile else {}
        self._contacts = {c.chat: (c.name, c.group) for c in state.profile.contacts if c.chat} if profile else {}
        for address, session in list(self._sessions.items()):
            account = wanted.get(address)
            # (A password changed on the server through this unit is already the session's own.)
            if account != session.account:
                self._spawn(self._close(self._sessions.pop(address)))  # gone now: a changed one reopens below
        for address, account in wanted.items():
            if address not in self._sessions:
                self._open(account)
        for session in self._sessions.values():
            if session.online:
                self._add_missing_contacts(session)

    def _open(self, account: Account) -> None:
        session = _Session(account)
        self._sessions[account.address] = session
        try:
            saved = self._load_account(account.address)
            session.otr = OtrAccount(
                account.address, "xmpp", private_key=saved["key"], instance_tag=saved["instag"],
                fingerprints=saved["fingerprints"], allow_plaintext=account.allow_plain,
                send=lambda to, text: self._transmit(session, to, text),
                on_event=lambda event: self._on_otr(session, event))
            session.seen.extend(saved["seen"])
            session.outbox.update(self._load_outbox(account.address))
            session.client = XmppClient(self._xmpp_config(account), lambda event: self._on_xmpp(session, event),
                                        already_received=tuple(session.seen))
        except (OtrFailure, XmppError, ValueError) as e:
            del self._sessions[account.address]
            if session.otr is not None:
                session.otr.close()
            self._post(fx.AccountStatus(account.address, f"failed: {e}"))
            return
        for message_id, outgoing in session.outbox.items():
            self._post(fx.ChatLineAdded(account.address, outgoing.peer,
                                        fx.ChatLine(outgoing.when, False, outgoing.text, "queued", message_id)))
        self._post(fx.AccountStatus(account.address, "connecting"))
        session.client.start()
        if session.otr.has_key:
            self._post(fx.ChatKey(account.address, session.otr.fingerprint()))
        else:
            self._spawn(self._new_key(session))

    @staticmethod
    async def _close(session: _Session) -> None:
        """Log out and free the OTR state of a session already taken out of ``_sessions``."""
        if session.client is not None:
            await session.client.stop()
        if session.otr is not None:
            session.otr.close()

    def _xmpp_config(self, account: Account) -> XmppAccountConfig:
        domain = account.address.partition("@")[2]
        host, port = split_server(account.server, domain, XMPP_PORT)
        ca_file = self._config["chat.ca_file"]
        return XmppAccountConfig(account.address, account.password, host=host, port=port,
                                 ca_path=None if account.tls_pin or not ca_file else ca_file,
                                 tls_pin=account.tls_pin or None)

    def _add_missing_contacts(self, session: _Session) -> None:
        for jid, (name, group) in self._contacts.items():
            if jid not in session.roster and jid != session.account.address:
                session.roster[jid] = "waiting"  # asked once; the server's roster push confirms it
                self._spawn(self._add_contact(session, jid, name, group))

    async def _add_contact(self, session: _Session, jid: str, name: str, group: str) -> None:
        try:
            await session.client.add_contact(jid, name, group)
        except XmppError as e:
            session.roster.pop(jid, None)
            self._post(fx.ChatFailed(f"contact not added: {e}"))

    # Requests.

    def perform(self, request) -> None:
        handler = {fx.SendChat: self._send, fx.SetEncryption: self._set_encryption,
                   fx.AnswerSubscription: self._answer_subscription, fx.TrustFingerprint: self._trust,
                   fx.Authenticate: self._authenticate, fx.AnswerAuthentication: self._answer_authentication,
                   fx.NewChatKey: self._replace_key, fx.RegisterAccount: self._register,
                   fx.ChangePassword: self._change_password}[type(request)]
        self._spawn(handler(request))

    def _session(self, address: str) -> _Session:
        session = self._sessions.get(address)
        if session is None:
            raise XmppError("that account is not connected")
        return session

    async def _send(self, request: fx.SendChat) -> None:
        session = self._session(request.account)
        message_id = uuid.uuid4().hex
        outgoing = _Outgoing(request.peer, request.text, time.time())
        session.outbox[message_id] = outgoing
        self._save_outbox(session)
        line = fx.ChatLine(outgoing.when, False, request.text, "queued", message_id)
        self._post(fx.ChatLineAdded(request.account, request.peer, line))
        self._keep(request.account, request.peer, line)
        self._flush(session, request.peer)

    async def _set_encryption(self, request: fx.SetEncryption) -> None:
        session = self._session(request.account)
        if request.on:
            session.asked.add(request.peer)
            session.otr.start(request.peer)
        else:
            session.otr.end(request.peer)
            self._notice(session, request.peer, "You ended encryption")
        self._publish(session, request.peer)

    async def _answer_subscription(self, request: fx.AnswerSubscription) -> None:
        client = self._session(request.account).client
        {"authorise": client.authorize, "deny": client.deny, "ignore": client.ignore}[request.answer](request.peer)

    async def _trust(self, request: fx.TrustFingerprint) -> None:
        session = self._session(request.account)
        if not session.otr.set_trust(request.peer, request.fingerprint, request.trusted):
            self._post(fx.ChatFailed("that fingerprint is not known"))
            return
        if request.trusted:
            session.key_changed.discard(request.peer)
        self._notice(session, request.peer, "Fingerprint verified" if request.trusted else "Fingerprint not verified")
        self._save_account(session)
        self._publish(session, request.peer)

    async def _authenticate(self, request: fx.Authenticate) -> None:
        session = self._session(request.account)
        if session.otr.smp_start(request.peer, request.secret, request.question):
            self._notice(session, request.peer, "Asked: " + request.question if request.question
                         else "Shared secret sent")

    async def _answer_authentication(self, request: fx.AnswerAuthentication) -> None:
        session = self._session(request.account)
        session.asks.pop(request.peer, None)
        session.otr.smp_respond(request.peer, request.secret)
        self._publish(session, request.peer)

    async def _new_key(self, session: _Session) -> None:
        fingerprint = await asyncio.to_thread(session.otr.generate_key)
        self._save_account(session)
        self._post(fx.ChatKey(session.account.address, fingerprint))

    async def _replace_key(self, request: fx.NewChatKey) -> None:
        await self._new_key(self._session(request.account))

    async def _register(self, request: fx.RegisterAccount) -> None:
        account = request.account
        try:
            await register_account(self._xmpp_config(account))
        except XmppError as e:
            self._post(fx.ChatFailed(f"not registered: {e}"))
            return
        self._post(fx.AccountRegistered(account))

    async def _change_password(self, request: fx.ChangePassword) -> None:
        session = self._session(request.account)
        try:
            await session.client.change_password(request.new)
        except XmppError as e:
            self._post(fx.ChatFailed(f"password not changed: {e}"))
            return
        session.account = replace(session.account, password=request.new)
        self._post(fx.PasswordChanged(request.account, request.new))

    # The outbox: queued until a private conversation (unless plain is allowed), then sent.

    def _flush(self, session: _Session, peer: str) -> None:
        otr = session.otr
        waiting = [(i, o) for i, o in session.outbox.items() if o.peer == peer and not o.sent]
        if not waiting:
            return
        state = otr.state(peer)
        if state != "encrypted" and not session.account.allow_plain:
            if state == "plaintext" and peer not in session.asked:
                session.asked.add(peer)
                otr.start(peer)
            return
        for message_id, outgoing in waiting:
            wire = otr.sending(peer, outgoing.text)
            if wire is None:
                return
            session.client.send(otr.route(peer), wire, message_id=message_id)
            outgoing.sent = True
            if session.client.connected:  # else it stays "queued" in the client until the server is back
                self._post(fx.ChatLineStatus(session.account.address, peer, message_id, "sent"))

    def _transmit(self, session: _Session, to: str, text: str) -> None:
        """What libotr injects (queries, key exchange, SMP): sent as it is."""
        if session.client is None:
            return
        try:
            session.client.send(to, text)
        except XmppError as e:
            log.warning("chat: an OTR message could not be sent (%s)", e)

    # Events from XMPP and OTR, on the loop.

    def _on_xmpp(self, session: _Session, event) -> None:
        if self._sessions.get(session.account.address) is not session:
            return
        try:
            self._handle_xmpp(session, event)
        except Exception:  # a peer's surprise costs one event, never the chat
            log.exception("chat: an XMPP event could not be handled")

    def _handle_xmpp(self, session: _Session, event) -> None:
        address = session.account.address
        if isinstance(event, xmpp_events.Connected):
            session.online = True
            self._post(fx.AccountStatus(address, "online"))
            self._add_missing_contacts(session)
            for peer in {o.peer for o in session.outbox.values()}:
                self._flush(session, peer)
        elif isinstance(event, xmpp_events.Disconnected):
            session.online = False
            self._post(fx.AccountStatus(address, "offline"))
            for peer in list(session.present):
                del session.present[peer]
                self._post(fx.PresenceShown(address, peer, False))
        elif isinstance(event, xmpp_events.Presence):
            devices = session.present.setdefault(event.jid, set())
            was = bool(devices)
            (devices.add if event.available else devices.discard)(event.resource)
            if bool(devices) != was:
                self._post(fx.PresenceShown(address, event.jid, bool(devices)))
            if not devices:
                del session.present[event.jid]
        elif isinstance(event, xmpp_events.AuthFailed):
            self._post(fx.AccountStatus(address, "failed: wrong password"))
        elif isinstance(event, xmpp_events.TlsFailed):
            self._post(fx.AccountStatus(address, f"failed: {event.reason}"))
        elif isinstance(event, xmpp_events.MessageReceived):
            self._received(session, event)
        elif isinstance(event, xmpp_events.Delivered):
            self._delivered(session, event.message_id)
        elif isinstance(event, xmpp_events.RosterChanged):
            session.roster = {item.jid: _standing(item) for item in event.items}
            self._post(fx.RosterShown(address, tuple(session.roster.items())))
        elif isinstance(event, xmpp_events.SubscriptionRequest):
            if event.jid in self._contacts:
                session.client.authorize(event.jid)
            else:
                self._post(fx.SubscriptionAsked(address, event.jid))

    def _received(self, session: _Session, event: xmpp_events.MessageReceived) -> None:
        peer = event.from_jid.split("/", 1)[0]
        if event.message_id:
            session.seen.append((peer, event.message_id))
            self._save_account(session)
        if OTR_WHITESPACE_TAG in event.body:
            session.asked.add(peer)  # libotr answers the tag with a key exchange: no query of ours too
        shown = session.otr.receiving(event.from_jid, event.body)
        self._publish(session, peer)  # whatever libotr did with it, the screen follows
        if shown is not None:
            # libotr hands back text only from a data message it decrypted, or a plain message as it came.
            status = "received" if event.body.startswith("?OTR:") else "plain"
            self._line(session, peer, fx.ChatLine(time.time(), True, shown, status, event.message_id))
        if session.otr.needs_save:
            self._save_account(session)

    def _delivered(self, session: _Session, message_id: str) -> None:
        outgoing = session.outbox.pop(message_id, None)
        if outgoing is None:
            return  # an OTR protocol message
        self._save_outbox(session)
        self._post(fx.ChatLineStatus(session.account.address, outgoing.peer, message_id, "delivered"))

    def _on_otr(self, session: _Session, event) -> None:
        if self._sessions.get(session.account.address) is not session:
            return
        try:
            self._handle_otr(session, event)
        except Exception:
            log.exception("chat: an OTR event could not be handled")

    def _handle_otr(self, session: _Session, event) -> None:
        peer = event.peer
        if isinstance(event, otr_events.Encrypted):
            session.asked.discard(peer)
            self._publish(session, peer)
            self._flush(session, peer)
        elif isinstance(event, otr_events.Ended):
            session.asked.discard(peer)
            self._notice(session, peer, "They ended encryption")
            self._publish(session, peer)
        elif isinstance(event, otr_events.FingerprintChanged):
            session.key_changed.add(peer)
            self._notice(session, peer, "KEY CHANGED: verify again")
            self._publish(session, peer)
        elif isinstance(event, otr_events.NewFingerprint):
            self._publish(session, peer)
        elif isinstance(event, otr_events.SmpQuestion):
            session.asks[peer] = event.question
            self._notice(session, peer, "Asks: " + event.question)
            self._publish(session, peer)
        elif isinstance(event, otr_events.SmpRequest):
            session.asks[peer] = ""
            self._notice(session, peer, "Asks for the shared secret")
            self._publish(session, peer)
        elif isinstance(event, otr_events.SmpResult):
            session.asks.pop(peer, None)
            if event.success and session.otr.trusted(peer):
                session.key_changed.discard(peer)
            self._notice(session, peer, "Authenticated" if event.success else "Authentication FAILED")
            self._publish(session, peer)
        elif isinstance(event, otr_events.Unencrypted):
            self._line(session, peer, fx.ChatLine(time.time(), True, event.text, "plain"))
            if peer not in session.asked:  # encryption is required here: ask for it at once
                session.asked.add(peer)
                session.otr.start(peer)
        elif isinstance(event, otr_events.OtrError):
            self._notice(session, peer, event.message)
        if session.otr.needs_save:
            self._save_account(session)

    def _publish(self, session: _Session, peer: str) -> None:
        otr = session.otr
        state = otr.state(peer)
        if state == "encrypted":
            security = ("verified" if otr.trusted(peer) else
                        "key_changed" if peer in session.key_changed else "encrypted")
        else:
            security = "finished" if state == "finished" else "plaintext"
        view = fx.ConversationView(session.account.address, peer, security, otr.peer_fingerprint(peer) or "",
                                   session.asks.get(peer))
        if session.views.get(peer) != view:
            session.views[peer] = view
            self._post(fx.ConversationChanged(view))

    def _notice(self, session: _Session, peer: str, text: str) -> None:
        self._line(session, peer, fx.ChatLine(time.time(), True, text, "notice"))

    def _line(self, session: _Session, peer: str, line: fx.ChatLine) -> None:
        self._post(fx.ChatLineAdded(session.account.address, peer, line))
        self._keep(session.account.address, peer, line)

    async def _poll_otr(self) -> None:
        while True:
            await asyncio.sleep(OTR_POLL_S)
            for session in list(self._sessions.values()):
                if session.otr is not None:
                    session.otr.poll()

    def _spawn(self, coroutine) -> None:
        self._tasks.spawn(coroutine)

    def _request_failed(self, error: Exception) -> None:
        expected = isinstance(error, EXPECTED_FAILURES)  # their messages are meant for the owner
        self._post(fx.ChatFailed(str(error) if expected else "chat: that did not work (see the log)"))

    # The store.

    def _load_account(self, address: str) -> dict:
        saved = {"key": None, "instag": None, "fingerprints": None, "seen": ()}
        raw = self._get(ACCOUNT_RECORD.format(address))
        if raw is None:
            return saved
        try:
            data = json.loads(raw)
            return {"key": _unb64(data["key"]), "instag": data["instag"], "fingerprints": _unb64(data["fingerprints"]),
                    "seen": tuple((str(p), str(i)) for p, i in data["seen"])}
        except (ValueError, KeyError, TypeError) as e:
            log.error("chat: the stored state of an account is damaged (%s); starting it afresh", type(e).__name__)
            return saved

    def _save_account(self, session: _Session) -> None:
        store = self._store.store
        if store is None or session.otr is None:
            return
        key, instag, fingerprints = session.otr.export_state()
        data = {"key": _b64(key), "instag": instag, "fingerprints": _b64(fingerprints), "seen": list(session.seen)}
        store.put(ACCOUNT_RECORD.format(session.account.address), json.dumps(data).encode())

    def _load_outbox(self, address: str) -> dict:
        raw = self._get(OUTBOX_RECORD.format(address))
        try:
            return {i: _Outgoing(str(m["peer"]), str(m["text"]), float(m["when"]))
                    for i, m in json.loads(raw).items()} if raw else {}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            log.error("chat: the stored outbox is damaged (%s)", type(e).__name__)
            return {}

    def _save_outbox(self, session: _Session) -> None:
        store = self._store.store
        if store is None:
            return
        data = {i: {"peer": o.peer, "text": o.text, "when": o.when} for i, o in session.outbox.items()}
        store.put(OUTBOX_RECORD.format(session.account.address), json.dumps(data).encode())

    def _get(self, name: str) -> bytes | None:
        store = self._store.store
        if store is None:
            return None
        try:
            return store.get(name)
        except KeyError:
            return None

    def _keep(self, account: str, peer: str, line: fx.ChatLine) -> None:
        store = self._store.store
        if not self._history_on or store is None:
            return
        name = f"{HISTORY_PREFIX}{line.when:.6f}:{uuid.uuid4().hex[:8]}"
        store.put_history(name, json.dumps({"account": account, "peer": peer, **line.to_dict()}).encode())

    def _load_history(self) -> None:
        store = self._store.store
        lines = []
        for name in store.history_names() if store is not None else ():
            if name.startswith(HISTORY_PREFIX):
                try:
                    data = json.loads(store.get_history(name))
                    lines.append((str(data["account"]), str(data["peer"]), fx.ChatLine.from_dict(data)))
                except (ValueError, KeyError, TypeError, StoreError) as e:
                    log.error("chat history: an entry cannot be read (%s)", type(e).__name__)
        lines.sort(key=lambda entry: entry[2].when)
        self._post(fx.ChatHistory(tuple(lines)))


def _standing(item: xmpp_events.RosterItem) -> str:
    if item.subscription in ("none", "from") and item.ask:
        return "waiting"
    return item.subscription


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text, validate=True)
