"""Phone state and the one function that changes it.

Contract: :func:`step` is pure. Given a state and an event it returns the next state (the same
object when nothing changed, so the supervisor redraws only on change). It never raises for
any key, tick or store answer; unknown events leave the state as it is. Work it cannot do itself
(opening the encrypted store, saving) it requests through ``effects`` (see firmware/effects.py);
the supervisor takes them out and performs them. Secrets typed on the keypad (PINs, passwords)
live in the state only as long as a screen needs them and never appear in its repr.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Literal

from drivers.keys.events import KeyEvent
from firmware import conversations as chat
from firmware import effects as fx
from firmware.conversations import Conversation
from firmware.profile import (ACCOUNTS_RECORD, CONTACTS_RECORD, SETTINGS_RECORD, SIP_TRANSPORTS, Account, Contact,
                              Profile, ProfileError, Settings, check_text, make_account, make_contact)
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


def step(state: PhoneState, event: object) -> PhoneState:
    """The next state after ``event`` (see the module contract)."""
    if isinstance(event, Tick):
        return _tick(state, event.now)
    if isinstance(event, BootFinished):
        if state.screen != "boot":
            return state
        flow = "setup" if state.store is not None and not state.store.exists else "unlock"
        return replace(state, screen="pin", pin=PinEntry(flow), notices=state.notices + event.notices,
                       idle_since=state.now, screen_on=True)
    if isinstance(event, KeyEvent):
        return _key(state, event)
    handler = _RESULT_HANDLERS.get(type(event))
    return handler(state, event) if handler else state


def _request(state: PhoneState, *requests) -> PhoneState:
    return replace(state, effects=state.effects + requests)


# Time


def _tick(state: PhoneState, now: float) -> PhoneState:
    clock, date = clock_text(now, state.settings.clock_24h)
    screen_on = state.screen_on
    idle = now - state.idle_since
    if state.screen != "boot" and state.settings.screen_off_s and idle >= state.settings.screen_off_s:
        screen_on = False
    new = state
    if (clock, date, screen_on, now) != (state.clock, state.date, state.screen_on, state.now):
        new = replace(state, now=now, clock=clock, date=date, screen_on=screen_on)
    if new.calls and now >= new.ended_shown_until and any(c.phase == "ended" for c in new.calls):
        new = replace(new, calls=tuple(c for c in new.calls if c.phase != "ended"))
    if new.editor is not None:
        entry = new.editor.entry.tick(now)
        if entry is not new.editor.entry:
            new = replace(new, editor=replace(new.editor, entry=entry))
    if _should_lock(new, idle):
        new = _lock(new)
    return new


def _should_lock(state: PhoneState, idle: float) -> bool:
    after = state.settings.lock_after_s
    return (not state.locked and state.profile is not None and after > 0 and idle >= after
            and state.screen not in ("pin", "working"))


def _lock(state: PhoneState) -> PhoneState:
    """Hide everything behind the PIN; calls and chat keep running underneath."""
    return replace(state, screen="pin", pin=PinEntry("lock"), locked=True, form=None, editor=None,
                   toast="", password_queue=(), choices=None, chat_open=None)


# Keys


def _key(state: PhoneState, event: KeyEvent) -> PhoneState:
    if event.key == "hook":
        return _hook(replace(state, off_hook=event.pressed, idle_since=state.now, screen_on=True), event.pressed)
    if not event.pressed:
        return state
    if not state.screen_on:
        # The first press only wakes a blanked screen, so a blind press does nothing unseen.
        return replace(state, screen_on=True, idle_since=state.now)
    if state.call is not None:
        # A call owns the keys, on the lock screen too: an incoming call can always be answered.
        return _call_key(replace(state, idle_since=state.now), event.key)
    handler = _KEY_HANDLERS.get(state.screen)
    if handler is None:
        return state
    return handler(replace(state, idle_since=state.now, toast=""), event.key)


def min_secret_length(state: PhoneState) -> int:
    return state.store.min_secret_length if state.store else DEFAULT_MIN_SECRET


def secret_word(state: PhoneState) -> str:
    """"PIN", or "passphrase" when the phone has no TPM and asks for a long one."""
    return "PIN" if min_secret_length(state) <= DEFAULT_MIN_SECRET else "passphrase"


def _pin_key(state: PhoneState, key: str) -> PhoneState:
    pin = state.pin
    if key in DIGITS:
        if len(pin.digits) >= PIN_MAX_DIGITS:
            return replace(state, pin=replace(pin, hint=f"at most {PIN_MAX_DIGITS} digits"))
        return replace(state, pin=replace(pin, digits=pin.digits + key, hint=""))
    if key == "back":
        if not pin.digits and pin.flow in ("change", "duress_on", "duress_off"):
            return replace(state, screen="section", pin=PinEntry("unlock"))
        return replace(state, pin=replace(pin, digits=pin.digits[:-1], hint=""))
    if key == "ok":
        return _pin_ok(state)
    return state


def _pin_ok(state: PhoneState) -> PhoneState:
    pin = state.pin
    if state.retry_at > state.now:
        return replace(state, pin=replace(pin, hint=f"wait {state.retry_at - state.now:.0f} s"))
    stage = pin.stage_name
    needed = min_secret_length(state) if stage == "new" else 1
    if len(pin.digits) < max(needed, 1):
        return replace(state, pin=replace(pin, hint=f"too short: at least {needed}"))
    if stage == "confirm" and pin.digits != pin.earlier[-1]:
        return replace(state, pin=PinEntry(pin.flow, pin.stage - 1, earlier=pin.earlier[:-1],
                                           hint="they differ; again"))
    if stage == "new" and pin.flow == "duress_on" and pin.digits == pin.earlier[0]:
        return replace(state, pin=replace(pin, digits="", hint="must differ from yours"))
    entries = pin.earlier + (pin.digits,)
    if pin.stage + 1 < len(PIN_FLOWS[pin.flow]):
        return replace(state, pin=PinEntry(pin.flow, pin.stage + 1, earlier=entries))
    return _finish_pin_flow(replace(state, pin=PinEntry(pin.flow)), pin.flow, entries)


def _finish_pin_flow(state: PhoneState, flow: str, entries: tuple[str, ...]) -> PhoneState:
    request, busy = {
        "setup": (lambda: fx.CreateStore(entries[0]), "Securing..."),
        "unlock": (lambda: fx.Unlock(entries[0]), "Unlocking..."),
        "lock": (lambda: fx.VerifySecret(entries[0]), "Checking..."),
        "change": (lambda: fx.ChangeSecret(entries[0], entries[1]), "Changing..."),
        "duress_on": (lambda: fx.SetDuress(entries[0], entries[1]), "Saving..."),
        "duress_off": (lambda: fx.SetDuress(entries[0], None), "Saving..."),
    }[flow]
    return _request(replace(state, screen="working", busy=busy), request())


def _home_key(state: PhoneState, key: str) -> PhoneState:
    if key in ("ok", "up", "down"):
        return replace(state, screen="menu")
    if key in DIGITS or key in ("*", "#"):
        return replace(state, screen="dial", dial=key)
    return state


# Calls


def sip_account(state: PhoneState) -> Account | None:
    """The account calls are placed from: the first SIP account."""
    return next((a for a in state.accounts if a.kind == "sip"), None)


def _dial_key(state: PhoneState, key: str) -> PhoneState:
    if key in DIGITS or key in ("*", "#"):
        return replace(state, dial=(state.dial + key)[:DIAL_MAX_DIGITS])
    if key == "back":
        return replace(state, dial=state.dial[:-1], screen="dial" if len(state.dial) > 1 else "home")
    if key == "ok":
        return _place_call_to_number(state)
    return state


def _place_call_to_number(state: PhoneState) -> PhoneState:
    account = sip_account(state)
    if account is None:
        return replace(state, toast="No SIP account")
    domain = account.address.partition("@")[2]
    return _place_call(replace(state, screen="home", dial=""), account, f"sip:{state.dial}@{domain}")


def _place_call(state: PhoneState, account: Account | None, uri: str) -> PhoneState:
    if account is None:
        return replace(state, toast="No SIP account")
    return _request(state, fx.PlaceCall(account.address, uri))


def _hook(state: PhoneState, lifted: bool) -> PhoneState:
    """The handset answers, places and ends calls."""
    call = state.call
    if call is not None and call.phase != "ended":
        if lifted and call.phase == "incoming":
            return _request(state, fx.AnswerCall(call.call_id))
        if not lifted:
            return _request(state, fx.EndCall(call.call_id))
        return state
    if lifted and state.screen == "dial" and state.dial:
        return _place_call_to_number(state)
    if lifted and state.screen == "section" and state.section == "Contacts":
        items = section_items(state)
        action = items[state.section_index].action if state.section_index < len(items) else ()
        if action[:1] == ("edit_contact",):
            return _call_contact(state, action[1])
    return state


def _call_contact(state: PhoneState, index: int) -> PhoneState:
    contact = state.profile.contacts[index]
    if not contact.address:
        return replace(state, toast="No call address")
    return _place_call(state, sip_account(state), f"sip:{contact.address}")


def _call_key(state: PhoneState, key: str) -> PhoneState:
    call = state.call
    if call.phase == "ended":
        return replace(state, calls=tuple(c for c in state.calls if c.phase != "ended"))
    if call.phase == "incoming" and key == "ok":
        return _request(state, fx.AnswerCall(call.call_id))
    if key == "back":
        return _request(state, fx.EndCall(call.call_id))
    if call.phase != "connected":
        return state
    if key in DIGITS or key in ("*", "#"):
        return _request(state, fx.SendDtmf(call.call_id, key))
    if key == "up":
        return _request(state, fx.HoldCall(call.call_id, not call.held))
    if call.security in ("secure", "key_changed") and key in ("ok", "down"):
        return _request(state, fx.VerifySas(call.call_id, key == "ok"))
    if call.security == "verified" and key == "ok":
        return _request(state, fx.VerifySas(call.call_id, True))
    if key == "down":  # once the SAS question is settled, Down is the mute key
        return _request(state, fx.MuteCall(call.call_id, not call.muted))
    return state


def _call_changed(state: PhoneState, event: fx.CallChanged) -> PhoneState:
    call = event.call
    others = tuple(c for c in state.calls if c.call_id != call.call_id)
    if call.phase == "ended":
        missed = state.missed_calls + ((call.peer,) if call.reason == "missed" else ())
        return replace(state, calls=others + (call,), ended_shown_until=state.now + CALL_ENDED_SHOWN_S,
                       screen_on=True, idle_since=state.now, missed_calls=missed)
    known = any(c.call_id == call.call_id for c in state.calls)
    calls = tuple(call if c.call_id == call.call_id else c for c in state.calls) if known else state.calls + (call,)
    return replace(state, calls=calls, screen_on=True, idle_since=state.now)


def _lab_offered(state: PhoneState, event: fx.LabOffer) -> PhoneState:
    return _merge_lab(replace(state, lab_offer=event))


def _merge_lab(state: PhoneState) -> PhoneState:
    """Put the lab's account and contacts into an unlocked profile, replacing an earlier lab's."""
    offer, profile = state.lab_offer, state.profile
    if offer is None or profile is None:
        return state

    def from_a_lab(address: str) -> bool:
        user, _, host_port = address.partition("@")
        return user in offer.users and host_port.rsplit(":", 1)[0] in (offer.host, offer.domain)

    accounts = tuple(a for a in profile.accounts if not from_a_lab(a.address)) + offer.accounts
    contacts = tuple(c for c in profile.contacts if not from_a_lab(c.address or c.chat)) + offer.contacts
    state = replace(state, lab_offer=None)
    if (accounts, contacts) == (profile.accounts, profile.contacts):
        return state
    state = _save_part(state, ACCOUNTS_RECORD, accounts)
    return _save_part(state, CONTACTS_RECORD, contacts)


def _call_logged(state: PhoneState, event: fx.CallLogged) -> PhoneState:
    return replace(state, call_log=(state.call_log + event.entries)[-CALL_LOG_SHOWN:])


def _account_status(state: PhoneState, event: fx.AccountStatus) -> PhoneState:
    statuses = dict(state.account_status)
    statuses[event.address] = event.status
    return replace(state, account_status=tuple(statuses.items()))


def _menu_key(state: PhoneState, key: str) -> PhoneState:
    if key in MOVE_UP:
        return replace(state, menu_index=(state.menu_index - 1) % len(MENU))
    if key in MOVE_DOWN:
        return replace(state, menu_index=(state.menu_index + 1) % len(MENU))
    if key in DIGITS and 1 <= int(key) <= len(MENU):
        return _open_section(replace(state, menu_index=int(key) - 1))
    if key == "ok":
        return _open_section(state)
    if key == "back":
        return replace(state, screen="home")
    return state


# Sections


def _open_section(state: PhoneState) -> PhoneState:
    return replace(state, screen="section", section_index=0)


def section_items(state: PhoneState) -> tuple[Item, ...]:
    """What the open menu section lists, one item per line."""
    profile = state.profile or Profile()
    section = state.section
    if section == "Contacts":
        return (*(Item(_contact_line(state, c), ("edit_contact", i)) for i, c in enumerate(profile.contacts)),
                Item("+ Add contact", ("new_contact",)))
    if section == "Calls":
        missed = tuple(Item(f"Missed: {peer}") for peer in reversed(state.missed_calls))
        logged = tuple(Item(_log_line(entry)) for entry in reversed(state.call_log))
        empty = () if missed or logged else (Item("No calls."),)
        return (*missed, *logged, *empty, Item(f"Call history: {_on_off(profile.settings.call_history)}",
                                               ("toggle", "call_history")))
    if section == "Messages":
        return _messages_items(state)
    if section == "Accounts":
        return (*(Item(_account_line(state, a), ("edit_account", i)) for i, a in enumerate(profile.accounts)),
                Item("+ Add account", ("new_account",)))
    if section == "Settings":
        return _settings_items(state.settings, state.notices)
    return _security_items(state)


def _log_line(entry: fx.CallRecord) -> str:
    arrow = "<" if entry.incoming else ">"
    when = time.strftime("%d %b %H:%M", time.localtime(entry.when))
    return f"{arrow}{entry.peer.partition('@')[0][:8]} {when} {entry.outcome[:4]}"


def _account_line(state: PhoneState, account: Account) -> str:
    if not account.password:
        return f"{account.label} (no pw)"
    status = state.status_of(account.address)
    return f"{account.label} ({status})" if status else account.label


def _on_off(value: bool) -> str:
    return "on" if value else "off"


def _seconds(value: int) -> str:
    return f"{value} s" if value else "never"


def _settings_items(settings: Settings, notices: tuple[str, ...]) -> tuple[Item, ...]:
    return (
        Item(f"Name: {settings.display_name or '(none)'}", ("edit_setting", "display_name")),
        Item(f"Clock: {'24h' if settings.clock_24h else '12h'}", ("toggle", "clock_24h")),
        Item(f"Screen off: {_seconds(settings.screen_off_s)}", ("cycle", "screen_off_s")),
        Item(f"Lock after: {_seconds(settings.lock_after_s)}", ("cycle", "lock_after_s")),
        Item(f"Call history: {_on_off(settings.call_history)}", ("toggle", "call_history")),
        Item(f"Msg history: {_on_off(settings.message_history)}", ("toggle", "message_history")),
        Item("Erase all history", ("erase_history",)),
        *(Item(f"! {notice}") for notice in notices),
    )


def _security_items(state: PhoneState) -> tuple[Item, ...]:
    protection = state.store.protection if state.store else "store unavailable"
    word = secret_word(state)
    return (
        Item("At rest: encrypted"),
        Item(f"Key: {protection}"),
        Item(f"Change {word}", ("flow", "change")),
        Item(f"Duress {word}: {_on_off(state.duress_set)}", ("flow", "duress_off" if state.duress_set else "duress_on")),
        Item("Lock now", ("lock",)),
    )


def _section_key(state: PhoneState, key: str) -> PhoneState:
    items = section_items(state)
    if key == "back":
        seen = () if state.section == "Calls" else state.missed_calls  # leaving Calls: missed calls were seen
        return replace(state, screen="menu", missed_calls=seen)
    if key in MOVE_UP:
        return replace(state, section_index=max(0, state.section_index - 1))
    if key in MOVE_DOWN:
        return replace(state, section_index=min(len(items) - 1, state.section_index + 1))
    if key == "ok" and state.section_index < len(items):
        return _section_action(state, items[state.section_index].action)
    return state


def _section_action(state: PhoneState, action: tuple) -> PhoneState:
    if not action:
        return state
    verb, *args = action
    profile = state.profile or Profile()
    if verb == "new_account":
        return _open_form(state, _account_form(None, None))
    if verb == "edit_account":
        return _open_form(state, _account_form(args[0], profile.accounts[args[0]]))
    if verb == "new_contact":
        return _open_form(state, _contact_form(None, None))
    if verb == "edit_contact":
        return _open_form(state, _contact_form(args[0], profile.contacts[args[0]]))
    if verb == "toggle":
        return _save_settings(state, replace(state.settings, **{args[0]: not getattr(state.settings, args[0])}))
    if verb == "cycle":
        choices = SCREEN_OFF_CHOICES if args[0] == "screen_off_s" else LOCK_AFTER_CHOICES
        current = getattr(state.settings, args[0])
        following = choices[(choices.index(current) + 1) % len(choices)] if current in choices else choices[0]
        return _save_settings(state, replace(state.settings, **{args[0]: following}))
    if verb == "edit_setting":
        return _open_editor(state, ("setting", args[0]), "Name", getattr(state.settings, args[0]), secret=False)
    if verb == "erase_history":
        return _request(replace(state, toast="Erasing...", call_log=(), chats=chat.without_lines(state.chats)),
                        fx.EraseHistory())
    if verb == "flow":
        return replace(state, screen="pin", pin=PinEntry(args[0]))
    if verb == "lock":
        return _lock(state)
    return _chat_action(state, verb, args)


def _save_settings(state: PhoneState, settings: Settings) -> PhoneState:
    return _save_part(replace(state, settings=settings), SETTINGS_RECORD, settings)


def _save_part(state: PhoneState, part: str, value) -> PhoneState:
    profile = (state.profile or Profile()).with_part(part, value)
    return _request(replace(state, profile=profile), fx.SaveProfilePart(part, value))


# Forms


def _account_form(index: int | None, account: Account | None) -> Form:
    """SIP and XMPP accounts show the same number of fields (Transport for one, Server for the other)."""
    return Form("account", (
        FormField("kind", "Type", account.kind if account else "sip", "choice", ("sip", "xmpp")),
        FormField("address", "Address", account.address if account else ""),
        FormField("password", "Password", account.password if account else "", "secret"),
        FormField("remember", "Remember pw", account.remember_password if account else True, "toggle"),
        FormField("plain", "Allow plain", account.allow_plain if account else False, "toggle"),
        FormField("transport", "Transport", account.transport if account else "udp", "choice", SIP_TRANSPORTS,
                  only="sip"),
        FormField("server", "Server", account.server if account else "", only="xmpp"),
        FormField("tls_pin", "TLS pin", account.tls_pin if account else ""),
    ), index)


def _contact_form(index: int | None, contact: Contact | None) -> Form:
    return Form("contact", (FormField("name", "Name", contact.name if contact else ""),
                            FormField("address", "Address", contact.address if contact else ""),
                            FormField("chat", "Chat", contact.chat if contact else ""),
                            FormField("group", "Group", contact.group if contact else "")), index)


def _open_form(state: PhoneState, form: Form) -> PhoneState:
    return replace(state, screen="form", form=form)


def form_lines(form: Form) -> tuple[str, ...]:
    """The form's lines: each field as "label: value", then its actions."""
    return (*(f"{f.label}: {f.shown}" for f in form.shown_fields), *form.actions)


