"""Calls: dialing, the hook, the keys during a call, the call unit's answers, the call log and the
lab's offer.

Contract: pure functions of (state, key or event) to state; calls are placed, answered and ended
by requests in ``effects``.
"""

from __future__ import annotations

from dataclasses import replace

from firmware import effects as fx
from firmware.profile import ACCOUNTS_RECORD, CONTACTS_RECORD, Account
from firmware.state.model import (CALL_ENDED_SHOWN_S, CALL_LOG_SHOWN, DIAL_MAX_DIGITS, DIGITS, PhoneState, _request,
                                  _save_part)
from firmware.state.sections import section_items


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
