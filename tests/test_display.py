"""The display driver: the real luma.oled classes over a fake bus, and the stand-in backends.

Only the bus is faked (a spidev or smbus stand-in recording what goes over the wire); the
SH1106/SSD1306 classes, the luma serial interfaces and gpiozero (MockFactory) are the real ones.
Expected wire bytes are computed here from the image, pixel by pixel, not by luma's code.
"""

from __future__ import annotations

import errno
import itertools
import random
from pathlib import Path

import pytest
from gpiozero import DigitalOutputDevice
from gpiozero.pins.mock import MockFactory
from luma.core.device import dummy
from PIL import Image, ImageChops

from drivers.display import (
    DISPLAY_BACKENDS,
    DISPLAY_HEIGHT,
    DISPLAY_WIDTH,
    RPiGPIOAdapter,
    open_display,
    register_display_backend,
)
from drivers.errors import DeviceError
from drivers.pinmap import load_pinmap

PINMAP = load_pinmap()
PAGES = DISPLAY_HEIGHT // 8
FRAME_BYTES = DISPLAY_WIDTH * PAGES
SH1106_COLUMN_OFFSET = 0x02  # the 128 visible columns sit in the middle of the SH1106's 132
I2C_COMMAND, I2C_DATA = 0x00, 0x40  # the SSD1306/SH1106 I2C control bytes
SMBUS_BLOCK_MAX = 32

SETCONTRAST, DISPLAYOFF, DISPLAYON = 0x81, 0xAE, 0xAF
SSD1306_COLUMNADDR, SSD1306_PAGEADDR = 0x21, 0x22


class FakeSpiDev:
    """A spidev.SpiDev stand-in: records every transfer as (command|data, bytes) by the DC line."""

    def __init__(self, dc_pin, *, present: bool = True):
        self._dc_pin = dc_pin
        self._present = present
        self.transactions: list[tuple[str, bytes]] = []
        self.opened_as: tuple[int, int] | None = None
        self.closed = False
        self.max_speed_hz = 0
        self.mode = 0

    def open(self, port: int, device: int) -> None:
        if not self._present:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", f"/dev/spidev{port}.{device}")
        self.opened_as = (port, device)

    def writebytes(self, data) -> None:
        self.transactions.append(("data" if self._dc_pin.state else "command", bytes(data)))

    def xfer(self, data) -> list[int]:
        self.writebytes(data)
        return [0] * len(data)

    xfer2 = xfer

    def close(self) -> None:
        self.closed = True


class FakeSMBus:
    """An smbus2.SMBus stand-in for a bus luma does not manage (it then only uses block writes)."""

    def __init__(self, *, answering: bool = True):
        self._answering = answering
        self.transactions: list[tuple[int, str, bytes]] = []

    def write_i2c_block_data(self, address: int, register: int, data: list[int]) -> None:
        if not self._answering:  # what the kernel reports when no chip acknowledges the address
            raise OSError(errno.EREMOTEIO, "Remote I/O error")
        assert len(data) <= SMBUS_BLOCK_MAX, "SMBus block writes carry at most 32 bytes"
        kind = {I2C_COMMAND: "command", I2C_DATA: "data"}[register]
        self.transactions.append((address, kind, bytes(data)))


def random_frame(seed: int) -> Image.Image:
    rng = random.Random(seed)
    return Image.frombytes("1", (DISPLAY_WIDTH, DISPLAY_HEIGHT), rng.randbytes(FRAME_BYTES))


