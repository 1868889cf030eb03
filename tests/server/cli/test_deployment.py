"""A real Flower 1.41 deployment on localhost: one SuperLink, one SuperNode per demo hospital,
and ``flwr run <project> local-deployment``.

Flower 1.41 specifics this test relies on (checked against the installed flwr):

* ``flower-superlink`` serves its Control, Fleet and ServerApp runtime APIs over HTTP on one
  port, ``--host``/``--port`` (default 127.0.0.1:8000). ``--fleet-api-address``,
  ``--control-api-address`` are deprecated and ``--serverappio-api-address`` is rejected.
  It starts its own ``flower-superexec`` in a new session (it follows the SuperLink's exit
  through ``--parent-pid``).
* ``flower-supernode --superlink HOST:PORT`` talks to that same port; ``--port`` is the
  SuperNode's own runtime HTTP API for its ClientApp processes (default 9094, so several
  SuperNodes on one machine need distinct ports). ``--clientappio-api-address`` no longer
  exists.
* ``flwr run`` reads the connection from ``$FLWR_HOME/config.toml``
  (:func:`fedvlp.server.cli.flwr_config.write_flwr_config`).
* ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` must be in the SuperLink's and the
  SuperNodes' environment, or every run installs the app's dependencies into a fresh env.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedvlp.core.config import project_root
from fedvlp.server.cli.flwr_config import DEPLOYMENT_CONNECTION, write_flwr_config
from fedvlp.server.cli.local_federation import BIN, flwr_env, free_ports, spawn, stop_processes, tail, wait_for_port

pytestmark = pytest.mark.slow

RUN_TIMEOUT = 300.0


# ------------------------------------------------------------------------------- fixture
@pytest.fixture()
def federation(demo_env: Path, tmp_path: Path) -> Iterator[dict]:
    """A SuperLink and 3 SuperNodes (hospital_a/b/c) on free localhost ports."""
    flwr_home = tmp_path / "flwr"
    env = flwr_env(flwr_home, {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    link_port, *node_ports = free_ports(4)
    write_flwr_config(flwr_home, superlink=f"127.0.0.1:{link_port}")
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []

    def start(name: str, args: list[str]) -> subprocess.Popen:
        proc = spawn(args, logs / f"{name}.log", env, tmp_path)
        procs.append(proc)
        return proc

    try:
        link = start(
            "superlink", [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(link_port)]
        )
        wait_for_port(link_port, link, logs / "superlink.log")
        for site, port in zip(("hospital_a", "hospital_b", "hospital_c"), node_ports):
            site_file = (demo_env / f"{site}.yaml").resolve()
            node = start(
                site,
                [
                    str(BIN / "flower-supernode"),
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{link_port}",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--node-config",
                    f"site-config='{site_file}'",
                ],
            )
            wait_for_port(port, node, logs / f"{site}.log")
        yield {"env": env, "logs": logs, "procs": procs, "flwr_home": flwr_home}
    finally:
        stop_processes(procs)


def _logs(folder: Path) -> str:
    return "\n".join(f"--- {log.name}\n{tail(log)}" for log in sorted(folder.glob("*.log")))


def test_flwr_run_on_superlink_and_three_supernodes(federation: dict, tmp_path: Path) -> None:
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    run_config = (
        'model-size="tiny" image-size=32 rounds=1 local-steps=2 batch-size=8 min-nodes=3 '
        f"out-dir={json.dumps(str(out))}"
    )
    log = federation["logs"] / "flwr-run.log"
    started = time.monotonic()
    flwr = spawn(
        [str(BIN / "flwr"), "run", str(project_root()), DEPLOYMENT_CONNECTION, "--run-config", run_config, "--stream"],
        log,
        federation["env"],
        tmp_path,
    )
    federation["procs"].append(flwr)  # stopped by the fixture whatever happens

    latest = None
    while time.monotonic() - started < RUN_TIMEOUT:
        if (checkpoints / "latest.json").is_file():
            latest = json.loads((checkpoints / "latest.json").read_text())
            if latest["round"] >= 1:
                break
        for proc in federation["procs"][:-1]:
            assert proc.poll() is None, f"{proc.args[0]} died ({proc.returncode})\n{_logs(federation['logs'])}"
        if flwr.poll() is not None and not (checkpoints / "latest.json").is_file():
            time.sleep(2)  # the stream may end a moment before the last file is renamed
            if not (checkpoints / "latest.json").is_file():
                pytest.fail(f"flwr run ended ({flwr.returncode}) without checkpoints\n{_logs(federation['logs'])}")
        time.sleep(0.5)
    assert latest is not None and latest["round"] == 1, (
        f"no round 1 after {RUN_TIMEOUT:.0f}s\n{_logs(federation['logs'])}"
    )
    print(f"deployment round 1 after {time.monotonic() - started:.1f}s")

    state = json.loads((checkpoints / "round_0001.json").read_text())
    record = state["history"][-1]
    assert record["nodes"] == 3 and record["replies"] == 3 and not record["rejected"], record
    uploads = {frozenset(site["counts"]) for site in record["sites"]}
    assert frozenset({"image", "head.mim"}) in uploads and frozenset({"text", "head.mlm"}) in uploads

    before = load_file(str(checkpoints / "round_0000.safetensors"))
    after = load_file(str(checkpoints / "round_0001.safetensors"))
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("image.") for k in changed), "no image-encoder weight changed"
    assert any(k.startswith("text.") for k in changed), "no text-encoder weight changed"
    assert any(k.startswith("head.mlm.") for k in changed), "the MLM head (text-only and pair sites) did not change"
