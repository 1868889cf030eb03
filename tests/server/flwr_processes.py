"""Start, watch and stop real Flower processes from the slow end-to-end tests.

Shared by ``test_deployment.py`` (SuperLink + SuperNodes + ``flwr run``) and
``test_flwr_run_sim.py`` (``flwr run`` with its detached local-simulation SuperLink).

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
from collections.abc import Iterable, Mapping
from pathlib import Path

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


def spawn(args: list[str], log: Path, env: Mapping[str, str], cwd: Path) -> subprocess.Popen:
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
    subprocess.Popen
        The running process, in a new session of its own: it is stopped by PID with
        :func:`stop_processes` or :func:`stop_tree`, not through pytest's process group.
    """
    with log.open("wb") as handle:
        return subprocess.Popen(
            args, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
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


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    """Block until something accepts connections on ``127.0.0.1:port``.

    Parameters
    ----------
    port : int
        The port ``proc`` is expected to listen on.
    proc : subprocess.Popen
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
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{tail(log)}")
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


def stop_tree(roots: list[int], grace: float = 20.0, reap: Iterable[subprocess.Popen] = ()) -> None:
    """SIGTERM ``roots`` and all their descendants, then SIGKILL whatever is left.

    Parameters
    ----------
    roots : list[int]
        PIDs whose whole process trees are stopped (superexec, flwr-serverapp,
        flwr-clientapp, flwr-simulation, Ray...).
    grace : float, default 20.0
        Seconds the processes get to exit cleanly after SIGTERM.
    reap : Iterable[subprocess.Popen], default ()
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


def stop_processes(procs: list[subprocess.Popen], grace: float = 15.0) -> None:
    """Stop every process we started and every descendant, then reap ours.

    Parameters
    ----------
    procs : list[subprocess.Popen]
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
