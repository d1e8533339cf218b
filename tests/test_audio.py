"""The audio driver against real ALSA: null, file and PulseAudio PCMs from drivers/audio/asoundrc.

The PulseAudio tests run a private pulseaudio daemon (null sink, private socket) because it is the
one real-time ALSA device available without a sound card: its playback underruns are real xruns.
"""

from __future__ import annotations

import array
import math
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import alsaaudio
import pytest

from drivers.audio import (
    FRAME_MS,
    SHIPPED_ALSA_CONFIG,
    AudioDevice,
    AudioPump,
    file_capture_device,
    file_playback_device,
    frame_samples,
    open_audio,
    pulse_device,
)
from drivers.audio.alsa_config import ALSA_CONFIG_PATH_VARIABLE, apply_alsa_config
from drivers.audio.gain import SoftwareGain, volume_to_gain_q16
from drivers.errors import DeviceError

SHIPPED = str(SHIPPED_ALSA_CONFIG)
TONE_HZ = 1000
TONE_AMPLITUDE = 20000
NOISE_SEED = 20261126
SIGNAL_FRAMES = 200  # 4 s of audio: half a 1 kHz tone, half full-scale pseudo-random samples
PACING_FRAMES = 50  # 1 s
PACING_TOLERANCE_S = 0.015  # scheduling jitter allowed per frame on a busy 2-core CI machine
SIMULATED_WORK_S = 0.003  # per-frame work in the callback: a relative-sleep loop would drift by it
PULSE_READY_TIMEOUT_S = 10.0
PULSE_STOP_TIMEOUT_S = 5.0
UNDERRUN_STALL_S = 0.3  # well past the 80 ms ALSA ring


@pytest.fixture(autouse=True)
def restore_alsa_config_path(monkeypatch):
    """open_audio sets ALSA_CONFIG_PATH for the process: give it back as it was after each test."""
    monkeypatch.delenv(ALSA_CONFIG_PATH_VARIABLE, raising=False)


def known_signal(rate: int, frames: int) -> bytes:
    samples = frames * frame_samples(rate)
    tone_samples = samples // 2
    tone = [round(TONE_AMPLITUDE * math.sin(2 * math.pi * TONE_HZ * i / rate)) for i in range(tone_samples)]
    rng = random.Random(NOISE_SEED)
    noise = [rng.randint(-32768, 32767) for _ in range(samples - tone_samples)]
    return array.array("h", tone + noise).tobytes()


def frames_of(pcm: bytes, frame_bytes: int) -> list[bytes]:
    return [pcm[i : i + frame_bytes] for i in range(0, len(pcm), frame_bytes)]


def reference_scaled(pcm: bytes, volume: int) -> bytes:
    """Volume as specified: round(sample * (volume/100)**3) in Q16, halves rounded up."""
    gain_q16 = volume_to_gain_q16(volume)
    return array.array("h", [(s * gain_q16 + 0x8000) >> 16 for s in array.array("h", pcm)]).tobytes()


# -- bit-exact playback and capture ---------------------------------------------------------------

@pytest.mark.parametrize("rate", [16000, 8000])
def test_playback_through_the_file_pcm_is_bit_exact_at_volume_100(tmp_path, rate):
    signal = known_signal(rate, SIGNAL_FRAMES)
    written = tmp_path / "played.raw"
    with open_audio(capture_device="byline_silence", playback_device=file_playback_device(written),
                    rate=rate, volume=100, alsa_config=SHIPPED, paced_by="clock") as audio:
        assert audio.frame_bytes == rate * FRAME_MS // 1000 * 2
        for frame in frames_of(signal, audio.frame_bytes):
            audio.write_frame(frame)
    assert written.read_bytes() == signal
    assert (audio.capture_xruns, audio.playback_xruns) == (0, 0)


