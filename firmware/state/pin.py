"""PIN entry, locking, and the store's answers (opened, unlocked, secret accepted or refused...).

Contract: pure functions of (state, key or event) to state; the secret typed goes to the store
only as a request in ``effects``, and lives in the state only while the PIN screen needs it.
"""

from __future__ import annotations

from dataclasses import replace

from firmware import effects as fx
from firmware.state.calls import _merge_lab
from firmware.state.editor import _next_password_prompt
from firmware.state.model import (DIGITS, PIN_FLOWS, PIN_MAX_DIGITS, PhoneState, PinEntry, StoreInfo, _request,
                                  min_secret_length, secret_word)


def _lock(state: PhoneState) -> PhoneState:
    """Hide everything behind the PIN; calls and chat keep running underneath."""
    return replace(state, screen="pin", pin=PinEntry("lock"), locked=True, form=None, editor=None,
                   toast="", password_queue=(), choices=None, chat_open=None)


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
