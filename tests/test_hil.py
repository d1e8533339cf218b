"""Hardware-in-the-loop: the real backends on a real handset (./byline test --hil).

These are the only tests allowed to skip: without --hil there is no handset to talk to.
"""

import asyncio
import math
import struct
import time

import pytest
from PIL import Image

from drivers.audio import open_audio
from drivers.display import open_display
from drivers.gpio import open_pin_factory
from drivers.indicators import Indicators
from drivers.keys.matrix import MatrixKeypad
from drivers.pinmap import load_pinmap
from firmware.scenario import ScenarioPhone, parse_script
from tests.test_golden_screens import GOLDEN, TOUR

pytestmark = pytest.mark.hil

IDLE_SCAN_S = 1.0
TONE_HZ = 1000
TONE_FRAMES = 50


def test_real_oled_takes_every_golden_frame(handset_config):
    settings = handset_config.section("display")
    with open_display(settings.pop("driver"), **settings) as display:
        for path in sorted(GOLDEN.glob("*.png")):
            frame = Image.open(path).convert("1")
            display.show(frame)
            assert display.last_frame.tobytes() == frame.tobytes()
        display.sleep()
        display.wake()


def test_real_keypad_reads_no_phantom_keys_at_rest(handset_config):
    """Nothing held, handset on the cradle: a second of scanning gives no event at all."""
    factory = open_pin_factory(handset_config["gpio.pin_factory"])
    keypad = MatrixKeypad(load_pinmap(handset_config["gpio.pinmap"]), factory)
    try:
        events = []
        deadline = time.monotonic() + IDLE_SCAN_S
        while time.monotonic() < deadline:
            events += keypad.scan()
            time.sleep(0.01)
        assert events == []
    finally:
        keypad.close()
        factory.close()


def test_real_indicators_switch_and_end_dark(handset_config):
    factory = open_pin_factory(handset_config["gpio.pin_factory"])
    indicators = Indicators(load_pinmap(handset_config["gpio.pinmap"]), factory)
    try:
        for name in ("message", "in_call", "secure"):
            indicators.set(name, "on")
            assert indicators.levels()[name]
            indicators.set(name, "off")
    finally:
        indicators.close()
        factory.close()


def test_real_codec_plays_and_captures_without_xruns(handset_config):
    settings = handset_config.section("audio")
    settings.pop("enabled")
    audio = open_audio(**settings)
    try:
        samples = audio.frame_bytes // 2
        for n in range(TONE_FRAMES):
            tone = [int(8000 * math.sin(2 * math.pi * TONE_HZ * (n * samples + i) / audio.rate)) for i in range(samples)]
            audio.write_frame(struct.pack(f"<{samples}h", *tone))
            assert len(audio.read_frame()) == audio.frame_bytes
        assert audio.capture_xruns == 0 and audio.playback_xruns == 0
    finally:
        audio.close()


def test_scenario_tour_on_the_real_oled(handset_config):
    """The golden tour with the real display: the frames sent to the OLED are the golden ones."""
    from firmware.scenario import headless_config

    config = headless_config(handset_config, display__driver=handset_config["display.driver"],
                             gpio__pin_factory=handset_config["gpio.pin_factory"])

    async def tour():
        async with ScenarioPhone(config) as phone:
            for step in parse_script(TOUR.read_text()):
                if step.verb == "snap":
                    golden = Image.open(GOLDEN / f"{step.args[0]}.png").convert("1")
                    assert phone.frame().tobytes() == golden.tobytes(), step.args[0]
                elif step.verb == "press":
                    await phone.press(*step.args)
                elif step.verb == "wait":
                    await phone.wait_screen(step.args[0])
                elif step.verb == "lift":
                    await phone.lift()
                elif step.verb == "hangup":
                    await phone.hang_up()

    asyncio.run(tour())
