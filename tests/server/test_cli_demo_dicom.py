"""``fedvlp demo --quick --dicom``: hospital_b's images go through a DICOM export and the DICOM
importer, validate, and that site trains from the DICOM files in the federated round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedvlp.server.cli import main


def test_dicom_with_sites_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path / "run"), "--dicom", "--sites", str(tmp_path)]) == 2
    assert "--dicom: only for the synthetic world" in capsys.readouterr().err


@pytest.mark.slow
def test_the_quick_demo_trains_hospital_b_from_dicom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FEDVLP_HOME", str(tmp_path / "home"))  # the importer's salt is made there
    monkeypatch.setenv("FEDVLP_DEMO_DATA", "")  # restored after the demo sets it
    out = tmp_path / "run"
    assert main(["demo", "--quick", "--dicom", "--out", str(out), "--data", str(tmp_path / "world"), "--rounds", "1",
                 "--local-steps", "1", "--seeds", "1", "--fractions", "1", "--protocols", "linear"]) == 0
    printed = capsys.readouterr().out
    assert "hospital_b/manifest.csv: 120 rows (images, layout dicom)" in printed
    assert "hospital_b/manifest.csv: 120 rows, 120 usable (image)" in printed
    manifest = (out / "dicom" / "hospital_b" / "manifest.csv").read_text(encoding="utf-8").splitlines()
    assert len(manifest) == 121 and all(line.split(",")[1].endswith(".dcm") for line in manifest[1:])
    record = json.loads((out / "federated" / "checkpoints" / "round_0001.json").read_text())["history"][-1]
    sites = {s["site"]: s["counts"] for s in record["sites"]}
    assert record["replies"] == 3 and sites["hospital_b"] == {"image": 120, "head.mim": 120}
