"""Image encoders as a stack of stages: lock the lower ones, run the upper ones from a cache.

Every image encoder of the ``cnn`` and ``vit`` families is a sequence of stages (stem, the
network's resolution stages or transformer blocks, the head). The stage view serves three
things that all want "the lower part" and "the upper part" of an encoder:

- locked lower stages in pretraining (run-config ``freeze-image-stages``; ConVIRT freezes the
  lower half of BERT, LiT the whole image tower): their parameters get no gradient, their
  normalisation layers stay in eval mode, and a site neither updates nor uploads them;
- the self-distillation teacher, which shares the student's locked stages, so the lower part
  runs once per view for both;
- the fine-tuning sweep, which caches the output of the frozen lower stages once per image and
  trains only the upper ones (:class:`UpperStages`).

An encoder implements :class:`StagedEncoder`: ``stage_modules()`` (every parameter in exactly
one stage, bottom first), ``forward_stages(x, start, stop)`` (stage 0 takes ``[0, 1]`` images)
and ``pool(features)`` (what ``forward`` returns from the last stage's output).
"""

from __future__ import annotations

from typing import Protocol, cast, runtime_checkable

import torch
from torch import nn

__all__ = [
    "StagedEncoder",
    "FeatureMapEncoder",
    "is_staged",
    "num_stages",
    "resolve_locked",
    "lock_stages",
    "locked_modules",
    "UpperStages",
]


@runtime_checkable
class StagedEncoder(Protocol):
    """An image encoder that can be run stage by stage."""

    out_dim: int

    def stage_modules(self) -> list[nn.Module]:
        """The stages, bottom first; every parameter of the encoder is in exactly one."""
        ...

    def forward_stages(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Run stages ``start`` to ``stop - 1`` (stage 0 takes ``(B, C, S, S)`` images in ``[0, 1]``)."""
        ...

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """The ``(B, out_dim)`` feature vector of the last stage's output."""
        ...


@runtime_checkable
class FeatureMapEncoder(StagedEncoder, Protocol):
    """A staged image encoder that also gives the last stage's feature map (the ``cnn`` family's)."""

    stride: int

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S)`` images in ``[0, 1]`` to a ``(B, out_dim, S/stride, S/stride)`` feature map."""
        ...


def is_staged(encoder: nn.Module) -> bool:
    """Whether ``encoder`` implements :class:`StagedEncoder`."""
    return isinstance(encoder, StagedEncoder)


def num_stages(encoder: StagedEncoder) -> int:
    """How many stages ``encoder`` has."""
    return len(encoder.stage_modules())


def resolve_locked(encoder: StagedEncoder, count: int) -> int:
    """The number of locked lower stages for a requested ``count``.

    ``count`` >= 0 locks that many lower stages (at most all of them); a negative ``count``
    locks all of them (LiT's locked image tower).
    """
    total = num_stages(encoder)
    return total if count < 0 else min(count, total)


def locked_modules(encoder: StagedEncoder, count: int) -> list[nn.Module]:
    """The modules of the ``count`` lowest stages (see :func:`resolve_locked`)."""
    return encoder.stage_modules()[: resolve_locked(encoder, count)]


def lock_stages(encoder: StagedEncoder, count: int) -> int:
    """Freeze the parameters of the ``count`` lowest stages; returns how many were locked.

    Their normalisation layers must also stay in eval mode while the rest trains (a locked
    BatchNorm that updated its running statistics would change the stage): callers put
    :func:`locked_modules` in eval mode after every ``train()``.
    """
    locked = resolve_locked(encoder, count)
    for module in encoder.stage_modules()[:locked]:
        for parameter in module.parameters():
            parameter.requires_grad_(False)
    return locked


class UpperStages(nn.Module):
    """The stages from ``start`` up, pooled: what the sweep fine-tunes on cached lower features.

    Parameters
    ----------
    encoder
        A :class:`StagedEncoder` (kept as a submodule, so its state dict is the encoder's with
        an ``encoder.`` prefix; the lower stages are carried along but never run).
    start
        The first stage to run; the input is the output of stage ``start - 1``.
    """

    def __init__(self, encoder: nn.Module, start: int) -> None:
        super().__init__()
        if not is_staged(encoder):
            raise TypeError(f"{type(encoder).__name__} cannot be run stage by stage")
        self.encoder = encoder
        self.start = start
        self.stop = num_stages(self.staged)
        self.out_dim = self.staged.out_dim

    @property
    def staged(self) -> StagedEncoder:
        """``encoder`` as the :class:`StagedEncoder` ``__init__`` checked it is."""
        return cast(StagedEncoder, self.encoder)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.staged.pool(self.staged.forward_stages(features, self.start, self.stop))

    def lower(self, images: torch.Tensor) -> torch.Tensor:
        """The input of :meth:`forward` for ``images``: the output of the stages below ``start``."""
        return self.staged.forward_stages(images, 0, self.start) if self.start > 0 else images
