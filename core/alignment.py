"""Image-text alignment on held-out pairs: does an image find its own report, and vice versa?

The alignment objectives (contrastive, matching) can sit at chance while their losses creep
down; these numbers say whether they learn. A site that trains on pairs measures them every
round on its held-out pairs (:mod:`fedvlp.core.data.holdout`), and the round history and the
study report show them next to the losses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .objectives.base import BatchView

__all__ = ["ALIGNMENT_PREFIX", "alignment_metrics", "top1_accuracy"]

ALIGNMENT_PREFIX = "align/"


def top1_accuracy(similarity: torch.Tensor, groups: Sequence[str]) -> float:
    """Share of rows whose most similar column belongs to the row's own group.

    ``similarity[i, j]`` scores query ``i`` against candidate ``j``; query ``i``'s true
    candidate is ``j = i``, and any candidate of the same group (e.g. another image of the same
    study, which shares its report) counts as correct.
    """
    best = similarity.argmax(dim=1).tolist()
    return float(sum(groups[j] == groups[i] for i, j in enumerate(best)) / len(best))


@torch.no_grad()
def alignment_metrics(model: nn.Module, batch: dict[str, torch.Tensor], groups: Sequence[str]) -> dict[str, float]:
    """Alignment of ``model`` on one batch of held-out pairs, in eval mode.

    Returns
    -------
    dict
        ``align/pairs`` (n) and ``align/chance-top1`` (1/n); with a contrastive head
        ``align/i2t-top1`` and ``align/t2i-top1`` (retrieval among the n pairs by cosine
        similarity in the shared space); with a matching head ``align/match-acc`` (each image
        against its own report and against the report of the next row of another study,
        threshold 0 on the match logit; chance 0.5).
    """
    heads = getattr(model, "head", {})
    n = int(batch["input_ids"].shape[0])
    metrics = {f"{ALIGNMENT_PREFIX}pairs": float(n), f"{ALIGNMENT_PREFIX}chance-top1": 1.0 / n}
    if n < 2 or not ({"contrastive", "matching"} & set(heads)):
        return metrics
    was_training = model.training
    model.eval()
    try:
        view = BatchView(model, batch)
        if "contrastive" in heads:
            image, text = heads["contrastive"].embed(view)
            image = nn.functional.normalize(image.float(), dim=-1)
            text = nn.functional.normalize(text.float(), dim=-1)
            similarity = image @ text.t()
            metrics[f"{ALIGNMENT_PREFIX}i2t-top1"] = top1_accuracy(similarity, groups)
            metrics[f"{ALIGNMENT_PREFIX}t2i-top1"] = top1_accuracy(similarity.t(), groups)
        if "matching" in heads:
            image, text = heads["matching"].embed(view)
            # Negatives: for each image, the first later row (cyclically) of another group.
            negatives = [
                next(((i + k) % n for k in range(1, n) if groups[(i + k) % n] != groups[i]), (i + 1) % n)
                for i in range(n)
            ]
            classifier = heads["matching"].classifier
            positive = classifier((text - image).abs()).squeeze(-1)
            negative = classifier((text[negatives] - image).abs()).squeeze(-1)
            correct = (positive > 0).float().sum() + (negative <= 0).float().sum()
            metrics[f"{ALIGNMENT_PREFIX}match-acc"] = float(correct) / (2 * n)
    finally:
        model.train(was_training)
    return metrics
