"""Decoding radiographs from disk into normalised grayscale tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["ImageDecodeError", "load_image", "MAX_PIXELS"]

# Larger than any real radiograph (MIMIC's biggest are ~4k x 3k); a bigger file is malformed
# or a decompression bomb and would exhaust a worker's memory.
MAX_PIXELS = 8192 * 8192


class ImageDecodeError(ValueError):
    """An image file is missing, corrupt, truncated or of an unsupported kind."""


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """Read an image file as a ``(1, size, size)`` float tensor with values in ``[0, 1]``.

    8-bit and 16-bit grayscale and RGB files are accepted (RGB is converted to luminance,
    16-bit is rescaled by its own maximum). The image is resized to ``size x size``.

    Raises
    ------
    ImageDecodeError
        When the file is missing, unreadable, truncated or absurdly large; the message names it.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ImageDecodeError(f"{path}: {img.width}x{img.height} exceeds {MAX_PIXELS} pixels")
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(img, dtype=np.float32)
                peak = float(array.max()) or 1.0
                img = Image.fromarray((array / peak * 255.0).astype(np.uint8))
            elif img.mode != "L":
                img = img.convert("L")
            img = img.resize((size, size), Image.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except ImageDecodeError:
        raise
    except FileNotFoundError as err:
        raise ImageDecodeError(f"{path}: file not found") from err
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ImageDecodeError(f"{path}: cannot decode image ({err})") from err
    return torch.from_numpy(array.copy()).unsqueeze(0).float().div_(255.0)
