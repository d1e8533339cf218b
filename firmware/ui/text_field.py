"""Drawing a keypad text field (firmware.text_entry) and its mode badge.

Contract: both functions are pure drawing: they read only their arguments, draw only inside
their box (given below) on a mode "1" image (1 = lit), and draw a secret field's hidden
characters as the same mask glyph, so its pixels depend on the text's length alone (and on the
pending character, which is shown as phones do).

The field is one line of Terminus cells: a GUTTER_PX column each side holds a small arrow when
the text goes on beyond that side; the pending (multi-tapped) character is drawn inverted, a
block cursor; otherwise the cursor is an underline on the bottom row of its cell.
"""

from __future__ import annotations

from PIL import ImageDraw

from firmware.text_entry import TextEntry
from firmware.ui.fonts import terminus

GUTTER_PX = 2
ARROW_HALF_HEIGHT = 1
BADGE_FONT_SIZE = 12
BADGE_CELL_PX = 6  # Terminus 12 px cells are 6 px wide
BADGE_PAD_X = 1
MODE_BADGE_WIDTH = len("abc") * BADGE_CELL_PX + 2 * BADGE_PAD_X
MODE_BADGE_HEIGHT = BADGE_FONT_SIZE
"""The badge's box (every mode's name is three characters); it fits the 12 px header."""


def draw_text_field(draw: ImageDraw.ImageDraw, entry: TextEntry, xy: tuple[int, int], width_px: int,
                    now: float, font_size: int = 12) -> None:
    """Draw ``entry`` as it is at ``now`` in the box ``width_px`` wide and ``font_size`` high at ``xy``.

    The box is cleared first. It shows ``(width_px - 2 * GUTTER_PX) // cell width`` characters
    (at least one), scrolled to keep the cursor in view.
    """
    font = terminus(font_size)
    cell = int(font.getlength("M"))
    x, y = xy
    draw.rectangle((x, y, x + width_px - 1, y + font_size - 1), fill=0)
    columns = max(1, (width_px - 2 * GUTTER_PX) // cell)
    view = entry.display(now, columns)
    left = x + GUTTER_PX
    draw.text((left, y), view.text, font=font, fill=1)
    cursor_x = left + view.cursor * cell
    if view.pending:
        draw.rectangle((cursor_x, y, cursor_x + cell - 1, y + font_size - 1), fill=1)
        draw.text((cursor_x, y), view.text[view.cursor], font=font, fill=0)
    else:
        # One short of the cell: its last column is the gap between glyphs, so cursors stay apart.
        draw.line((cursor_x, y + font_size - 1, cursor_x + cell - 2, y + font_size - 1), fill=1)
    mid = y + font_size // 2
    if view.more_left:
        _arrow(draw, x, mid, pointing=-1)
    if view.more_right:
        _arrow(draw, left + columns * cell + GUTTER_PX - 1, mid, pointing=+1)


def _arrow(draw: ImageDraw.ImageDraw, tip_x: int, mid_y: int, pointing: int) -> None:
    """A small "<" (pointing -1) or ">" (+1) with its tip at (tip_x, mid_y), GUTTER_PX wide."""
    back_x = tip_x - pointing * (GUTTER_PX - 1)
    draw.point((tip_x, mid_y), fill=1)
    draw.line((back_x, mid_y - ARROW_HALF_HEIGHT, back_x, mid_y + ARROW_HALF_HEIGHT), fill=1)


def draw_mode_badge(draw: ImageDraw.ImageDraw, entry: TextEntry, xy: tuple[int, int]) -> None:
    """Draw ``entry``'s mode ("abc", "ABC", "123"), inverted, in the badge box (MODE_BADGE_*) at ``xy``."""
    x, y = xy
    draw.rectangle((x, y, x + MODE_BADGE_WIDTH - 1, y + MODE_BADGE_HEIGHT - 1), fill=1)
    draw.text((x + BADGE_PAD_X, y), entry.mode, font=terminus(BADGE_FONT_SIZE), fill=0)
