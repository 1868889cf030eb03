"""Start, watch and stop a real Flower deployment on 127.0.0.1: a SuperLink and SuperNodes.

Used by ``fedvlp bench --deployment`` (:mod:`.bench_deployment`) and by the slow end-to-end
tests (``tests/server/cli/test_deployment.py``, ``test_flwr_run_sim.py``, ``test_faults.py``, ...).

Cleanup goes by PID through ``/proc`` rather than by process group or name: the SuperLink
starts ``flower-superexec`` in a *new session*, which in turn starts ``flwr-serverapp``,
``flwr-clientapp``, ``flwr-simulation`` or Ray, so killing our own process group would miss
them, and killing by name would hit other users' Flower processes on the same machine.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

# What the federation's SuperNodes use unless told otherwise (fedvlp.client.supernode).
POLL_INTERVAL = 0.3

# flower-superlink, flower-supernode and flwr are console scripts installed next to this
# interpreter; calling them by path avoids picking up another Flower from $PATH.
BIN = Path(sys.executable).parent


def flwr_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower processes that keeps them offline, quiet and on our config.

    Parameters
    ----------
    flwr_home : Path
        Exported as ``FLWR_HOME``: ``flwr run`` reads its connections from
        ``$FLWR_HOME/config.toml`` and the local SuperLink keeps its files there.
    extra : Mapping[str, str], optional
        Test-specific variables, added last so they can override the defaults.

    Returns
    -------
    dict[str, str]
        ``os.environ`` plus the Flower settings, ready for ``subprocess.Popen(env=...)``.
    """
    return {
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        # Without it every run creates a fresh env and installs the app's dependencies,
        # which is slow and fails offline.
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # Several ClientApps share 2 cores: one torch thread each avoids oversubscription.
        "FEDVLP_TORCH_THREADS": "1",
        **(extra or {}),
    }