@pytest.mark.parametrize("rate", [16000, 8000])
def test_capture_from_the_file_pcm_is_bit_exact(tmp_path, rate):
    signal = known_signal(rate, SIGNAL_FRAMES)
    source = tmp_path / "microphone.raw"
    source.write_bytes(signal)
    with open_audio(capture_device=file_capture_device(source), playback_device="byline_null",
                    rate=rate, alsa_config=SHIPPED, paced_by="clock") as audio:
        captured = [audio.read_frame() for _ in range(SIGNAL_FRAMES)]
    assert all(len(frame) == audio.frame_bytes for frame in captured)
    assert b"".join(captured) == signal


def test_capture_reads_of_another_size_than_a_frame_are_joined_and_split_exactly(tmp_path):
    """A card whose period is not 20 ms (here 256 samples) still yields exact 320-sample frames."""
    signal = known_signal(16000, 20)
    source = tmp_path / "microphone.raw"
    source.write_bytes(signal)
    apply_alsa_config(SHIPPED)
    capture = alsaaudio.PCM(alsaaudio.PCM_CAPTURE, device=file_capture_device(source), rate=16000,
                            channels=1, format=alsaaudio.PCM_FORMAT_S16_LE, periodsize=256, periods=4)
    assert capture.info()["period_size"] == 256
    playback = alsaaudio.PCM(alsaaudio.PCM_PLAYBACK, device="byline_null", rate=16000, channels=1,
                             format=alsaaudio.PCM_FORMAT_S16_LE, periodsize=320, periods=4)
    with AudioDevice(capture=capture, playback=playback, capture_device="file", playback_device="null",
                     rate=16000, volume=100, paced_by="clock") as audio:
        assert b"".join(audio.read_frame() for _ in range(20)) == signal


# -- volume --------------------------------------------------------------------------------------

@pytest.mark.parametrize("volume", [0, 1, 10, 37, 50, 80, 99, 100])
def test_software_gain_matches_the_specified_scaling_for_every_sample_value(volume):
    every_sample = array.array("h", range(-32768, 32768)).tobytes()
    gain = SoftwareGain(volume_to_gain_q16(volume), 65536)
    scaled = gain.apply(every_sample)
    assert scaled == reference_scaled(every_sample, volume)
    assert abs(volume_to_gain_q16(volume) / 65536 - (volume / 100) ** 3) <= 2 ** -16
    values = array.array("h", scaled)
    # The gain never exceeds unity, so nothing clips: full scale stays in range and order is kept.
    assert -32768 <= min(values) and max(values) <= 32767
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))


def test_volume_scales_played_frames_and_changes_take_effect_on_the_next_frame(tmp_path):
    signal = known_signal(16000, 6)
    written = tmp_path / "played.raw"
    with open_audio(capture_device="byline_silence", playback_device=file_playback_device(written),
                    volume=80, alsa_config=SHIPPED, paced_by="clock") as audio:
        frames = frames_of(signal, audio.frame_bytes)
        volumes = [80, 80, 100, 50, 0, 1]
        for volume, frame in zip(volumes, frames, strict=True):
            audio.volume = volume
            audio.write_frame(frame)
    expected = b"".join(reference_scaled(frame, volume) for volume, frame in zip(volumes, frames, strict=True))
    assert written.read_bytes() == expected
    assert frames[2] == expected[2 * 640 : 3 * 640]  # volume 100 is unity
    assert expected[4 * 640 : 5 * 640] == bytes(640)  # volume 0 is silence


@pytest.mark.parametrize("bad_volume", [-1, 101, 50.5, "80", True])
def test_a_volume_out_of_range_is_refused_naming_the_setting(bad_volume):
    with pytest.raises(DeviceError) as raised:
        open_audio(capture_device="byline_null", playback_device="byline_null", volume=bad_volume,
                   alsa_config=SHIPPED)
    assert raised.value.setting == "volume"


# -- the pump and clock pacing -------------------------------------------------------------------

