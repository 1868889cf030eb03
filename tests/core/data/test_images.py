"""Image checks on real broken files: each rejection has its reason code and names the file."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedvlp.core.data.images import ImageDecodeError, ImagePolicy, check_header, load_image


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width x height`` 8-bit grey pixels but holds no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def grey_png(path: Path, level: int = 128, size: int = 40) -> Path:
    Image.fromarray(np.full((size, size), level, dtype=np.uint8), mode="L").save(path)
    return path


def truncated_png(path: Path) -> Path:
    """A real PNG of noise (so it does not compress away) cut in half: the header survives."""
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(noise, mode="L").save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def png16(path: Path, peak: int = 4000) -> Path:
    """A 16-bit grey PNG: left half 0, right half ``peak`` (12-bit range, as DICOM exports)."""
    array = np.zeros((40, 40), dtype=np.uint16)
    array[:, 20:] = peak
    Image.fromarray(array).save(path)
    return path


def colour_png(path: Path) -> Path:
    """An RGB PNG that is really colour: a grey radiograph with a red annotation square."""
    array = np.full((40, 40, 3), 100, dtype=np.uint8)
    array[5:15, 5:15] = (255, 0, 0)
    Image.fromarray(array, mode="RGB").save(path)
    return path


def grey_as_rgb_jpeg(path: Path, level: int = 90) -> Path:
    """A grey image saved as an RGB JPEG (the usual export of viewers)."""
    array = np.full((40, 40, 3), level, dtype=np.uint8)
    array[10:30, 10:30] = level + 60
    Image.fromarray(array, mode="RGB").save(path, quality=90)
    return path


def _reason(path: Path, policy: ImagePolicy = ImagePolicy()) -> str:
    with pytest.raises(ImageDecodeError) as info:
        load_image(path, 16, policy)
    assert str(path) in str(info.value)
    return info.value.reason


def test_a_missing_file(tmp_path: Path) -> None:
    assert _reason(tmp_path / "nope.png") == "image_missing"


def test_random_bytes_are_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\nnot a png at all")
    assert _reason(path) == "image_corrupt"


def test_a_png_cut_in_half_is_truncated(tmp_path: Path) -> None:
    assert _reason(truncated_png(tmp_path / "t.png")) == "image_truncated"


def test_a_16bit_png_is_skipped_by_default(tmp_path: Path) -> None:
    path = png16(tmp_path / "16.png")
    assert _reason(path) == "image_16bit"
    with pytest.raises(ImageDecodeError):
        check_header(path)  # the header alone tells


def test_an_accepted_16bit_png_spans_black_to_white(tmp_path: Path) -> None:
    image = load_image(png16(tmp_path / "16.png"), 40, ImagePolicy(accept_16bit=True))
    assert image.shape == (1, 40, 40)
    assert float(image[0, 0, 0]) == 0.0 and float(image[0, 0, 39]) == 1.0


def test_a_colour_png_is_skipped_by_default(tmp_path: Path) -> None:
    assert _reason(colour_png(tmp_path / "c.png")) == "image_rgb"


def test_an_accepted_colour_png_is_converted_to_luminance(tmp_path: Path) -> None:
    image = load_image(colour_png(tmp_path / "c.png"), 40, ImagePolicy(accept_rgb=True))
    # ITU-R 601-2 luma as PIL computes it: L = R * 299/1000 + G * 587/1000 + B * 114/1000
    assert round(float(image[0, 10, 10]) * 255) == 76 and round(float(image[0, 30, 30]) * 255) == 100


def test_grey_saved_as_rgb_jpeg_is_grey_and_accepted(tmp_path: Path) -> None:
    image = load_image(grey_as_rgb_jpeg(tmp_path / "g.jpg"), 40)
    assert abs(float(image[0, 20, 20]) * 255 - 150) <= 2 and abs(float(image[0, 2, 2]) * 255 - 90) <= 2


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_grey_in_other_colour_modes_is_accepted(tmp_path: Path, mode: str) -> None:
    path = tmp_path / f"g_{mode}.png"
    Image.fromarray(np.full((20, 20), 77, dtype=np.uint8), mode="L").convert(mode).save(path)
    assert round(float(load_image(path, 20)[0, 5, 5]) * 255) == 77


def test_a_huge_header_is_rejected_without_decoding(tmp_path: Path) -> None:
    # 9000 x 9000 = 81M pixels: above fedvlp's default limit (67M) but below PIL's own bomb check,
    # and the file holds no pixel data, so decoding would have said "corrupt" or "truncated".
    assert _reason(png_header_only(tmp_path / "h.png", 9000, 9000)) == "image_huge"
    assert _reason(png_header_only(tmp_path / "bomb.png", 100_000, 100_000)) == "image_huge"


def test_the_pixel_limit_is_configurable(tmp_path: Path) -> None:
    path = grey_png(tmp_path / "a.png", size=40)
    assert _reason(path, ImagePolicy(max_pixels=1599)) == "image_huge"
    assert load_image(path, 16, ImagePolicy(max_pixels=1600)).shape == (1, 16, 16)


def test_an_8bit_grey_png_is_read_and_resized(tmp_path: Path) -> None:
    image = load_image(grey_png(tmp_path / "a.png", level=51), 16)
    assert image.shape == (1, 16, 16) and float(image.min()) == float(image.max()) == pytest.approx(0.2)
