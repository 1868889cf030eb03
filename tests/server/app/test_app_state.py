"""What the round loop keeps in the checkpoint state: reply bounds that survive a resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedvlp.core.checkpoint import save_round
from fedvlp.core.config import ConfigError, RunConfig
from fedvlp.server.app.rounds import Guards, run_federation


def test_guards_round_trip_through_the_json_state() -> None:
    guards = Guards()
    guards.sizes.declared[17] = {"image": 50, "text": 40}
    guards.norms.record([{"image": 0.5}, {"image": 0.25, "text": 1.0}])
    state = guards.to_state()
    assert state == {
        "site_sizes": {"17": {"image": 50, "text": 40}},
        "norm_history": {"image": [0.25, 0.5], "text": [1.0]},
    }
    again = Guards.from_state(state)
    assert again.sizes.declared == {17: {"image": 50, "text": 40}} and again.norms.norms == guards.norms.norms


def test_a_state_from_before_the_guards_starts_them_empty() -> None:
    guards = Guards.from_state({"config_hash": "abc", "history": []})
    assert guards.sizes.declared == {} and guards.norms.norms == {}


def test_a_folder_of_another_configuration_is_refused_before_any_round(tmp_path: Path) -> None:
    run = RunConfig(model_size="tiny", image_size=32, out_dir=str(tmp_path))
    save_round(
        tmp_path / "checkpoints", 0, {"image.w": torch.zeros(1)}, {"config_hash": "0123456789abcdef", "history": []}
    )
    with pytest.raises(ConfigError, match="config_hash.*0123456789abcdef"):
        run_federation(None, run)  # type: ignore[arg-type]  # refused before the grid is used
