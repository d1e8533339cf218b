"""The text editor screen: typing into a target and what OK or Back does with the text.

Contract: pure functions of (state, key) to state; committed text goes to its target (a form field,
a setting, a chat, an account password) and any work is requested through ``effects``.
"""

from __future__ import annotations

from dataclasses import replace

from firmware import effects as fx
from firmware.profile import ProfileError, check_text
from firmware.state.chat import CHAT_EDITS, _commit_chat_edit
from firmware.state.model import PhoneState, _open_editor, _request, _save_settings, _set_field
from firmware.state.network import _commit_wifi_key


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
    if kind == "wifi_key":
        return _commit_wifi_key(state, target, text)
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
    if kind in ("setting", "wifi_key"):
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
