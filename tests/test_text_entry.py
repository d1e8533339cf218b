"""Keypad text entry: multi-tap, modes, cursor, limits, masking, keys_for, and drawing the field."""

import random
import string

import pytest
from PIL import Image, ImageDraw

from firmware.text_entry import (
    KEY_CYCLES,
    MULTITAP_TIMEOUT_S,
    Pending,
    TextEntry,
    cycle_for,
    keys_for,
)
from firmware.ui.text_field import MODE_BADGE_HEIGHT, MODE_BADGE_WIDTH, draw_mode_badge, draw_text_field

NOW = 1_795_686_060.0
QUICK = 0.1  # between taps of one multi-tap sequence, well inside the timeout
PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F))
FIELD_XY = (0, 14)
FIELD_WIDTH = 128


def press(entry: TextEntry, *keys: str, now: float = NOW, gap: float = QUICK) -> TextEntry:
    for i, key in enumerate(keys):
        entry = entry.press(key, now + i * gap)
    return entry


def typed(text: str, **fields) -> TextEntry:
    entry = TextEntry(**fields)
    return press(entry, *keys_for(text, entry.mode, allowed=entry.allowed))


def render(entry: TextEntry, now: float = NOW, width: int = FIELD_WIDTH) -> Image.Image:
    image = Image.new("1", (128, 64), 0)
    draw_text_field(ImageDraw.Draw(image), entry, FIELD_XY, width, now)
    return image


def lit(image: Image.Image) -> int:
    return sum(1 for pixel in image.getdata() if pixel)


# --- multi-tap -------------------------------------------------------------------------------

E161 = {"2": "abc", "3": "def", "4": "ghi", "5": "jkl", "6": "mno", "7": "pqrs", "8": "tuv", "9": "wxyz"}


@pytest.mark.parametrize("key,letters", E161.items())
def test_each_letter_by_multitap_then_the_digit(key, letters):
    for taps, expected in enumerate(letters + key, start=1):
        entry = press(TextEntry(), *[key] * taps)
        assert entry.value == expected
        assert entry.text == "" and entry.pending == Pending(key, taps, NOW + (taps - 1) * QUICK)


def test_cycling_wraps_round():
    assert press(TextEntry(), *"2" * 5).value == "a"
    assert press(TextEntry(), *"7" * 7).value == "q"
    assert press(TextEntry(), *"0" * 3).value == " "


def test_one_and_zero_and_star_cycles():
    assert [press(TextEntry(), *"1" * n).value for n in range(1, 8)] == list(".@-_:/1")
    assert press(TextEntry(), "0").value == " "
    assert press(TextEntry(), "0", "0").value == "0"
    assert press(TextEntry(), "*").value == "*"


def test_every_printable_ascii_character_is_on_a_key():
    typeable = set("".join(cycle_for(key, mode) for key in KEY_CYCLES for mode in ("abc", "ABC")))
    assert typeable == set(PRINTABLE)


def test_no_character_is_on_two_keys_in_one_mode():
    for mode in ("abc", "ABC", "123"):
        chars = "".join(cycle_for(key, mode) for key in KEY_CYCLES)
        assert len(chars) == len(set(chars)), mode


def test_timeout_commits_on_tick():
    entry = press(TextEntry(), "2", "2")
    assert entry.tick(NOW + QUICK + MULTITAP_TIMEOUT_S / 2) is entry
    ticked = entry.tick(NOW + QUICK + MULTITAP_TIMEOUT_S)
    assert ticked.text == "b" and ticked.cursor == 1 and ticked.pending is None
    assert ticked.tick(NOW + 10) is ticked


def test_same_key_after_the_timeout_starts_a_new_character():
    entry = TextEntry().press("2", NOW).press("2", NOW + MULTITAP_TIMEOUT_S)
    assert entry.value == "aa" and entry.text == "a" and entry.pending.taps == 1


def test_same_key_within_the_timeout_cycles_even_across_many_taps():
    # The timeout runs from the last tap, not the first: a slow but steady tapper still cycles.
    entry = press(TextEntry(), *"7777", gap=MULTITAP_TIMEOUT_S * 0.9)
    assert entry.value == "s"


def test_a_different_key_commits():
    entry = press(TextEntry(), "4", "4", "4", "2")
    assert entry.text == "i" and entry.value == "ia"
    assert press(TextEntry(), "4", "4", "6", "6", "6").value == "ho"


# --- modes -----------------------------------------------------------------------------------

def test_hash_cycles_the_modes_and_commits():
    entry = press(TextEntry(), "2", "2")
    modes = []
    for _ in range(3):
        entry = entry.press("#", NOW + 1)
        modes.append(entry.mode)
    assert modes == ["ABC", "123", "abc"]
    assert entry.text == "b" and entry.pending is None


def test_upper_case_mode():
    entry = press(TextEntry(mode="ABC"), "5", "5", "5", "5")
    assert entry.value == "5"
    assert press(TextEntry(mode="ABC"), "4", "4", "down", "8").value == "HT"


