"""A restarted ServerApp over a damaged or foreign checkpoint folder: it loses the damaged round
only, and refuses rounds of another configuration even without ``latest.json``. (A real
simulation killed and resumed over a flipped byte: tests/server/cli/test_simulation.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedvlp.core.checkpoint import save_round
from fedvlp.core.config import ConfigError, RunConfig
from fedvlp.core.models import build_model
from fedvlp.server.app.rounds import run_federation


def _rounds(run: RunConfig, count: int) -> Path:
    """Rounds 0..count-1 of ``run`` in its out-dir, as the ServerApp writes them."""
    folder = Path(run.out_dir) / "checkpoints"
    state = build_model(run).state_dict()
    for r in range(count):
        save_round(
            folder,
            r,
            state,
            {
                "config_hash": run.config_hash(),
                "run_config": run.to_flat(),
                "history": [{"round": i} for i in range(1, r + 1)],
            },
        )
    return folder


def test_the_server_app_refuses_rounds_of_another_configuration_without_latest_json(tiny_run: RunConfig) -> None:
    folder = _rounds(tiny_run.replace(seed=tiny_run.seed + 1), 3)
    (folder / "latest.json").unlink()
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(ConfigError) as err:
        run_federation(None, tiny_run)  # type: ignore[arg-type]  # refused before any node is asked
    assert str(err.value).startswith(
        f"{folder}: key 'config_hash': expected the same configuration"
    ) and "use another out-dir" in str(err.value)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_the_server_app_resumes_from_the_newest_intact_round(
    tiny_run: RunConfig, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _rounds(tiny_run, 4)  # rounds 0-3 of a 2-round run: nothing is left to train once round 2 loads
    (folder / "round_0003.json").write_text("")
    result = run_federation(None, tiny_run.replace(rounds=2))  # type: ignore[arg-type]
    assert result.last_round == 2 and [r["round"] for r in result.history] == [1, 2]
    assert any(
        f"{folder / 'round_0003.json'}: not JSON (empty file); resuming from round 2" in r.getMessage()
        for r in caplog.records
    )
