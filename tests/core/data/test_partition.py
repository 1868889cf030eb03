"""fedvlp partition: Dirichlet label skew, whole patients, modality mix, loadable site files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedvlp.core.config import ConfigError, load_site
from fedvlp.core.data.manifest import load_source_rows
from fedvlp.core.data.partition import PartitionSpec, partition_manifest, site_kinds


def _manifest(tmp_path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """rows: (id, patient_id, label); every row has an image path and a report."""
    frame = pd.DataFrame(
        {
            "id": [r[0] for r in rows],
            "image": [f"images/{r[0]}.png" for r in rows],
            "report": [f"FINDINGS: case {r[0]}." for r in rows],
            "patient_id": [r[1] for r in rows],
            "label": [r[2] for r in rows],
        }
    )
    path = tmp_path / "data" / "manifest.csv"
    path.parent.mkdir()
    frame.to_csv(path, index=False)
    return path


def _one_patient_per_row(tmp_path: Path) -> Path:
    # 24 rows of class A, 16 of class B, each its own patient
    return _manifest(tmp_path, [(f"r{i:02d}", f"p{i:02d}", "A" if i < 24 else "B") for i in range(40)])


def _site_frames(result_dir: Path) -> list[pd.DataFrame]:
    return [pd.read_csv(p, dtype=str, keep_default_na=False) for p in sorted(result_dir.glob("site_*/manifest.csv"))]


def test_class_counts_per_site_follow_numpys_dirichlet_draw(tmp_path: Path) -> None:
    spec = PartitionSpec(sites=3, by="label", alpha=0.5, seed=3)
    result = partition_manifest(_one_patient_per_row(tmp_path), tmp_path / "sites", spec)
    assert result.draws == 1
    proportions = np.random.default_rng(3).dirichlet([0.5] * 3, size=2)  # classes A, B in sorted order
    for k, (name, n) in enumerate((("A", 24), ("B", 16))):
        cuts = [0, *(np.cumsum(proportions[k]) * n).astype(int)[:-1], n]
        expected = np.diff(cuts).tolist()
        assert [c.get(name, 0) for c in result.classes] == expected
    # proportions A: 0.0078 0.9828 0.0094, B: 0.6633 0.1522 0.1844 -> cuts at int(24 x cumsum), int(16 x cumsum)
    assert result.classes == [{"B": 10}, {"A": 23, "B": 3}, {"A": 1, "B": 3}]


def test_every_row_lands_in_exactly_one_site(tmp_path: Path) -> None:
    source = _one_patient_per_row(tmp_path)
    partition_manifest(source, tmp_path / "sites", PartitionSpec(sites=4, by="label", alpha=1.0, seed=0))
    ids = [i for frame in _site_frames(tmp_path / "sites") for i in frame["id"]]
    assert sorted(ids) == sorted(pd.read_csv(source)["id"]) and len(ids) == len(set(ids)) == 40


def test_a_patient_is_never_split_across_sites(tmp_path: Path) -> None:
    # 15 patients with 3 rows each; a patient's rows carry different labels
    rows = [(f"r{p}_{j}", f"p{p:02d}", "ABC"[(p + j) % 3]) for p in range(15) for j in range(3)]
    partition_manifest(
        _manifest(tmp_path, rows), tmp_path / "sites", PartitionSpec(sites=3, by="label", alpha=0.3, seed=1)
    )
    frames = _site_frames(tmp_path / "sites")
    owners = {
        patient: [s for s, f in enumerate(frames) if patient in set(f["patient_id"])]
        for patient in {r[1] for r in rows}
    }
    assert all(len(sites) == 1 for sites in owners.values())
    assert sum(len(f) for f in frames) == 45 and all(len(f) % 3 == 0 for f in frames)


def test_a_patients_class_is_its_most_frequent_label_ties_to_the_smallest() -> None:
    from fedvlp.core.data.partition import _groups

    frame = pd.DataFrame(
        {
            "id": list("abcdefg"),
            "patient_id": ["p1", "p1", "p1", "p2", "p2", "", ""],
            "label": ["B", "A", "A", "B", "A", "C", "C"],
        }
    )
    codes, classes, sizes = _groups(frame, PartitionSpec(sites=2, by="label", alpha=1.0))
    # p1 (B, A, A) -> A; p2 (B, A) tie -> A; the two rows without a patient are groups of their own
    assert codes.tolist() == [0, 0, 0, 1, 1, 2, 3] and classes == ["A", "A", "C", "C"] and sizes == [3, 2, 1, 1]


@pytest.mark.parametrize(
    ("sites", "shares", "expected"),
    [
        (10, (0.5, 0.3, 0.2), ["pairs"] * 5 + ["images"] * 3 + ["reports"] * 2),
        (3, (0.34, 0.33, 0.33), ["pairs", "images", "reports"]),  # 1.02, 0.99, 0.99 -> 1, 1, 1
        (4, (0.5, 0.5, 0.0), ["pairs", "pairs", "images", "images"]),
        (
            5,
            (0.1, 0.1, 0.8),
            ["pairs", "reports", "reports", "reports", "reports"],
        ),  # 0.5, 0.5, 4 -> pairs wins the tie
    ],
)
def test_shares_give_exact_site_kinds(sites: int, shares: tuple[float, float, float], expected: list[str]) -> None:
    assert site_kinds(sites, *shares) == expected


def test_written_site_files_load_with_their_modalities_and_all_rows(tmp_path: Path) -> None:
    spec = PartitionSpec(
        sites=3, by="label", alpha=5.0, pairs_share=0.34, images_only_share=0.33, reports_only_share=0.33
    )
    result = partition_manifest(_one_patient_per_row(tmp_path), tmp_path / "sites", spec)
    sites = [load_site(p) for p in result.site_files]
    assert [s.name for s in sites] == ["site_000", "site_001", "site_002"]
    assert [s.modalities for s in sites] == [
        frozenset({"image", "text", "pair"}),
        frozenset({"image"}),
        frozenset({"text"}),
    ]
    loaded = [load_source_rows(s.sources[0]) for s in sites]
    assert [len(rows.ids) for rows in loaded] == result.rows and sum(result.rows) == 40
    assert (
        loaded[0].images is not None and loaded[0].images[0] == tmp_path / "data" / "images" / f"{loaded[0].ids[0]}.png"
    )
    frames = _site_frames(tmp_path / "sites")
    assert "report" not in frames[1].columns and "image" not in frames[2].columns
    assert json.loads((tmp_path / "sites" / "partition.json").read_text())["sites"][1]["kind"] == "images"


def test_shares_that_do_not_add_up_are_refused() -> None:
    with pytest.raises(ConfigError, match="add up to 1"):
        site_kinds(3, 0.5, 0.2, 0.2)


def test_a_missing_column_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        partition_manifest(
            _one_patient_per_row(tmp_path), tmp_path / "sites", PartitionSpec(sites=2, by="finding", alpha=1.0)
        )
    assert err.value.key == "finding"


def test_more_sites_than_patients_is_refused_with_the_reason(tmp_path: Path) -> None:
    rows = [(f"r{i}", f"p{i}", "A") for i in range(9)]
    with pytest.raises(ConfigError, match=r"each of 5 sites >= 2 rows"):
        partition_manifest(_manifest(tmp_path, rows), tmp_path / "sites", PartitionSpec(sites=5, by="label", alpha=1.0))


def test_a_folder_with_other_site_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "sites").mkdir()
    (tmp_path / "sites" / "hospital_a.yaml").write_text("name: a\n")
    with pytest.raises(ConfigError, match="hospital_a.yaml"):
        partition_manifest(
            _one_patient_per_row(tmp_path), tmp_path / "sites", PartitionSpec(sites=2, by="label", alpha=1.0)
        )


def test_a_manifest_without_reports_makes_images_only_sites(tmp_path: Path) -> None:
    source = _one_patient_per_row(tmp_path)
    pd.read_csv(source).drop(columns=["report"]).to_csv(source, index=False)
    spec = PartitionSpec(sites=2, by="label", alpha=1.0, pairs_share=0.0, images_only_share=1.0)
    result = partition_manifest(source, tmp_path / "sites", spec)
    assert (
        result.kinds == ["images", "images"]
        and [load_site(p).modalities for p in result.site_files] == [frozenset({"image"})] * 2
    )
    with pytest.raises(ConfigError) as err:
        partition_manifest(source, tmp_path / "other", PartitionSpec(sites=2, by="label", alpha=1.0))
    assert err.value.key == "report" and "pairs sites" in err.value.expected


def test_images_elsewhere_get_their_folder_as_image_root_and_every_row_loads(tmp_path: Path) -> None:
    # a manifest with absolute image paths into another tree (e.g. a PACS export)
    store = tmp_path / "store" / "png"
    (store / "0").mkdir(parents=True)
    (store / "1").mkdir()
    rows = [(f"r{i:02d}", f"p{i:02d}", "A" if i < 6 else "B") for i in range(10)]
    frame = pd.DataFrame(
        {
            "id": [r[0] for r in rows],
            "image": [str(store / f"{i % 2}" / f"{r[0]}.png") for i, r in enumerate(rows)],
            "report": ["FINDINGS: clear." for _ in rows],
            "patient_id": [r[1] for r in rows],
            "label": [r[2] for r in rows],
        }
    )
    manifest = tmp_path / "lists" / "manifest.csv"
    manifest.parent.mkdir()
    frame.to_csv(manifest, index=False)
    spec = PartitionSpec(sites=2, by="label", alpha=5.0, pairs_share=0.5, images_only_share=0.5, reports_only_share=0.0)
    result = partition_manifest(manifest, tmp_path / "sites", spec)
    sites = [load_site(p) for p in result.site_files]
    assert [list(s.sources[0].image_roots) for s in sites] == [[store], [store]]
    assert [len(load_source_rows(s.sources[0]).ids) for s in sites] == result.rows and sum(result.rows) == 10


@pytest.mark.parametrize(
    ("images", "expected"),
    [
        (["/d/m/a/1.png", "/d/m/2.png"], ["/d/m"]),
        (["/x/y/1.png", "/x/z/2.png"], ["/x"]),
        (["/d/m/1.png", "/x/y/1.png", "/x/z/2.png"], ["/d/m", "/x"]),
        (["/x/1.png", "/y/2.png"], ["/x", "/y"]),  # never the file system's root
    ],
)
def test_image_roots_cover_every_image_with_the_fewest_folders(images: list[str], expected: list[str]) -> None:
    from fedvlp.core.data.partition import image_roots_of

    assert image_roots_of(images, Path("/d/m")) == expected
