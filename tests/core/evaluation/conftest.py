"""Small labelled manifests with visible labels, written as PNGs into temporary folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fedvlp.core.config import ModelConfig
from fedvlp.core.evaluation import LabeledSet, load_labeled

LABELS = ("square", "bar")
SIZE = 32


def write_manifest(
    root: Path,
    n: int = 72,
    seed: int = 0,
    corrupt: bool = True,
    bad_label: bool = True,
    split: list[str] | None = None,
    patients: bool = True,
) -> Path:
    """``n`` images: class ``square`` = a big bright square (easy), class ``bar`` = a thin grey vertical bar.

    Adds one row whose PNG is random bytes and one row whose ``square`` label is ``"2"``.
    Images live in ``root/images`` and the manifest refers to them relatively.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        square, bar = i % 2, int(rng.random() < 0.4)
        img = rng.normal(0.2, 0.05, (SIZE, SIZE))
        if square:
            y, x = rng.integers(2, SIZE - 14, 2)
            img[y : y + 12, x : x + 12] = 1.0
        if bar:
            x = rng.integers(2, SIZE - 4)
            img[:, x : x + 2] = 0.6
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(root / "images" / f"{i}.png")
        rows.append(
            {"id": f"r{i}", "image": f"images/{i}.png", "patient_id": f"p{i // 3}", "square": square, "bar": bar}
        )
    if corrupt:
        (root / "images" / "corrupt.png").write_bytes(rng.bytes(300))
        rows.append({"id": "corrupt", "image": "images/corrupt.png", "patient_id": "px", "square": 0, "bar": 0})
    if bad_label:
        rows.append({"id": "badlabel", "image": "images/0.png", "patient_id": "py", "square": "2", "bar": 0})
    frame = pd.DataFrame(rows)
    if split is not None:
        frame["split"] = split[: len(frame)]
    if not patients:
        frame = frame.drop(columns="patient_id")
    path = root / "manifest.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_manifest(tmp_path_factory.mktemp("labelled"))


@pytest.fixture(scope="session")
def labeled(manifest: Path) -> LabeledSet:
    return load_labeled(manifest, LABELS, SIZE)


@pytest.fixture(scope="session")
def tiny_config():
    return ModelConfig.preset("tiny", SIZE, 100).image


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
