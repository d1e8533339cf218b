"""The Display: one frame API over any display backend, with the errors the firmware expects."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

from gpiozero.pins import Factory
from luma.core.device import device as LumaDevice
from PIL import Image

from drivers.display.backends import DISPLAY_BACKENDS
from drivers.display.transport import FaultNamingSerial, faults_name
from drivers.errors import DeviceError
from drivers.pinmap import PinMap

DISPLAY_WIDTH = 128
DISPLAY_HEIGHT = 64
FRAME_MODE = "1"
CONTRAST_LEVELS = range(0, 256)
ROTATIONS = (0, 1, 2, 3)

log = logging.getLogger(__name__)


class Display:
    """Frames in, pixels on the OLED (or wherever the backend puts them).

    All calls are serialised: a command slipped between a page address and its pixel data
    (contrast from the supervisor's thread while the UI draws) would corrupt the frame on the wire.
    Backend failures raise DeviceError; misuse (a wrong frame, a contrast out of range) raises
    ValueError; any call but ``close()`` after ``close()`` raises RuntimeError.
    """

    def __init__(self, device: LumaDevice):
        self._device = device
        self._lock = threading.Lock()
        self._last_frame: Image.Image | None = None
        self._frames_shown = 0
        self._asleep = False
        self._closed = False

    @property
    def width(self) -> int:
        return self._device.width

    @property
    def height(self) -> int:
        return self._device.height

    @property
    def device(self) -> LumaDevice:
        """The luma device underneath (for a backend's own tests; the firmware needs only this class)."""
        return self._device

    @property
    def last_frame(self) -> Image.Image | None:
        """A copy of the image last passed to ``show()`` (None before the first), whatever the backend."""
        return self._last_frame

    @property
    def frames_shown(self) -> int:
        """How many frames ``show()`` has displayed."""
        return self._frames_shown

    @property
    def asleep(self) -> bool:
        return self._asleep

    def show(self, image: Image.Image) -> None:
        """Display ``image``: a PIL image of mode "1" and exactly width x height.

        While asleep the frame is still sent (the panel keeps it) but stays dark until ``wake()``.
        """
        if not isinstance(image, Image.Image):
            raise ValueError(f"a frame must be a PIL image, not {type(image).__name__}")
        if image.mode != FRAME_MODE or image.size != (self.width, self.height):
            raise ValueError(
                f"a frame must be a mode {FRAME_MODE!r} image of {self.width}x{self.height}, "
                f"got mode {image.mode!r} of {image.size[0]}x{image.size[1]}"
            )
        frame = image.copy()
        with self._using_device():
            self._device.display(frame)
            self._last_frame = frame
            self._frames_shown += 1

    def contrast(self, level: int) -> None:
        """Set the OLED contrast, 0 (dimmest, not off) to 255."""
        if isinstance(level, bool) or not isinstance(level, int) or level not in CONTRAST_LEVELS:
            raise ValueError(f"contrast must be a whole number from 0 to 255, not {level!r}")
        with self._using_device():
            self._device.contrast(level)

    def sleep(self) -> None:
        """Switch the panel off (burn-in protection); frame, contrast and settings are kept."""
        with self._using_device():
            self._device.hide()
            self._asleep = True

    def wake(self) -> None:
        """Switch the panel back on, showing the last frame sent."""
        with self._using_device():
            self._device.show()
            self._asleep = False

    def close(self) -> None:
        """Blank and switch off the panel, then release the bus and pins. Never raises; idempotent.

        A panel that stopped answering cannot be blanked: that is logged, and the bus and pins
        are released all the same.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                with faults_name("driver"):
                    self._device.cleanup()
            except DeviceError as e:
                log.warning("could not switch the panel off at close: %s", e)
            finally:
                # luma's cleanup stops at the first failed command, before releasing the bus.
                serial = getattr(self._device, "_serial_interface", None)
                if isinstance(serial, FaultNamingSerial):
                    try:
                        serial.cleanup()
                    except DeviceError as e:
                        log.warning("could not release the display bus at close: %s", e)

    def __enter__(self) -> Display:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @contextlib.contextmanager
    def _using_device(self) -> Iterator[None]:
        with self._lock:
            if self._closed:
                raise RuntimeError("the display is closed")
            # Failures a backend did not already name (a registered backend's own) blame the driver.
            with faults_name("driver"):
                yield


def open_display(
    driver: str,
    *,
    bus: str = "i2c",
    i2c_port: int = 1,
    i2c_address: int = 0x3C,
    spi_port: int = 0,
    spi_device: int = 0,
    rotate: int = 0,
    contrast: int = 255,
    capture_dir: str = "",
    pin_factory: Factory | None = None,
    pinmap: PinMap | None = None,
    i2c_bus: Any = None,
    spi: Any = None,
) -> Display:
    """Open the display backend ``driver`` and set its contrast; see the package docstring."""
    factory = DISPLAY_BACKENDS.get(driver)
    if factory is None:
        raise DeviceError("display", "driver", f"unknown display driver {driver!r} (one of {', '.join(sorted(DISPLAY_BACKENDS))})")
    if isinstance(rotate, bool) or rotate not in ROTATIONS:
        raise DeviceError("display", "rotate", f"rotate must be 0, 1, 2 or 3 quarter turns, not {rotate!r}")
    if isinstance(contrast, bool) or not isinstance(contrast, int) or contrast not in CONTRAST_LEVELS:
        raise DeviceError("display", "contrast", f"contrast must be a whole number from 0 to 255, not {contrast!r}")
    with faults_name("driver"):
        device = factory(
            width=DISPLAY_WIDTH, height=DISPLAY_HEIGHT, rotate=rotate, bus=bus, i2c_port=i2c_port,
            i2c_address=i2c_address, spi_port=spi_port, spi_device=spi_device, capture_dir=capture_dir,
            pin_factory=pin_factory, pinmap=pinmap, i2c_bus=i2c_bus, spi=spi,
        )
    display = Display(device)
    try:
        display.contrast(contrast)
    except BaseException:
        display.close()
        raise
    return display
