"""The ClientApp worker runs fedvlp's own ClientApp only (its end-to-end behaviour is covered
by the real-process tests in tests/server/test_tls_auth.py and test_faults.py)."""

from __future__ import annotations

import io
import zipfile

from fedvlp.client.worker import CLIENTAPP_REF, _fab_clientapp
from fedvlp.core.config import project_root


def _fab(pyproject: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("pyproject.toml", pyproject)
    return buf.getvalue()


def test_the_project_fab_names_the_clientapp_the_worker_runs() -> None:
    assert _fab_clientapp(_fab((project_root() / "pyproject.toml").read_text())) == CLIENTAPP_REF == "fedvlp.client.app:app"


def test_another_apps_fab_is_told_apart() -> None:
    text = (project_root() / "pyproject.toml").read_text().replace('clientapp = "fedvlp.client.app:app"', 'clientapp = "other.client:app"')
    assert _fab_clientapp(_fab(text)) == "other.client:app"
