"""ResNet image encoder built from torchvision's blocks, with configurable depth and width.

The blocks avoid in-place operations (torchvision's ``ReLU(inplace=True)`` and
``out += identity``): opacus' backward hooks cannot see a module output that is modified in
place. The results are the same; parameter names are torchvision's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from ..config import ImageEncoderConfig

__all__ = ["ResNetEncoder", "build_image_encoder", "group_norm", "PIXEL_MEAN", "PIXEL_STD"]

PIXEL_MEAN = 0.5
PIXEL_STD = 0.25


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm for ``channels``: the most groups up to 32 with at least 4 channels each.

    Used instead of BatchNorm under differential privacy (run-config ``norm = "group"``):
    BatchNorm mixes the samples of a batch, so per-sample gradients do not exist.
    """
    groups = max(g for g in range(1, min(32, max(1, channels // 4)) + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class _BasicBlock(BasicBlock):  # type: ignore[misc]  # torchvision ships no type information
    """torchvision's BasicBlock without in-place operations."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        result: torch.Tensor = self.relu(out + identity)
        return result


class _Bottleneck(Bottleneck):  # type: ignore[misc]  # torchvision ships no type information
    """torchvision's Bottleneck without in-place operations."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        result: torch.Tensor = self.relu(out + identity)
        return result


class ResNetEncoder(nn.Module):
    """A torchvision-style ResNet trunk that returns a feature map or a pooled vector.

    Unlike ``torchvision.models.ResNet`` it takes any number of input channels (1 for
    grayscale radiographs), any stage widths, and has no classifier.

    Parameters
    ----------
    config
        Depth (blocks per stage), stage widths, input channels.
    norm
        ``"batch"`` (BatchNorm) or ``"group"`` (GroupNorm, needed by DP-SGD). Parameter names
        are the same, but GroupNorm has no running statistics, so the state dicts differ and
        every site of a federation must use the same value (run-config key ``norm``).
    """

    def __init__(self, config: ImageEncoderConfig, norm: str = "batch") -> None:
        super().__init__()
        block_types: dict[str, type[_BasicBlock] | type[_Bottleneck]] = {
            "basic": _BasicBlock,
            "bottleneck": _Bottleneck,
        }
        block = block_types[config.block]
        norm_layers: dict[str, Callable[[int], nn.Module]] = {"batch": nn.BatchNorm2d, "group": group_norm}
        norm_layer = norm_layers[norm]
        self.norm = norm
        stem_width = config.widths[0]
        self.config = config
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_chans, stem_width, kernel_size=7, stride=2, padding=3, bias=False),
            norm_layer(stem_width),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        stages: list[nn.Module] = []
        in_planes = stem_width
        for index, (depth, width) in enumerate(zip(config.layers, config.widths)):
            stride = 1 if index == 0 else 2
            blocks: list[nn.Module] = []
            for b in range(depth):
                downsample = None
                out_planes = width * block.expansion
                if b == 0 and (stride != 1 or in_planes != out_planes):
                    downsample = nn.Sequential(
                        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
                        norm_layer(out_planes),
                    )
                blocks.append(block(in_planes, width, stride if b == 0 else 1, downsample, norm_layer=norm_layer))
                in_planes = out_planes
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.out_dim = in_planes
        self.stride = 4 * 2 ** (len(config.layers) - 1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def stage_modules(self) -> list[nn.Module]:
        """The stem, then each resolution stage (:class:`~fedvlp.core.models.stages.StagedEncoder`)."""
        return [self.stem, *self.stages]

    def forward_stages(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Run stages ``start`` to ``stop - 1``; stage 0 (the stem) takes ``[0, 1]`` images."""
        modules = self.stage_modules()
        for index in range(start, stop):
            if index == 0:
                # Normalisation lives here, not in the data pipeline, so every caller
                # (pretraining, sweeps, exported weights) feeds the same [0, 1] pixels.
                x = (x - PIXEL_MEAN) / PIXEL_STD
            x = modules[index](x)
        return x

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """Global average pooling of a feature map."""
        return features.mean(dim=(2, 3))

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` images in ``[0, 1]`` to a ``(B, out_dim, H/stride, W/stride)`` map."""
        return self.forward_stages(images, 0, len(self.stages) + 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` images to ``(B, out_dim)`` globally average-pooled features."""
        return self.pool(self.forward_features(images))


def build_image_encoder(config: ImageEncoderConfig, norm: str = "batch") -> ResNetEncoder:
    """Build the image encoder described by ``config`` with random weights (``norm``: see
    :class:`ResNetEncoder`)."""
    return ResNetEncoder(config, norm)
