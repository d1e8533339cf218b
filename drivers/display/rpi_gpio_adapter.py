"""The few RPi.GPIO calls luma's SPI interface makes, answered by gpiozero output devices.

luma drives the OLED's data/command (DC) and reset (RST) lines through an object shaped like the
RPi.GPIO module. RPi.GPIO only runs on a Pi and is not used by this project; this adapter gives
luma the same calls on top of any gpiozero pin factory (lgpio on a handset, MockFactory in tests).
"""

from __future__ import annotations

from gpiozero import DigitalOutputDevice
from gpiozero.pins import Factory


class GPIOSetupError(RuntimeError):
    """A pin could not be claimed as an output (in use, missing, or refused by the pin factory)."""


class RPiGPIOAdapter:
    """RPi.GPIO's output subset (setmode, setup, output, cleanup and their constants) on gpiozero.

    Channels are BCM numbers. ``setup(channel, OUT)`` claims the pin as a gpiozero
    DigitalOutputDevice on ``pin_factory``; ``cleanup()`` releases it. Inputs, PWM and BOARD
    numbering are not offered: luma's SPI interface needs none of them.
    """

    # Same values as RPi.GPIO, so code comparing against the module's constants still works.
    BOARD = 10
    BCM = 11
    OUT = 0
    IN = 1
    LOW = 0
    HIGH = 1

    def __init__(self, pin_factory: Factory):
        self._pin_factory = pin_factory
        self._outputs: dict[int, DigitalOutputDevice] = {}

    def setmode(self, mode: int) -> None:
        """Accept BCM numbering, the only one the pin map uses."""
        if mode != self.BCM:
            raise ValueError("only BCM pin numbering is supported")

    def getmode(self) -> int:
        return self.BCM

    def setup(self, channel: int, direction: int, initial: int = LOW) -> None:
        """Claim ``channel`` as an output at level ``initial``; raise GPIOSetupError if it cannot be."""
        if direction != self.OUT:
            raise ValueError(f"GPIO{channel}: only outputs are supported")
        if channel in self._outputs:
            self._outputs[channel].value = bool(initial)
            return
        try:
            self._outputs[channel] = DigitalOutputDevice(
                channel, initial_value=bool(initial), pin_factory=self._pin_factory
            )
        except Exception as e:  # pin factories raise their own types (gpiozero errors, lgpio.error)
            raise GPIOSetupError(f"cannot use GPIO{channel} as an output: {e}") from None

    def output(self, channel: int, value: int) -> None:
        """Drive ``channel`` high for a true value, low otherwise (luma passes bit masks too)."""
        try:
            device = self._outputs[channel]
        except KeyError:
            raise RuntimeError(f"GPIO{channel} has not been set up as an output") from None
        device.value = bool(value)

    def cleanup(self, channel: int | list[int] | tuple[int, ...] | None = None) -> None:
        """Release ``channel`` (one pin or several), or every pin this adapter claimed."""
        if channel is None:
            channels = list(self._outputs)
        elif isinstance(channel, (list, tuple)):
            channels = list(channel)
        else:
            channels = [channel]
        for pin in channels:
            device = self._outputs.pop(pin, None)
            if device is not None:
                device.close()
