"""Loss families, one per module; each declares the modalities it needs."""

from .base import IMAGE, PAIR, TEXT, BatchView, Objective
from .contrastive import ContrastiveObjective, info_nce
from .masked import MIMObjective, MLMObjective, masked_l1, mlm_loss
from .matching import MatchingObjective, matching_loss

__all__ = [
    "IMAGE",
    "TEXT",
    "PAIR",
    "BatchView",
    "Objective",
    "ContrastiveObjective",
    "MatchingObjective",
    "MLMObjective",
    "MIMObjective",
    "info_nce",
    "matching_loss",
    "mlm_loss",
    "masked_l1",
]