def _form_key(state: PhoneState, key: str) -> PhoneState:
    form = state.form
    shown = form.shown_fields
    count = len(shown) + len(form.actions)
    if key == "back":
        return replace(state, screen="section", form=None)
    if key in MOVE_UP:
        return replace(state, form=replace(form, selected=max(0, form.selected - 1)))
    if key in MOVE_DOWN:
        return replace(state, form=replace(form, selected=min(count - 1, form.selected + 1)))
    if key != "ok":
        return state
    if form.selected >= len(shown):
        return _form_action(state, form.actions[form.selected - len(shown)])
    chosen = shown[form.selected]
    if chosen.kind == "toggle":
        return _set_field(state, chosen.name, not chosen.value)
    if chosen.kind == "choice":
        return _set_field(state, chosen.name, chosen.choices[(chosen.choices.index(chosen.value) + 1)
                                                              % len(chosen.choices)])
    return _open_editor(state, ("field", chosen.name), chosen.label, str(chosen.value),
                        secret=chosen.kind == "secret")


def _set_field(state: PhoneState, name: str, value: str | bool) -> PhoneState:
    form = state.form
    fields = tuple(replace(f, value=value) if f.name == name else f for f in form.fields)
    return replace(state, form=replace(form, fields=fields, problem=""))


