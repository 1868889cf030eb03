from collections import Counter

import numpy as np
import pandas as pd
import pytest

from fedvlp.core.evaluation import load_labeled, patient_split, sample_fraction
from tests.conftest import needs_cxr

from .conftest import LABELS, SIZE, write_manifest


def test_corrupt_image_and_bad_label_rows_are_skipped_and_counted(labeled):
    assert labeled.skipped == {"unreadable_image": 1, "invalid_label": 1}
    assert len(labeled) == 72
    assert "corrupt" not in set(labeled.ids) and "badlabel" not in set(labeled.ids)


def test_images_are_preloaded_into_one_tensor_in_unit_range(labeled):
    assert tuple(labeled.images.shape) == (72, 1, SIZE, SIZE)
    assert 0.0 <= float(labeled.images.min()) and float(labeled.images.max()) <= 1.0
    assert tuple(labeled.labels.shape) == (72, 2) and labeled.label_names == LABELS


def test_no_usable_row_is_an_error_naming_the_manifest(tmp_path):
    path = write_manifest(tmp_path, n=3)
    frame = pd.read_csv(path)
    frame["square"] = "maybe"
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match="manifest.csv"):
        load_labeled(path, LABELS, SIZE)


def test_missing_label_column_is_an_error_listing_columns(manifest):
    with pytest.raises(ValueError, match="missing column.*nodule"):
        load_labeled(manifest, ["square", "nodule"], SIZE)


def test_hash_split_keeps_every_patient_in_one_split(labeled):
    assert labeled.split_source == "hash"
    splits_per_patient = pd.DataFrame({"p": labeled.patient_ids, "s": labeled.split}).groupby("p")["s"].nunique()
    assert (splits_per_patient == 1).all()
    assert set(labeled.split) == {"train", "val", "test"}


def test_patient_split_is_deterministic_and_independent_of_row_order():
    groups = [f"patient{i}" for i in range(500)]
    first = dict(zip(groups, patient_split(groups)))
    second = dict(zip(groups[::-1], patient_split(groups[::-1])))
    assert first == second
    shares = Counter(first.values())
    assert 0.5 < shares["train"] / 500 < 0.7 and 0.12 < shares["test"] / 500 < 0.28


def test_split_column_is_used_when_it_names_all_three_splits(tmp_path):
    split = (["train"] * 6 + ["val"] * 2 + ["test"] * 2) * 3
    path = write_manifest(tmp_path, n=30, corrupt=False, bad_label=False, split=split)
    loaded = load_labeled(path, LABELS, SIZE)
    assert loaded.split_source == "column" and list(loaded.split) == split


def test_train_only_split_column_falls_back_to_patient_hash(tmp_path):
    path = write_manifest(tmp_path, n=30, corrupt=False, bad_label=False, split=["train"] * 30)
    loaded = load_labeled(path, LABELS, SIZE)
    assert loaded.split_source == "hash" and set(loaded.split) == {"train", "val", "test"}


def test_without_patient_column_rows_are_split_by_id(tmp_path):
    path = write_manifest(tmp_path, n=30, corrupt=False, bad_label=False, patients=False)
    loaded = load_labeled(path, LABELS, SIZE)
    assert list(loaded.patient_ids) == list(loaded.ids)


@pytest.mark.parametrize("fraction, n, expected", [(0.01, 700, 7), (0.1, 700, 70), (0.001, 700, 2), (0.5, 7, 4)])
def test_sample_fraction_size_is_rounded_and_at_least_two(fraction, n, expected):
    labels = np.random.default_rng(0).integers(0, 2, (n, 2))
    subset = sample_fraction(np.arange(n), labels, fraction, seed=0)
    assert len(subset) == expected and len(set(subset)) == expected


def test_sample_fraction_is_a_subset_of_the_train_rows():
    labels = np.random.default_rng(0).integers(0, 2, (100, 2))
    train = np.arange(0, 100, 2)
    assert set(sample_fraction(train, labels, 0.2, seed=3)) <= set(train)


