"""Decoding radiographs from disk into normalised grayscale tensors, with the checks that
training and ``fedvlp validate-site`` share.

Every rejected file raises :class:`ImageDecodeError` with a stable ``reason`` code, which is
what the skip counters (``skipped/<reason>`` in a client's round metrics) are keyed by:

============== ==============================================================================
reason         when
============== ==============================================================================
image_missing  the file does not exist
image_not_file the path is not a regular file (a folder, FIFO, socket or device): never opened,
               so a FIFO cannot hang a reader
image_corrupt  not an image PIL can identify, or its data stream is broken
image_truncated the header is fine but the file ends early
image_huge     more pixels than the limit (checked from the header, before any decoding)
image_16bit    a high-bit-depth file (16-bit PNG/TIFF, 32-bit int or float, signed 8-bit TIFF),
               unless accepted
image_nonfinite an accepted float image holds NaN or infinite pixels (no range to scale them by)
image_rgb      a colour image whose channels differ, unless accepted
============== ==============================================================================

A colour-mode file (RGB, RGBA, LA, P, CMYK...) whose channels are equal (a grey radiograph saved
as RGB, common in JPEG exports) is grey and accepted.

DICOM files (``.dcm``, or the ``DICM`` marker in a file without an image suffix) are read by
:mod:`.dicom` with their own display transform and reasons.

High-bit-depth images (accepted with ``16bit``) are read with their real sample type (a TIFF's
SampleFormat tag: signed, unsigned or float; PIL reads a signed 8-bit TIFF as unsigned and an
unsigned 32-bit one as signed, both are reinterpreted) and carry no window, so they get the
percentile window of :func:`~fedvlp.core.data.display.percentile_window` (the 0.5th..99.5th
percentile onto 0..255; signed data such as Hounsfield units -1000..1000 keeps its order,
nothing wraps around). A constant image becomes all black. NaN or infinite pixels: the file is
skipped as ``image_nonfinite`` (a NaN has no place on the scale, and replacing it would invent
pixels).
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .dicom import decode_dicom, dicom_header, is_dicom
from .display import percentile_window, unit_to_gray
from .image_policy import DEFAULT_POLICY, IMAGE_REASONS, MAX_PIXELS, ImageDecodeError, ImagePolicy

__all__ = [
    "ImageDecodeError",
    "ImagePolicy",
    "DEFAULT_POLICY",
    "load_image",
    "check_header",
    "decode_gray",
    "MAX_PIXELS",
    "IMAGE_REASONS",
]

# JPEG's YCbCr round trip can leave +-1 differences between the channels of a grey image.
GREY_TOLERANCE = 2

_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _check_regular(path: Path) -> None:
    """Stat ``path`` before anything opens it: opening a FIFO blocks until a writer comes."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError) as err:
        raise ImageDecodeError(path, "image_missing", "file not found") from err
    except OSError as err:
        raise ImageDecodeError(path, "image_missing", f"cannot stat ({err.strerror})") from err
    if not stat.S_ISREG(mode):
        raise ImageDecodeError(path, "image_not_file", f"{_file_kind(mode)}, not a regular file")


def _open_checked(path: Path, policy: ImagePolicy) -> Image.Image:
    """Open ``path`` (header only) and apply the size check; the caller closes the image."""
    _check_regular(path)
    try:
        with warnings.catch_warnings():
            # Our own limit decides; PIL's warning threshold would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except FileNotFoundError as err:
        raise ImageDecodeError(path, "image_missing", "file not found") from err
    except IsADirectoryError as err:  # replaced between the stat and the open
        raise ImageDecodeError(path, "image_not_file", "a folder, not a regular file") from err
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(path, "image_huge", str(err)) from err
    except (OSError, ValueError, SyntaxError) as err:
        # the header itself is unreadable: corrupt (truncated means the header is fine)
        raise ImageDecodeError(path, "image_corrupt", f"cannot identify image ({err})") from err
    if img.width * img.height > policy.max_pixels:
        img.close()
        raise ImageDecodeError(path, "image_huge", f"{img.width}x{img.height} exceeds {policy.max_pixels} pixels")
    return img


def _tiff_sample(img: Image.Image) -> tuple[int, int] | None:
    """``(SampleFormat, BitsPerSample)`` of a TIFF (1 unsigned, 2 signed, 3 float), else None."""
    if img.format != "TIFF":
        return None
    tags = getattr(img, "tag_v2", {})
    fmt, bits = tags.get(339, 1), tags.get(258, 8)

    def first(value: Any) -> int:  # one value per channel
        return int(value[0] if isinstance(value, tuple) else value)

    return first(fmt), first(bits)


def _is_high_depth(img: Image.Image) -> bool:
    """16/32-bit and float modes, and a signed 8-bit TIFF (which PIL reads as plain ``L``)."""
    return img.mode in _HIGH_DEPTH_MODES or (img.mode == "L" and _tiff_sample(img) == (2, 8))


