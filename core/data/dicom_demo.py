"""The quick demo's DICOM path: the images-only demo site written as a PACS-style export of
DICOM files, imported back with ``fedvlp import dicom``, so that the site trains from DICOM.

Each PNG becomes one single-frame DX file (one study per image), 8-bit MONOCHROME2, with a
``LINEAR_EXACT`` window of center 127.5 and width 255: its display values are exactly the PNG's
grey levels divided by 255, so the imported site sees the very pixels of the PNG site.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from .importers.common import ImportResult, site_yaml
from .importers.dicom import import_dicom

__all__ = ["DX_SOP_CLASS", "write_dicom_copies", "dicom_demo_sites"]

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
_DICOM_SITE = "hospital_b"


def _uid(kind: str, key: str) -> str:
    from pydicom.uid import generate_uid

    # deterministic (a hash of the key under the 2.25 root): the same world gives the same export
    return generate_uid(prefix=None, entropy_srcs=[kind, key])


def _write_one(path: Path, pixels: np.ndarray, image_id: str, patient_id: str) -> Path:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = UID(DX_SOP_CLASS)
    meta.MediaStorageSOPInstanceUID = UID(_uid("image", image_id))
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = DX_SOP_CLASS, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid("study", image_id), _uid("series", image_id)
    ds.Modality, ds.PatientID, ds.ViewPosition = "DX", patient_id, "PA"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = "127.5", "255", "LINEAR_EXACT"
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_dicom_copies(manifest: str | Path, out_dir: str | Path) -> list[Path]:
    """Write every image of an images manifest (columns ``id``, ``image``, ``patient_id``; image
    paths relative to the manifest's folder) as a DICOM file ``out_dir/<patient_id>/<id>.dcm``.

    Parameters
    ----------
    manifest
        The site's manifest, e.g. the demo world's ``hospital_b/manifest.csv``.
    out_dir
        The export folder (created; files already there are overwritten).

    Returns
    -------
    list[Path]
        The files written, in manifest order.

    Raises
    ------
    ValueError
        When a row's image is not 8-bit grey (mode ``L``), naming the file.
    """
    manifest, out_dir = Path(manifest), Path(out_dir)
    written: list[Path] = []
    with manifest.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            source = manifest.parent / row["image"]
            with Image.open(source) as image:
                if image.mode != "L":
                    raise ValueError(f"{source}: image mode {image.mode}; expected 8-bit grey (L)")
                pixels = np.asarray(image)
            patient = row.get("patient_id") or "unknown"
            written.append(_write_one(out_dir / patient / f"{row['id']}.dcm", pixels, row["id"], patient))
    return written


def dicom_demo_sites(
    world: str | Path, sites: str | Path, out_dir: str | Path, *, salt_file: str | Path | None = None
) -> tuple[Path, ImportResult]:
    """A copy of the demo's site folder in which ``hospital_b`` is imported from DICOM files.

    ``hospital_b``'s PNGs are written as DICOM into ``out_dir/export``, imported into
    ``out_dir/hospital_b/manifest.csv`` and its site file written as ``out_dir/sites/hospital_b.yaml``;
    the other site files of ``sites`` are copied unchanged.

    Returns
    -------
    tuple[Path, ImportResult]
        The new site folder (``out_dir/sites``) and the import's result (rows, skipped counts).
    """
    world, sites, out_dir = Path(world), Path(sites), Path(out_dir)
    export = out_dir / "export"
    if export.exists():  # a previous world's export: start clean so the import matches this world
        shutil.rmtree(export)
    write_dicom_copies(world / _DICOM_SITE / "manifest.csv", export)
    result = import_dicom(export, out_dir / _DICOM_SITE / "manifest.csv", salt_file=salt_file)
    site_dir = out_dir / "sites"
    site_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(sites.glob("*.yaml")):
        if path.stem != _DICOM_SITE:
            shutil.copy(path, site_dir / path.name)
    target = site_dir / f"{_DICOM_SITE}.yaml"
    target.write_text(site_yaml(result, _DICOM_SITE, target), encoding="utf-8")
    return site_dir, result
