"""gpiozero pin factories by name: the real chip on a handset, MockFactory everywhere else."""

from __future__ import annotations

from gpiozero.pins import Factory

from drivers.errors import DeviceError

PIN_FACTORIES = ("lgpio", "mock")


def open_pin_factory(name: str) -> Factory:
    """Return a gpiozero pin factory: ``lgpio`` (GPIO chardev on a Pi) or ``mock`` (MockFactory).

    Raises DeviceError (setting ``pin_factory``) when the factory cannot be opened here.
    """
    if name == "mock":
        from gpiozero.pins.mock import MockFactory

        return MockFactory()
    if name == "lgpio":
        try:
            from gpiozero.pins.lgpio import LGPIOFactory

            return LGPIOFactory()
        except Exception as e:  # lgpio raises plain errors when /dev/gpiochip* is missing
            raise DeviceError("GPIO", "pin_factory", f"cannot open the GPIO chip through lgpio: {e}") from None
    raise DeviceError("GPIO", "pin_factory", f"unknown pin factory {name!r} (one of {', '.join(PIN_FACTORIES)})")
