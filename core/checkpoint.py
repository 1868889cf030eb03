"""Per-round checkpoints: safetensors weights plus a JSON state, written atomically.

Layout of a checkpoint folder::

    round_0003.safetensors   global weights after round 3
    round_0003.json          {"round": 3, "config_hash": ..., "metrics": [...], ...}
    round_0003.extra.safetensors  optional extra tensors (server optimizer moments), when given
    latest.json              {"round": 3}  (written last: a crash never points at a half file)
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

__all__ = ["RoundCheckpoint", "atomic_write_bytes", "latest_round", "load_latest", "load_round", "save_round"]


@dataclass
class RoundCheckpoint:
    """Weights and state of one completed round."""

    round: int
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_save_tensors(path: Path, weights: Mapping[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_round(
    folder: str | os.PathLike[str],
    round_: int,
    weights: Mapping[str, torch.Tensor],
    state: Mapping[str, Any],
    extra: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Save the global weights and JSON state after ``round_``; returns the weights file.

    ``extra`` tensors (e.g. a server optimizer's moments) go to ``round_NNNN.extra.safetensors``,
    written before the JSON state and the ``latest.json`` pointer, so a round is complete or absent.
    """
    folder = Path(folder)
    weights_path = folder / f"round_{round_:04d}.safetensors"
    _atomic_save_tensors(weights_path, weights)
    if extra is not None:
        _atomic_save_tensors(folder / f"round_{round_:04d}.extra.safetensors", extra)
    payload = {"round": round_, **state}
    atomic_write_bytes(folder / f"round_{round_:04d}.json", json.dumps(payload, indent=2, sort_keys=True).encode())
    atomic_write_bytes(folder / "latest.json", json.dumps({"round": round_}).encode())
    return weights_path


def latest_round(folder: str | os.PathLike[str]) -> int | None:
    """The last completed round in ``folder``, or ``None`` when there is none."""
    pointer = Path(folder) / "latest.json"
    if not pointer.is_file():
        return None
    return int(json.loads(pointer.read_text())["round"])


def load_round(folder: str | os.PathLike[str], round_: int) -> RoundCheckpoint:
    """Load the weights, state and extra tensors (empty when none were saved) after ``round_``."""
    folder = Path(folder)
    weights = load_file(str(folder / f"round_{round_:04d}.safetensors"))
    state = json.loads((folder / f"round_{round_:04d}.json").read_text())
    extra_path = folder / f"round_{round_:04d}.extra.safetensors"
    extra = load_file(str(extra_path)) if extra_path.is_file() else {}
    return RoundCheckpoint(round_, weights, state, extra)


def load_latest(folder: str | os.PathLike[str]) -> RoundCheckpoint | None:
    """The last completed round's checkpoint, or ``None`` for a fresh folder."""
    round_ = latest_round(folder)
    return None if round_ is None else load_round(folder, round_)