def test_clock_pacing_keeps_time_without_drift_and_loops_audio_bit_exact(tmp_path):
    signal = known_signal(16000, 2 * PACING_FRAMES)  # the pump may move a few frames past the 50th
    source, written = tmp_path / "microphone.raw", tmp_path / "played.raw"
    source.write_bytes(signal)
    frame_times: list[float] = []
    done = threading.Event()

    def echo(captured: bytes) -> bytes:
        frame_times.append(time.monotonic())
        time.sleep(SIMULATED_WORK_S)
        if len(frame_times) == PACING_FRAMES:
            done.set()
        return captured

    with open_audio(capture_device=file_capture_device(source), playback_device=file_playback_device(written),
                    volume=100, alsa_config=SHIPPED, paced_by="clock") as audio:
        pump = AudioPump(audio, echo)
        pump.start()
        assert done.wait(PACING_FRAMES * FRAME_MS / 1000 * 3)
        pump.stop()
    assert pump.error is None and pump.late_restarts == 0
    start = frame_times[0]
    lateness = [t - start - n * FRAME_MS / 1000 for n, t in enumerate(frame_times[:PACING_FRAMES])]
    assert max(map(abs, lateness)) < PACING_TOLERANCE_S, lateness
    played = written.read_bytes()
    assert len(played) == pump.frames * audio.frame_bytes
    assert played == signal[: len(played)]


def test_an_error_in_the_frame_callback_stops_the_pump_and_is_reported(tmp_path):
    reported: list[BaseException] = []
    with open_audio(capture_device="byline_silence", playback_device="byline_null",
                    alsa_config=SHIPPED, paced_by="clock") as audio:
        pump = AudioPump(audio, lambda captured: captured[:10], on_error=reported.append)
        pump.start()
        pump.stop()
    assert isinstance(pump.error, ValueError) and "640 bytes" in str(pump.error)
    assert reported == [pump.error] and not pump.running


# -- device errors and the ALSA config -------------------------------------------------------------

@pytest.mark.parametrize("direction", ["capture", "playback"])
def test_a_nonexistent_device_raises_a_one_line_device_error_naming_the_setting(direction):
    devices = {"capture_device": "byline_silence", "playback_device": "byline_null"}
    devices[f"{direction}_device"] = "byline_no_such_pcm"
    with pytest.raises(DeviceError) as raised:
        open_audio(**devices, alsa_config=SHIPPED)
    error = raised.value
    assert (error.device, error.setting) == (f"audio {direction}", f"{direction}_device")
    assert f"'{direction}_device'" in str(error) and "byline_no_such_pcm" in str(error)
    assert "\n" not in str(error)


@pytest.mark.parametrize("settings, setting", [
    ({"rate": 44100}, "rate"),
    ({"paced_by": "sundial"}, "paced_by"),
    ({"alsa_config": "/nonexistent/asoundrc"}, "alsa_config"),
    ({"capture_device": ""}, "capture_device"),
])
def test_bad_settings_raise_a_device_error_naming_the_setting(settings, setting):
    arguments = {"capture_device": "byline_silence", "playback_device": "byline_null", "alsa_config": SHIPPED}
    with pytest.raises(DeviceError) as raised:
        open_audio(**{**arguments, **settings})
    assert raised.value.setting == setting and "\n" not in str(raised.value)


