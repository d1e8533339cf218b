"""Phone state and the one function that changes it.

Contract: :func:`step` is pure. Given a state and an event it returns the next state (the same
object when nothing changed, so the supervisor redraws only on change). It never raises for
any key or tick; unknown events leave the state as it is. Secrets typed on the keypad (the PIN)
live in the state only as long as the entry screen needs them and never appear in its repr.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Literal

from drivers.keys.events import KeyEvent

Screen = Literal["boot", "pin_entry", "home", "menu", "section"]

MENU = ("Contacts", "Calls", "Messages", "Accounts", "Settings", "Security")
PIN_MIN_DIGITS = 6
PIN_MAX_DIGITS = 12
DIGITS = frozenset("0123456789")
MOVE_UP = frozenset({"up", "2"})
MOVE_DOWN = frozenset({"down", "8"})
SECTION_VISIBLE_LINES = 4


@dataclass(frozen=True)
class UiSettings:
    clock_24h: bool = True
    screen_off_s: int = 60


@dataclass(frozen=True)
class Tick:
    """Wall-clock time (seconds since the epoch), posted every CLOCK_TICK_S by the supervisor."""

    now: float


@dataclass(frozen=True)
class BootFinished:
    """Every unit has started or been disabled; ``notices`` are the problems met on the way."""

    notices: tuple[str, ...] = ()


Event = KeyEvent | Tick | BootFinished


@dataclass(frozen=True)
class PhoneState:
    screen: Screen = "boot"
    settings: UiSettings = UiSettings()
    now: float = 0.0
    clock: str = ""
    date: str = ""
    pin: str = field(default="", repr=False)
    pin_hint: str = ""
    locked: bool = True
    menu_index: int = 0
    section_scroll: int = 0
    off_hook: bool = False
    screen_on: bool = True
    idle_since: float = 0.0
    notices: tuple[str, ...] = ()
    accounts: tuple[str, ...] = ()

    @property
    def section(self) -> str:
        return MENU[self.menu_index]


def clock_text(now: float, clock_24h: bool) -> tuple[str, str]:
    """The home screen's time and date for ``now`` in local time."""
    t = time.localtime(now)
    if clock_24h:
        clock = time.strftime("%H:%M", t)
    else:
        clock = time.strftime("%I:%M", t).lstrip("0") + ("am" if t.tm_hour < 12 else "pm")
    return clock, time.strftime("%a %d %b", t)


def step(state: PhoneState, event: Event) -> PhoneState:
    """The next state after ``event`` (see the module contract)."""
    if isinstance(event, Tick):
        return _tick(state, event.now)
    if isinstance(event, BootFinished):
        if state.screen != "boot":
            return state
        return replace(state, screen="pin_entry", notices=state.notices + event.notices,
                       idle_since=state.now, screen_on=True)
    if isinstance(event, KeyEvent):
        return _key(state, event)
    return state


def _tick(state: PhoneState, now: float) -> PhoneState:
    clock, date = clock_text(now, state.settings.clock_24h)
    screen_on = state.screen_on
    if state.screen != "boot" and state.settings.screen_off_s and now - state.idle_since >= state.settings.screen_off_s:
        screen_on = False
    if (clock, date, screen_on) == (state.clock, state.date, state.screen_on):
        return state if state.now == now else replace(state, now=now)
    return replace(state, now=now, clock=clock, date=date, screen_on=screen_on)


def _key(state: PhoneState, event: KeyEvent) -> PhoneState:
    if event.key == "hook":
        return replace(state, off_hook=event.pressed, idle_since=state.now, screen_on=True)
    if not event.pressed:
        return state
    if not state.screen_on:
        # The first press only wakes a blanked screen, so a blind press does nothing unseen.
        return replace(state, screen_on=True, idle_since=state.now)
    handler = _KEY_HANDLERS.get(state.screen)
    if handler is None:
        return state
    return handler(replace(state, idle_since=state.now), event.key)


def _pin_entry_key(state: PhoneState, key: str) -> PhoneState:
    if key in DIGITS:
        if len(state.pin) >= PIN_MAX_DIGITS:
            return replace(state, pin_hint=f"at most {PIN_MAX_DIGITS} digits")
        return replace(state, pin=state.pin + key, pin_hint="")
    if key == "back":
        return replace(state, pin=state.pin[:-1], pin_hint="")
    if key == "ok":
        if len(state.pin) < PIN_MIN_DIGITS:
            return replace(state, pin_hint=f"at least {PIN_MIN_DIGITS} digits")
        return replace(state, screen="home", pin="", pin_hint="", locked=False)
    return state


def _home_key(state: PhoneState, key: str) -> PhoneState:
    if key in ("ok", "up", "down"):
        return replace(state, screen="menu")
    return state


def _menu_key(state: PhoneState, key: str) -> PhoneState:
    if key in MOVE_UP:
        return replace(state, menu_index=(state.menu_index - 1) % len(MENU))
    if key in MOVE_DOWN:
        return replace(state, menu_index=(state.menu_index + 1) % len(MENU))
    if key in DIGITS and 1 <= int(key) <= len(MENU):
        return replace(state, screen="section", menu_index=int(key) - 1, section_scroll=0)
    if key == "ok":
        return replace(state, screen="section", section_scroll=0)
    if key == "back":
        return replace(state, screen="home")
    return state


def section_lines(state: PhoneState) -> tuple[str, ...]:
    """What the open menu section lists, one entry per line."""
    section = state.section
    if section == "Contacts":
        return ("No contacts yet.",)
    if section == "Calls":
        return ("No calls.", "Call history is off.")
    if section == "Messages":
        return ("No messages.", "Message history is off.")
    if section == "Accounts":
        return ("No accounts yet.",)
    if section == "Settings":
        screen_off = f"{state.settings.screen_off_s} s" if state.settings.screen_off_s else "never"
        return (
            f"Clock: {'24h' if state.settings.clock_24h else '12h'}",
            f"Screen off: {screen_off}",
            *(f"! {notice}" for notice in state.notices),
        )
    # Security: this build has no encrypted store yet, and the screen must not pretend it has.
    return ("At-rest encryption:", "NOT ACTIVE in this", "build. PIN unchecked.")


def _section_key(state: PhoneState, key: str) -> PhoneState:
    if key == "back":
        return replace(state, screen="menu")
    if key in MOVE_UP:
        return replace(state, section_scroll=max(0, state.section_scroll - 1))
    if key in MOVE_DOWN:
        last = max(0, len(section_lines(state)) - SECTION_VISIBLE_LINES)
        return replace(state, section_scroll=min(last, state.section_scroll + 1))
    return state


_KEY_HANDLERS = {
    "pin_entry": _pin_entry_key,
    "home": _home_key,
    "menu": _menu_key,
    "section": _section_key,
}
