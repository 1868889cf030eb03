"""A long-running ClientApp executor for a SuperNode started with ``--isolation process``.

Why: in Flower 1.41 a SuperNode's SuperExec starts a fresh ``flwr-clientapp`` process for
every message (``flwr.supernode.runtime.run_clientapp`` handles one message and exits;
``--isolation process`` only moves that SuperExec out of the SuperNode, and the warm
executor pools of 1.41 are Kubernetes-only and exclude ClientApps). Each round therefore
pays interpreter start, ``import torch``/``transformers``, the site's dataset loading and
the model build again: about 30 s per round on 2 busy CPU cores for a model that trains in
0.2 s.

This worker takes the SuperExec's place: it imports fedvlp's ClientApp once, polls the
SuperNode's runtime API for ClientApp tasks (``AcquireTask``, exactly as
``flower-superexec`` does) and runs each task in its own process with Flower's own task
protocol (pull the message and context with the task token, call the ClientApp, push the
reply and the task status). The ClientApp's trainer cache (``fedvlp.client.app._TRAINERS``)
then lives across rounds, so datasets and loader state are built once per run.

Scope: it runs fedvlp's installed ClientApp (``fedvlp.client.app:app``) only. A run of
another app is refused with a task error instead of executing code from the FAB; use the
stock ``flower-superexec`` for that SuperNode.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

__all__ = ["serve", "run_task", "check_site", "CLIENTAPP_REF"]

log = logging.getLogger("fedvlp.worker")

# The ClientApp this worker is allowed to run: what pyproject.toml's
# [tool.flwr.app.components] names, imported from the installed package.
CLIENTAPP_REF = "fedvlp.client.app:app"


def _fab_clientapp(fab_content: bytes) -> str:
    """The ``clientapp`` component named by the FAB's pyproject.toml."""
    from flwr.common.config import get_fab_config

    return str(get_fab_config(fab_content)["tool"]["flwr"]["app"]["components"]["clientapp"])


def run_task(
    runtime_api_address: str, token: str, *, insecure: bool = True, root_certificates: bytes | None = None
) -> bool:
    """Execute one ClientApp task in this process, as ``flwr-clientapp --token`` would.

    Parameters
    ----------
    runtime_api_address : str
        The SuperNode's runtime API (``flower-supernode --host/--port``).
    token : str
        The task token returned by ``AcquireTask``.
    insecure : bool, default True
        Plain HTTP to the runtime API (it listens on 127.0.0.1 by default).
    root_certificates : bytes or None
        PEM CA when the runtime API uses TLS.

    Returns
    -------
    bool
        Whether the ClientApp completed (a failed task is reported to the SuperNode as an
        error reply, as Flower does, and the worker goes on with the next task).
    """
    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supernode.runtime import run_clientapp
    from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

    from fedvlp.client.app import app
    from fedvlp.client.supernode import shorten_pull_retry

    # The task comes before its arrays are at the SuperNode: retry them soon, not after 1+2+4 s.
    shorten_pull_retry(run_clientapp, "pull_and_inflate_object_from_tree")
    retry = make_simple_http_retry_invoker()
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address,
        insecure=insecure,
        root_certificates=root_certificates,
        interceptors=[
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token),
        ],
        retry_invoker=retry,
    )
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    message = context = reply = None
    status, details = SubStatus.FAILED, "ClientApp task failed"
    marks = [time.perf_counter()]
    try:
        heartbeat.start()
        message, context, run, fab = pull_task_input(client)
        marks.append(time.perf_counter())
        ref = _fab_clientapp(fab.content)
        if ref != CLIENTAPP_REF:
            raise RuntimeError(f"this worker runs {CLIENTAPP_REF} only; run {run.run_id} asks for {ref}")
        reply = app(message=message, context=context)
        marks.append(time.perf_counter())
        status, details = SubStatus.COMPLETED, ""
    except Exception as err:  # noqa: BLE001 - reported to the SuperNode like flwr-clientapp does
        log.exception("ClientApp task failed")
        details = f"{type(err)}:<'{err}'>"
        if message is not None:
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message)
    try:
        if reply is not None and context is not None:
            push_message(client, reply, context)
            marks.append(time.perf_counter())
    except Exception:  # noqa: BLE001
        log.exception("Failed to push the reply")
        status = SubStatus.FAILED
    finally:
        retry.max_tries = 1
        push_task_output(client=client, context=context, sub_status=status, details=details)
        if heartbeat.is_running:
            heartbeat.stop()
        client.close()
    steps = ", ".join(f"{name} {b - a:.2f}s" for name, a, b in zip(("pull", "clientapp", "push"), marks, marks[1:]))
    log.info("Task %s: %s", "completed" if status == SubStatus.COMPLETED else "FAILED", steps)
    return status == SubStatus.COMPLETED


