"""Client sampling: the seeded draw, aggregation of a sampled round, and a real simulation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from fedvlp.core.config import ConfigError, RunConfig
from fedvlp.server.app.aggregation import SiteUpdate, aggregate
from fedvlp.server.app.optimizers import ServerOptimizer
from fedvlp.server.app.sampling import sample_nodes, sample_size

NODES = [11, 22, 33, 44, 55, 66, 77, 88, 99, 100]
DEMO = {7: "hospital_a", 8: "hospital_b", 9: "hospital_c"}


@pytest.mark.parametrize(
    ("connected", "fraction", "minimum", "expected"),
    [(10, 0.34, 1, 3), (3, 0.34, 1, 1), (3, 0.34, 2, 2), (100, 0.1, 2, 10), (3, 1.0, 1, 3), (2, 0.5, 5, 2)],
)
def test_sample_size_follows_flowers_rule_capped_at_connected(
    connected: int, fraction: float, minimum: int, expected: int
) -> None:
    assert sample_size(connected, fraction, minimum) == expected


def test_sample_nodes_exact_draw_for_seed_and_round() -> None:
    assert sample_nodes(NODES, 1, 0, 0.34, 1) == [44, 88, 99]
    assert sample_nodes(NODES, 2, 0, 0.34, 1) == [66, 77, 100]
    assert sample_nodes(NODES, 1, 1, 0.34, 1) == [22, 77, 88]


def test_sample_nodes_does_not_depend_on_the_order_of_node_ids() -> None:
    assert sample_nodes(list(reversed(NODES)), 1, 0, 0.34, 1) == sample_nodes(NODES, 1, 0, 0.34, 1)
    assert sample_nodes(set(NODES), 1, 0, 0.34, 1) == [44, 88, 99]


def test_sample_nodes_draws_on_site_names_so_new_node_ids_pick_the_same_sites() -> None:
    # sha256("0:1:<name>"): hospital_b scores lowest in round 1, hospital_c in round 2
    ranked = sorted(DEMO.values(), key=lambda n: hashlib.sha256(f"0:1:{n}".encode()).digest())
    assert ranked[0] == "hospital_b"
    first = sample_nodes(DEMO, 1, 0, 0.34, 1, DEMO)
    renamed = {node + 1000: name for node, name in DEMO.items()}  # the same sites after re-registration
    again = sample_nodes(renamed, 1, 0, 0.34, 1, renamed)
    assert [DEMO[n] for n in first] == [renamed[n] for n in again] == ["hospital_b"]
    assert [DEMO[n] for n in sample_nodes(DEMO, 2, 0, 0.34, 1, DEMO)] == ["hospital_c"]


def test_min_train_nodes_raises_the_sample_above_the_fraction() -> None:
    # int(10 x 0.1) = 1 < 4; the four lowest scores, which include the single draw of minimum 1
    assert sample_nodes(NODES, 1, 0, 0.1, 4) == [44, 55, 88, 99]
    assert sample_nodes(NODES, 1, 0, 0.1, 1) == [44]


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"fraction-train": 0.0}, "fraction-train"),
        ({"fraction-train": 1.5}, "fraction-train"),
        ({"min-train-nodes": 0}, "min-train-nodes"),
    ],
)
def test_bad_sampling_keys_are_named(values: dict[str, float], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_flat(values)
    assert err.value.key == key


def test_sampling_keys_enter_the_config_hash_only_away_from_their_defaults() -> None:
    base = RunConfig()
    assert base.config_hash() == base.replace(fraction_train=1.0, min_train_nodes=1).config_hash()
    assert base.config_hash() != base.replace(fraction_train=0.5).config_hash()


def test_a_group_no_sampled_site_trained_keeps_its_weights() -> None:
    current = {"image.w": torch.tensor([1.0, 2.0]), "text.w": torch.tensor([5.0, 6.0])}
    # the round sampled two image-only sites (counts 1 and 3); no text site was drawn
    updates = [
        SiteUpdate(1, {"image.w": torch.tensor([3.0, 2.0])}, {"image": 1}),
        SiteUpdate(2, {"image.w": torch.tensor([7.0, 6.0])}, {"image": 3}),
    ]
    aggregated = aggregate(current, updates)
    new = ServerOptimizer("fedavg", frozenset(current)).step(current, aggregated, {"image.w"})
    assert torch.equal(new["image.w"], torch.tensor([6.0, 5.0]))  # (3*1 + 7*3)/4, (2*1 + 6*3)/4
    assert torch.equal(new["text.w"], torch.tensor([5.0, 6.0]))


@pytest.mark.slow
def test_a_resumed_simulation_trains_the_sites_the_seeded_draw_names(
    demo_env: Path, tiny_run: RunConfig, tmp_path: Path
) -> None:
    """Round 1 in one simulation, round 2 in a new one (new node ids): each round trains the site
    the draw by site name picks, the same as an uninterrupted run would (bit-identical resume
    itself: tests/server/cli/test_simulation.py)."""
    from fedvlp.core.checkpoint import load_latest
    from fedvlp.server.cli.simulation import simulate

    run = tiny_run.replace(local_steps=2, fraction_train=0.34, out_dir=str(tmp_path / "resumed"))
    simulate(run.replace(rounds=1))
    simulate(run)  # a new simulation: new node ids, resumes from round 1
    names = {1: "hospital_a", 2: "hospital_b", 3: "hospital_c"}
    drawn = [[names[n] for n in sample_nodes(names, r, run.seed, 0.34, 1, keys=names)] for r in (1, 2)]
    final = load_latest(Path(run.out_dir) / "checkpoints")
    assert final is not None and final.round == 2
    history = final.state["history"]
    assert [(r["connected"], r["nodes"], r["replies"]) for r in history] == [(3, 1, 1), (3, 1, 1)]
    assert [r["sampled-sites"] for r in history] == drawn == [["hospital_b"], ["hospital_c"]]
    # what trained is the drawn site: an image-only upload, then a report-only one
    uploads = {"hospital_b": frozenset({"image", "head.mim"}), "hospital_c": frozenset({"text", "head.mlm"})}
    assert [frozenset(r["sites"][0]["counts"]) for r in history] == [uploads["hospital_b"], uploads["hospital_c"]]
