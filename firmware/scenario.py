"""The headless scenario runner: key and hook events in, screens awaited, frames out as PNG.

``./byline scenario SCRIPT OUTDIR`` runs a script against the real firmware with the ``capture``
display (every frame the OLED would show becomes OUTDIR/frames/frame_NNNNNN.png) and GPIO on
MockFactory. Tests and benchmarks use :class:`ScenarioPhone` directly. Script lines:

    # a comment
    wait SCREEN [S]        wait (up to S seconds, default WAIT_TIMEOUT_S) until the screen is SCREEN
                           (one of SCREENS)
    press KEY [KEY ...]    press and release keys: 0-9 * # up down ok back
    type TEXT              type TEXT into the open text field by multi-tap, as a person would
    expect TEXT [S]        wait (up to S seconds) until TEXT is part of what the screen shows
    pause SECONDS          let real time pass (calls: audio flowing)
    print                  write what the screen shows to stdout, one line: "screen: a | b | c"
    lift | hangup          the handset off or back on the cradle
    advance SECONDS        move the phone's clock forward (screen timeout, clock face)
    snap NAME              save the current frame as OUTDIR/NAME.png
    mark NAME              write "mark: NAME" to stdout (tells whoever drives several phones where
                           this one is)
    await NAME [S]         wait (up to S seconds, default AWAIT_TIMEOUT_S) until the line NAME
                           arrives on stdin (the driver's go-ahead; phones in a test take turns)

The clock is fixed (SCENARIO_EPOCH, in UTC) so frames are the same on every machine.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from drivers.audio import file_capture_device, file_playback_device
from drivers.keys.events import HOOK, KEYPAD_KEYS, KeyEvent
from firmware.config import SETTINGS, Config, defaults, load_config
from firmware.state import PhoneState, Tick
from firmware.text_entry import keys_for
from firmware.ui.screens import screen_text
from firmware.simulator import SIMULATED_DRIVERS
from firmware.supervisor import Supervisor
from firmware.units import DisplayUnit

SCENARIO_EPOCH = 1795686060.0  # Thu 26 Nov 2026 09:41 UTC
WAIT_TIMEOUT_S = 10.0
"""A bound for a step, not a measurement: a loaded machine must not fail a script that works."""
AWAIT_TIMEOUT_S = 120.0
SCREENS = ("boot", "pin", "working", "home", "menu", "section", "form", "edit", "dial", "chat", "list")
SCENARIO_PIN = "123456"
SCENARIO_KDF = {"security__kdf_target_ms": 20, "security__kdf_memory_mib": 8}
"""Scenarios unlock often; the product's 1 s Argon2id would only make them slow."""