def test_alsa_config_applies_even_after_libasound_loaded_another_config(tmp_path):
    config_a, config_b = tmp_path / "a.asoundrc", tmp_path / "b.asoundrc"
    config_a.write_text("pcm.byline_test_only_in_a { type null }\n")
    config_b.write_text("pcm.byline_test_only_in_b { type null }\n")
    first = open_audio(capture_device="byline_test_only_in_a", playback_device="byline_test_only_in_a",
                       alsa_config=f"{SHIPPED}:{config_a}", paced_by="clock")
    try:
        with open_audio(capture_device="byline_test_only_in_b", playback_device="byline_silence",
                        alsa_config=f"{SHIPPED}:{config_b}", paced_by="clock") as second:
            second.write_frame(second.read_frame())
        assert os.environ[ALSA_CONFIG_PATH_VARIABLE] == f"/usr/share/alsa/alsa.conf:{SHIPPED}:{config_b}"
        first.write_frame(first.read_frame())  # still open on the config it was opened with
        with pytest.raises(DeviceError, match="byline_test_only_in_a"):
            open_audio(capture_device="byline_test_only_in_a", playback_device="byline_null",
                       alsa_config=f"{SHIPPED}:{config_b}")
    finally:
        first.close()


# -- a real-time device: PulseAudio --------------------------------------------------------------

