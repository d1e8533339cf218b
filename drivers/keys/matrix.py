"""The real keypad: a row-by-row scan of the key matrix plus the hook switch, debounced in our code.

The same code runs on a handset (lgpio pin factory) and everywhere else (gpiozero MockFactory,
with drivers.keys.mock_wiring standing in for the keypad's wires). Scanning happens on the one
asyncio loop, with no thread and no GPIO edge callback, so every key event lands on that loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gpiozero import DigitalOutputDevice, InputDevice
from gpiozero.pins import Factory

from drivers.errors import DeviceError
from drivers.gpio import open_pin_factory
from drivers.keys.events import HOOK, KEYPAD_KEYS, KeyEvent
from drivers.pinmap import DEFAULT_PINMAP, PinMap, load_pinmap

if TYPE_CHECKING:
    from drivers.keys.mock_wiring import MockKeypadWiring

DEVICE = "keypad"
DEFAULT_SCAN_HZ = 100
DEFAULT_DEBOUNCE_MS = 20
# Scan times given as sums of float periods land a hair short of the exact debounce time.
CLOCK_SLACK_S = 1e-6


class DebouncedContact:
    """One contact's debounced state (an integrator over scans, in time rather than counts).

    The state flips only once the raw reading has differed from it on consecutive scans that
    span at least ``debounce_s``; one scan reading the old state again restarts the wait, so
    chatter shorter than the debounce time never gets through. With ``debounce_s == 0`` every
    change is taken at once.
    """

    __slots__ = ("closed", "_debounce_s", "_differs_since")

    def __init__(self, debounce_s: float):
        self.closed = False
        self._debounce_s = debounce_s
        self._differs_since: float | None = None

    def sample(self, closed: bool, now: float) -> bool:
        """Feed one raw reading taken at ``now`` (seconds); return True when the state flipped."""
        if closed == self.closed:
            self._differs_since = None
            return False
        if self._differs_since is None:
            self._differs_since = now
        if now - self._differs_since < self._debounce_s - CLOCK_SLACK_S:
            return False
        self.closed = closed
        self._differs_since = None
        return True


class MatrixKeypad:
    """Scans the key matrix and the hook switch of ``pinmap`` through ``pin_factory``.

    Rows are outputs, idle HIGH; the selected row is driven LOW. Columns and the hook are
    inputs with pull-ups, so a closed contact reads LOW. Each key and the hook are debounced
    on their own (DebouncedContact), so keys held together are reported independently.
    Idle rows are driven HIGH, so the board has a diode in each row line (cathode to the GPIO,
    hw/wiring.md): without them two keys held in one column would join a HIGH row to the LOW one.
    With them the rows behave as open-drain and any two keys held are read right.

    ``scan(now)`` reads every pin once and returns the debounced events; ``run(post)`` calls
    it every 1/scan_hz s on the running asyncio loop. ``close()`` releases every pin.
    Raises DeviceError (setting ``pinmap``, ``scan_hz`` or ``debounce_ms``) when the pin map is
    unusable, a pin cannot be opened, or a setting is out of range.
    """

    def __init__(
        self,
        pinmap: PinMap,
        pin_factory: Factory,
        scan_hz: float = DEFAULT_SCAN_HZ,
        debounce_ms: float = DEFAULT_DEBOUNCE_MS,
    ):
        if not isinstance(scan_hz, (int, float)) or not 1 <= scan_hz <= 1000:
            raise DeviceError(DEVICE, "scan_hz", f"scan rate must be 1-1000 Hz, not {scan_hz!r}")
        if not isinstance(debounce_ms, (int, float)) or not 0 <= debounce_ms <= 500:
            raise DeviceError(DEVICE, "debounce_ms", f"debounce time must be 0-500 ms, not {debounce_ms!r}")
        check_keypad_pinmap(pinmap)
        self.scan_hz = scan_hz
        self.debounce_ms = debounce_ms
        self.pin_factory = pin_factory
        self.scan_count = 0
        self.mock_wiring: MockKeypadWiring | None = None  # set by open_matrix_keypad(pin_factory="mock")
        self._closed = False
        self._devices: list[DigitalOutputDevice | InputDevice] = []
        try:
            # initial_value=False with active_high=False: every row starts idle (HIGH).
            self._rows = [self._open(DigitalOutputDevice, pin, "row", active_high=False, initial_value=False) for pin in pinmap.rows]
            # InputDevice rather than DigitalInputDevice: we poll, and DigitalInputDevice would
            # register an edge callback (on lgpio a callback thread firing on every scan).
            self._columns = [self._open(InputDevice, pin, "column", pull_up=True) for pin in pinmap.columns]
            self._hook = self._open(InputDevice, pinmap.hook, "hook", pull_up=True)
        except DeviceError:
            self.close()
            raise
        debounce_s = debounce_ms / 1000
        self._keys = [[(name, DebouncedContact(debounce_s)) for name in row] for row in pinmap.keys]
        self._hook_closed_on_hook = pinmap.hook_closed_on_hook
        self._off_hook = DebouncedContact(debounce_s)

    def _open(self, device_class, pin: int, role: str, **options):
        try:
            device = device_class(pin, pin_factory=self.pin_factory, **options)
        except Exception as e:  # gpiozero, lgpio and the mock each raise their own types for a pin not to be had
            raise DeviceError(DEVICE, "pinmap", f"cannot open GPIO{pin} ({role}): {e}") from None
        self._devices.append(device)
        return device

    def scan(self, now: float | None = None) -> list[KeyEvent]:
        """Read every contact once at time ``now`` (seconds, default time.monotonic()) and return
        the debounced changes it completes: keys row by row, then the hook."""
        if self._closed:
            raise RuntimeError("the keypad is closed")
        if now is None:
            now = time.monotonic()
        events = []
        columns = self._columns
        for row, keys in zip(self._rows, self._keys, strict=True):
            row.on()
            closed = [column.is_active for column in columns]
            row.off()
            for (name, contact), is_closed in zip(keys, closed, strict=True):
                if contact.sample(is_closed, now):
                    events.append(KeyEvent(name, contact.closed))
        off_hook = self._hook.is_active != self._hook_closed_on_hook
        if self._off_hook.sample(off_hook, now):
            events.append(KeyEvent(HOOK, self._off_hook.closed))
        self.scan_count += 1
        return events

    async def run(self, post: Callable[[KeyEvent], None]) -> None:
        """Scan every 1/scan_hz s on the running loop and call ``post`` with each event, until
        close() or cancellation. ``post`` runs on the loop and must not block."""
        period = 1 / self.scan_hz
        next_scan = time.monotonic()
        while not self._closed:
            for event in self.scan():
                post(event)
            next_scan += period
            now = time.monotonic()
            if next_scan < now:
                # The loop was held up: skip the missed scans rather than run them back to back
                # (debouncing counts time, so a burst would add nothing).
                next_scan = now
            await asyncio.sleep(next_scan - now)

    def close(self) -> None:
        """Release every pin (idempotent); the pins can then be opened again."""
        self._closed = True
        while self._devices:
            self._devices.pop().close()


def check_keypad_pinmap(pinmap: PinMap) -> None:
    """Raise DeviceError (setting ``pinmap``) unless the keypad part of ``pinmap`` is usable."""
    if not pinmap.rows or not pinmap.columns:
        raise DeviceError(DEVICE, "pinmap", "the keypad needs at least one row and one column")
    if len(pinmap.keys) != len(pinmap.rows) or any(len(row) != len(pinmap.columns) for row in pinmap.keys):
        raise DeviceError(DEVICE, "pinmap", f"keypad.keys must be {len(pinmap.rows)} rows of {len(pinmap.columns)} keys")
    pins = [*pinmap.rows, *pinmap.columns, pinmap.hook]
    repeated = sorted({pin for pin in pins if pins.count(pin) > 1})
    if repeated:
        raise DeviceError(DEVICE, "pinmap", f"GPIO {', '.join(map(str, repeated))} used twice in the keypad and hook")
    names = [name for row in pinmap.keys for name in row]
    unknown = [name for name in names if name not in KEYPAD_KEYS]
    if unknown:
        raise DeviceError(DEVICE, "pinmap", f"unknown key names {unknown} (keys are {', '.join(KEYPAD_KEYS)})")
    repeated_names = sorted({name for name in names if names.count(name) > 1})
    if repeated_names:
        raise DeviceError(DEVICE, "pinmap", f"keys {repeated_names} appear twice in keypad.keys")


def open_matrix_keypad(
    pin_factory: str | Factory = "lgpio",
    pinmap: str | Path | PinMap = DEFAULT_PINMAP,
    scan_hz: float = DEFAULT_SCAN_HZ,
    debounce_ms: float = DEFAULT_DEBOUNCE_MS,
) -> MatrixKeypad:
    """The "matrix" keys backend: a MatrixKeypad from settings.

    ``pin_factory`` is a name for drivers.gpio.open_pin_factory ("lgpio" or "mock") or an open
    gpiozero Factory to share with other drivers. With "mock" the keypad's wires are simulated
    too: ``keypad.mock_wiring`` is a MockKeypadWiring that presses keys by driving the pins.
    ``pinmap`` is a pin map file (hw/pinmap.toml by default) or a loaded PinMap.
    """
    if not isinstance(pinmap, PinMap):
        pinmap = load_pinmap(pinmap)
    wiring = None
    if isinstance(pin_factory, str):
        factory = open_pin_factory(pin_factory)
        if pin_factory == "mock":
            from drivers.keys.mock_wiring import MockKeypadWiring

            check_keypad_pinmap(pinmap)
            wiring = MockKeypadWiring(factory, pinmap)
    else:
        factory = pin_factory
    keypad = MatrixKeypad(pinmap, factory, scan_hz=scan_hz, debounce_ms=debounce_ms)
    keypad.mock_wiring = wiring
    return keypad
