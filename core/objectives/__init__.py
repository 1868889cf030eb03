"""Loss families, one per module; each declares the modalities it needs."""

from .base import IMAGE, PAIR, TEXT, TWO_VIEWS, BatchView, Objective
from .contrastive import ContrastiveObjective, info_nce
from .distill import DistillObjective, byol_loss
from .masked import MIMObjective, MLMObjective, masked_l1, mlm_loss
from .matching import MatchingObjective, matching_loss

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
    "byol_loss",
    "info_nce",
    "matching_loss",
    "mlm_loss",
    "masked_l1",
]
