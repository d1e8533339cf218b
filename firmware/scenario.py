"""The headless scenario runner: key and hook events in, screens awaited, frames out as PNG.

``./byline scenario SCRIPT OUTDIR`` runs a script against the real firmware with the ``capture``
display (every frame the OLED would show becomes OUTDIR/frames/frame_NNNNNN.png) and GPIO on
MockFactory. Tests and benchmarks use :class:`ScenarioPhone` directly. Script lines:

    # a comment
    wait SCREEN            wait (up to WAIT_TIMEOUT_S) until the screen is SCREEN (boot, pin_entry,
                           home, menu, section)
    press KEY [KEY ...]    press and release keys: 0-9 * # up down ok back
    lift | hangup          the handset off or back on the cradle
    advance SECONDS        move the phone's clock forward (screen timeout, clock face)
    snap NAME              save the current frame as OUTDIR/NAME.png

The clock is fixed (SCENARIO_EPOCH, in UTC) so frames are the same on every machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from drivers.keys.events import HOOK, KEYPAD_KEYS, KeyEvent
from firmware.config import Config, defaults, load_config
from firmware.state import PhoneState, Tick
from firmware.simulator import SIMULATED_DRIVERS
from firmware.supervisor import Supervisor
from firmware.units import DisplayUnit

SCENARIO_EPOCH = 1795686060.0  # Thu 26 Nov 2026 09:41 UTC
WAIT_TIMEOUT_S = 5.0
SCREENS = ("boot", "pin_entry", "home", "menu", "section")

HEADLESS_DRIVERS = {
    **SIMULATED_DRIVERS,
    "display__driver": "dummy",
    "keys__driver": "matrix",
    "lab__enabled": False,
}


def headless_config(base: Config | None = None, **overrides) -> Config:
    """``base`` (default: all defaults) with simulated drivers and then ``overrides`` applied."""
    return (base or defaults()).with_values(**{**HEADLESS_DRIVERS, **overrides})


class FixedClock:
    """A clock that only moves when told to."""

    def __init__(self, now: float = SCENARIO_EPOCH):
        self.now = now

    def __call__(self) -> float:
        return self.now


class ScenarioPhone:
    """The firmware on a private event loop task: ``async with ScenarioPhone() as phone: ...``.

    ``config`` is used as given (default: :func:`headless_config`).

    Events are posted straight to the supervisor (the key path below it, matrix scanning and
    debounce, has its own tests), so the same scenarios run against real hardware backends.
    """

    def __init__(self, config: Config | None = None, clock: FixedClock | None = None):
        self.config = config or headless_config()
        self.clock = clock or FixedClock()
        self.supervisor = Supervisor(self.config, clock=self.clock)
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> "ScenarioPhone":
        os.environ["TZ"] = "UTC"
        time.tzset()
        self._task = asyncio.create_task(self.supervisor.run(self._stop), name="supervisor")
        await self.wait_screen("pin_entry")
        return self

    async def __aexit__(self, *exc) -> None:
        self._stop.set()
        await self._task

    @property
    def state(self) -> PhoneState:
        return self.supervisor.state

    async def post(self, *events) -> None:
        for event in events:
            self.supervisor.post(event)
        await self.supervisor.settled()

    async def press(self, *keys: str) -> None:
        for key in keys:
            await self.post(KeyEvent(key, True), KeyEvent(key, False))

    async def lift(self) -> None:
        await self.post(KeyEvent(HOOK, True))

    async def hang_up(self) -> None:
        await self.post(KeyEvent(HOOK, False))

    async def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        await self.post(Tick(self.clock.now))

    async def wait_screen(self, screen: str, timeout: float = WAIT_TIMEOUT_S) -> PhoneState:
        return await self.supervisor.wait_for(lambda s: s.screen == screen, timeout)

    def frame(self) -> Image.Image:
        display = next(u for u in self.supervisor.units if isinstance(u, DisplayUnit)).display
        return display.last_frame


@dataclass(frozen=True)
class Step:
    line: int
    verb: str
    args: tuple[str, ...]


class ScriptError(ValueError):
    pass


def parse_script(text: str) -> list[Step]:
    """Parse a scenario script; ScriptError names the line of the first mistake."""
    steps = []
    for number, raw in enumerate(text.splitlines(), 1):
        try:
            words = shlex.split(raw, comments=True)
        except ValueError as e:
            raise ScriptError(f"line {number}: {e}: {raw.strip()!r}") from None
        if not words:
            continue
        verb, args = words[0], tuple(words[1:])
        problem = _check(verb, args)
        if problem:
            raise ScriptError(f"line {number}: {problem}: {raw.strip()!r}")
        steps.append(Step(number, verb, args))
    return steps


def _check(verb: str, args: tuple[str, ...]) -> str | None:
    if verb == "wait":
        return None if len(args) == 1 and args[0] in SCREENS else f"wait takes one of {', '.join(SCREENS)}"
    if verb == "press":
        unknown = [a for a in args if a not in KEYPAD_KEYS]
        return None if args and not unknown else f"press takes keys ({' '.join(KEYPAD_KEYS)})"
    if verb in ("lift", "hangup"):
        return None if not args else f"{verb} takes nothing"
    if verb == "advance":
        try:
            return None if len(args) == 1 and float(args[0]) >= 0 else "advance takes seconds"
        except ValueError:
            return "advance takes seconds"
    if verb == "snap":
        return None if len(args) == 1 and args[0].replace("-", "").replace("_", "").isalnum() else \
            "snap takes one name of letters, digits, - and _"
    return f"unknown step {verb!r}"


async def run_script(steps: list[Step], out: Path, config: Config | None = None) -> list[Path]:
    """Run ``steps``; return the PNGs the snap steps wrote."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    async with ScenarioPhone(config) as phone:
        for step in steps:
            if step.verb == "wait":
                await phone.wait_screen(step.args[0])
            elif step.verb == "press":
                await phone.press(*step.args)
            elif step.verb == "lift":
                await phone.lift()
            elif step.verb == "hangup":
                await phone.hang_up()
            elif step.verb == "advance":
                await phone.advance(float(step.args[0]))
            elif step.verb == "snap":
                path = out / f"{step.args[0]}.png"
                phone.frame().save(path)
                written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./byline scenario", description=__doc__.splitlines()[0])
    parser.add_argument("script", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--config", help="a TOML config file (display and GPIO stay simulated)")
    args = parser.parse_args(argv)
    try:
        steps = parse_script(args.script.read_text())
    except (OSError, ScriptError) as e:
        print(f"byline scenario: {args.script}: {e}", file=sys.stderr)
        return 2
    frames = args.out / "frames"
    frames.mkdir(parents=True, exist_ok=True)
    config = headless_config(load_config(args.config), display__driver="capture", display__capture_dir=str(frames))
    try:
        written = asyncio.run(run_script(steps, args.out, config))
    except TimeoutError as e:
        print(f"byline scenario: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
