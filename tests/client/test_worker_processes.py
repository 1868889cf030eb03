"""The worker's --devices / --nproc: checked at start, handed to the ClientApp it runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedvlp.client.worker import _set_processes, main
from fedvlp.core.distributed import DEVICES_ENV, NPROC_ENV


def _unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """No flags before the test, and none left after it (the worker sets them for its process;
    an empty value is no flag; setenv, unlike delenv of an absent name, is undone)."""
    monkeypatch.setenv(DEVICES_ENV, "")
    monkeypatch.setenv(NPROC_ENV, "")


def test_a_bad_nproc_stops_the_worker_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--nproc", "0"]) == 2
    assert capsys.readouterr().err.strip() == (
        "fedvlp.client.worker: fedvlp.client.worker --devices/--nproc: key 'nproc': expected a whole number of "
        "training processes >= 1, got 0"
    )


def test_several_processes_for_a_private_site_stop_the_worker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _unset(monkeypatch)
    (tmp_path / "m.csv").write_text("id,image\n")
    site = tmp_path / "dp.yaml"
    site.write_text("name: dp\nsources:\n  - manifest: m.csv\n    kind: images\nprivacy: {epsilon: 8}\n")
    assert main(["--nproc", "2", "--site-config", str(site)]) == 2
    err = capsys.readouterr().err
    assert "bad site file" in err and "key 'nproc'" in err and "privacy budget" in err


def test_the_flags_reach_the_clientapp_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    _unset(monkeypatch)
    assert _set_processes("cpu,cpu", None)
    assert (os.environ[DEVICES_ENV], os.environ[NPROC_ENV]) == ("cpu,cpu", "2")
