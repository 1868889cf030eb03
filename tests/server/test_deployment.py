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
  (:func:`fedvlp.server.flwr_config.write_flwr_config`).
* ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` must be in the SuperLink's and the
  SuperNodes' environment, or every run installs the app's dependencies into a fresh env.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedvlp.core.config import project_root
from fedvlp.server.flwr_config import DEPLOYMENT_CONNECTION, write_flwr_config

pytestmark = pytest.mark.slow

RUN_TIMEOUT = 300.0
BIN = Path(sys.executable).parent  # flower-superlink & co. live next to this interpreter


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports that were free a moment ago (bind port 0)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{_tail(log)}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s:\n{_tail(log)}")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} unreadable)"


# ------------------------------------------------------------------ process cleanup by PID
def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def _tree(roots: list[int]) -> list[int]:
    """``roots`` and all their descendants (superexec, flwr-serverapp, flwr-clientapp...)."""
    children, seen, todo = _children(), [], list(roots)
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.append(pid)
            todo.extend(children.get(pid, []))
    return seen


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_processes(procs: list[subprocess.Popen], grace: float = 15.0) -> None:
    """SIGTERM every process we started and every descendant, then SIGKILL what is left."""
    roots = [p.pid for p in procs if p.poll() is None]
    pids = _tree(roots)  # before the roots exit and their children get re-parented
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        for proc in procs:
            proc.poll()  # reap our own children
        time.sleep(0.2)
    for pid in _tree(pids):
        if _alive(pid):
            _signal(pid, signal.SIGKILL)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


# ------------------------------------------------------------------------------- fixture
@pytest.fixture()
def federation(demo_env: Path, tmp_path: Path) -> Iterator[dict]:
    """A SuperLink and 3 SuperNodes (hospital_a/b/c) on free localhost ports."""
    flwr_home = tmp_path / "flwr"
    env = {
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "FEDVLP_TORCH_THREADS": "1",  # 3 ClientApps share 2 cores
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    link_port, *node_ports = _free_ports(4)
    write_flwr_config(flwr_home, superlink=f"127.0.0.1:{link_port}")
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []

    def start(name: str, args: list[str]) -> subprocess.Popen:
        log = logs / f"{name}.log"
        with log.open("wb") as handle:
            proc = subprocess.Popen(args, env=env, cwd=tmp_path, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        procs.append(proc)
        return proc

    try:
        link = start("superlink", [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(link_port)])
        _wait_for_port(link_port, link, logs / "superlink.log")
        for site, port in zip(("hospital_a", "hospital_b", "hospital_c"), node_ports):
            site_file = (demo_env / f"{site}.yaml").resolve()
            node = start(
                site,
                [
                    str(BIN / "flower-supernode"),
                    "--insecure",
                    "--superlink", f"127.0.0.1:{link_port}",
                    "--host", "127.0.0.1",
                    "--port", str(port),
                    "--node-config", f"site-config='{site_file}'",
                ],
            )
            _wait_for_port(port, node, logs / f"{site}.log")
        yield {"env": env, "logs": logs, "procs": procs, "flwr_home": flwr_home}
    finally:
        stop_processes(procs)


def _logs(folder: Path) -> str:
    return "\n".join(f"--- {log.name}\n{_tail(log)}" for log in sorted(folder.glob("*.log")))


def test_flwr_run_on_superlink_and_three_supernodes(federation: dict, tmp_path: Path) -> None:
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    run_config = f'model-size="tiny" image-size=32 rounds=1 local-steps=2 batch-size=8 min-nodes=3 out-dir={json.dumps(str(out))}'
    log = federation["logs"] / "flwr-run.log"
    started = time.monotonic()
    with log.open("wb") as handle:
        flwr = subprocess.Popen(
            [str(BIN / "flwr"), "run", str(project_root()), DEPLOYMENT_CONNECTION, "--run-config", run_config, "--stream"],
            env=federation["env"], cwd=tmp_path, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
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
    assert latest is not None and latest["round"] == 1, f"no round 1 after {RUN_TIMEOUT:.0f}s\n{_logs(federation['logs'])}"
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
