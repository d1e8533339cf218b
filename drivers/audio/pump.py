"""AudioPump: the 20 ms full-duplex audio loop on its own thread, so blocking ALSA I/O never stalls asyncio."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from drivers.audio.device import FRAME_MS, AudioDevice

FRAME_S = FRAME_MS / 1000
# Silence queued ahead of the first played frame (and again after an underrun) when a sound card
# keeps time: capture and playback start a moment apart, and the cushion absorbs that and jitter.
PLAYBACK_CUSHION_FRAMES = 2
# Clock pacing catches up after a short stall (frames come out back to back), but a stall longer
# than this restarts the schedule rather than bursting the backlog.
MAX_LATE_FRAMES = 5
# stop() waits this long for the loop thread; a device blocked for longer is reported as stuck.
STOP_WAIT_S = 2.0

FrameCallback = Callable[[bytes], "bytes | None"]
ErrorCallback = Callable[[BaseException], None]


class AudioPump:
    """Moves one frame every 20 ms: ``played = on_frame(captured)``, on a dedicated thread.

    Per frame it reads one captured frame from ``device``, calls ``on_frame(captured)`` on the pump
    thread and plays the frame it returns (``None`` plays silence). ``on_frame`` must be quick (well
    under 20 ms) and thread-safe: hand data to asyncio with ``loop.call_soon_threadsafe`` or a
    thread-safe queue.

    Pacing follows ``device.paced_by``: ``"device"`` lets the blocking capture read keep time (the
    codec's clock) and queues PLAYBACK_CUSHION_FRAMES of silence before the first frame and after
    each underrun; ``"clock"`` runs frame n at start + n * 20 ms on the monotonic clock (per-frame
    work never adds up to drift) for devices that do not block, and restarts the schedule after a
    stall longer than MAX_LATE_FRAMES (counted in ``late_restarts``).

    Any exception from the device or from ``on_frame`` stops the pump: it is kept in ``error`` and
    passed to ``on_error`` (called on the pump thread). ``frames`` counts the frames moved.
    Stop the pump before closing the device.
    """

    def __init__(self, device: AudioDevice, on_frame: FrameCallback, *, on_error: ErrorCallback | None = None):
        self.device = device
        self.on_frame = on_frame
        self.on_error = on_error
        self.frames = 0
        self.late_restarts = 0
        self.error: BaseException | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the loop thread; returns at once. A pump runs once: make a new one to restart."""
        if self._thread is not None:
            raise RuntimeError("this AudioPump was already started")
        self._thread = threading.Thread(target=self._run, name="audio-pump", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = STOP_WAIT_S) -> None:
        """Ask the loop to end after the current frame and wait for the thread to finish.

        From asyncio: ``await asyncio.to_thread(pump.stop)`` (it waits up to a frame). Raises
        RuntimeError if the thread is still blocked in the device after ``timeout`` seconds.
        """
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"the audio pump is stuck in the device for more than {timeout} s")

    def _run(self) -> None:
        try:
            if self.device.paced_by == "clock":
                self._run_paced_by_clock()
            else:
                self._run_paced_by_device()
        except BaseException as error:  # the thread has no caller: the error goes to error/on_error
            self.error = error
            if self.on_error is not None:
                self.on_error(error)

    def _move_one_frame(self) -> None:
        captured = self.device.read_frame()
        played = self.on_frame(captured)
        self.device.write_frame(self.device.silence if played is None else played)
        self.frames += 1

    def _queue_cushion(self) -> None:
        for _ in range(PLAYBACK_CUSHION_FRAMES):
            self.device.write_frame(self.device.silence)

    def _run_paced_by_device(self) -> None:
        self._queue_cushion()
        underruns_seen = self.device.playback_xruns
        while not self._stopping.is_set():
            self._move_one_frame()
            if self.device.playback_xruns != underruns_seen:
                self._queue_cushion()
                underruns_seen = self.device.playback_xruns

    def _run_paced_by_clock(self) -> None:
        deadline = time.monotonic()
        while not self._stopping.is_set():
            self._move_one_frame()
            deadline += FRAME_S
            delay = deadline - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # half the CPU of Event.wait(delay); stop() waits at most a frame
            elif -delay > MAX_LATE_FRAMES * FRAME_S:
                self.late_restarts += 1
                deadline = time.monotonic()