def _form_action(state: PhoneState, action: str) -> PhoneState:
    form = state.form
    profile = state.profile or Profile()
    part = ACCOUNTS_RECORD if form.kind == "account" else CONTACTS_RECORD
    entries = list(profile.part(part))
    if action == "Call":
        return _call_contact(replace(state, screen="section", form=None), form.index)
    if action == "Chat":
        return _chat_with_contact(state, profile.contacts[form.index])
    if action == "New password":
        return _open_editor(state, ("new_password", form.index), "New password", "", secret=True)
    if action == "Delete":
        del entries[form.index]
    else:
        try:
            entry = (make_account(form.value("kind"), form.value("address"), form.value("password"),
                                  remember_password=form.value("remember"), allow_plain=form.value("plain"),
                                  transport=form.value("transport"), tls_pin=form.value("tls_pin"),
                                  server=form.value("server"))
                     if form.kind == "account"
                     else make_contact(form.value("name"), form.value("address"), form.value("chat"),
                                       form.value("group")))
        except ProfileError as e:
            return replace(state, form=replace(form, problem=str(e)))
        if action == "Register":
            if not entry.password:
                return replace(state, form=replace(form, problem="choose a password"))
            return _request(replace(state, form=replace(form, problem="Registering...")), fx.RegisterAccount(entry))
        if form.index is None:
            entries.append(entry)
        else:
            entries[form.index] = entry
    return _save_part(replace(state, screen="section", form=None, section_index=0), part, tuple(entries))


