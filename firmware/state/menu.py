"""The home screen, the menu and the menu sections' keys: what OK on a section's item does.

Contract: pure functions of (state, key) to state; settings are saved through ``effects``.
"""

from __future__ import annotations

from dataclasses import replace

from firmware import conversations as chat
from firmware import effects as fx
from firmware.profile import Profile
from firmware.state.chat import _chat_action
from firmware.state.network import NETWORK_VERBS, _network_action
from firmware.state.forms import _account_form, _contact_form, _open_form
from firmware.state.model import (DIGITS, LOCK_AFTER_CHOICES, MENU, MOVE_DOWN, MOVE_UP, SCREEN_OFF_CHOICES, PhoneState,
                                  PinEntry, _open_editor, _request, _save_settings)
from firmware.state.pin import _lock
from firmware.state.sections import section_items


def _home_key(state: PhoneState, key: str) -> PhoneState:
    if key in ("ok", "up", "down"):
        return replace(state, screen="menu")
    if key in DIGITS or key in ("*", "#"):
        return replace(state, screen="dial", dial=key)
    return state


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


def _open_section(state: PhoneState) -> PhoneState:
    return replace(state, screen="section", section_index=0)


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
    if verb in NETWORK_VERBS:
        return _network_action(state, verb, args)
    return _chat_action(state, verb, args)


def _list_key(state: PhoneState, key: str) -> PhoneState:
    """The list screen: moving, Back to where it came from, OK does its item's action."""
    choices = state.choices
    if key == "back":
        return replace(state, screen=choices.back, choices=None)
    if key in MOVE_UP:
        return replace(state, choices=replace(choices, selected=max(0, choices.selected - 1)))
    if key in MOVE_DOWN:
        return replace(state, choices=replace(choices, selected=min(len(choices.items) - 1, choices.selected + 1)))
    if key == "ok" and choices.items[choices.selected].action:
        return _section_action(replace(state, screen=choices.back, choices=None), choices.items[choices.selected].action)
    return state
