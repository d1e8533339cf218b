"""The handset display: a 128x64 monochrome OLED driven through luma, or a stand-in for it.

``open_display(driver, *, bus="i2c", i2c_port=1, i2c_address=0x3C, spi_port=0, spi_device=0,
rotate=0, contrast=255, capture_dir="", pin_factory=None, pinmap=None, i2c_bus=None, spi=None)``
returns a :class:`Display`. ``driver`` is a registered backend:

- ``sh1106``, ``ssd1306``: the real luma.oled classes, on ``bus`` "i2c" (``/dev/i2c-<i2c_port>``
  at ``i2c_address``) or "spi" (``/dev/spidev<spi_port>.<spi_device>``, with the DC and reset
  lines ``spi_dc``/``spi_reset`` of ``pinmap`` (default: hw/pinmap.toml) driven through gpiozero
  on ``pin_factory`` (default: lgpio); RPi.GPIO is not needed).
- ``dummy``: luma's dummy device, keeps the last frame in memory (tests, headless runs).
- ``capture``: writes each frame as a 128x64 PNG ``frame_000001.png``, ... into ``capture_dir``
  (an existing directory).

As in luma, the transport is built apart from the device class and handed to it:
``i2c_bus`` (an opened smbus-like object) and ``spi`` (a spidev-like object) replace the kernel
devices, so tests run the real luma.oled classes over a fake bus.

Other backends (the simulator's terminal view) join with ``register_display_backend(name,
factory)``; ``DISPLAY_BACKENDS`` maps names to factories. A factory is called with keyword
settings (all of the above plus ``width`` and ``height``; take what you need and ``**_``) and
returns a luma device; see :mod:`drivers.display.backends`.

:class:`Display` has ``show(image)`` (a mode "1" PIL image of exactly ``width`` x ``height``,
else ValueError), ``last_frame`` (a copy of the image last shown, any backend), ``frames_shown``,
``contrast(level)``, ``sleep()`` / ``wake()`` (panel off/on against burn-in), ``asleep``,
``close()``, ``width``, ``height``.

Errors: a device that is missing, refused or broken raises ``DeviceError("display", setting,
reason)`` naming the setting to check (``driver``, ``bus``, ``i2c_port``, ``i2c_address``,
``spi_port``, ``spi_device``, ``pin_factory``, ``pinmap``, ``rotate``, ``contrast``,
``capture_dir``), never a luma or OS exception.
"""

from drivers.display.backends import DISPLAY_BACKENDS, DisplayFactory, register_display_backend
from drivers.display.display import DISPLAY_HEIGHT, DISPLAY_WIDTH, Display, open_display
from drivers.display.rpi_gpio_adapter import RPiGPIOAdapter

__all__ = [
    "DISPLAY_BACKENDS",
    "DISPLAY_HEIGHT",
    "DISPLAY_WIDTH",
    "Display",
    "DisplayFactory",
    "RPiGPIOAdapter",
    "open_display",
    "register_display_backend",
]