# Text editor


def _open_editor(state: PhoneState, target: tuple, label: str, text: str, *, secret: bool) -> PhoneState:
    entry = TextEntry(text=text, cursor=len(text), secret=secret, max_length=TEXT_MAX)
    return replace(state, screen="edit", editor=Editor(target, label, entry))


def _edit_key(state: PhoneState, key: str) -> PhoneState:
    editor = state.editor
    if key == "ok":
        return _commit_editor(state, editor.entry.value)
    if key == "back" and not editor.entry.value:
        return _close_editor(state)
    entry = editor.entry.press(key, state.now)
    return state if entry is editor.entry else replace(state, editor=replace(editor, entry=entry))


def _commit_editor(state: PhoneState, text: str) -> PhoneState:
    kind, target, *more = state.editor.target
    if kind in CHAT_EDITS:
        return _commit_chat_edit(state, kind, (target, *more), text)
    if kind == "new_password":
        if not text:
            return replace(state, toast="choose a password")
        address = state.profile.accounts[target].address
        return _request(replace(state, screen="form", editor=None, form=replace(state.form, problem="Changing...")),
                        fx.ChangePassword(address, text))
    if kind == "field":
        return replace(_set_field(state, target, text), screen="form", editor=None)
    if kind == "setting":
        try:
            value = check_text(target, text, required=False)
        except ProfileError as e:
            return replace(state, toast=str(e))
        return _save_settings(replace(state, screen="section", editor=None),
                              replace(state.settings, **{target: value}))
    return _next_password_prompt(_set_session_password(state, target, text))


