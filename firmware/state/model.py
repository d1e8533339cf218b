"""The phone's state and the pieces every part of the state machine shares.

Contract: the dataclasses here (PhoneState and what it holds) are frozen values, the constants
are the limits and choices the screens use, and the helpers only return a new state (with any
request appended to ``effects``); nothing here imports the rest of the package.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Literal

from drivers.keys.events import KeyEvent
from firmware import effects as fx
from firmware.conversations import Conversation
from firmware.profile import SETTINGS_RECORD, Account, Profile, Settings
from firmware.text_entry import TextEntry

Screen = Literal["boot", "pin", "working", "home", "menu", "section", "form", "edit", "dial", "chat", "list"]

MENU = ("Contacts", "Calls", "Messages", "Accounts", "Settings", "Security")
PIN_MAX_DIGITS = 32
"""Long enough for the passphrase a phone without a TPM asks for."""
DEFAULT_MIN_SECRET = 6
DIGITS = frozenset("0123456789")
MOVE_UP = frozenset({"up", "2"})
MOVE_DOWN = frozenset({"down", "8"})
VISIBLE_LINES = 4
SCREEN_OFF_CHOICES = (15, 30, 60, 120, 300, 0)
LOCK_AFTER_CHOICES = (30, 60, 120, 300, 600, 0)
TEXT_MAX = 200
DIAL_MAX_DIGITS = 32
CALL_LOG_SHOWN = 50
CHAT_ROWS = 3
TITLE_MAX = 16
"""Characters of a list's or editor's title that fit the top line."""
"""Message rows under the conversation's security line."""
CALL_ENDED_SHOWN_S = 3.0
"""How long "Call ended" stays on the screen (a key dismisses it sooner)."""

PIN_FLOWS: dict[str, tuple[str, ...]] = {
    "setup": ("new", "confirm"),
    "unlock": ("current",),
    "lock": ("current",),
    "change": ("current", "new", "confirm"),
    "duress_on": ("current", "new", "confirm"),
    "duress_off": ("current",),
}
"""Each PIN flow is its stages; the last stage's OK sends the flow's request to the store."""


@dataclass(frozen=True)
class Tick:
    """Wall-clock time (seconds since the epoch), posted every CLOCK_TICK_S and before each key."""

    now: float


@dataclass(frozen=True)
class BootFinished:
    """Every unit has started or been disabled; ``notices`` are the problems met on the way."""

    notices: tuple[str, ...] = ()


Event = KeyEvent | Tick | BootFinished


@dataclass(frozen=True)
class StoreInfo:
    exists: bool
    protection: str
    min_secret_length: int


@dataclass(frozen=True)
class PinEntry:
    """A PIN flow in progress: its stage, the digits typed, the entries of earlier stages."""

    flow: str
    stage: int = 0
    digits: str = field(default="", repr=False)
    earlier: tuple[str, ...] = field(default=(), repr=False)
    hint: str = ""

    @property
    def stage_name(self) -> str:
        return PIN_FLOWS[self.flow][self.stage]


@dataclass(frozen=True)
class FormField:
    name: str
    label: str
    value: str | bool = field(repr=False)
    kind: Literal["text", "secret", "toggle", "choice"] = "text"
    choices: tuple[str, ...] = ()
    only: str = ""
    """Shown only for this kind of account ("sip" or "xmpp"); "" for every kind."""

    @property
    def shown(self) -> str:
        if self.kind == "toggle":
            return "yes" if self.value else "no"
        if self.kind == "secret":
            return "*" * min(len(str(self.value)), 8) if self.value else "(none)"
        return str(self.value)


@dataclass(frozen=True)
class Form:
    """Adding (``index`` None) or editing one account or contact."""

    kind: Literal["account", "contact"]
    fields: tuple[FormField, ...]
    index: int | None = None
    selected: int = 0
    problem: str = ""

    @property
    def shown_fields(self) -> tuple[FormField, ...]:
        kind = self.value("kind") if self.kind == "account" else ""
        return tuple(f for f in self.fields if not f.only or f.only == kind)

    @property
    def actions(self) -> tuple[str, ...]:
        xmpp = self.kind == "account" and self.value("kind") == "xmpp"
        if self.index is None:
            return ("Save", "Register") if xmpp else ("Save",)
        if self.kind == "contact":
            return ("Call", "Chat", "Save", "Delete")
        return ("Save", "Delete", "New password") if xmpp else ("Save", "Delete")

    def value(self, name: str) -> str | bool:
        return next(f.value for f in self.fields if f.name == name)


@dataclass(frozen=True)
class Editor:
    """Text typed into one target: ("field", name) of the form, ("setting", name), ("password", account i),
    ("message", account, peer), ("question", account, peer), ("secret", account, peer, question or None),
    ("answer", account, peer) or ("new_password", account i)."""

    target: tuple
    label: str
    entry: TextEntry


@dataclass(frozen=True)
class Item:
    """One line of a section; ``action`` is what OK on it does (nothing when empty)."""

    label: str
    action: tuple = ()


@dataclass(frozen=True)
class Choices:
    """The "list" screen: a titled list for one subject (a conversation's actions, a request to answer)."""

    title: str
    items: tuple[Item, ...]
    selected: int = 0
    back: Screen = "section"


