"""``fedvlp validate-site``: read every row of a site, open every image, report what trains.

The checks are the ones training applies (:func:`~fedvlp.core.data.manifest.load_source_rows`
for rows, :func:`~fedvlp.core.data.images.load_image` for images) with the same reason codes,
so a row listed here is a row training skips and counts under ``skipped/<reason>``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..config import SiteConfig
from .images import ImageDecodeError, ImagePolicy, load_image
from .manifest import ManifestRows, load_source_rows

__all__ = ["SourceReport", "validate_site", "format_report", "image_failures", "skipped_in_history"]


@dataclass
class SourceReport:
    """Counts and problems of one source of a site."""

    manifest: Path
    modalities: frozenset[str]
    rows: int = 0
    usable: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    labels: dict[str, Counter[str]] = field(default_factory=dict)
    views: Counter[str] = field(default_factory=Counter)
    problems_omitted: int = 0


class _ImageCheck(Dataset[tuple[int, str, str]]):
    """``(index, reason, problem)`` of every usable row; reason ``""`` when the image is fine."""

    def __init__(self, rows: ManifestRows, policy: ImagePolicy, size: int):
        self.rows, self.policy, self.size = rows, policy, size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[int, str, str]:
        assert self.rows.images is not None
        try:
            load_image(self.rows.images[index], self.size, self.policy)
        except ImageDecodeError as err:
            return index, err.reason, self.rows.image_problem(index, err)
        return index, "", ""


def image_failures(rows: ManifestRows, decode_size: int = 32, workers: int = 0) -> Iterable[tuple[int, str, str]]:
    """Decode every image of ``rows`` as training would; yield ``(index, reason, problem)`` of failures.

    ``workers`` DataLoader processes share the decoding (0: in this process).
    """
    if rows.images is None or not len(rows):
        return
    loader = DataLoader(
        _ImageCheck(rows, rows.policy, decode_size), batch_size=64, num_workers=workers, collate_fn=list
    )
    quiet = True if os.environ.get("FEDVLP_QUIET") == "1" else None  # None: bar only on a terminal
    with tqdm(
        total=len(rows),
        desc=f"images of {rows.source.manifest.parent.name}/{rows.source.manifest.name}",
        unit="img",
        leave=False,
        disable=quiet,
    ) as bar:
        for batch in loader:
            bar.update(len(batch))
            for index, reason, problem in batch:
                if reason:
                    yield index, reason, problem


def validate_site(site: SiteConfig, decode_size: int = 32, workers: int = 0) -> list[SourceReport]:
    """Check every row of every source of ``site`` the way training reads them.

    Row problems (CSV rows with the wrong number of fields or broken quoting, non-UTF-8 bytes,
    empty ids, bad label values, image paths outside the site's image roots, duplicate ids, empty
    reports, empty image paths) and image problems (missing, not a regular file, corrupt,
    truncated, huge, 16-bit, NaN/Inf pixels, colour)
    are counted per reason and listed with their manifest row. Manifests are read in chunks,
    so memory stays bounded by the compact per-row columns.
    """
    torch.set_num_threads(1)  # decoding is single-threaded; keep the machine for the workers
    reports = []
    for source in site.sources:
        rows = load_source_rows(source)
        report = SourceReport(
            source.manifest,
            source.modalities,
            rows=rows.rows_in_file,
            skipped=Counter(rows.skipped),
            problems=list(rows.problems),
            labels=rows.labels,
            views=rows.views,
            problems_omitted=rows.problems_omitted,
        )
        usable = len(rows)
        for _, reason, problem in image_failures(rows, decode_size, workers):
            report.skipped[reason] += 1
            report.problems.append(problem)
            usable -= 1
        report.usable = usable
        reports.append(report)
    return reports


def format_report(site: SiteConfig, reports: list[SourceReport], max_problems: int = 20) -> str:
    """A readable summary: rows, usable rows per modality, skips by reason, labels, views, problems."""
    lines = [f"site {site.name} ({site.path})"]
    for report in reports:
        modalities = "+".join(sorted(m for m in report.modalities if m != "pair")) + (
            " pairs" if "pair" in report.modalities else ""
        )
        lines.append(f"  {report.manifest}: {report.rows} rows, {report.usable} usable ({modalities})")
        for reason, count in sorted(report.skipped.items()):
            lines.append(f"    skipped {reason}: {count}")
        for column, counts in report.labels.items():
            lines.append(f"    label {column}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
        if report.views:
            lines.append("    views: " + ", ".join(f"{k}={v}" for k, v in report.views.most_common()))
        for problem in report.problems[:max_problems]:
            lines.append(f"    problem: {problem}")
        more = len(report.problems) - max_problems + report.problems_omitted
        if more > 0:
            lines.append(f"    ... and {more} more problems")
    if not any(r.usable for r in reports):
        lines.append(f"  no usable rows: training on {site.path} would fail")
    return "\n".join(lines)


def skipped_in_history(history: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Skipped rows by reason over a run, from the round records of the server's history.

    A client's ``skipped/<reason>`` metrics are running totals of its site, so the last
    round a node replied in holds its totals; they are summed over nodes.
    """
    last: dict[Any, Mapping[str, float]] = {}
    for record in history:
        for site in record.get("sites", []):
            last[site.get("node_id")] = site.get("metrics", {})
    totals: Counter[str] = Counter()
    for metrics in last.values():
        for key, value in metrics.items():
            if key.startswith("skipped/"):
                totals[key.removeprefix("skipped/")] += int(value)
    return dict(sorted(totals.items()))
