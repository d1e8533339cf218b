"""The supervisor's units: each wraps one device, has its config section and a clean start/stop.

Contract: ``start(post)`` opens the device and may begin posting events; it raises DeviceError
when the device is missing or broken, and the supervisor then disables that unit with one
logged line naming the config key. ``show(state)`` is called on the loop after every change of
state (outputs redraw or relight from it). ``stop()`` releases the device and never raises.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from pathlib import Path
from typing import Callable

from drivers.audio import AudioPump, open_audio
from drivers.display import Display, open_display
from drivers.errors import DeviceError
from drivers.indicators import Indicators
from drivers.keys import open_keys
from drivers.pinmap import load_pinmap
from firmware.config import SETTINGS, Config
from firmware.conversations import unread_total
from firmware.state import Event, PhoneState
from firmware.tones import DialTone
from firmware.ui.screens import render, screen_text

log = logging.getLogger(__name__)


def config_key(section: str, setting: str) -> str:
    """The config key a driver's setting came from (gpio settings are shared by several units)."""
    for key in (f"{section}.{setting}", f"gpio.{setting}"):
        if key in SETTINGS:
            return key
    return f"{section}.{setting}"


class Unit:
    name = "unit"
    section = ""
    performs: tuple[type, ...] = ()
    """The request types (firmware/effects.py) this unit performs through ``perform``."""

    def perform(self, request) -> None:
        """Start ``request`` without blocking the loop; the answer comes back as a posted event."""
        raise NotImplementedError

    def start(self, post: Callable[[Event], None]) -> None:
        pass

    def show(self, state: PhoneState) -> None:
        pass

    def stop(self) -> None:
        """Release what ``start`` took. May return an awaitable (a unit that says goodbye on the
        network); the supervisor awaits it, for a bounded time."""


class GuardedTasks:
    """A unit's background work: coroutines run as tasks on the loop, each guarded, so a bug or a
    peer's surprise costs that one task, never the phone. An exception is logged (with ``what``
    naming the unit's work; one line for the ``expected`` kinds, a traceback for others), then
    ``failed(error)`` is told; ``cancel()`` stops them all."""

    def __init__(self, what: str, failed: Callable[[Exception], None] | None = None,
                 expected: tuple[type[Exception], ...] = ()):
        self._what = what
        self._failed = failed
        self._expected = expected
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(self._guarded(coroutine))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def _guarded(self, coroutine) -> None:
        try:
            await coroutine
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if isinstance(e, self._expected):
                log.warning("%s failed: %s", self._what, e)
            else:
                log.exception("%s failed", self._what)
            if self._failed is not None:
                self._failed(e)


class MissingUnit(Unit):
    """A unit that could not even be loaded: it fails to start with ``reason``, so it is reported
    like a missing device, and its requests are answered as unavailable."""

    def __init__(self, name: str, setting: str, reason: str, performs: tuple[type, ...] = ()):
        self.name = self.section = name
        self._setting = setting
        self._reason = reason
        self.performs = performs

    def start(self, post: Callable[[Event], None]) -> None:
        raise DeviceError(self.name, self._setting, self._reason)


class Gpio:
    """The one gpiozero pin factory and pin map that every GPIO unit shares."""

    def __init__(self, config: Config):
        self._config = config
        self._factory = None
        self.mock_wiring = None

    @property
    def factory(self):
        if self._factory is None:
            from drivers.gpio import open_pin_factory

            self._factory = open_pin_factory(self._config["gpio.pin_factory"])
            if self._config["gpio.pin_factory"] == "mock":
                # Simulated pins need simulated wires, made before any device opens them: without
                # them the hook input floats to its pull-up and reads as a lifted handset.
                from drivers.keys.mock_wiring import MockKeypadWiring

                self.mock_wiring = MockKeypadWiring(self._factory, self.pinmap)
        return self._factory

    @functools.cached_property
    def pinmap(self):
        return load_pinmap(self._config["gpio.pinmap"])

    def close(self) -> None:
        if self._factory is not None:
            self._factory.close()
            self._factory = None


class DisplayUnit(Unit):
    """Draws every state on the OLED; blanks it while the state says the screen is off."""

    name = section = "display"

    def __init__(self, config: Config, gpio: Gpio):
        self._settings = config.section("display")
        self._gpio = gpio
        self.display: Display | None = None

    def start(self, post: Callable[[Event], None]) -> None:
        settings = dict(self._settings)
        if settings["driver"] in ("sh1106", "ssd1306") and settings["bus"] == "spi":
            settings.update(pin_factory=self._gpio.factory, pinmap=self._gpio.pinmap)
        self.display = open_display(settings.pop("driver"), **settings)

    def show(self, state: PhoneState) -> None:
        if not state.screen_on:
            if not self.display.asleep:
                self.display.sleep()
            return
        if self.display.asleep:
            self.display.wake()
        frame = render(state)
        # Most state changes (the clock's seconds, a key release) leave the pixels as they were.
        if self.display.last_frame is None or frame.tobytes() != self.display.last_frame.tobytes():
            self.display.show(frame)

    def stop(self) -> None:
        if self.display is not None:
            self.display.close()


