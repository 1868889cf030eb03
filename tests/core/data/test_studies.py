"""Studies from a pairs manifest: grouping, repeating views to three, dropping corrupt views."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fedvlp.core.config import SourceConfig
from fedvlp.core.data.manifest import load_source_rows
from fedvlp.core.data.studies import StudyDataset, collate_studies
from fedvlp.core.data.tokenizer import load_tokenizer

torch.set_num_threads(1)

# row id, study id ("" = none), grey level of its image (None = a file of random bytes)
ROWS = [
    ("r1", "s1", 10),
    ("r2", "s1", 20),
    ("r3", "s1", 30),  # three views
    ("r4", "s2", 40),  # one view
    ("r5", "", 50),  # no study id: a study of its own
    ("r6", "s3", None),
    ("r7", "s3", 70),  # one corrupt view
    ("r8", "s4", None),  # nothing decodable
    ("r9", "s5", 90),
    ("r10", "s5", 100),  # two views
]


def _manifest(tmp_path: Path, with_study_column: bool = True) -> SourceConfig:
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    records = []
    for row_id, study, grey in ROWS:
        path = tmp_path / "images" / f"{row_id}.png"
        if grey is None:
            path.write_bytes(rng.integers(0, 256, 200, dtype=np.uint8).tobytes())
        else:
            Image.fromarray(np.full((40, 40), grey, dtype=np.uint8), mode="L").save(path)
        record = {"id": row_id, "image": f"images/{row_id}.png", "report": f"Findings: report of {study or row_id}."}
        if with_study_column:
            record["study_id"] = study
        records.append(record)
    pd.DataFrame(records).to_csv(tmp_path / "manifest.csv", index=False)
    return SourceConfig(tmp_path / "manifest.csv")


def _dataset(tmp_path: Path, **kwargs) -> StudyDataset:
    source = kwargs.pop("source", None) or _manifest(tmp_path)
    return StudyDataset(load_source_rows(source), 16, load_tokenizer("demo"), 32, augment=False, **kwargs)


def _grey(views: torch.Tensor) -> list[int]:
    """The grey level (0-255) of each view of a study."""
    return [round(float(v.mean()) * 255) for v in views]


def test_rows_are_grouped_by_study_id(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path)
    assert [study for study, _ in dataset.studies] == ["s1", "s2", "r5", "s3", "s4", "s5"]
    assert _grey(dataset[0]["views"]) == [10, 20, 30]


def test_views_are_repeated_to_three_with_a_mask(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path)
    batch = collate_studies([dataset[1], dataset[5], dataset[0]])  # 1, 2 and 3 views
    assert batch["views"].shape == (3, 3, 1, 16, 16)
    assert [_grey(v) for v in batch["views"]] == [[40, 40, 40], [90, 100, 90], [10, 20, 30]]
    assert batch["view_mask"].tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert torch.equal(batch["image"], batch["views"][:, 0])
    assert batch["ids"] == ["s2", "s5", "s1"]


def test_a_corrupt_view_is_dropped_and_counted(tmp_path: Path) -> None:
    batch = collate_studies([_dataset(tmp_path)[3]])
    assert [_grey(v) for v in batch["views"]] == [[70, 70, 70]]
    assert [(i, reason) for i, reason, _ in batch["skipped"]] == [("r6", "image_corrupt")]


def test_a_study_without_a_decodable_view_is_skipped_and_counted(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path)
    batch = collate_studies([dataset[4], dataset[1]])
    assert batch["ids"] == ["s2"] and batch["views"].shape[0] == 1
    assert [(i, reason) for i, reason, _ in batch["skipped"]] == [
        ("r8", "image_corrupt"),
        ("study:s4", "no_decodable_view"),
    ]


def test_a_manifest_without_study_column_has_one_study_per_row(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path, source=_manifest(tmp_path, with_study_column=False))
    assert not dataset.grouped
    assert len(dataset) == len(ROWS)


def test_big_studies_keep_at_most_max_views(tmp_path: Path) -> None:
    assert _grey(_dataset(tmp_path, max_views=2)[0]["views"]) == [10, 20]


def test_the_report_of_the_study_is_tokenised(tmp_path: Path) -> None:
    tokenizer = load_tokenizer("demo")
    sample = _dataset(tmp_path)[0]
    assert (
        sample["input_ids"].tolist()
        == tokenizer("Findings: report of s1.", truncation=True, max_length=32)["input_ids"]
    )


def test_image_only_sources_are_refused(tmp_path: Path) -> None:
    source = _manifest(tmp_path)
    images_only = SourceConfig(source.manifest, report_column=None)
    with pytest.raises(ValueError, match="pairs"):
        StudyDataset(load_source_rows(images_only), 16, load_tokenizer("demo"))
