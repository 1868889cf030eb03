"""``fedvlp demo --quick --dicom``: hospital_b's images go through a DICOM export and the DICOM
importer, validate, and that site trains from the DICOM files in the federated round."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedvlp.core.config import RunConfig
from fedvlp.server.cli.main import main


def test_dicom_with_sites_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path / "run"), "--dicom", "--sites", str(tmp_path)]) == 2
    assert "--dicom: only for the synthetic world" in capsys.readouterr().err


@pytest.mark.slow
def test_a_federated_round_trains_hospital_b_from_its_dicom_export(
    demo_env: Path, tiny_run: RunConfig, world: Path, tmp_path: Path
) -> None:
    """What ``demo --dicom`` runs, minus the sweep: export, import, then one simulated round."""
    from fedvlp.core.data.dicom_demo import dicom_demo_sites
    from fedvlp.server.cli.simulation import simulate

    sites, _ = dicom_demo_sites(world, demo_env, tmp_path / "dicom", salt_file=tmp_path / "salt")
    manifest = (tmp_path / "dicom" / "hospital_b" / "manifest.csv").read_text(encoding="utf-8").splitlines()
    rows = len(manifest) - 1
    assert rows > 0 and all(line.split(",")[1].endswith(".dcm") for line in manifest[1:])
    records: list[dict] = []
    simulate(tiny_run.replace(sites=str(sites), rounds=1, local_steps=1), on_round=records.append)
    counts = {s["site"]: s["counts"] for s in records[0]["sites"]}
    assert records[0]["replies"] == 3 and counts["hospital_b"] == {"image": rows, "head.mim": rows}