HEADLESS_DRIVERS = {
    **SIMULATED_DRIVERS,
    "display__driver": "dummy",
    "keys__driver": "matrix",
    "lab__enabled": False,
    "security__tpm": "simulated",
    # pjsua2 allows one SIP endpoint per process and tests start many phones in one: a scenario
    # that calls turns calls on (a process per phone, as ./byline scenario is).
    "calls__enabled": False,
    **SCENARIO_KDF,
}
STATE_DIRECTORY = "state"
"""A scenario's store lives in a directory of this name inside its work directory (the simulated
TPM beside it), so the store survives between two runs over the same work directory."""


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

    ``config`` is used as given (default: :func:`headless_config`), except that a config still
    naming the device's state directory gets a private temporary one instead (removed at exit),
    so no scenario ever touches a real phone's store.

    Events are posted straight to the supervisor (the key path below it, matrix scanning and
    debounce, has its own tests), so the same scenarios run against real hardware backends.
    """

    def __init__(self, config: Config | None = None, clock: FixedClock | None = None):
        config = config or headless_config()
        self._work = None
        if config["security.state_dir"] == SETTINGS["security.state_dir"].default:
            self._work = tempfile.TemporaryDirectory(prefix="byline-scenario-")
            config = config.with_values(security__state_dir=str(Path(self._work.name) / STATE_DIRECTORY))
        self.config = config
        self.clock = clock or FixedClock()
        self.supervisor = Supervisor(self.config, clock=self.clock)
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> "ScenarioPhone":
        os.environ["TZ"] = "UTC"
        time.tzset()
        self._task = asyncio.create_task(self.supervisor.run(self._stop), name="supervisor")
        await self.supervisor.wait_for(lambda s: s.screen != "boot", WAIT_TIMEOUT_S)
        return self

    async def __aexit__(self, *exc) -> None:
        self._stop.set()
        try:
            await self._task
        finally:
            if self._work is not None:
                self._work.cleanup()

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

    async def set_up_pin(self, pin: str = SCENARIO_PIN) -> PhoneState:
        """On a new phone: choose ``pin`` (typed twice, as the owner does) and wait for home."""
        await self.wait_screen("pin")
        await self.press(*pin, "ok", *pin, "ok")
        return await self.wait_screen("home")

    async def type(self, text: str) -> None:
        """Type ``text`` into the open text field, starting from the field's current mode."""
        editor = self.state.editor
        if editor is None:
            raise ScriptError(f"type: no text field is open (screen is {self.state.screen!r})")
        await self.press(*keys_for(text, editor.entry.mode))

    async def wait_screen(self, screen: str, timeout: float = WAIT_TIMEOUT_S) -> PhoneState:
        return await self.supervisor.wait_for(lambda s: s.screen == screen, timeout)

    async def expect(self, text: str, timeout: float = WAIT_TIMEOUT_S) -> PhoneState:
        """Wait until ``text`` is part of what the screen shows; ScriptError says what it shows instead."""
        try:
            return await self.supervisor.wait_for(lambda s: any(text in line for line in screen_text(s)), timeout)
        except TimeoutError:
            shown = [line for line in screen_text(self.state) if line]
            raise ScriptError(f"expect: {text!r} did not appear; the screen shows {shown}") from None

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
        ok = len(args) in (1, 2) and args[0] in SCREENS and (len(args) == 1 or _seconds(args[1]))
        return None if ok else f"wait takes one of {', '.join(SCREENS)} and optionally seconds"
    if verb == "pause":
        return None if len(args) == 1 and _seconds(args[0]) else "pause takes seconds"
    if verb == "print":
        return None if not args else "print takes nothing"
    if verb == "press":
        unknown = [a for a in args if a not in KEYPAD_KEYS]
        return None if args and not unknown else f"press takes keys ({' '.join(KEYPAD_KEYS)})"
    if verb == "type":
        return None if len(args) == 1 else "type takes one text (quote it if it has spaces)"
    if verb == "expect":
        return None if len(args) == 1 or (len(args) == 2 and _seconds(args[1])) else \
            "expect takes one text (quote it if it has spaces) and optionally seconds"
    if verb in ("lift", "hangup"):
        return None if not args else f"{verb} takes nothing"
    if verb == "advance":
        try:
            return None if len(args) == 1 and float(args[0]) >= 0 else "advance takes seconds"
        except ValueError:
            return "advance takes seconds"
    if verb in ("snap", "mark"):
        return None if len(args) == 1 and _is_name(args[0]) else f"{verb} takes one name of letters, digits, - and _"
    if verb == "await":
        return None if len(args) in (1, 2) and _is_name(args[0]) and (len(args) == 1 or _seconds(args[1])) else \
            "await takes one name of letters, digits, - and _ and optionally seconds"
    return f"unknown step {verb!r}"


def _is_name(text: str) -> bool:
    return text.replace("-", "").replace("_", "").isalnum()


def _seconds(text: str) -> bool:
    try:
        return float(text) >= 0
    except ValueError:
        return False


