"""What every objective declares, and the per-batch encoder outputs they share."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

import torch
from torch import nn

if TYPE_CHECKING:
    from .teacher import GlobalTeacher

__all__ = ["Objective", "BatchView", "IMAGE", "TEXT", "PAIR", "TWO_VIEWS"]

T = TypeVar("T")

IMAGE = "image"
TEXT = "text"
# Image and text rows that truly belong together. A batch whose images were coupled with
# random reports from a public pool (``batch["paired"]`` = 0) has image and text, not pairs.
PAIR = "pair"
# A second augmented view of every image (``batch["image2"]``), for self-distillation.
TWO_VIEWS = "two-views"


class BatchView:
    """One batch plus lazily computed, shared encoder outputs.

    Contrastive and matching objectives both need the clean image feature map and text
    states; computing them once per batch keeps the trainer as fast as a bare loop.
    """

    def __init__(self, model: Any, batch: dict[str, torch.Tensor], teacher: "GlobalTeacher | None" = None) -> None:
        # The model whose heads these objectives are (a VLPModel of fedvlp.core.models); typed
        # loosely because objectives never import models: each objective reads what it needs.
        self.model = model
        self.batch = batch
        self.teacher = teacher  # the round's global model, for self-distillation and anchors
        self._cache: dict[str, Any] = {}

    def cached(self, name: str, compute: Callable[[], T]) -> T:
        """``compute()`` once per batch under ``name``; later calls reuse the result."""
        if name not in self._cache:
            self._cache[name] = compute()
        return cast(T, self._cache[name])  # what compute() returned under this name

    @property
    def modalities(self) -> frozenset[str]:
        """Modalities present in the batch."""
        present = set()
        if IMAGE in self.batch or "views" in self.batch:
            present.add(IMAGE)
        if "input_ids" in self.batch:
            present.add(TEXT)
        if {IMAGE, TEXT} <= present and "paired" not in self.batch:
            present.add(PAIR)
        if "image2" in self.batch:
            present.add(TWO_VIEWS)
        return frozenset(present)

    @property
    def size(self) -> int:
        """Number of samples in the batch."""
        tensor = self.batch[IMAGE] if IMAGE in self.batch else self.batch["input_ids"]
        return int(tensor.shape[0])

    @property
    def locked_stages(self) -> int:
        """Lower image-encoder stages that do not train (run-config ``freeze-image-stages``)."""
        return int(getattr(self.model, "locked_image_stages", 0))

    def image_lower(self, key: str = IMAGE) -> torch.Tensor:
        """Output of the locked lower stages for ``batch[key]`` (the images when none is locked).

        Shared by the local model and the teacher, whose locked stages are the same weights.
        """

        def compute() -> torch.Tensor:
            if not self.locked_stages:
                return self.batch[key]
            with torch.no_grad():
                result: torch.Tensor = self.model.image.forward_stages(self.batch[key], 0, self.locked_stages)
                return result

        return self.cached(f"lower:{key}", compute)

    def image_map_of(self, key: str = IMAGE) -> torch.Tensor:
        """``(B, C, h, w)`` feature map of ``batch[key]`` by the local image encoder."""

        def compute() -> torch.Tensor:
            image = self.model.image
            if not self.locked_stages:
                result: torch.Tensor = image.forward_features(self.batch[key])
                return result
            result = image.forward_stages(self.image_lower(key), self.locked_stages, len(image.stage_modules()))
            return result

        return self.cached(f"map:{key}", compute)

    def image_vector(self, key: str = IMAGE) -> torch.Tensor:
        """``(B, C)`` pooled features of ``batch[key]`` by the local image encoder."""
        result: torch.Tensor = self.cached(f"vector:{key}", lambda: self.model.image.pool(self.image_map_of(key)))
        return result

    def teacher_image_vector(self, key: str = IMAGE) -> torch.Tensor:
        """``(B, C)`` pooled features of ``batch[key]`` by the teacher's image encoder (no gradient)."""
        if self.teacher is None:
            raise RuntimeError("this batch has no teacher (the round's global model)")
        teacher = self.teacher.image

        def compute() -> torch.Tensor:
            with torch.no_grad():
                stop = len(teacher.stage_modules())
                result: torch.Tensor = teacher.pool(
                    teacher.forward_stages(self.image_lower(key), self.locked_stages, stop)
                )
                return result

        return self.cached(f"teacher-vector:{key}", compute)

    @property
    def image_map(self) -> torch.Tensor:
        """``(B, C, h, w)`` image feature map of the clean images."""
        return self.image_map_of(IMAGE)

    @cached_property
    def text_states(self) -> torch.Tensor:
        """``(B, L, D)`` token states of the clean reports."""
        result: torch.Tensor = self.model.text(self.batch["input_ids"], self.batch["attention_mask"])
        return result


class Objective(nn.Module):
    """A loss family with its head. The head's parameters are the ``head.<name>.`` group.

    Subclasses set ``name``, ``modalities`` (what a batch must hold) and ``encoder_groups``
    (which encoder groups its gradient reaches), and implement :meth:`loss`.
    """

    name: ClassVar[str]
    modalities: ClassVar[frozenset[str]]
    encoder_groups: ClassVar[tuple[str, ...]]

    @property
    def groups(self) -> tuple[str, ...]:
        """All parameter groups that training this objective changes."""
        return (*self.encoder_groups, f"head.{self.name}")

    def applies_to(self, modalities: frozenset[str]) -> bool:
        """Whether a batch with ``modalities`` can train this objective."""
        return self.modalities <= modalities

    def loss(self, view: BatchView) -> torch.Tensor:  # pragma: no cover - abstract
        """Scalar loss on one batch."""
        raise NotImplementedError
