"""The display transform: DICOM windows and the percentile window of images that carry none."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedvlp.core.data.display import percentile_bounds, percentile_window, unit_to_gray, value_window
from fedvlp.core.data.images import ImagePolicy, load_image


def test_linear_window_follows_the_standard_formula() -> None:
    # c = 100, w = 21: 0 up to 89.5, 1 above 109.5, (x - 99.5) / 20 + 0.5 between
    out = value_window(np.array([89.0, 89.5, 90.0, 99.5, 109.0, 109.5, 110.0]), 100, 21)
    np.testing.assert_allclose(out, [0.0, 0.0, 0.025, 0.5, 0.975, 1.0, 1.0], atol=1e-7)


def test_a_linear_window_of_width_1_is_a_threshold_at_c_minus_half() -> None:
    assert value_window(np.array([9.0, 9.5, 9.6, 10.0]), 10, 1).tolist() == [0.0, 0.0, 1.0, 1.0]


def test_linear_exact_and_sigmoid_windows() -> None:
    np.testing.assert_allclose(
        value_window(np.array([-1.0, 40.0, 50.0, 75.0]), 50, 100, "LINEAR_EXACT"), [0.0, 0.4, 0.5, 0.75], atol=1e-7
    )
    # SIGMOID: 1 / (1 + exp(-4 (x - c) / w)); at x = c + w/4 that is 1 / (1 + e^-1)
    np.testing.assert_allclose(
        value_window(np.array([50.0, 75.0]), 50, 100, "SIGMOID"), [0.5, 1 / (1 + math.exp(-1))], atol=1e-7
    )


@pytest.mark.parametrize(
    ("width", "function"), [(0.5, "LINEAR"), (0.0, "LINEAR_EXACT"), (-3.0, "SIGMOID"), (10.0, "GAMMA")]
)
def test_a_window_the_standard_does_not_allow_raises(width: float, function: str) -> None:
    with pytest.raises(ValueError):
        value_window(np.zeros(3), 0, width, function)


def test_percentile_window_clips_the_outer_half_percent() -> None:
    values = np.arange(1000, dtype=np.float32).reshape(25, 40)  # 0 .. 999
    lo, hi = percentile_bounds(values)
    assert (lo, hi) == pytest.approx((4.995, 994.005))  # numpy's linear interpolation
    out = percentile_window(values)
    assert out[0, 0] == 0.0 and out[0, 4] == 0.0 and out[-1, -1] == 1.0
    assert out[12, 20] == pytest.approx((500 - lo) / (hi - lo), abs=1e-6)


def test_a_few_saturated_pixels_do_not_darken_the_image() -> None:
    values = np.full((100, 100), 1000.0, dtype=np.float32)
    values[:, 50:] = 2000.0
    values[0, :10] = 65535.0  # 0.1 % of the pixels saturated
    out = percentile_window(values)
    # the maximum would have put 2000 at 2000/65535 = 0.03; the 99.5th percentile is 2000
    assert out[50, 10] == 0.0 and out[50, 90] == 1.0


def test_a_flat_image_is_black_and_a_small_object_stays_visible() -> None:
    assert percentile_window(np.full((8, 8), 7.0)).max() == 0.0
    spot = np.zeros((100, 100))
    spot[0, 0] = 10.0  # both percentiles are 0: min and max are used
    out = percentile_window(spot)
    assert out[0, 0] == 1.0 and out[5, 5] == 0.0


def test_large_images_use_a_regular_subsample() -> None:
    values = np.tile(np.arange(2048, dtype=np.float32), (1024, 1))  # 2M pixels: every 2nd row and column
    # 1024 even values repeated 512 times: the 0.5 % point is the 2621st of 524288 sorted values
    assert percentile_bounds(values) == (10.0, 2036.0)


def test_unit_to_gray_rounds_to_8_bits_then_resizes() -> None:
    unit = np.array([[0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    gray = unit_to_gray(unit, 1)
    assert gray.mode == "L" and gray.size == (1, 1) and np.asarray(gray)[0, 0] in (127, 128)
    assert np.asarray(unit_to_gray(np.array([[0.2, 0.8]], dtype=np.float32))).tolist() == [[51, 204]]


def test_an_accepted_16bit_png_gets_the_percentile_window(tmp_path: Path) -> None:
    array = np.full((40, 40), 1000, dtype=np.uint16)
    array[:, 20:] = 3000
    array[0, 0] = 65535  # one saturated pixel
    path = tmp_path / "16.png"
    Image.fromarray(array).save(path)
    image = load_image(path, 40, ImagePolicy(accept_16bit=True))
    assert float(image[0, 5, 5]) == 0.0 and float(image[0, 5, 30]) == 1.0