def test_digit_mode_types_digits_directly():
    entry = press(TextEntry(mode="123"), *"1122330099")
    assert entry.text == "1122330099" and entry.pending is None
    assert press(TextEntry(mode="123"), "*", "*").value == "#"


# --- delete and cursor -----------------------------------------------------------------------

def test_back_deletes_the_pending_character_then_the_previous_one():
    entry = press(TextEntry(), *keys_for("hi"), "3")
    assert entry.value == "hid"
    entry = entry.press("back", NOW + 1)
    assert entry.value == "hi" and entry.pending is None
    entry = entry.press("back", NOW + 1)
    assert entry.value == "h" and entry.cursor == 1
    entry = entry.press("back", NOW + 1)
    assert entry.value == "" and entry.cursor == 0
    assert entry.press("back", NOW + 1) is entry


def test_cursor_moves_and_inserts_in_the_middle():
    entry = typed("acd")
    entry = press(entry, "up", "up", now=NOW + 1)
    assert entry.text == "acd" and entry.cursor == 1
    entry = press(entry, "2", "2", now=NOW + 2)
    assert entry.value == "abcd" and entry.text == "acd"
    entry = entry.press("down", NOW + 2.5)
    assert entry.text == "abcd" and entry.cursor == 3
    entry = entry.press("back", NOW + 3)
    assert entry.text == "abd" and entry.cursor == 2


def test_cursor_stops_at_the_ends():
    entry = typed("ab").press("down", NOW + 10)
    assert entry.press("down", NOW + 10) is entry
    start = press(entry, "up", "up", now=NOW + 10)
    assert start.cursor == 0 and start.press("up", NOW + 10) is start
    assert start.press("back", NOW + 10) is start


def test_up_commits_the_pending_character_before_moving():
    entry = press(TextEntry(), "2", "2").press("up", NOW + QUICK)
    assert entry.text == "b" and entry.cursor == 0 and entry.pending is None


def test_keys_it_does_not_use_leave_it_unchanged():
    entry = press(TextEntry(), "2")
    for key in ("ok", "hook", "nonsense"):
        assert entry.press(key, NOW) is entry


# --- limits ----------------------------------------------------------------------------------

def test_max_length_is_respected():
    entry = typed("abc", max_length=3)
    assert entry.text == "ab" and entry.value == "abc"
    assert entry.press("2", NOW + 1).value == "ab2"  # the pending one still cycles
    full = entry.press("5", NOW + 5)
    assert full.text == "abc" and full.pending is None
    assert full.press("5", NOW + 6) is full
    assert press(TextEntry(mode="123", max_length=2), *"123").text == "12"


def test_allowed_characters_narrow_the_cycles():
    digits = frozenset(string.digits)
    entry = press(TextEntry(allowed=digits), "2", "2", "3", "*")
    assert entry.text == "223" and entry.pending is None
    letters = TextEntry(allowed=frozenset(string.ascii_lowercase))
    assert press(letters, "2", "2", "2", "2").value == "a"  # "abc" without the "2" wraps sooner
    assert letters.press("1", NOW) is letters
    with pytest.raises(ValueError, match="'g'"):
        keys_for("g", allowed=frozenset(string.hexdigits))


def test_construction_is_checked():
    with pytest.raises(ValueError):
        TextEntry(text="ab", cursor=3)
    with pytest.raises(ValueError):
        TextEntry(mode="xyz")
    with pytest.raises(ValueError):
        TextEntry(text="abcd", max_length=3)
    with pytest.raises(TypeError):
        TextEntry(allowed="0123")


# --- keys_for --------------------------------------------------------------------------------

def test_keys_for_inserts_down_between_characters_on_one_key_and_switches_modes():
    assert keys_for("ab") == ["2", "down", "2", "2"]
    assert keys_for("ad") == ["2", "3"]
    assert keys_for("aB") == ["2", "#", "2", "2"]
    assert keys_for("a1", mode="123") == ["#", "2", *"1" * 7]  # "1" stays in abc mode
    assert keys_for("12", mode="123") == ["1", "2"]


@pytest.mark.parametrize("mode", ["abc", "ABC", "123"])
def test_keys_for_round_trips_every_printable_character(mode):
    shuffled = "".join(random.Random(161).sample(PRINTABLE, len(PRINTABLE)))
    for text in (PRINTABLE, shuffled, PRINTABLE[::-1]):
        assert typed(text, mode=mode).value == text


def test_keys_for_round_trips_random_strings():
    rng = random.Random(20261126)
    for _ in range(300):
        text = "".join(rng.choice(PRINTABLE) for _ in range(rng.randint(0, 24)))
        mode = rng.choice(["abc", "ABC", "123"])
        assert typed(text, mode=mode).value == text, (text, mode)


def test_keys_for_round_trips_with_allowed_characters():
    allowed = frozenset(string.ascii_lowercase + string.digits + ".")
    rng = random.Random(7)
    for _ in range(100):
        text = "".join(rng.choice(sorted(allowed)) for _ in range(12))
        assert typed(text, allowed=allowed).value == text


def test_keys_for_refuses_what_no_key_types():
    with pytest.raises(ValueError, match="no key"):
        keys_for("tab\there")


