"""AudioDevice: one capture and one playback ALSA PCM moving 20 ms frames of S16_LE mono."""

from __future__ import annotations

import errno
import threading

import alsaaudio

from drivers.audio.alsa_config import apply_alsa_config
from drivers.audio.gain import UNITY_Q16, VOLUME_MAX, VOLUME_MIN, SoftwareGain, volume_to_gain_q16
from drivers.errors import DeviceError

FRAME_MS = 20
SAMPLE_BYTES = 2  # signed 16-bit little-endian, one channel
SUPPORTED_RATES = (8000, 16000)  # G.711 narrowband, G.722 wideband
PACINGS = ("device", "clock")
# The ALSA ring holds this many frames: rides out 60 ms of scheduling delay before an xrun.
BUFFER_PERIODS = 4
# One read or write that keeps failing with an xrun after ALSA re-prepared the stream this many
# times means the device is broken, not late.
MAX_XRUNS_PER_CALL = 4
# How long close() waits for a read or write in progress on another thread (a frame is 20 ms).
CLOSE_WAIT_S = 1.0

_UNKNOWN_PCM_REASON = "No such file or directory"  # what libasound says for an unknown PCM name
_XRUN = -errno.EPIPE  # what pyalsaaudio's read/write return after an xrun (it has re-prepared)


def frame_samples(rate: int) -> int:
    """Samples in one 20 ms frame at ``rate`` Hz (320 at 16000, 160 at 8000)."""
    return rate * FRAME_MS // 1000


def _alsa_reason(error: alsaaudio.ALSAAudioError) -> str:
    """pyalsaaudio's message without its trailing " [device name]" (the caller names the device)."""
    text = str(error)
    return text[: text.rfind(" [")] if text.endswith("]") and " [" in text else text


