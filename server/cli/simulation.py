"""Run a whole federation in Flower's simulation engine, in this process.

Ray, which runs the virtual clients, listens on 127.0.0.1 only (:func:`bind_ray_to_localhost`).
Flower, Ray and torch are imported by :func:`simulate` only, so that the CLI can check a run
config and its site files (:func:`validate_sites`) in a fraction of a second.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fedvlp.core.config import RunConfig, SiteConfig, list_site_files, load_site
from fedvlp.core.runtime import DevicePlan, offline_env, plan_devices

__all__ = [
    "simulate",
    "validate_sites",
    "load_sites",
    "plan_simulation_devices",
    "bind_ray_to_localhost",
    "quiet_ray_env",
    "forwarded_env",
    "CLIENT_APP_FACTORY",
    "LOCALHOST",
]

log = logging.getLogger(__name__)

LOCALHOST = "127.0.0.1"

# The ServerApp never imports the ClientApp module; like Flower itself, it loads the
# ClientApp by reference, so `server -> core` stays the only arrow out of this package.
CLIENT_APP_FACTORY = "fedvlp.client.app:make_client_app"


def _load(reference: str) -> Any:
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


def load_sites(run: RunConfig) -> list[SiteConfig]:
    """Every site file of ``run.sites``, loaded and checked, in partition-id order.

    Raises
    ------
    ConfigError
        Naming the first bad site file and its key.
    """
    return [load_site(site_file) for site_file in list_site_files(run.sites)]


def validate_sites(run: RunConfig) -> int:
    """Load every site file of ``run.sites``; the number of sites.

    Why up front: inside the simulation a bad site file only fails that site's ClientApp, and
    the run would go on without the hospital (every round one reply short).

    Raises
    ------
    ConfigError
        Naming the first bad site file and its key.
    """
    return len(load_sites(run))


def plan_simulation_devices(
    run: RunConfig, sites: list[SiteConfig], gpus_per_client: float | None, gpu_count: int
) -> DevicePlan:
    """:func:`fedvlp.core.runtime.plan_devices` for these site files (``gpu_count`` passed in for tests)."""
    return plan_devices(run.device, {site.name: site.device for site in sites}, gpu_count, gpus_per_client)


def quiet_ray_env() -> None:
    """Opt in to Ray's announced behaviour so that it stops warning about it in every run.

    Ray 2.55 prints a FutureWarning at every ``ray.init`` until ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0``:
    with it, a worker that holds no GPU share keeps the driver's ``CUDA_VISIBLE_DEVICES`` instead of
    an empty one. :func:`fedvlp.core.runtime.plan_devices` makes such clients train on ``cpu``
    explicitly, so nothing lands on a GPU Ray did not give out.
    """
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


def bind_ray_to_localhost() -> None:
    """Make the Ray head that the simulation starts listen on 127.0.0.1 only.

    Ray 2.55 (what flwr 1.41 installs) binds its GCS, raylet, object manager and worker gRPC
    servers to every interface (``::``) on Linux; ``ray.init(_node_ip_address=...)`` does not
    change that. It binds them to 127.0.0.1 when the node's address is the loopback one, which
    is what Ray does on macOS and Windows unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` is set:
    Ray reads that switch into ``ray_constants.ENABLE_RAY_CLUSTER`` at import, so both the
    variable (for Ray's own processes) and the imported constant are set here. A multi-machine
    Ray cluster is never what ``fedvlp simulate`` starts, so nothing is lost.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray._private.ray_constants as ray_constants  # imported by flwr.simulation already

    ray_constants.ENABLE_RAY_CLUSTER = False


# What a worker of someone else's Ray cluster must see as the driver does: the site files'
# ${VAR}s and fedvlp's switches, offline mode, Flower's state folder, the import path.
FORWARDED_PREFIXES = ("FEDVLP_", "HF_", "TRANSFORMERS_", "FLWR_", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONPATH")


def forwarded_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The driver's environment variables a Ray cluster's workers get for this run.

    ``PYTHONPATH`` is extended by ``sys.path`` as Flower's own Ray backend does, so that workers
    import the driver's fedvlp.
    """
    environ = os.environ if environ is None else environ
    env = {k: v for k, v in environ.items() if k.startswith(FORWARDED_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join([*sys.path, *filter(None, [environ.get("PYTHONPATH")])])
    return env


def simulate(
    run: RunConfig,
    *,
    cpus_per_client: float = 1.0,
    gpus_per_client: float | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    verbose: bool = False,
    ray_address: str | None = None,
) -> DevicePlan:
    """Simulate one SuperNode per site file of ``run.sites`` and run the ServerApp.

    Parameters
    ----------
    run
        The run settings (passed to both apps: in-process simulations have no run config).
    cpus_per_client, gpus_per_client
        Ray resources of each virtual client; ``gpus_per_client=0.5`` packs two clients per GPU.
        ``None`` (default): with GPUs visible, each client gets ``GPUs / sites`` (at most 1), else 0.
    on_round
        Called by the server after every completed round with its record.
    ray_address
        ``HOST:PORT`` of a running Ray cluster (``ray start --head`` on one machine, ``ray start
        --address HOST:PORT`` on the others) whose workers run the virtual clients, instead of
        a Ray instance started for this run on 127.0.0.1. Every machine of the cluster needs
        fedvlp installed and the site files' data at the same paths. GPU shares are planned
        from the GPUs this machine sees.

    Returns
    -------
    DevicePlan
        Where each site trained and the GPU share of each virtual client (also logged at INFO).

    Raises
    ------
    ConfigError
        When a site file is invalid (see :func:`validate_sites`), the run sets a key its model
        family ignores (:func:`fedvlp.core.models.registry.check_run`) or a device asks for a GPU
        that is not there; nothing has started then.
    """
    sites = load_sites(run)  # a bad site file stops here, before Ray starts
    import torch

    from fedvlp.core.models.registry import check_run

    check_run(run)  # a key the recipe's model family ignores, set away from its default: refused before Ray starts

    plan = plan_simulation_devices(run, sites, gpus_per_client, torch.cuda.device_count())
    for line in plan.lines():
        log.info("%s", line)
    if run.cpu_autocast != "off" and any(device == "cpu" for device in plan.sites.values()):
        from fedvlp.core.precision import describe_cpu_autocast

        log.info("cpu-autocast %s", describe_cpu_autocast(run.cpu_autocast))
    if plan.run_device != run.device:
        run = run.replace(device=plan.run_device)
    offline_env(threads_per_client=max(1, int(cpus_per_client)))
    quiet_ray_env()
    from flwr.simulation import run_simulation

    from fedvlp.server.app import make_server_app

    init_args: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": verbose}
    if ray_address:
        # Ray's head was started (and bound) by its operator: connect, start nothing. Flower's
        # backend leaves an initialised Ray as it is, so the connection is made here, with the
        # driver's settings forwarded to workers that `ray start` launched with its own environment.
        import ray

        run = run.replace(sites=str(Path(run.sites).resolve()), out_dir=str(Path(run.out_dir).resolve()))
        ray.init(
            address=ray_address,
            runtime_env={"env_vars": forwarded_env()},
            logging_level=logging.ERROR,
            log_to_driver=verbose,
        )
    else:
        bind_ray_to_localhost()
        init_args["_node_ip_address"] = LOCALHOST
    overrides = run.to_flat()
    server_app = make_server_app(overrides, on_round=on_round)
    client_app = _load(CLIENT_APP_FACTORY)(overrides)
    backend_config: dict[str, Any] = {
        "client_resources": {"num_cpus": cpus_per_client, "num_gpus": plan.gpus_per_client},
        "init_args": init_args,
    }
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=len(sites),
            backend_config=backend_config,
            verbose_logging=verbose,
        )
    return plan
