"""The ClientApp's site resolution and the content of its replies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedvlp.client.app import site_for, train_round
from fedvlp.core.compression import PACKED_KEY
from fedvlp.core.config import ConfigError, RunConfig
from fedvlp.core.models import build_model
from fedvlp.core.params import ARRAYS_KEY, COUNTS_KEY, METRICS_KEY, SIZE_KEY, group_of
from tests.conftest import record_arrays


def test_site_config_in_node_config_wins(demo_env: Path, tiny_run: RunConfig) -> None:
    site = site_for({"site-config": str(demo_env / "hospital_c.yaml"), "partition-id": 0}, tiny_run)
    assert site.name == "hospital_c"


def test_partition_id_indexes_the_sorted_site_files(demo_env: Path, tiny_run: RunConfig) -> None:
    assert [site_for({"partition-id": i}, tiny_run).name for i in range(3)] == [
        "hospital_a",
        "hospital_b",
        "hospital_c",
    ]


def test_a_partition_without_site_file_is_a_clear_error(demo_env: Path, tiny_run: RunConfig) -> None:
    with pytest.raises(ConfigError, match="at least 4 site files"):
        site_for({"partition-id": 3}, tiny_run)


def test_a_node_without_site_is_told_how_to_set_one(tiny_run: RunConfig) -> None:
    with pytest.raises(ConfigError, match="site-config"):
        site_for({}, tiny_run)


def test_reply_carries_only_trained_groups_counts_and_scalar_metrics(demo_env: Path, tiny_run: RunConfig) -> None:
    site = site_for({"partition-id": 1}, tiny_run)  # images only
    state = build_model(tiny_run).state_dict()
    content = train_round(site, tiny_run, state, server_round=1)
    assert set(content.keys()) == {ARRAYS_KEY, COUNTS_KEY, METRICS_KEY, SIZE_KEY}
    arrays = record_arrays(content.array_records[ARRAYS_KEY])
    assert list(content.array_records[ARRAYS_KEY].keys()) == [PACKED_KEY]  # one packed array travels
    assert {group_of(k) for k in arrays.keys()} == {"image", "head.mim"}
    assert all(a.dtype in (np.float32, np.int64) for a in arrays.values())
    counts = dict(content.metric_records[COUNTS_KEY])
    assert set(counts) == {"image", "head.mim"} and all(isinstance(v, int) and v > 0 for v in counts.values())
    sizes = dict(content.metric_records[SIZE_KEY])  # the declared size: what the site holds per group
    assert sizes.keys() == counts.keys() and all(counts[g] <= sizes[g] for g in counts)
    metrics = dict(content.metric_records[METRICS_KEY])
    assert all(isinstance(v, float) for v in metrics.values()) and "loss/mim" in metrics
