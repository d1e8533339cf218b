"""The key events every keys backend produces: one small frozen type for keys and the hook."""

from __future__ import annotations

from dataclasses import dataclass

KEYPAD_KEYS = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "*", "0", "#", "up", "down", "ok", "back")
"""Names of the keypad keys, as hw/pinmap.toml's keypad.keys spells them."""

HOOK = "hook"
"""The cradle switch, reported as one more key: pressed=True means the handset is lifted."""

KEY_NAMES = frozenset((*KEYPAD_KEYS, HOOK))


@dataclass(frozen=True, slots=True)
class KeyEvent:
    """A debounced change of one key, or of the hook.

    ``key`` is one of KEYPAD_KEYS or HOOK. For a keypad key ``pressed`` is True when it goes
    down and False when it comes up. For the hook ``pressed`` is True when the handset goes
    OFF-hook (lifted) and False when it goes back ON-hook (on the cradle): compare with the
    OFF_HOOK and ON_HOOK constants rather than reading ``pressed`` for the hook.

    The hook is a key rather than a type of its own so that every backend has one stream of one
    type; a backend's stream starts from the idle state (no key down, handset on the cradle), so a
    key held or a handset lifted when the backend opens is reported as an event.
    """

    key: str
    pressed: bool

    def __post_init__(self):
        if self.key not in KEY_NAMES:
            raise ValueError(f"unknown key {self.key!r} (one of {', '.join(sorted(KEY_NAMES))})")
        if not isinstance(self.pressed, bool):
            raise ValueError(f"KeyEvent.pressed must be a bool, not {self.pressed!r}")


OFF_HOOK = KeyEvent(HOOK, True)
ON_HOOK = KeyEvent(HOOK, False)
