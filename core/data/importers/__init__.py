"""Importers: public chest X-ray layouts, any CSV, or a folder of DICOM files -> one site manifest.

``fedvlp import LAYOUT SRC --out MANIFEST`` calls :func:`import_layout`. Every importer streams
its input, never opens an image (it only checks that the file exists), counts every row it
drops with the reason, and writes the column conventions of site files (see
``docs/importing.md``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...config import ConfigError
from .chexpert import import_chexpert
from .common import UNCERTAIN_POLICIES, ImportResult, site_yaml
from .dicom import import_dicom
from .folder import import_folder
from .generic import import_generic, parse_mapping
from .mimic import import_mimic_cxr_jpg
from .nih import import_nih
from .openi import import_openi

__all__ = ["LAYOUTS", "ImportResult", "import_layout", "layout_options", "parse_mapping", "site_yaml"]

LAYOUTS: dict[str, Callable[..., ImportResult]] = {
    "mimic-cxr-jpg": import_mimic_cxr_jpg,
    "openi": import_openi,
    "chexpert": import_chexpert,
    "nih": import_nih,
    "folder": import_folder,
    "generic": import_generic,
    "dicom": import_dicom,
}


def layout_options(layout: str) -> list[str]:
    """The keyword options a layout's importer accepts."""
    parameters = inspect.signature(LAYOUTS[layout]).parameters.values()
    return [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]


def import_layout(layout: str, src: str | Path, out: str | Path, **options: Any) -> ImportResult:
    """Import ``src`` in ``layout`` into the manifest ``out``.

    Parameters
    ----------
    layout
        One of :data:`LAYOUTS`.
    src
        The dataset folder (the CSV file for ``generic``, the folder of DICOM files for ``dicom``).
    out
        The manifest CSV to write (its folder is created).
    **options
        Options of the layout's importer (see :func:`layout_options`), e.g. ``uncertain``.

    Raises
    ------
    ConfigError
        For an unknown layout, an option the layout does not take, or malformed input
        (naming the file and the column or element expected).
    """
    if layout not in LAYOUTS:
        raise ConfigError("command line", "LAYOUT", f"one of {sorted(LAYOUTS)}", layout)
    accepted = layout_options(layout)
    for name in options:
        if name not in accepted:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(
                "command line",
                flag,
                f"an option of layout '{layout}' (it takes {['--' + a.replace('_', '-') for a in accepted]})",
            )
    if options.get("uncertain", "blank") not in UNCERTAIN_POLICIES:
        raise ConfigError("command line", "--uncertain", f"one of {list(UNCERTAIN_POLICIES)}", options["uncertain"])
    src, out = Path(src), Path(out)
    if not src.exists():
        raise ConfigError(str(src), "(path)", "an existing dataset folder (or CSV file for 'generic')")
    if out.suffix.lower() != ".csv":
        raise ConfigError("command line", "--out", "a .csv manifest path", str(out))
    return LAYOUTS[layout](src, out, **options)
