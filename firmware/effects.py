"""What the state machine asks the outside world to do, and the answers that come back as events.

Contract: :func:`firmware.state.step` stays pure by returning requests (effects) in
``PhoneState.effects``; the supervisor takes them out after each step and hands each to the one
running unit that performs its type. The unit does the work off the event loop and posts one of
the result events below. Secrets travel in fields that never appear in a repr.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from firmware.profile import Profile, WifiNetwork

# Requests to the encrypted store (performed in order, one at a time, by firmware.store_unit).


@dataclass(frozen=True)
class CreateStore:
    secret: str = field(repr=False)


@dataclass(frozen=True)
class Unlock:
    secret: str = field(repr=False)


@dataclass(frozen=True)
class VerifySecret:
    """The lock screen's check: the store stays open; the answer is SecretAccepted or SecretRefused."""

    secret: str = field(repr=False)


@dataclass(frozen=True)
class ChangeSecret:
    current: str = field(repr=False)
    new: str = field(repr=False)


@dataclass(frozen=True)
class SetDuress:
    """Set (``duress`` given) or clear (None) the duress PIN; ``current`` is the owner's PIN."""

    current: str = field(repr=False)
    duress: str | None = field(repr=False)


@dataclass(frozen=True)
class SaveProfilePart:
    part: str
    value: Any = field(repr=False)


@dataclass(frozen=True)
class EraseHistory:
    pass


STORE_EFFECTS = (CreateStore, Unlock, VerifySecret, ChangeSecret, SetDuress, SaveProfilePart, EraseHistory)

# Answers (events posted back to the supervisor).


@dataclass(frozen=True)
class StoreOpened:
    """At start: whether a store exists, the protection in force and the shortest secret allowed."""

    exists: bool
    protection: str
    min_secret_length: int


@dataclass(frozen=True)
class Unlocked:
    """The store is open; ``problems`` name records that could not be read (the rest loaded)."""

    profile: Profile = field(repr=False)
    duress_set: bool = False
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class SecretAccepted:
    """A VerifySecret, ChangeSecret or SetDuress request succeeded."""


@dataclass(frozen=True)
class SecretRefused:
    """The secret was not accepted (or not tried): ``message`` for the screen, ``wait_s`` before a retry."""

    message: str
    wait_s: float = 0.0


@dataclass(frozen=True)
class FactoryFresh:
    """There is no store any more. ``message`` is empty after a duress PIN: the phone just looks new."""

    message: str = ""


@dataclass(frozen=True)
class Saved:
    """A SaveProfilePart or EraseHistory request was written durably; ``message`` says what."""

    message: str


@dataclass(frozen=True)
class StoreFailed:
    """A request could not be done; ``message`` says what and why (no secret in it)."""

    message: str


@dataclass(frozen=True)
class Unavailable:
    """No running unit performs ``request`` (its unit is disabled: ``reason`` says why)."""

    request: str
    reason: str


STORE_RESULTS = (StoreOpened, Unlocked, SecretAccepted, SecretRefused, FactoryFresh, Saved, StoreFailed)

# Requests to the calls unit (firmware/call_unit.py).


@dataclass(frozen=True)
class PlaceCall:
    account: str
    """The address of the SIP account to call from."""
    uri: str


@dataclass(frozen=True)
class AnswerCall:
    call_id: str


@dataclass(frozen=True)
class EndCall:
    """Hang up, cancel, or reject an incoming call."""

    call_id: str


@dataclass(frozen=True)
class VerifySas:
    """The two people compared the SAS: ``verified`` True (it matched) or False (it did not)."""

    call_id: str
    verified: bool


@dataclass(frozen=True)
class SendDtmf:
    """A key pressed during a connected call, for the far end (RFC 4733)."""

    call_id: str
    digit: str


@dataclass(frozen=True)
class HoldCall:
    call_id: str
    hold: bool


@dataclass(frozen=True)
class MuteCall:
    call_id: str
    mute: bool


CALL_EFFECTS = (PlaceCall, AnswerCall, EndCall, VerifySas, SendDtmf, HoldCall, MuteCall)

# Answers from the calls unit.

CallPhase = Literal["calling", "ringing", "incoming", "connected", "ended"]
CallSecurity = Literal["pending", "secure", "verified", "key_changed", "not_encrypted", "failed"]


