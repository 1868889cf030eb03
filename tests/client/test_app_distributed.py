"""A big site's round through the ClientApp: train_round takes the DDP path for it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from fedvlp.client import app
from fedvlp.client.app import train_round
from fedvlp.core.config import RunConfig, load_site
from fedvlp.core.distributed import NPROC_ENV
from fedvlp.core.models import build_model
from fedvlp.core.params import ARRAYS_KEY, COUNTS_KEY, METRICS_KEY, SIZE_KEY, group_of
from tests.conftest import record_arrays


def _site_with_a_corrupt_image(tmp_path: Path, world: Path) -> Path:
    rows = pd.read_csv(world / "hospital_b" / "manifest.csv").head(16).copy()
    rows["image"] = [str(world / "hospital_b" / p) for p in rows["image"]]
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    rows.loc[5, "image"] = str(tmp_path / "corrupt.png")
    rows.to_csv(tmp_path / "manifest.csv", index=False)
    site = tmp_path / "big.yaml"
    site.write_text(
        f"name: big\ndevice: cpu\nimage_roots: [{world / 'hospital_b'}]\nsources:\n  - manifest: manifest.csv\n    "
        "kind: images\n"
    )
    return site


@pytest.mark.slow
def test_the_worker_nproc_trains_a_site_in_two_processes_with_the_same_reply(
    world: Path, tmp_path: Path, tiny_run: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tiny_run.replace(norm="group", seed=3, batch_size=8, local_steps=3)  # 24 draws: every row of 16 seen
    site = load_site(_site_with_a_corrupt_image(tmp_path, world))
    state = build_model(run).state_dict()
    single = train_round(site, run, state, server_round=1)
    monkeypatch.setenv(NPROC_ENV, "2")  # what `python -m fedvlp.client.worker --nproc 2` sets
    app._TRAINERS.clear()  # a fresh site trainer: the processes must find the corrupt image themselves
    ddp = train_round(site, run, state, server_round=1)
    assert set(ddp.keys()) == {ARRAYS_KEY, COUNTS_KEY, METRICS_KEY, SIZE_KEY}
    arrays = {k: torch.from_numpy(v) for k, v in record_arrays(ddp.array_records[ARRAYS_KEY]).items()}
    assert set(arrays) == set(record_arrays(single.array_records[ARRAYS_KEY]))
    assert {group_of(k) for k in arrays} == {"image", "head.mim"}
    assert max(float((arrays[k] - state[k]).abs().max()) for k in arrays) > 1e-4  # trained
    # the corrupt image is found, counted once and left out of the counts, as in one process
    assert (
        dict(ddp.metric_records[COUNTS_KEY]) == dict(single.metric_records[COUNTS_KEY]) == {"image": 15, "head.mim": 15}
    )
    assert dict(ddp.metric_records[SIZE_KEY]) == dict(single.metric_records[SIZE_KEY])
    metrics = dict(ddp.metric_records[METRICS_KEY])
    assert metrics["skipped/image_corrupt"] == single.metric_records[METRICS_KEY]["skipped/image_corrupt"] == 1.0
    assert metrics["processes"] == 2.0 and "processes" not in single.metric_records[METRICS_KEY]
    assert set(metrics) == set(single.metric_records[METRICS_KEY]) | {"processes"}
