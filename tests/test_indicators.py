"""The indicators driver on gpiozero's MockFactory: pin levels and their recorded timing."""

import dataclasses
import threading
import time

import pytest
from gpiozero import LED

from drivers.errors import DeviceError
from drivers.indicators import BLINK_CADENCE_S, LED_NAMES, RING_CADENCE_S, RINGER, Indicators
from drivers.keys.matrix import MatrixKeypad

TIMING_TOLERANCE_S = 0.03  # thread wake-ups on a busy 2-core CI machine


@pytest.fixture
def indicators(factory, pinmap):
    indicators = Indicators(pinmap, factory)
    yield indicators
    indicators.close()


def pins(factory, pinmap):
    """The mock pin of every indicator, by name, with its recorded history cleared."""
    by_name = {name: factory.pin(pinmap.leds[name]) for name in LED_NAMES} | {RINGER: factory.pin(pinmap.ringer)}
    for pin in by_name.values():
        pin.clear_states()
    return by_name


def levels(pin):
    return [bool(s.state) for s in pin.states]


def assert_durations(pin, expected_s):
    """The time each recorded level lasted before the next change, from the first change on."""
    durations = [s.timestamp for s in pin.states[2 : 2 + len(expected_s)]]
    assert durations == pytest.approx(list(expected_s), abs=TIMING_TOLERANCE_S), levels(pin)


def cadence_threads():
    return [t.name for t in threading.enumerate() if t.name.endswith(" cadence")]


def test_on_and_off_drive_the_pins(indicators, factory, pinmap):
    pin = pins(factory, pinmap)
    indicators.set("in_call", "on")
    indicators.set("secure", "on")
    assert (pin["in_call"].state, pin["secure"].state, pin["message"].state) == (True, True, False)
    assert indicators.levels() == {"message": False, "in_call": True, "secure": True, RINGER: False}
    indicators.set("secure", "off")
    assert levels(pin["secure"]) == [False, True, False]
    assert indicators.state() == {"message": "off", "in_call": "on", "secure": "off", RINGER: "off"}


def test_default_blink_and_ring_cadences(indicators, factory, pinmap):
    pin = pins(factory, pinmap)
    indicators.set("message", "blink")
    indicators.ring(True)
    assert indicators.state() == {"message": "blink", "in_call": "off", "secure": "off", RINGER: "ring"}
    time.sleep(sum(BLINK_CADENCE_S) + 0.2)  # one blink cycle; the ring is then in its long pause
    assert levels(pin[RINGER]) == [False, True, False, True, False]
    assert_durations(pin[RINGER], RING_CADENCE_S[:3])
    assert levels(pin["message"]) == [False, True, False, True]
    assert_durations(pin["message"], BLINK_CADENCE_S)


def test_cadences_repeat(factory, pinmap):
    ring_s, blink_s = (0.05, 0.03, 0.05, 0.1), (0.04, 0.06)
    indicators = Indicators(pinmap, factory, blink_cadence_s=blink_s, ring_cadence_s=ring_s)
    try:
        pin = pins(factory, pinmap)
        indicators.ring(True)
        indicators.set("secure", "blink")
        time.sleep(2 * sum(ring_s) + 0.03)
    finally:
        indicators.close()
    assert levels(pin[RINGER])[:10] == [False] + [True, False] * 4 + [True]
    assert_durations(pin[RINGER], 2 * ring_s)
    assert levels(pin["secure"])[:10] == [False] + [True, False] * 4 + [True]
    assert_durations(pin["secure"], 4 * blink_s)