# --- display and secrets ---------------------------------------------------------------------

def test_display_shows_the_pending_character_at_the_cursor():
    view = press(TextEntry(), *keys_for("hi"), "3").display(NOW + 1, width=10)
    assert (view.text, view.cursor, view.pending) == ("hid", 2, True)
    later = press(TextEntry(), *keys_for("hi"), "3").display(NOW + 10, width=10)
    assert (later.text, later.cursor, later.pending) == ("hid", 3, False)


def test_display_scrolls_around_the_cursor():
    entry = typed("abcdefghijklmnopqrstuvwxyz", mode="abc").tick(NOW + 100)
    end = entry.display(NOW + 100, width=10)
    assert end.text == "rstuvwxyz" and end.cursor == 9
    assert end.more_left and not end.more_right
    middle = TextEntry(text=entry.text, cursor=13).display(NOW, width=10)
    assert middle.text == "ijklmnopqr" and middle.text[middle.cursor] == "n"
    assert middle.more_left and middle.more_right
    start = TextEntry(text=entry.text, cursor=0).display(NOW, width=10)
    assert start.text == "abcdefghij" and start.cursor == 0 and not start.more_left


def test_secret_display_masks_all_but_the_pending_character():
    entry = press(TextEntry(secret=True), *keys_for("pw"), "down", "9", now=NOW)
    assert entry.display(NOW + 1, width=20).text == "**w"
    assert entry.display(NOW + 10, width=20).text == "***"
    assert entry.value == "pww"


def test_secret_repr_hides_the_text_and_the_pending_key():
    entry = press(TextEntry(secret=True), *keys_for("hunter"), "2")
    shown = repr(entry)
    assert "hunter" not in shown and "'2'" not in shown and "taps" not in shown
    assert "secret=True" in shown
    assert "hunter" in repr(typed("hunter").tick(NOW + 100))


# --- drawing ---------------------------------------------------------------------------------

def test_drawing_the_field_lights_pixels_inside_its_box_only():
    image = render(typed("hello@byline"))
    assert lit(image) > 0
    box = (FIELD_XY[0], FIELD_XY[1], FIELD_XY[0] + FIELD_WIDTH, FIELD_XY[1] + 12)
    left, top, right, bottom = image.getbbox()
    assert box[0] <= left and box[1] <= top and right <= box[2] and bottom <= box[3]


def test_secret_pixels_do_not_depend_on_the_hidden_characters():
    one = typed("correct horse", secret=True).tick(NOW + 100)
    two = typed("battery stapl", secret=True).tick(NOW + 100)
    assert one.value != two.value and len(one.value) == len(two.value)
    assert render(one).tobytes() == render(two).tobytes()
    assert render(one).tobytes() != render(typed("correct horse").tick(NOW + 100)).tobytes()


def test_secret_pixels_show_only_the_pending_character():
    one = press(TextEntry(secret=True), *keys_for("abc"), "3")
    two = press(TextEntry(secret=True), *keys_for("xyz"), "3")
    assert render(one, NOW + 1).tobytes() == render(two, NOW + 1).tobytes()


def test_cursor_is_visible_and_moves():
    fourth_cell = (2 + 3 * 6, FIELD_XY[1], 2 + 4 * 6, FIELD_XY[1] + 12)  # after the gutter, 6 px cells
    at_end = render(typed("abc").tick(NOW + 100))
    assert at_end.crop(fourth_cell).getbbox() is not None, "the cursor after the last character"
    moved = render(TextEntry(text="abc", cursor=2))
    assert moved.crop(fourth_cell).getbbox() is None
    assert moved.tobytes() != at_end.tobytes()
    # An empty field still shows where typing goes.
    assert lit(render(TextEntry())) > 0


def test_pending_character_is_drawn_as_a_block():
    pending = render(press(TextEntry(), "2"), NOW)
    committed = render(press(TextEntry(), "2"), NOW + 100)
    assert lit(pending) > lit(committed)


def test_overflow_is_marked_on_the_side_it_goes_on():
    long_text = "x" * 40
    at_end = render(TextEntry(text=long_text, cursor=40))
    at_start = render(TextEntry(text=long_text, cursor=0))
    gutter_left = (0, FIELD_XY[1], 2, FIELD_XY[1] + 12)
    assert at_end.crop(gutter_left).getbbox() is not None
    assert at_start.crop(gutter_left).getbbox() is None


@pytest.mark.parametrize("mode", ["abc", "ABC", "123"])
def test_mode_badge_fits_the_header_and_differs_by_mode(mode):
    image = Image.new("1", (128, 64), 0)
    draw_mode_badge(ImageDraw.Draw(image), TextEntry(mode=mode), (100, 0))
    assert image.getbbox() == (100, 0, 100 + MODE_BADGE_WIDTH, MODE_BADGE_HEIGHT)
    others = []
    for other in {"abc", "ABC", "123"} - {mode}:
        other_image = Image.new("1", (128, 64), 0)
        draw_mode_badge(ImageDraw.Draw(other_image), TextEntry(mode=other), (100, 0))
        others.append(other_image.tobytes())
    assert image.tobytes() not in others
