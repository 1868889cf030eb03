"""Round overhead of a real deployment: Flower's default ClientApp isolation vs the fedvlp worker.

It takes a minute or a few per mode::

    fedvlp bench --deployment                       # the recommended worker setup, 3 rounds
    fedvlp bench --deployment --rounds 4 --modes subprocess worker-stock worker

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

import json
import re
import tempfile
from pathlib import Path

from fedvlp.core.config import project_root
from fedvlp.server.app.rounds import round_summary

from .local_federation import POLL_INTERVAL, LocalFederation

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


def deployment_figures(
    rounds: int = 3, modes: list[str] | tuple[str, ...] = ("worker",), local_steps: int = 2
) -> dict[str, float]:
    """``deployment-<mode>-<figure>`` -> value for every mode (a federation each, in a temporary folder)."""
    from fedvlp.core.data.synthetic import WorldSpec, generate_world

    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="fedvlp-bench-") as tmp:
        world = Path(tmp) / "world"
        generate_world(world, WorldSpec(n_pairs=64, n_images=64, n_reports=64, n_labeled=120, seed=1))
        for mode in modes:
            for name, value in measure(mode, world, Path(tmp) / mode, rounds, local_steps).items():
                figures[f"deployment-{mode}-{name}"] = round(value, 2)
    return figures
