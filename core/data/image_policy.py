"""What an image reader may refuse and what a source accepts: :class:`ImageDecodeError` with its
``reason`` codes and :class:`ImagePolicy`.

Shared by :mod:`.images` (PNG, JPEG, TIFF) and :mod:`.dicom`, which both raise and read these;
:mod:`.images` hands DICOM files to :mod:`.dicom`, so these live apart from both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_POLICY", "IMAGE_REASONS", "MAX_PIXELS", "ImageDecodeError", "ImagePolicy"]

# Larger than any real radiograph (MIMIC's biggest are ~4k x 3k); a bigger file is malformed
# or a decompression bomb and would exhaust a worker's memory.
MAX_PIXELS = 8192 * 8192

IMAGE_REASONS = (
    "image_missing",
    "image_not_file",
    "image_corrupt",
    "image_truncated",
    "image_huge",
    "image_16bit",
    "image_nonfinite",
    "image_rgb",
)


class ImageDecodeError(ValueError):
    """An image file is missing, corrupt, truncated or of a kind the policy rejects.

    ``reason`` is one of :data:`IMAGE_REASONS`; the message names the file.
    """

    def __init__(self, path: str | Path, reason: str, detail: str):
        self.path, self.reason, self.detail = Path(path), reason, detail
        super().__init__(f"{path}: {reason}: {detail}")


@dataclass(frozen=True)
class ImagePolicy:
    """Which non-standard images a source converts instead of skipping.

    Parameters
    ----------
    accept_16bit
        Rescale high-bit-depth images to 8 bits (by the percentile window of
        :func:`~fedvlp.core.data.display.percentile_window`, see :mod:`.images`) instead
        of skipping them as ``image_16bit``. DICOM files carry their own window and need no
        acceptance.
    accept_rgb
        Convert colour images to luminance instead of skipping them as ``image_rgb``.
    max_pixels
        Width x height above which a file is skipped as ``image_huge`` without being decoded.
    """

    accept_16bit: bool = False
    accept_rgb: bool = False
    max_pixels: int = MAX_PIXELS


DEFAULT_POLICY = ImagePolicy()
