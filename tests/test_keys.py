"""The keys driver: the real matrix scanner on gpiozero's MockFactory, keys pressed by driving pins."""

import asyncio
import dataclasses
import time

import pytest
from gpiozero import LED

from drivers.errors import DeviceError
from drivers.keys import BACKENDS, KEYPAD_KEYS, OFF_HOOK, ON_HOOK, KeyEvent, open_keys, register_backend
from drivers.keys.matrix import MatrixKeypad, open_matrix_keypad
from drivers.keys.mock_wiring import MockKeypadWiring
from drivers.pinmap import DEFAULT_PINMAP

SCAN_PERIOD_S = 0.01  # the default 100 Hz
DEBOUNCE_SCANS = 2  # the default 20 ms is two scan periods after the first scan that sees a change


@pytest.fixture
def wiring(factory, pinmap):
    return MockKeypadWiring(factory, pinmap)


@pytest.fixture
def keypad(wiring, factory, pinmap):
    keypad = MatrixKeypad(pinmap, factory)
    yield keypad
    keypad.close()


class ScanClock:
    """Scans a keypad on a controlled clock, one scan period per step."""

    def __init__(self, keypad):
        self.keypad = keypad
        self.now = 0.0

    def scan(self, count=1):
        events = []
        for _ in range(count):
            events += self.keypad.scan(self.now)
            self.now += SCAN_PERIOD_S
        return events


@pytest.fixture
def clock(keypad):
    return ScanClock(keypad)


def test_single_press_and_release_give_exactly_one_event_each(wiring, clock):
    assert clock.scan(5) == []
    wiring.press("5")
    assert clock.scan(DEBOUNCE_SCANS) == [], "a press is reported only after the debounce time"
    assert clock.scan() == [KeyEvent("5", True)]
    assert clock.scan(10) == []
    wiring.release("5")
    assert clock.scan(DEBOUNCE_SCANS + 10) == [KeyEvent("5", False)]


def test_every_key_reads_as_its_pinmap_name(wiring, clock):
    for name in KEYPAD_KEYS:
        wiring.press(name)
        pressed = clock.scan(DEBOUNCE_SCANS + 1)
        wiring.release(name)
        released = clock.scan(DEBOUNCE_SCANS + 1)
        assert (pressed, released) == ([KeyEvent(name, True)], [KeyEvent(name, False)])


def test_each_scan_drives_one_row_low_at_a_time(wiring, keypad, clock):
    for row in wiring.rows:
        row.clear_states()
    clock.scan(3)
    for row in wiring.rows:
        assert [s.state for s in row.states] == [True] + [False, True] * 3
    assert all(row.state for row in wiring.rows), "rows rest HIGH between scans"


def test_contact_chatter_on_press_and_release_gives_one_event_each(wiring, clock):
    events = []
    for _ in range(5):
        wiring.press("8")
        events += clock.scan()
        wiring.release("8")
        events += clock.scan()
    assert events == [], "chatter shorter than the debounce time is no key press"
    wiring.press("8")
    events += clock.scan(DEBOUNCE_SCANS + 5)
    for _ in range(5):
        wiring.release("8")
        events += clock.scan()
        wiring.press("8")
        events += clock.scan()
    wiring.release("8")
    events += clock.scan(DEBOUNCE_SCANS + 5)
    assert events == [KeyEvent("8", True), KeyEvent("8", False)]


def test_chatter_reading_the_new_state_on_every_other_scan_never_completes(wiring, clock):
    # Two scans out of three see the key down, but never for the whole debounce time in a row.
    events = []
    for _ in range(6):
        wiring.press("0")
        events += clock.scan(DEBOUNCE_SCANS)
        wiring.release("0")
        events += clock.scan()
    assert events == []


