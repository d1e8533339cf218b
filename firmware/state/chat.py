"""Conversations: the Messages section's lines, the chat screen and the list screen, chat actions and
the chat unit's answers.

Contract: pure functions of (state, key or event) to state; work for the chat unit is requested
through ``effects``.
"""

from __future__ import annotations

from dataclasses import replace

from firmware import conversations as chat
from firmware import effects as fx
from firmware.conversations import Conversation
from firmware.profile import ACCOUNTS_RECORD, CONTACTS_RECORD, Account, Contact
from firmware.state.model import (CHAT_ROWS, MOVE_DOWN, MOVE_UP, Item, PhoneState, _on_off, _open_choices, _open_editor,
                                  _request, _save_part, _set_field)


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
