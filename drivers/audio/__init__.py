"""Audio driver: the handset's codec as 20 ms frames of signed 16-bit little-endian mono PCM.

Contract:

- :func:`open_audio` opens one capture and one playback ALSA PCM at ``rate`` Hz (16000 for G.722
  wideband, the default; 8000 for G.711) and returns an :class:`AudioDevice`. Its keyword
  settings map 1:1 to the firmware's config keys ``audio.<name>``. A missing or broken device, or a
  bad setting, raises :class:`drivers.errors.DeviceError` naming the setting (``capture_device``,
  ``playback_device``, ``rate``, ``volume``, ``alsa_config``, ``paced_by``, ``mixer_control``) with a
  one-line reason.
- ``AudioDevice.read_frame() -> bytes`` returns exactly one frame (``frame_bytes``: 640 bytes at
  16 kHz, 320 at 8 kHz); ``write_frame(pcm)`` plays exactly one frame. Both block like the device.
  ``volume`` (0-100) is the playback volume: software gain (volume/100)**3, unity at 100 (bit-exact),
  or an ALSA mixer control when ``mixer_control`` is set. ``close()`` releases the device.
- Xruns: pyalsaaudio reports an overrun/underrun as -EPIPE after re-preparing the stream; the
  driver counts it (``capture_xruns``, ``playback_xruns``) and carries on (a playback frame is
  written again). Reads of another length than a frame (a card whose period is not 20 ms) are
  joined and split without dropping or inventing samples.
- :class:`AudioPump` runs the 20 ms loop on its own thread (``played = on_frame(captured)``) so the
  asyncio loop never blocks in ALSA; ``paced_by="device"`` trusts the blocking sound card,
  ``paced_by="clock"`` keeps monotonic deadlines for null/file PCMs, which do not keep time.
- ``alsa_config`` (and :data:`SHIPPED_ALSA_CONFIG`, this package's ``asoundrc`` with null, silence,
  file and PulseAudio PCMs) is loaded through ALSA_CONFIG_PATH; see :mod:`drivers.audio.alsa_config`.

Per-frame cost, measured on x86-64 (AMD EPYC VM, Python 3.11) at 16 kHz: read_frame + write_frame
through the file PCMs 3.6 us at volume 100, 7.9 us at any other volume (the gain is 4.3 us of it;
2.8 us at 8 kHz). A clock-paced AudioPump uses about 70 us of CPU per frame in all (0.35 % of a
core), most of it the thread's wake-up.
"""

from drivers.audio.alsa_config import (
    SHIPPED_ALSA_CONFIG,
    file_capture_device,
    file_playback_device,
    pulse_device,
)
from drivers.audio.device import (
    FRAME_MS,
    SAMPLE_BYTES,
    SUPPORTED_RATES,
    AudioDevice,
    frame_samples,
    open_audio,
)
from drivers.audio.pump import AudioPump

__all__ = [
    "FRAME_MS",
    "SAMPLE_BYTES",
    "SHIPPED_ALSA_CONFIG",
    "SUPPORTED_RATES",
    "AudioDevice",
    "AudioPump",
    "file_capture_device",
    "file_playback_device",
    "frame_samples",
    "open_audio",
    "pulse_device",
]
