"""``fedvlp validate-site``: read every row of a site, open every image, report what trains."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..config import SiteConfig
from .images import ImageDecodeError, load_image
from .manifest import load_source_rows, read_manifest

__all__ = ["SourceReport", "validate_site", "format_report"]


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


def validate_site(site: SiteConfig, decode_size: int = 32) -> list[SourceReport]:
    """Check every row of every source of ``site`` the way training reads them.

    Manifest-level problems (empty ids, duplicate ids, empty reports, empty image paths) and
    image files that cannot be decoded are counted per reason and listed with their row.
    """
    reports = []
    for source in site.sources:
        rows = load_source_rows(source)
        report = SourceReport(source.manifest, source.modalities, skipped=Counter(rows.skipped), problems=list(rows.problems))
        frame = pd.read_csv(source.manifest, dtype=str, keep_default_na=False) if source.manifest.suffix == ".csv" else read_manifest(source.manifest, [source.id_column])
        report.rows = len(frame)
        usable = len(rows)
        if rows.images is not None:
            for row_id, path in zip(rows.ids, rows.images):
                try:
                    load_image(path, decode_size)
                except ImageDecodeError as err:
                    report.skipped["bad_image"] += 1
                    report.problems.append(f"{source.manifest}: id {row_id}: {err}")
                    usable -= 1
        report.usable = usable
        for column in source.label_columns:
            if column in frame.columns:
                report.labels[column] = Counter(str(v) if str(v) != "" else "(blank)" for v in frame[column])
        if "view" in frame.columns:
            report.views = Counter(str(v) or "(blank)" for v in frame["view"])
        reports.append(report)
    return reports


def format_report(site: SiteConfig, reports: list[SourceReport], max_problems: int = 20) -> str:
    """A readable summary: rows, usable rows per modality, skips by reason, labels, views, problems."""
    lines = [f"site {site.name} ({site.path})"]
    for report in reports:
        modalities = "+".join(sorted(m for m in report.modalities if m != "pair")) + (" pairs" if "pair" in report.modalities else "")
        lines.append(f"  {report.manifest}: {report.rows} rows, {report.usable} usable ({modalities})")
        for reason, count in sorted(report.skipped.items()):
            lines.append(f"    skipped {reason}: {count}")
        for column, counts in report.labels.items():
            lines.append(f"    label {column}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
        if report.views:
            lines.append("    views: " + ", ".join(f"{k}={v}" for k, v in report.views.most_common()))
        for problem in report.problems[:max_problems]:
            lines.append(f"    problem: {problem}")
        if len(report.problems) > max_problems:
            lines.append(f"    ... and {len(report.problems) - max_problems} more problems")
    return "\n".join(lines)
