"""site_rows: a site left with nothing fails naming its file; a dead source's counts are kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedvlp.core.config import ConfigError, load_site
from fedvlp.core.data.loader import probe_failures, rows_from_files, site_rows
from tests.core.data.test_images import grey_png, png16


def _deep_images(tmp_path: Path, count: int) -> None:
    (tmp_path / "images").mkdir()
    for k in range(count):
        png16(tmp_path / "images" / f"{k}.png")
    (tmp_path / "images.csv").write_text("id,image\n" + "".join(f"{k},images/{k}.png\n" for k in range(count)))


def test_a_site_whose_images_are_all_16bit_fails_naming_the_site_file(tmp_path: Path) -> None:
    _deep_images(tmp_path, 3)
    site = tmp_path / "deep.yaml"
    site.write_text("name: deep\nsources:\n  - manifest: images.csv\n    kind: images\n")
    with pytest.raises(ConfigError, match=r"deep\.yaml: key 'sources'.*all rows were skipped: image_16bit=3, 3 in all"):
        site_rows(load_site(site))


def test_accepting_16bit_makes_the_same_site_usable(tmp_path: Path) -> None:
    _deep_images(tmp_path, 3)
    site = tmp_path / "deep.yaml"
    site.write_text("name: deep\nsources:\n  - manifest: images.csv\n    kind: images\n    accept: [16bit]\n")
    (rows,) = site_rows(load_site(site))
    assert len(rows) == 3 and not rows.skipped


def test_a_dead_source_is_dropped_and_its_counts_move_to_the_kept_one(tmp_path: Path) -> None:
    _deep_images(tmp_path, 2)
    (tmp_path / "reports.csv").write_text("id,report\na,Clear.\nb,\n")
    site = tmp_path / "mixed.yaml"
    site.write_text(
        "name: m\nsources:\n  - manifest: images.csv\n    kind: images\n  - manifest: reports.csv\n    kind: reports\n"
    )
    (rows,) = site_rows(load_site(site))
    assert rows.source.manifest.name == "reports.csv" and list(rows.ids) == ["a"]
    assert rows.skipped == {"image_16bit": 2, "empty_report": 1}
    assert sum("image_16bit" in p for p in rows.problems) == 2


def test_the_probe_stops_at_the_first_image_that_decodes(tmp_path: Path) -> None:
    paths = [png16(tmp_path / "d.png"), grey_png(tmp_path / "g.png")]
    assert probe_failures(rows_from_files(paths)) is None
    assert probe_failures(rows_from_files(paths[:1])) == {"image_16bit": 1}


def test_rows_from_files_point_at_the_files(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    paths = [grey_png(tmp_path / "a.png"), grey_png(tmp_path / "x" / "b.png")]
    rows = rows_from_files(paths)
    assert list(rows.images or []) == paths and list(rows.ids) == ["0", "1"] and rows.reports is None
