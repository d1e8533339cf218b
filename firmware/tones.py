"""Call-progress tones as ready-made 20 ms frames (S16_LE mono), cheap enough for the audio thread.

The dial tone is the ITU/North-American precise dial tone, 350 Hz + 440 Hz. Both repeat every
1/10 s, so one tenth of a second of samples, cut into frames once, loops without a click.
"""

from __future__ import annotations

import math
import struct
from itertools import cycle

DIAL_TONE_HZ = (350, 440)
TONE_REPEAT_S = 0.1  # the common period of 350 Hz and 440 Hz
TONE_PEAK = 6000  # about -15 dBFS per component: clear in the earpiece, far from clipping
FRAME_MS = 20


def tone_frames(frequencies: tuple[int, ...], rate: int, peak: int = TONE_PEAK) -> list[bytes]:
    """One TONE_REPEAT_S loop of the summed sines, as 20 ms frames."""
    total = round(rate * TONE_REPEAT_S)
    samples = [round(sum(peak * math.sin(2 * math.pi * f * n / rate) for f in frequencies)) for n in range(total)]
    per_frame = rate * FRAME_MS // 1000
    return [struct.pack(f"<{per_frame}h", *samples[i:i + per_frame]) for i in range(0, total, per_frame)]


class DialTone:
    """Endless dial tone frames at ``rate``; ``next_frame()`` costs one iterator step."""

    def __init__(self, rate: int):
        self._frames = cycle(tone_frames(DIAL_TONE_HZ, rate))

    def next_frame(self) -> bytes:
        return next(self._frames)