def test_sample_fraction_is_deterministic_per_seed_and_varies_across_seeds():
    labels = np.random.default_rng(0).integers(0, 2, (500, 3))
    a, b = (sample_fraction(np.arange(500), labels, 0.05, seed=7) for _ in range(2))
    c = sample_fraction(np.arange(500), labels, 0.05, seed=8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_sample_fraction_covers_both_values_of_every_class_including_rare_ones():
    rng = np.random.default_rng(0)
    labels = np.zeros((1000, 3), dtype=int)
    labels[:, 0] = rng.random(1000) < 0.5
    labels[[10, 500], 1] = 1  # 2 positives out of 1000
    labels[:, 2] = 1
    labels[[999], 2] = 0  # 1 negative out of 1000
    for seed in range(5):
        subset = sample_fraction(np.arange(1000), labels, 0.006, seed)
        assert len(subset) == 6
        chosen = labels[subset]
        assert (chosen.max(0) == 1).all() and (chosen.min(0) == 0).all()


def test_sample_fraction_of_one_returns_all_rows():
    labels = np.zeros((10, 1))
    assert np.array_equal(sample_fraction(np.arange(10)[::-1], labels, 1.0, 0), np.arange(10))


# --- derived patient ids, categorical labels, test manifests, fedvlp split ----------------------
from pathlib import Path  # noqa: E402

from fedvlp.core.evaluation import derive_patient_id, split_manifest  # noqa: E402


@pytest.mark.parametrize(
    "name, patient",
    [
        ("images/kermany_train_pneumonia_person1019_bacteria_2950.png", "person1019"),
        ("person101_virus_187.jpeg", "person101"),
        ("kermany_train_normal_IM-0115-0001.png", "IM-0115"),
        ("IM-0135-0001-0002.jpeg", "IM-0135"),
        ("kermany_train_normal_NORMAL2-IM-1234-0001.png", "NORMAL2-IM-1234"),
        ("NORMAL2-IM-0012-0001-0002.jpeg", "NORMAL2-IM-0012"),
        ("images/0.png", None),
    ],
)
def test_patient_ids_are_derived_from_kermany_file_names(name, patient):
    assert derive_patient_id(name) == patient


def _kermany_like(root: Path, n_patients: int = 40) -> Path:
    """Rows whose patient id is blank for the IM-/NORMAL2- files, with 1-3 images per patient."""
    from PIL import Image

    rng = np.random.default_rng(3)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for p in range(n_patients):
        kind = p % 3
        for k in range(1 + p % 3):
            name = [f"person{p}_bacteria_{k}", f"IM-{p:04d}-{k:04d}", f"NORMAL2-IM-{p:04d}-{k:04d}"][kind]
            Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(root / "images" / f"{name}.png")
            rows.append(
                {
                    "id": name,
                    "image": f"images/{name}.png",
                    "patient_id": f"person{p}" if kind == 0 else "",
                    "pneumonia": int(kind == 0),
                    "subtype": ["bacteria", "", "virus"][kind] if kind != 1 else "",
                }
            )
    path = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_split_manifest_never_puts_a_patient_in_two_splits_including_derived_ids(tmp_path):
    manifest = _kermany_like(tmp_path / "data")
    written = split_manifest(manifest, tmp_path / "split", fractions=(0.6, 0.2, 0.2))
    trainval = pd.read_csv(written.pop("trainval"))
    frames = {name: pd.read_csv(path) for name, path in written.items()}
    assert sum(len(f) for f in frames.values()) == len(pd.read_csv(manifest))
    assert len(trainval) == len(frames["train"]) + len(frames["val"]) and set(trainval["split"]) == {"train", "val"}
    patients = {name: set(f["patient_id"]) for name, f in frames.items()}
    assert (
        not patients["train"] & patients["val"]
        and not patients["train"] & patients["test"]
        and not patients["val"] & patients["test"]
    )
    assert "IM-0001" in set().union(*patients.values()) and "NORMAL2-IM-0002" in set().union(*patients.values())
    # images resolve from the new folder, and a second run writes the same files
    assert all((tmp_path / "split" / p).is_file() for p in frames["test"]["image"])
    again = split_manifest(manifest, tmp_path / "again")
    assert all(pd.read_csv(again[n]).equals(frames[n]) for n in frames)


def test_the_trainval_manifest_of_a_split_gives_its_val_rows_to_the_sweep(tmp_path):
    manifest = _kermany_like(tmp_path / "data")
    split = split_manifest(manifest, tmp_path / "split")
    labeled = load_labeled(split["trainval"], ["pneumonia"], 32, test_manifest=split["test"])
    val_ids = set(pd.read_csv(split["val"])["id"])
    assert labeled.split_source == "column+test manifest"
    assert set(labeled.ids[labeled.split == "val"]) == val_ids


def test_categorical_column_gets_a_softmax_task_and_blank_is_unknown(tmp_path):
    manifest = _kermany_like(tmp_path / "data")
    split = split_manifest(manifest, tmp_path / "split")
    labeled = load_labeled(split["train"], ["pneumonia", "subtype"], 32, test_manifest=split["test"])
    kinds = {t.name: (t.kind, t.classes) for t in labeled.tasks}
    assert kinds == {"pneumonia": ("binary", ()), "subtype": ("categorical", ("bacteria", "virus"))}
    subtype = labeled.labels[:, 1].numpy()
    blank = pd.read_csv(manifest).set_index("id").loc[list(labeled.ids), "subtype"].isna().to_numpy()
    assert np.isnan(subtype[blank]).all() and not np.isnan(subtype[~blank]).any()
    assert set(labeled.split[np.isin(labeled.ids, pd.read_csv(split["test"])["id"])]) == {"test"}
    assert labeled.split_source == "hash+test manifest" and set(labeled.split) == {"train", "val", "test"}


def test_a_patient_in_the_labelled_and_the_test_manifest_is_an_error(tmp_path):
    manifest = _kermany_like(tmp_path / "data")
    with pytest.raises(ValueError, match="in both the labelled and the test manifest"):
        load_labeled(manifest, ["pneumonia"], 32, test_manifest=manifest)


@needs_cxr()
@pytest.mark.data
def test_the_kermany_split_keeps_every_patient_in_one_split(tmp_path):
    from tests.conftest import CXR_DATA

    manifest = CXR_DATA / "kermany_labeled" / "manifest.csv"
    written = split_manifest(manifest, tmp_path, by="patient_id", id_column="sample_id")
    frames = {n: pd.read_csv(written[n]) for n in ("train", "val", "test")}
    assert sum(map(len, frames.values())) == 2000
    patients = {n: set(f["patient_id"]) for n, f in frames.items()}
    assert not (
        patients["train"] & patients["val"]
        or patients["train"] & patients["test"]
        or patients["val"] & patients["test"]
    )
    every = pd.concat(frames.values())
    assert every["patient_id"].notna().all()
    normal_ids = set(every.loc[every["finding_labels"] == "Normal", "patient_id"])
    assert all(p.startswith(("IM-", "NORMAL2-IM-")) for p in normal_ids)  # derived from the file names
    assert len(normal_ids) < 1000  # some patients have several normal images
