"""Every screen of the phone, drawn from state alone.

Contract: :func:`render` is a pure function: the same state gives the same pixels, it reads no
clock and no device, and it draws a secret (a PIN) only as a count of dots and a password only
as stars (the character being multi-tapped excepted, as phones do).
Layout on 128x64: a 12 px header (title left, status icons right) over a rule at y=12, then
four 12 px body lines at y=14, 26, 38, 50.
"""

from __future__ import annotations

from PIL import Image, ImageDraw

from firmware import conversations as chat
from firmware.state import (CHAT_ROWS, MENU, PIN_FLOWS, VISIBLE_LINES, PhoneState, form_lines, min_secret_length,
                            open_conversation, peer_name, section_items, secret_word, unread_line)
from firmware.ui.fonts import terminus
from firmware.ui.text_field import draw_mode_badge, draw_text_field

WIDTH, HEIGHT = 128, 64
HEADER_RULE_Y = 12
LINE_HEIGHT = 12
BODY_TOP = 14
ICON_SIZE = 8
ICON_GAP = 3
PIN_DOT_RADIUS = 3
PIN_DOT_PITCH = 10
PIN_DOTS_SHOWN = 12
CHAR_WIDTH = 6
SOFT_KEYS_Y = 52
TEXT_FIELD_Y = 28


def render(state: PhoneState) -> Image.Image:
    """The frame for ``state`` (a 128x64 mode "1" image; white = lit pixel)."""
    image = Image.new("1", (WIDTH, HEIGHT), 0)
    draw = ImageDraw.Draw(image)
    if state.call is not None and state.screen != "boot":
        _call(draw, state)
    else:
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


def _soft_keys(draw: ImageDraw.ImageDraw, left: str, right: str) -> None:
    _text(draw, (0, SOFT_KEYS_Y), left)
    _text(draw, (WIDTH - CHAR_WIDTH * len(right), SOFT_KEYS_Y), right)


def _toast(draw: ImageDraw.ImageDraw, message: str) -> None:
    """A one-line message over the bottom line, boxed so it reads as news rather than an item."""
    draw.rectangle((0, SOFT_KEYS_Y - 1, WIDTH - 1, HEIGHT - 1), fill=0, outline=1)
    _text(draw, (2, SOFT_KEYS_Y), message[:20])


def _list(draw: ImageDraw.ImageDraw, lines: tuple[str, ...], selected: int) -> None:
    """Lines with the selected one inverted, scrolled so it is in view, with arrows for more."""
    first = min(max(0, selected - VISIBLE_LINES + 1), max(0, len(lines) - VISIBLE_LINES))
    for row, index in enumerate(range(first, min(len(lines), first + VISIBLE_LINES))):
        _body_line(draw, row, lines[index], selected=index == selected)
    if first > 0:
        draw.polygon(((WIDTH - 4, BODY_TOP), (WIDTH - 7, BODY_TOP + 4), (WIDTH - 1, BODY_TOP + 4)), fill=1)
    if first + VISIBLE_LINES < len(lines):
        draw.polygon(((WIDTH - 4, HEIGHT - 1), (WIDTH - 7, HEIGHT - 5), (WIDTH - 1, HEIGHT - 5)), fill=1)


def _boot(draw: ImageDraw.ImageDraw, state: PhoneState) -> None:
    _centered(draw, 10, "Byline", size=24, bold=True)
    _centered(draw, 36, "secure phone")
    _centered(draw, 50, "starting...")


def pin_title(state: PhoneState) -> str:
    """The PIN screen's title for the flow and stage in progress."""
    word = secret_word(state)
    stage, flow = state.pin.stage_name, state.pin.flow
    if flow == "lock":
        return "Locked"
    if stage == "confirm":
        return f"Repeat {word}"
    if stage == "new":
        return {"setup": f"Choose {word}", "change": f"New {word}"}.get(flow, f"Duress {word}")
    return f"Enter {word}" if flow == "unlock" else f"Current {word}"


def _pin(draw: ImageDraw.ImageDraw, state: PhoneState) -> None:
    _header(draw, state, pin_title(state))
    count = len(state.pin.digits)
    shown = min(count, PIN_DOTS_SHOWN)
    left = (WIDTH - shown * PIN_DOT_PITCH) // 2
    for i in range(shown):
        cx, cy = left + i * PIN_DOT_PITCH + PIN_DOT_PITCH // 2, 22
        draw.ellipse((cx - PIN_DOT_RADIUS, cy - PIN_DOT_RADIUS, cx + PIN_DOT_RADIUS, cy + PIN_DOT_RADIUS), fill=1)
    if not count:
        _centered(draw, 16, "- - - - - -")
    elif count > PIN_DOTS_SHOWN:
        _centered(draw, 28, f"{count} digits")
    hint = state.pin.hint
    if not hint and state.pin.stage_name == "new":
        hint = f"at least {min_secret_length(state)} digits"
    _centered(draw, 38, hint or "then OK")
    last = state.pin.stage + 1 == len(PIN_FLOWS[state.pin.flow])
    _soft_keys(draw, "OK:unlock" if last and state.pin.flow in ("unlock", "lock") else "OK:next", "Back:del")


