"""luma.emulator's capture device, made to fit the Display contract."""

from __future__ import annotations

import os

from luma.emulator.device import capture

from drivers.errors import DeviceError

CAPTURE_FILE_TEMPLATE = "frame_{0:06}.png"  # numbered from 1, in the order frames were written


class FrameCapture(capture):
    """Writes each frame, pixel for pixel (no scaling), as a numbered PNG into ``capture_dir``.

    Differences from luma's capture: a PNG that cannot be written raises DeviceError naming
    ``capture_dir``, and waking up restores the contrast that was set instead of full contrast.
    Like luma's, a contrast change or sleep re-writes the last frame as the viewer would now see it
    (sleep writes a black frame), so the PNGs follow what is visible, not only the frames shown.
    """

    def __init__(self, *, capture_dir: str, width: int, height: int, rotate: int):
        if not capture_dir or not os.path.isdir(capture_dir):
            raise DeviceError("display", "capture_dir", f"{capture_dir!r} is not an existing directory")
        # pygame prints a greeting on import, which would land in the phone's log.
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        try:
            super().__init__(
                width=width, height=height, rotate=rotate, mode="1", transform="none", scale=1,
                file_template=os.path.join(capture_dir, CAPTURE_FILE_TEMPLATE),
            )
        except RuntimeError as e:  # luma's wording when pygame is missing
            raise DeviceError("display", "driver", f"capture cannot start: {e}") from None
        self._awake_contrast = 255
        self._asleep = False

    def display(self, image):
        try:
            super().display(image)
        except (OSError, RuntimeError) as e:  # pygame.error is a RuntimeError
            raise DeviceError("display", "capture_dir", f"cannot write a frame: {e}") from None

    def contrast(self, level: int) -> None:
        self._awake_contrast = level
        if not self._asleep:
            super().contrast(level)

    def hide(self) -> None:
        self._asleep = True
        super().contrast(0)

    def show(self) -> None:
        self._asleep = False
        super().contrast(self._awake_contrast)
