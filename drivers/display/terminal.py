"""The simulator's display: the 128x64 OLED drawn with text characters in a terminal.

Two character styles, both exact (one character = a fixed block of pixels, so a screen can be
read back from the terminal, as the tmux test does): half blocks, 1x2 pixels per character
(128x32 characters, for terminals of at least 130x34), and Braille, 2x4 pixels per character
(64x16 characters, fits 80x24).
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any, TextIO

from luma.core.device import dummy
from PIL import Image

HALF_BLOCKS = " ▀▄█"  # index = top pixel + 2 * bottom pixel
BRAILLE_BASE = 0x2800
BRAILLE_DOTS = ((0, 0, 0x01), (0, 1, 0x02), (0, 2, 0x04), (1, 0, 0x08),
                (1, 1, 0x10), (1, 2, 0x20), (0, 3, 0x40), (1, 3, 0x80))
CELL = {"halfblock": (1, 2), "braille": (2, 4)}
FRAME_ROWS_EXTRA = 2  # the border above and below
PANEL_ROWS = 6
"""Rows the simulator keeps under the screen for its panel (hook, LEDs, lab, key map)."""


def text_size(style: str, width: int = 128, height: int = 64) -> tuple[int, int]:
    """Columns and rows the screen takes in ``style``, border included."""
    cw, ch = CELL[style]
    return width // cw + 2, height // ch + FRAME_ROWS_EXTRA


def choose_style(columns: int, rows: int, reserved_rows: int = 0) -> str:
    """Half blocks when the terminal is large enough (with ``reserved_rows`` below), else Braille."""
    need_cols, need_rows = text_size("halfblock")
    return "halfblock" if columns >= need_cols and rows >= need_rows + reserved_rows else "braille"


def image_to_text(image: Image.Image, style: str) -> list[str]:
    """The lines of characters that draw ``image`` (mode "1"), without the border."""
    pixels = image.convert("1").load()
    width, height = image.size
    cw, ch = CELL[style]
    lines = []
    for top in range(0, height, ch):
        chars = []
        for left in range(0, width, cw):
            if style == "halfblock":
                chars.append(HALF_BLOCKS[(pixels[left, top] > 0) + 2 * (pixels[left, top + 1] > 0)])
            else:
                bits = sum(bit for dx, dy, bit in BRAILLE_DOTS if pixels[left + dx, top + dy])
                chars.append(chr(BRAILLE_BASE + bits))
        lines.append("".join(chars))
    return lines


def text_to_image(lines: list[str], style: str) -> Image.Image:
    """The inverse of :func:`image_to_text`: read a screen back from its characters."""
    cw, ch = CELL[style]
    image = Image.new("1", (len(lines[0]) * cw, len(lines) * ch), 0)
    pixels = image.load()
    for row, line in enumerate(lines):
        for col, char in enumerate(line):
            x, y = col * cw, row * ch
            if style == "halfblock":
                index = HALF_BLOCKS.index(char)
                pixels[x, y], pixels[x, y + 1] = index & 1, index >> 1
            else:
                bits = ord(char) - BRAILLE_BASE
                for dx, dy, bit in BRAILLE_DOTS:
                    pixels[x + dx, y + dy] = 1 if bits & bit else 0
    return image


class TerminalDevice(dummy):
    """A luma dummy device that also paints each frame at the top of a terminal, in a border."""

    def __init__(self, out: TextIO, style: str, width: int = 128, height: int = 64, rotate: int = 0):
        super().__init__(width=width, height=height, rotate=rotate, mode="1")
        self._out = out
        self.style = style
        self._hidden = False
        self._closed = False

    def display(self, image: Image.Image) -> None:
        super().display(image)
        if not self._hidden:
            self._paint(self.image)

    def hide(self) -> None:
        self._hidden = True
        self._paint(Image.new("1", self.size, 0))

    def show(self) -> None:
        self._hidden = False
        self._paint(self.image)

    def cleanup(self) -> None:
        # luma calls cleanup again at interpreter exit; by then the terminal belongs to the shell.
        self._closed = True

    def _paint(self, image: Image.Image) -> None:
        if self._closed:
            return
        body = image_to_text(image, self.style)
        width = len(body[0])
        lines = ["┌" + "─" * width + "┐", *("│" + line + "│" for line in body), "└" + "─" * width + "┘"]
        self._out.write("".join(f"\x1b[{row + 1};1H{line}" for row, line in enumerate(lines)))
        self._out.flush()


def open_terminal(*, width: int, height: int, rotate: int, **_: Any) -> TerminalDevice:
    """The display factory for ``terminal``: paints on standard output, style by terminal size."""
    try:  # the terminal itself, not COLUMNS/LINES inherited from whoever started us
        size = os.get_terminal_size(sys.stdout.fileno())
    except OSError:
        size = shutil.get_terminal_size()
    return TerminalDevice(sys.stdout, choose_style(size.columns, size.lines, reserved_rows=PANEL_ROWS),
                          width, height, rotate)
