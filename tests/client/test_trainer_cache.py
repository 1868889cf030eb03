"""The ClientApp's bounded trainer cache: least recently used sites go first."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fedvlp.client import app as client_app
from fedvlp.core.config import RunConfig, list_site_files, load_site


@pytest.fixture(autouse=True)
def empty_cache() -> Iterator[None]:
    client_app._TRAINERS.clear()
    yield
    client_app._TRAINERS.clear()


def _get(site: str, config: str = "h", limit: int = 2) -> str:
    return client_app._cache_get((site, config), lambda: f"trainer-{site}-{config}", limit)


def test_the_least_recently_used_site_is_evicted_first() -> None:
    _get("a"), _get("b")
    _get("a")  # a is now the most recent: b goes when c arrives
    _get("c")
    assert list(client_app._TRAINERS) == [("a", "h"), ("c", "h")]
    _get("d")
    assert list(client_app._TRAINERS) == [("c", "h"), ("d", "h")]


def test_a_cached_trainer_is_returned_not_rebuilt() -> None:
    built: list[str] = []
    first = client_app._cache_get(("a", "h"), lambda: built.append("a") or object(), 2)
    again = client_app._cache_get(("a", "h"), lambda: built.append("a") or object(), 2)
    assert first is again and built == ["a"]


def test_another_configuration_of_the_same_site_replaces_its_entry_not_another_site() -> None:
    _get("a", "h1"), _get("b", "h1")
    _get("a", "h2")
    assert list(client_app._TRAINERS) == [("b", "h1"), ("a", "h2")]


def test_trainer_cache_size_bounds_the_trainers_of_a_process(demo_env: Path, tiny_run: RunConfig) -> None:
    run = tiny_run.replace(trainer_cache_size=2)
    sites = [load_site(f) for f in list_site_files(run.sites)]  # hospital_a, _b, _c
    trainers = [client_app._trainer(site, run) for site in sites]
    assert [Path(k[0]).stem for k in client_app._TRAINERS] == ["hospital_b", "hospital_c"]
    assert client_app._trainer(sites[2], run) is trainers[2]
    assert client_app._trainer(sites[0], run) is not trainers[0]  # evicted, built again
    assert [Path(k[0]).stem for k in client_app._TRAINERS] == ["hospital_c", "hospital_a"]
