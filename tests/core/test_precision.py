"""cpu-autocast modes: "off" and "bf16" are fixed, "auto" follows the CPU's native bfloat16."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fedvlp.core import precision
from fedvlp.core.config import ConfigError, RunConfig, load_site
from fedvlp.core.models import build_model
from fedvlp.core.precision import cpu_autocast_enabled, cpu_has_native_bf16, describe_cpu_autocast
from fedvlp.core.train import LocalTrainer, load_site_data


@pytest.fixture
def native(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, bool]]:
    """What torch.cpu's probes answer: set ``avx512_bf16`` / ``amx`` in the returned dict."""
    answers = {"avx512_bf16": False, "amx": False}
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: answers["avx512_bf16"], raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: answers["amx"], raising=False)
    cpu_has_native_bf16.cache_clear()
    yield answers
    cpu_has_native_bf16.cache_clear()


def test_off_and_bf16_do_not_depend_on_the_cpu(native: dict[str, bool]) -> None:
    assert (cpu_autocast_enabled("off"), cpu_autocast_enabled("bf16")) == (False, True)


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"), [(False, False, False), (True, False, True), (False, True, True)]
)
def test_auto_is_bf16_only_with_avx512_bf16_or_amx(
    native: dict[str, bool], avx512_bf16: bool, amx: bool, expected: bool
) -> None:
    native.update(avx512_bf16=avx512_bf16, amx=amx)
    assert cpu_autocast_enabled("auto") is expected


def test_describe_says_what_auto_chose_and_why(native: dict[str, bool]) -> None:
    assert describe_cpu_autocast("auto") == "auto: fp32 (no native bfloat16 on this CPU)"
    assert describe_cpu_autocast("bf16") == "bf16: bf16"
    native["amx"] = True
    precision.cpu_has_native_bf16.cache_clear()
    assert describe_cpu_autocast("auto") == "auto: bf16 (native bfloat16)"


def test_unknown_mode_is_refused_by_the_function_and_by_the_run_config() -> None:
    with pytest.raises(ValueError, match="'fp16'"):
        cpu_autocast_enabled("fp16")
    with pytest.raises(ConfigError, match="'cpu-autocast'"):
        RunConfig(cpu_autocast="fp16").validate()
    RunConfig(cpu_autocast="auto").validate()


def test_auto_without_native_bf16_computes_the_fp32_losses(
    native: dict[str, bool], demo_env: Path, tiny_run: RunConfig
) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_run)
    run = tiny_run.replace(cpu_autocast="auto")
    trainer = LocalTrainer(
        model,
        load_site_data(load_site(demo_env / "hospital_a.yaml"), run, model.max_text_len),
        run,
        torch.device("cpu"),
    )
    trainer.model.eval()  # no dropout
    batches = [(0, trainer.to_device(next(iter(trainer._loaders[0]))))]
    losses = {}
    for name, amp in (("auto", None), ("fp32", False), ("bf16", True)):
        torch.manual_seed(1)  # the same MLM and patch masks for every call
        with torch.no_grad():
            losses[name] = trainer.step_losses(trainer.model, batches, None, amp=amp)[1]
    auto, fp32, bf16 = losses["auto"], losses["fp32"], losses["bf16"]
    assert auto == fp32
    assert auto != bf16
