"""PIN flows on the keypad against the real encrypted store and a real (software) TPM.

Each test keeps one work directory (the store in ``state``, the swtpm state in ``tpm`` beside
it) and starts the phone several times over it, as a phone is switched off and on.
"""

import asyncio
import shutil

from firmware.scenario import ScenarioPhone, headless_config
from firmware.state import MENU

PIN = "482916"
NEW_PIN = "771234"
DURESS = "550055"
WRONG = "111999"


def phone(work, **overrides) -> ScenarioPhone:
    return ScenarioPhone(headless_config(security__state_dir=str(work / "state"), **overrides))


async def settle(p: ScenarioPhone):
    """Wait for the store's answer to the PIN just entered."""
    return await p.supervisor.wait_for(lambda s: s.screen != "working", 10)


async def set_up(p: ScenarioPhone, pin: str = PIN) -> None:
    await p.wait_screen("pin")
    assert p.state.pin.flow == "setup"
    await p.press(*pin, "ok", *pin, "ok")
    await p.wait_screen("home")


async def enter(p: ScenarioPhone, pin: str):
    await p.press(*pin, "ok")
    return await settle(p)


async def open_security(p: ScenarioPhone) -> None:
    await p.press("ok", str(MENU.index("Security") + 1))


def test_set_unlock_change_lock_and_unlock_on_the_keypad(tmp_path):
    async def scenario():
        async with phone(tmp_path) as p:
            await set_up(p)
            await open_security(p)
            await p.expect("Key: PIN + TPM 2.0")
        async with phone(tmp_path) as p:
            assert p.state.pin.flow == "unlock"
            state = await enter(p, WRONG)
            assert state.screen == "pin" and state.pin.hint == "Wrong: 9 left"
            assert (await enter(p, PIN)).screen == "home"
            await open_security(p)
            await p.press("down", "down", "ok")
            await p.press(*PIN, "ok", *NEW_PIN, "ok", *NEW_PIN, "ok")
            await p.expect("PIN changed")
            await p.advance(p.state.settings.lock_after_s)
            assert p.state.screen == "pin" and p.state.pin.flow == "lock"
            await p.press("ok")  # wakes the blanked screen
            state = await enter(p, PIN)
            assert state.pin.flow == "lock" and state.pin.hint.startswith("Wrong"), "the old PIN is gone"
            assert (await enter(p, NEW_PIN)).screen == "home"
        async with phone(tmp_path) as p:
            assert (await enter(p, PIN)).screen == "pin"
            assert (await enter(p, NEW_PIN)).screen == "home"

    asyncio.run(scenario())


def test_wrong_pins_make_the_phone_wait_even_after_a_restart(tmp_path):
    async def scenario():
        async with phone(tmp_path) as p:
            await set_up(p)
        async with phone(tmp_path) as p:
            hints = [(await enter(p, WRONG)).pin.hint for _ in range(5)]
            assert hints[:4] == [f"Wrong: {n} left" for n in (9, 8, 7, 6)]
            assert hints[4] == "Wrong: wait 30 s"
            refused = await enter(p, PIN)
            assert refused.screen == "pin" and "wait" in refused.pin.hint.lower()
        async with phone(tmp_path) as p:
            refused = await enter(p, PIN)
            assert refused.screen == "pin" and refused.pin.hint == "Wait 30 s", "a restart must not skip the delay"

    asyncio.run(scenario())


def test_too_many_wrong_pins_wipe_and_say_so(tmp_path):
    async def scenario():
        async with phone(tmp_path, security__wipe_after_failures=3) as p:
            await set_up(p)
        async with phone(tmp_path, security__wipe_after_failures=3) as p:
            for _ in range(3):
                state = await enter(p, WRONG)
            assert state.pin.flow == "setup" and state.pin.hint == "Wiped: 3 wrong"
        async with phone(tmp_path, security__wipe_after_failures=3) as p:
            assert p.state.pin.flow == "setup", "nothing is left to unlock"

    asyncio.run(scenario())
    assert not any(p.is_file() for p in (tmp_path / "state").rglob("*"))


def test_the_duress_pin_wipes_and_the_phone_then_looks_new(tmp_path):
    async def scenario():
        async with phone(tmp_path) as p:
            await set_up(p)
            await open_security(p)
            await p.press("down", "down", "down", "ok")
            await p.press(*PIN, "ok", *DURESS, "ok", *DURESS, "ok")
            await p.expect("Duress PIN: on")
        async with phone(tmp_path) as p:
            state = await enter(p, DURESS)
            assert state.screen == "pin" and state.pin.flow == "setup" and state.pin.hint == ""
        async with phone(tmp_path) as p:
            assert p.state.pin.flow == "setup"

    asyncio.run(scenario())
    assert not any(p.is_file() for p in (tmp_path / "state").rglob("*"))


def test_a_copy_of_the_state_directory_does_not_open_with_another_tpm(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"

    async def scenario():
        async with phone(first) as p:
            await set_up(p)
        shutil.copytree(first / "state", second / "state")
        async with phone(second) as p:
            state = await enter(p, PIN)
            assert state.screen == "pin" and "TPM" in state.pin.hint
        async with phone(first) as p:
            assert (await enter(p, PIN)).screen == "home"

    asyncio.run(scenario())
