"""The fonts screens draw with: Terminus bitmaps (Debian's fonts-terminus-otb).

Bitmap fonts must be loaded at a size they contain; Terminus carries 12, 14, 16, 20, 24, 28
and 32 px. 12 px (6x12 cells) gives 21 columns by 5 lines on the 128x64 OLED.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from PIL import ImageFont

TERMINUS_DIR = Path("/usr/share/fonts/opentype/terminus")
TERMINUS_SIZES = (12, 14, 16, 20, 24, 28, 32)


@lru_cache(maxsize=None)
def terminus(size: int = 12, bold: bool = False) -> ImageFont.FreeTypeFont:
    """Terminus at one of TERMINUS_SIZES; FileNotFoundError names the package if it is missing."""
    if size not in TERMINUS_SIZES:
        raise ValueError(f"Terminus has no {size} px bitmap (sizes: {TERMINUS_SIZES})")
    path = TERMINUS_DIR / ("terminus-bold.otb" if bold else "terminus-normal.otb")
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: install the Debian package fonts-terminus-otb")
    return ImageFont.truetype(str(path), size)
