"""The local optimizer: per-tower learning rates, layer-wise decay and warmup.

A pretrained tower (ImageNet EfficientNet, MiniLM) forgets what it knows when it trains at the
learning rate of randomly initialised heads; run-config ``image-lr-scale`` / ``text-lr-scale``
lower the towers' rates, and ``layer-decay`` lowers them further for the lower stages and
layers, which carry the most general features (BEiT / ELECTRA's layer-wise decay). A fresh
optimizer warms up linearly over ``warmup-steps`` steps, so that the first steps with empty
Adam moments do not jolt a pretrained start.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .config import RunConfig
from .models.stages import is_staged

__all__ = ["ParamGroupSpec", "layer_depths", "param_groups", "build_optimizer", "warmup_factor"]


@dataclass(frozen=True)
class ParamGroupSpec:
    """One optimizer group: its parameters' names and learning rate."""

    names: tuple[str, ...]
    lr: float


def _image_depths(model: nn.Module) -> dict[str, int]:
    """Stages below the top for every image-encoder parameter (0: the top stage)."""
    image = getattr(model, "image", None)
    if image is None or not is_staged(image):
        return {}
    stages = image.stage_modules()
    by_id = {id(p): len(stages) - 1 - index for index, stage in enumerate(stages) for p in stage.parameters()}
    return {f"image.{name}": by_id[id(p)] for name, p in image.named_parameters() if id(p) in by_id}


def _text_depths(model: nn.Module) -> dict[str, int]:
    """Layers below the top for every BERT parameter (the embeddings sit below layer 0)."""
    bert = getattr(getattr(model, "text", None), "bert", None)
    if bert is None:
        return {}
    layers = len(bert.encoder.layer)
    depths = {}
    for name, _ in bert.named_parameters():
        parts = name.split(".")
        if parts[0] == "embeddings":
            depth = layers
        elif parts[:2] == ["encoder", "layer"]:
            depth = layers - 1 - int(parts[2])
        else:
            depth = 0
        depths[f"text.bert.{name}"] = depth
    return depths


def layer_depths(model: nn.Module) -> dict[str, int]:
    """For every encoder parameter, how many stages (image) or layers (text) lie above it.

    Heads and parameters of encoders without a stage structure get 0.
    """
    return {**_image_depths(model), **_text_depths(model)}


def param_groups(model: nn.Module, run: RunConfig, names: Iterable[str] | None = None) -> list[ParamGroupSpec]:
    """The optimizer groups of ``model``'s trainable parameters under ``run``'s learning rates.

    ``lr x scale x layer-decay ** depth``, with scale ``image-lr-scale`` for ``image.``,
    ``text-lr-scale`` for ``text.`` and ``joint.``, and 1 for heads. Parameters with the same
    rate share a group; a rate of 0 leaves the parameter out (it would not move anyway).
    """
    wanted = set(names) if names is not None else None
    depths = layer_depths(model)
    scale = {"image": run.image_lr_scale, "text": run.text_lr_scale, "joint": run.text_lr_scale}
    by_lr: dict[float, list[str]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad or (wanted is not None and name not in wanted):
            continue
        tower = name.split(".", 1)[0]
        lr = run.lr * scale.get(tower, 1.0) * run.layer_decay ** depths.get(name, 0)
        if lr > 0:
            by_lr.setdefault(lr, []).append(name)
    return [ParamGroupSpec(tuple(group), lr) for lr, group in sorted(by_lr.items(), reverse=True)]


def build_optimizer(model: nn.Module, run: RunConfig) -> torch.optim.AdamW | None:
    """AdamW over ``model``'s trainable parameters in :func:`param_groups`; ``None`` if nothing trains.

    Run-config ``fused-optimizer`` picks torch's implementation: ``off`` (torch's default for
    the device: one tensor at a time on CPU), ``foreach`` (multi-tensor) or ``fused`` (one
    kernel); the same update up to float rounding.
    """
    parameters = dict(model.named_parameters())
    groups = [{"params": [parameters[n] for n in spec.names], "lr": spec.lr} for spec in param_groups(model, run)]
    if not groups:
        return None
    foreach = True if run.fused_optimizer == "foreach" else None  # None: torch picks per device
    fused = True if run.fused_optimizer == "fused" else None
    return torch.optim.AdamW(groups, lr=run.lr, weight_decay=run.weight_decay, foreach=foreach, fused=fused)


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Learning-rate multiplier of optimizer step ``step`` (0-based): ``(step + 1) / warmup`` up to 1."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)
