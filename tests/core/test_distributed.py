"""A big site on several devices: DDP over 2 gloo CPU processes equals one process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedvlp.core.config import ConfigError, RunConfig, load_site
from fedvlp.core.distributed import (
    DEVICES_ENV,
    NPROC_ENV,
    _GlobalDraws,
    shard_bounds,
    site_devices,
    train_distributed,
    with_worker_processes,
    worker_processes,
)
from fedvlp.core.models import build_model
from fedvlp.core.train import LocalTrainer, load_site_data

CPU = torch.device("cpu")


@pytest.mark.slow
def test_two_gloo_processes_give_the_weights_of_one_process(demo_env: Path, tiny_run: RunConfig) -> None:
    # GroupNorm: no batch statistics, which gloo cannot share. MIM's random patch masks and the
    # augmentations are drawn per sample as in one process, whatever the rank.
    run = tiny_run.replace(norm="group", batch_size=8, local_steps=3)
    site = load_site(demo_env / "hospital_b.yaml")  # images only: masked patch regeneration
    model = build_model(run)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    single = LocalTrainer(model, load_site_data(site, run, model.max_text_len), run, CPU)
    expected = single.train(run.local_steps, seed=7)

    outcome = train_distributed(site, run, start, run.local_steps, 7, ["cpu", "cpu"])

    after = single.model.state_dict()
    moved = max(float((after[k].float() - start[k].float()).abs().max()) for k in start)
    differs = max(float((after[k].float() - outcome.state[k].float()).abs().max()) for k in start)
    assert moved > 1e-3  # the round did train (3 AdamW steps move some weights by ~1.5e-3)
    assert differs < 1e-6, differs  # measured 6e-8: the order of the gradient sums
    assert outcome.result.group_counts == expected.group_counts == {"image": 64, "head.mim": 64}
    assert outcome.result.metrics["loss/mim"] == pytest.approx(expected.metrics["loss/mim"], abs=1e-6)
    assert outcome.result.touched == expected.touched
    assert outcome.result.metrics["processes"] == 2.0


def test_a_batch_splits_into_contiguous_even_shards() -> None:
    assert [shard_bounds(8, 2, r) for r in range(2)] == [(0, 4), (4, 8)]
    assert [shard_bounds(7, 3, r) for r in range(3)] == [(0, 3), (3, 5), (5, 7)]
    assert shard_bounds(1, 2, 1) == (1, 1)  # an empty shard: that process trains nothing this step


def _site(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "big.yaml"
    path.write_text(f"name: big\nsources:\n  - manifest: m.csv\n    kind: images\n{extra}")
    (tmp_path / "m.csv").write_text("id,image\n")
    return path


def test_nproc_in_the_site_file_sets_the_processes(tmp_path: Path, tiny_run: RunConfig) -> None:
    site = load_site(_site(tmp_path, "device: cpu\nnproc: 2\n"))
    assert site.processes == 2
    assert site_devices(site, tiny_run) == [CPU, CPU]


def test_devices_in_the_site_file_set_the_processes(tmp_path: Path) -> None:
    site = load_site(_site(tmp_path, "devices: [cpu, cpu, cpu]\n"))
    assert (site.devices, site.processes) == (("cpu", "cpu", "cpu"), 3)


@pytest.mark.parametrize(
    ("extra", "key", "expected"),
    [
        ("nproc: 0\n", "nproc", "a whole number of training processes >= 1"),
        ("nproc: two\n", "nproc", "a whole number of training processes >= 1"),
        (
            "devices: [gpu0, gpu1]\n",
            "devices",
            "a non-empty list of devices such as [cuda:0, cuda:1] (or cpu repeated)",
        ),
        ("devices: [cuda:0, cpu]\n", "devices", "devices of one kind (all cuda:N or all cpu: one collective backend)"),
        ("devices: [cuda:1, cuda:1]\n", "devices", "each GPU once (NCCL runs one process per GPU)"),
        ("devices: [cpu, cpu]\nnproc: 3\n", "nproc", "2 (the length of devices) or no nproc"),
        (
            "nproc: 2\nprivacy: {epsilon: 8}\n",
            "nproc",
            "one process when the site has a privacy budget (DP-SGD trains in one process)",
        ),
    ],
)
def test_a_bad_process_count_names_the_site_file_and_key(tmp_path: Path, extra: str, key: str, expected: str) -> None:
    path = _site(tmp_path, extra)
    with pytest.raises(ConfigError) as err:
        load_site(path)
    assert (err.value.origin, err.value.key, err.value.expected) == (str(path), key, expected)


def test_more_gpus_than_the_machine_has_name_the_site_file(tmp_path: Path, tiny_run: RunConfig) -> None:
    path = _site(tmp_path, f"devices: [cuda:{torch.cuda.device_count()}]\n")
    with pytest.raises(ConfigError) as err:
        site_devices(load_site(path), tiny_run)
    assert (err.value.origin, err.value.key) == (str(path.resolve()), "devices")


def test_a_batch_size_that_the_processes_cannot_share_is_refused(tmp_path: Path, tiny_run: RunConfig) -> None:
    path = _site(tmp_path, "device: cpu\nnproc: 3\n")
    with pytest.raises(ConfigError) as err:
        train_distributed(load_site(path), tiny_run.replace(batch_size=8), {}, 1, 0, [CPU] * 3)
    assert (err.value.origin, err.value.key) == (str(path.resolve()), "nproc")
    assert "divides batch-size 8" in err.value.expected


def test_the_worker_flags_override_the_site_file(tmp_path: Path) -> None:
    site = load_site(_site(tmp_path, "device: cpu\n"))
    assert with_worker_processes(site, {DEVICES_ENV: "cpu,cpu", NPROC_ENV: "2"}).processes == 2
    assert with_worker_processes(site, {}).processes == 1


@pytest.mark.parametrize(
    ("devices", "nproc", "key"),
    [(None, "0", "nproc"), (None, "many", "nproc"), ("cuda:0,,cuda:1", None, "devices"), ("cpu,cpu", "3", "nproc")],
)
def test_bad_worker_flags_name_the_flag(devices: str | None, nproc: str | None, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        worker_processes(devices, nproc)
    assert (err.value.origin, err.value.key) == ("fedvlp.client.worker --devices/--nproc", key)


def test_the_worker_flags_refuse_several_processes_for_a_private_site(tmp_path: Path) -> None:
    site = load_site(_site(tmp_path, "privacy: {epsilon: 8}\n"))
    with pytest.raises(ConfigError) as err:
        with_worker_processes(site, {NPROC_ENV: "2"})
    assert err.value.key == "nproc" and "privacy budget" in err.value.expected


def test_a_draw_for_the_shard_is_the_shards_rows_of_the_whole_batchs_draw() -> None:
    torch.manual_seed(0)
    whole, after = torch.rand(8, 16), torch.rand(3)
    torch.manual_seed(0)
    with _GlobalDraws({4: (8, 4, 8)}):  # rank 1 of 2, batch of 8
        shard = torch.rand(4, 16)
        other = torch.rand(3)  # not the shard's size: drawn as asked
    assert torch.equal(shard, whole[4:8])
    assert torch.equal(other, after)  # and the generator moved on as in one process