def _close_editor(state: PhoneState) -> PhoneState:
    kind = state.editor.target[0]
    if kind in CHAT_EDITS:
        return replace(state, screen="chat", editor=None)
    if kind in ("field", "new_password"):
        return replace(state, screen="form", editor=None)
    if kind == "setting":
        return replace(state, screen="section", editor=None)
    return _next_password_prompt(state)


def _set_session_password(state: PhoneState, index: int, password: str) -> PhoneState:
    """An unremembered password, kept in memory for this session only."""
    accounts = list(state.profile.accounts)
    accounts[index] = replace(accounts[index], password=password)
    return replace(state, profile=replace(state.profile, accounts=tuple(accounts)))


def _next_password_prompt(state: PhoneState) -> PhoneState:
    if not state.password_queue:
        return replace(state, screen="home", editor=None)
    index, rest = state.password_queue[0], state.password_queue[1:]
    account = state.profile.accounts[index]
    opened = _open_editor(state, ("password", index), f"Pw {account.address}", "", secret=True)
    return replace(opened, password_queue=rest)


# Store answers


def _store_opened(state: PhoneState, event: fx.StoreOpened) -> PhoneState:
    info = StoreInfo(event.exists, event.protection, event.min_secret_length)
    state = replace(state, store=info)
    if state.screen == "pin" and state.pin.flow in ("setup", "unlock") and not state.pin.digits:
        return replace(state, pin=PinEntry("unlock" if info.exists else "setup"))
    return state


