"""XMPP through slixmpp: the only module of the firmware that imports slixmpp.

It carries message bodies as text (OTR is done on top of it, elsewhere), the roster and
subscriptions, presence, and account management (XEP-0077 registration, password change).

Contracts:

- ``XmppClient`` lives on the asyncio loop that called ``start()``: its methods must be called on
  that loop's thread, and every event is handed to ``post`` on it through ``loop.call_soon``
  (never from inside a slixmpp handler), so ``post`` may call back into the client.
- TLS only: STARTTLS on the c2s port (``enable_direct_tls`` off), the server certificate verified
  against ``ca_path`` (or the system's CAs) and/or pinned by the SHA-256 of its DER (``tls_pin``).
  A server that offers no STARTTLS is left before anything is sent (``TlsFailed``); a pin
  mismatch is detected before the stream is even reopened, so no password ever goes out.
  ``TlsFailed`` and ``AuthFailed`` are final: the client does not retry (a new ``start()`` does).
- Reconnection: slixmpp does not reconnect by itself. Every lost session or failed attempt
  schedules a new connection (a fresh slixmpp client each time) after ``RECONNECT_FIRST_DELAY_S``,
  doubling up to ``RECONNECT_MAX_DELAY_S``, with up to ``RECONNECT_JITTER`` of random extra.
- Outbox and delivery: ``send()`` queues the message in memory and returns its id (the caller
  keeps its own copy; ``send(..., message_id=...)`` re-queues a persisted one under its id). Every
  message asks for an XEP-0184 receipt (end to end: Prosody 0.12 needs no module for it, and a
  receipt means the peer's client got it, which XEP-0198 acks from our server do not). The
  message stays in the outbox until the receipt from the addressee arrives (``Delivered``) and
  is sent again after every reconnection; the receiving side drops repeats by (sender, id), and
  acknowledges them again so that the sender stops. None lost, none duplicated. The ids seen are
  kept in memory (the newest ``SEEN_IDS_KEPT``); across restarts the caller hands in what its
  store holds (``already_received``).
- A network that silently went away is noticed by XEP-0199 pings every ``PING_INTERVAL_S``
  (unanswered within ``PING_TIMEOUT_S``: the connection is dropped and the reconnection starts).
- Peer input is bounded and checked: bodies over ``MAX_BODY_CHARS`` are dropped (not truncated:
  a cut OTR message is garbage), ids, names and resources are length-capped, only ``chat``
  messages are reported, and no handler lets an exception out.
- No password appears in a repr, a log line or an exception, and no JID or body in the log.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import random
import re
import ssl
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.stanza import StreamFeatures

log = logging.getLogger(__name__)
_slixmpp_log = logging.getLogger("slixmpp")
if _slixmpp_log.level == logging.NOTSET:
    # slixmpp logs every stanza (JIDs, bodies) at DEBUG and connection details at INFO: keep
    # them off the disk unless someone debugging asked for them by setting its level.
    _slixmpp_log.setLevel(logging.WARNING)

__all__ = [
    "AuthFailed",
    "Connected",
    "Delivered",
    "Disconnected",
    "MessageReceived",
    "Presence",
    "RosterChanged",
    "RosterItem",
    "SubscriptionRequest",
    "TlsFailed",
    "XmppAccountConfig",
    "XmppClient",
    "XmppError",
    "XmppEvent",
    "register_account",
]

RECONNECT_FIRST_DELAY_S = 0.5
"""The first retry after a lost session or a failed connection attempt."""
RECONNECT_FACTOR = 2.0
RECONNECT_MAX_DELAY_S = 60.0
"""The backoff never waits longer than this (plus jitter) between attempts."""
RECONNECT_JITTER = 0.25
"""Up to this fraction of the delay is added at random, so phones do not retry in lockstep."""
IQ_TIMEOUT_S = 10.0
STOP_GRACE_S = 2.0
PING_INTERVAL_S = 60.0
"""XEP-0199 keepalive: a network that silently went away is noticed within interval + timeout."""
PING_TIMEOUT_S = 20.0

MAX_BODY_CHARS = 65536
MAX_ID_CHARS = 128
MAX_NAME_CHARS = 128
MAX_RESOURCE_CHARS = 128
MAX_ROSTER_ITEMS = 2000
SEEN_IDS_KEPT = 4096
"""Received message ids remembered for deduplication (oldest forgotten first)."""

SUBSCRIPTIONS = ("none", "to", "from", "both")
BARE_JID_PATTERN = re.compile(r"[^@/\s\x00-\x1f\x7f\"&'<>:]{1,1023}@[A-Za-z0-9.-]{1,1023}")
RESOURCE_PATTERN = re.compile(r"[\x21-\x7e]{1,128}")
TLS_PIN_PATTERN = re.compile(r"[0-9a-fA-F]{64}")
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class XmppError(Exception):
    """An XMPP operation that cannot be done (bad argument, not connected, server refused)."""


# --- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class XmppAccountConfig:
    """One XMPP account. The password is never shown (not in repr, logs or exceptions).

    ``jid`` is the bare JID (``alice@example.org``); ``host``/``port`` where to connect (default: the
    JID's domain, 5222, STARTTLS). ``ca_path`` (PEM) is the CA to trust instead of the system's;
    ``tls_pin`` the SHA-256 (hex, colons allowed) of the server certificate's DER: with a pin and
    no CA, only the pin is checked; with both, both.
    """

    jid: str
    password: str = field(repr=False)
    host: str | None = None
    port: int = 5222
    ca_path: str | Path | None = None
    tls_pin: str | None = None
    resource: str = "byline"

    def __post_init__(self):
        if not isinstance(self.jid, str) or not BARE_JID_PATTERN.fullmatch(self.jid):
            raise XmppError("the account JID must be a bare JID user@domain")
        if not isinstance(self.password, str) or not self.password or CONTROL_CHARACTERS.search(self.password):
            raise XmppError("the password must be a non-empty printable string")
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise XmppError("the port must be 1-65535")
        if self.tls_pin is not None and not TLS_PIN_PATTERN.fullmatch(self.tls_pin.replace(":", "")):
            raise XmppError("tls_pin must be a SHA-256 in hex (64 digits)")
        if self.ca_path is not None and not Path(self.ca_path).is_file():
            raise XmppError("the CA file does not exist")
        if not RESOURCE_PATTERN.fullmatch(self.resource):
            raise XmppError("the resource must be 1-128 printable ASCII characters")

    @property
    def domain(self) -> str:
        return self.jid.split("@", 1)[1]

    @property
    def user(self) -> str:
        return self.jid.split("@", 1)[0]

    @property
    def pin(self) -> str | None:
        return None if self.tls_pin is None else self.tls_pin.replace(":", "").lower()


# --- events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class XmppEvent:
    """Base of everything ``XmppClient`` posts."""


@dataclass(frozen=True)
class Connected(XmppEvent):
    """The session is up (TLS verified, logged in, roster requested, presence sent)."""


@dataclass(frozen=True)
class Disconnected(XmppEvent):
    """The session is gone; unless ``stop()``, ``AuthFailed`` or ``TlsFailed``, a reconnection follows."""

    reason: str


@dataclass(frozen=True)
class AuthFailed(XmppEvent):
    """The server refused the password (final: no retry)."""


@dataclass(frozen=True)
class TlsFailed(XmppEvent):
    """The server could not be verified or offered no TLS (final: no retry)."""

    reason: str


@dataclass(frozen=True)
class RosterItem:
    """One roster entry as RFC 6121 gives it: ``subscription`` none/to/from/both, ``ask`` "subscribe" or ""."""

    jid: str
    name: str
    group: str
    subscription: str
    ask: str


@dataclass(frozen=True)
class RosterChanged(XmppEvent):
    """The whole roster after a change, sorted by JID."""

    items: tuple[RosterItem, ...]


@dataclass(frozen=True)
class SubscriptionRequest(XmppEvent):
    """``jid`` asks to see our presence: answer with ``authorize``, ``deny`` or ``ignore``."""

    jid: str


@dataclass(frozen=True)
class Presence(XmppEvent):
    jid: str
    resource: str
    available: bool


@dataclass(frozen=True)
class MessageReceived(XmppEvent):
    """A chat message, reported once per (sender, id); ``message_id`` is "" when the sender gave none."""

    from_jid: str
    body: str
    message_id: str


@dataclass(frozen=True)
class Delivered(XmppEvent):
    """The addressee's client confirmed ``message_id`` (XEP-0184); it left the outbox."""

    message_id: str


# --- TLS -------------------------------------------------------------------------------------


def _ssl_context(config: XmppAccountConfig) -> ssl.SSLContext:
    if config.ca_path is not None:
        context = ssl.create_default_context(cafile=str(config.ca_path))
    elif config.pin is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the pin, checked on "ssl_cert", is the verification
    else:
        context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _tls_reason(error) -> str:
    message = getattr(error, "verify_message", None) or getattr(error, "reason", None)
    return f"certificate not accepted: {message}" if message else "certificate not accepted"


def _new_slixmpp_client(config: XmppAccountConfig, password: str, *plugins: str) -> slixmpp.ClientXMPP:
    client = slixmpp.ClientXMPP(f"{config.jid}/{config.resource}", password)
    client.enable_direct_tls = False
    client.enable_starttls = True
    client.ssl_context = _ssl_context(config)
    for plugin in plugins:
        client.register_plugin(plugin)
    return client


class _TlsGuard:
    """Refuses streams without TLS and certificates that miss the pin; reports once through ``fail``."""

    def __init__(self, client: slixmpp.ClientXMPP, config: XmppAccountConfig, fail: Callable[[str], None]):
        self.client = client
        self.config = config
        self.fail = fail
        client.add_filter("in", self._check_features)
        client.add_event_handler("ssl_cert", self._check_pin)

    def _check_features(self, stanza):
        if isinstance(stanza, StreamFeatures):
            secure = isinstance(self.client.socket, (ssl.SSLSocket, ssl.SSLObject))
            if not secure and "starttls" not in stanza["features"]:
                self.client.cancel_connection_attempt()
                if self.client.transport is not None:
                    self.client.transport.abort()
                self.fail("the server offers no STARTTLS")
                return None
        return stanza

    def _check_pin(self, pem: str) -> None:
        pin = self.config.pin
        if pin is None:
            return
        try:
            digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()
        except Exception:  # noqa: BLE001 - a certificate that does not even parse misses the pin
            digest = ""
        if digest != pin:
            # connection_made() returns before writing the stream header once the attempt is gone.
            self.client.cancel_connection_attempt()
            if self.client.transport is not None:
                self.client.transport.abort()
            self.fail("the server certificate does not match the pin")


# --- the client ------------------------------------------------------------------------------


@dataclass
class _Outgoing:
    to: str
    body: str


class XmppClient:
    """One account's chat connection: ``start()``, ``send()``, roster commands, ``stop()``."""

    def __init__(
        self,
        config: XmppAccountConfig,
        post: Callable[[XmppEvent], None],
        already_received: Iterable[tuple[str, str]] = (),
    ):
        """``already_received``: (bare sender JID, message id) pairs the caller's store already holds
        (the newest ``SEEN_IDS_KEPT``), so that repeats of them are dropped after a restart too."""
        self._config = config
        self._post = post
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: slixmpp.ClientXMPP | None = None
        self._generation = 0
        self._running = False
        self._final = False
        self._session_up = False
        self._delay = RECONNECT_FIRST_DELAY_S
        self._retry: asyncio.TimerHandle | None = None
        self._keepalive: asyncio.Future | None = None
        self._outbox: collections.OrderedDict[str, _Outgoing] = collections.OrderedDict()
        self._seen: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict(
            ((str(sender), str(message_id)), None) for sender, message_id in already_received
        )
        while len(self._seen) > SEEN_IDS_KEPT:
            self._seen.popitem(last=False)
        self._roster: dict[str, RosterItem] = {}
        self.attempts = 0
        """Connection attempts made by this client so far (for tests and diagnostics)."""

    # --- lifecycle ---

    @property
    def connected(self) -> bool:
        return self._session_up

    @property
    def outbox(self) -> tuple[str, ...]:
        """Ids of the messages not yet confirmed, oldest first."""
        return tuple(self._outbox)

    @property
    def roster(self) -> tuple[RosterItem, ...]:
        return tuple(sorted(self._roster.values(), key=lambda item: item.jid))

    def start(self) -> None:
        """Connect on the running loop; reconnects by itself until ``stop()`` or a final failure."""
        if self._running:
            raise XmppError("the client was already started")
        self._loop = asyncio.get_running_loop()
        self._running = True
        self._final = False
        self._delay = RECONNECT_FIRST_DELAY_S
        self._connect()

    async def stop(self) -> None:
        """Close the session (politely, at most ``STOP_GRACE_S``) and stop reconnecting; idempotent."""
        was_up = self._session_up
        self._running = False
        self._cancel_retry()
        client, self._client = self._client, None
        self._generation += 1  # what the old client still reports is ignored
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        self._session_up = False
        if client is not None:
            await _close(client)
        if was_up:
            self._emit(Disconnected("stopped"))

    def drop_connection(self) -> None:
        """Cut the TCP connection abruptly, as a network failure would (tests, diagnostics)."""
        if self._client is not None and self._client.transport is not None:
            self._client.transport.abort()

    def _connect(self) -> None:
        self._retry = None
        if not self._running or self._final:
            return
        self._generation += 1
        generation = self._generation
        self.attempts += 1
        config = self._config
        client = _new_slixmpp_client(config, config.password, "xep_0030", "xep_0077", "xep_0184", "xep_0199")
        client.plugin["xep_0184"].auto_ack = False
        client.plugin["xep_0184"].auto_request = False
        client.roster.auto_authorize = None  # the application answers subscription requests
        client.roster.auto_subscribe = False
        self._client = client

        def current(handler):
            def guarded(data=None):
                if generation != self._generation:
                    return None
                try:
                    return handler(client, data)
                except Exception:
                    log.exception("xmpp: a handler failed (ignored)")
                    return None

            return guarded

        async def session_start(data):
            if generation == self._generation:
                await self._on_session_start(client, generation)

        _TlsGuard(client, config, current(lambda _client, reason: self._fail_tls(reason)))
        client.add_event_handler("session_start", session_start)
        client.add_event_handler("failed_all_auth", current(self._on_auth_failed))
        client.add_event_handler("ssl_invalid_chain", current(lambda c, e: self._fail_tls(_tls_reason(e))))
        client.add_event_handler("connection_failed", current(self._on_connection_failed))
        client.add_event_handler("disconnected", current(self._on_disconnected))
        client.add_event_handler("message", current(self._on_message))
        client.add_event_handler("receipt_received", current(self._on_receipt))
        client.add_event_handler("roster_update", current(self._on_roster_update))
        client.add_event_handler("roster_subscription_request", current(self._on_subscription_request))
        client.add_event_handler("presence_available", current(lambda c, p: self._on_presence(p, True)))
        client.add_event_handler("presence_unavailable", current(lambda c, p: self._on_presence(p, False)))
        log.info("xmpp: connecting (attempt %d)", self.attempts)
        client.connect(config.host or config.domain, config.port)

    def _schedule_reconnect(self) -> None:
        if not self._running or self._final or self._retry is not None:
            return
        delay = self._delay * (1 + random.uniform(0, RECONNECT_JITTER))
        self._delay = min(self._delay * RECONNECT_FACTOR, RECONNECT_MAX_DELAY_S)
        log.info("xmpp: reconnecting in %.1f s", delay)
        self._retry = self._loop.call_later(delay, self._connect)

    def _cancel_retry(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    def _end_attempt(self, client: slixmpp.ClientXMPP) -> None:
        """Make ``client`` history: its further events are ignored, its connection dropped."""
        self._generation += 1
        client.cancel_connection_attempt()
        if client.transport is not None:
            client.transport.abort()
        _retire(client)

    def _lost_session(self, reason: str) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        if self._session_up:
            self._session_up = False
            self._emit(Disconnected(reason))

    def _fail_tls(self, reason: str) -> None:
        self._final = True
        client = self._client
        if client is not None:
            self._end_attempt(client)
        self._lost_session("TLS failed")
        log.warning("xmpp: TLS failed: %s", reason)
        self._emit(TlsFailed(reason))

    def _on_auth_failed(self, client, _data) -> None:
        self._final = True
        self._end_attempt(client)
        log.warning("xmpp: the server refused the password")
        self._emit(AuthFailed())

    def _on_connection_failed(self, client, _error) -> None:
        log.info("xmpp: connection attempt failed")
        self._end_attempt(client)  # slixmpp's own retry loop is not used
        self._schedule_reconnect()

    def _on_disconnected(self, client, _reason) -> None:
        # The generation stays: "ssl_invalid_chain" can follow "disconnected" and must count.
        self._lost_session("connection lost")
        _retire(client)
        log.info("xmpp: disconnected")
        self._schedule_reconnect()

    async def _on_session_start(self, client: slixmpp.ClientXMPP, generation: int) -> None:
        try:
            client.send_presence()
            await client.get_roster(timeout=IQ_TIMEOUT_S)
        except (IqError, IqTimeout):
            log.warning("xmpp: the roster could not be fetched")
        except Exception:
            log.exception("xmpp: session start failed")
        if generation != self._generation:
            return
        self._session_up = True
        self._delay = RECONNECT_FIRST_DELAY_S
        log.info("xmpp: session started; %d message(s) to (re)send", len(self._outbox))
        self._emit(Connected())
        for message_id, outgoing in list(self._outbox.items()):
            self._transmit(message_id, outgoing)
        self._keepalive = asyncio.ensure_future(self._ping_forever(client, generation))

    async def _ping_forever(self, client: slixmpp.ClientXMPP, generation: int) -> None:
        """XEP-0199 pings to the server; no answer in time means the network is gone: drop and reconnect.

        (slixmpp's own keepalive would reconnect the same client behind our back.)
        """
        while generation == self._generation:
            await asyncio.sleep(PING_INTERVAL_S)
            if generation != self._generation:
                return
            try:
                await client.plugin["xep_0199"].ping(self._config.domain, timeout=PING_TIMEOUT_S)
            except IqTimeout:
                if generation == self._generation and client.transport is not None:
                    log.info("xmpp: the server stopped answering pings")
                    client.transport.abort()
                return
            except IqError:
                pass  # an error answer is still an answer
            except Exception:  # noqa: BLE001 - the session is gone; its disconnection is handled elsewhere
                return

    def _emit(self, event: XmppEvent) -> None:
        self._loop.call_soon(self._deliver, event)

    def _deliver(self, event: XmppEvent) -> None:
        try:
            self._post(event)
        except Exception:
            log.exception("xmpp: the event handler failed on %s", type(event).__name__)

    # --- messages ---

    def send(self, to_jid: str, body: str, message_id: str | None = None) -> str:
        """Queue ``body`` for ``to_jid``; sent now if connected, else after connecting. Returns its id.

        ``to_jid`` is a bare JID, or a full one (user@domain/resource) where one device must get
        it: OTR talks to one instance of a contact logged in on several.
        """
        to = _checked_addressee(to_jid)
        if not isinstance(body, str) or not body or len(body) > MAX_BODY_CHARS:
            raise XmppError(f"the body must be 1-{MAX_BODY_CHARS} characters")
        if message_id is None:
            message_id = uuid.uuid4().hex
        elif not isinstance(message_id, str) or not _valid_id(message_id):
            raise XmppError(f"the message id must be 1-{MAX_ID_CHARS} printable ASCII characters")
        outgoing = _Outgoing(to, body)
        self._outbox[message_id] = outgoing
        if self._session_up:
            self._transmit(message_id, outgoing)
        return message_id

    def _transmit(self, message_id: str, outgoing: _Outgoing) -> None:
        client = self._client
        if client is None:
            return
        message = client.make_message(mto=outgoing.to, mbody=outgoing.body, mtype="chat")
        message["id"] = message_id
        message["request_receipt"] = True
        message.send()

    def _on_receipt(self, client, message) -> None:
        message_id = str(message["receipt"] or "")
        outgoing = self._outbox.get(message_id)
        if outgoing is None or message["from"].bare != outgoing.to.split("/", 1)[0]:
            return  # unknown, repeated, or a receipt from someone else than the addressee
        del self._outbox[message_id]
        self._emit(Delivered(message_id))

    def _on_message(self, client, message) -> None:
        if message["type"] != "chat":
            return
        body = message["body"]
        if not isinstance(body, str) or not body:
            return  # receipts, chat states and the like
        sender = message["from"]
        bare = sender.bare
        if not bare or bare == self._config.jid and sender.resource == self._config.resource:
            return
        if len(body) > MAX_BODY_CHARS:
            log.warning("xmpp: dropped an oversized message (%d characters)", len(body))
            return
        message_id = message["id"] or ""
        if not _valid_id(message_id):
            message_id = ""
        if message_id:
            key = (bare, message_id)
            repeated = key in self._seen
            if not repeated:
                self._seen[key] = None
                while len(self._seen) > SEEN_IDS_KEPT:
                    self._seen.popitem(last=False)
            if message["request_receipt"]:
                receipt = client.Message()
                receipt["to"] = sender
                receipt["type"] = "chat"
                receipt["receipt"] = message_id
                receipt.send()
            if repeated:
                log.info("xmpp: dropped a repeated message")
                return
        resource = sender.resource[:MAX_RESOURCE_CHARS]
        self._emit(MessageReceived(f"{bare}/{resource}" if resource else bare, body, message_id))

    # --- roster and presence ---

    def _on_roster_update(self, client, iq) -> None:
        if iq["type"] not in ("result", "set"):
            return
        items = iq["roster"]["items"]
        if iq["type"] == "result":
            self._roster = {}
        for jid, fields in list(items.items())[:MAX_ROSTER_ITEMS]:
            bare = jid.bare if hasattr(jid, "bare") else str(jid)
            subscription = fields.get("subscription") or "none"
            if subscription == "remove":
                self._roster.pop(bare, None)
                continue
            if subscription not in SUBSCRIPTIONS:
                subscription = "none"
            groups = sorted(fields.get("groups") or [])
            ask = "subscribe" if fields.get("ask") == "subscribe" else ""
            self._roster[bare] = RosterItem(
                bare, (fields.get("name") or "")[:MAX_NAME_CHARS], (groups[0] if groups else "")[:MAX_NAME_CHARS],
                subscription, ask,
            )
            if len(self._roster) > MAX_ROSTER_ITEMS:
                self._roster.pop(bare)
        self._emit(RosterChanged(self.roster))

    def _on_subscription_request(self, client, presence) -> None:
        bare = presence["from"].bare
        if bare and bare != self._config.jid:
            self._emit(SubscriptionRequest(bare))

    def _on_presence(self, presence, available: bool) -> None:
        sender = presence["from"]
        if not sender.bare or (sender.bare == self._config.jid and sender.resource == self._config.resource):
            return
        self._emit(Presence(sender.bare, sender.resource[:MAX_RESOURCE_CHARS], available))

    def _session_client(self) -> slixmpp.ClientXMPP:
        if not self._session_up or self._client is None:
            raise XmppError("not connected")
        return self._client

    async def add_contact(self, jid: str, name: str = "", group: str = "") -> None:
        """Put ``jid`` on the roster (with ``name`` and ``group``) and ask to see its presence."""
        bare = _checked_bare_jid(jid)
        for text in (name, group):
            if not isinstance(text, str) or len(text) > MAX_NAME_CHARS or CONTROL_CHARACTERS.search(text):
                raise XmppError(f"names and groups must be printable, at most {MAX_NAME_CHARS} characters")
        client = self._session_client()
        try:
            await client.update_roster(bare, name=name, groups=[group] if group else [], timeout=IQ_TIMEOUT_S)
        except (IqError, IqTimeout):
            raise XmppError("the server refused the roster change") from None
        client.send_presence(pto=bare, ptype="subscribe")

    def authorize(self, jid: str) -> None:
        """Let ``jid`` see our presence (answer to its ``SubscriptionRequest``)."""
        self._session_client().send_presence(pto=_checked_bare_jid(jid), ptype="subscribed")

    def deny(self, jid: str) -> None:
        """Refuse ``jid``'s subscription request (or end an existing one)."""
        self._session_client().send_presence(pto=_checked_bare_jid(jid), ptype="unsubscribed")

    def ignore(self, jid: str) -> None:
        """Leave ``jid``'s request unanswered: it stays pending (its ask stays "subscribe")."""
        _checked_bare_jid(jid)

    # --- account ---

    async def change_password(self, new_password: str) -> None:
        """Set a new password on the server (XEP-0077); later reconnections use it."""
        new_config = replace(self._config, password=new_password)  # validates it
        client = self._session_client()
        try:
            await client.plugin["xep_0077"].change_password(new_password, jid=self._config.domain, timeout=IQ_TIMEOUT_S)
        except (IqError, IqTimeout):
            raise XmppError("the server refused the new password") from None
        self._config = new_config
        client.password = new_password
        client.credentials["password"] = new_password
        log.info("xmpp: password changed")


async def register_account(config: XmppAccountConfig, timeout: float = IQ_TIMEOUT_S) -> None:
    """Create ``config``'s account on its server by XEP-0077 in-band registration (over verified TLS).

    ``XmppError`` when the server refuses (the name is taken, registration is closed), TLS fails,
    or it does not answer within ``timeout``.
    """
    client = _new_slixmpp_client(config, config.password, "xep_0030", "xep_0077")
    client.plugin["xep_0077"].create_account = True
    outcome: asyncio.Future = asyncio.get_running_loop().create_future()

    def finish(error: str | None) -> None:
        if not outcome.done():
            outcome.set_result(error)

    async def on_register(_form) -> None:
        iq = client.Iq()
        iq["type"] = "set"
        iq["register"]["username"] = config.user
        iq["register"]["password"] = config.password
        try:
            await iq.send(timeout=timeout)
        except IqError as error:
            condition = error.iq["error"]["condition"]
            finish("the account already exists" if condition == "conflict" else "the server refused the registration")
        except IqTimeout:
            finish("the server did not answer the registration")
        else:
            finish(None)

    def on_tls_failure(reason: str) -> None:
        finish(f"TLS failed: {reason}")

    _TlsGuard(client, config, on_tls_failure)
    client.add_event_handler("register", on_register)
    client.add_event_handler("ssl_invalid_chain", lambda error: on_tls_failure(_tls_reason(error)))
    client.add_event_handler("connection_failed", lambda _error: finish("no connection to the server"))
    client.add_event_handler("failed_all_auth", lambda _data: finish("the server offers no registration"))
    client.add_event_handler("session_start", lambda _data: finish("the server offers no registration"))
    client.connect(config.host or config.domain, config.port)
    try:
        error = await asyncio.wait_for(outcome, timeout)
    except TimeoutError:
        error = "the server did not answer"
    finally:
        await _close(client)
    if error is not None:
        raise XmppError(error)
    log.info("xmpp: account registered")


XmppClient.register_account = staticmethod(register_account)  # also reachable as XmppClient.register_account


async def _close(client: slixmpp.ClientXMPP) -> None:
    """End ``client``'s connection politely (at most STOP_GRACE_S), else cut it; then retire it."""
    client.cancel_connection_attempt()
    if client.transport is not None:
        try:
            await asyncio.wait_for(client.disconnect(wait=STOP_GRACE_S), STOP_GRACE_S + 0.5)
        except Exception:  # noqa: BLE001 - timed out or already broken: cut it
            client.abort()
    _retire(client)


def _retire(client: slixmpp.ClientXMPP) -> None:
    """Stop a used-up client's send-queue task (next turn of the loop): it holds the client forever."""
    task = getattr(client, "_run_out_filters", None)
    if task is not None and not task.done():
        asyncio.get_running_loop().call_soon(task.cancel)


def _valid_id(text: str) -> bool:
    return isinstance(text, str) and 0 < len(text) <= MAX_ID_CHARS and RESOURCE_PATTERN.fullmatch(text) is not None


def _checked_addressee(jid: str) -> str:
    """A bare JID, or a bare JID with a resource."""
    bare, slash, resource = jid.partition("/") if isinstance(jid, str) else ("", "", "")
    _checked_bare_jid(bare)
    if slash and not RESOURCE_PATTERN.fullmatch(resource):
        raise XmppError("a resource must be 1-128 printable ASCII characters")
    return jid


def _checked_bare_jid(jid: str) -> str:
    if not isinstance(jid, str) or not BARE_JID_PATTERN.fullmatch(jid):
        raise XmppError("a contact must be a bare JID user@domain")
    return jid
