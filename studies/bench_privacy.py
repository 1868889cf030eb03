"""The privacy figures of docs/privacy.md: epsilon of the demo sites and the cost of DP-SGD.

Prints epsilon after 5 rounds of the demo defaults for a few noise multipliers (opacus' RDP
accountant, :func:`fedvlp.core.privacy.epsilon_spent`), and, given a generated demo world, the
seconds per local step with and without DP-SGD at the single-modality demo sites (the plain
baseline uses the same GroupNorm model).

Usage (the world from ``fedvlp generate-demo .fedvlp/demo`` or ``fedvlp demo``)::

    python studies/bench_privacy.py [WORLD]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from fedvlp.core.config import RunConfig, list_site_files, load_site
from fedvlp.core.models import build_model
from fedvlp.core.privacy import DPSGDTrainer, epsilon_spent, plan_privacy, sample_rate
from fedvlp.core.train import LocalTrainer, load_site_datasets

CLIENT_LEVEL_SITE = "hospital_a"  # the demo's paired site: its objectives couple samples (client-level DP)


def demo_epsilons(run: RunConfig, rows: Mapping[str, int], rounds: int, delta: float) -> dict[str, float]:
    """Epsilon after ``rounds`` rounds for the demo sites (``rows`` per site) under ``run``:
    hospital_a at client level, hospital_b / hospital_c at sample level."""
    sample = [(run.dp_noise_multiplier, sample_rate(rows["hospital_b"], run.batch_size), run.local_steps)]
    text = [(run.dp_noise_multiplier, sample_rate(rows["hospital_c"], run.batch_size), run.local_steps)]
    return {
        CLIENT_LEVEL_SITE: epsilon_spent([(run.dp_client_noise_multiplier, 1.0, 1)] * rounds, delta),
        "hospital_b": epsilon_spent(sample * rounds, delta),
        "hospital_c": epsilon_spent(text * rounds, delta),
    }


def benchmark(world: Path, sizes: Sequence[str] = ("tiny", "small"), steps: int = 10) -> dict[str, float]:
    """Seconds per local step with and without DP-SGD at the single-modality demo sites of
    ``world`` (a generated demo world); the non-DP baseline uses the same GroupNorm model."""
    os.environ["FEDVLP_DEMO_DATA"] = str(world)
    out: dict[str, float] = {}
    for size in sizes:
        run = RunConfig(model_size=size, norm="group", batch_size=32)
        for site_file in list_site_files("sites/demo"):
            site = load_site(site_file)
            if site.name == CLIENT_LEVEL_SITE:
                continue
            model = build_model(run)
            trainer = LocalTrainer(model, load_site_datasets(site, run, model.max_text_len), run, torch.device("cpu"))
            trainer.train(2, seed=0)  # warm-up
            started = time.perf_counter()
            trainer.train(steps, seed=1)
            plain = (time.perf_counter() - started) / steps
            dp = DPSGDTrainer(trainer, run, plan_privacy(trainer, run).sources)
            dp.train(2, seed=0)
            started = time.perf_counter()
            dp.train(steps, seed=1)
            private = (time.perf_counter() - started) / steps
            out[f"{size}/{site.name}/step-seconds"] = plain
            out[f"{size}/{site.name}/dp-step-seconds"] = private
            out[f"{size}/{site.name}/dp-slowdown"] = private / plain
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Print the epsilon figures, then the step times when a world is given."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("world", nargs="?", type=Path, help="a generated demo world (adds the DP-SGD step times)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    demo = RunConfig()
    for sigma in (1.0, 1.1, 1.5):
        run = demo.replace(dp_noise_multiplier=sigma, dp_client_noise_multiplier=sigma)
        figures = demo_epsilons(run, {"hospital_b": 800, "hospital_c": 800}, 5, 1e-5)
        print(" ".join(f"epsilon/5-rounds/sigma={sigma}/{k}: {v:.3f}" for k, v in figures.items()))
    for sigma in (5.0, 10.0):
        epsilon = epsilon_spent([(sigma, 1.0, 1)] * 5, 1e-5)
        print(f"epsilon/5-rounds/client-sigma={sigma}/{CLIENT_LEVEL_SITE}: {epsilon:.3f}")
    if args.world is not None:
        for name, value in benchmark(args.world).items():
            print(f"{name}: {value:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
