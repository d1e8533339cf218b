"""The supervisor keeps the phone up whatever its devices and config do."""

import asyncio
import logging


from firmware import effects as fx
from firmware.config import load_config
from firmware.scenario import ScenarioPhone, headless_config
from firmware.state import PhoneState
from firmware.units import DisplayUnit, IndicatorsUnit, Unit


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_a_missing_oled_is_one_line_naming_the_key_and_the_phone_still_runs(caplog):
    # No /dev/i2c-7 on a test machine: the real sh1106 driver cannot open it.
    config = headless_config(display__driver="sh1106", display__i2c_port=7)

    async def scenario():
        async with ScenarioPhone(config) as phone:
            await phone.set_up_pin()
            return phone.state

    with caplog.at_level(logging.WARNING):
        state = run(scenario())
    assert any(n.startswith("display.i2c_port: display:") for n in state.notices), state.notices
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "display.i2c_port" in errors[0].getMessage()
    assert errors[0].exc_info is None, "a missing device is one line, not a traceback"


def test_no_gpio_chip_disables_keys_and_indicators_but_not_the_display():
    config = headless_config(gpio__pin_factory="lgpio")

    async def scenario():
        async with ScenarioPhone(config) as phone:
            return phone.state, phone.frame()

    state, frame = run(scenario())
    gpio_notices = [n for n in state.notices if n.startswith("gpio.pin_factory:")]
    assert len(gpio_notices) == 2, state.notices  # keys and indicators
    assert frame is not None and frame.getbbox() is not None


def test_bad_config_values_are_shown_and_the_phone_boots(tmp_path):
    path = tmp_path / "byline.toml"
    path.write_text('[display]\ncontrast = "max"\n[ui]\nscreen_off_s = -5\n')
    config = headless_config(load_config(path))

    async def scenario():
        async with ScenarioPhone(config) as phone:
            await phone.set_up_pin()
            await phone.press("ok", "5")
            return phone.state

    state = run(scenario())
    assert state.screen == "section" and state.section == "Settings"
    assert any("display.contrast" in n for n in state.notices)
    assert any("ui.screen_off_s" in n for n in state.notices)


class ExplodingUnit(Unit):
    name = section = "exploder"

    def __init__(self):
        self.shown = 0

    def show(self, state: PhoneState) -> None:
        self.shown += 1
        if state.screen == "home":
            raise RuntimeError("bug in a unit")


def test_a_unit_that_fails_is_disabled_and_the_rest_carries_on(caplog):
    exploder = ExplodingUnit()

    async def scenario():
        phone = ScenarioPhone()
        phone.supervisor.units.append(exploder)
        async with phone:
            await phone.set_up_pin()
            shown_when_failed = exploder.shown
            await phone.press("ok")
            return phone.state, shown_when_failed, phone.frame()

    state, shown_when_failed, frame = run(scenario())
    assert state.screen == "menu"
    assert exploder.shown == shown_when_failed, "a failed unit must not be shown more states"
    assert any("exploder failed" in r.getMessage() for r in caplog.records)


def test_the_screen_blanks_after_idle_and_wakes_on_a_key():
    config = headless_config(ui__screen_off_s=30)

    async def scenario():
        async with ScenarioPhone(config) as phone:
            display = next(u for u in phone.supervisor.units if isinstance(u, DisplayUnit)).display
            await phone.advance(31)
            asleep_after_idle = display.asleep
            await phone.press("1")
            return asleep_after_idle, display.asleep, phone.state.pin.digits

    asleep_after_idle, asleep_after_key, pin = run(scenario())
    assert asleep_after_idle and not asleep_after_key
    assert pin == "", "the key that wakes the screen must not be typed"


def test_in_call_led_follows_the_hook():
    async def scenario():
        async with ScenarioPhone() as phone:
            indicators = next(u for u in phone.supervisor.units if isinstance(u, IndicatorsUnit)).indicators
            await phone.lift()
            lifted = indicators.state()["in_call"]
            await phone.hang_up()
            return lifted, indicators.state()["in_call"]

    assert run(scenario()) == ("on", "off")


def test_leds_and_ringer_mirror_the_call():
    def view(phase, security="pending"):
        return fx.CallChanged(fx.CallView("c1", "bob", True, phase, security, "k7f2"))

    async def scenario():
        async with ScenarioPhone() as phone:
            indicators = next(u for u in phone.supervisor.units if isinstance(u, IndicatorsUnit)).indicators
            seen = []
            for event in (view("incoming"), view("connected"), view("connected", "secure"),
                          view("connected", "verified"), view("connected", "not_encrypted"), view("ended")):
                await phone.post(event)
                seen.append((indicators.state()["ringer"], indicators.state()["in_call"], indicators.state()["secure"]))
            return seen

    assert run(scenario()) == [("ring", "off", "off"), ("off", "on", "off"), ("off", "on", "blink"),
                               ("off", "on", "on"), ("off", "on", "off"), ("off", "off", "off")]


def test_unchanged_pixels_are_not_sent_again():
    async def scenario():
        async with ScenarioPhone() as phone:
            display = next(u for u in phone.supervisor.units if isinstance(u, DisplayUnit)).display
            before = display.frames_shown
            await phone.advance(1)  # the clock's seconds move; the minute does not
            await phone.press("up")  # a key the PIN screen ignores
            return before, display.frames_shown

    before, after = run(scenario())
    assert after == before


def test_simulated_gpio_rests_with_the_handset_on_the_cradle_and_presses_through_pins():
    """The scanner runs in real time on MockFactory: the wired mock handset lies on its cradle,
    and a key pressed on the mock wires reaches the screen through scanning and debounce."""

    async def scenario():
        async with ScenarioPhone() as phone:
            await asyncio.sleep(0.2)  # many scans and debounce periods
            resting = phone.state.off_hook
            wiring = phone.supervisor.gpio.mock_wiring
            wiring.press("7")
            await phone.supervisor.wait_for(lambda s: len(s.pin.digits) == 1, timeout=2)
            wiring.release("7")
            wiring.lift_handset()
            await phone.supervisor.wait_for(lambda s: s.off_hook, timeout=2)
            return resting

    assert run(scenario()) is False


def test_a_request_whose_unit_is_disabled_is_answered_with_the_reason(tmp_path):
    # A TPM that cannot be reached disables the store unit: the PIN screen must say why.
    config = headless_config(security__state_dir=str(tmp_path / "state"), security__tpm="swtpm:host=127.0.0.1,port=1")

    async def scenario():
        async with ScenarioPhone(config) as phone:
            await phone.press(*"123456", "ok")
            return phone.state

    state = run(scenario())
    assert state.screen == "pin" and state.pin.hint.startswith("unavailable: security.tpm:")
    assert any(n.startswith("security.tpm: store:") for n in state.notices)


def test_the_screen_text_hook_writes_what_the_screen_says(tmp_path):
    """The image's self-test reads the screen from this file: it follows every change, secrets masked."""
    from firmware.scenario import ScenarioPhone, headless_config

    path = tmp_path / "screen.txt"

    async def scenario():
        async with ScenarioPhone(headless_config(hooks__screen_text_file=str(path))) as phone:
            await phone.wait_screen("pin")
            assert path.read_text().splitlines()[0] == "Choose PIN"
            await phone.press("1", "2", "3")
            assert "123" not in path.read_text()
            await phone.press("4", "5", "6", "ok", "1", "2", "3", "4", "5", "6", "ok")
            await phone.wait_screen("home")
            await phone.supervisor.settled()
            return path.read_text()

    shown = asyncio.run(scenario())
    assert "Menu" not in shown and "No account" in shown
