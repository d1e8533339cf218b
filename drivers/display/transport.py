"""The wire to a real OLED: a luma I2C or SPI serial interface, built apart from the device class.

luma device classes take their transport as an argument. Building it here keeps the bus, its
pins and its failures in one place, and lets a test hand in a fake smbus or spidev object.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import luma.core.error
from gpiozero.pins import Factory
from luma.core.interface.serial import i2c as LumaI2C
from luma.core.interface.serial import spi as LumaSPI

from drivers.display.rpi_gpio_adapter import GPIOSetupError, RPiGPIOAdapter
from drivers.errors import DeviceError
from drivers.gpio import open_pin_factory
from drivers.pinmap import PinMap, load_pinmap

BUSES = ("i2c", "spi")
I2C_ADDRESSES = range(0x03, 0x78)  # the 7-bit addresses not reserved by the I2C specification
SPI_BUS_SPEED_HZ = 8_000_000  # the SH1106/SSD1306 datasheets allow 10 MHz; luma accepts 8 MHz steps

BUS_FAULTS = (luma.core.error.Error, OSError)


def one_line(error: BaseException) -> str:
    """An exception as a single line of text, for a DeviceError reason."""
    text = " ".join(str(error).split())
    return text or type(error).__name__


@contextlib.contextmanager
def faults_name(setting: str) -> Iterator[None]:
    """Turn luma and OS errors raised inside the block into DeviceError naming ``setting``."""
    try:
        yield
    except BUS_FAULTS as e:
        raise DeviceError("display", setting, one_line(e)) from None


class FaultNamingSerial:
    """A luma serial interface whose failures are DeviceErrors naming the setting to check.

    Once opened, a bus fails when nothing answers: on I2C that is a wrong ``i2c_address`` or an
    unplugged display; SPI has no acknowledge, so any failure there points at ``spi_port``.
    ``cleanup()`` also releases what the bus was given (its DC/RST pins, a pin factory opened for
    it) and may be called more than once.
    """

    def __init__(self, serial: Any, fault_setting: str, release: tuple[Callable[[], None], ...] = ()):
        self._serial = serial
        self.fault_setting = fault_setting
        self._release = list(release)
        self._cleaned_up = False

    def command(self, *cmd: int) -> None:
        with faults_name(self.fault_setting):
            self._serial.command(*cmd)

    def data(self, data: list[int] | bytes | bytearray) -> None:
        with faults_name(self.fault_setting):
            self._serial.data(data)

    def cleanup(self) -> None:
        if self._cleaned_up:
            return
        self._cleaned_up = True
        try:
            with faults_name(self.fault_setting):
                self._serial.cleanup()
        finally:
            for release in reversed(self._release):
                release()


def open_serial_interface(
    *,
    bus: str,
    i2c_port: int,
    i2c_address: int,
    spi_port: int,
    spi_device: int,
    pin_factory: Factory | None,
    pinmap: PinMap | None,
    i2c_bus: Any = None,
    spi: Any = None,
) -> FaultNamingSerial:
    """Open the I2C or SPI transport of a real OLED; raise DeviceError naming the setting at fault.

    ``i2c_bus`` (an opened smbus-like object) or ``spi`` (a spidev-like object, not yet opened)
    replace the kernel device, for tests. SPI drives DC/RST from ``pinmap`` (default: the handset
    pin map) on ``pin_factory`` (default: lgpio, opened here and closed again by ``cleanup()``).
    """
    if bus == "i2c":
        return _open_i2c(i2c_port, i2c_address, i2c_bus)
    if bus == "spi":
        return _open_spi(spi_port, spi_device, pin_factory, pinmap, spi)
    raise DeviceError("display", "bus", f"unknown bus {bus!r} (one of {', '.join(BUSES)})")


def _require_int(setting: str, value: Any, allowed: range, shown_as: Callable[[int], str] = str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        raise DeviceError(
            "display", setting,
            f"{shown_as(value) if isinstance(value, int) else repr(value)} is not a whole number "
            f"from {shown_as(allowed.start)} to {shown_as(allowed.stop - 1)}",
        )


def _open_i2c(port: int, address: int, smbus: Any) -> FaultNamingSerial:
    _require_int("i2c_port", port, range(0, 256))
    _require_int("i2c_address", address, I2C_ADDRESSES, shown_as=hex)
    # Opening only touches /dev/i2c-N: whatever fails here is the port (missing, or no permission).
    with faults_name("i2c_port"):
        serial = LumaI2C(bus=smbus, port=port, address=address)
    return FaultNamingSerial(serial, "i2c_address")


def _open_spi(port: int, device: int, pin_factory: Factory | None, pinmap: PinMap | None, spidev: Any) -> FaultNamingSerial:
    _require_int("spi_port", port, range(0, 256))
    _require_int("spi_device", device, range(0, 256))
    pinmap = pinmap or load_pinmap()
    if pinmap.spi_dc == 0:
        # luma tests the DC pin for truth, so GPIO0 would silently send every byte as data.
        raise DeviceError("display", "pinmap", "display.spi_dc cannot be GPIO0")
    release: list[Callable[[], None]] = []
    if pin_factory is None:
        try:
            pin_factory = open_pin_factory("lgpio")
        except DeviceError as e:
            raise DeviceError("display", "pin_factory", e.reason) from None
        release.append(pin_factory.close)
    gpio = RPiGPIOAdapter(pin_factory)
    release.append(gpio.cleanup)
    try:
        serial = LumaSPI(
            spi=spidev, gpio=gpio, port=port, device=device, bus_speed_hz=SPI_BUS_SPEED_HZ,
            gpio_DC=pinmap.spi_dc, gpio_RST=pinmap.spi_reset,
        )
    except BaseException as e:
        for undo in reversed(release):
            undo()
        if isinstance(e, GPIOSetupError):
            raise DeviceError("display", "pinmap", f"DC/RST line: {e}") from None
        if isinstance(e, ImportError):
            raise DeviceError("display", "bus", "SPI needs the spidev Python package, which is not installed") from None
        if isinstance(e, BUS_FAULTS):
            raise DeviceError("display", "spi_port", f"cannot open /dev/spidev{port}.{device}: {one_line(e)}") from None
        raise
    return FaultNamingSerial(serial, "spi_port", tuple(release))