def _unlocked(state: PhoneState, event: fx.Unlocked) -> PhoneState:
    profile = event.profile
    waiting = tuple(i for i, a in enumerate(profile.accounts) if not a.remember_password and not a.password)
    store = replace(state.store, exists=True) if state.store else None
    state = replace(state, profile=profile, settings=profile.settings, locked=False, busy="", retry_at=0.0,
                    store=store, duress_set=event.duress_set, pin=PinEntry("unlock"),
                    notices=state.notices + event.problems, password_queue=waiting, idle_since=state.now)
    return _next_password_prompt(_merge_lab(state))


def _secret_accepted(state: PhoneState, event: fx.SecretAccepted) -> PhoneState:
    flow = state.pin.flow
    if flow == "lock":
        return replace(state, screen="home", locked=False, busy="", retry_at=0.0, idle_since=state.now)
    toast = {"change": f"{secret_word(state)} changed", "duress_on": "Duress set",
             "duress_off": "Duress cleared"}.get(flow, "")
    return replace(state, screen="section", busy="", retry_at=0.0, pin=PinEntry("unlock"), toast=toast,
                   duress_set={"duress_on": True, "duress_off": False}.get(flow, state.duress_set))


def _secret_refused(state: PhoneState, event: fx.SecretRefused) -> PhoneState:
    return replace(state, screen="pin", busy="", pin=PinEntry(state.pin.flow, hint=event.message),
                   retry_at=state.now + event.wait_s)


def _factory_fresh(state: PhoneState, event: fx.FactoryFresh) -> PhoneState:
    """No store any more: forget everything, as a new phone would have nothing to forget."""
    store = replace(state.store, exists=False) if state.store else None
    fresh = PhoneState(now=state.now, clock=state.clock, date=state.date, store=store, off_hook=state.off_hook,
                       idle_since=state.now, settings=state.factory_settings,
                       factory_settings=state.factory_settings)
    return replace(fresh, screen="pin", pin=PinEntry("setup", hint=event.message))


def _saved(state: PhoneState, event: fx.Saved) -> PhoneState:
    return replace(state, toast=event.message)


def _store_failed(state: PhoneState, event: fx.StoreFailed) -> PhoneState:
    if state.screen == "working":
        return replace(state, screen="pin", busy="", pin=PinEntry(state.pin.flow, hint=event.message))
    return replace(state, toast=event.message)


def _unavailable(state: PhoneState, event: fx.Unavailable) -> PhoneState:
    return _store_failed(state, fx.StoreFailed(f"unavailable: {event.reason}"))


# Chat


def chat_account(state: PhoneState) -> Account | None:
    """The account chats are started from: the first XMPP account."""
    return next((a for a in state.accounts if a.kind == "xmpp"), None)


def peer_name(state: PhoneState, peer: str) -> str:
    """A contact's name for an XMPP address, else the address."""
    return next((c.name for c in state.profile.contacts if c.chat == peer), peer) if state.profile else peer


def standing(state: PhoneState, account: str, peer: str) -> str:
    return next((s for a, p, s in state.rosters if a == account and p == peer), "")


def _contact_line(state: PhoneState, contact: Contact) -> str:
    """The name, then whether they are online, or still have to authorise us."""
    account = chat_account(state)
    if not contact.chat or account is None:
        return contact.name
    if standing(state, account.address, contact.chat) == "waiting":
        return f"{contact.name} (waiting)"
    return f"{contact.name} (online)" if (account.address, contact.chat) in state.present else contact.name


def _messages_items(state: PhoneState) -> tuple[Item, ...]:
    requests = tuple(Item(f"? {peer}", ("subscription", account, peer)) for account, peer in state.chat_requests)
    chats = tuple(Item(conversation_line(state, c), ("open_chat", c.account, c.peer)) for c in reversed(state.chats))
    start = (Item("+ New chat", ("new_chat",)),) if chat_account(state) else (Item("No chat account."),)
    keys = tuple(Item(f"My key {fingerprint[:8].upper()}", ("my_key", account))
                 for account, fingerprint in state.chat_keys)
    history = Item(f"Msg history: {_on_off(state.settings.message_history)}", ("toggle", "message_history"))
    return (*requests, *chats, *start, *keys, history)


def conversation_line(state: PhoneState, conversation: Conversation) -> str:
    unread = f" ({conversation.unread})" if conversation.unread else ""
    return f"{chat.SECURITY_MARK[conversation.security]} {peer_name(state, conversation.peer)}{unread}"


def unread_line(state: PhoneState) -> str:
    count = chat.unread_total(state.chats)
    return f"{count} new message{'s' if count > 1 else ''}" if count else ""


def _chat_with_contact(state: PhoneState, contact: Contact) -> PhoneState:
    account = chat_account(state)
    if account is None:
        return replace(state, toast="No chat account")
    if not contact.chat:
        return replace(state, toast="No chat address")
    return _open_chat(replace(state, form=None), account.address, contact.chat)


def _open_chat(state: PhoneState, account: str, peer: str) -> PhoneState:
    chats = state.chats
    conversation = chat.find(chats, (account, peer))
    if conversation is not None and conversation.unread:
        chats = tuple(replace(c, unread=0) if c is conversation else c for c in chats)
    return replace(state, screen="chat", chat_open=(account, peer), chat_scroll=0, chats=chats, choices=None)


