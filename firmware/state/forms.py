"""The account and contact forms: their fields, their keys and their actions (Save, Delete, Call...).

Contract: pure functions of (state, key) to state; saving asks the store through ``effects``.
"""

from __future__ import annotations

from dataclasses import replace

from firmware import effects as fx
from firmware.profile import (ACCOUNTS_RECORD, CONTACTS_RECORD, SIP_TRANSPORTS, Account, Contact, Profile, ProfileError,
                              make_account, make_contact)
from firmware.state.calls import _call_contact
from firmware.state.chat import _chat_with_contact
from firmware.state.model import (MOVE_DOWN, MOVE_UP, Form, FormField, PhoneState, _open_editor, _request, _save_part,
                                  _set_field)


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
