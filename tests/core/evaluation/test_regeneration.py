import numpy as np
import pytest
import torch

from fedvlp.core.evaluation.regeneration import gaussian_window, psnr, save_grid, ssim


def test_psnr_of_a_known_error():
    a = torch.zeros(1, 1, 16, 16)
    b = torch.full((1, 1, 16, 16), 0.1)  # MSE 0.01 -> 20 dB
    assert float(psnr(a, b)[0]) == pytest.approx(20.0)


def test_ssim_of_identical_images_is_one_and_of_constant_images_is_the_luminance_term():
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((1, 1, 24, 24)))
    assert float(ssim(image, image)[0]) == pytest.approx(1.0)
    a, b = 0.2, 0.6
    c1 = (0.01 * 1.0) ** 2  # variances and covariance are 0, so the contrast term is c2 / c2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert float(ssim(torch.full((16, 16), a), torch.full((16, 16), b))[0]) == pytest.approx(expected)


def test_gaussian_window_has_eleven_taps_at_sigma_one_and_a_half():
    w = gaussian_window(1.5)
    assert len(w) == 11 and float(w.sum()) == pytest.approx(1.0) and int(w.argmax()) == 5


def test_ssim_equals_skimage():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    a = rng.random((32, 32))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    expected = metrics.structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
    )
    assert float(ssim(a, b)[0]) == pytest.approx(expected, rel=1e-9)


def test_grid_png_has_three_rows_of_images(tmp_path):
    from PIL import Image

    images = torch.rand(4, 1, 8, 8)
    path = save_grid(tmp_path / "grid.png", images, images, images, n=3, scale=1)
    assert Image.open(path).size == (24, 24)


def test_ssim_equals_a_scipy_gaussian_filter_reference():
    """skimage's algorithm (Gaussian filter, population statistics, border of 5 px cropped) with scipy."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(2)
    a = rng.random((32, 32))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    g = lambda x: gaussian_filter(x, sigma=1.5, truncate=3.5, mode="reflect")  # noqa: E731
    ux, uy = g(a), g(b)
    vx, vy, vxy = g(a * a) - ux * ux, g(b * b) - uy * uy, g(a * b) - ux * uy
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    assert float(ssim(a, b)[0]) == pytest.approx(s[5:-5, 5:-5].mean(), rel=1e-9)


@pytest.mark.parametrize("recipe, supported", [("mixed", True), ("uwox", True), ("convirt", False)])
def test_regeneration_metrics_for_masked_patch_recipes_and_a_clear_error_otherwise(tiny_run, recipe, supported):
    from fedvlp.core.evaluation.regeneration import regenerate, regeneration_metrics, supports_regeneration
    from fedvlp.core.models import build_model

    model = build_model(tiny_run.replace(recipe=recipe))
    images = torch.rand(3, 1, 32, 32)
    assert supports_regeneration(model) is supported
    if not supported:
        with pytest.raises(ValueError, match="regeneration needs a masked-patch"):
            regenerate(model, images)
        return
    masked, regenerated, mask = regenerate(model, images, seed=0)
    assert mask.any() and not mask.all()
    assert torch.equal(regenerated[~mask], images[~mask]) and torch.all(masked[mask] == 0.5)
    again = regenerate(model, images, seed=0)[2]
    assert torch.equal(again, mask)  # the seed fixes the masks
    rows = dict(((m, v) for m, _, v in regeneration_metrics(model, images, seed=0)[0]))
    expected_mse = float(((regenerated.double() - images.double()) ** 2).mean())
    assert rows["mse"] == pytest.approx(expected_mse) and rows["mse_masked"] > rows["mse"]
    assert 0 < rows["ssim"] < 1
