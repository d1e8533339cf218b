"""What each menu section lists, one :class:`Item` per line.

Contract: pure functions of the state to lines; OK on an item is handled in firmware/state/menu.py.
"""

from __future__ import annotations

import time

from firmware import effects as fx
from firmware.profile import Account, Profile, Settings
from firmware.state.chat import _contact_line, _messages_items
from firmware.state.model import Item, PhoneState, _on_off, secret_word


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
        Item("Network", ("network",)),
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