class KeysUnit(Unit):
    """Posts key and hook events from the configured keys backend onto the loop."""

    name = section = "keys"

    def __init__(self, config: Config, gpio: Gpio):
        self._config = config
        self._gpio = gpio
        self._source = None
        self._task: asyncio.Task | None = None

    def start(self, post: Callable[[Event], None]) -> None:
        settings = self._config.section("keys")
        driver = settings.pop("driver")
        socket = settings.pop("socket")
        if driver == "socket":
            settings["socket"] = socket
        if driver == "matrix":
            settings.update(pin_factory=self._gpio.factory, pinmap=self._gpio.pinmap)
        self._source = open_keys(driver, **settings)
        self._task = asyncio.get_running_loop().create_task(self._source.run(post), name="keys")
        self._task.add_done_callback(self._report_end)

    def _report_end(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("keys stopped: %s", task.exception())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._source is not None:
            self._source.close()


SECURE_LED = {"verified": "on", "secure": "blink", "key_changed": "blink"}
"""The secure LED in a connected call: steady when the SAS was compared, blinking until then (or
when the key changed); dark when the call is not encrypted. It never lights outside a call."""


class IndicatorsUnit(Unit):
    """LEDs and ringer mirror the state: in call (handset lifted or a call up), secure (SECURE_LED),
    message (blinking while messages are unread), the ringer for an incoming call."""

    name = section = "indicators"

    def __init__(self, config: Config, gpio: Gpio):
        self._gpio = gpio
        self.indicators: Indicators | None = None

    def start(self, post: Callable[[Event], None]) -> None:
        self.indicators = Indicators(self._gpio.pinmap, self._gpio.factory)

    def show(self, state: PhoneState) -> None:
        call = state.call
        connected = call is not None and call.phase == "connected"
        self.indicators.set("in_call", "on" if state.off_hook or connected else "off")
        self.indicators.set("secure", SECURE_LED.get(call.security, "off") if connected else "off")
        self.indicators.set("message", "blink" if unread_total(state.chats) else "off")
        self.indicators.ring(call is not None and call.phase == "incoming")

    def stop(self) -> None:
        if self.indicators is not None:
            self.indicators.close()


class ScreenTextUnit(Unit):
    """A test hook (the image's self-test cannot read an OLED): after every change, what the
    screen says (``screen_text``, secrets masked as drawn) replaces the file ``hooks.screen_text_file``,
    one line per screen line. Off unless that setting names a file."""

    name = section = "hooks"

    def __init__(self, config: Config):
        self._path = Path(config["hooks.screen_text_file"])
        self._last: tuple[str, ...] = ()

    def show(self, state: PhoneState) -> None:
        lines = screen_text(state)
        if lines == self._last:
            return
        self._last = lines
        temporary = self._path.with_name(self._path.name + ".new")
        temporary.write_text("\n".join(lines) + "\n")
        temporary.replace(self._path)


class AudioRoute:
    """Where the audio unit's 20 ms frames go during a call: ``media(captured) -> played``, or None.

    Set by the calls unit on the loop and read by the audio thread (an attribute swap is atomic).
    """

    def __init__(self):
        self.media: Callable[[bytes], bytes | None] | None = None


class AudioUnit(Unit):
    """The codec: a connected call's audio, else the dial tone while the handset is lifted at home.

    The 20 ms loop runs on the AudioPump's thread; ``show`` only flips a flag that thread reads.
    """

    name = section = "audio"

    def __init__(self, config: Config, route: AudioRoute):
        self._route = route
        self._settings = {k: v for k, v in config.section("audio").items() if k != "enabled"}
        self._device = None
        self._pump: AudioPump | None = None
        self._tone: DialTone | None = None
        self.dial_tone = False

    def start(self, post: Callable[[Event], None]) -> None:
        self._device = open_audio(**self._settings)
        self._tone = DialTone(self._device.rate)
        self._pump = AudioPump(self._device, self._next_frame, on_error=self._report_error)
        self._pump.start()

    def _next_frame(self, captured: bytes) -> bytes | None:
        media = self._route.media
        if media is not None:
            return media(captured)
        return self._tone.next_frame() if self.dial_tone else None

    def _report_error(self, error: BaseException) -> None:
        log.error("audio stopped: %s", error)

    def show(self, state: PhoneState) -> None:
        self.dial_tone = state.off_hook and state.screen == "home"

    def stop(self) -> None:
        if self._pump is not None:
            self._pump.stop()
        if self._device is not None:
            self._device.close()


def build_units(config: Config, gpio: Gpio, route: AudioRoute) -> list[Unit]:
    """The device units this configuration asks for, outputs last so they see the first state whole."""
    units: list[Unit] = [KeysUnit(config, gpio), DisplayUnit(config, gpio)]
    if config["indicators.enabled"]:
        units.append(IndicatorsUnit(config, gpio))
    if config["audio.enabled"]:
        units.append(AudioUnit(config, route))
    if config["hooks.screen_text_file"]:
        units.append(ScreenTextUnit(config))
    return units


def describe_failure(unit: Unit, error: DeviceError) -> str:
    """One line for the log and the Settings screen: the config key, then what went wrong."""
    return f"{config_key(unit.section, error.setting)}: {error.device}: {error.reason}"
