"""Manifest rows: every row check skips and counts with the row number; large manifests stay compact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedvlp.core.config import ConfigError, SourceConfig
from fedvlp.core.data.manifest import PathColumn, StringColumn, load_source_rows, read_manifest


def _source(path: Path, **kwargs) -> SourceConfig:
    return SourceConfig(path, **kwargs)


def test_a_row_with_invalid_utf8_is_skipped_alone(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(b"id,image,report\n1,a.png,Clear lungs.\n2,b.png,Bad \xff\xfe bytes.\n3,c.png,Caf\xc3\xa9 ok.\n")
    rows = load_source_rows(_source(path))
    assert list(rows.ids) == ["1", "3"] and list(rows.reports or []) == ["Clear lungs.", "Café ok."]
    assert rows.skipped == {"non_utf8": 1}
    assert rows.problems == [f"{path}:3: non_utf8 (bytes that are not UTF-8 in column 'report')"]


def test_a_label_value_2_is_skipped_with_its_column(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("id,report,y\na,r1,1\nb,r2,2\nc,r3,\nd,r4,1.0\ne,r5,-1\n")
    rows = load_source_rows(_source(path, image_column=None, label_columns=("y",)))
    assert list(rows.ids) == ["a", "c", "d"]
    assert rows.skipped == {"bad_label": 2}
    assert (
        rows.problems[0]
        == f"{path}:3: bad_label (column 'y' = '2', expected 0, 1 or blank (add uncertain_labels to accept for -1))"
    )
    assert rows.problems[1].startswith(f"{path}:6: bad_label (column 'y' = '-1'")
    assert rows.labels["y"] == {"1": 1, "2": 1, "(blank)": 1, "1.0": 1, "-1": 1}


def test_uncertain_labels_are_kept_when_the_source_accepts_them(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("id,report,y\na,r1,-1\nb,r2,2\n")
    rows = load_source_rows(
        _source(path, image_column=None, label_columns=("y",), accept=frozenset({"uncertain_labels"}))
    )
    assert list(rows.ids) == ["a"] and rows.skipped == {"bad_label": 1}


@pytest.mark.parametrize("chunk_rows", [2, 1000])
def test_duplicate_ids_keep_the_first_row_also_across_chunks(tmp_path: Path, chunk_rows: int) -> None:
    path = tmp_path / "m.csv"
    path.write_text("id,image,report\nx,1.png,r1\ny,2.png,r2\nx,3.png,r3\nz,4.png,r4\ny,5.png,r5\nx,6.png,r6\n")
    rows = load_source_rows(_source(path), chunk_rows=chunk_rows)
    assert list(rows.ids) == ["x", "y", "z"] and [p.name for p in rows.images or []] == ["1.png", "2.png", "4.png"]
    assert rows.skipped == {"duplicate_id": 3}
    assert [p.split(": ")[0] for p in rows.problems] == [f"{path}:4", f"{path}:6", f"{path}:7"]
    assert "id 'x' is already used by an earlier row" in rows.problems[0]
    assert rows.row_numbers.tolist() == [2, 3, 5]


def test_a_duplicate_of_a_skipped_row_is_used(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("id,image,report\nx,1.png,\nx,2.png,r2\n")
    rows = load_source_rows(_source(path))
    assert list(rows.ids) == ["x"] and rows.skipped == {"empty_report": 1}


def test_empty_ids_paths_and_reports_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text('id,image,report\n,a.png,r\nb,,r\nc,c.png,"  "\nd,d.png,r\n')
    rows = load_source_rows(_source(path))
    assert rows.skipped == {"empty_id": 1, "empty_image_path": 1, "empty_report": 1}
    assert [p.split(": ", 1)[1] for p in rows.problems] == ["empty_id", "empty_image_path", "empty_report"]
    assert rows.rows_in_file == 4 and list(rows.ids) == ["d"]


def test_a_missing_column_names_the_file_and_the_column(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("id,img\n1,a.png\n")
    with pytest.raises(ConfigError, match=r"m\.csv: key 'image': expected a column of the manifest"):
        load_source_rows(_source(path))


def test_parquet_and_a_bom_header_read_like_csv(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"id": ["a", "b", "a"], "image": ["1.png", "2.png", "3.png"], "report": ["r", "r", "r"], "y": [1, 0, 1]}
    )
    frame.to_parquet(tmp_path / "m.parquet")
    (tmp_path / "m.csv").write_bytes(b"\xef\xbb\xbf" + frame.to_csv(index=False).encode())
    for name in ("m.parquet", "m.csv"):
        rows = load_source_rows(_source(tmp_path / name, label_columns=("y",)))
        assert (
            list(rows.ids) == ["a", "b"]
            and rows.skipped == {"duplicate_id": 1}
            and rows.labels["y"] == {"1": 2, "0": 1}
        )


def test_read_manifest_refuses_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "pool.csv"
    path.write_bytes(b"report\nok\nbad \xff\n")
    with pytest.raises(ConfigError, match=r"row 3, column 'report'"):
        read_manifest(path, ["report"])


def test_string_columns_round_trip(tmp_path: Path) -> None:
    values = ["a", "", "Café", "x" * 300, "é"]
    column = StringColumn.from_strings(values)
    assert list(column) == values and column[2] == "Café" and column[-1] == "é" and column[1:3] == ["", "Café"]
    assert column.nbytes == len("".join(values).encode()) + 8 * (len(values) + 1)
    paths = PathColumn(tmp_path, StringColumn.from_strings(["a/b.png"]))
    assert paths[0] == tmp_path / "a" / "b.png" and list(paths) == [tmp_path / "a" / "b.png"]


def write_large_manifest(path: Path, rows: int, images: list[str]) -> None:
    """``rows`` rows whose image paths cycle over ``images`` (paths only, nothing decoded)."""
    index = np.arange(rows)
    frame = pd.DataFrame(
        {"id": [f"r{i:06d}" for i in index], "image": np.array(images, dtype=object)[index % len(images)]}
    )
    frame.to_csv(path, index=False)


def test_a_400k_row_manifest_is_kept_as_compact_columns(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    write_large_manifest(path, 400_000, ["images/a.png", "images/b.png", "images/c.png"])
    rows = load_source_rows(_source(path, report_column=None))
    assert len(rows) == 400_000 and rows.rows_in_file == 400_000 and not rows.skipped
    assert isinstance(rows.ids, StringColumn) and isinstance(rows.images, PathColumn)
    # 7-byte ids, 12-byte paths, 8-byte offsets each and an int64 row number: 43 bytes a row
    assert rows.nbytes == 400_000 * (7 + 12 + 8 + 8 + 8) + 2 * 8
    assert rows.ids[399_999] == "r399999" and rows.images[4] == tmp_path / "images" / "b.png"


# ------------------------------------------------------------------ CSV strictness and image roots
def test_a_report_with_line_breaks_is_one_row(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(
        'id,image,report\n1,a.png,"FINDINGS: heart normal, lungs clear.\nIMPRESSION: normal, stable, '
        'unchanged."\n2,b.png,fine\n'
    )
    rows = load_source_rows(_source(path))
    assert list(rows.reports or []) == [
        "FINDINGS: heart normal, lungs clear.\nIMPRESSION: normal, stable, unchanged.",
        "fine",
    ]
    assert not rows.skipped and list(rows.row_numbers) == [2, 3]


def test_an_extra_field_names_its_line_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("id,image,report\n1,a.png,clear\n2,b.png,no effusion, no edema\n3,c.png,fine\n")
    rows = load_source_rows(_source(path))
    assert list(rows.ids) == ["1", "3"] and list(rows.row_numbers) == [2, 4]
    assert rows.problems == [f"{path}:3: csv_fields (line 3: 4 fields, the header has 3)"]


def test_lines_swallowed_by_an_open_quote_come_back_as_their_rows(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text('id,image,report\n1,a.png,"no effusion\n2,b.png,clear\n3,c.png,"heart normal"\n')
    rows = load_source_rows(_source(path))
    assert list(rows.ids) == ["2", "3"] and list(rows.reports or []) == ["clear", "heart normal"]
    assert rows.skipped == {"csv_quote": 1}
    assert rows.problems == [f"{path}:2: csv_quote (line 2: ',' expected after '\"')"]


def test_read_manifest_refuses_a_broken_row_with_its_number(tmp_path: Path) -> None:
    path = tmp_path / "pool.csv"
    path.write_text("report\nfine\ntoo,many\n")
    with pytest.raises(
        ConfigError,
        match=r"pool.csv: key '\(row 3\)': expected a well-formed CSV row: csv_fields \(line 3: 2 fields, the "
        r"header has 1\)",
    ):
        read_manifest(path, ["report"])


def test_images_may_live_under_the_manifest_folder_or_an_image_root(tmp_path: Path) -> None:
    extra = tmp_path / "pacs"
    path = tmp_path / "site" / "m.csv"
    path.parent.mkdir()
    path.write_text(
        f"id,image,report\n1,img/a.png,r\n2,{extra}/b.png,r\n3,../pacs/c.png,r\n4,../other/d.png,r\n5,/etc/passwd,r\n6,img/../../pacs/../site/e.png,r\n"
    )
    confined = load_source_rows(_source(path))
    assert list(confined.ids) == ["1", "6"] and confined.skipped == {"image_outside_roots": 4}
    rooted = load_source_rows(_source(path, image_roots=(extra,)))
    assert list(rooted.ids) == ["1", "2", "3", "6"] and rooted.skipped == {"image_outside_roots": 2}
    assert f"{path}:5: image_outside_roots (image '../other/d.png' is outside" in rooted.problems[0]


def test_a_report_line_that_looks_like_a_row_is_kept_without_an_image_column(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text('id,report\n101,"FINDINGS: clear.\nUnchanged,stable"\n102,fine\n')
    rows = load_source_rows(_source(path, image_column=None))
    assert list(rows.ids) == ["101", "102"] and list(rows.reports or []) == [
        "FINDINGS: clear.\nUnchanged,stable",
        "fine",
    ]


def test_a_row_swallowed_by_an_open_quote_is_told_by_its_id_without_an_image_column(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text('id,report\n101,"no effusion\n102,5 mm nodule"\n103,fine\n')
    rows = load_source_rows(_source(path, image_column=None))
    assert list(rows.ids) == ["102", "103"] and list(rows.reports or []) == ['5 mm nodule"', "fine"]
    assert rows.skipped == {"csv_quote": 1}
