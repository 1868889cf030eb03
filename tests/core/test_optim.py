"""The local optimizer: per-tower learning rates, layer-wise decay, warmup and the empty case."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedvlp.core.config import ImageEncoderConfig, RunConfig, TextEncoderConfig
from fedvlp.core.models.image import ResNetEncoder
from fedvlp.core.models.text import TextEncoder
from fedvlp.core.optim import ParamGroupSpec, build_optimizer, layer_depths, param_groups, warmup_factor


class _Towers(nn.Module):
    """Unstaged towers ``image``, ``text``, ``joint`` and a ``head``: every depth is 0."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Linear(2, 2)
        self.text = nn.Linear(2, 2)
        self.joint = nn.Linear(2, 1)
        self.head = nn.Linear(2, 1)


class _StagedModel(nn.Module):
    """A real staged ResNet image encoder (stem + 4 stages) under a linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image = ResNetEncoder(ImageEncoderConfig(widths=(4, 4, 4, 4), image_size=32))
        self.head = nn.Linear(4, 1)


def _lr_of(groups: list[ParamGroupSpec], name: str) -> float | None:
    for group in groups:
        if name in group.names:
            return group.lr
    return None


# ----------------------------------------------------------------------------- warmup
def test_warmup_factor_first_step_is_one_over_warmup() -> None:
    # (0 + 1) / 4
    assert warmup_factor(0, 4) == 0.25


def test_warmup_factor_reaches_one_at_the_last_warmup_step() -> None:
    # (3 + 1) / 4
    assert warmup_factor(3, 4) == 1.0


def test_warmup_factor_stays_one_after_warmup() -> None:
    # min(1, 11 / 4)
    assert warmup_factor(10, 4) == 1.0


def test_warmup_factor_without_warmup_is_one() -> None:
    assert warmup_factor(0, 0) == 1.0


# ----------------------------------------------------------------------------- tower scales
def test_run_config_from_flat_sets_the_tower_scales() -> None:
    run = RunConfig.from_flat({"lr": 1e-3, "image-lr-scale": 0.1, "text-lr-scale": 0.05, "layer-decay": 0.5})
    assert (run.lr, run.image_lr_scale, run.text_lr_scale, run.layer_decay) == (1e-3, 0.1, 0.05, 0.5)


def test_param_groups_scale_each_tower_and_keep_heads_at_lr() -> None:
    run = RunConfig(lr=1e-3, image_lr_scale=0.1, text_lr_scale=0.05)
    groups = param_groups(_Towers(), run)
    assert _lr_of(groups, "image.weight") == pytest.approx(1e-4)  # 1e-3 x 0.1
    assert _lr_of(groups, "image.bias") == pytest.approx(1e-4)
    assert _lr_of(groups, "text.weight") == pytest.approx(5e-5)  # 1e-3 x 0.05
    assert _lr_of(groups, "head.weight") == pytest.approx(1e-3)  # heads keep lr


def test_param_groups_give_the_joint_transformer_the_text_scale() -> None:
    run = RunConfig(lr=1e-3, image_lr_scale=0.1, text_lr_scale=0.05)
    assert _lr_of(param_groups(_Towers(), run), "joint.weight") == pytest.approx(5e-5)  # 1e-3 x 0.05


def test_param_groups_share_one_group_per_rate_sorted_by_rate() -> None:
    run = RunConfig(lr=1e-3, image_lr_scale=0.1, text_lr_scale=0.05)
    groups = param_groups(_Towers(), run)
    assert [g.lr for g in groups] == pytest.approx([1e-3, 1e-4, 5e-5])
    assert set(groups[0].names) == {"head.weight", "head.bias"}
    assert set(groups[1].names) == {"image.weight", "image.bias"}
    assert set(groups[2].names) == {"text.weight", "text.bias", "joint.weight", "joint.bias"}


def test_param_groups_leave_out_frozen_parameters() -> None:
    model = _Towers()
    model.image.weight.requires_grad_(False)
    groups = param_groups(model, RunConfig(lr=1e-3))
    named = {n for g in groups for n in g.names}
    assert "image.weight" not in named
    assert "image.bias" in named


def test_param_groups_leave_out_a_tower_with_scale_zero() -> None:
    groups = param_groups(_Towers(), RunConfig(lr=1e-3, image_lr_scale=0.0))
    named = {n for g in groups for n in g.names}
    assert not any(n.startswith("image.") for n in named)
    assert {"text.weight", "head.weight"} <= named


def test_param_groups_restrict_to_the_given_names() -> None:
    groups = param_groups(_Towers(), RunConfig(lr=1e-3), names=["head.bias"])
    assert [(g.names, g.lr) for g in groups] == [(("head.bias",), 1e-3)]


# ----------------------------------------------------------------------------- layer decay
def test_layer_depths_count_stages_above_each_image_parameter() -> None:
    model = _StagedModel()
    depths = layer_depths(model)
    # Stages bottom first: stem (4 below the top), stages.0 (3), ..., stages.3 (0: the top).
    assert depths["image.stem.0.weight"] == 4
    assert depths["image.stages.0.0.conv1.weight"] == 3
    assert depths["image.stages.2.0.conv1.weight"] == 1
    assert depths["image.stages.3.0.conv1.weight"] == 0
    assert not any(n.startswith("head.") for n in depths)
    assert set(depths) == {f"image.{n}" for n, _ in model.image.named_parameters()}


def test_layer_decay_lowers_the_rate_once_per_stage_below_the_top() -> None:
    run = RunConfig(lr=1e-3, image_lr_scale=0.1, layer_decay=0.5)
    groups = param_groups(_StagedModel(), run)
    assert _lr_of(groups, "image.stages.3.0.conv1.weight") == pytest.approx(1e-4)  # 1e-3 x 0.1 x 0.5**0
    assert _lr_of(groups, "image.stages.2.0.conv1.weight") == pytest.approx(5e-5)  # 1e-3 x 0.1 x 0.5**1
    assert _lr_of(groups, "image.stem.0.weight") == pytest.approx(6.25e-6)  # 1e-3 x 0.1 x 0.5**4
    assert _lr_of(groups, "head.weight") == pytest.approx(1e-3)  # heads have no depth


def test_layer_depths_of_bert_put_embeddings_below_every_layer() -> None:
    class _Text(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.text = TextEncoder(
                TextEncoderConfig(hidden=8, layers=2, heads=2, intermediate=8, max_len=8), vocab_size=10
            )

    depths = layer_depths(_Text())
    # 2 layers: embeddings 2, layer 0 -> 2 - 1 - 0 = 1, layer 1 -> 0.
    assert depths["text.bert.embeddings.word_embeddings.weight"] == 2
    assert depths["text.bert.encoder.layer.0.attention.self.query.weight"] == 1
    assert depths["text.bert.encoder.layer.1.output.dense.weight"] == 0


# ----------------------------------------------------------------------------- build_optimizer
def test_build_optimizer_uses_the_group_rates() -> None:
    optimizer = build_optimizer(
        _Towers(), RunConfig(lr=1e-3, image_lr_scale=0.1, text_lr_scale=0.05, weight_decay=0.01)
    )
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3, 1e-4, 5e-5])
    assert [len(g["params"]) for g in optimizer.param_groups] == [2, 2, 4]
    assert all(g["weight_decay"] == 0.01 for g in optimizer.param_groups)


def test_build_optimizer_returns_none_when_nothing_trains() -> None:
    model = _Towers()
    model.requires_grad_(False)
    assert build_optimizer(model, RunConfig(lr=1e-3)) is None


def test_build_optimizer_returns_none_when_only_zero_scaled_towers_train() -> None:
    model = _Towers()
    model.head.requires_grad_(False)
    assert build_optimizer(model, RunConfig(lr=1e-3, image_lr_scale=0.0, text_lr_scale=0.0)) is None