@pytest.mark.parametrize(
    "first, second",
    [("1", "2"), ("1", "4"), ("1", "9"), ("up", "back")],
    ids=["same row", "same column", "different row and column", "navigation column"],
)
def test_two_keys_held_together_are_reported_independently(wiring, clock, first, second):
    wiring.press(first)
    wiring.press(second)
    assert sorted(clock.scan(DEBOUNCE_SCANS + 1), key=lambda e: e.key) == sorted(
        [KeyEvent(first, True), KeyEvent(second, True)], key=lambda e: e.key
    )
    assert clock.scan(5) == []
    wiring.release(second)
    assert clock.scan(DEBOUNCE_SCANS + 5) == [KeyEvent(second, False)]
    wiring.release(first)
    assert clock.scan(DEBOUNCE_SCANS + 5) == [KeyEvent(first, False)]


def test_a_second_key_pressed_while_one_is_held(wiring, clock):
    wiring.press("3")
    assert clock.scan(DEBOUNCE_SCANS + 3) == [KeyEvent("3", True)]
    wiring.press("6")
    assert clock.scan(DEBOUNCE_SCANS + 3) == [KeyEvent("6", True)]
    wiring.release("3")
    wiring.release("6")
    assert clock.scan(DEBOUNCE_SCANS + 3) == [KeyEvent("3", False), KeyEvent("6", False)]


def bounce_hook(wiring, clock, settle, times=3):
    """Toggle the hook on every scan (a bouncing cradle switch), then leave it in ``settle``."""
    events = []
    for _ in range(times):
        wiring.lift_handset()
        events += clock.scan()
        wiring.hang_up()
        events += clock.scan()
    settle()
    return events + clock.scan(DEBOUNCE_SCANS + 5)


def test_hook_lift_and_hang_up_with_bounce(wiring, clock):
    assert bounce_hook(wiring, clock, settle=wiring.lift_handset) == [OFF_HOOK]
    assert bounce_hook(wiring, clock, settle=wiring.hang_up) == [ON_HOOK]
    assert (KeyEvent("hook", True), KeyEvent("hook", False)) == (OFF_HOOK, ON_HOOK)


def test_hook_switch_that_closes_when_lifted(factory, pinmap):
    pinmap = dataclasses.replace(pinmap, hook_closed_on_hook=False)
    wiring = MockKeypadWiring(factory, pinmap)
    keypad = MatrixKeypad(pinmap, factory)
    try:
        clock = ScanClock(keypad)
        assert clock.scan(5) == []
        wiring.lift_handset()
        assert wiring.hook.state is False, "this switch closes (reads low) off the cradle"
        assert clock.scan(DEBOUNCE_SCANS + 1) == [OFF_HOOK]
        wiring.hang_up()
        assert clock.scan(DEBOUNCE_SCANS + 1) == [ON_HOOK]
    finally:
        keypad.close()


def test_state_at_open_is_reported_as_events_from_idle(factory, pinmap):
    wiring = MockKeypadWiring(factory, pinmap)
    wiring.lift_handset()
    wiring.press("#")
    keypad = MatrixKeypad(pinmap, factory)
    try:
        assert ScanClock(keypad).scan(DEBOUNCE_SCANS + 1) == [KeyEvent("#", True), OFF_HOOK]
    finally:
        keypad.close()


def test_zero_debounce_takes_every_change_at_once(factory, wiring, pinmap):
    keypad = MatrixKeypad(pinmap, factory, debounce_ms=0)
    try:
        clock = ScanClock(keypad)
        wiring.press("7")
        assert clock.scan() == [KeyEvent("7", True)]
        wiring.release("7")
        assert clock.scan() == [KeyEvent("7", False)]
    finally:
        keypad.close()