@dataclass(frozen=True)
class PhoneState:
    screen: Screen = "boot"
    settings: Settings = Settings()
    factory_settings: Settings = Settings()
    now: float = 0.0
    clock: str = ""
    date: str = ""
    store: StoreInfo | None = None
    pin: PinEntry = PinEntry("unlock")
    retry_at: float = 0.0
    busy: str = ""
    locked: bool = True
    profile: Profile | None = field(default=None, repr=False)
    duress_set: bool = False
    password_queue: tuple[int, ...] = ()
    menu_index: int = 0
    section_index: int = 0
    form: Form | None = None
    editor: Editor | None = None
    toast: str = ""
    dial: str = ""
    calls: tuple[fx.CallView, ...] = ()
    ended_shown_until: float = 0.0
    account_status: tuple[tuple[str, str], ...] = ()
    missed_calls: tuple[str, ...] = ()
    """Who called unanswered since the Calls section was last opened (memory only)."""
    lab_offer: fx.LabOffer | None = None
    call_log: tuple[fx.CallRecord, ...] = ()
    """Only with call history on (loaded from and kept in the encrypted store), oldest first."""
    chats: tuple[Conversation, ...] = field(default=(), repr=False)
    """Conversations, the most recently active last (memory; the store keeps them with history on)."""
    chat_keys: tuple[tuple[str, str], ...] = ()
    """(XMPP account, its own OTR fingerprint)."""
    chat_requests: tuple[tuple[str, str], ...] = ()
    """(account, peer) subscription requests waiting for Authorise / Deny / Ignore."""
    rosters: tuple[tuple[str, str, str], ...] = ()
    """(account, peer, standing): both, from, to, waiting or none."""
    present: frozenset[tuple[str, str]] = frozenset()
    """(account, peer) with a device online."""
    chat_open: tuple[str, str] | None = None
    chat_scroll: int = 0
    """Rows scrolled back from the newest in the open conversation."""
    choices: Choices | None = None
    network_lines: tuple[str, ...] = ()
    """How the phone is connected, one line per interface (the network unit's NetworkShown)."""
    wifi_seen: tuple[fx.WifiSeen, ...] = ()
    """The last Wi-Fi scan's networks, strongest first."""
    off_hook: bool = False
    screen_on: bool = True
    idle_since: float = 0.0
    notices: tuple[str, ...] = ()
    effects: tuple = field(default=(), repr=False)

    @property
    def section(self) -> str:
        return MENU[self.menu_index]

    @property
    def accounts(self) -> tuple[Account, ...]:
        return self.profile.accounts if self.profile else ()

    @property
    def call(self) -> fx.CallView | None:
        """The call the screen shows: an incoming one, else the one talking, else one on hold, else
        one that just ended."""
        live = [c for c in self.calls if c.phase != "ended"]
        ranked = sorted(live, key=lambda c: (c.phase != "incoming", c.held))
        return ranked[0] if ranked else (self.calls[-1] if self.calls else None)

    def status_of(self, address: str) -> str:
        return dict(self.account_status).get(address, "")


def clock_text(now: float, clock_24h: bool) -> tuple[str, str]:
    """The home screen's time and date for ``now`` in local time."""
    t = time.localtime(now)
    if clock_24h:
        clock = time.strftime("%H:%M", t)
    else:
        clock = time.strftime("%I:%M", t).lstrip("0") + ("am" if t.tm_hour < 12 else "pm")
    return clock, time.strftime("%a %d %b", t)


def _request(state: PhoneState, *requests) -> PhoneState:
    return replace(state, effects=state.effects + requests)


def min_secret_length(state: PhoneState) -> int:
    return state.store.min_secret_length if state.store else DEFAULT_MIN_SECRET


def secret_word(state: PhoneState) -> str:
    """"PIN", or "passphrase" when the phone has no TPM and asks for a long one."""
    return "PIN" if min_secret_length(state) <= DEFAULT_MIN_SECRET else "passphrase"


def _on_off(value: bool) -> str:
    return "on" if value else "off"


def _save_settings(state: PhoneState, settings: Settings) -> PhoneState:
    return _save_part(replace(state, settings=settings), SETTINGS_RECORD, settings)


def _save_part(state: PhoneState, part: str, value) -> PhoneState:
    profile = (state.profile or Profile()).with_part(part, value)
    return _request(replace(state, profile=profile), fx.SaveProfilePart(part, value))


def _set_field(state: PhoneState, name: str, value: str | bool) -> PhoneState:
    form = state.form
    fields = tuple(replace(f, value=value) if f.name == name else f for f in form.fields)
    return replace(state, form=replace(form, fields=fields, problem=""))


def _open_editor(state: PhoneState, target: tuple, label: str, text: str, *, secret: bool) -> PhoneState:
    entry = TextEntry(text=text, cursor=len(text), secret=secret, max_length=TEXT_MAX)
    return replace(state, screen="edit", editor=Editor(target, label, entry))


def _open_choices(state: PhoneState, title: str, items: tuple[Item, ...], back: Screen = "section") -> PhoneState:
    return replace(state, screen="list", choices=Choices(title[:TITLE_MAX], items, back=back))
