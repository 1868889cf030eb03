"""Speed options of local training (run-config channels-last, cpu-autocast, fused-optimizer, compile):
each trains, channels-last keeps the outputs, a family that has no use for an option refuses it, and
the DP-SGD trainer runs without them. Timings are in ``fedvlp bench``, not here."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from fedvlp.core.config import ConfigError, RunConfig, load_site
from fedvlp.core.models import build_model
from fedvlp.core.privacy import DPSGDTrainer, plan_privacy
from fedvlp.core.train import LocalTrainer, load_site_data

CPU = torch.device("cpu")

OPTIONS: dict[str, dict[str, Any]] = {
    "channels-last": {"channels_last": True},
    "cpu-autocast": {"cpu_autocast": "bf16"},
    "foreach": {"fused_optimizer": "foreach"},
    "fused": {"fused_optimizer": "fused"},
    "all-but-compile": {"channels_last": True, "cpu_autocast": "bf16", "fused_optimizer": "fused"},
}


def _trainer(site_file: Path, run: RunConfig) -> LocalTrainer:
    model = build_model(run)
    return LocalTrainer(model, load_site_data(load_site(site_file), run, model.max_text_len), run, CPU)


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_each_speed_option_trains_two_steps_to_a_finite_loss(
    demo_env: Path, tiny_run: RunConfig, options: dict[str, Any]
) -> None:
    run = tiny_run.replace(**options)
    result = _trainer(demo_env / "hospital_a.yaml", run).train(steps=2)
    assert math.isfinite(result.metrics["loss/total"])


@pytest.mark.slow  # torch.compile traces and builds kernels: tens of seconds on 2 cores
def test_compile_trains_two_steps_and_keeps_the_state_dict_keys(demo_env: Path, tiny_run: RunConfig) -> None:
    trainer = _trainer(demo_env / "hospital_a.yaml", tiny_run.replace(compile=True))
    keys = list(trainer.model.state_dict())
    result = trainer.train(steps=2)
    assert math.isfinite(result.metrics["loss/total"])
    assert list(trainer.model.state_dict()) == keys  # what is uploaded keeps its names


def test_channels_last_keeps_eval_outputs_within_1e_5(demo_env: Path, tiny_run: RunConfig) -> None:
    default = _trainer(demo_env / "hospital_a.yaml", tiny_run)
    fast = _trainer(demo_env / "hospital_a.yaml", tiny_run.replace(channels_last=True))
    fast._apply_speed_options()
    conv = next(p for p in fast.model.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    raw = next(iter(default._loaders[0]))
    outputs = []
    for trainer in (default, fast):
        trainer.model.eval()
        batch = trainer.to_device(raw)
        with torch.no_grad():
            outputs.append(trainer.model.embed_images(batch["image"]))
    assert fast.to_device(raw)["image"].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=0)


def test_channels_last_on_a_family_without_convolutions_is_refused_by_name(tiny_run: RunConfig) -> None:
    with pytest.raises(ConfigError, match="'channels-last'.*uwox family does not use it"):
        build_model(tiny_run.replace(recipe="uwox", channels_last=True))


def test_the_other_options_train_the_uwox_family_harmlessly(demo_env: Path, tiny_run: RunConfig) -> None:
    run = tiny_run.replace(recipe="uwox", cpu_autocast="bf16", fused_optimizer="fused")
    assert math.isfinite(_trainer(demo_env / "hospital_a.yaml", run).train(steps=2).metrics["loss/total"])


def test_speed_options_stay_off_under_dp_sgd(demo_env: Path, tiny_run: RunConfig) -> None:
    run = tiny_run.replace(norm="group", channels_last=True, cpu_autocast="bf16", fused_optimizer="fused")
    trainer = _trainer(demo_env / "hospital_b.yaml", run)
    result = DPSGDTrainer(trainer, run, plan_privacy(trainer, run).sources, torch.Generator().manual_seed(0)).train(2)
    assert math.isfinite(result.metrics["loss/total"])
    assert not trainer.channels_last
    assert all(p.is_contiguous() for p in trainer.model.parameters())


def test_bad_speed_option_values_name_the_key_and_defaults_keep_the_config_hash() -> None:
    with pytest.raises(ConfigError, match="'cpu-autocast'"):
        RunConfig(cpu_autocast="fp16").validate()
    with pytest.raises(ConfigError, match="'fused-optimizer'"):
        RunConfig(fused_optimizer="yes").validate()
    base = RunConfig()
    assert base.replace(channels_last=False, compile=False).config_hash() == base.config_hash()
    for options in OPTIONS.values():
        assert base.replace(**options).config_hash() != base.config_hash()


@pytest.mark.slow  # two gloo processes
def test_ddp_with_channels_last_and_fused_adamw_gives_the_weights_of_one_process(
    demo_env: Path, tiny_run: RunConfig
) -> None:
    from fedvlp.core.distributed import train_distributed

    run = tiny_run.replace(norm="group", batch_size=8, channels_last=True, fused_optimizer="fused")
    site = load_site(demo_env / "hospital_b.yaml")
    model = build_model(run)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    single = LocalTrainer(model, load_site_data(site, run, model.max_text_len), run, CPU)
    single.train(3, seed=7)
    outcome = train_distributed(site, run, start, 3, 7, ["cpu", "cpu"])
    after = single.model.state_dict()
    assert max(float((after[k].float() - outcome.state[k].float()).abs().max()) for k in start) < 1e-6
