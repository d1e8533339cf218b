"""Every screen of the phone, drawn from state alone.

Contract: :func:`render` is a pure function: the same state gives the same pixels, it reads no
clock and no device, and it draws a secret (the PIN) only as a count of dots.
Layout on 128x64: a 12 px header (title left, status icons right) over a rule at y=12, then
four 12 px body lines at y=14, 26, 38, 50.
"""

from __future__ import annotations

from PIL import Image, ImageDraw

from firmware.state import MENU, SECTION_VISIBLE_LINES, PhoneState, section_lines
from firmware.ui.fonts import terminus

WIDTH, HEIGHT = 128, 64
HEADER_RULE_Y = 12
LINE_HEIGHT = 12
BODY_TOP = 14
ICON_SIZE = 8
ICON_GAP = 3
PIN_DOT_RADIUS = 3
PIN_DOT_PITCH = 10


def render(state: PhoneState) -> Image.Image:
    """The frame for ``state`` (a 128x64 mode "1" image; white = lit pixel)."""
    image = Image.new("1", (WIDTH, HEIGHT), 0)
    draw = ImageDraw.Draw(image)
    _SCREENS[state.screen](draw, state)
    return image


def _text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, size: int = 12, bold: bool = False) -> None:
    draw.text(xy, text, font=terminus(size, bold), fill=1)


def _centered(draw: ImageDraw.ImageDraw, y: int, text: str, size: int = 12, bold: bool = False) -> None:
    width = draw.textlength(text, font=terminus(size, bold))
    _text(draw, ((WIDTH - int(width)) // 2, y), text, size, bold)


def _header(draw: ImageDraw.ImageDraw, state: PhoneState, title: str) -> None:
    _text(draw, (0, 0), title)
    x = WIDTH - ICON_SIZE
    for icon in _status_icons(state):
        icon(draw, x, 2)
        x -= ICON_SIZE + ICON_GAP
    draw.line((0, HEADER_RULE_Y, WIDTH - 1, HEADER_RULE_Y), fill=1)


def _status_icons(state: PhoneState) -> list:
    icons = [_lock_closed if state.locked else _lock_open]
    if state.off_hook:
        icons.append(_handset)
    if state.notices:
        icons.append(_warning)
    return icons


def _lock_closed(draw: ImageDraw.ImageDraw, x: int, y: int) -> None:
    draw.arc((x + 1, y - 2, x + 6, y + 5), 180, 360, fill=1)
    draw.rectangle((x, y + 3, x + 7, y + 8), fill=1)


def _lock_open(draw: ImageDraw.ImageDraw, x: int, y: int) -> None:
    draw.arc((x + 3, y - 3, x + 8, y + 4), 180, 360, fill=1)
    draw.rectangle((x, y + 3, x + 6, y + 8), outline=1)


def _handset(draw: ImageDraw.ImageDraw, x: int, y: int) -> None:
    draw.rectangle((x, y, x + 2, y + 2), fill=1)
    draw.rectangle((x + 5, y + 6, x + 7, y + 8), fill=1)
    draw.line((x + 1, y + 2, x + 5, y + 7), fill=1, width=2)


def _warning(draw: ImageDraw.ImageDraw, x: int, y: int) -> None:
    draw.polygon(((x + 4, y), (x, y + 8), (x + 8, y + 8)), outline=1)
    draw.line((x + 4, y + 3, x + 4, y + 5), fill=1)
    draw.point((x + 4, y + 7), fill=1)


def _body_line(draw: ImageDraw.ImageDraw, index: int, text: str, selected: bool = False) -> None:
    y = BODY_TOP + index * LINE_HEIGHT
    if selected:
        draw.rectangle((0, y, WIDTH - 1, y + LINE_HEIGHT - 1), fill=1)
        draw.text((2, y), text, font=terminus(12), fill=0)
    else:
        _text(draw, (2, y), text)


def _boot(draw: ImageDraw.ImageDraw, state: PhoneState) -> None:
    _centered(draw, 10, "Byline", size=24, bold=True)
    _centered(draw, 36, "secure phone")
    _centered(draw, 50, "starting...")


def _pin_entry(draw: ImageDraw.ImageDraw, state: PhoneState) -> None:
    _header(draw, state, "Enter PIN")
    count = len(state.pin)
    left = (WIDTH - count * PIN_DOT_PITCH) // 2
    for i in range(count):
        cx, cy = left + i * PIN_DOT_PITCH + PIN_DOT_PITCH // 2, 28
        draw.ellipse((cx - PIN_DOT_RADIUS, cy - PIN_DOT_RADIUS, cx + PIN_DOT_RADIUS, cy + PIN_DOT_RADIUS), fill=1)
    if not count:
        _centered(draw, 22, "- - - - - -")
    _centered(draw, 38, state.pin_hint or "then OK")
    _text(draw, (0, 52), "OK:unlock")
    _text(draw, (WIDTH - 6 * len("Back:del"), 52), "Back:del")


def _home(draw: ImageDraw.ImageDraw, state: PhoneState) -> None:
    _header(draw, state, state.accounts[0] if state.accounts else "No account")
    _centered(draw, 14, state.clock, size=24, bold=True)
    _centered(draw, 38, state.date)
    label = "Menu"
    width = 6 * len(label) + 3
    draw.rectangle((0, 52, width, 63), fill=1)
    draw.text((2, 52), label, font=terminus(12), fill=0)


def _menu(draw: ImageDraw.ImageDraw, state: PhoneState) -> None:
    _header(draw, state, "Menu")
    first = min(max(0, state.menu_index - SECTION_VISIBLE_LINES + 1), len(MENU) - SECTION_VISIBLE_LINES)
    for row, index in enumerate(range(first, first + SECTION_VISIBLE_LINES)):
        _body_line(draw, row, f"{index + 1} {MENU[index]}", selected=index == state.menu_index)


def _section(draw: ImageDraw.ImageDraw, state: PhoneState) -> None:
    _header(draw, state, state.section)
    lines = section_lines(state)
    visible = lines[state.section_scroll:state.section_scroll + SECTION_VISIBLE_LINES]
    for row, line in enumerate(visible):
        _body_line(draw, row, line)
    if state.section_scroll > 0:
        draw.polygon(((WIDTH - 4, BODY_TOP), (WIDTH - 7, BODY_TOP + 4), (WIDTH - 1, BODY_TOP + 4)), fill=1)
    if state.section_scroll + SECTION_VISIBLE_LINES < len(lines):
        draw.polygon(((WIDTH - 4, HEIGHT - 1), (WIDTH - 7, HEIGHT - 5), (WIDTH - 1, HEIGHT - 5)), fill=1)


_SCREENS = {
    "boot": _boot,
    "pin_entry": _pin_entry,
    "home": _home,
    "menu": _menu,
    "section": _section,
}