def test_asyncio_runner_scans_at_the_set_rate_and_posts_on_the_loop(factory, wiring, pinmap):
    scan_hz, run_s, press_at_s, release_at_s = 100, 0.3, 0.05, 0.15
    keypad = MatrixKeypad(pinmap, factory, scan_hz=scan_hz)
    posted = []

    async def main():
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        loop.call_later(press_at_s, wiring.press, "ok")
        loop.call_later(release_at_s, wiring.release, "ok")
        loop.call_later(run_s, keypad.close)
        await asyncio.wait_for(keypad.run(lambda e: posted.append((time.monotonic() - start, e))), timeout=2)

    try:
        asyncio.run(main())
    finally:
        keypad.close()
    assert [e for _, e in posted] == [KeyEvent("ok", True), KeyEvent("ok", False)]
    debounce_s, period_s = keypad.debounce_ms / 1000, 1 / scan_hz
    for (at, _), changed_at in zip(posted, (press_at_s, release_at_s), strict=True):
        assert changed_at + debounce_s <= at + period_s / 2, "reported before the debounce time"
        assert at <= changed_at + debounce_s + 5 * period_s, "reported late"
    expected_scans = run_s * scan_hz
    assert 0.6 * expected_scans <= keypad.scan_count <= expected_scans + 2


def test_runner_stops_when_cancelled(keypad):
    async def main():
        task = asyncio.create_task(keypad.run(lambda e: None))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert keypad.scan_count >= 2


def test_duplicate_gpio_in_the_pin_map_file_is_a_device_error(tmp_path):
    text = DEFAULT_PINMAP.read_text().replace("pin = 17", "pin = 5")  # hook on a row pin
    path = tmp_path / "pinmap.toml"
    path.write_text(text)
    with pytest.raises(DeviceError) as raised:
        open_keys("matrix", pin_factory="mock", pinmap=path)
    assert raised.value.setting == "pinmap"


@pytest.mark.parametrize(
    "change",
    [
        {"hook": 5},
        {"columns": (16, 27, 4, 16)},
        {"keys": (("1", "2", "3", "up"), ("4", "5", "6", "down"), ("7", "8", "9", "ok"), ("*", "0", "#", "1"))},
        {"keys": (("1", "2", "3", "up"), ("4", "5", "6", "down"), ("7", "8", "9", "ok"), ("*", "0", "#", "menu"))},
        {"keys": (("1", "2", "3", "up"),)},
    ],
    ids=["hook on a row", "column twice", "key twice", "unknown key", "wrong shape"],
)
def test_unusable_pin_map_is_a_device_error(factory, pinmap, change):
    with pytest.raises(DeviceError) as raised:
        MatrixKeypad(dataclasses.replace(pinmap, **change), factory)
    assert raised.value.setting == "pinmap"
    MatrixKeypad(pinmap, factory).close()  # nothing was left reserved


def test_pin_taken_by_another_device_is_a_device_error_and_frees_the_rest(factory, pinmap):
    led_on_hook_pin = LED(pinmap.hook, pin_factory=factory)
    with pytest.raises(DeviceError) as raised:
        MatrixKeypad(pinmap, factory)
    assert raised.value.setting == "pinmap" and f"GPIO{pinmap.hook}" in str(raised.value)
    led_on_hook_pin.close()
    MatrixKeypad(pinmap, factory).close()


@pytest.mark.parametrize("setting, value", [("scan_hz", 0), ("scan_hz", "fast"), ("debounce_ms", -1), ("debounce_ms", 10_000)])
def test_out_of_range_settings_are_device_errors(factory, pinmap, setting, value):
    with pytest.raises(DeviceError) as raised:
        MatrixKeypad(pinmap, factory, **{setting: value})
    assert raised.value.setting == setting


def test_close_releases_the_pins_for_a_second_scanner(factory, wiring, keypad, pinmap):
    keypad.close()
    keypad.close()
    with pytest.raises(RuntimeError):
        keypad.scan()
    second = MatrixKeypad(pinmap, factory)
    try:
        wiring.press("9")
        assert ScanClock(second).scan(DEBOUNCE_SCANS + 1) == [KeyEvent("9", True)]
    finally:
        second.close()


def test_wiring_made_after_the_keypad_opened_its_pins_is_refused(factory, pinmap):
    keypad = MatrixKeypad(pinmap, factory)
    try:
        with pytest.raises(ValueError, match="before the keypad"):
            MockKeypadWiring(factory, pinmap)
    finally:
        keypad.close()


