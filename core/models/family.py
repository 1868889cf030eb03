"""What a model family is: :class:`Family`, the record the registry (:mod:`.registry`) keeps per family."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import MODEL_SIZES, RunConfig
from .protocol import VLPModel

__all__ = ["Family", "PAIRS", "STUDIES", "DATASET_KINDS"]

PAIRS = "pairs"  # one training row per image and/or report (ResNet / shared-transformer families)
STUDIES = "studies"  # a pair source trains on studies: up to 3 views of one study with its report (REFERS)
DATASET_KINDS = (PAIRS, STUDIES)


@dataclass(frozen=True)
class Family:
    """One model family: how to build it from a run config and what it supports.

    Recipes (``RECIPE_SPECS`` in :mod:`fedvlp.core.config`) name a family; every question a call
    site used to answer by comparing the family name is a field here.

    Attributes
    ----------
    name
        The name recipes use (``RecipeSpec.family``).
    build
        ``RunConfig -> VLPModel`` with random weights (plus the run's inits); the caller seeds
        torch first (:func:`fedvlp.core.models.registry.build_model`).
    presets
        ``(model-size, image-size, vocabulary size) -> `` the family's size configuration.
    objectives
        The objectives it has heads for; a recipe of this family may only name these.
    knobs
        The family-specific run-config keys it reads (dashed names). A key another family reads
        but this one does not must stay at its default (:func:`.registry.check_run`).
    dataset
        :data:`PAIRS` or :data:`STUDIES`: how a pair source becomes training data.
    pools_sources
        Whether the centralised baseline may pool the sources of one kind across sites (studies
        are per manifest, so not for :data:`STUDIES`).
    per_sample_dp
        Validated for opacus per-sample gradients (sample-level DP); otherwise client-level DP.
    retrieval, regeneration
        Whether the family's model can embed images and texts into one space / regenerate
        masked patches (when the objective behind it is active).
    shared_encoder
        Images and texts go through one shared transformer (exported as one encoder, not two).
    general_inits
        ``text-init`` / ``image-init`` (MiniLM, EfficientNet-Lite0, local BERT / ResNet files) apply.
    file_image_init
        ``image-init`` may name a local file of the family's own image encoder (a timm ViT).
    init_hint
        Appended to the error when a general init is set for this family (what to use instead).
    sizes
        The ``model-size`` names its presets know.
    """

    name: str
    build: Callable[[RunConfig], VLPModel]
    presets: Callable[[str, int, int], Any]
    objectives: tuple[str, ...]
    knobs: frozenset[str] = frozenset()
    dataset: str = PAIRS
    pools_sources: bool = True
    per_sample_dp: bool = False
    retrieval: bool = False
    regeneration: bool = False
    shared_encoder: bool = False
    general_inits: bool = False
    file_image_init: bool = False
    init_hint: str = ""
    sizes: tuple[str, ...] = MODEL_SIZES

    def __post_init__(self) -> None:
        if self.dataset not in DATASET_KINDS:
            raise ValueError(f"family '{self.name}': dataset must be one of {DATASET_KINDS}, got {self.dataset!r}")
        unknown = sorted(k for k in self.knobs if k.replace("-", "_") not in RunConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(f"family '{self.name}': knobs {unknown} are not run-config keys")
