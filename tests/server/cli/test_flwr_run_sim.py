"""``flwr run <project> local-sim``: the Flower CLI's own local simulation (Flower 1.41).

What ``flwr run`` with a ``:local:`` connection needs on 1.41 (checked against the
installed flwr, ``flwr/cli/local_superlink.py``):

* The connection comes from ``$FLWR_HOME/config.toml``
  (:func:`fedvlp.server.cli.flwr_config.write_flwr_config`); ``options.num-supernodes`` and
  ``options.backend.client-resources.*`` there still work but print a deprecation warning,
  so the federation's size and resources go to a ``--federation-config`` TOML file instead
  (:func:`fedvlp.server.cli.flwr_config.federation_config_path`; without it Flower simulates 2
  SuperNodes).
* ``flwr run`` starts a *detached* ``flower-superlink --simulation`` (new session, own
  ``flower-superexec``, which starts ``flwr-simulation`` and Ray) and leaves it running
  after the run. It listens on 127.0.0.1:39091 (HTTP) and is told 127.0.0.1:39093
  (legacy gRPC Control API): override with ``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT`` and
  ``FLWR_LOCAL_CONTROL_API_PORT`` (read when ``flwr`` starts). If something already
  answers ``/health`` on that port, ``flwr run`` reuses it, so the run gets *that*
  SuperLink's environment (another ``FLWR_HOME``, ``FEDVLP_DEMO_DATA``...). Hence free ports
  here, and the SuperLink is found by its ``--log-file`` under our ``FLWR_HOME`` and
  stopped by ``fedvlp flwr-config --stop`` (:func:`~fedvlp.server.cli.flwr_config.stop_local_superlink`);
  its ``flower-superexec`` watches ``--parent-pid`` and exits with it.
* The SuperLink, and through it the ServerApp and the simulated ClientApps, inherit the
  environment of ``flwr run``: ``FEDVLP_DEMO_DATA``, ``RAY_TMPDIR``,
  ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` (otherwise every run creates a fresh
  env and installs fedvlp's dependencies, which fails offline) must be exported before it.
* ``RAY_TMPDIR`` must be short: Ray puts AF_UNIX sockets under
  ``$RAY_TMPDIR/ray/session_<date>_<pid>/sockets/plasma_store`` and refuses paths over 107
  bytes, so pytest's ``tmp_path`` is too long ("Simulation Runtime crashed").
* ``flwr run --stream`` exits with 0 even when the simulation crashes: check the checkpoints.
* Paths in ``--run-config`` must be absolute: the ServerApp and ClientApps do not run in
  the directory where ``flwr run`` was called.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedvlp.core.config import project_root
from fedvlp.server.cli.flwr_config import (
    SIM_CONNECTION,
    federation_config_path,
    stop_local_superlink,
    write_flwr_config,
)
from fedvlp.server.cli.local_federation import BIN, flwr_env, free_ports, spawn, stop_tree, tail

pytestmark = pytest.mark.slow

RUN_TIMEOUT = 300.0
ROUNDS = 2
TAIL_LINES = 60  # failure messages quote the run log and the SuperLink log


# ------------------------------------------- finding the detached local SuperLink by PID
def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def local_superlinks(flwr_home: Path) -> list[int]:
    """PIDs of the detached SuperLinks that ``flwr run`` started for this ``FLWR_HOME``."""
    log_file = str(flwr_home / "local-superlink" / "superlink.log")
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            argv = _cmdline(int(entry.name))
            if any(arg.endswith("flower-superlink") for arg in argv[:2]) and log_file in argv:
                pids.append(int(entry.name))
    return pids


def superexecs_of(parents: list[int]) -> list[int]:
    """PIDs of the ``flower-superexec`` processes whose ``--parent-pid`` is one of ``parents``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            argv = _cmdline(int(entry.name))
            if any(arg.endswith("flower-superexec") for arg in argv[:2]) and "--parent-pid" in argv:
                if int(argv[argv.index("--parent-pid") + 1]) in parents:
                    pids.append(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ---------------------------------------------------------------------------------- test
def test_flwr_run_local_simulation(demo_env: Path, tmp_path: Path) -> None:
    flwr_home = tmp_path / "flwr"
    config = write_flwr_config(flwr_home, num_supernodes=3)
    assert f'default = "{SIM_CONNECTION}"' in config.read_text()
    http_port, control_port = free_ports(2)
    ray_tmp = Path(tempfile.mkdtemp(prefix="fvray-", dir="/tmp"))  # AF_UNIX paths <= 107 bytes
    env = flwr_env(
        flwr_home,
        {
            "RAY_TMPDIR": str(ray_tmp),
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
            "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
            "RAY_USAGE_STATS_ENABLED": "0",
        },
    )
    out = tmp_path / "run"
    run_config = " ".join(
        [
            'model-size="tiny"',
            "image-size=32",
            f"rounds={ROUNDS}",
            "local-steps=2",
            "batch-size=8",
            f"out-dir={json.dumps(str(out))}",
            f"sites={json.dumps(str(demo_env.resolve()))}",
        ]
    )
    log = tmp_path / "flwr-run.log"
    started = time.monotonic()
    flwr = None
    try:
        flwr = spawn(
            [
                str(BIN / "flwr"),
                "run",
                str(project_root()),
                SIM_CONNECTION,
                "--run-config",
                run_config,
                "--federation-config",
                str(federation_config_path(flwr_home)),
                "--stream",
            ],
            log,
            env,
            tmp_path,
        )
        try:
            flwr.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"flwr run did not finish within {RUN_TIMEOUT:.0f}s\n{tail(log, TAIL_LINES)}\n"
                f"{tail(flwr_home / 'local-superlink' / 'superlink.log', TAIL_LINES)}"
            )
        elapsed = time.monotonic() - started
        assert flwr.returncode == 0, tail(log, TAIL_LINES)
        superlinks = local_superlinks(flwr_home)
        assert superlinks, "flwr run did not start a local SuperLink under our FLWR_HOME"
        superexecs = superexecs_of(superlinks)
        assert superexecs, "the local SuperLink runs no flower-superexec"
        assert sorted(stop_local_superlink(flwr_home)) == sorted(superlinks)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(pid) for pid in superlinks + superexecs):
            time.sleep(0.2)
        assert not [pid for pid in superlinks + superexecs if _alive(pid)], (
            "the SuperLink or its SuperExec survived --stop"
        )
    finally:
        roots = local_superlinks(flwr_home) + ([flwr.pid] if flwr is not None and flwr.poll() is None else [])
        stop_tree(roots)
        if flwr is not None and flwr.poll() is None:
            flwr.kill()
            flwr.wait(timeout=10)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    print(f"flwr run local-sim, {ROUNDS} rounds: {elapsed:.1f}s")

    checkpoints = out / "checkpoints"
    detail = f"\n{tail(log, TAIL_LINES)}\n{tail(flwr_home / 'local-superlink' / 'superlink.log', TAIL_LINES)}"
    assert (checkpoints / "latest.json").is_file(), f"no checkpoints in {checkpoints}{detail}"
    assert json.loads((checkpoints / "latest.json").read_text())["round"] == ROUNDS, detail
    for round_ in range(ROUNDS + 1):
        assert (checkpoints / f"round_{round_:04d}.safetensors").is_file()
    history = json.loads((checkpoints / f"round_{ROUNDS:04d}.json").read_text())["history"]
    assert [r["round"] for r in history] == list(range(1, ROUNDS + 1))
    assert all(r["replies"] == 3 and not r["rejected"] for r in history), history
    # Flower's engine behind a SuperLink too: each node is logged under its site file's name,
    # and the names sit on the right data (B uploads image groups only, C text groups only)
    uploads = {
        r["site"]: set(r["counts"])
        for r in map(json.loads, (out / "site_metrics.jsonl").read_text().splitlines())
        if r["round"] == 1
    }
    assert uploads["hospital_b"] == {"image", "head.mim"} and uploads["hospital_c"] == {"text", "head.mlm"}, uploads
    first = load_file(str(checkpoints / "round_0000.safetensors"))
    last = load_file(str(checkpoints / f"round_{ROUNDS:04d}.safetensors"))
    changed = {k.split(".")[0] for k in first if not torch.equal(first[k], last[k])}
    assert {"image", "text", "head"} <= changed, changed
    assert "deprecated" not in log.read_text(), tail(log, TAIL_LINES)
    assert not local_superlinks(flwr_home), "the local SuperLink survived teardown"
