"""Synthetic worlds: the rows of each site (:func:`plan_site`) and their files (:func:`generate_world`).

::

    out_dir/
      world.json                  the spec + format version (cache key)
      hospital_a/manifest.csv     id, image, report, patient_id, study_id   (image + report pairs)
      hospital_b/manifest.csv     id, image, patient_id                     (images only)
      hospital_c/manifest.csv     id, report                                (reports only)
      labeled/manifest.csv        id, image, patient_id, split, label_<finding>...
      hospital_{a,b,c}/labels.csv id, label_<finding>...  (retrieval evaluation only)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from PIL import Image

from .cases import FINDINGS, Case, _follow_up, sample_case
from .render import Acquisition, render_image
from .reports import write_report

__all__ = ["SITES", "FORMAT_VERSION", "WorldSpec", "PlannedItem", "plan_site", "generate_world"]

SITES: tuple[str, ...] = ("hospital_a", "hospital_b", "hospital_c", "labeled")
FORMAT_VERSION = 1

_SITE_PREFIX = {"hospital_a": "a", "hospital_b": "b", "hospital_c": "c", "labeled": "l"}


@dataclass(frozen=True)
class WorldSpec:
    """Size, seed and per-site acquisition of a synthetic world.

    Attributes
    ----------
    n_pairs, n_images, n_reports
        Rows of ``hospital_a`` (image + report), ``hospital_b`` (images) and ``hospital_c``
        (reports).
    n_labeled
        Images of the labelled set used by the central fine-tuning sweep.
    seed
        Root seed; each site gets its own ``SeedSequence`` child stream.
    size_a, size_b, size_labeled
        Native image resolution of each image site.
    acq_a, acq_b, acq_labeled
        Scanner characteristics of each image site.
    follow_up_fraction
        Fraction of pretraining rows that are a later study of the previous patient.
    second_image_fraction
        Fraction of labelled-set patients with a second (follow-up) image.
    split_fractions
        ``(train, val, test)`` fractions of labelled-set *patients*.
    """

    n_pairs: int = 800
    n_images: int = 800
    n_reports: int = 800
    n_labeled: int = 1200
    seed: int = 0
    size_a: int = 128
    size_b: int = 160
    size_labeled: int = 112
    acq_a: Acquisition = Acquisition(gamma=1.0, contrast=1.0, brightness=0.0, noise=0.015, blur=0.0)
    acq_b: Acquisition = Acquisition(gamma=0.8, contrast=1.15, brightness=-0.03, noise=0.03, blur=0.8)
    acq_labeled: Acquisition = Acquisition(gamma=1.2, contrast=0.9, brightness=0.04, noise=0.02, blur=0.4)
    follow_up_fraction: float = 0.15
    second_image_fraction: float = 0.25
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)

    def __post_init__(self) -> None:
        for name in ("n_pairs", "n_images", "n_reports", "n_labeled", "seed"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"WorldSpec.{name} must be a non-negative integer, got {value!r}")
        for name in ("size_a", "size_b", "size_labeled"):
            if getattr(self, name) < 32:
                raise ValueError(f"WorldSpec.{name} must be at least 32 pixels, got {getattr(self, name)!r}")
        if len(self.split_fractions) != 3 or min(self.split_fractions) < 0 or sum(self.split_fractions) <= 0:
            raise ValueError(
                f"WorldSpec.split_fractions must be three non-negative numbers, got {self.split_fractions!r}"
            )

    @classmethod
    def quick(cls, **overrides: Any) -> "WorldSpec":
        """A tiny world (120 / 120 / 120 / 300) through the same code path, for tests and smoke runs."""
        values: dict[str, Any] = {"n_pairs": 120, "n_images": 120, "n_reports": 120, "n_labeled": 300}
        values.update(overrides)
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible dict of all fields (nested acquisitions become dicts)."""
        result: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(self)))
        return result


@dataclass(frozen=True)
class PlannedItem:
    """One row of a site before it is rendered: ids, latent case and per-item seeds."""

    site: str
    index: int
    id: str
    patient_id: str
    study_id: str
    case: Case
    split: str | None
    seed: int
    site_index: int

    def rng(self, purpose: int) -> np.random.Generator:
        """The item's stream for ``purpose`` (0 = case, 1 = image, 2 = report).

        Equals ``SeedSequence(seed).spawn(...)[site_index].spawn(...)[index].spawn(...)[purpose]``.
        """
        return np.random.default_rng(
            np.random.SeedSequence(self.seed, spawn_key=(self.site_index, self.index, purpose))
        )


