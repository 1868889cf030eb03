"""One labelled manifest -> N simulated hospitals with a Dirichlet label skew and a modality mix.

``fedvlp partition`` turns a single dataset into a federation of site files (``site_000.yaml``
... with ``site_000/manifest.csv`` ...) for simulations of many sites:

* **Label skew.** For each class of the ``by`` column, the share of that class each site gets
  is one draw of ``Dirichlet(alpha, ..., alpha)`` (small alpha: sites see few classes; large
  alpha: every site looks like the whole set), as in flwr-datasets' ``DirichletPartitioner``
  (Hsu et al. 2019). Why not use that class: flwr-datasets is not installed here and pulls in
  Hugging Face ``datasets`` (and its Arrow cache) for what is thirty lines over a pandas table,
  and its partitioner splits rows, while a patient's images must stay in one hospital.
* **Patients stay whole.** Rows are grouped by ``patient_column`` when the manifest has it
  (blank ids are their own group); a group's class is its most frequent ``by`` value (ties: the
  smallest) and the whole group goes to one site.
* **Modality mix.** Sites ``0 .. P-1`` keep image and report (pairs), the next ``I`` drop the
  report (images only), the last ``R`` drop the image (reports only); ``P, I, R`` come from the
  three shares by largest remainder, so they always add up to the number of sites.

The draw is a pure function of the seed: all class proportions first
(``default_rng(seed).dirichlet([alpha] * sites, size=classes)``, classes in sorted order), then
one permutation of each class's groups. A draw that leaves a site with fewer than
``min_rows`` rows (default 2: a site with a single image cannot train BatchNorm in train
mode) is redrawn from the same generator (at most ``MAX_DRAWS`` times).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..config import ConfigError

__all__ = [
    "PartitionSpec",
    "PartitionResult",
    "site_kinds",
    "dirichlet_assign",
    "partition_manifest",
    "image_roots_of",
    "MAX_DRAWS",
    "KINDS",
]

MAX_DRAWS = 100
KINDS = ("pairs", "images", "reports")


@dataclass(frozen=True)
class PartitionSpec:
    """What ``fedvlp partition`` was asked for (CLI flags of the same names)."""

    sites: int
    by: str
    alpha: float
    pairs_share: float = 1.0
    images_only_share: float = 0.0
    reports_only_share: float = 0.0
    seed: int = 0
    min_rows: int = 2  # a site with one image cannot train BatchNorm in train mode
    id_column: str = "id"
    image_column: str = "image"
    report_column: str = "report"
    patient_column: str = "patient_id"


@dataclass
class PartitionResult:
    """The written federation: site files, and per site its kind, rows and class counts."""

    folder: Path
    site_files: list[Path] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    classes: list[dict[str, int]] = field(default_factory=list)
    draws: int = 1

    def summary(self) -> str:
        """One line per site: file, kind, rows and class counts."""
        lines = [f"{len(self.site_files)} sites in {self.folder} (draw {self.draws})"]
        for path, kind, rows, classes in zip(self.site_files, self.kinds, self.rows, self.classes):
            lines.append(f"  {path.name}: {kind}, {rows} rows, classes {classes}")
        return "\n".join(lines)


def site_kinds(sites: int, pairs_share: float, images_only_share: float, reports_only_share: float) -> list[str]:
    """The kind of each site: ``pairs`` first, then ``images``, then ``reports``.

    Counts are the shares times ``sites`` rounded by largest remainder (ties: the order above).

    Raises
    ------
    ConfigError
        When a share is negative or the shares do not add up to 1.
    """
    shares = (pairs_share, images_only_share, reports_only_share)
    flags = ("--pairs-share", "--images-only-share", "--reports-only-share")
    for flag, share in zip(flags, shares):
        if not 0.0 <= share <= 1.0:
            raise ConfigError("fedvlp partition", flag, "a share in [0, 1]", share)
    if not math.isclose(sum(shares), 1.0, abs_tol=1e-6):
        raise ConfigError("fedvlp partition", "/".join(flags), "shares that add up to 1", round(sum(shares), 6))
    exact = [share * sites for share in shares]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(3), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: sites - sum(counts)]:
        counts[i] += 1
    return [kind for kind, n in zip(KINDS, counts) for _ in range(n)]


def dirichlet_assign(
    classes: Sequence[str], sizes: Sequence[int], sites: int, alpha: float, seed: int, min_rows: int = 2
) -> tuple[np.ndarray, int]:
    """A site for each group: per class, ``Dirichlet(alpha)`` shares of its shuffled groups.

    Parameters
    ----------
    classes
        The class of each group (a patient, or a row without one).
    sizes
        Rows per group (for ``min_rows``).
    sites, alpha, seed
        Number of sites, Dirichlet concentration, seed of the generator.
    min_rows
        Every site must get at least this many rows; otherwise the draw is repeated.

    Returns
    -------
    (numpy.ndarray, int)
        The site index of each group, and how many draws it took.

    Raises
    ------
    ConfigError
        When no draw in :data:`MAX_DRAWS` gives every site ``min_rows`` rows.
    """
    if sites < 1:
        raise ConfigError("fedvlp partition", "--sites", "an integer >= 1", sites)
    if not alpha > 0:
        raise ConfigError("fedvlp partition", "--dirichlet", "a concentration > 0", alpha)
    labels = np.asarray(classes, dtype=object)
    sizes_arr = np.asarray(sizes, dtype=np.int64)
    names = sorted(set(labels.tolist()))
    rng = np.random.default_rng(seed)
    for draw in range(1, MAX_DRAWS + 1):
        proportions = rng.dirichlet([alpha] * sites, size=len(names))
        site_of = np.zeros(len(labels), dtype=np.int64)
        for k, name in enumerate(names):
            members = np.flatnonzero(labels == name)
            order = members[rng.permutation(len(members))]
            cuts = (np.cumsum(proportions[k]) * len(members)).astype(np.int64)[:-1]
            for site, part in enumerate(np.split(order, cuts)):
                site_of[part] = site
        rows = np.bincount(site_of, weights=sizes_arr, minlength=sites)
        if rows.min() >= min_rows:
            return site_of, draw
    raise ConfigError(
        "fedvlp partition",
        "--dirichlet/--sites",
        f"a draw that gives each of {sites} sites >= {min_rows} rows within "
        f"{MAX_DRAWS} draws (raise alpha, lower --sites or --min-rows)",
        alpha,
    )


def image_roots_of(images: Sequence[str], manifest_dir: Path) -> list[str]:
    """The folders a partitioned site's ``image_roots`` must list for ``images`` to load.

    Images under the partitioned manifest's folder need that folder; images elsewhere (a
    manifest with absolute paths) need the deepest folder holding all of them, or, when that is
    the file system's root, each folder that holds some (a root of ``/`` would let a site file
    read anything).
    """
    base = os.path.normpath(manifest_dir)
    inside, outside = False, set()
    for image in images:
        folder = os.path.dirname(os.path.normpath(image))
        if folder == base or folder.startswith(base + os.sep):
            inside = True
        else:
            outside.add(folder)
    roots = [base] if inside else []
    if outside:
        common = os.path.commonpath(sorted(outside))
        roots += [common] if os.path.dirname(common) != common else sorted(outside)
    return roots


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ConfigError(str(path), "(file)", "an existing CSV or Parquet manifest")
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path).fillna("").astype(str)
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _groups(frame: pd.DataFrame, spec: PartitionSpec) -> tuple[np.ndarray, list[str], list[int]]:
    """Group index of every row, and per group its class and size."""
    if spec.patient_column in frame.columns:
        patient = frame[spec.patient_column].astype(str).str.strip()
        keys = np.where(patient != "", "p:" + patient, "r:" + frame.index.astype(str))
    else:
        keys = ("r:" + frame.index.astype(str)).to_numpy()
    codes, uniques = pd.factorize(pd.Series(keys), sort=False)
    by = frame[spec.by].astype(str).to_numpy()
    sizes = np.bincount(codes, minlength=len(uniques)).tolist()
    table = pd.DataFrame({"group": codes, "value": by}).value_counts().reset_index(name="n")
    # most frequent value per group; ties: the smallest value
    table = table.sort_values(["group", "n", "value"], ascending=[True, False, True]).drop_duplicates("group")
    classes = table.sort_values("group")["value"].tolist()
    return codes, classes, sizes


def partition_manifest(manifest: str | Path, out: str | Path, spec: PartitionSpec) -> PartitionResult:
    """Split ``manifest`` into ``spec.sites`` site files and manifests under ``out``.

    Writes ``out/site_NNN.yaml`` and ``out/site_NNN/manifest.csv`` for every site (image paths
    made absolute, so the folder works from anywhere) and ``out/partition.json`` (the spec, the
    kinds, rows and class counts per site).

    Raises
    ------
    ConfigError
        Naming the manifest, the column or flag and what was expected.
    """
    manifest = Path(manifest).resolve()
    origin = str(manifest)
    frame = _read(manifest)
    for column in (spec.id_column, spec.by):
        if column not in frame.columns:
            raise ConfigError(origin, column, f"a column of the manifest (columns: {list(frame.columns)})")
    kinds = site_kinds(spec.sites, spec.pairs_share, spec.images_only_share, spec.reports_only_share)
    has_image, has_report = spec.image_column in frame.columns, spec.report_column in frame.columns
    for kind, needs in (("pairs", (has_image and has_report)), ("images", has_image), ("reports", has_report)):
        if kind in kinds and not needs:
            missing = [
                c for c, present in ((spec.image_column, has_image), (spec.report_column, has_report)) if not present
            ]
            raise ConfigError(
                origin,
                missing[0],
                f"a column of the manifest for {kind} sites (set the shares so that no site needs it)",
            )
    if frame.empty:
        raise ConfigError(origin, "(rows)", "at least one row")
    codes, classes, sizes = _groups(frame, spec)
    site_of_group, draws = dirichlet_assign(classes, sizes, spec.sites, spec.alpha, spec.seed, spec.min_rows)
    site_of_row = site_of_group[codes]
    roots: list[str] = []
    if has_image:
        base = manifest.parent
        frame[spec.image_column] = [str(base / p) if p else p for p in frame[spec.image_column]]
        roots = image_roots_of([p for p in frame[spec.image_column] if p], base)

    out = Path(out).resolve()
    width = max(3, len(str(spec.sites - 1)))
    ours = {f"site_{site:0{width}d}.yaml" for site in range(spec.sites)}
    others = sorted(p.name for p in out.glob("*.y*ml") if p.name not in ours) if out.is_dir() else []
    if others:  # they would join the federation (every *.yaml of the folder is a site)
        raise ConfigError(
            str(out), "--out", "a new folder, or one written by fedvlp partition with the same --sites", others[:3]
        )
    out.mkdir(parents=True, exist_ok=True)
    result = PartitionResult(out, draws=draws)
    for site, kind in enumerate(kinds):
        name = f"site_{site:0{width}d}"
        rows = frame[site_of_row == site]
        drop = {"images": [spec.report_column], "reports": [spec.image_column]}.get(kind, [])
        rows = rows.drop(columns=drop, errors="ignore")  # an images-only manifest has no report to drop
        (out / name).mkdir(exist_ok=True)
        rows.to_csv(out / name / "manifest.csv", index=False)
        source: dict[str, object] = {"manifest": f"{name}/manifest.csv", "kind": kind, "id_column": spec.id_column}
        if kind != "reports":
            source["image_column"] = spec.image_column
        if kind != "images":
            source["report_column"] = spec.report_column
        site_file = out / f"{name}.yaml"
        description = (
            f"partition {site} of {spec.sites} of {manifest} ({kind}; Dirichlet alpha {spec.alpha} over '{spec.by}', "
            f"seed {spec.seed})"
        )
        site_yaml: dict[str, object] = {"name": name, "description": description, "sources": [source]}
        if kind != "reports":  # the images stay where they are; the site file lets them be read there
            site_yaml["image_roots"] = roots
        site_file.write_text(yaml.safe_dump(site_yaml, sort_keys=False), encoding="utf-8")
        result.site_files.append(site_file)
        result.kinds.append(kind)
        result.rows.append(len(rows))
        result.classes.append({str(k): int(v) for k, v in sorted(rows[spec.by].value_counts().items())})
    summary = {
        "manifest": str(manifest),
        "spec": spec.__dict__,
        "draws": draws,
        "sites": [
            {"file": p.name, "kind": k, "rows": r, "classes": c}
            for p, k, r, c in zip(result.site_files, result.kinds, result.rows, result.classes)
        ],
    }
    (out / "partition.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return result
