"""Pairs a site keeps out of training to measure image-text alignment every round.

Whether the alignment objectives learn (does an image find its own report among others?) is
measured on pairs the model never trained on. A site with pairs holds out a share of them
(run-config ``align-holdout``), chosen by a hash of the study id (or of the row id when the
manifest has no ``study_id``), so that images of one study, which share one report, stay on
one side and the same rows are held out in every round, process and restart.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .manifest import ManifestRows

__all__ = ["HOLDOUT_MAX_ROWS", "HOLDOUT_MIN_ROWS", "holdout_split"]

HOLDOUT_MAX_ROWS = 256  # enough for a stable top-1 accuracy; more only costs evaluation time
HOLDOUT_MIN_ROWS = 8  # below this, top-1 retrieval among the held-out pairs says nothing
_SALT = "fedvlp-align-holdout"


def _unit(key: str) -> float:
    digest = hashlib.sha256(f"{_SALT}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def holdout_split(rows: ManifestRows, share: float) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(train, held_out)`` of a source; ``held_out`` is empty when it would be too small.

    Parameters
    ----------
    rows
        The usable rows of a pair source.
    share
        Target share of rows held out (by study); at most :data:`HOLDOUT_MAX_ROWS` rows are
        kept out, and none when fewer than :data:`HOLDOUT_MIN_ROWS` would be.
    """
    n = len(rows)
    everything = np.arange(n)
    if share <= 0 or n < 2 * HOLDOUT_MIN_ROWS:
        return everything, everything[:0]
    groups = rows.study_ids if rows.study_ids is not None else rows.ids
    keys = [str(groups[i]) or str(rows.ids[i]) for i in range(n)]
    scores = np.array([_unit(k) for k in keys])
    held = scores < share
    if held.sum() > HOLDOUT_MAX_ROWS:
        # Keep whole groups: the lowest-scoring groups whose rows fit under the cap together.
        group_scores, sizes = np.unique(scores[held], return_counts=True)
        fits = np.cumsum(sizes) <= HOLDOUT_MAX_ROWS
        cutoff = group_scores[fits][-1] if fits.any() else -1.0
        held &= scores <= cutoff
    if held.sum() < HOLDOUT_MIN_ROWS or held.all():
        return everything, everything[:0]
    return everything[~held], everything[held]
