"""The synthetic data world: determinism, caching, manifest layout, visible findings, reports."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fedvlp.core.data import synthetic
from fedvlp.core.data.synthetic import (
    DEVICES,
    FINDING_KEYWORDS,
    FINDINGS,
    SITES,
    Acquisition,
    Case,
    Finding,
    WorldSpec,
    demo_vocabulary,
    generate_world,
    plan_site,
    render_image,
    sample_case,
    write_report,
)
from fedvlp.core.data.synthetic import cases as synthetic_cases
from fedvlp.core.data.synthetic import world as synthetic_world
from fedvlp.core.data.tokenizer import load_tokenizer, vocab_path

TINY = WorldSpec(n_pairs=12, n_images=10, n_reports=12, n_labeled=24, seed=3)
LABELS = [f"label_{name}" for name in FINDINGS]
PRETRAIN_COLUMNS = {
    "hospital_a": ["id", "image", "report", "patient_id", "study_id"],
    "hospital_b": ["id", "image", "patient_id"],
    "hospital_c": ["id", "report"],
}
NATIVE_SIZE = {"hospital_a": 128, "hospital_b": 160, "labeled": 112}


@pytest.fixture(scope="module")
def quick_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    out = tmp_path_factory.mktemp("quick") / "world"
    return out, generate_world(out, WorldSpec.quick())


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False)


# ------------------------------------------------------------------------------- determinism
def test_same_spec_gives_identical_files_and_another_seed_differs(tmp_path: Path) -> None:
    first = generate_world(tmp_path / "one", TINY)
    second = generate_world(tmp_path / "two", TINY)
    files_one, files_two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert files_one.keys() == files_two.keys()
    assert files_one == files_two  # every manifest, labels.csv, world.json and PNG, byte for byte
    assert sum(name.endswith(".png") for name in files_one) == 12 + 10 + 24
    assert {site: p.relative_to(tmp_path / "one") for site, p in first.items()} == {
        site: p.relative_to(tmp_path / "two") for site, p in second.items()
    }

    other = generate_world(tmp_path / "three", dataclasses.replace(TINY, seed=4))
    for site in SITES:
        assert other[site].read_bytes() != first[site].read_bytes(), site
    assert (tmp_path / "three" / "hospital_a" / "images" / "a_00001.png").read_bytes() != files_one[
        "hospital_a/images/a_00001.png"
    ]


def test_a_smaller_world_is_a_prefix_of_a_bigger_one() -> None:
    small = plan_site(WorldSpec(n_pairs=5, seed=2), "hospital_a")
    big = plan_site(WorldSpec(n_pairs=40, seed=2), "hospital_a")
    assert [(i.id, i.patient_id, i.case) for i in small] == [(i.id, i.patient_id, i.case) for i in big[:5]]


def test_sites_use_different_streams() -> None:
    cases = {site: [item.case for item in plan_site(TINY, site)[:5]] for site in SITES}
    assert cases["hospital_a"] != cases["hospital_b"] != cases["hospital_c"] != cases["labeled"]


# ------------------------------------------------------------------------------- caching
def test_second_call_reuses_the_world_and_a_changed_spec_regenerates(tmp_path: Path) -> None:
    out = tmp_path / "world"
    paths = generate_world(out, TINY)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    inode = out.stat().st_ino
    again = generate_world(out, TINY)
    assert again == paths
    assert out.stat().st_ino == inode
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps

    changed = dataclasses.replace(TINY, n_pairs=7)
    generate_world(out, changed)
    assert len(_read(out / "hospital_a" / "manifest.csv")) == 7
    assert json.loads((out / "world.json").read_text())["spec"] == changed.to_json()
    assert not (out / "hospital_a" / "images" / "a_00012.png").exists()  # no stale files of the old world
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world"]  # no temp / old folders left behind


def test_world_json_holds_spec_and_version(quick_world) -> None:
    out, _ = quick_world
    meta = json.loads((out / "world.json").read_text())
    assert meta["format_version"] == synthetic.FORMAT_VERSION
    assert meta["spec"] == WorldSpec.quick().to_json()
    assert meta["spec"]["n_labeled"] == 300 and meta["spec"]["acq_b"]["gamma"] == WorldSpec().acq_b.gamma


def test_interrupted_generation_leaves_nothing_that_looks_complete(tmp_path: Path, monkeypatch) -> None:
    calls = {"n": 0}
    original = synthetic_world.render_image

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(synthetic_world, "render_image", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_world(tmp_path / "world", TINY)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_replace_a_folder_that_is_not_a_world(tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a synthetic world"):
        generate_world(out, TINY)
    assert (out / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    generate_world(empty, TINY)
    assert (empty / "world.json").is_file()


# ------------------------------------------------------------------------------- manifests
def test_manifests_have_exactly_the_documented_columns(quick_world) -> None:
    out, paths = quick_world
    assert set(paths) == {"hospital_a", "hospital_b", "hospital_c", "labeled"}
    for site, columns in PRETRAIN_COLUMNS.items():
        assert paths[site] == out / site / "manifest.csv"
        frame = _read(paths[site])
        assert list(frame.columns) == columns
        assert not any(c.startswith("label") for c in frame.columns)
        assert len(frame) == 120 and frame["id"].is_unique
        labels = _read(out / site / "labels.csv")
        assert list(labels.columns) == ["id", *LABELS]
        assert labels["id"].tolist() == frame["id"].tolist()
        assert set(np.unique(labels[LABELS].to_numpy())) == {0, 1}
    labeled = _read(paths["labeled"])
    assert list(labeled.columns) == ["id", "image", "patient_id", "split", *LABELS]
    assert len(labeled) == 300 and labeled["id"].is_unique
    assert all(labeled[c].dtype.kind == "i" for c in LABELS)
    reports = pd.concat([_read(paths["hospital_a"])["report"], _read(paths["hospital_c"])["report"]])
    assert all(r.startswith("FINDINGS: ") and " IMPRESSION: " in r and "\n" not in r for r in reports)


def test_images_exist_and_decode_at_the_sites_native_size(quick_world) -> None:
    _, paths = quick_world
    for site, size in NATIVE_SIZE.items():
        frame = _read(paths[site])
        assert all(re.fullmatch(r"images/[a-z]_\d{5}\.png", p) for p in frame["image"])
        for rel in frame["image"]:
            assert (paths[site].parent / rel).is_file()
        for rel in frame["image"].iloc[::37]:
            with Image.open(paths[site].parent / rel) as img:
                assert img.mode == "L" and img.size == (size, size)
                pixels = np.asarray(img)
            assert pixels.std() > 20  # not blank


def test_sites_differ_in_acquisition(quick_world) -> None:
    _, paths = quick_world
    means = {}
    for site in NATIVE_SIZE:
        frame = _read(paths[site])
        means[site] = np.mean([np.asarray(Image.open(paths[site].parent / p)).mean() for p in frame["image"][:40]])
    assert means["hospital_b"] > means["hospital_a"] + 5 > means["labeled"] + 10  # gamma 0.8 / 1.0 / 1.2


def test_labelled_split_is_by_patient_and_train_has_every_finding(quick_world) -> None:
    _, paths = quick_world
    frame = _read(paths["labeled"])
    assert set(frame["split"]) == {"train", "val", "test"}
    assert (frame.groupby("patient_id")["split"].nunique() == 1).all()
    per_patient = frame.groupby("patient_id").size()
    assert per_patient.max() == 2 and (per_patient == 2).sum() >= 20
    patients = frame.drop_duplicates("patient_id")["split"].value_counts(normalize=True)
    assert 0.5 < patients["train"] < 0.7 and 0.1 < patients["val"] < 0.3 and 0.1 < patients["test"] < 0.3
    train = frame[frame["split"] == "train"]
    assert (train[LABELS].sum() >= 1).all()
    prevalence = frame[LABELS].mean()
    assert ((prevalence > 0.08) & (prevalence < 0.45)).all(), prevalence.to_dict()


def test_labels_match_the_cases_behind_images_and_reports(quick_world) -> None:
    out, paths = quick_world
    spec = WorldSpec.quick()
    for site in SITES:
        plan = plan_site(spec, site)
        frame = _read(paths[site])
        labels = frame if site == "labeled" else _read(out / site / "labels.csv")
        assert labels["id"].tolist() == [item.id for item in plan]
        expected = np.array([[item.case.labels[f] for f in FINDINGS] for item in plan])
        np.testing.assert_array_equal(labels[LABELS].to_numpy(), expected)
        if site == "labeled":
            assert frame["split"].tolist() == [item.split for item in plan]
        for item, row in list(zip(plan, frame.itertuples()))[::29]:
            if site != "hospital_c":
                acq = {"hospital_a": spec.acq_a, "hospital_b": spec.acq_b, "labeled": spec.acq_labeled}[site]
                pixels = np.asarray(Image.open(paths[site].parent / row.image))
                np.testing.assert_array_equal(pixels, render_image(item.case, item.rng(1), NATIVE_SIZE[site], acq))
            if site in ("hospital_a", "hospital_c"):
                assert row.report == write_report(item.case, item.rng(2))


def test_report_sites_agree_with_their_labels(quick_world) -> None:
    out, paths = quick_world
    for site in ("hospital_a", "hospital_c"):
        reports = _read(paths[site])
        labels = _read(out / site / "labels.csv")
        for report, (_, row) in zip(reports["report"], labels.iterrows()):
            mentioned = _stated_findings(report)
            assert mentioned == {f for f in FINDINGS if row[f"label_{f}"] == 1}, report


def test_patients_and_studies(quick_world) -> None:
    _, paths = quick_world
    a = _read(paths["hospital_a"])
    assert a["study_id"].is_unique
    assert a["patient_id"].nunique() < len(a)  # some follow-up studies
    assert (a.groupby("patient_id").size() <= 2).all()
    assert a["patient_id"].str.startswith("a_p").all()
    plan = plan_site(WorldSpec.quick(), "hospital_a")
    for prev, item in zip(plan, plan[1:]):
        if item.patient_id == prev.patient_id:
            assert item.case.anatomy == prev.case.anatomy


# ------------------------------------------------------------------------------- images
def _bare(seed: int) -> Case:
    return sample_case(np.random.default_rng(seed)).with_findings(**{name: None for name in FINDINGS})


def _render(case: Case, seed: int = 7, size: int = 128) -> np.ndarray:
    return render_image(case, np.random.default_rng(seed), size, Acquisition()).astype(float)


def _box(img: np.ndarray, cols: tuple[float, float], rows: tuple[float, float]) -> np.ndarray:
    n = img.shape[0]
    return img[int(rows[0] * n) : int(rows[1] * n), int(cols[0] * n) : int(cols[1] * n)]


def _heart_width(img: np.ndarray, row: float) -> int:
    """Length of the bright run through the image centre on ``row`` (a few rows averaged)."""
    n = img.shape[0]
    r = int(row * n)
    profile = img[r - 1 : r + 2].mean(axis=0)
    centre = n // 2
    lung = min(profile[int(0.12 * n) : int(0.35 * n)].min(), profile[int(0.65 * n) : int(0.88 * n)].min())
    threshold = (lung + profile[centre - 3 : centre + 4].mean()) / 2
    left = centre
    while left > 0 and profile[left - 1] > threshold:
        left -= 1
    right = centre
    while right < n - 1 and profile[right + 1] > threshold:
        right += 1
    return right - left + 1


def test_render_is_deterministic_and_sized() -> None:
    case = sample_case(np.random.default_rng(0))
    a = render_image(case, np.random.default_rng(1), 96, Acquisition())
    b = render_image(case, np.random.default_rng(1), 96, Acquisition())
    assert a.dtype == np.uint8 and a.shape == (96, 96)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, render_image(case, np.random.default_rng(2), 96, Acquisition()))


def test_radiograph_layout_dark_lungs_bright_mediastinum_dark_background() -> None:
    for seed in range(5):
        img = _render(_bare(seed))
        lungs = np.concatenate([_box(img, (0.2, 0.32), (0.3, 0.5)).ravel(), _box(img, (0.68, 0.8), (0.3, 0.5)).ravel()])
        mediastinum = _box(img, (0.47, 0.53), (0.55, 0.65))
        background = _box(img, (0.0, 0.02), (0.0, 0.05))
        abdomen = _box(img, (0.3, 0.7), (0.92, 0.98))
        assert background.mean() < 40
        assert lungs.mean() + 40 < mediastinum.mean()
        assert lungs.mean() + 40 < abdomen.mean()


def _costophrenic_box(case: Case, side: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """(cols, rows) of the lateral costophrenic recess of one lung, in image fractions."""
    a = case.anatomy
    w = a.thorax_half_width
    cols = (0.5 - w + 0.02, 0.5 - w + 0.1) if side == "right" else (0.5 + w - 0.1, 0.5 + w - 0.02)
    dome = a.dome_right if side == "right" else a.dome_left
    return cols, (dome - 0.03, dome + 0.04)


@pytest.mark.parametrize("side", ["right", "left"])
def test_effusion_brightens_the_lower_lateral_zone_on_its_side(side: str) -> None:
    other = "left" if side == "right" else "right"
    gains: dict[str, list[float]] = {"mild": [], "moderate": [], "large": []}
    for seed in range(6):
        base = _bare(seed)
        img0 = _render(base, seed)
        for severity in gains:
            img1 = _render(base.with_findings(pleural_effusion=Finding(side=side, severity=severity)), seed)
            gains[severity].append(
                _box(img1, *_costophrenic_box(base, side)).mean() - _box(img0, *_costophrenic_box(base, side)).mean()
            )
            assert (
                abs(
                    _box(img1, *_costophrenic_box(base, other)).mean()
                    - _box(img0, *_costophrenic_box(base, other)).mean()
                )
                < 2
            )
        both = _render(base.with_findings(pleural_effusion=Finding(side="bilateral", severity="moderate")), seed)
        for s in ("right", "left"):
            assert _box(both, *_costophrenic_box(base, s)).mean() > _box(img0, *_costophrenic_box(base, s)).mean() + 25
    assert min(gains["mild"]) > 5 and np.mean(gains["mild"]) > 25  # a small effusion only blunts the angle
    assert min(gains["moderate"]) > 25 and min(gains["large"]) > 25


def test_cardiomegaly_widens_the_heart_shadow() -> None:
    for seed in range(6):
        base = _bare(seed)
        row = base.anatomy.dome_left - 0.1
        normal = _heart_width(_render(base, seed), row)
        assert 0.25 < normal / 128 < 0.42, normal
        widths = [
            _heart_width(_render(base.with_findings(cardiomegaly=Finding(severity=s)), seed), row)
            for s in ("mild", "moderate", "large")
        ]
        assert normal * 1.12 < widths[0] <= widths[1] <= widths[2], (normal, widths)


def _lateral_lung_edge(normal: np.ndarray, other: np.ndarray, case: Case, side: str, k: int = 6) -> tuple[float, float]:
    """Darkest of the ``k`` outermost lung pixels per row (found on ``normal``), averaged over the upper zone."""
    n = normal.shape[0]
    outer = int((case.anatomy.thorax_half_width + 0.02) * n)  # in the chest wall, lateral to the lung
    values_normal, values_other = [], []
    for r in range(int((case.anatomy.apex + 0.06) * n), int((case.anatomy.apex + 0.25) * n)):
        # walk from the chest wall towards the midline until the (smoothed) row turns dark
        cols = slice(n // 2 - outer, n // 2) if side == "right" else slice(n // 2 + outer, n // 2, -1)
        row0, row1 = normal[r, cols], other[r, cols]
        smooth = np.convolve(row0, np.ones(3) / 3, mode="same")
        dark = smooth < (np.percentile(smooth, 20) + np.percentile(smooth, 95)) / 2
        dark[:2] = False
        edge = int(np.argmax(dark))
        values_normal.append(row0[edge : edge + k].min())
        values_other.append(row1[edge : edge + k].min())
    return float(np.mean(values_normal)), float(np.mean(values_other))


@pytest.mark.parametrize("side", ["right", "left"])
def test_pneumothorax_darkens_the_lateral_lung_edge_on_its_side(side: str) -> None:
    other = "left" if side == "right" else "right"
    drops = []
    for seed in range(6):
        base = _bare(seed)
        img0 = _render(base, seed)
        for severity in ("mild", "large"):
            img1 = _render(base.with_findings(pneumothorax=Finding(side=side, severity=severity)), seed)
            before, after = _lateral_lung_edge(img0, img1, base, side)
            assert after < before - 20, (seed, severity)
            drops.append(before - after)
            before, after = _lateral_lung_edge(img0, img1, base, other)
            assert abs(after - before) < 2
    assert np.mean(drops) > 30


def test_nodule_is_a_bright_blob_that_survives_downscaling_to_64_px() -> None:
    for seed in range(4):
        base = _bare(seed)
        for side, sign in (("right", -1), ("left", 1)):
            finding = Finding(side=side, zone="upper", size_mm=8, position=(0.22, 0.35))
            img0, img1 = _render(base, seed, 128), _render(base.with_findings(nodule=finding), seed, 128)
            small0 = np.asarray(Image.fromarray(img0.astype(np.uint8)).resize((64, 64), Image.BILINEAR), float)
            small1 = np.asarray(Image.fromarray(img1.astype(np.uint8)).resize((64, 64), Image.BILINEAR), float)
            diff = small1 - small0
            r, c = np.unravel_index(np.argmax(diff), diff.shape)
            assert diff.max() > 40
            assert (c < 32) == (sign < 0)  # on the patient's side: right = image left
            assert (diff > 20).sum() >= 9  # a blob of at least ~3x3 pixels at 64 px


def test_consolidation_and_devices_add_opacity() -> None:
    base = _bare(1)
    img0 = _render(base, 1)
    cons = base.with_findings(
        consolidation=Finding(side="left", zone="lower", severity="moderate", position=(0.24, 0.65))
    )
    diff = _render(cons, 1) - img0
    assert diff[:, 64:].sum() > 20 * diff[:, :64].clip(min=0).sum() + 1000
    for device in DEVICES:
        diff = _render(base.with_findings(support_devices=Finding(devices=(device,))), 1) - img0
        assert diff.max() > 60 and (diff > 30).sum() > 20, device


def test_render_draws_the_same_randomness_whatever_the_findings() -> None:
    base = _bare(2)
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    render_image(base, rng_a, 64)
    render_image(
        sample_case(np.random.default_rng(5)).with_findings(
            **{n: synthetic_cases._sample_finding(n, np.random.default_rng(1)) for n in FINDINGS}
        ),
        rng_b,
        64,
    )
    assert rng_a.random() == rng_b.random()


# ------------------------------------------------------------------------------- reports
_NEGATION = re.compile(r"\bno\b", re.IGNORECASE)


def _sentences(report: str) -> list[str]:
    body = report.replace("FINDINGS:", " ").replace("IMPRESSION:", " ")
    return [s.strip() for s in re.split(r"(?<=\.)\s+", body) if s.strip()]


def _mentions(sentence: str, finding: str) -> bool:
    return any(re.search(rf"\b{re.escape(k)}\b", sentence, re.IGNORECASE) for k in FINDING_KEYWORDS[finding])


def _stated_findings(report: str) -> set[str]:
    """Findings mentioned in a sentence without a negation."""
    return {f for s in _sentences(report) if not _NEGATION.search(s) for f in FINDINGS if _mentions(s, f)}


def test_reports_state_positives_and_never_assert_absent_findings() -> None:
    rng = np.random.default_rng(11)
    negated = {f: 0 for f in FINDINGS}
    for _ in range(600):
        case = sample_case(rng)
        report = write_report(case, rng)
        assert report.startswith("FINDINGS: ") and report.count(" IMPRESSION: ") == 1
        assert _stated_findings(report) == set(case.findings), report
        for sentence in _sentences(report):
            if _NEGATION.search(sentence):
                for f in FINDINGS:
                    if _mentions(sentence, f):
                        assert f not in case.findings, report
                        negated[f] += 1
        lung_finding = any(f in case.findings for f in ("pleural_effusion", "pneumothorax", "nodule", "consolidation"))
        if lung_finding:
            assert "lungs are clear" not in report.lower() and "lungs are well expanded" not in report.lower()
        impression = report.split("IMPRESSION:")[1]
        if set(case.findings) - {"support_devices"}:
            assert "no acute" not in impression.lower() and "normal chest" not in impression.lower()
        else:
            assert "no acute" in impression.lower() or "normal chest" in impression.lower()
    assert all(n > 10 for n in negated.values()), negated  # absent findings are often negated explicitly


def test_reports_carry_side_size_and_device_attributes() -> None:
    rng = np.random.default_rng(12)
    seen_phrasings: dict[str, set[str]] = {}
    for _ in range(600):
        case = sample_case(rng)
        report = write_report(case, rng)
        text = report.lower()
        for name, finding in case.findings.items():
            sentences = [s.lower() for s in _sentences(report) if _mentions(s, name) and not _NEGATION.search(s)]
            seen_phrasings.setdefault(name, set()).update(re.sub(r"\b(left|right|\d+)\b", "_", s) for s in sentences)
            if name == "support_devices":
                continue
            if finding.side in ("left", "right"):
                other = "left" if finding.side == "right" else "right"
                assert all(finding.side in s and other not in s for s in sentences), report
            if finding.side == "bilateral":
                assert any("bilateral" in s or "both" in s or "multifocal" in s for s in sentences), report
            if name == "nodule":
                assert f"{finding.size_mm} mm" in text
        if "pleural_effusion" in case.findings:
            size = {"mild": "small", "moderate": "moderate", "large": "large"}[
                case.findings["pleural_effusion"].severity
            ]
            assert size in text
        devices = case.findings.get("support_devices")
        if devices is not None:
            words = {
                "endotracheal_tube": ("endotracheal", "et tube"),
                "central_line": ("central",),
                "pacemaker": ("pacemaker",),
                "nasogastric_tube": ("nasogastric", "enteric", "ng tube"),
            }
            for device in devices.devices:
                assert any(w in text for w in words[device]), report
    assert all(len(p) >= 4 for p in seen_phrasings.values()), {k: len(v) for k, v in seen_phrasings.items()}


def test_every_report_tokenizes_without_unknown_tokens(quick_world) -> None:
    _, paths = quick_world
    tokenizer = load_tokenizer("demo")
    rng = np.random.default_rng(13)
    reports = [write_report(sample_case(rng), rng) for _ in range(1500)]
    reports += _read(paths["hospital_a"])["report"].tolist() + _read(paths["hospital_c"])["report"].tolist()
    ids = tokenizer(reports)["input_ids"]
    assert not any(tokenizer.unk_token_id in row for row in ids)
    lengths = np.array([len(row) for row in ids])
    assert np.median(lengths) <= 48  # fits the demo text encoder (max_len 64) in most cases


def test_shipped_vocabulary_is_up_to_date() -> None:
    vocab = demo_vocabulary()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(vocab) == len(set(vocab))
    assert {"effusion", "pneumothorax", "cardiomegaly", "nodule", "consolidation", "endotracheal", "mm"} <= set(vocab)
    assert {"##a", "##z", "##0", "##9", ".", ",", ":", "0", "9"} <= set(vocab)
    shipped = vocab_path("demo").read_text(encoding="utf-8").splitlines()
    assert shipped == vocab, "run: fedvlp.core.data.synthetic.write_vocabulary()"
    assert load_tokenizer("demo").vocab_size == len(vocab)


# ------------------------------------------------------------------------------- spec
def test_spec_validation_and_quick() -> None:
    quick = WorldSpec.quick()
    assert (quick.n_pairs, quick.n_images, quick.n_reports, quick.n_labeled) == (120, 120, 120, 300)
    assert WorldSpec.quick(seed=5).seed == 5
    assert (WorldSpec().n_pairs, WorldSpec().n_labeled) == (800, 1200)
    with pytest.raises(ValueError, match="n_pairs"):
        WorldSpec(n_pairs=-1)
    with pytest.raises(ValueError, match="size_b"):
        WorldSpec(size_b=8)
