"""Text entry on the keypad: multi-tap letters, a mode, a cursor, and optional masking.

Contract: :class:`TextEntry` is an immutable value and every method is pure. Time is an argument
(seconds, any clock that only moves forward), never read here. :meth:`TextEntry.press` and
:meth:`TextEntry.tick` return the same object when nothing changed, so the owner can tell a key
the field did not use (``entry.press(key, now) is entry``) and redraw only on change.

Multi-tap: the first tap of a letter key shows the key's first character as *pending*; each
further tap of the same key within MULTITAP_TIMEOUT_S of the previous one moves to the next
character of the key's cycle (wrapping round). The pending character is committed (inserted at
the cursor, the cursor moving past it) by a different key, by the same key after the timeout,
by "#", "up" or "down", or by :meth:`TextEntry.tick` once the timeout has passed. A key whose
cycle holds one character (digits in "123" mode) types it at once, with nothing pending.

Keys (KEY_CYCLES; letters are upper case in "ABC" mode; in "123" mode the keys "0"-"9" type
their digit directly, "*" keeps its cycle):

    1  . @ - _ : / 1 , ? ! '      5  j k l 5      9  w x y z 9
    2  a b c 2                    6  m n o 6      0  (space) 0
    3  d e f 3                    7  p q r s 7    *  * # + = & % $ ; " ( ) < > [ ] { } \\ ^ ` | ~
    4  g h i 4                    8  t u v 8

    #     mode abc -> ABC -> 123 -> abc
    back  delete the pending character, else the character before the cursor
    up    cursor left; down: cursor right (both commit a pending character first)

In a mode each character is on at most one key, and every printable ASCII character (0x20-0x7e)
is on a key in "abc" or "ABC" mode. "ok" and any other key are left to the form owning the field.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

Mode = Literal["abc", "ABC", "123"]

MULTITAP_TIMEOUT_S = 1.0
DEFAULT_MAX_LENGTH = 128
MODES: tuple[Mode, ...] = ("abc", "ABC", "123")
SECRET_MASK = "*"
HIDDEN = "<hidden>"

MODE_KEY = "#"
DELETE_KEY = "back"
LEFT_KEY = "up"
RIGHT_KEY = "down"
DIGIT_KEYS = frozenset("0123456789")

KEY_CYCLES = {
    # What addresses need comes first ("user@host.example", "sip:a-b_c/d"), then the digit.
    "1": ".@-_:/1,?!'",
    "2": "abc2",
    "3": "def3",
    "4": "ghi4",
    "5": "jkl5",
    "6": "mno6",
    "7": "pqrs7",
    "8": "tuv8",
    "9": "wxyz9",
    "0": " 0",
    # The rest of ASCII's punctuation, so that passwords can hold anything; "#" is here because
    # the "#" key switches modes.
    "*": "*#+=&%$;\"()<>[]{}\\^`|~",
}
"""The lower-case ("abc" mode) cycle of each key that types (see the module docstring)."""


def cycle_for(key: str, mode: Mode, allowed: frozenset[str] | None = None) -> str:
    """The characters ``key`` cycles through in ``mode``, keeping only ``allowed`` ones if given.

    Empty for keys that type nothing (navigation keys, "ok", or a key none of whose characters
    are allowed).
    """
    if mode == "123" and key in DIGIT_KEYS:
        cycle = key
    else:
        cycle = KEY_CYCLES.get(key, "")
        if mode == "ABC":
            cycle = cycle.upper()
    if allowed is None:
        return cycle
    return "".join(c for c in cycle if c in allowed)


def next_mode(mode: Mode) -> Mode:
    """The mode "#" switches to from ``mode``."""
    return _mode_after(mode, 1)


@dataclass(frozen=True)
class Pending:
    """The key being multi-tapped: ``taps`` taps so far, the last one at time ``at``."""

    key: str
    taps: int
    at: float


@dataclass(frozen=True)
class TextView:
    """What a field shows: a window of the text ``width`` cells wide (or less, for short text).

    ``text`` is the window, masked for a secret field except for the pending character.
    ``cursor`` is the cell of the cursor in the window (``len(text)`` when it follows the last
    character); when ``pending`` is True that cell holds the character being multi-tapped.
    ``more_left`` / ``more_right`` say that the text goes on beyond the window on that side.
    """

    text: str
    cursor: int
    pending: bool
    more_left: bool
    more_right: bool


@dataclass(frozen=True, repr=False)
class TextEntry:
    """One text field being typed on the keypad (see the module contract).

    ``cursor`` is the insertion point in ``text`` (0..len(text)); a pending character sits at
    the cursor and counts towards ``max_length``. ``allowed``, if given, is the set of characters
    the field takes: the keys' cycles skip the others. A ``secret`` field (a password) is masked
    by :meth:`display` and its text is never in the repr.
    """

    text: str = ""
    cursor: int = 0
    mode: Mode = "abc"
    pending: Pending | None = None
    max_length: int = DEFAULT_MAX_LENGTH
    secret: bool = False
    allowed: frozenset[str] | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        if not 0 <= self.cursor <= len(self.text):
            raise ValueError(f"cursor {self.cursor} is outside the text (0..{len(self.text)})")
        if self.max_length < 1:
            raise ValueError(f"max_length must be at least 1, not {self.max_length}")
        if self._length() > self.max_length:
            raise ValueError(f"{self._length()} characters do not fit in max_length {self.max_length}")
        if self.allowed is not None and not isinstance(self.allowed, frozenset):
            raise TypeError(f"allowed must be a frozenset of characters or None, not {type(self.allowed).__name__}")

    def __repr__(self) -> str:
        hidden = {"text", "pending"} if self.secret else set()
        parts = (f"{f.name}={HIDDEN if f.name in hidden else repr(getattr(self, f.name))}" for f in fields(self))
        return f"TextEntry({', '.join(parts)})"

    @property
    def value(self) -> str:
        """The text, with a pending character committed: what the field holds on "ok"."""
        return self._committed().text

    def press(self, key: str, now: float) -> TextEntry:
        """The field after ``key`` is pressed at time ``now``; ``self`` for a key it does not use."""
        if key == MODE_KEY:
            entry = self._committed()
            return replace(entry, mode=next_mode(entry.mode))
        if key == DELETE_KEY:
            return self._delete()
        if key == LEFT_KEY:
            return self._move(-1)
        if key == RIGHT_KEY:
            return self._move(+1)
        cycle = cycle_for(key, self.mode, self.allowed)
        if not cycle:
            return self
        return self._tap(key, cycle, now)

    def tick(self, now: float) -> TextEntry:
        """The field at time ``now``: a pending character whose timeout has passed is committed."""
        if self.pending is not None and self._timed_out(now):
            return self._committed()
        return self

    def display(self, now: float, width: int) -> TextView:
        """The view of the field at ``now`` in a window ``width`` (>= 1) characters wide.

        The window follows the cursor, keeping it near the middle where the text allows, and
        always has room for the cell after the last character.
        """
        if width < 1:
            raise ValueError(f"width must be at least 1, not {width}")
        entry = self.tick(now)
        shown = entry._shown_text()
        start = min(max(0, entry.cursor - width // 2), max(0, len(shown) + 1 - width))
        return TextView(
            text=shown[start:start + width],
            cursor=entry.cursor - start,
            pending=entry.pending is not None,
            more_left=start > 0,
            more_right=start + width < len(shown),
        )

    def _length(self) -> int:
        return len(self.text) + (self.pending is not None)

    def _pending_char(self) -> str:
        cycle = cycle_for(self.pending.key, self.mode, self.allowed)
        return cycle[(self.pending.taps - 1) % len(cycle)]

    def _timed_out(self, now: float) -> bool:
        return now - self.pending.at >= MULTITAP_TIMEOUT_S

    def _shown_text(self) -> str:
        """The text with the pending character in place; masked but for that one if secret."""
        if self.pending is None:
            return SECRET_MASK * len(self.text) if self.secret else self.text
        before, after = self.text[:self.cursor], self.text[self.cursor:]
        if self.secret:
            before, after = SECRET_MASK * len(before), SECRET_MASK * len(after)
        return before + self._pending_char() + after

    def _insert(self, char: str) -> TextEntry:
        text = self.text[:self.cursor] + char + self.text[self.cursor:]
        return replace(self, text=text, cursor=self.cursor + 1, pending=None)

    def _committed(self) -> TextEntry:
        return self if self.pending is None else self._insert(self._pending_char())

    def _tap(self, key: str, cycle: str, now: float) -> TextEntry:
        if self.pending is not None and self.pending.key == key and not self._timed_out(now):
            return replace(self, pending=Pending(key, self.pending.taps + 1, now))
        entry = self._committed()
        if len(entry.text) >= entry.max_length:
            return entry
        if len(cycle) == 1:
            return entry._insert(cycle)
        return replace(entry, pending=Pending(key, 1, now))

    def _delete(self) -> TextEntry:
        if self.pending is not None:
            return replace(self, pending=None)
        if self.cursor == 0:
            return self
        text = self.text[:self.cursor - 1] + self.text[self.cursor:]
        return replace(self, text=text, cursor=self.cursor - 1)

    def _move(self, step: int) -> TextEntry:
        entry = self._committed()
        cursor = min(max(0, entry.cursor + step), len(entry.text))
        return entry if cursor == entry.cursor else replace(entry, cursor=cursor)


def keys_for(text: str, mode: Mode = "abc", *, allowed: frozenset[str] | None = None) -> list[str]:
    """The key presses that type ``text`` into an empty field starting in ``mode``.

    Pressed in order through :meth:`TextEntry.press` (each within MULTITAP_TIMEOUT_S of the one
    before) they leave ``value == text`` in a field with the same ``mode`` and ``allowed`` and a
    large enough ``max_length``. A character stays in the current mode when it can, else the
    fewest "#" presses reach a mode that has it; "down" commits a pending character before the
    next one on the same key. ValueError names a character no key types.
    """
    keys: list[str] = []
    pending_key = None
    for char in text:
        hops = _mode_hops_to(char, mode, allowed)
        if hops:
            keys += [MODE_KEY] * hops
            mode = _mode_after(mode, hops)
            pending_key = None
        key, cycle = _key_for(char, mode, allowed)
        if key == pending_key:
            keys.append(RIGHT_KEY)
        keys += [key] * (cycle.index(char) + 1)
        pending_key = key if len(cycle) > 1 else None
    return keys


def _mode_after(mode: Mode, hops: int) -> Mode:
    return MODES[(MODES.index(mode) + hops) % len(MODES)]


def _key_for(char: str, mode: Mode, allowed: frozenset[str] | None) -> tuple[str, str] | None:
    """(key, its cycle) for the key that types ``char`` in ``mode``; None if none does."""
    for key in KEY_CYCLES:
        cycle = cycle_for(key, mode, allowed)
        if char in cycle:
            return key, cycle
    return None


def _mode_hops_to(char: str, mode: Mode, allowed: frozenset[str] | None) -> int:
    """How many "#" presses from ``mode`` reach the first mode with a key for ``char``."""
    for hops in range(len(MODES)):
        if _key_for(char, _mode_after(mode, hops), allowed) is not None:
            return hops
    raise ValueError(f"no key types {char!r}" + ("" if allowed is None else " among the allowed characters"))
