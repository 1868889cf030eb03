"""Round overhead of a real deployment: Flower's default ClientApp isolation vs the fedvlp worker.

Run from the project root (not collected by pytest; it takes a few minutes)::

    python -m tests.server.bench_deployment            # both modes, 3 rounds each
    python -m tests.server.bench_deployment --rounds 4 --modes worker

For each mode it starts a SuperLink and two SuperNodes (hospital_a: pairs, hospital_b:
images) on free 127.0.0.1 ports over a tiny generated world, runs ``flwr run`` with the
tiny model, and prints ``name: value`` lines from the server's round history: mean round
wall time, the slowest client's compute, and their difference (the overhead), over rounds
2.. (round 1 also pays worker start-up and dataset loading).

Modes:

* ``subprocess``: ``flower-supernode`` as is; its SuperExec starts a fresh
  ``flwr-clientapp`` process (interpreter, ``import torch``, dataset, model) per message.
* ``worker-stock``: ``flower-supernode --isolation process`` + ``python -m fedvlp.client.worker``
  (one long-running process per SuperNode that runs every ClientApp task); the SuperNode
  waits Flower's 3 s between two pulls that found no message.
* ``worker``: the same with ``python -m fedvlp.client.supernode --poll-interval 0.3``
  instead of ``flower-supernode`` (the recommended setup of docs/deployment.md).

The ServerApp collects replies every 0.1 s in every mode (``fedvlp.server.app.exchange``).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

from fedvlp.core.config import project_root
from fedvlp.server.app.rounds import round_summary

from .flwr_processes import POLL_INTERVAL, LocalFederation

SITES = project_root() / "sites" / "demo"


def measure(mode: str, world: Path, root: Path, rounds: int, local_steps: int) -> dict[str, float]:
    """Run one federation in ``mode`` and summarise its round history."""
    fed = LocalFederation(root, extra_env={"FEDVLP_DEMO_DATA": str(world)})
    out = root / "run"
    try:
        fed.start_superlink()
        for name in ("hospital_a", "hospital_b"):
            fed.start_supernode(
                name,
                SITES / f"{name}.yaml",
                worker=mode != "subprocess",
                poll_interval=POLL_INTERVAL if mode == "worker" else None,
            )
        if mode != "subprocess":
            for name in ("hospital_a", "hospital_b"):
                fed.wait_worker_ready(name)
        fed.run(
            f'model-size="tiny" image-size=32 rounds={rounds} local-steps={local_steps} batch-size=8 '
            f"min-nodes=2 out-dir={json.dumps(str(out))}"
        )
        fed.wait_round(
            out / "checkpoints", rounds, timeout=120.0 * rounds + 120.0, watch=("superlink", "hospital_a", "hospital_b")
        )
    finally:
        fed.stop()
    history = json.loads((out / "checkpoints" / f"round_{rounds:04d}.json").read_text())["history"]
    summary = round_summary(history)
    figures = {
        "round-seconds": summary["round-seconds"],
        "client-compute-seconds": summary["round-client-compute-seconds"],
        "overhead-seconds": summary["round-other-seconds"],
        "first-round-seconds": summary["first-round-seconds"],
    }
    if mode != "subprocess":
        figures.update(worker_split(fed))
    return figures


def worker_split(fed: LocalFederation) -> dict[str, float]:
    """Mean seconds the workers spent pulling a task's message from their SuperNode and
    pushing its reply, over every task but each worker's first (start-up)."""
    steps: dict[str, list[float]] = {"pull": [], "push": []}
    for name in ("hospital_a", "hospital_b"):
        for line in [x for x in fed.log(f"{name}-worker").splitlines() if "Task completed:" in x][1:]:
            for step in steps:
                found = re.search(rf"{step} ([0-9.]+)s", line)
                if found:
                    steps[step].append(float(found.group(1)))
    return {f"worker-{step}-seconds": sum(v) / len(v) for step, v in steps.items() if v}


def main(argv: list[str] | None = None) -> int:
    """Print ``deployment-<mode>-<figure>: value`` lines."""
    from fedvlp.core.data.synthetic import WorldSpec, generate_world

    parser = argparse.ArgumentParser(
        prog="python -m tests.server.bench_deployment", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=2)
    parser.add_argument(
        "--modes", nargs="+", default=["subprocess", "worker"], choices=["subprocess", "worker-stock", "worker"]
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fedvlp-bench-") as tmp:
        world = Path(tmp) / "world"
        generate_world(world, WorldSpec(n_pairs=64, n_images=64, n_reports=64, n_labeled=120, seed=1))
        for mode in args.modes:
            for name, value in measure(mode, world, Path(tmp) / mode, args.rounds, args.local_steps).items():
                print(f"deployment-{mode}-{name}: {value:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
