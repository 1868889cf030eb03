"""Local-training options that keep a pretrained start: locked stages, frozen BatchNorm,
persistent optimizer, self-distillation, FedProx, the tied MLM decoder, held-out alignment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from fedvlp.client.app import trained_state
from fedvlp.core.config import RunConfig, load_site
from fedvlp.core.models import build_model
from fedvlp.core.models.stages import num_stages
from fedvlp.core.train import LocalTrainer, load_site_data

CPU = torch.device("cpu")


def _trainer(site_file: Path, run: RunConfig) -> LocalTrainer:
    model = build_model(run)
    return LocalTrainer(model, load_site_data(load_site(site_file), run, model.max_text_len), run, CPU)


def _stage_keys(trainer: LocalTrainer, stages: range) -> set[str]:
    image = trainer.model.image
    modules = image.stage_modules()
    names = {id(t): n for n, t in image.state_dict(keep_vars=True).items()}
    return {f"image.{names[id(t)]}" for i in stages for t in modules[i].state_dict(keep_vars=True).values()}


def test_a_locked_stage_is_neither_updated_nor_uploaded(demo_env: Path, tiny_run: RunConfig) -> None:
    trainer = _trainer(demo_env / "hospital_b.yaml", tiny_run.replace(freeze_image_stages=2))
    locked = _stage_keys(trainer, range(2))
    upper = _stage_keys(trainer, range(2, num_stages(trainer.model.image)))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.train(steps=2)
    after = trainer.model.state_dict()
    assert locked and all(torch.equal(before[k], after[k]) for k in locked)  # weights and BatchNorm statistics
    assert any(not torch.equal(before[k], after[k]) for k in upper)
    uploaded = trained_state(trainer.model, before, result.group_counts, frozenset(result.touched))
    assert not locked & set(uploaded)
    assert upper & set(uploaded)


def test_all_stages_locked_trains_only_the_heads(demo_env: Path, tiny_run: RunConfig) -> None:
    trainer = _trainer(demo_env / "hospital_a.yaml", tiny_run.replace(freeze_image_stages=-1))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items() if k.startswith("image.")}
    trainer.train(steps=2)
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in before.items())


def test_frozen_batchnorm_keeps_running_statistics_while_weights_train(demo_env: Path, tiny_run: RunConfig) -> None:
    trainer = _trainer(demo_env / "hospital_b.yaml", tiny_run.replace(image_bn="frozen"))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items() if k.startswith("image.")}
    trainer.train(steps=2)
    after = trainer.model.state_dict()
    statistics = [k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    weights = [k for k in before if k.endswith("weight")]
    assert statistics and all(torch.equal(before[k], after[k]) for k in statistics)
    assert any(not torch.equal(before[k], after[k]) for k in weights)


def test_batchnorm_statistics_move_by_default(demo_env: Path, tiny_run: RunConfig) -> None:
    trainer = _trainer(demo_env / "hospital_b.yaml", tiny_run)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items() if k.endswith("running_mean")}
    trainer.train(steps=1)
    assert any(not torch.equal(v, trainer.model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize(("persistent", "steps_after_two_rounds"), [(False, 2), (True, 4)])
def test_persistent_optimizer_keeps_adam_state_across_rounds(
    demo_env: Path, tiny_run: RunConfig, persistent: bool, steps_after_two_rounds: int
) -> None:
    trainer = _trainer(demo_env / "hospital_c.yaml", tiny_run.replace(persistent_optimizer=persistent))
    trainer.train(steps=2, seed=0)
    trainer.train(steps=2, seed=1)
    assert trainer._optimizer is not None
    steps = {int(state["step"]) for state in trainer._optimizer.state.values()}
    assert steps == {steps_after_two_rounds}


def test_warmup_scales_the_first_steps_learning_rate(demo_env: Path, tiny_run: RunConfig) -> None:
    trainer = _trainer(demo_env / "hospital_c.yaml", tiny_run.replace(warmup_steps=4, lr=1e-3))
    trainer.train(steps=1)
    assert trainer._optimizer is not None
    assert [g["lr"] for g in trainer._optimizer.param_groups] == pytest.approx(
        [g["base_lr"] * 0.25 for g in trainer._optimizer.param_groups]
    )


def test_self_distillation_trains_an_image_only_site_against_the_global_model(
    demo_env: Path, tiny_run: RunConfig
) -> None:
    trainer = _trainer(demo_env / "hospital_b.yaml", tiny_run.replace(weight_distill=1.0, weight_mim=0.0))
    global_image = {k: v.clone() for k, v in trainer.model.image.state_dict().items()}
    result = trainer.train(steps=2)
    assert set(result.group_counts) == {"image", "head.distill"}
    assert 0.0 < result.metrics["loss/distill"] <= 8.0  # two BYOL terms, each in [0, 4]
    teacher = trainer._teacher
    assert teacher is not None  # the teacher is the round's start, not the trained weights
    assert all(torch.equal(teacher.image.state_dict()[k], v) for k, v in global_image.items())
    start_of_round_two = {k: v.clone() for k, v in trainer.model.image.state_dict().items()}
    trainer.train(steps=1)  # the next round's teacher is the weights that round starts from
    assert all(torch.equal(teacher.image.state_dict()[k], v) for k, v in start_of_round_two.items())
    assert any(not torch.equal(start_of_round_two[k], global_image[k]) for k in global_image)


def test_the_distill_head_is_only_built_when_on(tiny_run: RunConfig) -> None:
    assert "distill" not in build_model(tiny_run).head
    assert "distill" in build_model(tiny_run.replace(weight_distill=0.5)).head


def test_prox_with_an_unchanged_model_is_zero_and_then_grows(demo_env: Path, tiny_run: RunConfig) -> None:
    trainer = _trainer(demo_env / "hospital_c.yaml", tiny_run.replace(prox_mu=0.1))
    first = trainer.train(steps=1).metrics["loss/prox"]
    assert first == 0.0  # the first step's term is computed before any update
    assert trainer.train(steps=3).metrics["loss/prox"] > 0.0


def test_a_tied_mlm_decoder_has_no_vocabulary_matrix_and_uses_the_word_embeddings(tiny_run: RunConfig) -> None:
    untied = build_model(tiny_run)
    tied = build_model(tiny_run.replace(mlm_decoder="tied"))
    vocab = tied.text.bert.embeddings.word_embeddings.weight.shape[0]

    def big(model: Any) -> set[str]:
        return {k for k, v in model.head["mlm"].state_dict().items() if v.dim() == 2 and vocab in v.shape}

    assert big(untied) and not big(tied)
    assert sum(p.numel() for p in tied.parameters()) < sum(p.numel() for p in untied.parameters())


def test_alignment_is_measured_on_held_out_pairs_after_training(demo_env: Path, tiny_run: RunConfig) -> None:
    trainer = _trainer(demo_env / "hospital_a.yaml", tiny_run.replace(align_holdout=0.3))
    result = trainer.train(steps=1)
    pairs = result.metrics["align/pairs"]
    assert pairs >= 8 and result.metrics["align/chance-top1"] == pytest.approx(1.0 / pairs)
    assert 0.0 <= result.metrics["align/i2t-top1"] <= 1.0 and 0.0 <= result.metrics["align/match-acc"] <= 1.0
    held = {trainer.holdout[0].rows.ids[i] for i in trainer.holdout[0].indices}
    trained = {trainer.datasets[0].rows.ids[i] for i in trainer.datasets[0].indices}
    assert held and not held & trained