class AudioDevice:
    """The handset's codec: 20 ms frames of S16_LE mono PCM at ``rate`` Hz, captured and played.

    Use :func:`open_audio`. ``read_frame`` and ``write_frame`` block as the device does (a sound
    card paces them; null and file PCMs return at once): call them from one thread, such as
    :class:`drivers.audio.pump.AudioPump`, never from the asyncio loop. ``capture_xruns`` and
    ``playback_xruns`` count the overruns and underruns that were recovered.
    """

    def __init__(self, *, capture: alsaaudio.PCM, playback: alsaaudio.PCM, capture_device: str,
                 playback_device: str, rate: int, volume: int, paced_by: str,
                 mixer: alsaaudio.Mixer | None = None):
        self.capture_device = capture_device
        self.playback_device = playback_device
        self.rate = rate
        self.paced_by = paced_by
        self.frame_samples = frame_samples(rate)
        self.frame_bytes = self.frame_samples * SAMPLE_BYTES
        self.silence = bytes(self.frame_bytes)
        self.capture_xruns = 0
        self.playback_xruns = 0
        self._capture = capture
        self._playback = playback
        self._mixer = mixer
        self._pending = bytearray()  # captured bytes beyond the last whole frame (period != frame)
        self._capture_lock = threading.Lock()
        self._playback_lock = threading.Lock()
        self._closed = False
        self._volume = VOLUME_MAX
        self._gain = SoftwareGain(UNITY_Q16, self.frame_samples)
        self.volume = volume

    @property
    def volume(self) -> int:
        """Playback volume 0-100: software gain (volume/100)**3, or the mixer control if configured."""
        return self._volume

    @volume.setter
    def volume(self, volume: int) -> None:
        if isinstance(volume, bool) or not isinstance(volume, int) or not VOLUME_MIN <= volume <= VOLUME_MAX:
            reason = f"volume must be a whole number {VOLUME_MIN}-{VOLUME_MAX}, got {volume!r}"
            raise DeviceError("audio playback", "volume", reason)
        if self._mixer is not None:
            try:
                self._mixer.setvolume(volume)
            except alsaaudio.ALSAAudioError as e:
                reason = f"cannot set the volume: {_alsa_reason(e)}"
                raise DeviceError("audio playback", "mixer_control", reason) from None
        else:
            # One attribute swap: the pump thread sees the old or the new gain, never a mix.
            self._gain = SoftwareGain(volume_to_gain_q16(volume), self.frame_samples)
        self._volume = volume

    def read_frame(self) -> bytes:
        """Block until one captured frame (``frame_bytes`` bytes) is there and return it.

        Reads shorter or longer than a frame (a device whose period is not 20 ms) are joined and
        split, so no sample is dropped or invented. An overrun is counted in ``capture_xruns`` and
        reading goes on (the frame then spans the gap). Raises DeviceError (setting
        ``capture_device``) when the device fails, keeps overrunning or delivers nothing.
        """
        with self._capture_lock:
            self._check_open()
            pending = self._pending
            xruns_here = 0
            while len(pending) < self.frame_bytes:
                try:
                    length, data = self._capture.read()
                except alsaaudio.ALSAAudioError as e:
                    raise self._capture_error(_alsa_reason(e)) from None
                if length == _XRUN:
                    self.capture_xruns += 1
                    xruns_here += 1
                    if xruns_here > MAX_XRUNS_PER_CALL:
                        raise self._capture_error("keeps overrunning")
                    continue
                if not data:
                    # Only a non-blocking PCM returns nothing (busy); this driver opens blocking ones.
                    raise self._capture_error("delivered no data")
                if not pending and len(data) == self.frame_bytes:
                    return data  # the usual case: one period is one frame
                pending += data
            frame = bytes(pending[: self.frame_bytes])
            del pending[: self.frame_bytes]
            return frame

    def write_frame(self, pcm: bytes) -> None:
        """Play one frame (exactly ``frame_bytes`` bytes) at the current volume; blocks while the ring is full.

        An underrun is counted in ``playback_xruns`` and the frame is written again to the
        re-prepared stream. Raises ValueError for a frame of the wrong size, DeviceError (setting
        ``playback_device``) when the device fails or keeps underrunning.
        """
        if len(pcm) != self.frame_bytes:
            raise ValueError(f"an audio frame is {self.frame_bytes} bytes at {self.rate} Hz, got {len(pcm)}")
        if not isinstance(pcm, bytes):
            pcm = bytes(pcm)
        remaining = memoryview(self._gain.apply(pcm))
        with self._playback_lock:
            self._check_open()
            xruns_here = 0
            while remaining:
                try:
                    written = self._playback.write(remaining)
                except alsaaudio.ALSAAudioError as e:
                    raise self._playback_error(_alsa_reason(e)) from None
                if written == _XRUN:
                    self.playback_xruns += 1
                    xruns_here += 1
                    if xruns_here > MAX_XRUNS_PER_CALL:
                        raise self._playback_error("keeps underrunning")
                    continue
                if written <= 0:
                    # Only a non-blocking PCM returns 0 (busy); this driver opens blocking ones.
                    raise self._playback_error("accepted no data")
                remaining = remaining[written * SAMPLE_BYTES :]

    def close(self) -> None:
        """Close both PCMs and the mixer; idempotent.

        Waits up to CLOSE_WAIT_S for a read or write in progress on another thread; a PCM still
        blocked after that is not closed under it (it closes when the object is freed).
        """
        self._closed = True
        self._capture = self._close_pcm(self._capture, self._capture_lock)
        self._playback = self._close_pcm(self._playback, self._playback_lock)
        if self._mixer is not None:
            self._mixer.close()
            self._mixer = None

    @staticmethod
    def _close_pcm(pcm: alsaaudio.PCM | None, lock: threading.Lock) -> alsaaudio.PCM | None:
        if pcm is None or not lock.acquire(timeout=CLOSE_WAIT_S):
            return pcm
        try:
            pcm.close()
            return None
        finally:
            lock.release()

    def _capture_error(self, reason: str) -> DeviceError:
        return DeviceError("audio capture", "capture_device", f"{self.capture_device!r}: {reason}")

    def _playback_error(self, reason: str) -> DeviceError:
        return DeviceError("audio playback", "playback_device", f"{self.playback_device!r}: {reason}")

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the audio device is closed")

    def __enter__(self) -> AudioDevice:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _open_pcm(direction: str, device: str, rate: int) -> alsaaudio.PCM:
    kind, setting = f"audio {direction}", f"{direction}_device"
    if not device.strip():
        raise DeviceError(kind, setting, "no ALSA device name given")
    pcm_type = alsaaudio.PCM_CAPTURE if direction == "capture" else alsaaudio.PCM_PLAYBACK
    try:
        pcm = alsaaudio.PCM(pcm_type, alsaaudio.PCM_NORMAL, device=device, rate=rate, channels=1,
                            format=alsaaudio.PCM_FORMAT_S16_LE, periodsize=frame_samples(rate),
                            periods=BUFFER_PERIODS)
    except alsaaudio.ALSAAudioError as e:
        reason = _alsa_reason(e)
        if reason == _UNKNOWN_PCM_REASON:
            reason += " (no such PCM in the ALSA config, or its sound card is missing)"
        raise DeviceError(kind, setting, f"cannot open ALSA device {device!r}: {reason}") from None
    info = pcm.info()
    if (info["rate"], info["channels"], info["format"]) != (rate, 1, alsaaudio.PCM_FORMAT_S16_LE):
        pcm.close()
        offered = f"{info['rate']} Hz, {info['channels']} channel(s), {info['format_name']}"
        reason = f"ALSA device {device!r} does not take {rate} Hz mono S16_LE (it offers {offered}): use a plug device"
        raise DeviceError(kind, setting, reason)
    return pcm