def _high_depth_to_gray(path: Path, img: Image.Image) -> Image.Image:
    """An 8-bit grey image of ``img`` read with its real sample type, by the percentile window."""
    array = np.asarray(img)
    sample = _tiff_sample(img)
    if sample == (2, 8) and array.dtype == np.uint8:
        array = array.view(np.int8)
    elif sample == (1, 32) and array.dtype == np.int32:
        array = array.view(np.uint32)
    values = array.astype(np.float32)  # exact for 16-bit data; half the memory of float64
    finite = np.isfinite(values)
    if not finite.all():
        bad = int(values.size - np.count_nonzero(finite))
        raise ImageDecodeError(path, "image_nonfinite", f"{bad} of {values.size} pixels are NaN or infinite")
    return unit_to_gray(percentile_window(values))


def _error_reason(err: BaseException) -> str:
    text = str(err).lower()
    return "image_truncated" if "truncat" in text or "premature end" in text else "image_corrupt"


def check_header(path: str | Path, policy: ImagePolicy = DEFAULT_POLICY) -> tuple[int, int, str]:
    """Open only the header of ``path``: ``(width, height, mode)``.

    Catches missing, unidentifiable, huge and (unless accepted) high-bit-depth files without
    decoding pixels; colour and truncation need :func:`decode_gray`.

    Raises
    ------
    ImageDecodeError
        With the reason code.
    """
    path = Path(path)

    if is_dicom(path):
        return dicom_header(path, policy)
    img = _open_checked(path, policy)
    with img:
        if _is_high_depth(img) and not policy.accept_16bit:
            raise ImageDecodeError(
                path, "image_16bit", f"mode {img.mode}; add 16bit to the source's accept list to rescale it"
            )
        return img.width, img.height, img.mode


def decode_gray(path: str | Path, policy: ImagePolicy = DEFAULT_POLICY, size: int | None = None) -> Image.Image:
    """Decode ``path`` into an 8-bit grayscale (mode ``L``) PIL image, applying ``policy``.

    Parameters
    ----------
    size
        When given, the image is resized (bilinear) to ``size x size``, and a JPEG is decoded
        at the smallest DCT scale that is still at least this big (much faster for large files).

    Raises
    ------
    ImageDecodeError
        With the reason code (see the module docstring).
    """
    path = Path(path)

    if is_dicom(path):
        return decode_dicom(path, policy, size)
    img = _open_checked(path, policy)
    try:
        with img:
            grey = _to_gray(path, img, policy, size)
            if size is not None and grey.size != (size, size):
                return grey.resize((size, size), Image.Resampling.BILINEAR)
            # closing ``img`` frees its pixels: hand out a copy when no conversion made one
            return grey.copy() if grey is img else grey
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(path, "image_huge", str(err)) from err
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise ImageDecodeError(path, _error_reason(err), f"cannot decode image ({err})") from err


def _to_gray(path: Path, img: Image.Image, policy: ImagePolicy, draft_size: int | None) -> Image.Image:
    """``img`` itself when it is 8-bit grey, else a grey conversion (or a rejection)."""
    mode = img.mode
    high_depth = _is_high_depth(img)
    if high_depth and not policy.accept_16bit:
        raise ImageDecodeError(path, "image_16bit", f"mode {mode}; add 16bit to the source's accept list to rescale it")
    if draft_size is not None and img.format == "JPEG":
        img.draft(mode, (draft_size, draft_size))  # keep the mode: colour must stay visible
    img.load()
    if high_depth:
        return _high_depth_to_gray(path, img)
    if mode == "L":
        return img
    if mode == "1":
        return img.convert("L")
    if mode == "LA":
        return img.getchannel("L")
    rgb = img.convert("RGB")
    if policy.accept_rgb:
        return rgb.convert("L")
    channels = np.asarray(rgb, dtype=np.int16)
    spread = max(
        int(np.abs(channels[..., 0] - channels[..., 1]).max()), int(np.abs(channels[..., 0] - channels[..., 2]).max())
    )
    if spread > GREY_TOLERANCE:
        raise ImageDecodeError(
            path,
            "image_rgb",
            f"colour image (mode {mode}, channels differ by up to {spread}); add rgb to the source's accept list to "
            "convert it",
        )
    return rgb.getchannel("R")  # grey saved as colour: any channel is the image


def load_image(path: str | Path, size: int, policy: ImagePolicy = DEFAULT_POLICY) -> torch.Tensor:
    """Read an image file as a ``(1, size, size)`` float tensor with values in ``[0, 1]``.

    8-bit grayscale files are read as they are; grey images saved in a colour mode are
    accepted; 16-bit and colour images are converted only when ``policy`` accepts them.
    The image is resized (bilinear) to ``size x size``.

    Raises
    ------
    ImageDecodeError
        When the file is missing, corrupt, truncated, too large or rejected by ``policy``;
        ``err.reason`` is the skip reason and the message names the file.
    """
    array = np.array(decode_gray(path, policy, size), dtype=np.uint8)  # one copy, writable
    return torch.from_numpy(array).unsqueeze(0).float().div_(255.0)
