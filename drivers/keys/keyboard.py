"""The PC keyboard as the handset's keypad and hook switch (the simulator's keys backend).

A terminal reports key presses but no releases, so each key is posted as a press followed at
once by its release. The hook is a toggle: each press of the space bar lifts or hangs up.
"""

from __future__ import annotations

import asyncio
import os
import select
import termios
import tty
from collections.abc import Callable

from drivers.errors import DeviceError
from drivers.keys.events import HOOK, KeyEvent

KEYMAP: dict[bytes, str] = {
    **{d.encode(): d for d in "0123456789*#"},
    b"\x1b[A": "up",
    b"\x1b[B": "down",
    b"\r": "ok",
    b"\n": "ok",
    b"\x7f": "back",
    b"\x08": "back",
    b"\x1b": "back",
}
"""Bytes a terminal sends -> key name. Arrows are the only multi-byte sequences we read."""

READ_SIZE = 64
HOOK_TOGGLE = b" "
QUIT_KEYS = (b"q", b"\x03")  # q, Ctrl-C (raw mode delivers it as a byte, not a signal)

KEYMAP_HELP = (
    ("0-9 * #", "keypad"),
    ("Up / Down", "navigate"),
    ("Enter", "OK"),
    ("Backspace / Esc", "Back"),
    ("Space", "lift / hang up"),
    ("q", "quit"),
)
"""The key map for a person, shown by the simulator and the README."""


def split_keys(data: bytes) -> list[bytes]:
    """Cut what one read returned into key sequences (an arrow is ESC [ X, anything else one byte)."""
    out: list[bytes] = []
    i = 0
    while i < len(data):
        if data[i:i + 2] == b"\x1b[" and i + 2 < len(data):
            out.append(data[i:i + 3])
            i += 3
        else:
            out.append(data[i:i + 1])
            i += 1
    return out


class KeyboardKeys:
    """Reads a terminal in raw mode; posts KeyEvents; calls ``on_quit`` for q or Ctrl-C."""

    def __init__(self, fd: int, on_quit: Callable[[], None]):
        if not os.isatty(fd):
            raise DeviceError("keyboard", "driver", "standard input is not a terminal")
        self._fd = fd
        self._on_quit = on_quit
        self._saved = termios.tcgetattr(fd)
        self._off_hook = False
        tty.setraw(fd)

    def feed(self, data: bytes, post: Callable[[KeyEvent], None]) -> None:
        """Translate the bytes of one read into events (ignores bytes that are no key)."""
        for seq in split_keys(data):
            if seq in QUIT_KEYS:
                self._on_quit()
            elif seq == HOOK_TOGGLE:
                self._off_hook = not self._off_hook
                post(KeyEvent(HOOK, self._off_hook))
            elif seq in KEYMAP:
                post(KeyEvent(KEYMAP[seq], True))
                post(KeyEvent(KEYMAP[seq], False))

    async def run(self, post: Callable[[KeyEvent], None]) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self._fd, self._read_ready, post)
        try:
            await asyncio.Event().wait()  # runs until cancelled
        finally:
            loop.remove_reader(self._fd)

    def _read_ready(self, post: Callable[[KeyEvent], None]) -> None:
        # A reader callback can be stale (another one already took the bytes): check, never block.
        if select.select([self._fd], [], [], 0)[0]:
            self.feed(os.read(self._fd, READ_SIZE), post)

    def close(self) -> None:
        if self._saved is not None:
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._saved = None


def open_keyboard(*, fd: int = 0, on_quit: Callable[[], None] = lambda: None, **_ignored) -> KeyboardKeys:
    """The keyboard backend; matrix settings (scan rate, debounce) do not apply and are ignored."""
    return KeyboardKeys(fd, on_quit)
