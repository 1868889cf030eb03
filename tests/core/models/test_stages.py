"""Image encoders as stacks of stages: split runs equal whole runs, locking freezes exactly the lower stages."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedvlp.core.config import ImageEncoderConfig
from fedvlp.core.models.image import ResNetEncoder
from fedvlp.core.models.stages import UpperStages, is_staged, lock_stages, num_stages, resolve_locked
from fedvlp.core.models.vit import ViTConfig, ViTEncoder


def _encoders() -> list[nn.Module]:
    torch.manual_seed(0)
    return [
        ResNetEncoder(ImageEncoderConfig(widths=(8, 16, 32, 64), image_size=32)),
        ViTEncoder(ViTConfig(image_size=32, patch_size=8, dim=32, depth=2, heads=2)),
    ]


@pytest.mark.parametrize("index", [0, 1])
def test_every_parameter_is_in_exactly_one_stage(index: int) -> None:
    encoder = _encoders()[index]
    staged = [id(p) for module in encoder.stage_modules() for p in module.parameters()]
    assert sorted(staged) == sorted(id(p) for p in encoder.parameters())
    assert len(staged) == len(set(staged))


@pytest.mark.parametrize("index", [0, 1])
@pytest.mark.parametrize("split", [0, 1, 2, 3])
def test_upper_stages_on_lower_output_equal_the_whole_encoder(index: int, split: int) -> None:
    encoder = _encoders()[index].eval()
    images = torch.rand(3, 1, 32, 32)
    upper = UpperStages(encoder, split)
    torch.testing.assert_close(upper(upper.lower(images)), encoder(images), rtol=0, atol=1e-6)


def test_lock_stages_freezes_the_lower_ones_only() -> None:
    encoder = _encoders()[0]
    assert is_staged(encoder) and num_stages(encoder) == 5
    assert lock_stages(encoder, 2) == 2
    stages = encoder.stage_modules()
    assert all(not p.requires_grad for m in stages[:2] for p in m.parameters())
    assert all(p.requires_grad for m in stages[2:] for p in m.parameters())
    assert resolve_locked(encoder, -1) == 5 and resolve_locked(encoder, 9) == 5


@pytest.mark.pretrained
def test_efficientnet_stages_match_the_package_forward() -> None:
    from fedvlp.core.models.pretrained import build_efficientnet_lite0_encoder

    encoder = build_efficientnet_lite0_encoder(64).eval()
    assert num_stages(encoder) == 9  # stem, 7 MBConv stages, head conv
    images = torch.rand(2, 1, 64, 64)
    expected = encoder.net.extract_features(
        (images.expand(-1, 3, -1, -1) - encoder.pixel_mean) / encoder.pixel_std
    ).mean(dim=(2, 3))
    torch.testing.assert_close(encoder(images), expected, rtol=0, atol=1e-6)
    upper = UpperStages(encoder, 6)
    torch.testing.assert_close(upper(upper.lower(images)), expected, rtol=0, atol=1e-5)
