"""What the state machine asks the outside world to do, and the answers that come back as events.

Contract: :func:`firmware.state.step` stays pure by returning requests (effects) in
``PhoneState.effects``; the supervisor takes them out after each step and hands each to the one
running unit that performs its type. The unit does the work off the event loop and posts one of
the result events below. Secrets travel in fields that never appear in a repr.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from firmware.profile import Profile

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
