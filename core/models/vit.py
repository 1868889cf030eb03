"""Vision Transformer image encoder for grayscale radiographs (plain torch, no torchvision stem).

``torchvision.models.VisionTransformer`` hard-codes a 3-channel stem; this module is a
standard pre-norm ViT (Dosovitskiy et al.) written out so that it takes ``(B, 1, H, W)``
images in ``[0, 1]``, normalises them like :mod:`fedvlp.core.models.image`, and exposes the
class token (``forward``), every token (``forward_tokens``) and a patch feature map
(``forward_features``, for code written against the ResNet encoder).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import MODEL_SIZES, ConfigError
from .image import PIXEL_MEAN, PIXEL_STD

__all__ = ["ViTConfig", "ViTEncoder", "ViTSource", "build_vit"]


@dataclass(frozen=True)
class ViTConfig:
    """Shape of a ViT: square input of ``image_size`` pixels cut into ``patch_size`` patches."""

    image_size: int = 64
    patch_size: int = 8
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    in_chans: int = 1
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size != 0:
            raise ConfigError(
                "run_config", "image-size", f"a multiple of the ViT patch size {self.patch_size}", self.image_size
            )
        if self.dim % self.heads != 0:
            raise ValueError(f"ViT dim {self.dim} is not divisible by heads {self.heads}")

    @property
    def num_patches(self) -> int:
        """Patches per image (the sequence has one more token, the class token)."""
        return (self.image_size // self.patch_size) ** 2

    @staticmethod
    def preset(size: str, image_size: int) -> "ViTConfig":
        """``tiny`` (tests), ``small`` (CPU demo), ``base`` (ViT-B/16, as in REFERS).

        The patch size is fixed by the preset; ``image_size`` must be a multiple of it.
        """
        if size == "tiny":
            return ViTConfig(image_size, patch_size=8, dim=32, depth=2, heads=2)
        if size == "small":
            return ViTConfig(image_size, patch_size=8, dim=128, depth=4, heads=4)
        if size == "base":
            return ViTConfig(image_size, patch_size=16, dim=768, depth=12, heads=12)
        raise ConfigError("run_config", "model-size", f"one of {MODEL_SIZES}", size)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], dropout_p=self.dropout if self.training else 0.0)
        result: torch.Tensor = self.proj(out.transpose(1, 2).reshape(batch, length, dim))
        return result


class _Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        result: torch.Tensor = x + self.mlp(self.norm2(x))
        return result


class _Embedding(nn.Module):
    """A view of a ViT's embedding parameters as one stage (not registered in the ViT itself)."""

    def __init__(self, vit: "ViTEncoder") -> None:
        super().__init__()
        self.patch_embed = vit.patch_embed
        self.cls_token = vit.cls_token
        self.pos_embed = vit.pos_embed


class ViTEncoder(nn.Module):
    """Patch embedding, class token, learned positions, pre-norm blocks, final LayerNorm.

    Parameters
    ----------
    config
        Image size, patch size, width, depth and heads. The position table is learned for
        ``config.image_size``; other input sizes are rejected.
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = nn.Conv2d(
            config.in_chans, config.dim, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.num_patches, config.dim))
        self.pos_drop = nn.Dropout(config.dropout)
        self.blocks = nn.Sequential(
            *[_Block(config.dim, config.heads, config.mlp_ratio, config.dropout) for _ in range(config.depth)]
        )
        self.norm = nn.LayerNorm(config.dim, eps=1e-6)
        self.out_dim = config.dim
        self.stride = config.patch_size  # pixels per token side, like ResNetEncoder.stride
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        weight = self.patch_embed.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        if self.patch_embed.bias is not None:  # always: the patch embedding is built with a bias
            nn.init.zeros_(self.patch_embed.bias)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def stage_modules(self) -> list[nn.Module]:
        """Embedding (patches, class token, positions), each block, the final norm
        (:class:`~fedvlp.core.models.stages.StagedEncoder`)."""
        embed = _Embedding(self)
        return [embed, *self.blocks, self.norm]

    def forward_stages(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Run stages ``start`` to ``stop - 1``; stage 0 takes images, the others ``(B, 1 + N, dim)`` tokens."""
        depth = len(self.blocks)
        for index in range(start, stop):
            if index == 0:
                size = self.config.image_size
                if x.dim() != 4 or x.shape[-2:] != (size, size):
                    raise ValueError(
                        f"ViTEncoder expects (B, {self.config.in_chans}, {size}, {size}) images, got {tuple(x.shape)}"
                    )
                x = self.patch_embed((x - PIXEL_MEAN) / PIXEL_STD).flatten(2).transpose(1, 2)
                x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
                x = self.pos_drop(x + self.pos_embed)
            elif index <= depth:
                x = self.blocks[index - 1](x)
            else:
                x = self.norm(x)
        return x

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """The class token."""
        return features[:, 0]

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S)`` images in ``[0, 1]`` to ``(B, 1 + N, dim)`` tokens (class token first)."""
        return self.forward_stages(images, 0, len(self.blocks) + 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S)`` images to ``(B, dim)`` class-token features."""
        return self.pool(self.forward_tokens(images))

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens as a ``(B, dim, S/patch, S/patch)`` map (the ResNet encoder's interface)."""
        tokens = self.forward_tokens(images)[:, 1:]
        side = self.config.image_size // self.config.patch_size
        return tokens.transpose(1, 2).reshape(tokens.shape[0], self.out_dim, side, side)


def build_vit(config: ViTConfig) -> ViTEncoder:
    """A ViT with random weights."""
    return ViTEncoder(config)


@dataclass(frozen=True)
class ViTSource:
    """A picklable factory of randomly initialised ViTs with a stable JSON ``description``.

    For code that takes "a callable returning the encoder" (the evaluation sweep): unlike a
    lambda or ``functools.partial`` it pickles, and its description has no memory address.
    """

    config: ViTConfig

    def __call__(self) -> ViTEncoder:
        return ViTEncoder(self.config)

    @property
    def description(self) -> dict[str, Any]:
        """``{"encoder": "vit", **config}``."""
        return {"encoder": "vit", **dataclasses.asdict(self.config)}
