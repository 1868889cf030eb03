"""``fedvlp simulate --ray-address``: the virtual clients run on a Ray cluster started apart."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fedvlp.core.config import RunConfig
from tests.server.proc_net import descendants


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _processes_named(name: str, pids: set[int]) -> set[int]:
    found = set()
    for pid in pids:
        try:
            if name in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                found.add(pid)
        except OSError:
            continue
    return found


def test_forwarded_env_keeps_fedvlps_settings_and_the_import_path_only() -> None:
    from fedvlp.server.cli.simulation import forwarded_env

    env = forwarded_env(
        {
            "FEDVLP_DEMO_DATA": "/data/world",
            "HF_HUB_OFFLINE": "1",
            "FLWR_HOME": "/f",
            "AWS_SECRET": "x",
            "HOME": "/root",
            "PYTHONPATH": "/extra",
        }
    )
    assert {k: v for k, v in env.items() if k != "PYTHONPATH"} == {
        "FEDVLP_DEMO_DATA": "/data/world",
        "HF_HUB_OFFLINE": "1",
        "FLWR_HOME": "/f",
    }
    assert env["PYTHONPATH"].split(os.pathsep) == [*sys.path, "/extra"]


@pytest.mark.slow
def test_a_simulation_runs_on_a_running_ray_cluster_and_leaves_it_running(demo_env: Path, tiny_run: RunConfig) -> None:
    from fedvlp.server.cli.simulation import simulate

    ray = Path(sys.executable).parent / "ray"
    if not ray.exists():
        pytest.skip("the ray command is not installed beside this Python")
    # a short folder: Ray's Unix sockets live under it (108-byte path limit)
    temp = tempfile.mkdtemp(prefix="fr", dir="/tmp")
    port = _free_port()
    # The cluster's workers are started by `ray start` with its own environment: without the
    # site files' ${FEDVLP_DEMO_DATA}, which the simulation must forward to them.
    env = {k: v for k, v in os.environ.items() if k != "FEDVLP_DEMO_DATA"}
    head = subprocess.Popen(
        [
            str(ray),
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(port),
            "--num-cpus",
            "2",
            "--temp-dir",
            temp,
            "--include-dashboard",
            "false",
            "--disable-usage-stats",
        ],
        env=env,
        cwd=temp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not _processes_named("raylet", descendants(head.pid)):
            assert head.poll() is None and time.monotonic() < deadline, "ray start --head did not come up"
            time.sleep(0.5)
        ours = descendants(os.getpid())
        records: list[dict] = []
        started: set[int] = set()

        def on_round(record: dict) -> None:
            records.append(record)
            started.update(_processes_named("raylet", descendants(os.getpid()) - ours))

        simulate(tiny_run, on_round=on_round, ray_address=f"127.0.0.1:{port}")
        assert [r["round"] for r in records] == [1, 2]
        assert all(r["replies"] == 3 and not r["rejected"] for r in records)  # every site found its data
        assert not started  # connected to the cluster: no raylet of its own
        assert head.poll() is None and _processes_named("raylet", descendants(head.pid))  # the cluster is still up
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops its node's processes on SIGTERM
        head.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)