def serve(
    runtime_api_address: str,
    *,
    insecure: bool = True,
    root_certificates_path: str | None = None,
    poll_seconds: float = 0.2,
    max_tasks: int | None = None,
) -> int:
    """Poll the SuperNode for ClientApp tasks and run them in this process until stopped.

    Parameters
    ----------
    runtime_api_address : str
        The SuperNode's runtime API, ``host:port`` (its ``--host``/``--port``).
    insecure : bool, default True
        Plain HTTP to the runtime API.
    root_certificates_path : str or None
        CA of the runtime API's certificate when it uses TLS.
    poll_seconds : float, default 0.2
        Pause between two ``AcquireTask`` calls (flower-superexec waits 1 s).
    max_tasks : int or None
        Stop after this many tasks (tests); ``None`` runs until SIGTERM/SIGINT.

    Returns
    -------
    int
        The number of tasks executed.
    """
    from pathlib import Path

    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    import fedvlp.client.app  # noqa: F401 - the point of the worker: torch, transformers and the model code once

    certificates = Path(root_certificates_path).read_bytes() if root_certificates_path else None
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address,
        insecure=insecure,
        root_certificates=certificates,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    stop = threading.Event()
    busy = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        # Between tasks (possibly inside a retry loop towards a SuperNode that is gone) exit
        # at once.
        if not busy.is_set():
            raise SystemExit(0)
        # During a task, SIGINT is how Flower's HTTP retry policy ends a one-shot
        # flwr-clientapp whose task token was revoked (401, e.g. its SuperNode restarted):
        # here it only ends that task, which then fails and is reported. SIGTERM stops the
        # worker after the current task.
        if signum == signal.SIGTERM:
            stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("ClientApp worker ready on %s", runtime_api_address)
    done = 0
    try:
        while not stop.is_set() and (max_tasks is None or done < max_tasks):
            res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value]))
            if res.HasField("task") and res.token:
                started = time.perf_counter()
                busy.set()
                try:
                    ok = run_task(runtime_api_address, res.token, insecure=insecure, root_certificates=certificates)
                finally:
                    busy.clear()
                done += 1
                log.info(
                    "Task %d (run %d) %s in %.1fs",
                    res.task.task_id,
                    res.task.run_id,
                    "done" if ok else "FAILED",
                    time.perf_counter() - started,
                )
                continue
            stop.wait(poll_seconds)
    finally:
        client.close()
    return done


def check_site(site_config: str) -> bool:
    """Load the site file as the ClientApp will; print a one-line error and return False if it is bad.

    Why at start: a bad site file would otherwise fail every task of this SuperNode, and the
    federation would go on without the hospital.
    """
    import sys

    from fedvlp.core.config import ConfigError, load_site, resolve_path
    from fedvlp.core.distributed import with_worker_processes

    try:
        with_worker_processes(load_site(resolve_path(site_config)))  # a DP site refuses --nproc here too
    except ConfigError as err:
        print(f"fedvlp.client.worker: bad site file: {err}", file=sys.stderr)
        return False
    return True


def _set_processes(devices: str | None, nproc: str | None) -> bool:
    """Check ``--devices`` / ``--nproc`` and hand them to the ClientApp (core/distributed.py reads
    them from the environment); print a one-line error and return False if they are bad."""
    import os
    import sys

    from fedvlp.core.config import ConfigError
    from fedvlp.core.distributed import DEVICES_ENV, NPROC_ENV, worker_processes

    try:
        chosen = worker_processes(devices, nproc)
    except ConfigError as err:
        print(f"fedvlp.client.worker: {err}", file=sys.stderr)
        return False
    if chosen is not None:
        os.environ[DEVICES_ENV] = ",".join(chosen[0])
        os.environ[NPROC_ENV] = str(chosen[1])
    return True


def main(argv: list[str] | None = None) -> int:
    """``python -m fedvlp.client.worker --runtime-api-address 127.0.0.1:9094``."""
    import argparse
    import os

    parser = argparse.ArgumentParser(prog="python -m fedvlp.client.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", default="127.0.0.1:9094", help="the SuperNode's --host:--port")
    parser.add_argument(
        "--root-certificates", help="CA of the runtime API's certificate (omit for plain HTTP on 127.0.0.1)"
    )
    parser.add_argument("--poll-seconds", type=float, default=0.2)
    parser.add_argument(
        "--site-config", help="this SuperNode's site YAML (the node config's site-config): checked before serving"
    )
    parser.add_argument(
        "--devices",
        help="train this site with DDP over these devices, e.g. cuda:0,cuda:1 (overrides the site file's devices)",
    )
    parser.add_argument(
        "--nproc",
        help="train this site with DDP over this many processes on its device (overrides the site file's nproc)",
    )
    args = parser.parse_args(argv)
    if not _set_processes(args.devices, args.nproc):
        return 2
    if args.site_config is not None and not check_site(args.site_config):
        return 2
    import faulthandler

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints every thread's stack (diagnosing a stuck worker)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    if "FEDVLP_TORCH_THREADS" in os.environ:
        import torch

        torch.set_num_threads(max(1, int(os.environ["FEDVLP_TORCH_THREADS"])))
    serve(
        args.runtime_api_address,
        insecure=args.root_certificates is None,
        root_certificates_path=args.root_certificates,
        poll_seconds=args.poll_seconds,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