def _open_mixer(mixer_device: str, mixer_control: str) -> alsaaudio.Mixer:
    try:
        return alsaaudio.Mixer(control=mixer_control, device=mixer_device)
    except alsaaudio.ALSAAudioError as e:
        raise DeviceError("audio playback", "mixer_control",
                          f"no mixer control {mixer_control!r} on {mixer_device!r}: {_alsa_reason(e)}") from None


def open_audio(*, capture_device: str, playback_device: str, rate: int = 16000, volume: int = 80,
               alsa_config: str = "", paced_by: str = "device", mixer_device: str = "default",
               mixer_control: str = "") -> AudioDevice:
    """Open the codec's capture and playback ALSA PCMs as one :class:`AudioDevice`.

    Settings (the firmware's ``audio.<name>``): ``capture_device`` / ``playback_device`` are ALSA PCM
    names (``plughw:CARD=...``, or ``byline_file_capture:'/path.raw'`` from the shipped asoundrc);
    ``rate`` is 16000 (G.722) or 8000 (G.711); ``volume`` 0-100 is the playback volume;
    ``alsa_config`` names extra ALSA config files (':'-separated) loaded on top of the system one;
    ``paced_by`` tells :class:`AudioPump` what keeps time: ``device`` (a sound card blocks the
    reads) or ``clock`` (null and file PCMs, which never block); ``mixer_control`` (e.g.
    ``Master``), when set, carries the volume on that control of ``mixer_device`` instead of the
    software gain. Raises DeviceError naming the setting at fault; never leaves a PCM open then.
    """
    if rate not in SUPPORTED_RATES:
        rates = ", ".join(map(str, SUPPORTED_RATES))
        raise DeviceError("audio", "rate", f"rate must be one of {rates} Hz, got {rate!r}")
    if paced_by not in PACINGS:
        raise DeviceError("audio", "paced_by", f"paced_by must be one of {', '.join(PACINGS)}, got {paced_by!r}")
    apply_alsa_config(alsa_config)
    opened: list = []
    try:
        mixer = _open_mixer(mixer_device, mixer_control) if mixer_control else None
        if mixer is not None:
            opened.append(mixer)
        capture = _open_pcm("capture", capture_device, rate)
        opened.append(capture)
        playback = _open_pcm("playback", playback_device, rate)
        opened.append(playback)
        return AudioDevice(capture=capture, playback=playback, capture_device=capture_device,
                           playback_device=playback_device, rate=rate, volume=volume,
                           paced_by=paced_by, mixer=mixer)
    except BaseException:
        for handle in reversed(opened):
            handle.close()
        raise
