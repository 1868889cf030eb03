"""Building the image encoder for evaluation runs from a state dict or a seeded random init."""

from __future__ import annotations

import hashlib
from typing import Mapping

import torch

from ..config import ImageEncoderConfig
from ..models.image import ResNetEncoder

__all__ = ["build_encoder", "encoder_state", "state_hash"]


def build_encoder(config: ImageEncoderConfig, state: Mapping[str, torch.Tensor] | None, seed: int) -> ResNetEncoder:
    """A ``ResNetEncoder(config)`` with ``state`` loaded (strictly), or randomly initialised.

    The random initialisation is drawn from a generator seeded with ``seed`` inside a forked
    RNG, so it is reproducible and leaves the caller's global RNG untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = ResNetEncoder(config)
    if state is not None:
        try:
            encoder.load_state_dict(dict(state), strict=True)
        except RuntimeError as err:
            raise ValueError(f"state dict does not fit ResNetEncoder({config}): {err}") from err
    return encoder


def encoder_state(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of a larger state dict under ``prefix`` (e.g. ``"image_encoder."``), prefix removed.

    Raises
    ------
    ValueError
        When no key starts with ``prefix``.
    """
    out = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not out:
        sample = ", ".join(list(state)[:5])
        raise ValueError(f"no state-dict key starts with {prefix!r} (keys look like: {sample})")
    return out


def state_hash(state: Mapping[str, torch.Tensor] | None) -> str:
    """A short content hash of a state dict (``"random"`` for ``None``)."""
    if state is None:
        return "random"
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        digest.update(key.encode())
        if isinstance(value, torch.Tensor):
            digest.update(str(value.dtype).encode())
            digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()[:16]
