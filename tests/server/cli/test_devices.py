"""Where each site trains and what GPU share each virtual client holds, for fake GPU counts.

The decision is :func:`fedvlp.core.runtime.plan_devices`, a pure function of the device
count; the CUDA path itself (Ray giving each actor its GPU) is Ray's and stays as documented.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fedvlp.core.config import ConfigError, RunConfig
from fedvlp.core.runtime import check_device, default_gpu_share, plan_devices
from fedvlp.server.cli.flwr_config import federation_config_path, write_flwr_config
from fedvlp.server.cli.simulation import load_sites, plan_simulation_devices
from tests.conftest import DEMO_SITES

THREE = {"hospital_a": "auto", "hospital_b": "auto", "hospital_c": "auto"}


@pytest.mark.parametrize(
    ("gpus", "clients", "share"), [(0, 3, 0.0), (1, 3, 0.3333), (1, 2, 0.5), (2, 3, 0.6666), (4, 3, 1.0), (1, 1, 1.0)]
)
def test_default_share_is_gpus_over_clients_capped_and_rounded_down(gpus: int, clients: int, share: float) -> None:
    assert default_gpu_share(gpus, clients) == share


def test_shares_never_add_up_to_more_than_the_gpus() -> None:
    for gpus in range(1, 5):
        for clients in range(1, 40):
            assert default_gpu_share(gpus, clients) * clients <= gpus


def test_no_gpu_trains_every_site_on_cpu() -> None:
    plan = plan_devices("auto", THREE, gpu_count=0)
    assert (plan.gpus_per_client, plan.run_device, set(plan.sites.values())) == (0.0, "cpu", {"cpu"})


def test_one_gpu_three_sites_gives_each_a_third() -> None:
    plan = plan_devices("auto", THREE, gpu_count=1)
    assert (plan.gpus_per_client, plan.run_device) == (0.3333, "auto")
    assert plan.lines() == [f"site {name}: trains on cuda (0.3333 GPU of 1)" for name in THREE]


def test_an_explicit_share_wins() -> None:
    assert plan_devices("auto", THREE, gpu_count=2, gpus_per_client=0.25).gpus_per_client == 0.25


def test_share_zero_with_a_gpu_trains_on_cpu_explicitly() -> None:
    # Ray leaves CUDA_VISIBLE_DEVICES alone for clients without a share (RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0),
    # so "auto" must become "cpu" or the clients would use a GPU nobody reserved.
    plan = plan_devices("auto", THREE, gpu_count=1, gpus_per_client=0.0)
    assert (plan.gpus_per_client, plan.run_device, set(plan.sites.values())) == (0.0, "cpu", {"cpu"})


def test_cpu_sites_reserve_no_gpu() -> None:
    plan = plan_devices("cpu", THREE, gpu_count=2)
    assert (plan.gpus_per_client, set(plan.sites.values())) == (0.0, {"cpu"})


def test_a_site_device_overrides_the_run_device() -> None:
    plan = plan_devices("auto", {"a": "cpu", "b": "auto", "c": "cuda:1"}, gpu_count=2)
    assert plan.sites == {"a": "cpu", "b": "cuda", "c": "cuda:1"}
    assert plan.gpus_per_client == 0.6666
    assert plan.lines()[0] == "site a: trains on cpu"


def test_cuda_without_a_gpu_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        plan_devices("cuda", THREE, gpu_count=0)
    assert str(caught.value) == (
        "run_config: key 'device': expected 'auto' or 'cpu' on this machine: no CUDA GPU is visible "
        "(CUDA_VISIBLE_DEVICES, driver, or a CPU-only torch), got 'cuda'"
    )


def test_a_site_asking_for_cuda_without_a_gpu_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^site hospital_b: key 'device'"):
        plan_devices("auto", {"hospital_a": "auto", "hospital_b": "cuda"}, gpu_count=0)


def test_a_gpu_index_beyond_the_count_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"expected 'cuda' or 'cuda:0'..'cuda:1' \(2 GPU visible\), got 'cuda:2'"):
        check_device("cuda:2", 2)


@pytest.mark.parametrize(
    ("share", "gpus", "expected"),
    [(1.5, 1, "between 0 and 1"), (-0.1, 1, "between 0 and 1"), (0.5, 0, "no CUDA GPU is visible")],
)
def test_a_share_that_cannot_work_is_refused(share: float, gpus: int, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        plan_devices("auto", THREE, gpu_count=gpus, gpus_per_client=share)


@pytest.mark.parametrize(
    ("name", "gpus", "resolved"),
    [("auto", 0, "cpu"), ("auto", 1, "cuda"), ("cpu", 1, "cpu"), ("cuda:0", 1, "cuda:0"), ("mps", 0, "mps")],
)
def test_check_device_resolves(name: str, gpus: int, resolved: str) -> None:
    assert check_device(name, gpus) == resolved


def test_the_demo_site_files_plan_by_their_names() -> None:
    sites = load_sites(RunConfig(sites=str(DEMO_SITES)))
    plan = plan_simulation_devices(RunConfig(sites=str(DEMO_SITES)), sites, None, gpu_count=1)
    assert list(plan.sites) == [site.name for site in sites] and len(sites) == 3
    assert plan.gpus_per_client == 0.3333


def test_flwr_config_writes_the_gpu_share_and_no_deprecated_options(tmp_path: Path) -> None:
    config = write_flwr_config(tmp_path, num_supernodes=3, gpus_per_client=0.3333)
    assert "options" not in config.read_text()
    assert tomllib.loads(config.read_text())["superlink"]["local-sim"] == {"address": ":local:"}
    federation = tomllib.loads(federation_config_path(tmp_path).read_text())
    assert federation == {"num-supernodes": 3, "client-resources-num-cpus": 1, "client-resources-num-gpus": 0.3333}


def test_flwr_config_refuses_a_share_above_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="gpus_per_client: expected a share of one GPU between 0 and 1, got 2"):
        write_flwr_config(tmp_path, gpus_per_client=2)
