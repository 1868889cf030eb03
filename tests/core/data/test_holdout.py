"""The alignment hold-out: stable by study, capped, and empty when it would be too small."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedvlp.core.config import SourceConfig
from fedvlp.core.data.holdout import HOLDOUT_MAX_ROWS, HOLDOUT_MIN_ROWS, holdout_split
from fedvlp.core.data.manifest import ManifestRows


def _rows(n: int, per_study: int | None = None, blank_studies: bool = False) -> ManifestRows:
    """``n`` paired rows ``r0..``; ``per_study`` consecutive rows share a study id (``None``: no column)."""
    ids = [f"r{i}" for i in range(n)]
    if blank_studies:
        studies: list[str] | None = [""] * n
    elif per_study is None:
        studies = None
    else:
        studies = [f"s{i // per_study}" for i in range(n)]
    return ManifestRows(
        source=SourceConfig(manifest=Path("pairs.csv")),
        ids=ids,
        images=[Path(f"{i}.png") for i in ids],
        reports=["report"] * n,
        study_ids=studies,
    )


def test_holdout_split_is_deterministic() -> None:
    first = holdout_split(_rows(400, per_study=2), 0.2)
    second = holdout_split(_rows(400, per_study=2), 0.2)
    assert len(first[1]) > 0
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_holdout_split_keeps_each_study_on_one_side() -> None:
    rows = _rows(600, per_study=3)
    train, held = holdout_split(rows, 0.2)
    held_studies = {rows.study_ids[i] for i in held}
    train_studies = {rows.study_ids[i] for i in train}
    assert held_studies and train_studies
    assert held_studies.isdisjoint(train_studies)


def test_holdout_split_is_disjoint_and_covers_every_row() -> None:
    train, held = holdout_split(_rows(500, per_study=2), 0.3)
    assert len(held) > 0
    assert np.intersect1d(train, held).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, held])), np.arange(500))


def test_holdout_split_holds_out_about_the_share() -> None:
    # 1000 distinct ids at share 0.1: expected 100 held out; the hash is uniform, so within
    # ~4 standard deviations (sqrt(1000 x 0.1 x 0.9) = 9.5) of it, and below the cap of 256.
    _, held = holdout_split(_rows(1000), 0.1)
    assert 60 <= len(held) <= 140


def test_holdout_split_with_share_zero_holds_out_nothing() -> None:
    train, held = holdout_split(_rows(400), 0.0)
    assert len(held) == 0
    np.testing.assert_array_equal(train, np.arange(400))


def test_holdout_split_of_too_few_rows_holds_out_nothing() -> None:
    n = 2 * HOLDOUT_MIN_ROWS - 1  # 15 rows: below the 2 x 8 needed
    train, held = holdout_split(_rows(n), 0.45)
    assert len(held) == 0
    np.testing.assert_array_equal(train, np.arange(n))


def test_holdout_split_caps_distinct_rows_at_the_maximum() -> None:
    # 5000 ids at share 0.45: ~2250 would be held out, the cap keeps exactly 256.
    train, held = holdout_split(_rows(5000), 0.45)
    assert len(held) == HOLDOUT_MAX_ROWS
    assert len(train) == 5000 - HOLDOUT_MAX_ROWS


def test_holdout_split_cap_keeps_the_lowest_scoring_rows() -> None:
    # The capped hold-out is a subset of the uncapped one at the same share: capping only
    # drops groups, it never adds new ones.
    rows = _rows(5000)
    _, capped = holdout_split(rows, 0.45)
    _, smaller = holdout_split(rows, 0.02)  # ~100 rows: under the cap, the lowest scores
    assert set(smaller.tolist()) <= set(capped.tolist())


def test_holdout_split_never_holds_out_more_than_the_maximum_with_studies() -> None:
    # 6000 rows in studies of 3 at share 0.45: 85 whole studies (255 rows) fit under 256;
    # the 86th would make 258.
    rows = _rows(6000, per_study=3)
    _, held = holdout_split(rows, 0.45)
    assert len(held) == 255
    assert len({rows.study_ids[i] for i in held}) * 3 == len(held)  # whole studies only


def test_holdout_split_without_study_ids_groups_by_row_id() -> None:
    rows = _rows(400)
    blank = _rows(400, blank_studies=True)  # blank study ids fall back to the row id
    a = holdout_split(rows, 0.2)
    b = holdout_split(blank, 0.2)
    assert len(a[1]) > 0
    np.testing.assert_array_equal(a[1], b[1])
