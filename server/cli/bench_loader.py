"""``fedvlp bench-loader``: images/s of fedvlp's loading path against plain PIL on the same files.

The fedvlp path is what training runs: a :class:`~fedvlp.core.data.datasets.SiteDataset`
(image checks, decode, resize to ``image-size``) behind a ``DataLoader`` with N worker processes
and fedvlp's collate. The baseline is a bare loop: ``Image.open(p).convert("L").resize(...)``
into a numpy array, in one process. Both read the same files; a warm-up pass fills the page
cache first so that neither pays for the disk alone. Run as ``python -m fedvlp.server.cli.bench_loader``
or ``fedvlp bench-loader``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# torch, PIL and the datasets are imported inside the functions: building the `fedvlp`
# parser imports this module and must stay fast.

__all__ = ["default_folder", "find_images", "bench_pil", "bench_fedvlp", "run_bench_loader", "main"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def default_folder() -> Path:
    """``../shared/data/cxr/nih_images`` when present, else the demo world (generated if needed)."""
    from fedvlp.core.config import project_root

    shared = project_root().parent / "shared" / "data" / "cxr" / "nih_images"
    if shared.is_dir():
        return shared
    from fedvlp.core.data.synthetic import WorldSpec, generate_world
    from fedvlp.core.runtime import state_dir

    manifests = generate_world(state_dir() / "demo-quick", WorldSpec.quick())
    return manifests["hospital_b"].parent


def find_images(folder: Path, limit: int | None = None) -> list[Path]:
    """The images of ``folder``: those its ``manifest.csv`` names (column ``image``) if it has
    one, else every PNG/JPEG below it, in sorted order; at most ``limit``."""
    manifest = folder / "manifest.csv"
    paths: list[Path] = []
    if manifest.is_file():
        import pandas as pd

        header = pd.read_csv(manifest, nrows=0).columns
        if "image" in header:
            column = pd.read_csv(manifest, usecols=["image"], dtype=str, keep_default_na=False)["image"]
            paths = [folder / p for p in column if p]
    if not paths:
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return paths[:limit] if limit else paths


def bench_pil(paths: Sequence[Path], size: int) -> float:
    """Images/s of a bare PIL decode + grey + bilinear resize loop."""
    import numpy as np
    from PIL import Image

    started = time.perf_counter()
    for path in paths:
        with Image.open(path) as img:
            array = np.asarray(img.convert("L").resize((size, size), Image.Resampling.BILINEAR))
        assert array.shape == (size, size)
    return len(paths) / (time.perf_counter() - started)


def bench_fedvlp(
    paths: Sequence[Path], size: int, workers: int, batch_size: int = 32, augment: bool = False
) -> tuple[float, int]:
    """Images/s of fedvlp's dataset + DataLoader (worker start-up included), and images skipped."""
    from torch.utils.data import DataLoader

    from fedvlp.core.data.datasets import SiteDataset, collate_samples
    from fedvlp.core.data.loader import rows_from_files

    started = time.perf_counter()
    dataset = SiteDataset(rows_from_files(paths), size, augment=augment)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_samples)
    done = skipped = 0
    for batch in loader:
        done += len(batch["ids"])
        skipped += len(batch["skipped"])
    return done / (time.perf_counter() - started), skipped


def run_bench_loader(
    folder: Path, sizes: Sequence[int], workers: Sequence[int], limit: int, augment: bool = False, repeat: int = 3
) -> list[tuple[str, float]]:
    """``(name, value)`` figures for every size and worker count; each rate is the best of
    ``repeat`` passes (on a shared machine the slower passes measure the neighbours)."""
    import torch

    torch.set_num_threads(1)  # like a simulated client; workers are the parallelism under test
    paths = find_images(folder, limit)
    if not paths:
        raise SystemExit(f"fedvlp bench-loader: no PNG/JPEG images in {folder}")
    bench_pil(paths, min(sizes))  # warm-up: page cache
    figures: list[tuple[str, float]] = [("images", float(len(paths)))]
    for size in sizes:
        pil = max(bench_pil(paths, size) for _ in range(repeat))
        figures.append((f"pil-images-per-second@{size}", pil))
        for count in workers:
            runs = [bench_fedvlp(paths, size, count, augment=augment) for _ in range(repeat)]
            rate, skipped = max(r for r, _ in runs), runs[0][1]
            figures.append((f"fedvlp-images-per-second@{size}-workers{count}", rate))
            figures.append((f"fedvlp-vs-pil@{size}-workers{count}", rate / pil))
            if skipped:
                figures.append((f"skipped@{size}-workers{count}", float(skipped)))
    return figures


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of ``fedvlp bench-loader`` (also used by ``python -m``)."""
    parser = parser or argparse.ArgumentParser(prog="bench_loader", description=__doc__.splitlines()[0])
    parser.add_argument(
        "folder",
        nargs="?",
        help="images (or a folder with manifest.csv); default: ../shared/data/cxr/nih_images, else the demo world",
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224], help="image-size values to resize to")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts")
    parser.add_argument("--limit", type=int, default=1000, help="at most this many images")
    parser.add_argument("--augment", action="store_true", help="include the training augmentation in the fedvlp path")
    parser.add_argument("--repeat", type=int, default=3, help="passes per figure; the best counts")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Print ``name: value`` lines."""
    args = build_parser().parse_args(argv)
    return print_figures(args)


def print_figures(args: argparse.Namespace) -> int:
    """Run the benchmark for parsed arguments and print it."""
    folder = Path(args.folder).resolve() if args.folder else default_folder()
    print(f"folder: {folder}")
    for name, value in run_bench_loader(folder, args.sizes, args.workers, args.limit, args.augment, args.repeat):
        print(f"{name}: {value:.0f}" if value >= 100 else f"{name}: {value:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
