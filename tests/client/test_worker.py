"""The ClientApp worker runs fedvlp's own ClientApp only (its end-to-end behaviour is covered
by the real-process tests in tests/server/cli/test_tls_auth.py and tests/server/app/test_faults.py)."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

from fedvlp.client.worker import CLIENTAPP_REF, _fab_clientapp
from fedvlp.core.config import project_root


def _fab(pyproject: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("pyproject.toml", pyproject)
    return buf.getvalue()


def test_the_project_fab_names_the_clientapp_the_worker_runs() -> None:
    assert (
        _fab_clientapp(_fab((project_root() / "pyproject.toml").read_text()))
        == CLIENTAPP_REF
        == "fedvlp.client.app:app"
    )


def test_another_apps_fab_is_told_apart() -> None:
    text = (
        (project_root() / "pyproject.toml")
        .read_text()
        .replace('clientapp = "fedvlp.client.app:app"', 'clientapp = "other.client:app"')
    )
    assert _fab_clientapp(_fab(text)) == "other.client:app"


def _run_worker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedvlp.client.worker", "--runtime-api-address", "127.0.0.1:9", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_worker_refuses_to_start_on_a_bad_site_file(tmp_path: Path) -> None:
    site = tmp_path / "hospital_a.yaml"
    site.write_text(
        (project_root() / "sites" / "demo" / "hospital_a.yaml").read_text().replace("report_column:", "report_colum:")
    )
    done = _run_worker("--site-config", str(site))
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"fedvlp.client.worker: bad site file: {site}: key 'sources[0].report_colum': expected one of "
        "['accept', 'id_column', 'image_column', 'kind', 'label_columns', 'manifest', 'max_image_pixels', "
        "'pool_report_column', 'report_column', 'unpaired_text_pool']"
    )


def test_the_worker_refuses_a_missing_site_file(tmp_path: Path) -> None:
    done = _run_worker("--site-config", str(tmp_path / "nowhere.yaml"))
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == f"fedvlp.client.worker: bad site file: {tmp_path / 'nowhere.yaml'}: key '(file)': expected an existing "
        "site YAML file"
    )


def test_a_good_site_file_passes_the_check() -> None:
    from fedvlp.client.worker import check_site

    assert check_site(str(project_root() / "sites" / "demo" / "hospital_a.yaml"))
