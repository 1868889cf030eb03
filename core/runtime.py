"""Process environment for offline, self-contained runs (no telemetry, no hub, local state)."""

from __future__ import annotations

import os
from pathlib import Path

from .config import project_root

__all__ = ["state_dir", "offline_env"]


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
