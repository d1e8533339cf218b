"""The handset's indicators: the message, in-call and secure LEDs and the ringer, through gpiozero.

Cadences (LED blink, ring) run in one small daemon thread per active output rather than on the
asyncio loop: the loop also carries SIP, ZRTP and XMPP work, and a ring that stutters whenever a
handshake holds the loop for a few hundred milliseconds is audible. The threads share no state
with the loop; each touches only its own output, is started and stopped (joined) from the
caller's thread, and never outlives close(). This is the same design as gpiozero's own blink(),
which has one on/off pair only and so cannot play a double ring.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from gpiozero import LED, Buzzer, DigitalOutputDevice
from gpiozero.pins import Factory

from drivers.errors import DeviceError
from drivers.pinmap import PinMap

DEVICE = "indicators"
LED_NAMES = ("message", "in_call", "secure")
RINGER = "ringer"
LED_MODES = ("off", "on", "blink")
RINGER_MODES = ("off", "ring")

BLINK_CADENCE_S = (0.5, 0.5)
"""LED blink: on, off (seconds), repeated."""
RING_CADENCE_S = (0.4, 0.2, 0.4, 2.0)
"""UK/EU double ring: on, off, on, off (seconds), repeated."""


class CadencePlayer:
    """Repeats ``cadence_s`` (alternating on and off times in seconds, starting with on) on one
    gpiozero output in a daemon thread until stop(). Times are kept from the cadence's start, so
    the cadence does not drift; after a stall it resumes from the current step, without bursts."""

    def __init__(self, output: DigitalOutputDevice, cadence_s: Sequence[float], name: str):
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._play, args=(output, tuple(cadence_s)), name=name, daemon=True)
        self._thread.start()

    def _play(self, output: DigitalOutputDevice, cadence_s: tuple[float, ...]) -> None:
        step_end = time.monotonic()
        while True:
            for step, seconds in enumerate(cadence_s):
                output.value = step % 2 == 0
                step_end = max(step_end, time.monotonic()) + seconds
                if self._stopping.wait(step_end - time.monotonic()):
                    return

    def stop(self) -> None:
        """Stop playing and wait for the thread to end (the output is left as it was)."""
        self._stopping.set()
        self._thread.join()


def check_cadence(cadence_s: Sequence[float]) -> tuple[float, ...]:
    """Return ``cadence_s`` as a tuple; ValueError unless it is on/off pairs of positive times."""
    cadence = tuple(cadence_s)
    if not cadence or len(cadence) % 2 or not all(isinstance(s, (int, float)) and s > 0 for s in cadence):
        raise ValueError(f"a cadence is pairs of positive on/off times in seconds, not {cadence_s!r}")
    return cadence


class Indicators:
    """The LEDs ``message``, ``in_call``, ``secure`` and the ringer (an active buzzer) of ``pinmap``.

    ``set(name, mode)`` puts an LED "off", "on" or "blinking" (BLINK_CADENCE_S); ``ring(on)``
    starts or stops the ring cadence (RING_CADENCE_S). Setting the current mode again changes
    nothing (a blink keeps its phase). ``state()`` gives each indicator's mode for a display of
    them. Call these from one thread (the asyncio loop). ``close()`` stops every cadence, turns
    every output off and releases the pins.
    Raises DeviceError (setting ``pinmap``) when an LED is missing from the pin map or a pin
    cannot be opened; ValueError for an unknown indicator name or mode (a programming error).
    """

    def __init__(
        self,
        pinmap: PinMap,
        pin_factory: Factory,
        blink_cadence_s: Sequence[float] = BLINK_CADENCE_S,
        ring_cadence_s: Sequence[float] = RING_CADENCE_S,
    ):
        self._cadences = {RINGER: check_cadence(ring_cadence_s)} | {name: check_cadence(blink_cadence_s) for name in LED_NAMES}
        if set(pinmap.leds) != set(LED_NAMES):
            raise DeviceError(DEVICE, "pinmap", f"[leds] must name exactly {', '.join(LED_NAMES)}, not {', '.join(sorted(pinmap.leds))}")
        self._players: dict[str, CadencePlayer] = {}
        self._modes = {name: "off" for name in (*LED_NAMES, RINGER)}
        self._outputs: dict[str, DigitalOutputDevice] = {}
        try:
            for name in LED_NAMES:
                self._open(name, LED, pinmap.leds[name], pin_factory)
            self._open(RINGER, Buzzer, pinmap.ringer, pin_factory)
        except DeviceError:
            self.close()
            raise

    def _open(self, name: str, device_class: type[DigitalOutputDevice], pin: int, pin_factory: Factory) -> None:
        try:
            self._outputs[name] = device_class(pin, initial_value=False, pin_factory=pin_factory)
        except Exception as e:  # gpiozero, lgpio and the mock each raise their own types for a pin not to be had
            raise DeviceError(DEVICE, "pinmap", f"cannot open GPIO{pin} ({name}): {e}") from None

    def set(self, name: str, mode: str) -> None:
        """Put LED ``name`` (one of LED_NAMES) in ``mode`` ("off", "on" or "blink")."""
        if name not in LED_NAMES:
            raise ValueError(f"no LED {name!r} (LEDs: {', '.join(LED_NAMES)})")
        if mode not in LED_MODES:
            raise ValueError(f"LED mode must be one of {', '.join(LED_MODES)}, not {mode!r}")
        self._apply(name, mode)

    def ring(self, on: bool) -> None:
        """Start (True) or stop (False) the ring cadence; stopping silences the ringer at once."""
        self._apply(RINGER, "ring" if on else "off")

    def _apply(self, name: str, mode: str) -> None:
        if not self._outputs:
            raise RuntimeError("the indicators are closed")
        if self._modes[name] == mode:
            return
        player = self._players.pop(name, None)
        if player is not None:
            player.stop()
        output = self._outputs[name]
        if mode in ("blink", "ring"):
            self._players[name] = CadencePlayer(output, self._cadences[name], name=f"{name} cadence")
        else:
            output.value = mode == "on"
        self._modes[name] = mode

    def state(self) -> dict[str, str]:
        """Each indicator's mode: LED_NAMES -> "off" | "on" | "blink", RINGER -> "off" | "ring"."""
        return dict(self._modes)

    def levels(self) -> dict[str, bool]:
        """Each indicator's output right now (True = lit / sounding), to show a blink's phase."""
        return {name: bool(output.value) for name, output in self._outputs.items()}

    def close(self) -> None:
        """Stop every cadence, turn every output off and release the pins (idempotent)."""
        while self._players:
            self._players.popitem()[1].stop()
        while self._outputs:
            output = self._outputs.popitem()[1]
            output.off()
            output.close()
        self._modes = {name: "off" for name in self._modes}
