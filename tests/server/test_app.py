"""The round loop: server optimizer state across a restart, norm outliers in a real round."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fedvlp.core.checkpoint import load_latest, load_round
from fedvlp.core.config import RunConfig

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("kind", ["fedadam"])
def test_resume_continues_server_optimizer_state_bit_for_bit(demo_env: Path, tiny_run: RunConfig, tmp_path: Path, kind: str) -> None:
    """3 rounds straight vs 2 rounds, a new server process state (restart), then round 3."""
    from fedvlp.server.simulation import simulate

    adam = tiny_run.replace(server_optimizer=kind, server_lr=0.01)
    straight = adam.replace(rounds=3, out_dir=str(tmp_path / "straight"))
    simulate(straight)
    stopped = adam.replace(rounds=2, out_dir=str(tmp_path / "resumed"))
    simulate(stopped)
    folder = Path(stopped.out_dir) / "checkpoints"
    assert load_latest(folder).round == 2  # type: ignore[union-attr]
    records: list[dict] = []
    simulate(stopped.replace(rounds=3), on_round=records.append)
    assert [r["round"] for r in records] == [3]  # it resumed, it did not start over

    expected = load_latest(Path(straight.out_dir) / "checkpoints")
    resumed = load_latest(folder)
    assert expected is not None and resumed is not None and expected.round == resumed.round == 3
    assert expected.weights.keys() == resumed.weights.keys()
    assert all(torch.equal(expected.weights[k], resumed.weights[k]) for k in expected.weights)
    assert expected.extra and expected.extra.keys() == resumed.extra.keys()
    assert all(torch.equal(expected.extra[k], resumed.extra[k]) for k in expected.extra)
    # moments exist only for parameters someone trained; every round was a step for them
    assert {int(v) for k, v in expected.extra.items() if k.startswith("t.")} == {3}
    # the optimizer moved the weights differently from plain FedAvg's average
    assert load_round(folder, 2).extra.keys() == expected.extra.keys()