def with_inverted_box(frame: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """``frame`` with the pixels of ``box`` (left, top, right, bottom; exclusive) inverted."""
    changed = frame.copy()
    left, top, right, bottom = box
    for x in range(left, right):
        for y in range(top, bottom):
            changed.putpixel((x, y), 0 if frame.getpixel((x, y)) else 1)
    return changed


def packed_pages(frame: Image.Image) -> list[bytes]:
    """The controller's GDDRAM layout: per 8-row page, one byte per column, top row in bit 0."""
    return [
        bytes(
            sum(1 << bit for bit in range(8) if frame.getpixel((x, page * 8 + bit)))
            for x in range(DISPLAY_WIDTH)
        )
        for page in range(PAGES)
    ]


def differing_page_columns(before: list[bytes], after: list[bytes]) -> set[tuple[int, int]]:
    return {(page, x) for page in range(PAGES) for x in range(DISPLAY_WIDTH) if before[page][x] != after[page][x]}


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and ImageChops.difference(a.convert("1"), b.convert("1")).getbbox() is None


def open_sh1106_on_fake_spi(pin_factory: MockFactory, **settings):
    spi = FakeSpiDev(pin_factory.pin(PINMAP.spi_dc))
    display = open_display("sh1106", bus="spi", pin_factory=pin_factory, spi=spi, **settings)
    return display, spi


def open_ssd1306_on_fake_i2c(**settings):
    bus = FakeSMBus()
    display = open_display("ssd1306", bus="i2c", i2c_bus=bus, **settings)
    return display, bus


def commands_sent(fake) -> list[bytes]:
    """Command transactions on either fake bus, without the I2C address."""
    return [t[-1] for t in fake.transactions if t[-2] == "command"]


@pytest.fixture
def pin_factory():
    factory = MockFactory()
    yield factory
    factory.close()


def sh1106_frame_transactions(frame: Image.Image) -> list[tuple[str, bytes]]:
    """What an SH1106 must receive for a frame: per page, its page/column address, then 128 bytes."""
    expected = []
    for page, data in enumerate(packed_pages(frame)):
        expected.append(("command", bytes([0xB0 + page, SH1106_COLUMN_OFFSET, 0x10])))
        expected.append(("data", data))
    return expected


def test_sh1106_over_spi_sends_each_page_after_its_address(pin_factory):
    display, spi = open_sh1106_on_fake_spi(pin_factory, spi_port=0, spi_device=1)
    assert spi.opened_as == (0, 1)
    reset_levels = [s.state for s in pin_factory.pin(PINMAP.spi_reset).states]
    assert reset_levels[-2:] == [False, True], "the controller must be reset (RST low, then high) at open"

    first = random_frame(seed=1)
    spi.transactions.clear()
    display.show(first)
    assert spi.transactions == sh1106_frame_transactions(first)
    assert sum(len(b) for kind, b in spi.transactions if kind == "data") == FRAME_BYTES

    # luma's sh1106 does no diffing: every frame is sent whole, and only the bytes of the changed
    # box differ (rows 20-27 are pages 2 and 3; columns 10-19).
    second = with_inverted_box(first, (10, 20, 20, 28))
    spi.transactions.clear()
    display.show(second)
    assert spi.transactions == sh1106_frame_transactions(second)
    changed = differing_page_columns(packed_pages(first), [b for kind, b in spi.transactions if kind == "data"])
    assert changed == {(page, x) for page in (2, 3) for x in range(10, 20)}
    assert display.frames_shown == 2
    display.close()


def test_ssd1306_over_i2c_sends_the_window_then_the_whole_frame():
    display, bus = open_ssd1306_on_fake_i2c(i2c_address=0x3D)

    for frame in (random_frame(seed=2), with_inverted_box(random_frame(seed=2), (100, 60, 128, 64))):
        bus.transactions.clear()
        display.show(frame)
        assert {address for address, _, _ in bus.transactions} == {0x3D}
        (_, kind, window), *data_blocks = bus.transactions
        assert (kind, window) == ("command", bytes([SSD1306_COLUMNADDR, 0, DISPLAY_WIDTH - 1, SSD1306_PAGEADDR, 0, PAGES - 1]))
        assert {kind for _, kind, _ in data_blocks} == {"data"}
        assert b"".join(block for _, _, block in data_blocks) == b"".join(packed_pages(frame))
    # Again no diffing: the frame after a change in the bottom-right corner is sent whole.
    assert len(data_blocks) == FRAME_BYTES // SMBUS_BLOCK_MAX
    assert display.last_frame.tobytes() == frame.tobytes()
    display.close()


def test_dummy_keeps_the_last_frame():
    display = open_display("dummy")
    assert (display.width, display.height) == (DISPLAY_WIDTH, DISPLAY_HEIGHT)
    assert display.last_frame is None and display.frames_shown == 0
    frame = random_frame(seed=3)
    display.show(frame)
    assert same_pixels(display.device.image, frame)
    assert display.last_frame.tobytes() == frame.tobytes()
    frame.putpixel((0, 0), 1 - frame.getpixel((0, 0)))
    assert display.last_frame.tobytes() != frame.tobytes(), "last_frame must be a copy, not the caller's image"
    assert display.frames_shown == 1
    display.close()


def test_rotation_swaps_the_frame_size():
    display = open_display("dummy", rotate=1)
    assert (display.width, display.height) == (DISPLAY_HEIGHT, DISPLAY_WIDTH)
    upright = random_frame(seed=4).rotate(90, expand=True)
    display.show(upright)
    assert same_pixels(display.device.image, upright.rotate(-90, expand=True))
    display.close()


def test_capture_writes_a_png_per_frame(tmp_path):
    display = open_display("capture", capture_dir=str(tmp_path))
    frames = [random_frame(seed) for seed in (5, 6, 7)]
    for frame in frames:
        display.show(frame)
    written = sorted(tmp_path.iterdir())
    assert [p.name for p in written] == ["frame_000001.png", "frame_000002.png", "frame_000003.png"]
    for path, frame in zip(written, frames):
        with Image.open(path) as png:
            assert same_pixels(png, frame)

    # The PNGs follow what a viewer sees: asleep is black, awake is the last frame again.
    display.sleep()
    display.wake()
    with Image.open(tmp_path / "frame_000004.png") as asleep, Image.open(tmp_path / "frame_000005.png") as awake:
        assert asleep.convert("1").getbbox() is None
        assert same_pixels(awake, frames[-1])
    display.close()


def test_capture_dir_removed_while_open_names_capture_dir(tmp_path):
    capture_dir = tmp_path / "frames"
    capture_dir.mkdir()
    display = open_display("capture", capture_dir=str(capture_dir))
    capture_dir.rmdir()
    with pytest.raises(DeviceError) as caught:
        display.show(random_frame(seed=8))
    assert caught.value.setting == "capture_dir"
    assert display.frames_shown == 0 and display.last_frame is None
    display.close()


@pytest.mark.parametrize(
    ("frame", "complaint"),
    [
        (Image.new("RGB", (DISPLAY_WIDTH, DISPLAY_HEIGHT)), "must be a mode '1' image of 128x64, got mode 'RGB' of 128x64"),
        (Image.new("L", (DISPLAY_WIDTH, DISPLAY_HEIGHT)), "must be a mode '1' image of 128x64, got mode 'L' of 128x64"),
        (Image.new("1", (DISPLAY_WIDTH, 32)), "must be a mode '1' image of 128x64, got mode '1' of 128x32"),
        (Image.new("1", (DISPLAY_HEIGHT, DISPLAY_WIDTH)), "must be a mode '1' image of 128x64, got mode '1' of 64x128"),
        (b"\x00" * FRAME_BYTES, "must be a PIL image, not bytes"),
    ],
)
def test_a_wrong_frame_is_refused_clearly(frame, complaint):
    display = open_display("dummy")
    with pytest.raises(ValueError) as caught:
        display.show(frame)
    assert complaint in str(caught.value)
    assert display.frames_shown == 0 and display.last_frame is None
    display.close()


def test_i2c_without_the_kernel_device_names_i2c_port():
    port = next(n for n in itertools.count(1) if not Path(f"/dev/i2c-{n}").exists())
    with pytest.raises(DeviceError) as caught:
        open_display("ssd1306", bus="i2c", i2c_port=port)
    assert caught.value.device == "display"
    assert caught.value.setting == "i2c_port"
    assert f"/dev/i2c-{port}" in caught.value.reason and "\n" not in caught.value.reason


def test_i2c_with_nothing_at_the_address_names_i2c_address():
    with pytest.raises(DeviceError) as caught:
        open_display("sh1106", bus="i2c", i2c_address=0x3D, i2c_bus=FakeSMBus(answering=False))
    assert caught.value.setting == "i2c_address"
    assert "0x3D" in caught.value.reason


def test_spi_without_the_kernel_device_names_spi_port_and_frees_the_pins(pin_factory):
    spi = FakeSpiDev(pin_factory.pin(PINMAP.spi_dc), present=False)
    with pytest.raises(DeviceError) as caught:
        open_display("sh1106", bus="spi", spi_port=1, spi_device=2, pin_factory=pin_factory, spi=spi)
    assert caught.value.setting == "spi_port"
    assert "/dev/spidev1.2" in caught.value.reason
    for pin in (PINMAP.spi_dc, PINMAP.spi_reset):
        DigitalOutputDevice(pin, pin_factory=pin_factory).close()  # raises GPIOPinInUse if still held


def test_spi_through_the_real_spidev_package_names_spi_port_without_the_kernel_device(pin_factory):
    port = next(n for n in itertools.count(0) if not Path(f"/dev/spidev{n}.0").exists())
    with pytest.raises(DeviceError) as caught:
        open_display("sh1106", bus="spi", spi_port=port, pin_factory=pin_factory)
    assert caught.value.setting == "spi_port" and f"/dev/spidev{port}.0" in caught.value.reason


def test_a_dc_pin_in_use_names_the_pinmap(pin_factory):
    holder = DigitalOutputDevice(PINMAP.spi_dc, pin_factory=pin_factory)
    with pytest.raises(DeviceError) as caught:
        open_sh1106_on_fake_spi(pin_factory)
    assert caught.value.setting == "pinmap"
    assert f"GPIO{PINMAP.spi_dc}" in caught.value.reason
    holder.close()
    DigitalOutputDevice(PINMAP.spi_reset, pin_factory=pin_factory).close()


@pytest.mark.parametrize(
    ("settings", "setting", "reason"),
    [
        ({"driver": "ssd1309"}, "driver", "unknown display driver 'ssd1309' (one of capture, dummy, sh1106, ssd1306"),
        ({"driver": "sh1106", "bus": "usb"}, "bus", "unknown bus 'usb' (one of i2c, spi)"),
        ({"driver": "sh1106", "i2c_address": 0x99}, "i2c_address", "0x99 is not a whole number from 0x3 to 0x77"),
        ({"driver": "sh1106", "i2c_port": "1"}, "i2c_port", "'1' is not a whole number from 0 to 255"),
        ({"driver": "sh1106", "bus": "spi", "spi_device": -1}, "spi_device", "-1 is not a whole number from 0 to 255"),
        ({"driver": "dummy", "rotate": 4}, "rotate", "rotate must be 0, 1, 2 or 3 quarter turns, not 4"),
        ({"driver": "dummy", "contrast": 256}, "contrast", "contrast must be a whole number from 0 to 255, not 256"),
        ({"driver": "capture", "capture_dir": ""}, "capture_dir", "'' is not an existing directory"),
        ({"driver": "capture", "capture_dir": "/nonexistent/frames"}, "capture_dir", "'/nonexistent/frames' is not an existing directory"),
    ],
)
def test_bad_settings_name_the_setting(settings, setting, reason):
    with pytest.raises(DeviceError) as caught:
        open_display(**settings)
    assert (caught.value.device, caught.value.setting) == ("display", setting)
    assert reason in caught.value.reason


@pytest.fixture(params=["sh1106-spi", "ssd1306-i2c"])
def oled_on_fake_bus(request, pin_factory):
    if request.param == "sh1106-spi":
        display, fake = open_sh1106_on_fake_spi(pin_factory, contrast=200)
    else:
        display, fake = open_ssd1306_on_fake_i2c(contrast=200)
    yield display, fake
    display.close()


def test_contrast_sleep_and_wake_send_their_commands(oled_on_fake_bus):
    display, fake = oled_on_fake_bus
    assert commands_sent(fake)[-1] == bytes([SETCONTRAST, 200]), "the configured contrast is set at open"

    for act, command in [
        (lambda: display.contrast(0x40), bytes([SETCONTRAST, 0x40])),
        (display.sleep, bytes([DISPLAYOFF])),
        (display.wake, bytes([DISPLAYON])),
    ]:
        fake.transactions.clear()
        act()
        assert commands_sent(fake) == [command] and len(fake.transactions) == 1

    fake.transactions.clear()
    display.sleep()
    display.show(random_frame(seed=9))  # the panel stores the frame while it is dark
    assert display.asleep and commands_sent(fake)[0] == bytes([DISPLAYOFF])
    assert DISPLAYON not in b"".join(commands_sent(fake))


@pytest.mark.parametrize("level", [-1, 256, 12.5, True, "200"])
def test_contrast_out_of_range_is_refused(oled_on_fake_bus, level):
    display, fake = oled_on_fake_bus
    fake.transactions.clear()
    with pytest.raises(ValueError, match="contrast must be a whole number from 0 to 255"):
        display.contrast(level)
    assert fake.transactions == []


def test_close_blanks_the_panel_and_releases_bus_and_pins(pin_factory):
    display, spi = open_sh1106_on_fake_spi(pin_factory)
    display.show(random_frame(seed=10))
    spi.transactions.clear()
    display.close()
    display.close()
    assert spi.transactions[0] == ("command", bytes([DISPLAYOFF]))
    assert {data for kind, data in spi.transactions if kind == "data"} == {bytes(DISPLAY_WIDTH)}
    assert spi.closed
    for pin in (PINMAP.spi_dc, PINMAP.spi_reset):
        DigitalOutputDevice(pin, pin_factory=pin_factory).close()
    with pytest.raises(RuntimeError, match="closed"):
        display.show(random_frame(seed=10))


def test_close_releases_pins_even_when_the_panel_stopped_answering(pin_factory, caplog):
    display, spi = open_sh1106_on_fake_spi(pin_factory)

    def unplugged(data):
        raise OSError(errno.EIO, "Input/output error")

    spi.writebytes = unplugged
    with pytest.raises(DeviceError) as caught:
        display.sleep()
    assert caught.value.setting == "spi_port"
    display.close()
    assert "could not switch the panel off at close" in caplog.text
    assert spi.closed
    for pin in (PINMAP.spi_dc, PINMAP.spi_reset):
        DigitalOutputDevice(pin, pin_factory=pin_factory).close()


def test_a_registered_backend_gets_the_settings_and_serves_frames():
    received = {}

    class RecordingDummy(dummy):
        pass

    def open_recording(*, width, height, rotate, **others):
        received.update(width=width, height=height, rotate=rotate, **others)
        return RecordingDummy(width=width, height=height, rotate=rotate, mode="1")

    register_display_backend("recording", open_recording)
    try:
        register_display_backend("recording", open_recording)  # the same factory again is harmless
        with pytest.raises(ValueError, match="already registered"):
            register_display_backend("recording", lambda **_: None)
        display = open_display("recording", rotate=2, capture_dir="/somewhere")
        frame = random_frame(seed=11)
        display.show(frame)
        assert isinstance(display.device, RecordingDummy)
        assert same_pixels(display.device.image, frame.rotate(180))
        assert display.last_frame.tobytes() == frame.tobytes()
        assert (received["width"], received["height"], received["rotate"]) == (DISPLAY_WIDTH, DISPLAY_HEIGHT, 2)
        assert received["capture_dir"] == "/somewhere" and received["bus"] == "i2c"
        display.close()
    finally:
        DISPLAY_BACKENDS.pop("recording", None)


def test_rpi_gpio_adapter_drives_and_releases_pins(pin_factory):
    gpio = RPiGPIOAdapter(pin_factory)
    gpio.setmode(gpio.BCM)
    with pytest.raises(ValueError, match="BCM"):
        gpio.setmode(gpio.BOARD)
    with pytest.raises(ValueError, match="only outputs"):
        gpio.setup(20, gpio.IN)
    with pytest.raises(RuntimeError, match="GPIO20 has not been set up"):
        gpio.output(20, gpio.HIGH)

    gpio.setup(20, gpio.OUT, initial=gpio.HIGH)
    gpio.setup(21, gpio.OUT)
    assert (pin_factory.pin(20).state, pin_factory.pin(21).state) == (True, False)
    gpio.output(21, 0x80)  # luma passes masked bits as levels
    gpio.output(20, gpio.LOW)
    assert (pin_factory.pin(20).state, pin_factory.pin(21).state) == (False, True)

    gpio.cleanup(20)
    DigitalOutputDevice(20, pin_factory=pin_factory).close()
    with pytest.raises(RuntimeError):
        gpio.output(20, gpio.HIGH)
    gpio.cleanup()
    DigitalOutputDevice(21, pin_factory=pin_factory).close()
