"""Faults in a real deployment on 127.0.0.1: a hospital's machine dies mid-round and comes
back; the SuperLink (with its ServerApp) dies and the run is started again.

The SuperNodes run as docs/deployment.md recommends (``--isolation process`` + the fedvlp
ClientApp worker), so a round costs seconds. Killing means SIGKILL of the whole process
tree, as when a machine loses power.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedvlp.server.cli.local_federation import LocalFederation, kill_tree

pytestmark = pytest.mark.slow

SITES = Path(__file__).resolve().parents[3] / "sites" / "demo"
TINY = 'model-size="tiny" image-size=32 local-steps=2 batch-size=8'


@pytest.fixture()
def fed(world: Path, tmp_path: Path) -> Iterator[LocalFederation]:
    federation = LocalFederation(tmp_path, extra_env={"FEDVLP_DEMO_DATA": str(world)})
    try:
        federation.start_superlink()
        yield federation
    finally:
        federation.stop()


def _node_id(fed: LocalFederation, name: str) -> int:
    """The ID a SuperNode logged when it connected (``SuperNode ID: N``)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = re.findall(r"SuperNode ID: (\d+)", fed.log(name))
        if found:
            return int(found[-1])
        time.sleep(0.3)
    raise AssertionError(f"{name} never connected\n{fed.logs_tail()}")


def _history(checkpoints: Path, round_: int) -> list[dict]:
    return json.loads((checkpoints / f"round_{round_:04d}.json").read_text())["history"]


def test_killed_supernode_does_not_stop_the_round_and_rejoins_after_restart(
    fed: LocalFederation, tmp_path: Path
) -> None:
    for name in ("hospital_a", "hospital_b"):
        fed.start_supernode(name, SITES / f"{name}.yaml")
        fed.wait_worker_ready(name)
    old_b = _node_id(fed, "hospital_b")
    out = tmp_path / "run"
    fed.run(f"{TINY} rounds=3 min-nodes=2 min-replies=1 round-timeout=20 out-dir={json.dumps(str(out))}")

    # Mid-round: hospital_b has received round 1's message and not replied yet.
    deadline = time.monotonic() + 180
    while "Receiving: train message" not in fed.log("hospital_b"):
        assert time.monotonic() < deadline, fed.logs_tail()
        time.sleep(0.05)
    fed.kill("hospital_b")

    checkpoints = out / "checkpoints"
    fed.wait_round(checkpoints, 1, watch=("superlink", "hospital_a"))
    first = _history(checkpoints, 1)[-1]
    assert (first["nodes"], first["replies"]) == (2, 1), first
    assert [s["node_id"] for s in first["sites"]] == [_node_id(fed, "hospital_a")]

    fed.start_supernode("hospital_b", SITES / "hospital_b.yaml")  # same site, same port
    new_b = _node_id(fed, "hospital_b")
    fed.wait_round(checkpoints, 3, timeout=240, watch=("superlink", "hospital_a", "hospital_b"))
    last = _history(checkpoints, 3)[-1]
    # Back to both hospitals' replies; the restarted node is a new SuperNode to the SuperLink.
    assert last["replies"] == 2, last
    assert sorted(s["node_id"] for s in last["sites"]) == sorted([_node_id(fed, "hospital_a"), new_b])
    assert new_b != old_b
    for round_ in (0, 1, 2, 3):
        assert (checkpoints / f"round_{round_:04d}.safetensors").is_file()


def test_killed_superlink_resumes_from_the_last_completed_round(world: Path, tmp_path: Path) -> None:
    # One site: a federation of one hospital aggregates its single reply every round.
    fed = LocalFederation(tmp_path, extra_env={"FEDVLP_DEMO_DATA": str(world)})
    try:
        fed.start_superlink()
        fed.start_supernode("hospital_a", SITES / "hospital_a.yaml")
        fed.wait_worker_ready("hospital_a")
        out = tmp_path / "run"
        run_config = f"{TINY} rounds=2 min-nodes=1 round-timeout=60 out-dir={json.dumps(str(out))}"
        checkpoints = out / "checkpoints"
        fed.run(run_config, name="flwr-run-1")
        fed.wait_round(checkpoints, 1, watch=("superlink", "hospital_a"))
        kill_tree(fed.procs["superlink"].pid)  # with its SuperExec and the running ServerApp
        fed.procs["superlink"].wait(timeout=10)
        done = {p.name: p.read_bytes() for p in checkpoints.glob("round_000[01].*")}
        assert json.loads((checkpoints / "latest.json").read_text())["round"] == 1, "round 2 finished before the kill"

        # The operator's recovery (docs/deployment.md, Faults): SuperLink, then the SuperNode
        # with its worker (the SuperNode may have exited by itself already), then the same
        # flwr run command.
        fed.start_superlink()
        fed.kill("hospital_a")
        fed.start_supernode("hospital_a", SITES / "hospital_a.yaml")
        fed.wait_worker_ready("hospital_a")
        node = _node_id(fed, "hospital_a")
        fed.run(run_config, name="flwr-run-2")
        fed.wait_round(checkpoints, 2, watch=("superlink", "hospital_a"))
        # The same run without interruption, for the weights it should have ended with.
        reference = tmp_path / "reference" / "checkpoints"
        fed.run(run_config.replace(json.dumps(str(out)), json.dumps(str(reference.parent))), name="flwr-run-reference")
        fed.wait_round(reference, 2, watch=("superlink", "hospital_a"))
    finally:
        fed.stop()

    # Every completed round's checkpoint survived byte for byte, and the run went on from it.
    assert {name: (checkpoints / name).read_bytes() for name in done} == done
    history = _history(checkpoints, 2)
    assert [r["round"] for r in history] == [1, 2]
    assert history[0] == json.loads(done["round_0001.json"])["history"][0]
    assert [s["node_id"] for s in history[1]["sites"]] == [node]
    assert "Resuming from round 1" in fed.log("flwr-run-2")
    # Bit-identical to the uninterrupted run (every random draw derives from seed and round).
    resumed, uninterrupted = (
        load_file(str(checkpoints / "round_0002.safetensors")),
        load_file(str(reference / "round_0002.safetensors")),
    )
    assert resumed.keys() == uninterrupted.keys()
    assert [k for k in resumed if not torch.equal(resumed[k], uninterrupted[k])] == [], (
        "resumed weights differ from an uninterrupted run"
    )
