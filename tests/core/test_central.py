"""Centralised and local-only pretraining baselines: budgets, checkpoints, pooling, resume."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from fedvlp.core.central import pretrain_central, pretrain_local, steps_per_round
from fedvlp.core.checkpoint import load_latest
from fedvlp.core.config import RunConfig, load_site
from fedvlp.core.models import build_model
from fedvlp.core.train import LocalTrainer, load_site_datasets


def _pairs_sites(world: Path, root: Path) -> tuple[Path, Path]:
    """Two pair sites holding the two halves of the world's pairs, and one site with all of them.

    The manifests name the world's images by absolute path, so that folder is an image root.
    """
    frame = pd.read_csv(world / "hospital_a" / "manifest.csv")
    frame["image"] = [str(world / "hospital_a" / p) for p in frame["image"]]
    half = len(frame) // 2
    sites = root / "sites"
    sites.mkdir(parents=True)
    for name, part in (("s1", frame.iloc[:half]), ("s2", frame.iloc[half:])):
        part.to_csv(root / f"{name}.csv", index=False)
        (sites / f"{name}.yaml").write_text(
            f"name: {name}\nimage_roots: [{world / 'hospital_a'}]\nsources:\n  - manifest: {root / name}.csv\n    "
            "kind: pairs\n"
        )
    frame.to_csv(root / "all.csv", index=False)
    whole = root / "whole.yaml"
    whole.write_text(
        f"name: whole\nimage_roots: [{world / 'hospital_a'}]\nsources:\n  - manifest: {root / 'all.csv'}\n    kind: "
        "pairs\n"
    )
    return sites, whole


def test_central_budget_matches_the_batches_of_a_federated_round(demo_env, tiny_run):
    sites = [load_site(p) for p in sorted(demo_env.glob("*.yaml"))]
    assert steps_per_round(tiny_run, sites, pooled_groups=3) == tiny_run.local_steps  # one kind per site
    assert steps_per_round(tiny_run, sites, pooled_groups=1) == 3 * tiny_run.local_steps  # all of one kind


def test_central_run_equals_a_trainer_on_the_hand_pooled_manifest(world, tmp_path, tiny_run):
    sites, whole = _pairs_sites(world, tmp_path)
    run = tiny_run.replace(sites=str(sites), rounds=1, recipe="convirt")
    result = pretrain_central(run, tmp_path / "central")
    assert result.steps_per_round == 2 * run.local_steps  # two sites, one pooled dataset
    central = load_latest(result.checkpoint_dir)
    assert central is not None and central.round == 1
    assert central.state["run_config"] == run.to_flat() and central.state["config_hash"] == run.config_hash()

    model = build_model(run)
    trainer = LocalTrainer(
        model, load_site_datasets(load_site(whole), run, model.max_text_len), run, torch.device("cpu")
    )
    trainer.train(result.steps_per_round, seed=run.seed * 100_003 + 1)
    by_hand = model.state_dict()
    assert set(by_hand) == set(central.weights)
    assert all(torch.equal(by_hand[k], central.weights[k]) for k in by_hand)


def test_local_run_writes_loadable_checkpoints_and_resumes_bit_identically(demo_env, tmp_path, tiny_run):
    run = tiny_run.replace(rounds=2)
    full = pretrain_local(run, "hospital_b", tmp_path / "full")
    assert full.steps_per_round == run.local_steps and full.last_round == 2
    done = load_latest(full.checkpoint_dir)
    assert done is not None and done.state["mode"] == "local" and done.state["sites"] == ["hospital_b"]
    restored = RunConfig.from_flat(done.state["run_config"])
    build_model(restored).load_state_dict(done.weights)  # loads strictly

    pretrain_local(run.replace(rounds=1), "hospital_b", tmp_path / "resumed")
    resumed = pretrain_local(run, "hospital_b", tmp_path / "resumed")
    again = load_latest(resumed.checkpoint_dir)
    assert again is not None and again.round == 2
    assert all(torch.equal(again.weights[k], done.weights[k]) for k in done.weights)


def test_a_checkpoint_folder_of_another_mode_is_refused(demo_env, tmp_path, tiny_run):
    run = tiny_run.replace(rounds=1, local_steps=1)
    pretrain_local(run, "hospital_b", tmp_path / "out")
    with pytest.raises(ValueError, match="central pretraining"):
        pretrain_central(run, tmp_path / "out")