def _working(draw: ImageDraw.ImageDraw, state: PhoneState) -> None:
    _header(draw, state, "Byline")
    _centered(draw, 26, state.busy)


def _home(draw: ImageDraw.ImageDraw, state: PhoneState) -> None:
    _header(draw, state, state.accounts[0].address if state.accounts else "No account")
    _centered(draw, 14, state.clock, size=24, bold=True)
    _centered(draw, 38, missed_line(state) or unread_line(state) or state.date)
    label = "Menu"
    width = CHAR_WIDTH * len(label) + 3
    draw.rectangle((0, SOFT_KEYS_Y, width, HEIGHT - 1), fill=1)
    draw.text((2, SOFT_KEYS_Y), label, font=terminus(12), fill=0)
    if state.toast:
        _toast(draw, state.toast)


def missed_line(state: PhoneState) -> str:
    count = len(state.missed_calls)
    return f"{count} missed call{'s' if count > 1 else ''}" if count else ""


def _menu(draw: ImageDraw.ImageDraw, state: PhoneState) -> None:
    _header(draw, state, "Menu")
    _list(draw, tuple(f"{i + 1} {name}" for i, name in enumerate(MENU)), state.menu_index)


def _section(draw: ImageDraw.ImageDraw, state: PhoneState) -> None:
    _header(draw, state, state.section)
    _list(draw, tuple(item.label for item in section_items(state)), state.section_index)
    if state.toast:
        _toast(draw, state.toast)


def _form(draw: ImageDraw.ImageDraw, state: PhoneState) -> None:
    form = state.form
    _header(draw, state, f"{'New' if form.index is None else 'Edit'} {form.kind}")
    _list(draw, form_lines(form), form.selected)
    if form.problem:
        _toast(draw, form.problem)


def _edit(draw: ImageDraw.ImageDraw, state: PhoneState) -> None:
    editor = state.editor
    _text(draw, (0, 0), editor.label[:16])
    draw_mode_badge(draw, editor.entry, (WIDTH - 3 * CHAR_WIDTH - 2, 0))
    draw.line((0, HEADER_RULE_Y, WIDTH - 1, HEADER_RULE_Y), fill=1)
    draw_text_field(draw, editor.entry, (0, TEXT_FIELD_Y), WIDTH, state.now)
    _soft_keys(draw, "OK:done", "Back:del")
    if state.toast:
        _toast(draw, state.toast)