def open_conversation(state: PhoneState) -> Conversation:
    return chat.find(state.chats, state.chat_open) or Conversation(*state.chat_open)


def _chat_key(state: PhoneState, key: str) -> PhoneState:
    account, peer = state.chat_open
    if key == "back":
        return replace(state, screen="section", chat_open=None)
    if key == "ok":
        return _open_editor(state, ("message", account, peer), f"To {peer_name(state, peer)}", "", secret=False)
    if key == "#":
        return _open_choices(state, peer_name(state, peer), _conversation_actions(state), back="chat")
    rows = len(chat.wrapped(open_conversation(state).lines))
    if key in MOVE_UP:
        return replace(state, chat_scroll=min(max(0, rows - CHAT_ROWS), state.chat_scroll + 1))
    if key in MOVE_DOWN:
        return replace(state, chat_scroll=max(0, state.chat_scroll - 1))
    return state


def _conversation_actions(state: PhoneState) -> tuple[Item, ...]:
    account, peer = state.chat_open
    conversation = open_conversation(state)
    private = conversation.security in ("encrypted", "verified", "key_changed")
    answer = () if conversation.asks is None else (Item("Answer them", ("answer", account, peer)),)
    return (*answer,
            Item("End encryption" if private else "Start encryption", ("encryption", account, peer, not private)),
            Item("Fingerprints", ("fingerprints", account, peer)),
            Item("Ask a question", ("question", account, peer)),
            Item("Shared secret", ("secret", account, peer)))


def _open_choices(state: PhoneState, title: str, items: tuple[Item, ...], back: Screen = "section") -> PhoneState:
    return replace(state, screen="list", choices=Choices(title[:16], items, back=back))


def _list_key(state: PhoneState, key: str) -> PhoneState:
    choices = state.choices
    if key == "back":
        return replace(state, screen=choices.back, choices=None)
    if key in MOVE_UP:
        return replace(state, choices=replace(choices, selected=max(0, choices.selected - 1)))
    if key in MOVE_DOWN:
        return replace(state, choices=replace(choices, selected=min(len(choices.items) - 1, choices.selected + 1)))
    if key == "ok" and choices.items[choices.selected].action:
        return _chat_action(replace(state, screen=choices.back, choices=None), *_split(choices.items[choices.selected]))
    return state


def _split(item: Item) -> tuple[str, tuple]:
    return item.action[0], item.action[1:]


def _chat_action(state: PhoneState, verb: str, args: tuple) -> PhoneState:
    """What OK does on a chat item of the Messages section or of a list."""
    if verb == "open_chat":
        return _open_chat(state, *args)
    if verb == "new_chat":
        account = chat_account(state)
        items = tuple(Item(c.name, ("open_chat", account.address, c.chat)) for c in state.profile.contacts if c.chat)
        return _open_choices(state, "Chat with", items or (Item("No chat contacts."),))
    if verb == "subscription":
        account, peer = args
        return _open_choices(state, peer, tuple(Item(label, ("answer_request", account, peer, answer)) for label, answer
                                                in (("Authorise", "authorise"), ("Deny", "deny"), ("Ignore", "ignore"))))
    if verb == "answer_request":
        account, peer, answer = args
        state = replace(state, chat_requests=tuple(r for r in state.chat_requests if r != (account, peer)))
        state = _request(state, fx.AnswerSubscription(account, peer, answer))
        if answer == "authorise" and not any(c.chat == peer for c in state.profile.contacts):
            contact = Contact(peer.partition("@")[0][:40] or peer, chat=peer)
            state = _save_part(state, CONTACTS_RECORD, state.profile.contacts + (contact,))
        return replace(state, toast={"authorise": "Authorised", "deny": "Denied", "ignore": "Ignored"}[answer])
    if verb == "my_key":
        (account,) = args
        fingerprint = dict(state.chat_keys).get(account, "")
        rows = tuple(Item(row) for row in chat.fingerprint_rows(fingerprint))
        return _open_choices(state, "My key", (*rows, Item("New key", ("new_key", account))))
    if verb == "new_key":
        return _request(replace(state, toast="Making a key..."), fx.NewChatKey(*args))
    if verb == "encryption":
        return _request(state, fx.SetEncryption(*args))
    if verb == "fingerprints":
        account, peer = args
        theirs = open_conversation(state).fingerprint if state.chat_open == (account, peer) else ""
        mine = dict(state.chat_keys).get(account, "")
        rows = (Item("Theirs:"), *(Item(r) for r in chat.fingerprint_rows(theirs) or ("(no session)",)),
                Item("Mine:"), *(Item(r) for r in chat.fingerprint_rows(mine)))
        confirm = (Item("They match", ("trust", account, peer, theirs, True)),
                   Item("Not verified", ("trust", account, peer, theirs, False))) if theirs else ()
        return _open_choices(state, "Fingerprints", (*rows, *confirm), back="chat")
    if verb == "trust":
        return _request(state, fx.TrustFingerprint(*args))
    if verb in CHAT_EDITS:
        account, peer = args[:2]
        label = {"question": "Question", "secret": "Shared secret", "answer": "Answer"}[verb]
        target = (verb, account, peer, None) if verb == "secret" else (verb, account, peer)
        return _open_editor(replace(state, screen="chat"), target, label, "", secret=verb != "question")
    return state


