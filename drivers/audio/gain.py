"""Software playback gain for S16_LE frames, without a per-sample Python loop.

Volume 0-100 maps to a gain of (volume/100)**3, PulseAudio's cubic curve (even loudness steps to the
ear): 100 is unity and leaves samples bit-exact, 0 is silence. The gain never exceeds unity, so a
scaled sample always fits in 16 bits: there is nothing to clip.

Scaling runs in C through Python's big integers ("SIMD within a register"): every sample is widened
to a 32-bit field of one big integer, offset to unsigned, multiplied by the gain in Q16 fixed point
and narrowed back. The result is exactly ``(sample * gain_q16 + 0x8000) >> 16`` (rounding half up)
for every sample, at about 4 us per 320-sample frame on x86-64 where a Python loop costs about 28 us.
"""

from __future__ import annotations

UNITY_Q16 = 1 << 16
VOLUME_MIN = 0
VOLUME_MAX = 100

_SAMPLE_OFFSET = 0x8000  # int16 + 0x8000 is unsigned: fields hold no sign, so no borrow between them
_ROUND_HALF_UP = 0x8000  # added before dropping the low 16 bits of the Q16 product
_FLIP_SIGN_BIT = bytes(byte ^ 0x80 for byte in range(256))  # on a sample's high byte: +/- the offset


def volume_to_gain_q16(volume: int) -> int:
    """The Q16 gain for ``volume`` (0-100): an even number in [0, 65536], 65536 at volume 100."""
    if not VOLUME_MIN <= volume <= VOLUME_MAX:
        raise ValueError(f"volume must be {VOLUME_MIN}-{VOLUME_MAX}, got {volume}")
    # Even, so that the offset's share of the product (0x8000 * gain / 65536) is a whole number.
    return 2 * round((volume / VOLUME_MAX) ** 3 * (UNITY_Q16 // 2))


class SoftwareGain:
    """Scales frames of ``frame_samples`` S16_LE samples by a fixed Q16 gain (at most unity)."""

    def __init__(self, gain_q16: int, frame_samples: int):
        if not (0 <= gain_q16 <= UNITY_Q16 and gain_q16 % 2 == 0):
            raise ValueError(f"gain_q16 must be even and within 0-{UNITY_Q16}, got {gain_q16}")
        self.gain_q16 = gain_q16
        self.frame_samples = frame_samples
        self._silence = bytes(2 * frame_samples)
        # Per 32-bit field: (s + 0x8000) * g + ROUND + (0x8000 - g/2) << 16 has its top 16 bits equal
        # to round(s * g / 65536) + 0x8000, and stays below 2**32 for g <= 65536: no field carries.
        field = _ROUND_HALF_UP + ((_SAMPLE_OFFSET - gain_q16 // 2) << 16)
        self._field_constants = int.from_bytes(field.to_bytes(4, "little") * frame_samples, "little")

    @property
    def is_unity(self) -> bool:
        return self.gain_q16 == UNITY_Q16

    def apply(self, pcm: bytes) -> bytes:
        """Return ``pcm`` (exactly one frame) scaled; unity returns ``pcm`` itself, zero returns silence."""
        if self.gain_q16 == UNITY_Q16:
            return pcm
        if self.gain_q16 == 0:
            return self._silence
        samples = self.frame_samples
        wide = bytearray(4 * samples)
        wide[0::4] = pcm[0::2]
        wide[1::4] = pcm[1::2].translate(_FLIP_SIGN_BIT)
        product = int.from_bytes(wide, "little") * self.gain_q16 + self._field_constants
        fields = product.to_bytes(4 * samples, "little")
        narrow = bytearray(2 * samples)
        narrow[0::2] = fields[2::4]
        narrow[1::2] = fields[3::4].translate(_FLIP_SIGN_BIT)
        return bytes(narrow)
