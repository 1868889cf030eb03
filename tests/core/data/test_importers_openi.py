"""OpenI / IU X-ray import from a fixture tree in the released layout: ecgen-radiology/N.xml
(eCitation, uId, AbstractText Label=..., MeSH major, parentImage id) and NLMCXR_png/<id>.png."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedvlp.core.config import ConfigError
from fedvlp.core.data.importers import import_layout
from fedvlp.core.data.reports import DEID_TOKEN
from fedvlp.server.cli.main import main
from tests.core.data.test_importers_common import (
    header_of,
    read_manifest,
    round_trip,
    write_image,
)


def _report(uid: str, sections: dict[str, str], major: list[str], images: list[str]) -> str:
    abstract = "\n".join(
        f'            <AbstractText Label="{label}">{text}</AbstractText>' for label, text in sections.items()
    )
    mesh = "\n".join(f"      <major>{term}</major>" for term in major)
    parents = "\n".join(
        f'   <parentImage id="{image}">\n      <figureId>F{i + 1}</figureId>\n      <caption>Xray Chest PA and '
        "Lateral</caption>\n"
        f'      <panel type="single"><url>/hadoop/storage/radiology/extract/{image}.jpg</url></panel>\n   '
        "</parentImage>"
        for i, image in enumerate(images)
    )
    return f"""<?xml version="1.0" encoding="utf-8"?>
