"""Display backends by name: each one a factory that takes keyword settings and returns a luma device.

A factory is called as ``factory(**settings)`` with every setting of :func:`open_display`
(``width``, ``height``, ``rotate``, ``bus``, ``i2c_port``, ``i2c_address``, ``spi_port``,
``spi_device``, ``capture_dir``, ``pin_factory``, ``pinmap``, ``i2c_bus``, ``spi``; more may be
added), so it should take the ones it needs by name and ``**_`` for the rest. It returns a luma
device (a ``luma.core.device.device``) of ``width`` x ``height`` after ``rotate``, which accepts
mode "1" images in ``display()`` and has ``contrast()``, ``hide()``, ``show()`` and ``cleanup()``.
It raises DeviceError naming the setting at fault when the device cannot be opened.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from luma.core.device import device as LumaDevice
from luma.core.device import dummy
from luma.oled.device import sh1106, ssd1306

from drivers.display.capture import FrameCapture
from drivers.display.transport import open_serial_interface
from drivers.errors import DeviceError

DisplayFactory = Callable[..., LumaDevice]

#: Backend name -> factory. Add to it with :func:`register_display_backend`.
DISPLAY_BACKENDS: dict[str, DisplayFactory] = {}


def register_display_backend(name: str, factory: DisplayFactory) -> None:
    """Make ``factory`` available as ``open_display(name)``.

    Registering the same factory twice is harmless; giving a taken name to another factory raises
    ValueError, so that two backends cannot silently shadow each other.
    """
    registered = DISPLAY_BACKENDS.get(name)
    if registered is not None and registered is not factory:
        raise ValueError(f"display backend {name!r} is already registered")
    DISPLAY_BACKENDS[name] = factory


def _real_oled(device_class: type[LumaDevice]) -> DisplayFactory:
    """A factory for a luma.oled device class over the I2C or SPI transport the settings name."""

    def open_oled(*, width: int, height: int, rotate: int, bus: str, i2c_port: int, i2c_address: int,
                  spi_port: int, spi_device: int, pin_factory: Any, pinmap: Any,
                  i2c_bus: Any = None, spi: Any = None, **_: Any) -> LumaDevice:
        serial = open_serial_interface(
            bus=bus, i2c_port=i2c_port, i2c_address=i2c_address, spi_port=spi_port, spi_device=spi_device,
            pin_factory=pin_factory, pinmap=pinmap, i2c_bus=i2c_bus, spi=spi,
        )
        try:
            return device_class(serial, width=width, height=height, rotate=rotate)
        except BaseException:
            with contextlib.suppress(DeviceError):  # the error that stopped the device matters more
                serial.cleanup()
            raise

    open_oled.__name__ = f"open_{device_class.__name__}"
    return open_oled


def _open_dummy(*, width: int, height: int, rotate: int, **_: Any) -> LumaDevice:
    return dummy(width=width, height=height, rotate=rotate, mode="1")


def _open_capture(*, width: int, height: int, rotate: int, capture_dir: str, **_: Any) -> LumaDevice:
    return FrameCapture(capture_dir=capture_dir, width=width, height=height, rotate=rotate)


register_display_backend("sh1106", _real_oled(sh1106))
register_display_backend("ssd1306", _real_oled(ssd1306))
register_display_backend("dummy", _open_dummy)
register_display_backend("capture", _open_capture)
