"""Every recipe runs one real simulated federated round on the demo sites (tiny sizes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedvlp.core.checkpoint import load_round
from fedvlp.core.config import RECIPES, RunConfig
from fedvlp.core.params import group_of

pytestmark = pytest.mark.slow

# Groups that a round of each recipe must change, given a pairs, an images and a reports site.
EXPECTED = {
    "mixed": {"image", "text", "head.contrastive", "head.matching", "head.mlm", "head.mim"},
    "convirt": {"image", "text", "head.contrastive"},
    "timnet": {"image", "text", "head.matching"},
    "refers": {"image", "text", "head.contrastive", "head.generation"},
    "uwox": {"image", "text", "joint", "head.matching", "head.mlm", "head.mim"},
    "unit": {"image", "text", "joint", "head.matching", "head.mlm", "head.mim"},
}


@pytest.mark.parametrize("recipe", sorted(EXPECTED))
def test_one_federated_round_per_recipe(demo_env: Path, tiny_run: RunConfig, recipe: str) -> None:
    from fedvlp.server.cli.simulation import simulate

    run = tiny_run.replace(recipe=recipe, rounds=1, local_steps=2)
    records: list[dict] = []
    simulate(run, on_round=records.append)
    assert records[0]["replies"] == 3 and not records[0]["rejected"]
    folder = Path(run.out_dir) / "checkpoints"
    before, after = load_round(folder, 0).weights, load_round(folder, 1).weights
    changed = {group_of(k) for k in before if not torch.equal(before[k], after[k])}
    assert changed == EXPECTED[recipe]


def test_every_recipe_has_an_expectation() -> None:
    assert set(RECIPES) == set(EXPECTED)