def screen_text(state: PhoneState) -> tuple[str, ...]:
    """The words the screen for ``state`` shows, masked as drawn (for scenarios and tests)."""
    screen = state.screen
    if state.call is not None and screen != "boot":
        return call_lines(state)
    if screen == "dial":
        return ("Dial", state.dial, state.toast)
    if screen == "pin":
        return (pin_title(state), state.pin.hint)
    if screen == "working":
        return (state.busy,)
    if screen == "home":
        return (state.accounts[0].address if state.accounts else "No account", state.clock,
                missed_line(state) or unread_line(state) or state.date, state.toast)
    if screen == "menu":
        return MENU
    if screen == "section":
        return (state.section, *(item.label for item in section_items(state)), state.toast)
    if screen == "form":
        return (*form_lines(state.form), state.form.problem)
    if screen == "edit":
        return (state.editor.label, state.editor.entry.display(state.now, WIDTH // CHAR_WIDTH).text, state.toast)
    if screen == "chat":
        return chat_lines(state)
    if screen == "list":
        return (state.choices.title, *(item.label for item in state.choices.items), state.toast)
    return ("Byline",)


def chat_lines(state: PhoneState) -> tuple[str, ...]:
    """The conversation screen's words: who, the security line, the message rows in view, a toast."""
    conversation = open_conversation(state)
    return (peer_name(state, conversation.peer), chat.SECURITY_TEXT[conversation.security],
            *chat_rows(state), state.toast)


def chat_rows(state: PhoneState) -> tuple[str, ...]:
    rows = chat.wrapped(open_conversation(state).lines)
    if not rows:
        return ("OK:write  #:more",)
    end = len(rows) - state.chat_scroll
    return rows[max(0, end - CHAT_ROWS):end]


def _padlock(draw: ImageDraw.ImageDraw, x: int, y: int, security: str) -> None:
    """Open (not encrypted), closed with "!" (encrypted, not verified), closed with a tick (verified)."""
    if security in ("plaintext", "finished"):
        _lock_open(draw, x, y)
        return
    draw.arc((x + 1, y - 2, x + 6, y + 5), 180, 360, fill=1)
    draw.rectangle((x, y + 2, x + 7, y + 8), fill=1)
    if security == "verified":
        draw.line((x + 1, y + 5, x + 3, y + 7, x + 6, y + 3), fill=0)
    else:
        draw.line((x + 3, y + 3, x + 3, y + 5), fill=0)
        draw.point((x + 3, y + 7), fill=0)


def _chat(draw: ImageDraw.ImageDraw, state: PhoneState) -> None:
    """The security line is always shown, inverted when it is a warning, with the padlock before it."""
    conversation = open_conversation(state)
    _header(draw, state, peer_name(state, conversation.peer)[:16])
    status = chat.SECURITY_TEXT[conversation.security]
    if conversation.security in chat.WARNING_STATES:
        draw.rectangle((0, BODY_TOP, WIDTH - 1, BODY_TOP + LINE_HEIGHT - 1), fill=1)
        draw.text((12, BODY_TOP), status, font=terminus(12, True), fill=0)
        draw.rectangle((0, BODY_TOP, 10, BODY_TOP + LINE_HEIGHT - 1), fill=0)
    else:
        _text(draw, (12, BODY_TOP), status)
    _padlock(draw, 2, BODY_TOP + 3, conversation.security)
    for row, text in enumerate(chat_rows(state), 1):
        _body_line(draw, row, text)
    if state.toast:
        _toast(draw, state.toast)


def _choices(draw: ImageDraw.ImageDraw, state: PhoneState) -> None:
    choices = state.choices
    _header(draw, state, choices.title)
    _list(draw, tuple(item.label for item in choices.items), choices.selected)
    if state.toast:
        _toast(draw, state.toast)


SECURITY_LINES = {
    "pending": "Securing...",
    "secure": "SECURE, not verified",
    "verified": "SECURE + verified",
    "key_changed": "KEY CHANGED! Compare",
    "not_encrypted": "NOT ENCRYPTED",
    "failed": "ENCRYPTION FAILED",
}
PHASE_LINES = {"calling": "Calling...", "ringing": "Ringing...", "incoming": "Incoming call", "ended": "Call ended"}


def call_lines(state: PhoneState) -> tuple[str, str, str, str]:
    """The call screen's words: peer, security (or phase), SAS, soft keys."""
    call = state.call
    if call.phase != "connected":
        keys = ("OK:answer", "Back:reject") if call.phase == "incoming" else ("", "Back:end" if call.phase != "ended" else "")
        return call.peer, PHASE_LINES[call.phase], call.reason, " ".join(k for k in keys if k)
    if call.held:
        keys = "ON HOLD  Up:resume"
    elif call.security in ("secure", "key_changed"):
        keys = "OK:same Dn:differs"
    elif call.muted:
        keys = "MUTED  Dn:unmute"
    else:
        keys = "Dn:mute Up:hold"
    return call.peer, SECURITY_LINES[call.security], call.sas, keys


def _call(draw: ImageDraw.ImageDraw, state: PhoneState) -> None:
    """The security state is always on screen in a call: inverted when it is a warning."""
    call = state.call
    peer, status, middle, keys = call_lines(state)
    _header(draw, state, peer[:16])
    warning = call.phase == "connected" and call.security in ("key_changed", "not_encrypted", "failed")
    if warning:
        draw.rectangle((0, BODY_TOP, WIDTH - 1, BODY_TOP + LINE_HEIGHT - 1), fill=1)
        draw.text((2, BODY_TOP), status, font=terminus(12, True), fill=0)
    else:
        _centered(draw, BODY_TOP, status)
    if call.phase == "connected" and call.sas:
        size = 24 if len(call.sas) <= 4 else 12
        _centered(draw, 28 if size == 24 else 32, call.sas, size=size, bold=True)
    elif middle:
        _centered(draw, 32, middle[:21])
    _text(draw, (0, SOFT_KEYS_Y), keys)


def _dial(draw: ImageDraw.ImageDraw, state: PhoneState) -> None:
    _header(draw, state, "Dial")
    _centered(draw, 24, state.dial[-10:], size=24 if len(state.dial) <= 8 else 12, bold=True)
    _soft_keys(draw, "OK:call", "Back:del")
    if state.toast:
        _toast(draw, state.toast)


_SCREENS = {
    "dial": _dial,
    "boot": _boot,
    "pin": _pin,
    "working": _working,
    "home": _home,
    "menu": _menu,
    "section": _section,
    "form": _form,
    "edit": _edit,
    "chat": _chat,
    "list": _choices,
}
