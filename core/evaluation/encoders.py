"""Building the image encoder for evaluation runs from a state dict or a seeded random init."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from typing import Any, Mapping, Union

import torch
from torch import nn

from ..config import ImageEncoderConfig
from ..models.image import ResNetEncoder

__all__ = ["EncoderSource", "Init", "build_encoder", "describe_encoder", "encoder_state", "state_hash"]

# What the sweep fine-tunes: a ResNet config, or any factory of a module that maps images in
# [0, 1] to pooled features and has ``out_dim`` (e.g. a recipe model's ``image_backbone()``).
EncoderSource = Union[ImageEncoderConfig, Callable[[], nn.Module]]


@dataclasses.dataclass(frozen=True)
class Init:
    """One initialisation of a sweep with its own architecture: ``source`` with ``state`` loaded
    (``None``: random, seeded by the run seed). ``origin`` says where it came from (recorded)."""

    source: EncoderSource
    state: Mapping[str, torch.Tensor] | None = None
    origin: str = ""
    image_size: int | None = None  # the images it is evaluated on (None: the sweep's labelled set)

    def digest(self) -> str:
        """What identifies the init's weights and architecture in ``sweep_meta.json``."""
        arch = hashlib.sha256(repr(describe_encoder(self.source)).encode()).hexdigest()[:8]
        size = "" if self.image_size is None else f"@{self.image_size}"
        return f"{state_hash(self.state)}:{arch}{size}"


def build_encoder(source: EncoderSource, state: Mapping[str, torch.Tensor] | None, seed: int) -> nn.Module:
    """The encoder of ``source`` with ``state`` loaded (strictly), or randomly initialised.

    The random initialisation is drawn from a generator seeded with ``seed`` inside a forked
    RNG, so it is reproducible and leaves the caller's global RNG untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = ResNetEncoder(source) if isinstance(source, ImageEncoderConfig) else source()
    if state is not None:
        try:
            encoder.load_state_dict(dict(state), strict=True)
        except RuntimeError as err:
            raise ValueError(f"state dict does not fit the encoder ({describe_encoder(source)}): {err}") from err
    return encoder


def describe_encoder(source: EncoderSource) -> Any:
    """A JSON-able description of an encoder source (recorded in ``sweep_meta.json``)."""
    if isinstance(source, ImageEncoderConfig):
        return dataclasses.asdict(source)
    return getattr(source, "description", getattr(source, "__qualname__", repr(source)))


def encoder_state(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of a larger state dict under ``prefix`` (e.g. ``"image_encoder."``), prefix removed.

    Raises
    ------
    ValueError
        When no key starts with ``prefix``.
    """
    out = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
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
