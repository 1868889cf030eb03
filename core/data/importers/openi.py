"""OpenI / Indiana University chest X-ray collection: one XML file per report
(``ecgen-radiology/*.xml`` from ``NLMCXR_reports.tgz``) naming its images
(``<parentImage id="CXR1_1_IM-0001-3001">`` -> ``CXR1_1_IM-0001-3001.png`` from ``NLMCXR_png.tgz``)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from ...config import ConfigError
from .common import (
    BASE_COLUMNS,
    ImportResult,
    ManifestWriter,
    image_reference,
    label_column,
    report_fields,
)

__all__ = ["import_openi"]

_SECTION_LABELS = {
    "FINDINGS": "findings",
    "IMPRESSION": "impression",
    "INDICATION": "indication",
    "COMPARISON": "comparison",
}
_NO_TERMS = {"no indexing"}  # IU's marker for a report nobody indexed: its labels are unknown
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _xml_files(src: Path) -> list[Path]:
    folder = src / "ecgen-radiology" if (src / "ecgen-radiology").is_dir() else src
    files = sorted(folder.glob("*.xml"), key=lambda p: (int(p.stem) if p.stem.isdigit() else 1 << 62, p.name))
    if not files:
        raise ConfigError(
            str(folder), "(file)", "IU X-ray report files ecgen-radiology/*.xml (from NLMCXR_reports.tgz)"
        )
    return files


def _image_folder(src: Path, images: Path | None) -> Path:
    if images is not None:
        if not Path(images).is_dir():
            raise ConfigError("command line", "--images", "an existing folder of IU X-ray images", str(images))
        return Path(images)
    for candidate in (src / "NLMCXR_png", src / "images", src):
        if candidate.is_dir():
            return candidate
    return src


def _parse(path: Path) -> ET.Element:
    """The ``<eCitation>`` root, checked for the elements every IU report has."""
    root = ET.parse(path).getroot()
    if root.tag != "eCitation":
        raise ConfigError(str(path), "<eCitation>", "an IU X-ray report (root element eCitation)", root.tag)
    if root.find(".//Abstract") is None:
        raise ConfigError(str(path), "<Abstract>", "the report's <Abstract> with <AbstractText Label=...> sections")
    return root


def _terms(root: ET.Element) -> list[str] | None:
    """Heads of the MeSH major terms (``Cardiomegaly/mild`` -> ``Cardiomegaly``), or ``None``
    when the report was not indexed."""
    heads = [re.split(r"/", (m.text or "").strip())[0].strip() for m in root.findall("./MeSH/major")]
    heads = [h for h in heads if h]
    if not heads or {h.lower() for h in heads} <= _NO_TERMS:
        return None
    return list(dict.fromkeys(heads))


def import_openi(
    src: Path,
    out: Path,
    *,
    images: Path | None = None,
    min_label_count: int = 1,
    absolute_paths: bool = False,
) -> ImportResult:
    """Import IU X-ray reports and images into one manifest row per image.

    Parameters
    ----------
    src
        The folder holding ``ecgen-radiology/`` (or the XML files themselves).
    out
        The manifest to write.
    images
        The folder of the PNGs (default: ``src/NLMCXR_png``, ``src/images`` or ``src``).
    min_label_count
        MeSH major-term heads given to fewer reports get no ``label_*`` column.
    absolute_paths
        Write absolute image paths instead of paths relative to the manifest's folder.

    Returns
    -------
    ImportResult
        ``study_id`` and ``patient_id`` are the report id (``CXR1``; IU X-ray publishes no
        patient ids), ``view`` is blank (IU X-ray names no projection). Skipped and counted:
        ``unreadable_xml``, ``empty_report`` (no section text), ``no_image`` (a report without
        ``parentImage``), ``missing_image`` (the named file is not in the image folder).

    Raises
    ------
    ConfigError
        When no XML file exists, or a readable XML file is not an IU report (names the file
        and the element expected).
    """
    src, out = Path(src), Path(out)
    files = _xml_files(src)
    image_dir = _image_folder(src, images)
    result = ImportResult("openi", out)
    # Pass 1 reads only the MeSH terms, so that the label columns are known before the
    # first row is written; pass 2 streams the rows.
    counts: Counter[str] = Counter()
    for path in files:
        try:
            root = _parse(path)
        except ET.ParseError:
            continue
        counts.update(_terms(root) or [])
    terms = sorted((t for t, n in counts.items() if n >= min_label_count), key=str.lower)
    columns = (*BASE_COLUMNS, *(label_column(t) for t in terms))
    if len(set(columns)) != len(columns):
        raise ConfigError(str(src), "MeSH major", "terms whose label column names differ")
    with ManifestWriter(out, columns, result) as writer:
        for path in files:
            try:
                root = _parse(path)
            except ET.ParseError as err:
                result.skip("unreadable_xml", f"{path}: {err}")
                continue
            uid = root.find("./uId")
            study = (uid.get("id") if uid is not None else None) or f"CXR{path.stem}"
            sections = {
                _SECTION_LABELS[label]: "".join(node.itertext()).strip()
                for node in root.iter("AbstractText")
                if (label := (node.get("Label") or "").upper()) in _SECTION_LABELS
            }
            fields = report_fields(sections=sections)
            if not fields["report"]:
                result.skip("empty_report", str(path))
                continue
            found = _terms(root)
            labels = {label_column(t): ("" if found is None else str(int(t in found))) for t in terms}
            parents = [p.get("id", "").strip() for p in root.findall("./parentImage")]
            parents = [p for p in parents if p]
            if not parents:
                result.skip("no_image", f"{path}: report {study} has no <parentImage>")
                continue
            for image_id in parents:
                image = next(
                    (image_dir / f"{image_id}{s}" for s in _IMAGE_SUFFIXES if (image_dir / f"{image_id}{s}").is_file()),
                    None,
                )
                if image is None:
                    result.skip("missing_image", f"{path}: {image_dir / (image_id + '.png')}")
                    continue
                writer.write(
                    {
                        "id": image_id,
                        "image": image_reference(image, out.parent, absolute_paths),
                        **fields,
                        "study_id": study,
                        "patient_id": study,
                        **labels,
                    }
                )
    return result
