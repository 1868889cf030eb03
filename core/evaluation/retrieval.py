"""Zero-shot retrieval in the shared image-text space (ConVIRT / Wang et al. protocol).

Images and text queries are embedded by the pretrained encoders and the contrastive
projection heads, ranked by cosine similarity, and scored by precision@k with relevance =
*identical label set*: an image retrieved for an image query is relevant when its set of
positive labels equals the query's; for a text query of class ``c`` an image is relevant
when its label set is exactly ``{c}``.

Supported: the ResNet + BERT family (recipes ``mixed``, ``convirt``: the contrastive
projections; ``timnet``: the matching head's ``v_img`` / ``v_txt`` before the difference
classifier, a space in which matching pairs are close) and ``refers`` (its study contrastive
projections applied to one image's patch tokens); each model says so itself
(:meth:`~fedvlp.core.models.VLPModel.supports_retrieval`). Other models raise a ``ValueError``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import yaml
from torch.nn import functional as F

from ..models.protocol import VLPModel
from .tasks import BINARY, Task

__all__ = [
    "KS",
    "DEFAULT_QUERIES",
    "precision_at_k",
    "load_queries",
    "label_sets",
    "supports_retrieval",
    "embed_images",
    "embed_texts",
    "retrieval_metrics",
]

log = logging.getLogger(__name__)

KS: tuple[int, ...] = (1, 5, 10, 50)
NONE = "none"  # the query key of images without any positive label (e.g. "no finding", "normal")

# Text queries for the demo world's findings (core.data.synthetic.FINDINGS), in its report style.
DEFAULT_QUERIES: dict[str, list[str]] = {
    "cardiomegaly": ["The heart is enlarged. Cardiomegaly."],
    "pleural_effusion": ["Pleural effusion. The costophrenic angle is blunted."],
    "pneumothorax": ["Pneumothorax."],
    "nodule": ["A pulmonary nodule."],
    "consolidation": ["Airspace consolidation, concerning for pneumonia."],
    "support_devices": ["An endotracheal tube is in place. Central line. Pacemaker device."],
}


def precision_at_k(
    similarity: np.ndarray | torch.Tensor,
    relevant: np.ndarray | torch.Tensor,
    ks: Sequence[int] = KS,
    exclude_self: bool = False,
) -> dict[int, np.ndarray]:
    """Per-query precision@k of a ``(Q, G)`` similarity matrix.

    Parameters
    ----------
    similarity
        Higher = more similar. Ties are broken by gallery index (stable sort).
    relevant
        ``(Q, G)`` bool: gallery item ``g`` is relevant to query ``q``.
    ks
        Cut-offs; ``k`` larger than the gallery is clipped to its size.
    exclude_self
        Queries are gallery items (``Q == G``): item ``q`` is removed from query ``q``'s ranking.

    Returns
    -------
    dict[int, np.ndarray]
        ``{k: (Q,) precision}`` = relevant items among the top ``k`` / ``k``.
    """
    s = (
        similarity.detach().cpu().numpy()
        if isinstance(similarity, torch.Tensor)
        else np.asarray(similarity, dtype=np.float64)
    )
    r = relevant.detach().cpu().numpy() if isinstance(relevant, torch.Tensor) else np.asarray(relevant)
    s = s.astype(np.float64).copy()
    r = r.astype(bool)
    if s.shape != r.shape:
        raise ValueError(f"similarity {s.shape} and relevance {r.shape} differ")
    gallery = s.shape[1]
    if exclude_self:
        if s.shape[0] != gallery:
            raise ValueError("exclude_self needs a square similarity matrix (queries = gallery)")
        np.fill_diagonal(s, -np.inf)
        gallery -= 1
    order = np.argsort(-s, axis=1, kind="stable")
    ranked = np.take_along_axis(r, order, axis=1)
    out = {}
    for k in ks:
        kk = max(1, min(int(k), gallery))
        out[int(k)] = ranked[:, :kk].sum(1) / kk
    return out


def load_queries(path: str | Path | None) -> dict[str, list[str]]:
    """Text queries per class from YAML (``class: text`` or ``class: [text, ...]``); defaults without a path."""
    if path is None:
        return {k: list(v) for k, v in DEFAULT_QUERIES.items()}
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot read the retrieval queries ({err})") from err
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{path}: expected a mapping of class name to a query text or a list of texts")
    out = {}
    for name, value in raw.items():
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError(f"{path}: key '{name}': expected a non-empty text or list of texts, got {value!r}")
        out[str(name)] = [t.strip() for t in texts]
    return out


def label_sets(labels: np.ndarray | torch.Tensor, tasks: Sequence[Task]) -> tuple[list[frozenset[str]], np.ndarray]:
    """Each row's set of positive labels (categorical: ``name=value``) and whether it is fully known."""
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels, dtype=np.float64)
    sets, known = [], ~np.isnan(y).any(axis=1)
    for row in y:
        members = set()
        for value, task in zip(row, tasks):
            if math.isnan(value):
                continue
            if task.kind == BINARY:
                if value > 0.5:
                    members.add(task.name)
            else:
                members.add(f"{task.name}={task.classes[int(value)]}")
        sets.append(frozenset(members))
    return sets, known


