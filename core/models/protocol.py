"""The contract every model family's model keeps (:class:`VLPModel`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ..objectives import Objective

__all__ = ["VLPModel"]


@runtime_checkable
class VLPModel(Protocol):
    """A pretraining model: encoders in named parameter groups plus one head per active objective.

    The attribute names are the parameter groups of DESIGN.md: ``state_dict()`` keys read
    ``<group>.…`` (``image``, ``text``, ``joint`` for the shared transformer) and
    ``head.<objective>.…``. Every family's model is an ``nn.Module`` that also has the members
    below; evaluation asks them (``supports_*``) instead of probing attributes.
    """

    head: nn.ModuleDict
    max_text_len: int

    @property
    def objectives(self) -> list[Objective]:
        """The active objectives, in a fixed order."""
        ...

    def image_backbone(self) -> nn.Module:
        """The module the fine-tuning sweep trains: ``(B, 1, S, S)`` images in ``[0, 1]`` to pooled features."""
        ...

    def supports_retrieval(self) -> bool:
        """Whether :meth:`embed_images` / :meth:`embed_texts` embed both modalities into one space."""
        ...

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` image embeddings in the shared space (not normalised); needs :meth:`supports_retrieval`."""
        ...

    def embed_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` text embeddings in the shared space (not normalised); needs :meth:`supports_retrieval`."""
        ...

    def supports_regeneration(self) -> bool:
        """Whether :meth:`regenerate_masked` works (a masked-image head is active)."""
        ...

    def regenerate_masked(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hide patches of ``images`` as in pretraining (masks drawn from the global torch RNG) and predict them.

        Returns
        -------
        (mask, prediction)
            A ``(B, 1, S, S)`` boolean pixel mask and the ``(B, 1, S, S)`` float prediction in ``[0, 1]``.
        """
        ...

    # The nn.Module members the call sites use.
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Parameter]]: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...

    def to(self, *args: Any, **kwargs: Any) -> Any: ...
