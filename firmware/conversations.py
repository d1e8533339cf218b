"""Conversations as the phone holds them: values folded from the chat unit's answers.

Contract: everything here is pure and frozen. A conversation is keyed by (account, peer); lines
are kept oldest first, at most ``LINES_KEPT`` (older ones stay only in the store, when message
history is on). Message text never appears in a repr.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field, replace

from firmware import effects as fx

LINES_KEPT = 200
LINE_CHARS = 21
"""Characters per line of the 128 px screen in the 6 px font."""
FINGERPRINT_GROUPS_PER_LINE = 2


@dataclass(frozen=True)
class Conversation:
    account: str
    peer: str
    security: fx.ChatSecurity = "plaintext"
    fingerprint: str = ""
    asks: str | None = None
    lines: tuple[fx.ChatLine, ...] = field(default=(), repr=False)
    unread: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return self.account, self.peer


def find(chats: tuple[Conversation, ...], key: tuple[str, str]) -> Conversation | None:
    return next((c for c in chats if c.key == key), None)


def updated(chats: tuple[Conversation, ...], key: tuple[str, str], **changes) -> tuple[Conversation, ...]:
    """``chats`` with the conversation ``key`` changed (created first when new), most recent last."""
    current = find(chats, key) or Conversation(*key)
    others = tuple(c for c in chats if c.key != key)
    return others + (replace(current, **changes),)


def with_view(chats: tuple[Conversation, ...], view: fx.ConversationView) -> tuple[Conversation, ...]:
    current = find(chats, (view.account, view.peer))
    changes = dict(security=view.security, fingerprint=view.fingerprint, asks=view.asks)
    if current is not None:
        # A new security state is news, but does not reorder the list.
        return tuple(replace(c, **changes) if c is current else c for c in chats)
    return updated(chats, (view.account, view.peer), **changes)


def with_line(chats: tuple[Conversation, ...], key: tuple[str, str], line: fx.ChatLine,
              read: bool) -> tuple[Conversation, ...]:
    """Add ``line``; an incoming message (not a notice) counts as unread unless ``read`` (on screen)."""
    current = find(chats, key) or Conversation(*key)
    unread = current.unread + (1 if line.incoming and line.status != "notice" and not read else 0)
    return updated(chats, key, lines=(current.lines + (line,))[-LINES_KEPT:], unread=unread)


def with_status(chats: tuple[Conversation, ...], key: tuple[str, str], message_id: str,
                status: fx.LineStatus) -> tuple[Conversation, ...]:
    current = find(chats, key)
    if current is None:
        return chats
    lines = tuple(replace(line, status=status) if line.message_id == message_id and not line.incoming else line
                  for line in current.lines)
    return tuple(replace(c, lines=lines) if c is current else c for c in chats)


def without_lines(chats: tuple[Conversation, ...]) -> tuple[Conversation, ...]:
    """Every conversation emptied (history erased), their security kept."""
    return tuple(replace(c, lines=(), unread=0) for c in chats)


def unread_total(chats: tuple[Conversation, ...]) -> int:
    return sum(c.unread for c in chats)


SECURITY_TEXT = {
    "plaintext": "NOT ENCRYPTED",
    "encrypted": "SECURE, unverified",
    "verified": "SECURE + verified",
    "key_changed": "KEY CHANGED! Verify",
    "finished": "NOT ENCRYPTED:ended",
}
"""What the conversation's security line says (at most 19 characters: it follows the padlock)."""
SECURITY_MARK = {"plaintext": "-", "encrypted": "!", "verified": "+", "key_changed": "!", "finished": "-"}
"""One character for lists: + verified, ! encrypted but not verified, - not encrypted."""
WARNING_STATES = frozenset({"plaintext", "key_changed", "finished"})

STATUS_MARK = {"queued": "..", "sent": "", "delivered": "", "received": "", "plain": "!", "notice": "*"}


def line_text(line: fx.ChatLine) -> str:
    """How a line reads: "> mine", "< theirs", "! < arrived unencrypted", "* notice"."""
    if line.status == "notice":
        return f"* {line.text}"
    arrow = "<" if line.incoming else ">"
    flag = "!" if line.status == "plain" else ""
    tail = " .." if line.status == "queued" else " v" if line.status == "delivered" else ""
    return f"{flag}{arrow} {line.text}{tail}"


def wrapped(lines: tuple[fx.ChatLine, ...], width: int = LINE_CHARS) -> tuple[str, ...]:
    """Every line as screen rows of at most ``width`` characters, oldest first."""
    rows: list[str] = []
    for line in lines:
        rows.extend(textwrap.wrap(line_text(line), width, subsequent_indent="  ", drop_whitespace=True) or [""])
    return tuple(rows)


def fingerprint_rows(fingerprint: str) -> tuple[str, ...]:
    """A fingerprint's five groups of eight, two groups per row, so it can be read aloud."""
    groups = fingerprint.upper().split()
    return tuple(" ".join(groups[i:i + FINGERPRINT_GROUPS_PER_LINE])
                 for i in range(0, len(groups), FINGERPRINT_GROUPS_PER_LINE))
