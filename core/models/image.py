"""ResNet image encoder built from torchvision's blocks, with configurable depth and width."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from ..config import ImageEncoderConfig

__all__ = ["ResNetEncoder", "build_image_encoder", "PIXEL_MEAN", "PIXEL_STD"]

PIXEL_MEAN = 0.5
PIXEL_STD = 0.25


class ResNetEncoder(nn.Module):
    """A torchvision-style ResNet trunk that returns a feature map or a pooled vector.

    Unlike ``torchvision.models.ResNet`` it takes any number of input channels (1 for
    grayscale radiographs), any stage widths, and has no classifier.

    Parameters
    ----------
    config
        Depth (blocks per stage), stage widths, input channels.
    """

    def __init__(self, config: ImageEncoderConfig) -> None:
        super().__init__()
        block = {"basic": BasicBlock, "bottleneck": Bottleneck}[config.block]
        stem_width = config.widths[0]
        self.config = config
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_chans, stem_width, kernel_size=7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(stem_width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        stages = []
        in_planes = stem_width
        for index, (depth, width) in enumerate(zip(config.layers, config.widths)):
            stride = 1 if index == 0 else 2
            blocks = []
            for b in range(depth):
                downsample = None
                out_planes = width * block.expansion
                if b == 0 and (stride != 1 or in_planes != out_planes):
                    downsample = nn.Sequential(
                        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
                        nn.BatchNorm2d(out_planes),
                    )
                blocks.append(block(in_planes, width, stride if b == 0 else 1, downsample))
                in_planes = out_planes
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.out_dim = in_planes
        self.stride = 4 * 2 ** (len(config.layers) - 1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` images in ``[0, 1]`` to a ``(B, out_dim, H/stride, W/stride)`` map.

        Normalisation lives here, not in the data pipeline, so every caller (pretraining,
        sweeps, exported weights) feeds the same ``[0, 1]`` pixels.
        """
        return self.stages(self.stem((images - PIXEL_MEAN) / PIXEL_STD))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` images to ``(B, out_dim)`` globally average-pooled features."""
        return self.forward_features(images).mean(dim=(2, 3))


def build_image_encoder(config: ImageEncoderConfig) -> ResNetEncoder:
    """Build the image encoder described by ``config`` with random weights."""
    return ResNetEncoder(config)