class PulseServer:
    """A private pulseaudio daemon with a 16 kHz mono null sink, reachable only through its socket.

    The null sink renders up to 2 s ahead while no stream asks for less, which would hold a new
    stream's first frames for up to 2 s. A silent keep-alive stream (pacat, 10 ms latency) keeps
    the sink on short blocks, and one suspend/resume cycle drops the 2 s block rendered at start.
    """

    def __init__(self):
        for program in ("pulseaudio", "pacat", "pactl"):
            if shutil.which(program) is None:
                pytest.fail(f"{program} is not installed: add pulseaudio and libasound2-plugins to apt-packages.txt")
        self.directory = Path(tempfile.mkdtemp(prefix="byline-pulse-"))  # short: socket paths max 107 bytes
        self.socket_path = self.directory / "native"
        self.server = f"unix:{self.socket_path}"
        self.log_path = self.directory / "pulseaudio.log"
        self.processes: list[subprocess.Popen] = []

    def start(self) -> None:
        script = self.directory / "byline.pa"
        script.write_text(
            f"load-module module-native-protocol-unix socket={self.socket_path} auth-anonymous=1\n"
            "load-module module-null-sink sink_name=byline_null rate=16000 channels=1\n")
        private = {"HOME": str(self.directory), "XDG_RUNTIME_DIR": str(self.directory),
                   "XDG_CONFIG_HOME": str(self.directory), "PULSE_RUNTIME_PATH": str(self.directory)}
        with open(self.log_path, "ab") as log, open("/dev/zero", "rb") as endless_silence:
            self.processes.append(subprocess.Popen(
                ["pulseaudio", "-n", "-F", str(script), "--daemonize=no", "--exit-idle-time=-1",
                 "--use-pid-file=no", "--disallow-exit", "--log-target=stderr", "-v"],
                env={**os.environ, **private}, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
            self._wait_for(self._accepts_connections, f"pulseaudio to open {self.socket_path}")
            self.processes.append(subprocess.Popen(
                ["pacat", f"--server={self.server}", "--playback", "--raw", "--format=s16le", "--rate=16000",
                 "--channels=1", "--latency-msec=10", "--stream-name=byline-keepalive"],
                stdout=log, stderr=subprocess.STDOUT, stdin=endless_silence))
            self._wait_for(lambda: self._pactl("list", "short", "sink-inputs").strip(), "the keep-alive stream")
        self._pactl("suspend-sink", "byline_null", "1")
        self._pactl("suspend-sink", "byline_null", "0")

    def _accepts_connections(self) -> bool:
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(self.socket_path))
                return True
            except OSError:
                return False

    def _wait_for(self, condition, what: str) -> None:
        deadline = time.monotonic() + PULSE_READY_TIMEOUT_S
        while not condition():
            for process in self.processes:
                if process.poll() is not None:
                    pytest.fail(f"{process.args[0]} exited with {process.returncode} while waiting for {what}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {PULSE_READY_TIMEOUT_S} s waiting for {what}")
            time.sleep(0.02)

    def _pactl(self, *arguments: str) -> str:
        return subprocess.run(["pactl", f"--server={self.server}", *arguments], capture_output=True,
                              text=True, check=True, timeout=PULSE_READY_TIMEOUT_S).stdout

    def sink_volume_percent(self) -> int:
        return int(self._pactl("get-sink-volume", "byline_null").split("/")[1].strip().rstrip("%"))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(PULSE_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def pulse():
    server = PulseServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
        print(f"--- pulseaudio log ---\n{server.log()}")  # pytest shows it only when the test failed
        shutil.rmtree(server.directory, ignore_errors=True)


def test_a_playback_underrun_is_counted_and_the_stream_goes_on(pulse):
    silence = bytes(640)
    with open_audio(capture_device="byline_silence", playback_device=pulse_device(pulse.server),
                    alsa_config=SHIPPED, paced_by="device") as audio:
        for _ in range(6):  # fills the 80 ms ring, then blocks at the server's pace
            audio.write_frame(silence)
        assert audio.playback_xruns == 0
        time.sleep(UNDERRUN_STALL_S)
        audio.write_frame(silence)
        assert audio.playback_xruns == 1
        started = time.monotonic()
        for _ in range(10):
            audio.write_frame(silence)
        # Re-prepared and running again: the frames are taken at the server's real-time pace.
        assert audio.playback_xruns == 1
        assert time.monotonic() - started >= 5 * FRAME_MS / 1000


def test_a_device_paced_pump_rides_through_an_underrun(pulse):
    moved = threading.Event()
    calls = 0

    def stall_once(captured: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 10:
            time.sleep(UNDERRUN_STALL_S)
        if calls == 30:
            moved.set()

    with open_audio(capture_device="byline_silence", playback_device=pulse_device(pulse.server),
                    alsa_config=SHIPPED, paced_by="device") as audio:
        pump = AudioPump(audio, stall_once)
        pump.start()
        try:
            assert moved.wait(10)
        finally:
            pump.stop()
    assert pump.error is None and pump.frames >= 30
    assert audio.playback_xruns == 1


def test_a_mixer_control_carries_the_volume_instead_of_software_gain(pulse, tmp_path):
    signal = known_signal(16000, 5)
    written = tmp_path / "played.raw"
    with open_audio(capture_device="byline_silence", playback_device=file_playback_device(written),
                    volume=50, alsa_config=SHIPPED, paced_by="clock",
                    mixer_device=pulse_device(pulse.server), mixer_control="Master") as audio:
        assert pulse.sink_volume_percent() == 50
        audio.volume = 30
        assert pulse.sink_volume_percent() == 30
        for frame in frames_of(signal, audio.frame_bytes):
            audio.write_frame(frame)
    assert written.read_bytes() == signal  # the samples themselves are left untouched


def test_a_missing_mixer_control_raises_a_device_error_naming_the_setting(pulse):
    with pytest.raises(DeviceError) as raised:
        open_audio(capture_device="byline_silence", playback_device="byline_null", alsa_config=SHIPPED,
                   mixer_device=pulse_device(pulse.server), mixer_control="Nonexistent")
    assert raised.value.setting == "mixer_control" and "Nonexistent" in str(raised.value)


def test_a_device_that_breaks_mid_stream_stops_the_pump_with_a_device_error(pulse):
    failed = threading.Event()
    reported: list[BaseException] = []

    def report(error: BaseException) -> None:
        reported.append(error)
        failed.set()

    with open_audio(capture_device="byline_silence", playback_device=pulse_device(pulse.server),
                    alsa_config=SHIPPED, paced_by="device") as audio:
        pump = AudioPump(audio, lambda captured: captured, on_error=report)
        pump.start()
        try:
            time.sleep(0.1)
            pulse.stop()  # the sound server goes away under a running stream
            assert failed.wait(5)
        finally:
            pump.stop()
    assert isinstance(pump.error, DeviceError) and reported == [pump.error]
    assert pump.error.setting == "playback_device" and "\n" not in str(pump.error)