@dataclass(frozen=True)
class CallView:
    """What the phone shows of one call; the calls unit sends a new one on every change.

    ``security``: pending (ZRTP under way), secure (keyed, SAS not compared), verified (compared on
    this or an earlier call), key_changed (the peer's key differs from the one compared before),
    not_encrypted (no ZRTP: only possible where the account allows plain calls), failed.
    """

    call_id: str
    peer: str
    incoming: bool
    phase: CallPhase
    security: CallSecurity = "pending"
    sas: str = ""
    reason: str = ""
    held: bool = False
    muted: bool = False
    answered: bool = False
    """The call was connected (an incoming call that ends unanswered and not declined is missed)."""


@dataclass(frozen=True)
class CallChanged:
    call: CallView


@dataclass(frozen=True)
class AccountStatus:
    """How an account's registration stands: "registering", "registered" or "failed: why"."""

    address: str
    status: str


@dataclass(frozen=True)
class CallRecord:
    """One line of the call log (kept only with call history on, only in the encrypted store)."""

    when: float
    peer: str
    incoming: bool
    outcome: str
    """answered, missed, declined or failed."""
    security: str

    def to_dict(self) -> dict:
        return {"when": self.when, "peer": self.peer, "incoming": self.incoming, "outcome": self.outcome,
                "security": self.security}

    @classmethod
    def from_dict(cls, data: dict) -> "CallRecord":
        return cls(float(data["when"]), str(data["peer"]), bool(data["incoming"]), str(data["outcome"]),
                   str(data["security"]))


@dataclass(frozen=True)
class CallLogged:
    """Entries for the call log: all of them at unlock, then one per ended call."""

    entries: tuple[CallRecord, ...]


@dataclass(frozen=True)
class LabOffer:
    """The simulator's local lab: an account and contacts for it (alice, bob, echo), replacing
    any from an earlier lab (same ``host``, a lab user name) since each lab has new ports and
    passwords. Merged into the profile once it is unlocked."""

    host: str
    users: frozenset[str]
    accounts: tuple = field(repr=False)
    contacts: tuple = ()
    domain: str = ""
    """The lab's XMPP domain (its chat addresses are user@domain)."""

# Requests to the chat unit (firmware/chat_unit.py). ``account`` is the XMPP account's address,
# ``peer`` a contact's bare XMPP address.


@dataclass(frozen=True)
class SendChat:
    account: str
    peer: str
    text: str = field(repr=False)


@dataclass(frozen=True)
class SetEncryption:
    """Start (``on``) or end the private (OTR) conversation with ``peer``."""

    account: str
    peer: str
    on: bool


@dataclass(frozen=True)
class AnswerSubscription:
    """``peer`` asked to see our presence: authorise, deny, or ignore (leave it pending)."""

    account: str
    peer: str
    answer: Literal["authorise", "deny", "ignore"]


@dataclass(frozen=True)
class TrustFingerprint:
    """The owner compared ``fingerprint`` with the peer's own (by other means) and says it matches or not."""

    account: str
    peer: str
    fingerprint: str
    trusted: bool


@dataclass(frozen=True)
class Authenticate:
    """Start OTR's SMP: with ``question`` (the peer sees it and types the answer) or, None, a shared secret."""

    account: str
    peer: str
    secret: str = field(repr=False)
    question: str | None = None


@dataclass(frozen=True)
class AnswerAuthentication:
    account: str
    peer: str
    secret: str = field(repr=False)


@dataclass(frozen=True)
class NewChatKey:
    """Replace the account's OTR key (every contact then sees a changed key)."""

    account: str


@dataclass(frozen=True)
class RegisterAccount:
    """Create ``account`` on its XMPP server (XEP-0077); AccountRegistered or ChatFailed answers."""

    account: Any = field(repr=False)


@dataclass(frozen=True)
class ChangePassword:
    """Set a new password on the XMPP server; PasswordChanged or ChatFailed answers."""

    account: str
    new: str = field(repr=False)


CHAT_EFFECTS = (SendChat, SetEncryption, AnswerSubscription, TrustFingerprint, Authenticate, AnswerAuthentication,
                NewChatKey, RegisterAccount, ChangePassword)

# Answers from the chat unit.