def _site_rng(seed: int, site_index: int, purpose: int) -> np.random.Generator:
    # spawn_key (site, 2**20 + purpose) is disjoint from the per-item keys (site, index, ...)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(site_index, 2**20 + purpose)))


def plan_site(spec: WorldSpec, site: str) -> list[PlannedItem]:
    """The rows of one site with their latent cases (cheap: nothing is rendered).

    Row ``i`` only depends on ``spec.seed``, the site and rows ``< i``, so a smaller world
    is a prefix of a bigger one with the same seed (apart from the labelled split).

    Parameters
    ----------
    spec
        The world.
    site
        One of :data:`SITES`.

    Returns
    -------
    list[PlannedItem]
    """
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; expected one of {SITES}")
    site_index = SITES.index(site)
    prefix = _SITE_PREFIX[site]
    n = {
        "hospital_a": spec.n_pairs,
        "hospital_b": spec.n_images,
        "hospital_c": spec.n_reports,
        "labeled": spec.n_labeled,
    }[site]
    width = max(5, len(str(n)))
    structure = _site_rng(spec.seed, site_index, 0)
    repeat_p = spec.second_image_fraction if site == "labeled" else spec.follow_up_fraction
    items: list[PlannedItem] = []
    patient, study, studies_of_patient = 0, 0, 0
    previous: Case | None = None
    for index in range(n):
        case_rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(site_index, index, 0)))
        repeat = structure.random() < repeat_p and previous is not None and studies_of_patient < 2
        if repeat and previous is not None:  # repeat implies a previous case
            case = _follow_up(previous, case_rng)
            studies_of_patient += 1
        else:
            case = sample_case(case_rng)
            patient += 1
            studies_of_patient = 1
        study += 1
        previous = case
        items.append(
            PlannedItem(
                site=site,
                index=index,
                id=f"{prefix}_{index + 1:0{width}d}",
                patient_id=f"{prefix}_p{patient:0{width}d}",
                study_id=f"{prefix}_s{study:0{width}d}",
                case=case,
                split=None,
                seed=spec.seed,
                site_index=site_index,
            )
        )
    if site == "labeled" and items:
        patients = list(dict.fromkeys(item.patient_id for item in items))
        order = _site_rng(spec.seed, site_index, 1).permutation(len(patients))
        fractions = np.asarray(spec.split_fractions, dtype=float) / sum(spec.split_fractions)
        bounds = np.round(np.cumsum(fractions) * len(patients)).astype(int)
        split_of = {}
        for rank, p in enumerate(order):
            split_of[patients[p]] = "train" if rank < bounds[0] else "val" if rank < bounds[1] else "test"
        items = [dataclasses.replace(item, split=split_of[item.patient_id]) for item in items]
    return items


def _world_meta(spec: WorldSpec) -> dict[str, Any]:
    return {"format": "fedvlp-synthetic-world", "format_version": FORMAT_VERSION, "spec": spec.to_json()}


