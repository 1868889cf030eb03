"""A big site's round through the ClientApp: train_round takes the DDP path for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedvlp.client.app import site_for, train_round
from fedvlp.core.config import RunConfig
from fedvlp.core.distributed import NPROC_ENV
from fedvlp.core.models import build_model
from fedvlp.core.params import ARRAYS_KEY, COUNTS_KEY, METRICS_KEY, SIZE_KEY, group_of


@pytest.mark.slow
def test_the_worker_nproc_trains_a_site_in_two_processes_with_the_same_reply(demo_env: Path, tiny_run: RunConfig,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    run = tiny_run.replace(norm="group", seed=3)
    site = site_for({"partition-id": 1}, run)  # images only
    state = build_model(run).state_dict()
    single = train_round(site, run, state, server_round=1)
    monkeypatch.setenv(NPROC_ENV, "2")  # what `python -m fedvlp.client.worker --nproc 2` sets
    ddp = train_round(site, run, state, server_round=1)
    assert set(ddp.keys()) == {ARRAYS_KEY, COUNTS_KEY, METRICS_KEY, SIZE_KEY}
    arrays = ddp.array_records[ARRAYS_KEY].to_torch_state_dict()
    assert set(arrays) == set(single.array_records[ARRAYS_KEY].keys())
    assert {group_of(k) for k in arrays} == {"image", "head.mim"}
    assert max(float((arrays[k] - state[k]).abs().max()) for k in arrays) > 1e-4  # trained
    assert dict(ddp.metric_records[COUNTS_KEY]) == dict(single.metric_records[COUNTS_KEY]) == {"image": 64, "head.mim": 64}
    assert dict(ddp.metric_records[SIZE_KEY]) == dict(single.metric_records[SIZE_KEY])
    metrics = dict(ddp.metric_records[METRICS_KEY])
    assert metrics["processes"] == 2.0 and "processes" not in single.metric_records[METRICS_KEY]
    assert set(metrics) == set(single.metric_records[METRICS_KEY]) | {"processes"}
