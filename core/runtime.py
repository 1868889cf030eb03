"""Process environment for offline, self-contained runs (no telemetry, no hub, local state)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .config import project_root

__all__ = ["state_dir", "offline_env", "DevicePlan", "check_device", "default_gpu_share", "plan_devices"]


def state_dir() -> Path:
    """Where fedvlp keeps Flower, Ray and compiler state: ``$FEDVLP_HOME`` or ``<project>/.fedvlp``."""
    return Path(os.environ.get("FEDVLP_HOME", project_root() / ".fedvlp")).resolve()


# Ray puts Unix sockets under RAY_TMPDIR/session_<date>_<pid>/sockets/; Linux caps socket
# paths at 107 bytes, which leaves about 45 for the folder itself.
_RAY_TMPDIR_MAX = 45


def _ray_tmpdir(home: Path) -> Path:
    """``<state>/ray`` when its path is short enough for Ray's sockets, else a /tmp folder."""
    inside = home / "ray"
    if len(str(inside)) <= _RAY_TMPDIR_MAX:
        return inside
    return Path("/tmp") / f"fedvlp-ray-{os.getuid()}"


def offline_env(threads_per_client: int | None = None) -> dict[str, str]:
    """Set (without overriding what the user set) the variables that keep a run offline and local.

    Returns the variables that apply, so callers can pass them on to child processes.
    """
    home = state_dir()
    values = {
        "FLWR_HOME": str(home / "flwr"),
        "RAY_TMPDIR": str(_ray_tmpdir(home)),
        "TORCHINDUCTOR_CACHE_DIR": str(home / "inductor"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_DEDUP_LOGS": "0",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if threads_per_client is not None:
        values["FEDVLP_TORCH_THREADS"] = str(threads_per_client)
    for key, value in values.items():
        os.environ.setdefault(key, value)
    for key in ("FLWR_HOME", "RAY_TMPDIR", "TORCHINDUCTOR_CACHE_DIR"):
        Path(os.environ[key]).mkdir(parents=True, exist_ok=True)
    return {key: os.environ[key] for key in values}


# ------------------------------------------------------------------ devices
# Why a pure function of the GPU count: the decision (which device, how much of a GPU each
# virtual client reserves from Ray) is what users get wrong and tests must cover, while the
# count itself needs torch and hardware; callers pass ``torch.cuda.device_count()``.

# Ray accepts resource quantities with 4 decimals; a share rounded up could oversubscribe.
_GPU_SHARE_DECIMALS = 4


def check_device(name: str, gpu_count: int, origin: str = "run_config", key: str = "device") -> str:
    """``name`` if this machine can train on it; ``auto`` resolves to ``cuda`` or ``cpu``.

    Parameters
    ----------
    name : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or another torch device string (``mps``...),
        which is passed through unchecked.
    gpu_count : int
        CUDA devices visible to this process (``torch.cuda.device_count()``).
    origin, key : str
        Where ``name`` came from, for the error message.

    Raises
    ------
    ConfigError
        When ``name`` asks for a CUDA device that is not there (no GPU, or index out of range).
    """
    from .config import ConfigError

    if name == "auto":
        return "cuda" if gpu_count > 0 else "cpu"
    if name == "cuda" or name.startswith("cuda:"):
        index = name.partition(":")[2]
        if gpu_count == 0:
            raise ConfigError(
                origin,
                key,
                "'auto' or 'cpu' on this machine: no CUDA GPU is visible "
                "(CUDA_VISIBLE_DEVICES, driver, or a CPU-only torch)",
                name,
            )
        if index and (not index.isdigit() or int(index) >= gpu_count):
            raise ConfigError(
                origin, key, f"'cuda' or 'cuda:0'..'cuda:{gpu_count - 1}' ({gpu_count} GPU visible)", name
            )
    return name


def default_gpu_share(gpu_count: int, num_clients: int) -> float:
    """The GPU share each of ``num_clients`` concurrent virtual clients reserves in Ray.

    ``gpu_count / num_clients`` capped at 1 (a client never uses two GPUs), rounded down to
    Ray's 4 decimals so that the shares never add up to more than the GPUs there are;
    0.0 without a GPU.
    """
    if gpu_count <= 0 or num_clients <= 0:
        return 0.0
    share = min(1.0, gpu_count / num_clients)
    scale = 10**_GPU_SHARE_DECIMALS
    return float(int(share * scale) / scale)


@dataclass(frozen=True)
class DevicePlan:
    """Where each site of a simulation trains and what each virtual client reserves in Ray.

    Attributes
    ----------
    gpus_per_client : float
        Ray's ``num_gpus`` of every virtual client.
    run_device : str
        The run-level ``device`` the clients get (``auto`` becomes ``cpu`` when clients hold
        no GPU share, so that a client never trains on a GPU Ray did not give it).
    sites : dict[str, str]
        Site name -> ``cuda``/``cuda:N``/``cpu``.
    gpu_count : int
        GPUs visible when the plan was made.
    """

    gpus_per_client: float
    run_device: str
    sites: dict[str, str]
    gpu_count: int

    def lines(self) -> list[str]:
        """One line per site, for the console: where it trains and with what share."""
        out = []
        for name, device in self.sites.items():
            if device.startswith("cuda") and self.gpus_per_client > 0:
                where = f"{device} ({self.gpus_per_client:g} GPU of {self.gpu_count})"
            elif device.startswith("cuda"):
                where = f"{device} (no GPU share reserved: --gpus-per-client 0)"
            else:
                where = device
            out.append(f"site {name}: trains on {where}")
        return out


def plan_devices(
    run_device: str,
    site_devices: Mapping[str, str],
    gpu_count: int,
    gpus_per_client: float | None = None,
) -> DevicePlan:
    """Decide each site's device and the virtual clients' GPU share in a simulation.

    Parameters
    ----------
    run_device : str
        The run config's ``device`` (``auto`` by default).
    site_devices : Mapping[str, str]
        Site name -> the site file's ``device`` (``auto`` defers to ``run_device``).
    gpu_count : int
        CUDA devices visible to this process.
    gpus_per_client : float or None
        What the user asked for; ``None`` picks :func:`default_gpu_share` when any site will
        train on a GPU, else 0.

    Raises
    ------
    ConfigError
        When a device asks for a GPU that is not there, or ``gpus_per_client`` is negative,
        above 1, or positive without a GPU.
    """
    from .config import ConfigError

    if gpus_per_client is not None and not 0.0 <= gpus_per_client <= 1.0:
        raise ConfigError("--gpus-per-client", "gpus-per-client", "a share of one GPU between 0 and 1", gpus_per_client)
    if gpus_per_client and gpu_count == 0:
        raise ConfigError(
            "--gpus-per-client", "gpus-per-client", "0 on this machine: no CUDA GPU is visible", gpus_per_client
        )
    check_device(run_device, gpu_count)
    wanted = {name: (device if device != "auto" else run_device) for name, device in site_devices.items()}
    resolved = {name: check_device(device, gpu_count, origin=f"site {name}") for name, device in wanted.items()}
    on_gpu = any(device.startswith("cuda") for device in resolved.values())
    share = (
        default_gpu_share(gpu_count, len(site_devices))
        if gpus_per_client is None and on_gpu
        else (gpus_per_client or 0.0)
    )
    effective_run = run_device
    if share == 0.0 and run_device == "auto":
        # Ray no longer hides GPUs from clients without a share (RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0),
        # so "no share" has to say "cpu" explicitly.
        effective_run = "cpu"
        resolved = {name: ("cpu" if site_devices[name] == "auto" else device) for name, device in resolved.items()}
    return DevicePlan(gpus_per_client=share, run_device=effective_run, sites=resolved, gpu_count=gpu_count)