def _is_world(out_dir: Path, meta: Mapping[str, Any]) -> bool:
    try:
        stored = json.loads((out_dir / "world.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return stored == meta and all((out_dir / s / "manifest.csv").is_file() for s in SITES)


def _label_columns() -> list[str]:
    return [f"label_{name}" for name in FINDINGS]


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, index=False, lineterminator="\n")


def _generate_site(site: str, spec: WorldSpec, root: Path, bar: Any) -> None:
    folder = root / site
    items = plan_site(spec, site)
    has_images = site != "hospital_c"
    has_reports = site in ("hospital_a", "hospital_c")
    size, acq = {
        "hospital_a": (spec.size_a, spec.acq_a),
        "hospital_b": (spec.size_b, spec.acq_b),
        "labeled": (spec.size_labeled, spec.acq_labeled),
    }.get(site, (0, None))
    if has_images:
        (folder / "images").mkdir(parents=True)
    else:
        folder.mkdir(parents=True)
    rows, labels = [], []
    for item in items:
        row: dict[str, Any] = {"id": item.id}
        if has_images:
            if acq is None:
                raise ValueError(f"site {site} has images but no acquisition")
            pixels = render_image(item.case, item.rng(1), size, acq)
            rel = f"images/{item.id}.png"
            Image.fromarray(pixels, mode="L").save(folder / rel, compress_level=4)
            row["image"] = rel
        if has_reports:
            row["report"] = write_report(item.case, item.rng(2))
        if site == "hospital_a":
            row.update(patient_id=item.patient_id, study_id=item.study_id)
        elif site in ("hospital_b", "labeled"):
            row["patient_id"] = item.patient_id
        if site == "labeled":
            row["split"] = item.split
            row.update({f"label_{k}": v for k, v in item.case.labels.items()})
        else:
            labels.append({"id": item.id, **{f"label_{k}": v for k, v in item.case.labels.items()}})
        rows.append(row)
        bar.update(1)
    columns = {
        "hospital_a": ["id", "image", "report", "patient_id", "study_id"],
        "hospital_b": ["id", "image", "patient_id"],
        "hospital_c": ["id", "report"],
        "labeled": ["id", "image", "patient_id", "split", *_label_columns()],
    }[site]
    _write_csv(pd.DataFrame(rows, columns=columns), folder / "manifest.csv")
    if site != "labeled":
        _write_csv(pd.DataFrame(labels, columns=["id", *_label_columns()]), folder / "labels.csv")


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _replaceable(out_dir: Path) -> bool:
    """An existing ``out_dir`` may be replaced only if it is empty or a previous world."""
    if not out_dir.exists():
        return True
    if not out_dir.is_dir():
        return False
    return (out_dir / "world.json").is_file() or not any(out_dir.iterdir())


def generate_world(
    out_dir: str | os.PathLike[str],
    spec: WorldSpec = WorldSpec(),
    *,
    progress: bool = False,
) -> dict[str, Path]:
    """Generate (or reuse) a synthetic world in ``out_dir``.

    If ``out_dir/world.json`` already describes ``spec``, nothing is written. Otherwise the
    world is generated into a temporary folder next to ``out_dir`` and renamed into place, so
    an interrupted run never leaves a half world that looks complete. A previous world with a
    different spec (or an empty folder) is replaced; any other existing folder is refused.
    Concurrent calls for the same spec are safe: the first to finish wins, the others discard
    their copy.

    Parameters
    ----------
    out_dir
        Folder of the world.
    spec
        What to generate; the same spec always gives byte-identical files.
    progress
        Show a tqdm progress bar.

    Returns
    -------
    dict[str, Path]
        ``{site: path to its manifest.csv}`` for ``hospital_a``, ``hospital_b``, ``hospital_c``
        and ``labeled``.

    Raises
    ------
    FileExistsError
        ``out_dir`` exists and is neither empty nor a synthetic world.
    """
    out_dir = Path(out_dir).expanduser().absolute()
    paths = {site: out_dir / site / "manifest.csv" for site in SITES}
    meta = _world_meta(spec)
    if _is_world(out_dir, meta):
        return paths
    if not _replaceable(out_dir):
        raise FileExistsError(
            f"{out_dir} exists and is not a synthetic world (no world.json); refusing to overwrite it"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    old: Path | None = None
    try:
        if progress:
            from tqdm.auto import tqdm

            bar: Any = tqdm(
                total=spec.n_pairs + spec.n_images + spec.n_reports + spec.n_labeled, desc="synthetic world", unit="row"
            )
        else:
            bar = _NoBar()
        try:
            for site in SITES:
                _generate_site(site, spec, tmp, bar)
        finally:
            bar.close()
        (tmp / "world.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if out_dir.exists():
            if _is_world(out_dir, meta):  # a concurrent run finished first
                shutil.rmtree(tmp, ignore_errors=True)
                return paths
            if not _replaceable(out_dir):
                raise FileExistsError(f"{out_dir} exists and is not a synthetic world; refusing to overwrite it")
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            out_dir.rename(old)
        try:
            tmp.rename(out_dir)
        except OSError:
            if not _is_world(out_dir, meta):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return paths
