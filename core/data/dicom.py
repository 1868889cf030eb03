"""Reading DICOM radiographs (pydicom) into the grey levels every other image gets.

:func:`decode_dicom` is what :func:`~fedvlp.core.data.images.decode_gray` calls for a DICOM file
(suffix ``.dcm``/``.dicom``/``.dic``, or the ``DICM`` marker at byte 128 of a file without an
image suffix, as PACS exports name them). The pixel pipeline follows PS3.3 C.7.6.3, C.11.1 and
C.11.2:

1. **Stored values.** Only the ``BitsStored`` low bits of each pixel are kept (whatever is in
   the other bits of ``BitsAllocated`` is dropped); with ``PixelRepresentation`` 1 they are a
   two's-complement number of ``BitsStored`` bits.
2. **Modality LUT.** ``RescaleSlope``/``RescaleIntercept``, or the first item of a
   ``ModalityLUTSequence`` (``pydicom.pixels.apply_modality_lut``).
3. **VOI.** The first item of a ``VOILUTSequence`` (preferred, as pydicom does) with its output
   ``0 .. 2^n - 1`` (``n`` the third value of its ``LUTDescriptor``) spread over ``[0, 1]``;
   else the first ``WindowCenter``/``WindowWidth`` pair with ``VOILUTFunction`` (``LINEAR``
   by default, ``LINEAR_EXACT``, ``SIGMOID``); else the percentile window of 16-bit PNGs
   (:func:`~fedvlp.core.data.display.percentile_window`, 0.5-99.5 %). A VOI LUT whose largest
   entry uses less than 1/16 of its declared range (the common ``n = 16`` for 12-bit data)
   is spread by the bits its entries actually use.
4. **MONOCHROME1** (low values white) is inverted into MONOCHROME2.

The result, in ``[0, 1]``, is rounded to 8 bits and resized (bilinear) like any other image.

Refused, with their reason codes (counted like the other ``image_*`` reasons):

================= ============================================================================
reason            when
================= ============================================================================
dicom_multiframe  ``NumberOfFrames`` > 1 (cine, tomosynthesis: not one radiograph)
dicom_color       ``PhotometricInterpretation`` not MONOCHROME1/2, or ``SamplesPerPixel`` != 1
dicom_burned_in   ``BurnedInAnnotation`` is ``YES``: identifying text may be in the pixels
dicom_not_image   no pixel data, ``Rows`` or ``Columns`` (reports, presentation states, DICOMDIR)
dicom_codec       a compressed transfer syntax no installed package decodes (the message says
                  which package would)
dicom_bad_header  a pixel-module value that contradicts the standard (``BitsStored`` >
                  ``BitsAllocated``, window width < 1, a VOI LUT of 9 or 17+ bits ...)
================= ============================================================================

plus ``image_missing``, ``image_corrupt``, ``image_truncated`` and ``image_huge`` (``Rows`` x
``Columns`` over the policy's limit, from the header) as for other images.

Nothing of the header leaves this module: it reads the pixel module, the Modality LUT and VOI
LUT modules, ``NumberOfFrames`` and ``BurnedInAnnotation``, and returns pixels only.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence as CollectionSequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .display import percentile_window, unit_to_gray, value_window
from .image_policy import DEFAULT_POLICY, ImageDecodeError, ImagePolicy

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = [
    "DICOM_REASONS",
    "DICOM_SUFFIXES",
    "MONOCHROME",
    "REFUSAL_TAGS",
    "decode_dicom",
    "dicom_header",
    "dicom_unit",
    "display_unit",
    "header_refusal",
    "is_dicom",
    "read_dicom",
    "stored_values",
]

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
DICOM_REASONS = (
    "dicom_multiframe",
    "dicom_color",
    "dicom_burned_in",
    "dicom_not_image",
    "dicom_codec",
    "dicom_bad_header",
)
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# What :func:`header_refusal` reads: importers read these (and their own few) and nothing else.
REFUSAL_TAGS = (
    "SOPClassUID",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BurnedInAnnotation",
)
# Files with these suffixes go to PIL without a look at their bytes: no extra read per image.
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".jp2", ".pgm", ".ppm"})
# Elements bigger than this are read from the file only when used: the header checks (size,
# frames, colour) run before the pixel data is loaded.
_DEFER_SIZE = "256 KB"
# Which package decodes which compressed transfer syntax (pydicom's own plugins cover RLE).
_CODEC_PACKAGES = {
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg (fedvlp[dicom-codecs]) or python-gdcm",
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg (fedvlp[dicom-codecs]) or python-gdcm",
    "1.2.840.10008.1.2.4.80": "pylibjpeg-libjpeg (fedvlp[dicom-codecs]) or python-gdcm",
    "1.2.840.10008.1.2.4.81": "pylibjpeg-libjpeg (fedvlp[dicom-codecs]) or python-gdcm",
    "1.2.840.10008.1.2.4.51": "pylibjpeg-libjpeg (fedvlp[dicom-codecs]) or python-gdcm",
}


def _quiet_pydicom() -> None:
    """pydicom logs every failed decode attempt with a traceback at ERROR; fedvlp turns the
    failure into a reason code and a one-line detail instead. A pydicom logger at another level
    than pydicom's own default (WARNING) was set by the user and is left alone."""
    logger = logging.getLogger("pydicom")
    if logger.level in (logging.NOTSET, logging.WARNING):
        logger.setLevel(logging.CRITICAL)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def is_dicom(path: str | Path) -> bool:
    """Whether ``path`` is read as DICOM: a DICOM suffix, or no image suffix and the ``DICM``
    marker at byte 128 (a missing or unreadable file is not DICOM: PIL reports it)."""
    suffix = Path(path).suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix in _IMAGE_SUFFIXES:
        return False
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def read_dicom(path: str | Path, stop_before_pixels: bool = False, specific_tags: list[Any] | None = None) -> Dataset:
    """``pydicom.dcmread`` with fedvlp's errors: a missing file is ``image_missing``, a file that
    is not DICOM ``image_corrupt``. A ``.dcm`` file without the 128-byte preamble is read too.

    Raises
    ------
    ImageDecodeError
        With the reason code; the message names the file.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    _quiet_pydicom()
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # pydicom warns about every non-conforming value (a lower-case code string, a long
            # UID ...): nothing a site can act on per image, and the outcome has its reason code
            warnings.simplefilter("ignore")
            return pydicom.dcmread(
                path,
                defer_size=None if stop_before_pixels else _DEFER_SIZE,
                stop_before_pixels=stop_before_pixels,
                force=path.suffix.lower() in DICOM_SUFFIXES,
                specific_tags=specific_tags,
            )
    except FileNotFoundError as err:
        raise ImageDecodeError(path, "image_missing", "file not found") from err
    except IsADirectoryError as err:
        raise ImageDecodeError(path, "image_missing", "is a folder, not a file") from err
    except EOFError as err:
        raise ImageDecodeError(path, "image_truncated", f"DICOM file ends early ({err})") from err
    except (InvalidDicomError, OSError, ValueError, KeyError, TypeError, AttributeError, NotImplementedError) as err:
        raise ImageDecodeError(
            path, "image_corrupt", f"not a readable DICOM file ({type(err).__name__}: {_one_line(err)})"
        ) from err


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int | None:
    value = ds.get(keyword, default)
    if value is None or value == "":
        return default
    return int(value)


def header_refusal(ds: Dataset) -> tuple[str, str] | None:
    """``(reason, detail)`` when fedvlp does not train on this object, else ``None``.

    Reads only :data:`REFUSAL_TAGS`, so a header read with
    ``stop_before_pixels`` (the importer) gets the same answer as the reader.
    """
    try:
        rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
        frames = _int(ds, "NumberOfFrames", 1)
        samples = _int(ds, "SamplesPerPixel", 1)
    except (TypeError, ValueError) as err:
        return "dicom_bad_header", f"Rows/Columns/NumberOfFrames/SamplesPerPixel not integers ({err})"
    if not rows or not columns:
        meta = getattr(ds, "file_meta", None)
        sop_class = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
        if not sop_class:
            return "image_corrupt", "no SOPClassUID, Rows or Columns: not a DICOM object, or cut short"
        return "dicom_not_image", f"no Rows/Columns (SOP class {sop_class}): not an image"
    if frames is not None and frames > 1:
        return "dicom_multiframe", f"{frames} frames; fedvlp reads single-frame radiographs"
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in MONOCHROME or samples != 1:
        return (
            "dicom_color",
            f"PhotometricInterpretation {photometric or '(none)'} with {samples} samples per pixel; expected "
            "MONOCHROME1/2 grey",
        )
    if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        return "dicom_burned_in", "BurnedInAnnotation is YES: the pixels may show identifying text"
    return None


def stored_values(raw: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """The ``bits_stored`` low bits of every pixel as integers (two's complement when ``signed``).

    Bits above ``bits_stored`` (overlays in old files, or junk) are ignored; the result is
    ``int32`` (``int64`` for 32-bit pixels).
    """
    width = 8 * raw.dtype.itemsize
    if bits_stored > width:
        raise ValueError(f"BitsStored {bits_stored} in {width}-bit pixels")
    # in the pixels' own width (fast), then one widening copy
    unsigned = raw.view(f"u{raw.dtype.itemsize}")
    if bits_stored < width:
        unsigned = unsigned & unsigned.dtype.type((1 << bits_stored) - 1)
    if signed:
        values = unsigned.view(f"i{raw.dtype.itemsize}")
        if bits_stored < width:
            shift = values.dtype.type(width - bits_stored)
            values = (values << shift) >> shift  # arithmetic shift: sign extension from bit bits_stored - 1
    else:
        values = unsigned
    return values.astype(np.int32 if width < 32 else np.int64)


def _first(value: Any) -> float:
    """The first of a multi-valued DS (several windows: the first is the default one)."""
    if isinstance(value, CollectionSequence) and not isinstance(value, str):
        value = value[0]
    return float(value)


def _voi_lut(values: np.ndarray, ds: Dataset) -> np.ndarray:
    from pydicom.pixels.processing import apply_voi

    item = ds.VOILUTSequence[0]
    entries, first_map, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 1 << 16  # PS3.3 C.11.1.1.1: 0 means 2^16 entries
    if not 8 <= bits <= 16 or bits == 9:
        raise ValueError(f"VOI LUT of {bits} bits per entry; expected 8 or 10-16")
    # Clip to the LUT's input range here (as the standard says) so that the lookup never sees
    # an index outside its table.
    indices = np.clip(np.rint(values), first_map, first_map + entries - 1).astype(np.int64)
    out = apply_voi(indices, ds, index=0).astype(np.float32)
    top = float(out.max()) if out.size else 0.0
    scale = float((1 << bits) - 1)
    if 0 < top < scale / 16:
        # n = 16 declared for 12-bit data is common: spread by the bits the entries use
        scale = float((1 << max(1, math.ceil(math.log2(top + 1)))) - 1)
    return out / np.float32(scale)


def display_unit(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """Modality values -> ``[0, 1]`` (VOI LUT, else window, else percentile window), MONOCHROME1
    inverted. ``float32``.

    Raises
    ------
    ValueError
        For a window or VOI LUT the standard does not allow.
    """
    if ds.get("VOILUTSequence"):
        unit = _voi_lut(values, ds)
    elif ds.get("WindowCenter") not in (None, "") and ds.get("WindowWidth") not in (None, ""):
        unit = value_window(
            values, _first(ds.WindowCenter), _first(ds.WindowWidth), str(ds.get("VOILUTFunction", "") or "LINEAR")
        )
    else:
        unit = percentile_window(values)
    if str(ds.PhotometricInterpretation).strip().upper() == "MONOCHROME1":
        unit = np.float32(1.0) - unit
    return unit


def _check(ds: Dataset, path: Path, policy: ImagePolicy, pixels: bool) -> None:
    refusal = header_refusal(ds)
    if refusal is None and pixels and "PixelData" not in ds:
        refusal = ("dicom_not_image", "no PixelData element")
    if refusal is not None:
        raise ImageDecodeError(path, *refusal)
    rows, columns = int(ds.Rows), int(ds.Columns)
    if rows * columns > policy.max_pixels:
        raise ImageDecodeError(path, "image_huge", f"{columns}x{rows} exceeds {policy.max_pixels} pixels")


def _codec_check(ds: Dataset, path: Path) -> None:
    from pydicom.pixels.decoders.base import get_decoder

    file_meta = getattr(ds, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if syntax is None or not syntax.is_compressed:
        return
    try:
        available = get_decoder(syntax).is_available
    except NotImplementedError:
        available = False
    if not available:
        package = _CODEC_PACKAGES.get(str(syntax), "python-gdcm")
        raise ImageDecodeError(
            path, "dicom_codec", f"transfer syntax {syntax.name} ({syntax}): no installed decoder; install {package}"
        )


def dicom_unit(path: str | Path, policy: ImagePolicy = DEFAULT_POLICY) -> np.ndarray:
    """The display values of a DICOM file in ``[0, 1]`` (``float32``, ``Rows x Columns``).

    Raises
    ------
    ImageDecodeError
        With the reason code (module docstring); the message names the file.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as in read_dicom: values are parsed when first used
        return _dicom_unit(Path(path), policy)


def _dicom_unit(path: Path, policy: ImagePolicy) -> np.ndarray:
    from pydicom.pixels.processing import apply_modality_lut
    from pydicom.pixels.utils import pixel_array

    ds = read_dicom(path)
    _check(ds, path, policy, pixels=True)
    try:
        allocated, bits = int(ds.BitsAllocated), int(ds.BitsStored)
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    except (AttributeError, TypeError, ValueError) as err:
        raise ImageDecodeError(
            path, "dicom_bad_header", f"BitsAllocated/BitsStored/PixelRepresentation missing or not integers ({err})"
        ) from err
    if not 1 <= bits <= allocated <= 32:
        raise ImageDecodeError(
            path,
            "dicom_bad_header",
            f"BitsStored {bits} with BitsAllocated {allocated}; expected 1 <= BitsStored <= BitsAllocated <= 32",
        )
    _codec_check(ds, path)
    try:
        # the unused high bits are dropped by stored_values below, not by pydicom (one rule, tested here)
        raw = pixel_array(ds, raw=True, correct_unused_bits=False)
    except (EOFError, ValueError) as err:
        text = str(err).lower()
        reason = (
            "image_truncated"
            if ("less than expected" in text or "truncat" in text or "end of" in text or isinstance(err, EOFError))
            else "image_corrupt"
        )
        raise ImageDecodeError(path, reason, f"cannot decode the pixel data ({_one_line(err)})") from err
    except (RuntimeError, NotImplementedError) as err:
        raise ImageDecodeError(path, "dicom_codec", f"cannot decode the pixel data ({_one_line(err)})") from err
    except (OSError, KeyError, TypeError, AttributeError) as err:
        raise ImageDecodeError(path, "image_corrupt", f"cannot decode the pixel data ({_one_line(err)})") from err
    if raw.ndim != 2:
        raise ImageDecodeError(path, "dicom_bad_header", f"pixel array of shape {raw.shape}; expected Rows x Columns")
    try:
        values = apply_modality_lut(stored_values(raw, bits, signed), ds)
        return display_unit(values, ds)
    except (ValueError, TypeError, IndexError, AttributeError, NotImplementedError) as err:
        raise ImageDecodeError(
            path, "dicom_bad_header", f"Modality/VOI LUT or window not usable ({type(err).__name__}: {err})"
        ) from err


def decode_dicom(path: str | Path, policy: ImagePolicy = DEFAULT_POLICY, size: int | None = None) -> Image.Image:
    """A DICOM file as an 8-bit grey (mode ``L``) PIL image, resized to ``size x size`` when given.

    Raises
    ------
    ImageDecodeError
        With the reason code (module docstring); the message names the file.
    """
    return unit_to_gray(dicom_unit(path, policy), size)


def dicom_header(path: str | Path, policy: ImagePolicy = DEFAULT_POLICY) -> tuple[int, int, str]:
    """``(width, height, mode)`` from the header alone, after the header refusals and the size
    check; ``mode`` is e.g. ``DICOM MONOCHROME1 12-bit``.

    Raises
    ------
    ImageDecodeError
        With the reason code.
    """
    path = Path(path)
    ds = read_dicom(path, stop_before_pixels=True)
    _check(ds, path, policy, pixels=False)
    return (
        int(ds.Columns),
        int(ds.Rows),
        f"DICOM {str(ds.PhotometricInterpretation).strip()} {ds.get('BitsStored', '?')}-bit",
    )
