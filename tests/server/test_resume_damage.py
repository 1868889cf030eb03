"""A restarted ServerApp over a damaged checkpoint folder: it loses the damaged round only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fedvlp.core.checkpoint import load_latest
from fedvlp.core.config import RunConfig

pytestmark = pytest.mark.slow


def test_a_simulation_resumed_over_a_flipped_byte_redoes_the_damaged_round_only(demo_env: Path, tiny_run: RunConfig, tmp_path: Path) -> None:
    from fedvlp.server.simulation import simulate

    run = tiny_run.replace(rounds=2, local_steps=1, out_dir=str(tmp_path / "run"))
    simulate(run)
    folder = Path(run.out_dir) / "checkpoints"
    weights = folder / "round_0002.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x40  # one bit of the last tensor's data: the header still parses
    weights.write_bytes(bytes(data))
    records: list[dict] = []
    simulate(run, on_round=records.append)
    assert [r["round"] for r in records] == [2]  # round 1 kept, round 2 trained again
    resumed = load_latest(folder)
    assert resumed is not None and resumed.round == 2 and resumed.problems == []
    assert [r["round"] for r in resumed.state["history"]] == [1, 2]
    assert all(torch.isfinite(v).all() for v in resumed.weights.values() if v.is_floating_point())
