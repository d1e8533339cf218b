"""Phone state and the one function that changes it.

Contract: :func:`step` is pure. Given a state and an event it returns the next state (the same
object when nothing changed, so the supervisor redraws only on change). It never raises for
any key, tick or store answer; unknown events leave the state as it is. Work it cannot do itself
(opening the encrypted store, saving) it requests through ``effects`` (see firmware/effects.py);
the supervisor takes them out and performs them. Secrets typed on the keypad (PINs, passwords)
live in the state only as long as a screen needs them and never appear in its repr.

The package, one module a concern (lower ones never import higher ones, nor this one):

- ``model``: PhoneState and the values it holds, the constants, Tick and BootFinished, and the
  small helpers every part uses (requesting an effect, saving a profile part, opening the editor).
- ``chat``: conversations, the chat and list screens, chat actions and the chat unit's answers.
- ``editor``: the text editor screen and where its text goes.
- ``sections``: what each menu section lists.
- ``calls``: dialing, the hook, call keys, the call unit's answers, the call log, the lab's offer.
- ``forms``: the account and contact forms.
- ``pin``: PIN entry, locking and the store's answers.
- ``network``: the Network list, finding and joining Wi-Fi, the network unit's answers.
- ``menu``: the home screen, the menu, the sections' and lists' keys.
- here: :func:`step`, time, key routing and the tables of key and result handlers.
"""

from __future__ import annotations

from dataclasses import replace

from drivers.keys.events import KeyEvent
from firmware import effects as fx
from firmware.state.calls import (_account_status, _call_changed, _call_key, _call_logged, _dial_key, _hook,
                                  _lab_offered, sip_account)
from firmware.state.chat import (CHAT_EDITS, _account_registered, _chat_failed, _chat_history, _chat_key,
                                 _chat_key_shown, _chat_line_added, _chat_line_status, _conversation_changed,
                                 _password_changed, _presence_shown, _roster_shown, _subscription_asked, chat_account,
                                 conversation_line, open_conversation, peer_name, standing, unread_line)
from firmware.state.editor import _edit_key
from firmware.state.forms import _form_key, form_lines
from firmware.state.menu import _home_key, _list_key, _menu_key, _section_key
from firmware.state.network import _network_failed, _network_shown, _wifi_key_made, _wifi_scanned
from firmware.state.model import (CALL_ENDED_SHOWN_S, CALL_LOG_SHOWN, CHAT_ROWS, DEFAULT_MIN_SECRET, DIAL_MAX_DIGITS,
                                  DIGITS, LOCK_AFTER_CHOICES, MENU, MOVE_DOWN, MOVE_UP, PIN_FLOWS, PIN_MAX_DIGITS,
                                  SCREEN_OFF_CHOICES, TEXT_MAX, VISIBLE_LINES, BootFinished, Choices, Editor, Event,
                                  Form, FormField, Item, PhoneState, PinEntry, Screen, StoreInfo, Tick, clock_text,
                                  min_secret_length, secret_word)
from firmware.state.pin import (_factory_fresh, _lock, _pin_key, _saved, _secret_accepted, _secret_refused,
                                _store_failed, _store_opened, _unavailable, _unlocked)
from firmware.state.sections import section_items

__all__ = [
    "CALL_ENDED_SHOWN_S", "CALL_LOG_SHOWN", "CHAT_EDITS", "CHAT_ROWS", "DEFAULT_MIN_SECRET", "DIAL_MAX_DIGITS",
    "DIGITS", "LOCK_AFTER_CHOICES", "MENU", "MOVE_DOWN", "MOVE_UP", "PIN_FLOWS", "PIN_MAX_DIGITS",
    "SCREEN_OFF_CHOICES", "TEXT_MAX", "VISIBLE_LINES", "BootFinished", "Choices", "Editor", "Event", "Form",
    "FormField", "Item", "PhoneState", "PinEntry", "Screen", "StoreInfo", "Tick", "chat_account", "clock_text",
    "conversation_line", "form_lines", "min_secret_length", "open_conversation", "peer_name", "secret_word",
    "section_items", "sip_account", "standing", "step", "unread_line",
]


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
    fx.WifiScanned: _wifi_scanned,
    fx.WifiKeyMade: _wifi_key_made,
    fx.NetworkShown: _network_shown,
    fx.NetworkFailed: _network_failed,
}