def test_wiring_refuses_a_key_the_keypad_does_not_have(wiring):
    with pytest.raises(ValueError, match="no key 'menu'"):
        wiring.press("menu")


def test_key_event_takes_only_known_keys_and_bool_pressed():
    with pytest.raises(ValueError, match="unknown key"):
        KeyEvent("F1", True)
    with pytest.raises(ValueError, match="bool"):
        KeyEvent("1", 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        KeyEvent("1", True).pressed = False


def test_open_keys_matrix_on_mock_comes_with_its_wiring():
    keypad = open_keys("matrix", pin_factory="mock", scan_hz=50, debounce_ms=40)
    try:
        assert isinstance(keypad, MatrixKeypad) and keypad.scan_hz == 50
        keypad.mock_wiring.press("*")
        clock = ScanClock(keypad)
        # 40 ms at the test clock's 10 ms steps: seen on the 1st scan, taken on the 5th.
        assert clock.scan(4) == []
        assert clock.scan() == [KeyEvent("*", True)]
    finally:
        keypad.close()


def test_open_keys_matrix_on_a_shared_factory(factory, wiring):
    keypad = open_matrix_keypad(pin_factory=factory)
    try:
        assert keypad.mock_wiring is None
        wiring.press("2")
        assert ScanClock(keypad).scan(DEBOUNCE_SCANS + 1) == [KeyEvent("2", True)]
    finally:
        keypad.close()


def test_open_keys_names_the_bad_driver_or_setting():
    with pytest.raises(DeviceError) as raised:
        open_keys("telepathy")
    assert raised.value.setting == "driver" and "matrix" in str(raised.value)
    with pytest.raises(DeviceError) as raised:
        open_keys("matrix", pin_factory="mock", scan_rate=100)
    assert raised.value.setting == "scan_rate"
    with pytest.raises(DeviceError) as raised:
        open_keys("matrix", pin_factory="abacus")
    assert raised.value.setting == "pin_factory"


def test_registered_backends_open_by_name(monkeypatch):
    def open_slow_matrix(debounce_ms=50):
        return open_matrix_keypad(pin_factory="mock", scan_hz=20, debounce_ms=debounce_ms)

    monkeypatch.setitem(BACKENDS, "slow", None)
    register_backend("slow", open_slow_matrix)
    monkeypatch.setitem(BACKENDS, "by-path", None)
    register_backend("by-path", "drivers.keys.matrix:open_matrix_keypad")
    slow = open_keys("slow", debounce_ms=60)
    by_path = open_keys("by-path", pin_factory="mock", scan_hz=200)
    try:
        assert (slow.scan_hz, slow.debounce_ms, by_path.scan_hz) == (20, 60, 200)
    finally:
        slow.close()
        by_path.close()


def test_the_socket_driver_turns_lines_into_presses_and_hook_moves(tmp_path):
    """The image's self-test hook: key names written to a Unix socket become the phone's key events."""

    async def scenario():
        path = tmp_path / "keys.sock"
        source = open_keys("socket", socket=str(path))
        events = []
        task = asyncio.get_running_loop().create_task(source.run(events.append))
        for _ in range(100):
            if path.exists():
                break
            await asyncio.sleep(0.01)
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        reader, writer = await asyncio.open_unix_connection(str(path))
        answers = []
        for line in ("1", "ok", "lift", "dance", "hangup"):
            writer.write(line.encode() + b"\n")
            await writer.drain()
            answers.append((await reader.readline()).strip())
        writer.close()
        source.close()
        task.cancel()
        return events, answers

    events, answers = asyncio.run(scenario())
    assert answers == [b"ok", b"ok", b"ok", b"?", b"ok"]
    assert events == [KeyEvent("1", True), KeyEvent("1", False), KeyEvent("ok", True), KeyEvent("ok", False),
                      OFF_HOOK, ON_HOOK]
