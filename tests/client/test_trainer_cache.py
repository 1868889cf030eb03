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


class _Held:
    """A stand-in trainer that holds ``mb`` megabytes."""

    def __init__(self, mb: float) -> None:
        self.mb = mb

    def held_bytes(self) -> int:
        return int(self.mb * 1e6)


def test_trainer_cache_mb_evicts_the_least_recent_until_the_rest_fits() -> None:
    def get(site: str, mb: float) -> None:
        client_app._cache_get((site, "h"), lambda: _Held(mb), max_entries=10, max_mb=100.0)

    get("a", 40), get("b", 40)
    assert [k[0] for k in client_app._TRAINERS] == ["a", "b"]  # 80 MB: both fit
    get("a", 40)  # used again: b is now the least recent
    get("c", 50)  # 130 MB: b goes, 90 MB stay
    assert [k[0] for k in client_app._TRAINERS] == ["a", "c"]
    get("d", 150)  # larger than the bound alone: everything older goes, the newest stays
    assert [k[0] for k in client_app._TRAINERS] == ["d"]


def test_held_bytes_counts_weights_gradients_and_optimizer_state(demo_env: Path, tiny_run: RunConfig) -> None:
    from fedvlp.core.train import tensor_bytes

    site = load_site(list_site_files(tiny_run.sites)[1])  # hospital_b: images only
    trainer = client_app._trainer(site, tiny_run)
    weights = tensor_bytes(list(trainer.model.state_dict().values()))
    assert trainer.held_bytes() == weights  # built, not trained yet
    trainer.train(1, seed=0)
    trained = [p for p in trainer.model.parameters() if p.grad is not None]
    grads = sum(p.numel() * p.element_size() for p in trained)
    moments = 2 * grads  # AdamW: exp_avg and exp_avg_sq per trained parameter (+ a scalar step each)
    assert weights + grads + moments <= trainer.held_bytes() <= weights + grads + moments + 8 * len(trained) + 4096


def test_tensor_bytes_counts_a_shared_storage_once() -> None:
    import torch

    from fedvlp.core.train import tensor_bytes

    base = torch.zeros(1000)
    assert tensor_bytes([base, base[:10], base.view(10, 100)]) == 4000
    assert tensor_bytes([base, torch.zeros(10)]) == 4040


def test_a_negative_trainer_cache_mb_is_refused() -> None:
    from fedvlp.core.config import ConfigError

    with pytest.raises(ConfigError, match="trainer-cache-mb"):
        RunConfig(trainer_cache_mb=-1.0).validate()
