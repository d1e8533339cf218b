"""The keypad's wires for gpiozero's MockFactory: press keys and lift the handset by driving pins.

A MockKeypadWiring makes the row, column and hook pins of a MockFactory behave like the
handset's key matrix and cradle switch, so the real MatrixKeypad scans them as it would on a
handset. Create it BEFORE the keypad opens the pins: MockFactory keeps one pin object per GPIO
and hands the first one made to everyone after, so the wiring must be the one that makes them
(the constructor raises ValueError when it comes too late).
"""

from __future__ import annotations

from collections.abc import Callable

from gpiozero.pins.mock import MockFactory, MockPin

from drivers.keys.events import KEYPAD_KEYS
from drivers.pinmap import PinMap


class MockRowPin(MockPin):
    """A row wire: tells the wiring whenever its level or direction changes."""

    def __init__(self, factory, info, on_change: Callable[[], None]):
        self._on_change = on_change
        super().__init__(factory, info)

    def _change_state(self, value):
        changed = super()._change_state(value)
        if changed:
            self._on_change()
        return changed

    def _set_function(self, value):
        super()._set_function(value)
        self._on_change()

    @property
    def driven_low(self) -> bool:
        return self._function == "output" and not self._state


class MockSwitchedPin(MockPin):
    """An input with a switch to ground: reads LOW while ``closed()`` holds, else its pull level."""

    def __init__(self, factory, info, closed: Callable[[], bool]):
        self._closed = closed
        super().__init__(factory, info)

    def _set_pull(self, value):
        super()._set_pull(value)
        self.refresh()

    def refresh(self) -> None:
        """Set the level from the switch (called whenever the switch or the rows change)."""
        if self._function != "input":
            return
        if self._closed():
            self.drive_low()
        elif self._pull == "up":
            self.drive_high()


class MockKeypadWiring:
    """The key matrix and cradle switch of ``pinmap`` on ``factory`` (see the module docstring).

    Column c reads LOW iff some pressed key (r, c) has its row r driven LOW. The handset starts
    on the cradle with no key pressed.
    """

    def __init__(self, factory: MockFactory, pinmap: PinMap):
        self._pinmap = pinmap
        self._position = {name: (r, c) for r, row in enumerate(pinmap.keys) for c, name in enumerate(row)}
        self._pressed: set[tuple[int, int]] = set()
        self._off_hook = False
        self.rows: list[MockRowPin] = []
        self.columns: list[MockSwitchedPin] = []  # empty while the rows are made: nothing to refresh yet
        self.rows = [self._make_pin(factory, pin, MockRowPin, on_change=self._refresh_columns) for pin in pinmap.rows]
        self.columns = [
            self._make_pin(factory, pin, MockSwitchedPin, closed=lambda c=c: self._column_closed(c))
            for c, pin in enumerate(pinmap.columns)
        ]
        self.hook = self._make_pin(factory, pinmap.hook, MockSwitchedPin, closed=self._hook_closed)
        self._refresh_columns()
        self.hook.refresh()

    @staticmethod
    def _make_pin(factory: MockFactory, number: int, pin_class: type[MockPin], **wires) -> MockPin:
        pin = factory.pin(number, pin_class=pin_class, **wires)
        if type(pin) is not pin_class:
            raise ValueError(
                f"GPIO{number} already exists as a {type(pin).__name__}: "
                "create MockKeypadWiring before the keypad opens its pins"
            )
        return pin

    def _column_closed(self, column: int) -> bool:
        return any(c == column and self.rows[r].driven_low for r, c in self._pressed)

    def _hook_closed(self) -> bool:
        return self._off_hook != self._pinmap.hook_closed_on_hook

    def _refresh_columns(self) -> None:
        for column in self.columns:
            column.refresh()

    def _key(self, key: str) -> tuple[int, int]:
        try:
            return self._position[key]
        except KeyError:
            raise ValueError(f"no key {key!r} on this keypad (keys: {', '.join(k for k in KEYPAD_KEYS if k in self._position)})") from None

    def press(self, key: str) -> None:
        """Close the contact of ``key`` (held until release())."""
        self._pressed.add(self._key(key))
        self._refresh_columns()

    def release(self, key: str) -> None:
        """Open the contact of ``key``."""
        self._pressed.discard(self._key(key))
        self._refresh_columns()

    def lift_handset(self) -> None:
        """Take the handset off the cradle (off-hook)."""
        self._off_hook = True
        self.hook.refresh()

    def hang_up(self) -> None:
        """Put the handset back on the cradle (on-hook)."""
        self._off_hook = False
        self.hook.refresh()
