"""Masked image regeneration quality (masked-patch recipes): MSE, PSNR, SSIM and a PNG grid.

Test images get the pretraining mask (``mask-ratio`` of the ``mim-patch`` patches set to
mid-grey), the model regenerates them through its MIM head, and the *regenerated image*
(original pixels where nothing was masked, the model's pixels in the masked patches,
clipped to ``[0, 1]``) is compared with the original: MSE, PSNR (data range 1) and SSIM
(Wang et al. 2004: Gaussian window sigma 1.5, 11 taps, K1 0.01, K2 0.03, population
statistics, mean over the positions whose window lies inside the image; equal to
``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)``). ``mse_masked`` is the MSE over masked pixels only.

Supported: the ResNet + BERT family with a ``head.mim`` (recipe ``mixed``: SimMIM masks of
grey patches) and the shared transformer (``uwox``, ``unit``: masked patch tokens through the
multi-scale decoder; the grid shows those patches grey). Other models raise a ``ValueError``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ..models.protocol import VLPModel

__all__ = [
    "gaussian_window",
    "ssim",
    "psnr",
    "mse",
    "supports_regeneration",
    "regenerate",
    "regeneration_metrics",
    "save_grid",
]


def gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> torch.Tensor:
    """A normalised 1-D Gaussian of radius ``int(truncate * sigma + 0.5)`` (11 taps at sigma 1.5)."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _filter(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' filtering of ``(B, 1, H, W)`` (no padding: border positions are dropped)."""
    x = F.conv2d(x, w.view(1, 1, -1, 1))
    return F.conv2d(x, w.view(1, 1, 1, -1))


def ssim(
    a: torch.Tensor | np.ndarray,
    b: torch.Tensor | np.ndarray,
    data_range: float = 1.0,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Mean SSIM per image of ``(B, 1, H, W)`` (or one ``(H, W)``) batches, as float64 ``(B,)``.

    Raises
    ------
    ValueError
        When an image is smaller than the window.
    """
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    if a.ndim == 2:
        a, b = a[None, None], b[None, None]
    if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 1:
        raise ValueError(
            f"ssim needs two (B, 1, H, W) or (H, W) arrays of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    w = gaussian_window(sigma)
    if min(a.shape[-2:]) < len(w):
        raise ValueError(f"images of {tuple(a.shape[-2:])} px are smaller than the {len(w)}-tap SSIM window")
    mu_a, mu_b = _filter(a, w), _filter(b, w)
    var_a = _filter(a * a, w) - mu_a**2
    var_b = _filter(b * b, w) - mu_b**2
    cov = _filter(a * b, w) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean(dim=(1, 2, 3))


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image, float64 ``(B,)``."""
    d = torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)
    return d.pow(2).flatten(1).mean(1)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image in dB, ``10 log10(range^2 / MSE)`` (inf for identical images)."""
    return 10.0 * torch.log10(data_range**2 / mse(a, b))


def supports_regeneration(model: VLPModel) -> bool:
    """Whether ``model`` has a masked-image head (cnn ``mixed``, or ``uwox`` / ``unit``)."""
    return model.supports_regeneration()


@torch.no_grad()
def regenerate(
    model: VLPModel, images: torch.Tensor, seed: int = 0, batch_size: int = 128, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask ``images`` as in pretraining and regenerate them.

    Returns
    -------
    (masked, regenerated, mask)
        The grey-masked input, the regenerated image (see the module docstring) and the
        ``(B, 1, S, S)`` mask; the same ``seed`` gives the same masks.
    """
    if not model.supports_regeneration():
        raise ValueError(
            f"regeneration needs a masked-patch (MIM) head (recipes mixed, uwox, unit); {type(model).__name__} has none"
        )
    model.eval().to(device)
    masked_out, regen_out, masks = [], [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].to(device)
            mask, prediction = model.regenerate_masked(x)
            corrupted = x.masked_fill(mask, 0.5)
            masked_out.append(corrupted.cpu())
            regen_out.append(torch.where(mask, prediction, x).cpu())
            masks.append(mask.cpu())
    return torch.cat(masked_out), torch.cat(regen_out), torch.cat(masks)


def regeneration_metrics(
    model: VLPModel, images: torch.Tensor, seed: int = 0, device: str = "cpu"
) -> tuple[list[tuple[str, str, float]], tuple[torch.Tensor, torch.Tensor]]:
    """``(metric, "mean", value)`` rows (``mse``, ``mse_masked``, ``psnr``, ``ssim``) and the
    ``(masked, regenerated)`` images for a grid."""
    masked, regenerated, mask = regenerate(model, images, seed, device=device)
    diff = (regenerated.double() - images.double()).pow(2)
    m = mask.expand_as(diff)
    masked_mse = float(diff[m].mean()) if bool(m.any()) else math.nan
    values = psnr(regenerated, images)
    rows = [
        ("mse", "mean", float(mse(regenerated, images).mean())),
        ("mse_masked", "mean", masked_mse),
        (
            "psnr",
            "mean",
            float(values[torch.isfinite(values)].mean()) if bool(torch.isfinite(values).any()) else math.inf,
        ),
        ("ssim", "mean", float(ssim(regenerated, images).mean())),
    ]
    return rows, (masked, regenerated)


def save_grid(
    path: str | Path,
    originals: torch.Tensor,
    masked: torch.Tensor,
    regenerated: torch.Tensor,
    n: int = 8,
    scale: int = 2,
) -> Path:
    """A PNG with three rows (originals / masked / regenerated) of the first ``n`` images."""
    from PIL import Image

    n = min(n, len(originals))
    rows = [torch.cat(list(t[:n, 0].float().clamp(0, 1)), dim=1) for t in (originals, masked, regenerated)]
    grid = torch.cat(rows, dim=0).numpy()
    image = Image.fromarray((grid * 255).round().astype(np.uint8), mode="L")
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