async def run_script(steps: list[Step], out: Path, config: Config | None = None) -> list[Path]:
    """Run ``steps``; return the PNGs the snap steps wrote."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    async with ScenarioPhone(config) as phone:
        for step in steps:
            try:
                await _perform(phone, step, out, written)
            except (ScriptError, TimeoutError) as e:
                raise ScriptError(f"line {step.line}: {e}") from None
    return written


async def _perform(phone: ScenarioPhone, step: Step, out: Path, written: list[Path]) -> None:
    timeout = AWAIT_TIMEOUT_S if step.verb == "await" else WAIT_TIMEOUT_S
    if step.verb in ("wait", "expect", "await") and len(step.args) == 2:
        timeout = float(step.args[1])
    if step.verb == "wait":
        await phone.wait_screen(step.args[0], timeout)
    elif step.verb == "press":
        await phone.press(*step.args)
    elif step.verb == "type":
        await phone.type(step.args[0])
    elif step.verb == "expect":
        await phone.expect(step.args[0], timeout)
    elif step.verb == "pause":
        await asyncio.sleep(float(step.args[0]))
    elif step.verb == "print":
        print("screen: " + " | ".join(line for line in screen_text(phone.state) if line), flush=True)
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
    elif step.verb == "mark":
        print(f"mark: {step.args[0]}", flush=True)
    elif step.verb == "await":
        await _await_line(step.args[0], timeout)


async def _await_line(name: str, timeout: float) -> None:
    """Read stdin until the line ``name``; TimeoutError if it does not come, ScriptError at its end."""
    loop = asyncio.get_running_loop()
    arrived: asyncio.Future = loop.create_future()

    def settle(outcome: BaseException | None) -> None:
        if arrived.done():
            return
        if outcome is None:
            arrived.set_result(None)
        else:
            arrived.set_exception(outcome)

    def read() -> None:
        for line in sys.stdin:
            if line.strip() == name:
                loop.call_soon_threadsafe(settle, None)
                return
        loop.call_soon_threadsafe(settle, ScriptError(f"stdin ended before {name!r} came"))

    # A daemon thread: a blocked read of stdin must not keep the process alive after a timeout.
    threading.Thread(target=read, name="await-stdin", daemon=True).start()
    try:
        await asyncio.wait_for(arrived, timeout)
    except TimeoutError:
        raise TimeoutError(f"{name!r} did not arrive on stdin within {timeout} s") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./byline scenario", description=__doc__.splitlines()[0])
    parser.add_argument("script", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--config", help="a TOML config file (display and GPIO stay simulated)")
    parser.add_argument("--work-dir", type=Path,
                        help=f"keep the phone's store in WORK_DIR/{STATE_DIRECTORY} (and its simulated TPM beside "
                             "it), so a later run finds it; default: a temporary one, removed after the run")
    parser.add_argument("--log", type=Path, help="write the firmware's log to this file")
    parser.add_argument("--capture", type=Path, help="the microphone: a raw S16_LE mono file at audio.rate")
    parser.add_argument("--playback", type=Path, help="the earpiece: write what it plays to this raw file")
    args = parser.parse_args(argv)
    try:
        steps = parse_script(args.script.read_text())
    except (OSError, ScriptError) as e:
        print(f"byline scenario: {args.script}: {e}", file=sys.stderr)
        return 2
    frames = args.out / "frames"
    frames.mkdir(parents=True, exist_ok=True)
    base = load_config(args.config)
    # One phone per process here, so calls can be on (as the config file says; on by default).
    config = headless_config(base, display__driver="capture", display__capture_dir=str(frames),
                             calls__enabled=base["calls.enabled"])
    if args.work_dir is not None:
        config = config.with_values(security__state_dir=str(args.work_dir.resolve() / STATE_DIRECTORY))
    if args.capture is not None:
        config = config.with_values(audio__capture_device=file_capture_device(args.capture.resolve()))
    if args.playback is not None:
        config = config.with_values(audio__playback_device=file_playback_device(args.playback.resolve()))
    if args.log is not None:
        logging.basicConfig(filename=args.log, level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        written = asyncio.run(run_script(steps, args.out, config))
    except ScriptError as e:
        print(f"byline scenario: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