def test_stopping_a_cadence_is_immediate_and_final(factory, pinmap):
    indicators = Indicators(pinmap, factory, blink_cadence_s=(0.02, 0.02), ring_cadence_s=(0.02, 0.02))
    try:
        pin = pins(factory, pinmap)
        indicators.ring(True)
        indicators.set("message", "blink")
        time.sleep(0.05)
        indicators.ring(False)
        indicators.set("message", "on")
        assert (pin[RINGER].state, pin["message"].state) == (False, True)
        ringer_changes, message_changes = len(pin[RINGER].states), len(pin["message"].states)
        time.sleep(0.1)
        assert (len(pin[RINGER].states), len(pin["message"].states)) == (ringer_changes, message_changes)
        assert cadence_threads() == []
        assert indicators.state() == {"message": "on", "in_call": "off", "secure": "off", RINGER: "off"}
    finally:
        indicators.close()


def test_setting_the_same_mode_again_keeps_the_blink_phase(factory, pinmap):
    indicators = Indicators(pinmap, factory, blink_cadence_s=(0.1, 0.1))
    try:
        pin = pins(factory, pinmap)
        indicators.set("secure", "blink")
        time.sleep(0.05)
        indicators.set("secure", "blink")
        indicators.ring(False)
        time.sleep(0.1)
    finally:
        indicators.close()
    assert levels(pin["secure"])[:3] == [False, True, False]
    assert_durations(pin["secure"], [0.1])
    assert levels(pin[RINGER]) == [False]


def test_close_leaves_every_output_off_and_releases_the_pins(factory, pinmap):
    indicators = Indicators(pinmap, factory, blink_cadence_s=(0.01, 0.01), ring_cadence_s=(0.01, 0.01))
    pin = pins(factory, pinmap)
    indicators.set("message", "on")
    indicators.set("in_call", "blink")
    indicators.set("secure", "blink")
    indicators.ring(True)
    time.sleep(0.035)
    indicators.close()
    indicators.close()
    assert {name: p.state for name, p in pin.items()} == dict.fromkeys(pin, False)
    assert all(p.function == "input" for p in pin.values()), "pins handed back"
    assert cadence_threads() == []
    counts = {name: len(p.states) for name, p in pin.items()}
    time.sleep(0.05)
    assert {name: len(p.states) for name, p in pin.items()} == counts, "nothing moves after close()"
    assert indicators.state() == {"message": "off", "in_call": "off", "secure": "off", RINGER: "off"}
    with pytest.raises(RuntimeError, match="closed"):
        indicators.set("message", "on")
    Indicators(pinmap, factory).close()


def test_indicators_and_keypad_share_one_pin_factory(factory, pinmap):
    keypad = MatrixKeypad(pinmap, factory)
    indicators = Indicators(pinmap, factory)
    indicators.set("in_call", "on")
    assert keypad.scan(0.0) == []
    indicators.close()
    keypad.close()


def test_unknown_indicator_or_mode_is_refused(indicators):
    with pytest.raises(ValueError, match="no LED 'power'"):
        indicators.set("power", "on")
    with pytest.raises(ValueError, match="no LED 'ringer'"):
        indicators.set(RINGER, "on")
    with pytest.raises(ValueError, match="LED mode"):
        indicators.set("message", "flash")


@pytest.mark.parametrize("cadence", [(), (0.4,), (0.4, 0.0), (0.4, -1.0)])
def test_bad_cadence_is_refused(factory, pinmap, cadence):
    with pytest.raises(ValueError, match="cadence"):
        Indicators(pinmap, factory, ring_cadence_s=cadence)


def test_pin_map_without_an_led_is_a_device_error(factory, pinmap):
    leds = {name: pin for name, pin in pinmap.leds.items() if name != "secure"}
    with pytest.raises(DeviceError) as raised:
        Indicators(dataclasses.replace(pinmap, leds=leds), factory)
    assert raised.value.setting == "pinmap" and "secure" in str(raised.value)


def test_pin_taken_by_another_device_is_a_device_error_and_frees_the_rest(factory, pinmap):
    blocker = LED(pinmap.ringer, pin_factory=factory)
    with pytest.raises(DeviceError) as raised:
        Indicators(pinmap, factory)
    assert raised.value.setting == "pinmap" and f"GPIO{pinmap.ringer}" in str(raised.value)
    blocker.close()
    Indicators(pinmap, factory).close()
