"""The round's global model as a frozen teacher: self-distillation targets and representation anchors.

At the start of every round a site copies the global encoders it received (and the
self-distillation projector) into a :class:`GlobalTeacher`. Local training then pulls the
site's model towards it in representation space: the self-distillation objective predicts the
teacher's embedding of another view of the same image (BYOL with the global model as target
network, updated by aggregation once per round, or per step with ``distill-ema`` < 1), and the
anchor term (``weight-anchor``) keeps the local features of every batch close to the global
model's, as FedDRA and FedAID anchor federated medical VLP clients on global representations.
The teacher is never a parameter: it is not in the state dict and never uploaded.
"""

from __future__ import annotations

import copy
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GlobalTeacher", "anchor_loss", "proximal_term"]

M = TypeVar("M", bound=nn.Module)


def _frozen_copy(module: M) -> M:
    clone = copy.deepcopy(module).eval()
    for parameter in clone.parameters():
        parameter.requires_grad_(False)
    return clone


class GlobalTeacher:
    """Frozen, eval-mode copies of a model's encoders (and of its distillation projector).

    Parameters
    ----------
    model
        The site's model, holding the round's global weights when the teacher is made.
    text
        Also keep the text encoder (for the text anchor).
    """

    def __init__(self, model: Any, text: bool = False) -> None:
        # ``model`` is a VLPModel of fedvlp.core.models, typed loosely as in BatchView: objectives never
        # import models.
        self.image = _frozen_copy(model.image)
        self.text = _frozen_copy(model.text) if text else None
        head = getattr(model, "head", {})
        self.projector = _frozen_copy(head["distill"].projector) if "distill" in head else None

    def _pairs(self, model: Any) -> list[tuple[nn.Module, nn.Module]]:
        pairs: list[tuple[nn.Module, nn.Module]] = [(self.image, model.image)]
        if self.text is not None:
            pairs.append((self.text, model.text))
        if self.projector is not None:
            pairs.append((self.projector, model.head["distill"].projector))
        return pairs

    def tensors(self) -> list[torch.Tensor]:
        """Every weight and buffer the teacher keeps (for memory accounting)."""
        copies = [m for m in (self.image, self.text, self.projector) if m is not None]
        return [t for module in copies for t in module.state_dict().values()]

    @torch.no_grad()
    def refresh(self, model: nn.Module) -> None:
        """Copy ``model``'s current weights and buffers (the new round's global model) in place."""
        for teacher, student in self._pairs(model):
            teacher.load_state_dict(student.state_dict())

    @torch.no_grad()
    def ema_update(self, model: nn.Module, momentum: float) -> None:
        """``teacher = momentum x teacher + (1 - momentum) x student`` for every floating-point tensor."""
        if momentum >= 1.0:
            return
        for teacher, student in self._pairs(model):
            for (_, t), (_, s) in zip(teacher.state_dict().items(), student.state_dict().items()):
                if t.is_floating_point():
                    t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)

    def to(self, device: torch.device) -> "GlobalTeacher":
        """Move the copies to ``device``."""
        for module in (self.image, self.text, self.projector):
            if module is not None:
                module.to(device)
        return self


def anchor_loss(local: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean of ``1 - cos(local_i, teacher_i)`` over the batch (the teacher side carries no gradient)."""
    return (1.0 - F.cosine_similarity(local.float(), teacher.detach().float(), dim=-1)).mean()


def proximal_term(named: list[tuple[str, torch.Tensor]], reference: dict[str, torch.Tensor]) -> torch.Tensor:
    """FedProx's ``1/2 x sum ||w - w_global||^2`` over ``named`` parameters that have a reference."""
    terms = [(p - reference[n]).pow(2).sum() for n, p in named if n in reference]
    if not terms:
        raise ValueError("proximal_term: none of the parameters has a reference value")
    return 0.5 * torch.stack(terms).sum()
