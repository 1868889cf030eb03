"""Loss families, one per module; each declares the modalities it needs.

The names below are the public API that :mod:`fedvlp.core.models` builds heads from; objectives
never import models.
"""

from .base import IMAGE, PAIR, TEXT, TWO_VIEWS, BatchView, Objective
from .contrastive import ContrastiveObjective, info_nce
from .distill import DistillObjective, byol_loss
from .generation import GenerationObjective
from .masked import MIMObjective, MLMObjective, masked_l1, mlm_loss, patch_mask
from .matching import MatchingObjective, matching_loss
from .study_contrastive import StudyContrastiveObjective
from .uwox import UWOXMatchingObjective, UWOXMIMObjective, UWOXMLMObjective, random_patch_mask

__all__ = [
    "IMAGE",
    "TEXT",
    "PAIR",
    "TWO_VIEWS",
    "BatchView",
    "Objective",
    "ContrastiveObjective",
    "MatchingObjective",
    "MLMObjective",
    "MIMObjective",
    "DistillObjective",
    "GenerationObjective",
    "StudyContrastiveObjective",
    "UWOXMLMObjective",
    "UWOXMIMObjective",
    "UWOXMatchingObjective",
    "byol_loss",
    "info_nce",
    "matching_loss",
    "mlm_loss",
    "masked_l1",
    "patch_mask",
    "random_patch_mask",
]
