"""``RunConfig.config_hash`` values pinned from before the hash was derived from field metadata.

Checkpoints store the hash of their run config and a run resumes only from a folder with the
same hash, so these values must never change: a change here strands every earlier checkpoint.
"""

from __future__ import annotations

from typing import Any

import pytest

from fedvlp.core.config import RunConfig

# Computed with the hand-kept key lists of core/config.py at main b051c04.
PINNED: dict[str, tuple[dict[str, Any], str]] = {
    "default": ({}, "8c5c39df1b01ed34"),
    "tiny": (
        {"model_size": "tiny", "rounds": 3, "out_dir": "x", "device": "cpu", "loader_workers": 2},
        "4ee1b59e06bb3cb8",
    ),
    "dp": ({"norm": "group", "dp_noise_multiplier": 1.5, "dp_client_clip": 0.5}, "61b6116eafc1386a"),
    "agg": ({"aggregation": "median", "server_optimizer": "fedadam", "server_lr": 0.1}, "ea79e7542527b749"),
    "secagg": ({"secure_aggregation": "secagg+", "secagg_num_shares": 4.0}, "32e0ff9748a72f8c"),
    "later": (
        {
            "weight_distill": 0.5,
            "prox_mu": 0.01,
            "warmup_steps": 5,
            "fraction_train": 0.5,
            "upload_compression": "int8",
        },
        "92538f3a8925abbe",
    ),
    "refers": (
        {"recipe": "refers", "model_size": "tiny", "lr": 1e-3, "seed": 3, "mask_ratio": 0.3},
        "96e61f08a4ce3c31",
    ),
    "mix": (
        {
            "batch_size": 8,
            "local_steps": 2,
            "tokenizer": "minilm",
            "sites": "sites/x",
            "persistent_optimizer": True,
            "trim_fraction": 0.2,
        },
        "01052e9e39dee859",
    ),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_config_hash_of_earlier_configurations_is_unchanged(name: str) -> None:
    changes, expected = PINNED[name]
    assert RunConfig(**changes).config_hash() == expected
