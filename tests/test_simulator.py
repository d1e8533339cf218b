"""The desktop simulator: terminal drawing, the keyboard map, and the whole thing under tmux."""

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from drivers.display.terminal import choose_style, image_to_text, text_size, text_to_image
from drivers.keys.events import KeyEvent
from drivers.keys.keyboard import KeyboardKeys, split_keys

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
SCREEN_TIMEOUT_S = 20.0
POLL_S = 0.1


@pytest.mark.parametrize("style", ["halfblock", "braille"])
def test_terminal_drawing_reads_back_exactly(style):
    frame = Image.open(GOLDEN / "menu.png").convert("1")
    lines = image_to_text(frame, style)
    columns, rows = text_size(style)
    assert len(lines) == rows - 2 and all(len(line) == columns - 2 for line in lines)
    back = text_to_image(lines, style)
    assert ImageChops.difference(back.convert("L"), frame.convert("L")).getbbox() is None


def test_style_follows_the_terminal_size():
    assert choose_style(80, 24) == "braille"
    assert choose_style(140, 50, reserved_rows=8) == "halfblock"
    assert choose_style(140, 36, reserved_rows=8) == "braille"


def test_split_keys_keeps_arrow_sequences_whole():
    assert split_keys(b"1\x1b[A\r\x1b[B#") == [b"1", b"\x1b[A", b"\r", b"\x1b[B", b"#"]


def test_keyboard_maps_keys_hook_and_quit():
    master, slave = os.openpty()
    quits = []
    keyboard = KeyboardKeys(slave, on_quit=lambda: quits.append(True))
    events = []
    try:
        keyboard.feed(b"5\x1b[B\r\x7f \x1bx q", events.append)
    finally:
        keyboard.close()
        os.close(master)
        os.close(slave)
    pressed = [e for e in events if e.key == "hook" or e.pressed]
    assert [(e.key, e.pressed) for e in pressed] == [
        ("5", True), ("down", True), ("ok", True), ("back", True), ("hook", True), ("back", True),
        ("hook", False)]
    assert KeyEvent("5", False) in events, "a terminal key is a press and a release"
    assert quits == [True]


class TmuxSimulator:
    """``./byline run``'s program in a private tmux server, read back through capture-pane."""

    def __init__(self, run_dir: Path):
        self.socket = f"byline-test-{uuid.uuid4().hex[:8]}"
        self.run_dir = run_dir
        # The pane outlives the simulator long enough to read its last words and exit status.
        command = (f"cd {ROOT} && PYTHONPATH={ROOT} {sys.executable} -m firmware.simulator --run-dir {run_dir} --state-dir {run_dir}/state; "
                   f"echo simulator exit status $?; sleep {SCREEN_TIMEOUT_S}")
        self.tmux("new-session", "-d", "-s", "sim", "-x", "140", "-y", "50", command)

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True, capture_output=True, text=True).stdout

    def pane(self) -> list[str]:
        return self.tmux("capture-pane", "-p", "-t", "sim").splitlines()

    def screen(self) -> Image.Image | None:
        lines = self.pane()
        if len(lines) < 34 or not lines[0].startswith("┌"):
            return None
        body = [line[1:129] for line in lines[1:33]]
        try:
            return text_to_image(body, "halfblock")
        except ValueError:
            return None

    def send(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "sim", *keys)

    def wait_for_screen(self, golden: Image.Image, rows: range) -> None:
        deadline = time.monotonic() + SCREEN_TIMEOUT_S
        while time.monotonic() < deadline:
            screen = self.screen()
            if screen is not None and _same_rows(screen, golden, rows):
                return
            time.sleep(POLL_S)
        raise AssertionError("screen never matched; pane:\n" + "\n".join(self.pane()))

    def wait_for_text(self, text: str) -> str:
        deadline = time.monotonic() + SCREEN_TIMEOUT_S
        while time.monotonic() < deadline:
            for line in self.pane():
                if text in line:
                    return line
            time.sleep(POLL_S)
        raise AssertionError(f"{text!r} never appeared; pane:\n" + "\n".join(self.pane()))

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


def _same_rows(a: Image.Image, b: Image.Image, rows: range) -> bool:
    box = (0, rows.start, 128, rows.stop)
    return ImageChops.difference(a.crop(box).convert("L"), b.crop(box).convert("L")).getbbox() is None


def test_simulator_in_tmux_shows_home_and_navigates_the_menu(tmp_path):
    golden = {name: Image.open(GOLDEN / f"{name}.png").convert("1") for name in ("pin_setup", "home", "menu")}
    whole, soft_key = range(0, 64), range(52, 64)
    sim = TmuxSimulator(tmp_path)
    try:
        sim.wait_for_screen(golden["pin_setup"], whole)
        sim.send("1", "2", "3", "4", "5", "6", "Enter", "1", "2", "3", "4", "5", "6", "Enter")
        # The clock face shows real time and the header the lab's account: the soft key must match.
        sim.wait_for_screen(golden["home"], soft_key)
        sim.send("Enter")
        sim.wait_for_screen(golden["menu"], whole)
        sim.send("BSpace")
        sim.wait_for_screen(golden["home"], soft_key)
        lab_line = sim.wait_for_text("lab: ")
        sim.wait_for_text("lab: you are alice")
        sim.send("Space")
        sim.wait_for_text("handset: LIFTED")
        sim.send("q")
        sim.wait_for_text("byline: stopped")
        sim.wait_for_text("simulator exit status 0")
    except AssertionError:
        log = tmp_path / "byline.log"
        print(log.read_text() if log.exists() else "no log")
        raise
    finally:
        sim.close()
    assert "failed" not in lab_line
