"""Shared fixtures: a small generated demo world and offline settings for every test."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fedvlp.core.config import RunConfig, project_root

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# Tiny models on a shared 2-core machine: OpenMP threads that spin-wait for each other make
# every small op hundreds of times slower when other processes (Ray actors, SuperNodes) run.
torch.set_num_threads(1)


def record_arrays(record: object) -> dict[str, "np.ndarray"]:
    """Name -> numpy array of a message's ArrayRecord, unpacked when packed (core/compression.py)."""
    from fedvlp.core.compression import unpack_record

    return unpack_record({k: a.numpy() for k, a in record.items()})  # type: ignore[attr-defined]


CXR_DATA = (project_root().parent / "shared" / "data" / "cxr").resolve()
DEMO_SITES = project_root() / "sites" / "demo"


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic world (same generator and layout as the demo), made once per session."""
    from fedvlp.core.data.synthetic import WorldSpec, generate_world

    out = tmp_path_factory.mktemp("world")
    spec = WorldSpec(n_pairs=64, n_images=64, n_reports=64, n_labeled=120, seed=1)
    generate_world(out, spec)
    return out


@pytest.fixture()
def demo_env(world: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the demo site files at the tiny world; returns the sites folder."""
    monkeypatch.setenv("FEDVLP_DEMO_DATA", str(world))
    return DEMO_SITES


@pytest.fixture()
def tiny_run(tmp_path: Path) -> RunConfig:
    """Run settings at test size: tiny models, 32 px images, a few steps."""
    return RunConfig(
        model_size="tiny",
        image_size=32,
        rounds=2,
        local_steps=3,
        batch_size=8,
        out_dir=str(tmp_path / "run"),
        sites=str(DEMO_SITES),
    )


def needs_cxr() -> pytest.MarkDecorator:
    """Skip when ../shared/data/cxr is absent (the project works without it)."""
    return pytest.mark.skipif(not CXR_DATA.is_dir(), reason=f"{CXR_DATA} not present")