def spawn(args: list[str], log: Path, env: Mapping[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    """Start ``args`` with stdout and stderr going to ``log``.

    Parameters
    ----------
    args : list[str]
        The command line.
    log : Path
        File that receives the combined output (overwritten).
    env : Mapping[str, str]
        The process environment, usually from :func:`flwr_env`.
    cwd : Path
        Working directory of the process.

    Returns
    -------
    subprocess.Popen[bytes]
        The running process, in a new session of its own: it is stopped by PID with
        :func:`stop_processes` or :func:`stop_tree`, not through pytest's process group.
    """
    with log.open("wb") as handle:
        return subprocess.Popen(
            args,
            env=env,
            cwd=cwd,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def free_ports(n: int) -> list[int]:
    """``n`` distinct localhost ports that were free a moment ago.

    Parameters
    ----------
    n : int
        How many ports.

    Returns
    -------
    list[int]
        The ports. All sockets stay bound until every port is picked, so the ports are
        distinct; they may be taken again by someone else before the caller binds them.
    """
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log, for failure messages.

    Parameters
    ----------
    path : Path
        The log file.
    lines : int, default 40
        How many lines at the end.

    Returns
    -------
    str
        The lines, or a note when the file cannot be read (a missing log must not hide
        the assertion that is being reported).
    """
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} unreadable)"


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    """Block until something accepts connections on ``127.0.0.1:port``.

    Parameters
    ----------
    port : int
        The port ``proc`` is expected to listen on.
    proc : subprocess.Popen[bytes]
        The process that should open it; its early exit fails at once instead of
        waiting out ``timeout``.
    log : Path
        The process's log, quoted in the error.
    timeout : float, default 60.0
        Seconds to wait.

    Raises
    ------
    RuntimeError
        ``proc`` exited first.
    TimeoutError
        Nothing listened within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            program = os.fsdecode(proc.args[0]) if isinstance(proc.args, list) else repr(proc.args)
            raise RuntimeError(f"{program} exited with {proc.returncode}:\n{tail(log)}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s:\n{tail(log)}")


# ------------------------------------------------------------------ process cleanup by PID
def _children() -> dict[int, list[int]]:
    """Map every PID to its direct children, read from ``/proc/<pid>/stat``."""
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended while we were listing
            continue
        # The command name in parentheses may contain spaces or ")": split after the last one.
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
    """Whether ``pid`` runs; a zombie counts as gone since it has already exited."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _signal(pid: int, sig: int) -> None:
    """Send ``sig``, ignoring processes that are already gone or not ours to signal."""
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_tree(roots: list[int], grace: float = 20.0, reap: Iterable[subprocess.Popen[bytes]] = ()) -> None:
    """SIGTERM ``roots`` and all their descendants, then SIGKILL whatever is left.

    Parameters
    ----------
    roots : list[int]
        PIDs whose whole process trees are stopped (superexec, flwr-serverapp,
        flwr-clientapp, flwr-simulation, Ray...).
    grace : float, default 20.0
        Seconds the processes get to exit cleanly after SIGTERM.
    reap : Iterable[subprocess.Popen[bytes]], default ()
        Our own children among ``roots``: polled while waiting so they are reaped as soon
        as they exit instead of lingering as zombies until the final ``wait``.
    """
    reap = list(reap)
    # Collect the tree before the roots exit: their children get re-parented to init
    # and could no longer be found from the roots.
    pids = _tree(roots)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        for proc in reap:
            proc.poll()
        time.sleep(0.2)
    # Look again below the survivors: they may have started new processes meanwhile.
    for pid in _tree(pids):
        if _alive(pid):
            _signal(pid, signal.SIGKILL)


def stop_processes(procs: list[subprocess.Popen[bytes]], grace: float = 15.0) -> None:
    """Stop every process we started and every descendant, then reap ours.

    Parameters
    ----------
    procs : list[subprocess.Popen[bytes]]
        Processes started by the test (those that already exited are skipped as roots).
    grace : float, default 15.0
        Seconds between SIGTERM and SIGKILL, see :func:`stop_tree`.
    """
    stop_tree([p.pid for p in procs if p.poll() is None], grace=grace, reap=procs)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # unkillable (D state): do not hang the teardown
            pass


def kill_tree(root: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to ``root`` and every descendant at once (a machine that dies).

    Parameters
    ----------
    root : int
        PID of the process whose tree dies (a SuperNode with its SuperExec and ClientApp,
        a SuperLink with its SuperExec and ServerApp).
    sig : int, default SIGKILL
        The signal.
    """
    for pid in _tree([root]):
        _signal(pid, sig)


# ------------------------------------------------------------ a whole federation on 127.0.0.1
class LocalFederation:
    """A SuperLink and SuperNodes on free localhost ports, started as docs/deployment.md says.

    Every process is started by PID, logged to ``<root>/logs/<name>.log`` and stopped by
    :meth:`stop` (the fixtures call it whatever happens).

    Parameters
    ----------
    root : Path
        Folder for logs and ``$FLWR_HOME``.
    ca_cert : Path or None
        CA certificate of a TLS SuperLink (``--root-certificates`` of the SuperNodes and
        of the ``local-deployment`` connection); ``None`` runs everything ``--insecure``.
    extra_env : Mapping[str, str], optional
        Added to :func:`flwr_env` (e.g. ``FEDVLP_DEMO_DATA``).
    """

    def __init__(self, root: Path, ca_cert: Path | None = None, extra_env: Mapping[str, str] | None = None) -> None:
        from fedvlp.server.cli.flwr_config import write_flwr_config

        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.flwr_home = root / "flwr"
        self.ca_cert = ca_cert
        self.env = flwr_env(self.flwr_home, {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(extra_env or {})})
        self.link_port = free_ports(1)[0]
        self.address = f"127.0.0.1:{self.link_port}"
        write_flwr_config(self.flwr_home, superlink=self.address, root_certificates=ca_cert)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.all_procs: list[subprocess.Popen[bytes]] = []
        self.node_ports: dict[str, int] = {}

    def _start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        proc = spawn(args, self.logs / f"{name}.log", self.env, self.root)
        self.procs[name] = proc
        self.all_procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        """The whole log of process ``name`` ('' when it has none yet)."""
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def logs_tail(self) -> str:
        """The end of every log, for assertion messages."""
        return "\n".join(f"--- {log.name}\n{tail(log)}" for log in sorted(self.logs.glob("*.log")))

    def start_superlink(
        self, *, certs: Mapping[str, Path] | None = None, auth: bool = False, database: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """``flower-superlink`` with TLS (``certs``: ca, cert, key) or ``--insecure``, optionally
        ``--enable-supernode-auth`` and a ``--database`` file; returns once it listens."""
        args = [str(BIN / "flower-superlink"), "--host", "127.0.0.1", "--port", str(self.link_port)]
        if certs is None:
            args.append("--insecure")
        else:
            args += [
                "--ssl-ca-certfile",
                str(certs["ca"]),
                "--ssl-certfile",
                str(certs["cert"]),
                "--ssl-keyfile",
                str(certs["key"]),
            ]
        if auth:
            args.append("--enable-supernode-auth")
        if database is not None:
            args += ["--database", str(database)]
        proc = self._start("superlink", args)
        wait_for_port(self.link_port, proc, self.logs / "superlink.log")
        return proc

    def start_supernode(
        self,
        name: str,
        site_file: Path,
        *,
        key: Path | None = None,
        worker: bool = True,
        insecure: bool | None = None,
        extra: Sequence[str] = (),
        poll_interval: float | None = POLL_INTERVAL,
    ) -> subprocess.Popen[bytes]:
        """A SuperNode for one hospital (and its ClientApp worker with ``worker``).

        With ``worker`` the SuperNode runs ``--isolation process`` and
        ``python -m fedvlp.client.worker`` executes its ClientApp tasks (the recommended
        setup of docs/deployment.md); otherwise Flower's default subprocess isolation.
        With ``poll_interval`` the SuperNode is ``python -m fedvlp.client.supernode
        --poll-interval`` (Flower's ``flower-supernode`` with a shorter idle pause); ``None``
        starts the stock ``flower-supernode``. The node keeps its runtime port across restarts.
        """
        port = self.node_ports.setdefault(name, free_ports(1)[0])
        tls = self.ca_cert is not None if insecure is None else not insecure
        if poll_interval is None:
            args = [str(BIN / "flower-supernode")]
        else:
            args = [sys.executable, "-m", "fedvlp.client.supernode", "--poll-interval", str(poll_interval)]
        args += ["--root-certificates", str(self.ca_cert)] if tls else ["--insecure"]
        args += ["--superlink", self.address, "--host", "127.0.0.1", "--port", str(port)]
        if key is not None:
            args += ["--auth-supernode-private-key", str(key)]
        if worker:
            args += ["--isolation", "process"]
        args += ["--node-config", f"site-config='{Path(site_file).resolve()}'", *extra]
        proc = self._start(name, args)
        if worker:
            wait_for_port(port, proc, self.logs / f"{name}.log")
            self._start(
                f"{name}-worker",
                [sys.executable, "-m", "fedvlp.client.worker", "--runtime-api-address", f"127.0.0.1:{port}"],
            )
        return proc

    def wait_worker_ready(self, name: str, timeout: float = 120.0) -> None:
        """Block until ``name``'s ClientApp worker has imported fedvlp and polls for tasks."""
        deadline = time.monotonic() + timeout
        while "ClientApp worker ready" not in self.log(f"{name}-worker"):
            proc = self.procs[f"{name}-worker"]
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker of {name} not ready ({proc.poll()})\n{self.logs_tail()}")
            time.sleep(0.3)

    def kill(self, name: str) -> None:
        """SIGKILL process ``name`` with all its descendants (and its worker, if any)."""
        for key in (name, f"{name}-worker"):
            proc = self.procs.get(key)
            if proc is not None and proc.poll() is None:
                kill_tree(proc.pid)
                proc.wait(timeout=10)

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run a ``flwr`` CLI command against this federation's ``$FLWR_HOME``."""
        return subprocess.run(
            [str(BIN / "flwr"), *args], env=self.env, cwd=self.root, capture_output=True, text=True, timeout=timeout
        )

    def node_list(self) -> list[dict[str, Any]]:
        """``flwr supernode list local-deployment --format json``: the SuperLink's nodes."""
        import json

        res = self.flwr("supernode", "list", "local-deployment", "--format", "json")
        assert res.returncode == 0, f"flwr supernode list failed:\n{res.stdout}\n{res.stderr}"
        nodes: list[dict[str, Any]] = json.loads(res.stdout[res.stdout.index("{") :])["nodes"]
        return nodes

    def run(self, run_config: str, name: str = "flwr-run") -> subprocess.Popen[bytes]:
        """``flwr run <project> local-deployment --run-config ... --stream`` in the background."""
        from fedvlp.core.config import project_root

        return self._start(
            name,
            [str(BIN / "flwr"), "run", str(project_root()), "local-deployment", "--run-config", run_config, "--stream"],
        )

    def wait_round(
        self, checkpoints: Path, round_: int, timeout: float = 300.0, watch: Iterable[str] = ()
    ) -> dict[str, Any]:
        """Block until ``checkpoints/latest.json`` names ``round_`` (or later); return it.

        ``watch`` names processes that must stay alive meanwhile (fail fast with logs).
        """
        import json

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            latest = checkpoints / "latest.json"
            if latest.is_file():
                state: dict[str, Any] = json.loads(latest.read_text())
                if state["round"] >= round_:
                    return state
            for name in watch:
                if self.procs[name].poll() is not None:
                    raise AssertionError(
                        f"{name} exited ({self.procs[name].returncode}) before round {round_}\n{self.logs_tail()}"
                    )
            time.sleep(0.3)
        raise AssertionError(f"no round {round_} in {checkpoints} after {timeout:.0f}s\n{self.logs_tail()}")

    def stop(self) -> None:
        """Stop every process started here (and their descendants)."""
        stop_processes(self.all_procs)