<eCitation>
   <meta type="rr"/>
   <uId id="{uid}"/>
   <pmcId id="{uid[3:]}"/>
   <docSource>CXR</docSource>
   <IUXRId id="{uid[3:]}"/>
   <licenseType>open-access</licenseType>
   <MedlineCitation Owner="Indiana University" Status="supplied by publisher">
      <Article PubModel="Electronic">
         <ArticleTitle>Indiana University Chest X-ray Collection</ArticleTitle>
         <Abstract>
{abstract}
         </Abstract>
      </Article>
   </MedlineCitation>
   <MeSH>
{mesh}
   </MeSH>
{parents}
</eCitation>
"""


def make_openi(root: Path) -> Path:
    """Reports 1 (2 images, normal), 2 (2 images, one PNG missing), 3 (truncated XML),
    4 (no parentImage), 5 (empty sections, not indexed), 6 (1 image, cardiomegaly)."""
    xml = root / "ecgen-radiology"
    xml.mkdir(parents=True)
    (xml / "1.xml").write_text(
        _report(
            "CXR1",
            {
                "COMPARISON": "None.",
                "INDICATION": "Positive TB test",
                "FINDINGS": "The cardiac silhouette is within normal limits. There are no XXXX of a pleural effusion.",
                "IMPRESSION": "Normal chest x-XXXX.",
            },
            ["normal"],
            ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"],
        ),
        encoding="utf-8",
    )
    (xml / "2.xml").write_text(
        _report(
            "CXR2",
            {
                "COMPARISON": "None.",
                "INDICATION": "Preop bariatric surgery.",
                "FINDINGS": "Borderline cardiomegaly. Midline sternotomy XXXX. Inferior XXXX XXXX XXXX.",
                "IMPRESSION": "No acute pulmonary findings.",
            },
            ["Cardiomegaly/borderline", "Pulmonary Artery/enlarged"],
            ["CXR2_IM-0652-1001", "CXR2_IM-0652-2001"],
        ),
        encoding="utf-8",
    )
    (xml / "3.xml").write_text(
        _report("CXR3", {"FINDINGS": "Clear."}, ["normal"], ["CXR3_IM-1384-1001"])[:300], encoding="utf-8"
    )
    (xml / "4.xml").write_text(_report("CXR4", {"FINDINGS": "No acute disease."}, ["normal"], []), encoding="utf-8")
    (xml / "5.xml").write_text(
        _report("CXR5", {"COMPARISON": "", "FINDINGS": "", "IMPRESSION": ""}, ["No Indexing"], ["CXR5_IM-2050-1001"]),
        encoding="utf-8",
    )
    (xml / "6.xml").write_text(
        _report(
            "CXR6",
            {"FINDINGS": "Mild cardiomegaly.", "IMPRESSION": "Cardiomegaly."},
            ["Cardiomegaly/mild"],
            ["CXR6_IM-2192-1001"],
        ),
        encoding="utf-8",
    )
    png = root / "NLMCXR_png"
    for name in (
        "CXR1_1_IM-0001-3001",
        "CXR1_1_IM-0001-4001",
        "CXR2_IM-0652-1001",
        "CXR3_IM-1384-1001",
        "CXR4_IM-2000-1001",
        "CXR5_IM-2050-1001",
        "CXR6_IM-2192-1001",
    ):
        write_image(png / f"{name}.png")
    return root


@pytest.fixture()
def openi(tmp_path: Path) -> Path:
    return make_openi(tmp_path / "iu_xray")


def test_cli_writes_one_row_per_image_with_study_id(openi: Path, tmp_path: Path) -> None:
    out = tmp_path / "site" / "manifest.csv"
    assert main(["import", "openi", str(openi), "--out", str(out)]) == 0
    rows = read_manifest(out)
    assert [(r["id"], r["study_id"], r["patient_id"], r["view"]) for r in rows] == [
        ("CXR1_1_IM-0001-3001", "CXR1", "CXR1", ""),
        ("CXR1_1_IM-0001-4001", "CXR1", "CXR1", ""),
        ("CXR2_IM-0652-1001", "CXR2", "CXR2", ""),
        ("CXR6_IM-2192-1001", "CXR6", "CXR6", ""),
    ]
    assert rows[0]["image"] == "../iu_xray/NLMCXR_png/CXR1_1_IM-0001-3001.png"


def test_sections_come_from_abstract_text_labels(openi: Path, tmp_path: Path) -> None:
    row = read_manifest(import_layout("openi", openi, tmp_path / "m.csv").manifest)[0]
    assert (row["indication"], row["comparison"]) == ("Positive TB test", "None.")
    assert (
        row["findings"]
        == f"The cardiac silhouette is within normal limits. There are no {DEID_TOKEN} of a pleural effusion."
    )
    assert row["impression"] == f"Normal chest x-{DEID_TOKEN}."
    assert row["report"] == (
        f"INDICATION: Positive TB test COMPARISON: None. FINDINGS: {row['findings']} IMPRESSION: {row['impression']}"
    )


def test_adjacent_xxxx_placeholders_become_one_token(openi: Path, tmp_path: Path) -> None:
    row = read_manifest(import_layout("openi", openi, tmp_path / "m.csv").manifest)[2]
    assert row["findings"] == f"Borderline cardiomegaly. Midline sternotomy {DEID_TOKEN}. Inferior {DEID_TOKEN}."


def test_mesh_major_terms_become_label_columns(openi: Path, tmp_path: Path) -> None:
    result = import_layout("openi", openi, tmp_path / "m.csv")
    assert result.label_columns == ["label_Cardiomegaly", "label_normal", "label_Pulmonary_Artery"]
    rows = read_manifest(result.manifest)
    assert [(r["label_Cardiomegaly"], r["label_normal"], r["label_Pulmonary_Artery"]) for r in rows] == [
        ("0", "1", "0"),
        ("0", "1", "0"),
        ("1", "0", "1"),
        ("1", "0", "0"),
    ]


def test_min_label_count_drops_rare_terms(openi: Path, tmp_path: Path) -> None:
    # Counted over readable reports: normal in 1 and 4, Cardiomegaly in 2 and 6, Pulmonary Artery in 2.
    result = import_layout("openi", openi, tmp_path / "m.csv", min_label_count=2)
    assert result.label_columns == ["label_Cardiomegaly", "label_normal"]
    assert header_of(result.manifest)[-2:] == ["label_Cardiomegaly", "label_normal"]


def test_skips_are_counted_per_reason(openi: Path, tmp_path: Path) -> None:
    result = import_layout("openi", openi, tmp_path / "m.csv")
    assert result.rows == 4
    assert dict(result.skipped) == {"missing_image": 1, "unreadable_xml": 1, "no_image": 1, "empty_report": 1}
    assert any("3.xml" in p and "unreadable_xml" in p for p in result.problems)
    assert any("CXR2_IM-0652-2001.png" in p for p in result.problems)


def test_images_option_points_at_another_folder(openi: Path, tmp_path: Path) -> None:
    moved = tmp_path / "pngs"
    (openi / "NLMCXR_png").rename(moved)
    result = import_layout("openi", openi, tmp_path / "m.csv", images=moved)
    assert result.rows == 4 and read_manifest(result.manifest)[0]["image"] == "pngs/CXR1_1_IM-0001-3001.png"


def test_round_trip_into_a_site(openi: Path, tmp_path: Path) -> None:
    rows = round_trip(import_layout("openi", openi, tmp_path / "data" / "manifest.csv"), tmp_path)
    assert list(rows.ids) == ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001", "CXR2_IM-0652-1001", "CXR6_IM-2192-1001"]
    assert rows.images is not None and all(p.is_file() for p in rows.images)
    assert rows.source.label_columns == ("label_Cardiomegaly", "label_normal", "label_Pulmonary_Artery")


def test_a_report_without_abstract_names_the_file_and_element(openi: Path, tmp_path: Path) -> None:
    (openi / "ecgen-radiology" / "7.xml").write_text(
        "<eCitation><uId id='CXR7'/><MeSH><major>normal</major></MeSH></eCitation>", encoding="utf-8"
    )
    with pytest.raises(ConfigError, match=r"7\.xml: key '<Abstract>'"):
        import_layout("openi", openi, tmp_path / "m.csv")


def test_a_folder_without_reports_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="ecgen-radiology/\\*\\.xml"):
        import_layout("openi", tmp_path / "empty", tmp_path / "m.csv")