CHAT_EDITS = ("message", "question", "secret", "answer")


def _commit_chat_edit(state: PhoneState, kind: str, target: tuple, text: str) -> PhoneState:
    account, peer, *more = target
    state = replace(state, screen="chat", editor=None)
    if not text:
        return state
    if kind == "message":
        return _request(replace(state, chat_scroll=0), fx.SendChat(account, peer, text))
    if kind == "question":
        return _open_editor(state, ("secret", account, peer, text), "Their answer", "", secret=True)
    if kind == "secret":
        return _request(state, fx.Authenticate(account, peer, text, more[0]))
    return _request(state, fx.AnswerAuthentication(account, peer, text))


def _conversation_changed(state: PhoneState, event: fx.ConversationChanged) -> PhoneState:
    return replace(state, chats=chat.with_view(state.chats, event.view))


def _chat_line_added(state: PhoneState, event: fx.ChatLineAdded) -> PhoneState:
    key = (event.account, event.peer)
    read = state.screen in ("chat", "edit") and state.chat_open == key and state.screen_on
    return replace(state, chats=chat.with_line(state.chats, key, event.line, read))


def _chat_line_status(state: PhoneState, event: fx.ChatLineStatus) -> PhoneState:
    return replace(state, chats=chat.with_status(state.chats, (event.account, event.peer), event.message_id,
                                                 event.status))


def _chat_history(state: PhoneState, event: fx.ChatHistory) -> PhoneState:
    chats = state.chats
    for account, peer, line in event.lines:
        chats = chat.with_line(chats, (account, peer), line, read=True)
    return replace(state, chats=chats)


def _chat_key_shown(state: PhoneState, event: fx.ChatKey) -> PhoneState:
    keys = dict(state.chat_keys)
    keys[event.account] = event.fingerprint
    return replace(state, chat_keys=tuple(keys.items()))


def _subscription_asked(state: PhoneState, event: fx.SubscriptionAsked) -> PhoneState:
    request = (event.account, event.peer)
    if request in state.chat_requests:
        return state
    return replace(state, chat_requests=state.chat_requests + (request,))


def _roster_shown(state: PhoneState, event: fx.RosterShown) -> PhoneState:
    others = tuple(r for r in state.rosters if r[0] != event.account)
    return replace(state, rosters=others + tuple((event.account, peer, s) for peer, s in event.entries))


def _presence_shown(state: PhoneState, event: fx.PresenceShown) -> PhoneState:
    key = (event.account, event.peer)
    return replace(state, present=state.present | {key} if event.available else state.present - {key})


def _account_registered(state: PhoneState, event: fx.AccountRegistered) -> PhoneState:
    accounts = state.profile.accounts + (event.account,)
    state = replace(state, screen="section", form=None, section_index=0, toast="Account created")
    return _save_part(state, ACCOUNTS_RECORD, accounts)


def _password_changed(state: PhoneState, event: fx.PasswordChanged) -> PhoneState:
    accounts = tuple(replace(a, password=event.password) if a.address == event.address and a.kind == "xmpp" else a
                     for a in state.profile.accounts)
    form = state.form
    if form is not None and form.kind == "account" and form.value("address") == event.address:
        state = _set_field(state, "password", event.password)
        state = replace(state, form=replace(state.form, problem="Password changed"))
    return _save_part(replace(state, toast="Password changed"), ACCOUNTS_RECORD, accounts)


def _chat_failed(state: PhoneState, event: fx.ChatFailed) -> PhoneState:
    if state.screen == "form":
        return replace(state, form=replace(state.form, problem=event.message))
    return replace(state, toast=event.message)


_KEY_HANDLERS = {
    "pin": _pin_key,
    "dial": _dial_key,
    "home": _home_key,
    "menu": _menu_key,
    "section": _section_key,
    "form": _form_key,
    "edit": _edit_key,
    "chat": _chat_key,
    "list": _list_key,
}

_RESULT_HANDLERS = {
    fx.StoreOpened: _store_opened,
    fx.Unlocked: _unlocked,
    fx.SecretAccepted: _secret_accepted,
    fx.SecretRefused: _secret_refused,
    fx.FactoryFresh: _factory_fresh,
    fx.Saved: _saved,
    fx.StoreFailed: _store_failed,
    fx.Unavailable: _unavailable,
    fx.CallChanged: _call_changed,
    fx.AccountStatus: _account_status,
    fx.CallLogged: _call_logged,
    fx.LabOffer: _lab_offered,
    fx.ConversationChanged: _conversation_changed,
    fx.ChatLineAdded: _chat_line_added,
    fx.ChatLineStatus: _chat_line_status,
    fx.ChatHistory: _chat_history,
    fx.ChatKey: _chat_key_shown,
    fx.SubscriptionAsked: _subscription_asked,
    fx.RosterShown: _roster_shown,
    fx.PresenceShown: _presence_shown,
    fx.AccountRegistered: _account_registered,
    fx.PasswordChanged: _password_changed,
    fx.ChatFailed: _chat_failed,
}