def supports_retrieval(model: VLPModel) -> bool:
    """Whether ``model`` embeds images and texts into a shared space (a contrastive or matching head)."""
    return model.supports_retrieval()


def _check(model: VLPModel) -> None:
    if not model.supports_retrieval():
        raise ValueError(
            f"retrieval needs a ResNet + BERT model with a contrastive or matching head (recipes mixed, convirt, "
            f"timnet); {type(model).__name__} has none"
        )


@torch.no_grad()
def embed_images(model: VLPModel, images: torch.Tensor, batch_size: int = 256, device: str = "cpu") -> torch.Tensor:
    """L2-normalised ``(N, D)`` image embeddings (encoder, average pool, the head's image projection)."""
    _check(model)
    model.eval().to(device)
    out = []
    for i in range(0, len(images), batch_size):
        out.append(model.embed_images(images[i : i + batch_size].to(device)).float().cpu())
    return F.normalize(torch.cat(out), dim=-1)


@torch.no_grad()
def embed_texts(model: VLPModel, tokenizer: Any, texts: Sequence[str], device: str = "cpu") -> torch.Tensor:
    """L2-normalised ``(M, D)`` text embeddings.

    The text encoder's output, pooled as the head pools, through the head's text projection.
    """
    _check(model)
    model.eval().to(device)
    encoded = tokenizer(list(texts), truncation=True, max_length=model.max_text_len, padding=True, return_tensors="pt")
    ids, mask = encoded["input_ids"].to(device), encoded["attention_mask"].to(device)
    return F.normalize(model.embed_texts(ids, mask).float().cpu(), dim=-1)


def _class_key(name: str, label_names: Sequence[str]) -> str | None:
    for candidate in (name, f"label_{name}"):
        if candidate in label_names:
            return candidate
    return None


def retrieval_metrics(
    model: VLPModel,
    tokenizer: Any,
    images: torch.Tensor,
    labels: torch.Tensor,
    tasks: Sequence[Task],
    queries: Mapping[str, Sequence[str]] | None = None,
    ks: Sequence[int] = KS,
    device: str = "cpu",
) -> list[tuple[str, str, float]]:
    """Image-to-image and text-to-image precision@k on a (test) set, as ``(metric, class, value)`` rows.

    - ``i2i_p@k`` / class ``mean``: every fully labelled image queries all the others;
    - ``t2i_p@k`` / class ``c``: the query texts of class ``c`` (their embeddings averaged)
      against all fully labelled images; relevant = label set exactly ``{c}``. Classes
      without such an image, or not among the label columns (``c`` or ``label_c``), are
      skipped; the key ``none`` queries images without any positive label. Class ``mean``
      averages the classes.
    """
    sets, known = label_sets(labels, tasks)
    index = np.flatnonzero(known)
    if len(index) < 2:
        raise ValueError("retrieval needs at least 2 fully labelled images")
    emb = embed_images(model, images[torch.as_tensor(index)], device=device)
    sets = [sets[i] for i in index]
    rows: list[tuple[str, str, float]] = []
    same = np.array([[a == b for b in sets] for a in sets])
    for k, values in precision_at_k((emb @ emb.t()).numpy(), same, ks, exclude_self=True).items():
        rows.append((f"i2i_p@{k}", "mean", float(values.mean())))
    names = [t.name for t in tasks]
    per_class: dict[int, dict[str, float]] = {int(k): {} for k in ks}
    for name, texts in (queries if queries is not None else DEFAULT_QUERIES).items():
        key = NONE if name == NONE else _class_key(name, names)
        if key is None:
            log.info("retrieval query '%s' has no label column; skipped", name)
            continue
        target = frozenset() if key == NONE else frozenset({key})
        relevant = np.array([s == target for s in sets])
        if not relevant.any():
            log.info("retrieval query '%s': no test image has exactly this label; skipped", name)
            continue
        query = F.normalize(embed_texts(model, tokenizer, texts, device).mean(0, keepdim=True), dim=-1)
        for k, values in precision_at_k((query @ emb.t()).numpy(), relevant[None, :], ks).items():
            per_class[k][key] = float(values[0])
    for k in ks:
        for key, value in per_class[int(k)].items():
            rows.append((f"t2i_p@{k}", key, value))
        if per_class[int(k)]:
            rows.append((f"t2i_p@{k}", "mean", float(np.mean(list(per_class[int(k)].values())))))
    return rows
