"""The display transform of high-bit-depth radiographs: values -> ``[0, 1]`` grey levels -> 8 bits.

DICOM files say how to display them (a window or a VOI LUT, see :mod:`.dicom`); 16-bit PNG/TIFF
exports and DICOM files without either do not. Both then get the same **percentile window**:
the values between the 0.5th and the 99.5th percentile of the image are spread linearly over
``[0, 1]`` and the 0.5 % darkest and brightest pixels are clipped. Scaling by the maximum, as
before, let a few saturated pixels (collimator edges, burned-in markers, detector defects) squeeze
the whole anatomy into a few grey levels; the percentiles ignore them.

The percentiles of a large image are taken on a regular subsample of at most
:data:`PERCENTILE_SAMPLES` pixels (every k-th row and column): deterministic, and within a grey
level of the exact ones for radiographs, at a fraction of the cost.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

__all__ = [
    "PERCENTILE_WINDOW",
    "PERCENTILE_SAMPLES",
    "WINDOW_FUNCTIONS",
    "percentile_bounds",
    "percentile_window",
    "value_window",
    "unit_to_gray",
]

PERCENTILE_WINDOW = (0.5, 99.5)
PERCENTILE_SAMPLES = 1 << 20
WINDOW_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def percentile_bounds(
    values: np.ndarray, low: float = PERCENTILE_WINDOW[0], high: float = PERCENTILE_WINDOW[1]
) -> tuple[float, float]:
    """``(lo, hi)``: the ``low`` and ``high`` percentiles of the finite values of a 2-D image.

    When they are equal (an image that is mostly one value) the minimum and maximum are used
    instead, so that a small bright object on a flat background stays visible.

    Raises
    ------
    ValueError
        When the image has no finite value.
    """
    step = max(1, math.ceil(math.sqrt(values.size / PERCENTILE_SAMPLES)))
    sample = np.asarray(values[::step, ::step] if values.ndim == 2 else values, dtype=np.float64).ravel()
    sample = sample[np.isfinite(sample)]
    if not sample.size:
        raise ValueError("no finite pixel value")
    lo, hi = (float(v) for v in np.percentile(sample, [low, high]))
    if hi <= lo:
        lo, hi = float(sample.min()), float(sample.max())
    return lo, hi


def percentile_window(
    values: np.ndarray, low: float = PERCENTILE_WINDOW[0], high: float = PERCENTILE_WINDOW[1]
) -> np.ndarray:
    """``values`` mapped linearly from ``[lo, hi]`` (:func:`percentile_bounds`) onto ``[0, 1]``, clipped.

    Returns a ``float32`` array; a flat image (one value) is all 0, and so are non-finite pixels.
    """
    lo, hi = percentile_bounds(values, low, high)
    out = np.array(values, dtype=np.float32)  # a copy: the operations below are in place
    out -= np.float32(lo)
    out *= np.float32(1.0 / (hi - lo)) if hi > lo else np.float32(0.0)
    np.clip(out, 0.0, 1.0, out=out)
    if np.issubdtype(np.asarray(values).dtype, np.floating):
        out[~np.isfinite(out)] = 0.0
    return out


def value_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """A DICOM window (PS3.3 C.11.2.1.2) onto ``[0, 1]`` as a ``float32`` array.

    ``LINEAR``: ``((x - (c - 0.5)) / (w - 1) + 0.5)`` clipped to ``[0, 1]`` (``x <= c - 0.5 - (w-1)/2``
    is 0, ``x > c - 0.5 + (w-1)/2`` is 1); ``LINEAR_EXACT``: ``(x - c) / w + 0.5`` clipped;
    ``SIGMOID``: ``1 / (1 + exp(-4 (x - c) / w))``. The standard's output range
    ``[ymin, ymax]`` is ``[0, 1]`` here.

    Raises
    ------
    ValueError
        For a width the function does not allow (``LINEAR`` needs ``w >= 1``, the others
        ``w > 0``) or an unknown function.
    """
    function = (function or "LINEAR").strip().upper()
    if function not in WINDOW_FUNCTIONS:
        raise ValueError(f"VOI LUT Function {function!r}: expected one of {list(WINDOW_FUNCTIONS)}")
    if (
        not (math.isfinite(center) and math.isfinite(width))
        or width < (1.0 if function == "LINEAR" else 0.0)
        or width == 0.0
    ):
        raise ValueError(
            f"window width {width} (center {center}): expected {'>= 1' if function == 'LINEAR' else '> 0'} for "
            f"{function}"
        )
    # float32 and in place: a radiograph has millions of pixels, and 8 bits are the output
    out = np.array(values, dtype=np.float32)
    if function == "SIGMOID":
        out -= np.float32(center)
        out *= np.float32(-4.0 / width)
        np.exp(out, out=out)
        out += np.float32(1.0)
        np.reciprocal(out, out=out)
        return out
    if function == "LINEAR_EXACT":
        out -= np.float32(center)
        out *= np.float32(1.0 / width)
    elif width == 1.0:
        # w - 1 = 0: the standard's formula degenerates into a threshold at c - 0.5
        return (out > np.float32(center - 0.5)).astype(np.float32)
    else:
        out -= np.float32(center - 0.5)
        out *= np.float32(1.0 / (width - 1.0))
    out += np.float32(0.5)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def unit_to_gray(unit: np.ndarray, size: int | None = None) -> Image.Image:
    """A ``[0, 1]`` float image as an 8-bit grey (mode ``L``) PIL image, resized (bilinear) to
    ``size x size`` when given.

    The rounding to 8 bits comes first (as for every 8-bit file): resizing in mode ``L`` is
    several times faster than in float, and the grey levels differ by at most one.
    """
    levels = np.multiply(unit, np.float32(255.0), dtype=np.float32)
    np.rint(levels, out=levels)
    np.clip(levels, 0, 255, out=levels)
    image = Image.fromarray(levels.astype(np.uint8))  # mode L
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return image
