"""The dial tone: right frequencies, and played bit-exact through ALSA only while lifted at home."""

import asyncio
import cmath
import math
import struct

from drivers.audio import file_playback_device
from firmware.scenario import ScenarioPhone, headless_config
from firmware.tones import DIAL_TONE_HZ, DialTone, tone_frames

RATE = 16000
LIFTED_S = 0.6
FRAME_BYTES = RATE * 20 // 1000 * 2


def power_at(samples: list[int], frequency: float, rate: int) -> float:
    """|DFT| of ``samples`` at one frequency, normalised by length."""
    total = sum(s * cmath.exp(-2j * math.pi * frequency * n / rate) for n, s in enumerate(samples))
    return abs(total) / len(samples)


def test_dial_tone_is_350_and_440_hz_and_loops_seamlessly():
    frames = tone_frames(DIAL_TONE_HZ, RATE)
    assert all(len(f) == FRAME_BYTES for f in frames)
    samples = list(struct.unpack(f"<{len(frames) * FRAME_BYTES // 2}h", b"".join(frames)))
    tone = [power_at(samples, f, RATE) for f in DIAL_TONE_HZ]
    others = [power_at(samples, f, RATE) for f in (300, 400, 500, 1000)]
    assert min(tone) > 100 * max(others)
    # The loop's last sample leads into its first as the sine would: no click at the seam.
    step = samples[1] - samples[0]
    assert abs((samples[0] - samples[-1]) - step) < 200


def test_lifting_the_handset_at_home_plays_the_dial_tone(tmp_path):
    played = tmp_path / "earpiece.raw"
    config = headless_config(audio__playback_device=file_playback_device(played), audio__volume=100)

    async def scenario():
        async with ScenarioPhone(config) as phone:
            await phone.lift()  # on the PIN screen: no tone yet
            await asyncio.sleep(0.2)
            await phone.hang_up()
            await phone.set_up_pin()
            await phone.lift()
            await asyncio.sleep(LIFTED_S)
            await phone.hang_up()
            await asyncio.sleep(0.2)

    asyncio.run(scenario())
    data = played.read_bytes()
    frames = [data[i:i + FRAME_BYTES] for i in range(0, len(data) - FRAME_BYTES + 1, FRAME_BYTES)]
    silence = bytes(FRAME_BYTES)
    sounding = [i for i, f in enumerate(frames) if f != silence]
    assert sounding, "no dial tone reached the earpiece"
    first, last = sounding[0], sounding[-1]
    assert sounding == list(range(first, last + 1)), "the tone must be one unbroken stretch"
    expected = DialTone(RATE)
    assert all(frames[i] == expected.next_frame() for i in sounding), "tone frames must be bit-exact"
    lifted_frames = LIFTED_S / 0.02
    assert 0.5 * lifted_frames <= len(sounding) <= 1.5 * lifted_frames + 5
    assert all(f == silence for f in frames[last + 1:])
