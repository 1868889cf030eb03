"""Per-round checkpoints: safetensors weights plus a JSON state, written atomically and checked on load.

Layout of a checkpoint folder::

    round_0003.safetensors   global weights after round 3
    round_0003.json          {"round": 3, "config_hash": ..., "sha256": {file: digest}, ...}
    round_0003.extra.safetensors  optional extra tensors (server optimizer moments), when given
    latest.json              {"round": 3}  (written last: a crash never points at a half file)

Write order: weights (fsync), extra (fsync), the round JSON holding their SHA-256 (fsync), the
folder (fsync), then ``latest.json`` (fsync, folder fsync). A power cut therefore leaves either
the previous round as the newest complete one or the new round complete.

On load a round is *intact* when its JSON parses, names its round, and every tensor file it
lists has the recorded SHA-256 (truncation, flipped bytes, NaN written into the data all change
it), parses as safetensors and holds only finite floating-point values. :func:`load_latest`
resumes from the newest intact round and logs one warning per damaged file it passed over, so
damage never costs more than the damaged rounds. Rounds written before checksums existed load
without the checksum test.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from .config import ConfigError

__all__ = [
    "CheckpointError",
    "RoundCheckpoint",
    "atomic_write_bytes",
    "latest_round",
    "load_latest",
    "load_round",
    "round_numbers",
    "save_round",
]

log = logging.getLogger("fedvlp.checkpoint")

_ROUND_FILE = re.compile(r"^round_(\d{4,})\.(json|safetensors|extra\.safetensors)$")
# Folders already checked to hold only rounds of a configuration hash (save_round's guard).
_CHECKED: dict[Path, str] = {}


class CheckpointError(ConfigError):
    """A checkpoint folder or round that cannot be used; the message is one line naming the file."""

    def __init__(self, origin: str, message: str):
        self.origin, self.key, self.expected = origin, "checkpoint", message
        ValueError.__init__(self, f"{origin}: {message}")


@dataclass
class RoundCheckpoint:
    """Weights and state of one completed round.

    ``problems`` lists the damaged newer rounds :func:`load_latest` passed over to reach this one
    (one ``"<file>: <why>"`` per entry); empty when the pointer's round was intact.
    """

    round: int
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    The data is fsynced before the rename and the folder after it, so the new file survives a
    power cut once this returns. The temporary file has an unpredictable name created with
    ``O_EXCL`` (a file or symlink planted beforehand is never opened) and mode 0600, or exactly
    ``mode`` whatever the umask; the rename replaces a link at ``path`` itself, never its target.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _tensor_bytes(tensors: Mapping[str, torch.Tensor]) -> bytes:
    return save_bytes({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def _name(round_: int, kind: str) -> str:
    return f"round_{round_:04d}.{kind}"


def _check_config(folder: Path, config_hash: str) -> None:
    """Refuse a folder holding a round JSON of another configuration (mixed runs)."""
    if _CHECKED.get(folder.resolve()) == config_hash:
        return
    for path in sorted(folder.glob("round_*.json")):
        try:
            other = json.loads(path.read_text(encoding="utf-8")).get("config_hash")
        except (OSError, ValueError, AttributeError):
            continue  # a damaged round is load_latest's business, not a configuration clash
        if other is not None and other != config_hash:
            raise CheckpointError(
                str(folder),
                f"holds rounds of another configuration ({path.name}: hash {other}, this run: {config_hash}); "
                "pick another out-dir or pass the same configuration",
            )
    _CHECKED[folder.resolve()] = config_hash


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
    The JSON records the SHA-256 of each tensor file under ``sha256`` (checked by
    :func:`load_round`, not returned in its ``state``).

    Raises
    ------
    CheckpointError
        When ``state`` carries a ``config_hash`` and the folder holds a round of another one.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if state.get("config_hash") is not None:
        _check_config(folder, str(state["config_hash"]))
    digests: dict[str, str] = {}
    weights_path = folder / _name(round_, "safetensors")
    data = _tensor_bytes(weights)
    atomic_write_bytes(weights_path, data)
    digests[weights_path.name] = hashlib.sha256(data).hexdigest()
    extra_path = folder / _name(round_, "extra.safetensors")
    if extra is not None:
        data = _tensor_bytes(extra)
        atomic_write_bytes(extra_path, data)
        digests[extra_path.name] = hashlib.sha256(data).hexdigest()
    else:
        extra_path.unlink(missing_ok=True)  # a stale file of an earlier attempt at this round
    payload = {**state, "round": round_, "sha256": digests}
    atomic_write_bytes(folder / _name(round_, "json"), json.dumps(payload, indent=2, sort_keys=True).encode())
    atomic_write_bytes(folder / "latest.json", json.dumps({"round": round_}).encode())
    return weights_path


def latest_round(folder: str | os.PathLike[str]) -> int | None:
    """The round ``latest.json`` points at, or ``None`` when there is no pointer.

    Raises
    ------
    CheckpointError
        When the pointer is empty or not ``{"round": <int>}``.
    """
    pointer = Path(folder) / "latest.json"
    if not pointer.is_file():
        return None
    try:
        raw = json.loads(pointer.read_text(encoding="utf-8"))
        round_ = raw["round"]
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise CheckpointError(str(pointer), f"not a round pointer ({_why(err, pointer)})") from err
    if not isinstance(round_, int) or isinstance(round_, bool) or round_ < 0:
        raise CheckpointError(str(pointer), f"not a round pointer (round {round_!r})")
    return round_


def round_numbers(folder: str | os.PathLike[str]) -> list[int]:
    """Every round that has at least one file in ``folder``, ascending."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted({int(m.group(1)) for p in folder.iterdir() if (m := _ROUND_FILE.match(p.name))})


