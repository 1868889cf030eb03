"""From site sources to the rows that train: the image probe, carried skip counts, and the
"nothing left" error; plus small helpers for loader benchmarks.

Construction never decodes the whole site: a source's manifest is read in chunks into compact
columns, and images are decoded and resized later, in DataLoader workers. Only a probe of up to
:data:`PROBE_IMAGES` evenly spaced images is decoded at start, so that a source whose images
are all unusable (all 16-bit, a wrong image folder...) is noticed at once instead of training
on empty batches; only when every probed image fails are all of them decoded to be sure.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..config import ConfigError, SiteConfig, SourceConfig
from .images import ImageDecodeError, load_image
from .manifest import ManifestRows, PathColumn, StringColumn, load_source_rows

__all__ = ["PROBE_IMAGES", "site_rows", "probe_failures", "rows_from_files"]

log = logging.getLogger(__name__)

PROBE_IMAGES = 64


def probe_failures(rows: ManifestRows, limit: int = PROBE_IMAGES) -> Counter[str] | None:
    """Decode up to ``limit`` evenly spaced images of ``rows`` (tiny size).

    Returns
    -------
    Counter or None
        ``None`` when at least one image decodes; otherwise the reasons of *every* image of
        the source (all of them are then decoded, since the probe found nothing usable).
    """
    if rows.images is None or not len(rows):
        return None
    picks = np.unique(np.linspace(0, len(rows) - 1, num=min(limit, len(rows))).round().astype(int))
    for index in picks:
        try:
            load_image(rows.images[int(index)], 8, rows.policy)
            return None
        except ImageDecodeError:
            continue
    reasons: Counter[str] = Counter()
    problems = []
    for index in range(len(rows)):
        try:
            load_image(rows.images[index], 8, rows.policy)
            return None
        except ImageDecodeError as err:
            reasons[err.reason] += 1
            problems.append(rows.image_problem(index, err))
    rows.problems.extend(problems)
    return reasons


def site_rows(site: SiteConfig) -> list[ManifestRows]:
    """The usable rows of every source of ``site`` that has any.

    Rows skipped while reading a manifest are counted in its ``skipped``; a source left with
    nothing (every row skipped, or no image that decodes) is dropped and its counts and
    problems move to the first kept source, so that the site's ``skipped/<reason>`` metrics
    still show them.

    Raises
    ------
    ConfigError
        Naming the site file and the skip counts, when no source has a usable row.
    """
    kept: list[ManifestRows] = []
    carried: Counter[str] = Counter()
    carried_problems: list[str] = []
    for source in site.sources:
        rows = load_source_rows(source)
        failures = probe_failures(rows)
        if failures is not None:
            log.warning(
                "%s: none of the %d images of %s can be used (%s)",
                site.path,
                len(rows),
                source.manifest,
                _counts(failures),
            )
            rows.skipped.update(failures)
        if len(rows) and failures is None:
            kept.append(rows)
        else:
            carried.update(rows.skipped)
            carried_problems.extend(rows.problems)
    if not kept:
        total = sum(carried.values())
        raise ConfigError(
            str(site.path),
            "sources",
            "at least one manifest row that can train (all rows were skipped: "
            f"{_counts(carried) or 'the manifests are empty'}, {total} in all)",
        )
    kept[0].skipped.update(carried)
    kept[0].problems.extend(carried_problems)
    return kept


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{reason}={count}" for reason, count in sorted(counter.items()))


def rows_from_files(paths: Sequence[Path], accept: Sequence[str] = ()) -> ManifestRows:
    """An image-only :class:`ManifestRows` over ``paths`` (benchmarks, ad-hoc folders)."""
    paths = [Path(p).resolve() for p in paths]
    base = Path(os.path.commonpath([str(p.parent) for p in paths])) if paths else Path.cwd()
    source = SourceConfig(base / "(files).csv", image_column="image", report_column=None, accept=frozenset(accept))
    relative = StringColumn.from_strings(str(p.relative_to(base)) for p in paths)
    ids = StringColumn.from_strings(str(i) for i in range(len(paths)))
    return ManifestRows(
        source, ids, PathColumn(base, relative), None, row_numbers=np.arange(2, len(paths) + 2), rows_in_file=len(paths)
    )
