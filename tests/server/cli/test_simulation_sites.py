"""``fedvlp simulate`` checks every site file before the simulation engine starts."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from fedvlp.core.config import ConfigError, RunConfig, project_root
from fedvlp.server.cli.main import main
from fedvlp.server.cli.simulation import validate_sites


def _sites_with_typo(tmp_path: Path) -> Path:
    folder = tmp_path / "sites"
    shutil.copytree(project_root() / "sites" / "demo", folder)
    bad = folder / "hospital_c.yaml"
    bad.write_text(bad.read_text().replace("report_column:", "report_colum:"))
    return folder


def test_a_typo_in_one_site_file_names_the_file_and_the_key(tmp_path: Path) -> None:
    folder = _sites_with_typo(tmp_path)
    with pytest.raises(ConfigError) as caught:
        validate_sites(RunConfig(sites=str(folder)))
    assert caught.value.origin == str(folder / "hospital_c.yaml")
    assert caught.value.key == "sources[0].report_colum"


def test_simulate_stops_with_one_line_before_ray_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _sites_with_typo(tmp_path)
    environment = dict(os.environ)
    code = main(["simulate", "--run-config", f"sites='{folder}'", "rounds=1"])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert str(folder / "hospital_c.yaml") in lines[0] and "'sources[0].report_colum'" in lines[0]
    assert dict(os.environ) == environment  # stopped before the run's environment was set up
    if "ray" in sys.modules:  # imported by flwr.simulation, but never initialised
        assert not sys.modules["ray"].is_initialized()


def test_a_key_the_models_family_ignores_stops_simulate_before_ray_starts(tmp_path: Path) -> None:
    from fedvlp.server.cli.simulation import simulate

    run = RunConfig(recipe="refers", mask_ratio=0.3, out_dir=str(tmp_path / "run"))  # REFERS masks nothing
    with pytest.raises(ConfigError) as caught:
        simulate(run)
    assert caught.value.key == "mask-ratio"
    assert "ray" not in sys.modules or not __import__("ray").is_initialized()
    assert not (tmp_path / "run").exists()