def _why(err: BaseException, path: Path) -> str:
    if isinstance(err, json.JSONDecodeError) and not path.read_bytes().strip():
        return "empty file"
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")


def _read_tensors(path: Path, digest: str | None) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(str(path), "missing")
    data = path.read_bytes()
    if not data:
        raise CheckpointError(str(path), "empty file")
    if digest is not None and hashlib.sha256(data).hexdigest() != digest:
        raise CheckpointError(
            str(path),
            f"SHA-256 differs from the one recorded in its round JSON ({len(data)} bytes; truncated or changed "
            "after writing)",
        )
    try:
        tensors = load_bytes(data)
    except Exception as err:  # safetensors raises its own error types for a bad header
        raise CheckpointError(
            str(path), f"not a safetensors file ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(str(path), f"tensor '{key}' holds NaN or Inf")
    return tensors


def load_round(folder: str | os.PathLike[str], round_: int) -> RoundCheckpoint:
    """Load and check the weights, state and extra tensors (empty when none were saved) after ``round_``.

    Raises
    ------
    CheckpointError
        Naming the damaged file and why: missing, empty, not JSON / safetensors, SHA-256 differs
        from the recorded one, non-finite values, or a JSON of another round.
    """
    folder = Path(folder)
    state_path = folder / _name(round_, "json")
    if not state_path.is_file():
        raise CheckpointError(str(state_path), "missing")
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(str(state_path), f"not JSON ({_why(err, state_path)})") from err
    if not isinstance(state, dict) or state.get("round") != round_:
        got = state.get("round") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(str(state_path), f"not the state of round {round_} (round {got!r})")
    digests = state.pop("sha256", None)
    if digests is not None and not isinstance(digests, dict):
        raise CheckpointError(str(state_path), f"'sha256' is not a mapping of file names to digests ({digests!r})")
    weights_name = _name(round_, "safetensors")
    extra_path = folder / _name(round_, "extra.safetensors")
    if digests is None:  # written before checksums: no digest to compare, the other checks hold
        weights = _read_tensors(folder / weights_name, None)
        extra = _read_tensors(extra_path, None) if extra_path.is_file() else {}
    else:
        if weights_name not in digests:
            raise CheckpointError(str(state_path), f"records no SHA-256 for {weights_name}")
        weights = _read_tensors(folder / weights_name, digests[weights_name])
        extra = _read_tensors(extra_path, digests[extra_path.name]) if extra_path.name in digests else {}
    return RoundCheckpoint(round_, weights, state, extra)


def load_latest(folder: str | os.PathLike[str]) -> RoundCheckpoint | None:
    """The newest intact round's checkpoint, or ``None`` for a folder without rounds.

    The newest round with any file is tried first, then older ones; every damaged round passed
    over (and a damaged ``latest.json`` or one pointing elsewhere) is logged as a warning naming
    the file and why, and listed in the result's ``problems``.

    Raises
    ------
    CheckpointError
        When the folder holds round files but no intact round.
    """
    folder = Path(folder)
    problems: list[str] = []
    try:
        pointed = latest_round(folder)
    except CheckpointError as err:
        problems.append(str(err))
        pointed = None
    rounds = round_numbers(folder)
    if pointed is not None and pointed not in rounds:
        problems.append(f"{folder / 'latest.json'}: points at round {pointed}, which has no files")
    for round_ in reversed(rounds):
        try:
            checkpoint = load_round(folder, round_)
        except CheckpointError as err:
            problems.append(str(err))
            continue
        if pointed is not None and pointed != round_ and not problems:
            problems.append(f"{folder / 'latest.json'}: points at round {pointed}, newest intact round is {round_}")
        for problem in problems:
            log.warning("Damaged checkpoint %s; resuming from round %d", problem, round_)
        checkpoint.problems = problems
        return checkpoint
    if rounds:
        raise CheckpointError(
            str(folder), f"no intact round ({'; '.join(problems)}); move the folder away or pick another out-dir"
        )
    for problem in problems:
        log.warning("Damaged checkpoint %s; no round to resume from, starting afresh", problem)
    return None
