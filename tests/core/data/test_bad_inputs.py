"""Every kind of bad site input, run through what training reads (site file, manifest rows,
images), with its outcome: a clear error naming the file and the key or row, or the row skipped
and counted under its reason while every other row stays exactly as written.

The table is the measure of issue 12's input figures (inputs tried / clear errors /
skipped-and-counted / converted / silently wrong): :func:`test_the_figures` prints them.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import tifffile
from PIL import Image

from fedvlp.core.config import ConfigError, load_site
from fedvlp.core.data.images import ImagePolicy, decode_gray
from fedvlp.core.data.manifest import read_manifest
from fedvlp.core.data.validate import validate_site
from tests.core.data.test_images import colour_png, png16, png_header_only, truncated_png

HEADER = "id,image,report,label_x"
GOOD = [
    "g1,images/g1.png,clear lungs,0",
    'g2,images/g2.png,"no effusion, no edema",1',
    "g3,images/g3.png,normal heart,",
]
GOOD_ROWS = [
    ("g1", "g1.png", "clear lungs"),
    ("g2", "g2.png", "no effusion, no edema"),
    ("g3", "g3.png", "normal heart"),
]


@dataclass(frozen=True)
class RowCase:
    """A manifest with the good rows around one bad line (``{dir}``: the site folder)."""

    name: str
    line: str | bytes
    reason: str
    prepare: Callable[[Path], None] | None = None
    accept: str = ""


def _garbage(site: Path) -> None:
    (site / "images" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png at all")


def _fifo(site: Path) -> None:
    os.mkfifo(site / "images" / "bad.png")


def _float_tiff(value: float) -> Callable[[Path], None]:
    def make(site: Path) -> None:
        array = np.array([[0.0, 1.0], [2.0, value]], dtype=np.float32)
        tifffile.imwrite(site / "images" / "bad.tif", array)

    return make


ROW_CASES = [
    RowCase("unquoted comma in a report (extra field)", "b1,images/b1.png,no effusion, no edema,0", "csv_fields"),
    RowCase("row with too few fields", "b1,images/b1.png", "csv_fields"),
    RowCase("row with too many fields", "b1,images/b1.png,ok,0,1,2", "csv_fields"),
    RowCase("unterminated quote, a quoted field later", 'b1,images/b1.png,"no effusion,0', "csv_quote"),
    RowCase(
        "unterminated quote closed by a stray inch mark",
        'b1,images/b1.png,"no effusion,0\ng9,images/g9.png,5 mm",1',
        "csv_quote",
        lambda s: Image.new("L", (8, 8), 90).save(s / "images" / "g9.png"),
    ),
    RowCase("text after a closing quote", 'b1,images/b1.png,"no" effusion,0', "csv_quote"),
    RowCase("bytes that are not UTF-8", b"b1,images/b1.png,caf\xe9,0", "non_utf8"),
    RowCase("empty id", " ,images/b1.png,ok,0", "empty_id"),
    RowCase("empty image path", "b1, ,ok,0", "empty_image_path"),
    RowCase("empty report", "b1,images/b1.png,,0", "empty_report"),
    RowCase("label that is not 0/1", "b1,images/b1.png,ok,2", "bad_label"),
    RowCase("duplicate id", "g1,images/g1.png,again,0", "duplicate_id"),
    RowCase("image path escaping with ..", "b1,../other_site/x.png,ok,0", "image_outside_roots"),
    RowCase("absolute image path outside the roots", "b1,/etc/hostname,ok,0", "image_outside_roots"),
    RowCase("missing image", "b1,images/nope.png,ok,0", "image_missing"),
    RowCase("FIFO named .png", "b1,images/bad.png,ok,0", "image_not_file", _fifo),
    RowCase(
        "folder named .png", "b1,images/bad.png,ok,0", "image_not_file", lambda s: (s / "images" / "bad.png").mkdir()
    ),
    RowCase("garbage bytes named .png", "b1,images/bad.png,ok,0", "image_corrupt", _garbage),
    RowCase(
        "PNG cut in half",
        "b1,images/bad.png,ok,0",
        "image_truncated",
        lambda s: truncated_png(s / "images" / "bad.png") and None,
    ),
    RowCase(
        "header claiming 9000x9000",
        "b1,images/bad.png,ok,0",
        "image_huge",
        lambda s: png_header_only(s / "images" / "bad.png", 9000, 9000) and None,
    ),
    RowCase(
        "16-bit PNG not accepted",
        "b1,images/bad.png,ok,0",
        "image_16bit",
        lambda s: png16(s / "images" / "bad.png") and None,
    ),
    RowCase(
        "colour image not accepted",
        "b1,images/bad.png,ok,0",
        "image_rgb",
        lambda s: colour_png(s / "images" / "bad.png") and None,
    ),
    RowCase(
        "float TIFF with a NaN", "b1,images/bad.tif,ok,0", "image_nonfinite", _float_tiff(float("nan")), accept="16bit"
    ),
    RowCase(
        "float TIFF with an Inf", "b1,images/bad.tif,ok,0", "image_nonfinite", _float_tiff(float("inf")), accept="16bit"
    ),
]


def _site(tmp_path: Path, case: RowCase) -> Path:
    site = tmp_path / "site"
    (site / "images").mkdir(parents=True)
    for name in ("g1", "g2", "g3"):
        Image.fromarray(np.full((8, 8), 100, dtype=np.uint8), mode="L").save(site / "images" / f"{name}.png")
    if case.prepare is not None:
        case.prepare(site)
    bad = case.line if isinstance(case.line, bytes) else case.line.encode("utf-8")
    lines = [HEADER.encode(), GOOD[0].encode(), bad, GOOD[1].encode(), GOOD[2].encode()]
    (site / "manifest.csv").write_bytes(b"\n".join(lines) + b"\n")
    accept = f"    accept: [{case.accept}]\n" if case.accept else ""
    (site / "site.yaml").write_text(
        f"name: t\nsources:\n  - manifest: manifest.csv\n    kind: pairs\n    label_columns: [label_x]\n{accept}"
    )
    return site / "site.yaml"


def _validate_with_deadline(site_file: Path, seconds: float = 60.0):  # noqa: ANN202 - a list of SourceReport
    """validate_site in a thread: a reader that blocks (a FIFO) fails the test instead of hanging it."""
    out: list = []
    worker = threading.Thread(target=lambda: out.append(validate_site(load_site(site_file))), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"validate-site still running after {seconds} s"
    return out[0]


def _kept_rows(site_file: Path) -> list[tuple[str, str, str]]:
    from fedvlp.core.data.manifest import load_source_rows

    rows = load_source_rows(load_site(site_file).sources[0])
    return [(i, Path(p).name, r) for i, p, r in zip(rows.ids, rows.images, rows.reports)]


@pytest.mark.parametrize("case", ROW_CASES, ids=[c.name for c in ROW_CASES])
def test_a_bad_row_is_skipped_and_counted_and_changes_no_other_row(tmp_path: Path, case: RowCase) -> None:
    site_file = _site(tmp_path, case)
    # the line swallowed by the stray-quote case is a good row of its own and must come back as written
    swallowed = [("g9", "g9.png", '5 mm"')] if "stray" in case.name else []
    [report] = _validate_with_deadline(site_file)
    assert report.skipped == {case.reason: 1}
    assert report.usable == 3 + len(swallowed)
    # every other row reads exactly as written (rows b1 pass the row checks when only their image is bad)
    assert [row for row in _kept_rows(site_file) if row[0] != "b1"] == GOOD_ROWS[:1] + swallowed + GOOD_ROWS[1:]
    assert any(f"manifest.csv:3: {case.reason}" in p for p in report.problems)


# ------------------------------------------------------------------------ clear errors
def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


ERROR_CASES: list[tuple[str, Callable[[Path], object], str]] = [
    (
        "typo'd key in a site file",
        lambda d: load_site(_write(d / "s.yaml", "name: t\nsources:\n  - manifest: m.csv\n    report_colum: r\n")),
        "s.yaml: key 'sources[0].report_colum'",
    ),
    (
        "image_roots not a list",
        lambda d: load_site(_write(d / "s.yaml", "name: t\nimage_roots: /data\nsources:\n  - manifest: m.csv\n")),
        "s.yaml: key 'image_roots': expected a list",
    ),
    (
        "image_roots naming a missing folder",
        lambda d: load_site(_write(d / "s.yaml", "name: t\nimage_roots: [nowhere]\nsources:\n  - manifest: m.csv\n")),
        "s.yaml: key 'image_roots[0]': expected an existing folder",
    ),
    (
        "manifest lacking the report column",
        lambda d: validate_site(
            load_site(_write(d / "s.yaml", "name: t\nsources:\n  - manifest: m.csv\n"))
            if _write(d / "m.csv", "id,image\n1,a.png\n")
            else None
        ),
        "m.csv: key 'report'",
    ),
    (
        "unterminated quote in the header",
        lambda d: validate_site(
            load_site(_write(d / "s.yaml", "name: t\nsources:\n  - manifest: m.csv\n"))
            if _write(d / "m.csv", 'id,"image,report\n1,a.png,x\n')
            else None
        ),
        "m.csv: key '(header)'",
    ),
    (
        "broken row in a public text pool",
        lambda d: read_manifest(_write(d / "pool.csv", 'report\nfine\n"open quote\n'), ["report"]),
        "pool.csv: key '(row 3)': expected a well-formed CSV row: csv_quote",
    ),
]


@pytest.mark.parametrize(("name", "act", "message"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_a_bad_setting_is_a_clear_error(tmp_path: Path, name: str, act: Callable[[Path], object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        act(tmp_path)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


# ------------------------------------------------------------------- converted exactly
# Each 2 x 2 array is drawn as 5 x 5 blocks (every value on 25 of 100 pixels), so the percentile
# window's 0.5th and 99.5th percentiles are exactly the minimum and the maximum: the 8-bit pixels
# below are (x - min) * 255 / (max - min), rounded, by hand.
CONVERT_CASES = [
    # (name, array, 8-bit pixels by hand)
    (
        "signed 16-bit TIFF -1000..1000: min..max",
        np.array([[-1000, 0], [500, 1000]], dtype=np.int16),
        [[0, 128], [191, 255]],
    ),
    (
        "int32 TIFF with negatives: min..max",
        np.array([[-100000, 0], [50000, 100000]], dtype=np.int32),
        [[0, 128], [191, 255]],
    ),
    (
        "uint32 TIFF above 2**31: 0..max",
        np.array([[0, 1_000_000_000], [2_000_000_000, 4_000_000_000]], dtype=np.uint32),
        [[0, 64], [128, 255]],
    ),
    ("float32 TIFF -1..1: min..max", np.array([[-1.0, 0.0], [0.5, 1.0]], dtype=np.float32), [[0, 128], [191, 255]]),
    ("float32 TIFF 0..0.5: 0..max", np.array([[0.0, 0.125], [0.25, 0.5]], dtype=np.float32), [[0, 64], [128, 255]]),
    ("signed 8-bit TIFF -100..100: min..max", np.array([[-100, 0], [50, 100]], dtype=np.int8), [[0, 128], [191, 255]]),
]


@pytest.mark.parametrize(("name", "array", "expected"), CONVERT_CASES, ids=[c[0] for c in CONVERT_CASES])
def test_an_accepted_high_depth_image_is_read_with_its_real_sample_type(
    tmp_path: Path, name: str, array: np.ndarray, expected: list[list[int]]
) -> None:
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, np.repeat(np.repeat(array, 5, axis=0), 5, axis=1))
    pixels = np.asarray(decode_gray(path, ImagePolicy(accept_16bit=True)))
    assert pixels[::5, ::5].tolist() == expected
    assert (pixels == np.repeat(np.repeat(np.array(expected), 5, axis=0), 5, axis=1)).all()


def test_the_figures(capsys: pytest.CaptureFixture[str]) -> None:
    """The figures of the table (every case above asserts its own outcome; none is silent)."""
    outcomes = Counter(
        {
            "skipped-and-counted": len(ROW_CASES),
            "clear errors": len(ERROR_CASES),
            "converted exactly": len(CONVERT_CASES),
        }
    )
    tried = sum(outcomes.values())
    with capsys.disabled():
        print(
            f"\nbad inputs tried {tried}: " + ", ".join(f"{k} {v}" for k, v in outcomes.items()) + ", silently wrong 0"
        )
    assert tried == 36 and set(Counter(c.reason for c in ROW_CASES)) >= {
        "csv_fields",
        "csv_quote",
        "image_outside_roots",
        "image_not_file",
        "image_nonfinite",
    }
