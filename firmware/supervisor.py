"""The supervisor: one asyncio loop that owns the phone state.

Contract: drivers and timers post events (``post`` on the loop thread, ``post_threadsafe`` from
any other thread); the supervisor applies them one at a time with :func:`firmware.state.step`
and, after each change, lets every running unit show the new state. Each key event is preceded
by a fresh clock reading, so what a key does can depend on the time it was pressed (multi-tap).
Requests the state makes (``state.effects``) are taken out and handed to the running unit that
performs their type; when that unit is disabled, the state is told why (Unavailable). A unit
whose device fails to open is disabled with one logged line naming the config key; a unit that
raises while showing a state is disabled the same way, and the phone carries on without it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from dataclasses import replace
from typing import Callable

from drivers.errors import DeviceError
from drivers.keys.events import KeyEvent
from firmware import effects as fx
from firmware.config import Config
from firmware.profile import Settings
from firmware.state import BootFinished, Event, PhoneState, Tick, step
from firmware.store_unit import StoreAccess, StoreUnit
from firmware.units import AudioRoute, Gpio, MissingUnit, Unit, build_units, describe_failure

log = logging.getLogger(__name__)

UNIT_STOP_S = 5.0
CLOCK_TICK_S = 1.0
"""How often the clock is read; the home screen only redraws when the minute changes."""


class Supervisor:
    def __init__(self, config: Config, *, units: list[Unit] | None = None, gpio: Gpio | None = None,
                 clock: Callable[[], float] = time.time):
        self.config = config
        self.gpio = gpio or Gpio(config)
        settings = factory_settings(config)
        self.units = units if units is not None else phone_units(config, self.gpio, settings)
        self._clock = clock
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._changed = asyncio.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: list[Unit] = []
        self._failures: dict[Unit, str] = {}
        self.state = PhoneState(settings=settings, factory_settings=settings)
        self.state_changes = 0

    def post(self, event: Event) -> None:
        self._events.put_nowait(event)

    def post_threadsafe(self, event: Event) -> None:
        self._loop.call_soon_threadsafe(self._events.put_nowait, event)

    async def settled(self) -> None:
        """Return once every event posted so far has been applied and shown."""
        await self._events.join()

    async def wait_for(self, predicate: Callable[[PhoneState], bool], timeout: float) -> PhoneState:
        """Wait until the state satisfies ``predicate``; TimeoutError names the state it is in."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: predicate(self.state)), timeout)
            except TimeoutError:
                raise TimeoutError(f"state did not arrive within {timeout} s; screen is {self.state.screen!r}") from None
        return self.state

    async def run(self, stop: asyncio.Event) -> None:
        """Start the units, process events until ``stop`` is set, then stop every unit."""
        self._loop = asyncio.get_running_loop()
        notices = [str(p) for p in self.config.problems]
        for problem in notices:
            log.warning("%s", problem)
        await self._apply(Tick(self._clock()))
        for unit in self.units:
            try:
                unit.start(self.post)
            except DeviceError as e:
                notices.append(self._disable(unit, e, starting=True))
                continue
            self._running.append(unit)
            self._show(unit)
        self.post(BootFinished(tuple(notices)))
        ticker = asyncio.create_task(self._tick(), name="clock")
        stopper = asyncio.create_task(stop.wait(), name="stop")
        try:
            while not stop.is_set():
                getter = asyncio.create_task(self._events.get())
                done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    await self._apply(getter.result())
                    self._events.task_done()
                else:
                    getter.cancel()
        finally:
            ticker.cancel()
            stopper.cancel()
            for unit in reversed(self._running):
                await _stopped(unit)
            self._running.clear()
            self.gpio.close()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(CLOCK_TICK_S)
            self.post(Tick(self._clock()))

    async def _apply(self, event: Event) -> None:
        try:
            new = self.state
            if isinstance(event, KeyEvent):
                new = step(new, Tick(self._clock()))
            new = step(new, event)
        except Exception:  # a bug must cost one event, not the phone
            log.exception("event %s could not be applied; state kept", type(event).__name__)
            return
        if new is self.state:
            return
        requests, new = new.effects, replace(new, effects=()) if new.effects else new
        self.state = new
        for request in requests:
            self._perform(request)
        for unit in list(self._running):
            self._show(unit)
        self.state_changes += 1
        async with self._changed:
            self._changed.notify_all()

    def _perform(self, request) -> None:
        performer = next((u for u in self.units if isinstance(request, u.performs)), None)
        if performer in self._running:
            performer.perform(request)
            return
        reason = self._failures.get(performer, "no unit performs it")
        log.error("%s not performed: %s", type(request).__name__, reason)
        self.post(fx.Unavailable(type(request).__name__, reason))

    def _show(self, unit: Unit) -> None:
        try:
            unit.show(self.state)
        except Exception as e:
            self._running.remove(unit)
            asyncio.ensure_future(_stopped(unit))
            if not isinstance(e, DeviceError):
                log.exception("%s failed", unit.name)
                e = DeviceError(unit.name, "driver", f"failed: {type(e).__name__}")
            self._disable(unit, e, starting=False)

    def _disable(self, unit: Unit, error: DeviceError, starting: bool) -> str:
        line = describe_failure(unit, error)
        self._failures[unit] = line
        log.error("%s disabled %s: %s", unit.name, "at start" if starting else "after a failure", line)
        return line


async def _stopped(unit: Unit) -> None:
    """Stop ``unit``, awaiting it (at most UNIT_STOP_S) when its stop says goodbye on the network."""
    try:
        result = unit.stop()
        if inspect.isawaitable(result):
            await asyncio.wait_for(result, UNIT_STOP_S)
    except Exception:  # one unit's failure to stop must not keep the others running
        log.exception("%s did not stop cleanly", unit.name)


def phone_units(config: Config, gpio: Gpio, settings: Settings) -> list[Unit]:
    """Every unit of the phone: the store first (its answer must precede BootFinished), devices last."""
    access, route = StoreAccess(), AudioRoute()
    units: list[Unit] = [StoreUnit(config, settings, access)]
    if config["calls.enabled"]:
        try:
            from firmware.call_unit import CallsUnit
        except ImportError as e:  # a missing library disables calls, with the reason, not the phone
            units.append(MissingUnit("calls", "enabled", f"cannot load {e.name or e}", fx.CALL_EFFECTS))
        else:
            units.append(CallsUnit(config, access, route))
    if config["chat.enabled"]:
        try:
            from firmware.chat_unit import ChatUnit
        except ImportError as e:
            units.append(MissingUnit("chat", "enabled", f"cannot load {e.name or e}", fx.CHAT_EFFECTS))
        else:
            units.append(ChatUnit(config, access))
    if config["network.enabled"]:
        from firmware.network_unit import NetworkUnit
        units.append(NetworkUnit(config))
    return units + build_units(config, gpio, route)


def factory_settings(config: Config) -> Settings:
    """The owner's settings on a new phone, from the config file's defaults."""
    return Settings(clock_24h=config["ui.clock_24h"], screen_off_s=config["ui.screen_off_s"],
                    lock_after_s=config["ui.lock_after_s"])
