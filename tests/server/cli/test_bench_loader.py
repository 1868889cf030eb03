"""bench-loader prints one images/s figure per size and worker count for both paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fedvlp.server.cli.bench_loader import find_images, run_bench_loader


def _folder(tmp_path: Path) -> Path:
    (tmp_path / "sub").mkdir()
    for k, name in enumerate(("a.png", "sub/b.png", "c.jpg")):
        Image.fromarray(np.full((48, 40), 30 * (k + 1), dtype=np.uint8)).save(tmp_path / name)
    return tmp_path


def test_images_come_from_the_manifest_when_there_is_one(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    assert [p.name for p in find_images(folder)] == ["a.png", "c.jpg", "b.png"]
    (folder / "manifest.csv").write_text("id,image\n1,sub/b.png\n2,a.png\n")
    assert find_images(folder) == [folder / "sub" / "b.png", folder / "a.png"]


def test_every_size_and_worker_count_gets_a_figure(tmp_path: Path) -> None:
    figures = dict(run_bench_loader(_folder(tmp_path), sizes=[32, 64], workers=[0], limit=10, repeat=1))
    assert set(figures) == {
        "images",
        "pil-images-per-second@32",
        "pil-images-per-second@64",
        "fedvlp-images-per-second@32-workers0",
        "fedvlp-vs-pil@32-workers0",
        "fedvlp-images-per-second@64-workers0",
        "fedvlp-vs-pil@64-workers0",
    }
    assert figures["images"] == 3.0 and all(v > 0 for v in figures.values())
