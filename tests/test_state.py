"""The state machine: boot -> PIN entry -> home -> menu -> sections, and back."""

from dataclasses import replace

from drivers.keys.events import KeyEvent
from firmware.state import MENU, PIN_MIN_DIGITS, BootFinished, PhoneState, Tick, UiSettings, section_lines, step

NOW = 1_795_686_060.0


def booted() -> PhoneState:
    return step(step(PhoneState(), Tick(NOW)), BootFinished())


def press(state: PhoneState, *keys: str) -> PhoneState:
    for key in keys:
        state = step(state, KeyEvent(key, True))
        state = step(state, KeyEvent(key, False))
    return state


def unlocked() -> PhoneState:
    return press(booted(), *"123456", "ok")


def test_boot_goes_to_pin_entry_and_keeps_the_notices():
    state = step(PhoneState(), BootFinished(("config x: bad",)))
    assert state.screen == "pin_entry" and state.notices == ("config x: bad",)
    assert step(state, BootFinished()) is state


def test_keys_during_boot_do_nothing():
    state = step(PhoneState(), Tick(NOW))
    assert press(state, "1", "ok") is state


def test_pin_entry_masks_counts_and_deletes():
    state = press(booted(), "1", "2", "3", "back")
    assert len(state.pin) == 2 and state.screen == "pin_entry"
    assert "12" not in repr(state), "the PIN must never show in a repr (logs)"


def test_pin_shorter_than_the_minimum_is_refused_with_a_hint():
    state = press(booted(), *"1" * (PIN_MIN_DIGITS - 1), "ok")
    assert state.screen == "pin_entry" and "at least" in state.pin_hint


def test_pin_entry_caps_length():
    state = press(booted(), *"1" * 20)
    assert len(state.pin) == 12 and "at most" in state.pin_hint


def test_unlock_reaches_home_and_forgets_the_pin():
    state = unlocked()
    assert state.screen == "home" and not state.locked and state.pin == ""


def test_menu_navigation_wraps_and_goes_back():
    state = press(unlocked(), "ok")
    assert state.screen == "menu" and state.menu_index == 0
    assert press(state, "up").menu_index == len(MENU) - 1
    assert press(state, "down", "8").menu_index == 2
    section = press(state, "down", "ok")
    assert section.screen == "section" and section.section == "Calls"
    assert press(section, "back").screen == "menu"
    assert press(section, "back", "back").screen == "home"


def test_digits_open_a_menu_entry_directly():
    state = press(unlocked(), "ok", "6")
    assert state.screen == "section" and state.section == "Security"
    assert press(unlocked(), "ok", "9").screen == "menu"


def test_security_section_does_not_claim_encryption():
    state = press(unlocked(), "ok", "6")
    assert "NOT ACTIVE" in " ".join(section_lines(state))


def test_settings_lists_notices_and_scrolls_within_bounds():
    state = replace(press(unlocked(), "ok", "5"), notices=("a", "b", "c", "d"))
    lines = section_lines(state)
    assert lines[-4:] == ("! a", "! b", "! c", "! d")
    scrolled = press(state, *["down"] * 10)
    assert scrolled.section_scroll == len(lines) - 4
    assert press(scrolled, *["up"] * 10).section_scroll == 0


def test_hook_is_tracked_on_every_screen():
    state = step(unlocked(), KeyEvent("hook", True))
    assert state.off_hook
    assert not step(state, KeyEvent("hook", False)).off_hook


def test_screen_blanks_after_idle_and_first_key_only_wakes():
    state = replace(unlocked(), settings=UiSettings(screen_off_s=60))
    assert step(state, Tick(NOW + 59)).screen_on
    dark = step(state, Tick(NOW + 61))
    assert not dark.screen_on
    woken = press(dark, "ok")
    assert woken.screen_on and woken.screen == "home", "the waking key must not act"
    assert step(dark, KeyEvent("hook", True)).screen_on


def test_clock_ticks_change_state_only_when_the_minute_changes():
    state = unlocked()
    same_minute = step(state, Tick(NOW + 1))
    assert same_minute.clock == state.clock
    assert step(state, Tick(NOW + 60)).clock != state.clock


def test_twelve_hour_clock():
    state = step(replace(PhoneState(), settings=UiSettings(clock_24h=False)), Tick(NOW))
    assert state.clock.endswith(("am", "pm"))


def test_unknown_events_leave_the_state_alone():
    state = unlocked()
    assert step(state, object()) is state
