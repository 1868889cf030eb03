"""``fedvlp import dicom`` shows the files it has walked on a terminal, and nothing when quiet."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from fedvlp.core.data.importers import import_layout
from tests.core.data.test_importers_dicom import SALT, make_export


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    salt = tmp_path / "salt"
    salt.write_text(SALT, encoding="utf-8")
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    result = import_layout("dicom", make_export(tmp_path / "export"), tmp_path / "m.csv", salt_file=salt)
    assert result.rows == 4  # IM1, IM2, IM3, IM8 (the others are skipped by reason)
    return terminal.getvalue()


def test_the_walk_counts_every_file_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDVLP_QUIET", raising=False)
    # 11 files: 8 images, a structured report, notes.txt and .DS_Store
    assert "DICOM files: 11 files" in _import(tmp_path, monkeypatch)


def test_quiet_shows_no_bar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDVLP_QUIET", "1")
    assert _import(tmp_path, monkeypatch) == ""