ChatSecurity = Literal["plaintext", "encrypted", "verified", "key_changed", "finished"]
LineStatus = Literal["queued", "sent", "delivered", "received", "plain", "notice"]


@dataclass(frozen=True)
class ChatLine:
    """One line of a conversation. ``status``: an outgoing message is queued (waiting for a private
    conversation or the server), sent, then delivered (the peer's client confirmed it); an incoming
    one was received encrypted, or arrived as plain text (shown flagged); a notice is the phone
    speaking (key changed, authenticated...)."""

    when: float
    incoming: bool
    text: str = field(repr=False)
    status: LineStatus
    message_id: str = ""

    def to_dict(self) -> dict:
        return {"when": self.when, "incoming": self.incoming, "text": self.text, "status": self.status,
                "id": self.message_id}

    @classmethod
    def from_dict(cls, data: dict) -> "ChatLine":
        status = str(data["status"])
        if status not in ("queued", "sent", "delivered", "received", "plain", "notice"):
            raise ValueError("unknown line status")
        return cls(float(data["when"]), bool(data["incoming"]), str(data["text"]), status, str(data.get("id", "")))


@dataclass(frozen=True)
class ConversationView:
    """How a conversation stands. ``security``: plaintext (no private conversation), encrypted (OTR,
    the peer's key not verified), verified, key_changed (a known contact's key changed: not
    verified until checked again), finished (the peer ended it: nothing is sent until restarted).
    ``asks``: the peer's pending SMP question ("" for a shared secret, None when nothing is asked)."""

    account: str
    peer: str
    security: ChatSecurity = "plaintext"
    fingerprint: str = ""
    asks: str | None = None


@dataclass(frozen=True)
class ConversationChanged:
    view: ConversationView


@dataclass(frozen=True)
class ChatLineAdded:
    account: str
    peer: str
    line: ChatLine


@dataclass(frozen=True)
class ChatLineStatus:
    account: str
    peer: str
    message_id: str
    status: LineStatus


@dataclass(frozen=True)
class ChatHistory:
    """The kept conversations (message history on), read from the store at unlock: (account, peer, line)."""

    lines: tuple[tuple[str, str, ChatLine], ...] = field(repr=False)


@dataclass(frozen=True)
class ChatKey:
    """The account's own OTR fingerprint (five groups of eight hex digits)."""

    account: str
    fingerprint: str


@dataclass(frozen=True)
class SubscriptionAsked:
    account: str
    peer: str


@dataclass(frozen=True)
class RosterShown:
    """Each roster entry's standing: both, from (they see us), to (we see them), waiting (we asked,
    no answer yet), none (refused or ended)."""

    account: str
    entries: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class PresenceShown:
    """``peer`` has at least one device online (``available``) or none."""

    account: str
    peer: str
    available: bool


@dataclass(frozen=True)
class AccountRegistered:
    account: Any = field(repr=False)


@dataclass(frozen=True)
class PasswordChanged:
    address: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class ChatFailed:
    """A chat request could not be done: ``message`` says what and why (no secret in it)."""

    message: str


# Requests to the network unit (firmware/network_unit.py).


@dataclass(frozen=True)
class ScanWifi:
    """Look for Wi-Fi networks; answered by WifiScanned or NetworkFailed."""


@dataclass(frozen=True)
class JoinWifi:
    """Make the key for network ``ssid`` from ``passphrase`` (None: an open network); answered by
    WifiKeyMade (the state keeps the network, and the unit joins what the profile lists)."""

    ssid: bytes
    passphrase: str | None = field(default=None, repr=False)


NETWORK_EFFECTS = (ScanWifi, JoinWifi)

# What the network unit tells.


@dataclass(frozen=True)
class WifiSeen:
    ssid: bytes
    secured: bool
    signal_dbm: int


@dataclass(frozen=True)
class WifiScanned:
    networks: tuple[WifiSeen, ...]
    """Strongest first, one per name."""


@dataclass(frozen=True)
class WifiKeyMade:
    network: WifiNetwork


@dataclass(frozen=True)
class NetworkShown:
    """How the phone is connected, one short line per interface ("eth0 10.0.2.15", "wlan0 Home: 192.168.1.7")."""

    lines: tuple[str, ...]


@dataclass(frozen=True)
class NetworkFailed:
    """A network request could not be done; ``message`` says why (no key or passphrase in it)."""

    message: str
