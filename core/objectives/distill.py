"""Image self-distillation against the round's global model: two views, BYOL's loss.

Masked patch regeneration teaches a CNN little (its features are not what a linear head reads);
two-view consistency does (SimSiam, BYOL). A site augments each image twice; the local model
embeds one view through a projector and a predictor, the round's global model (the teacher,
:class:`~fedvlp.core.objectives.teacher.GlobalTeacher`) embeds the other through its projector,
and the loss is BYOL's ``2 - 2 cos(prediction, target)``, summed over the two directions.
The teacher moves only when the federation aggregates (or per step with ``distill-ema`` < 1),
so every site distils towards the same target and the update keeps the global model's
features as its anchor.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .base import IMAGE, TWO_VIEWS, BatchView, Objective

__all__ = ["byol_loss", "mlp", "DistillObjective"]


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``2 - 2 cos(prediction_i, target_i)``; the target carries no gradient."""
    return (2.0 - 2.0 * F.cosine_similarity(prediction.float(), target.detach().float(), dim=-1)).mean()


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """BYOL's projector / predictor: Linear, BatchNorm, ReLU, Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


class DistillObjective(Objective):
    """Projector (``image_dim -> 4 embed -> embed``) and predictor (``embed -> 4 embed -> embed``).

    The batch must hold a second augmented view of every image (``image2``); the teacher comes
    from the trainer (:attr:`BatchView.teacher`).
    """

    name: ClassVar[str] = "distill"
    modalities: ClassVar[frozenset[str]] = frozenset({IMAGE, TWO_VIEWS})
    encoder_groups: ClassVar[tuple[str, ...]] = ("image",)

    def __init__(self, image_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.projector = mlp(image_dim, 4 * embed_dim, embed_dim)
        self.predictor = mlp(embed_dim, 4 * embed_dim, embed_dim)

    def loss(self, view: BatchView) -> torch.Tensor:
        teacher = view.teacher
        if teacher is None or teacher.projector is None:
            raise RuntimeError("the distill objective needs the round's global model as teacher (LocalTrainer sets it)")
        student = torch.cat([view.image_vector(IMAGE), view.image_vector("image2")])
        with torch.no_grad():
            target = teacher.projector(
                torch.cat([view.teacher_image_vector(IMAGE), view.teacher_image_vector("image2")])
            )
        prediction = self.predictor(self.projector(student))
        first, second = prediction.chunk(2)
        target_first, target_second = target.chunk(2)
        # View 1 predicts the teacher's view 2 and vice versa (BYOL's symmetrised loss).
        return byol_loss(first, target_second) + byol_loss(second, target_first)
