"""Differential privacy: opacus-valid models, exact per-sample gradients, accounting, clipping."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.validators import ModuleValidator
from torch import nn

from fedvlp.core.config import ConfigError, RunConfig, load_site
from fedvlp.core.models import build_model
from fedvlp.core.objectives import BatchView
from fedvlp.core.privacy import (
    DPSGDTrainer,
    PrivacyLedger,
    clip_update,
    epsilon_spent,
    gaussian_noise,
    plan_privacy,
    round_mechanisms,
)
from fedvlp.core.train import LocalTrainer, load_site_datasets

# The stem's input (pixels) needs no gradient; torch warns about opacus' backward hooks there.
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


@pytest.fixture()
def dp_run(tiny_run: RunConfig) -> RunConfig:
    return tiny_run.replace(norm="group")


def _no_dropout(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def _trainer(site_file: Path, run: RunConfig) -> LocalTrainer:
    model = build_model(run)
    return LocalTrainer(
        model, load_site_datasets(load_site(site_file), run, model.max_text_len), run, torch.device("cpu")
    )


def test_dp_modules_are_valid_for_opacus(dp_run: RunConfig) -> None:
    model = build_model(dp_run)
    for module in (model.image, model.text, model.head["mlm"], model.head["mim"]):
        assert ModuleValidator.validate(module, strict=False) == []


def test_batchnorm_image_encoder_is_not_valid_for_opacus(tiny_run: RunConfig) -> None:
    errors = ModuleValidator.validate(build_model(tiny_run).image, strict=False)
    assert errors and all("BatchNorm" in str(e) for e in errors)


def test_group_norm_keeps_parameter_names_and_drops_running_stats(tiny_run: RunConfig, dp_run: RunConfig) -> None:
    batch_keys = set(build_model(tiny_run).state_dict())
    group_keys = set(build_model(dp_run).state_dict())
    assert group_keys < batch_keys
    assert {k.rsplit(".", 1)[1] for k in batch_keys - group_keys} == {
        "running_mean",
        "running_var",
        "num_batches_tracked",
    }


def _per_sample_check(
    model: nn.Module, modules: list[nn.Module], loss_of: Callable[[slice], torch.Tensor], size: int
) -> None:
    hooked = [GradSampleModule(m, loss_reduction="mean") for m in modules]
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    loss_of(slice(None)).backward()
    per_sample = [p.grad_sample.detach().clone() for p in params]
    for h in hooked:
        h.disable_hooks()
    for i in range(size):
        alone = torch.autograd.grad(loss_of(slice(i, i + 1)), params, allow_unused=True)
        for p, ps, g in zip(params, per_sample, alone):
            expected = torch.zeros_like(p) if g is None else g
            assert torch.allclose(ps[i], expected, atol=1e-5), f"sample {i}: {tuple(p.shape)}"


def test_opacus_mlm_per_sample_gradients_equal_each_samples_own_gradient(dp_run: RunConfig) -> None:
    torch.manual_seed(0)
    model = _no_dropout(build_model(dp_run)).train()
    mlm = model.head["mlm"]
    mlm.per_sample = True
    ids = torch.randint(10, 200, (4, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # reports of different lengths
    mask[3, 4:] = 0
    ids = ids * mask
    view = BatchView(model, {"input_ids": ids, "attention_mask": mask})
    masked, labels = mlm.mask(view)
    _per_sample_check(model, [model.text, mlm], lambda s: mlm.masked_loss(model, masked[s], mask[s], labels[s]), 4)


def test_opacus_mim_per_sample_gradients_equal_each_samples_own_gradient(dp_run: RunConfig) -> None:
    torch.manual_seed(0)
    model = build_model(dp_run).train()
    mim = model.head["mim"]
    images = torch.rand(3, 1, dp_run.image_size, dp_run.image_size)
    view = BatchView(model, {"image": images})
    patches = mim.mask(view)
    _per_sample_check(model, [model.image, mim], lambda s: mim.masked_loss(model, images[s], patches[s]), 3)


def test_level_follows_the_objectives_of_each_demo_site(demo_env: Path, dp_run: RunConfig) -> None:
    levels = {
        name: plan_privacy(_trainer(demo_env / f"{name}.yaml", dp_run), dp_run).level
        for name in ("hospital_a", "hospital_b", "hospital_c")
    }
    assert levels == {"hospital_a": "client", "hospital_b": "sample", "hospital_c": "sample"}


def test_sample_level_dp_on_images_needs_group_norm(demo_env: Path, tiny_run: RunConfig) -> None:
    with pytest.raises(ConfigError, match="'norm'.*'group'"):
        plan_privacy(_trainer(demo_env / "hospital_b.yaml", tiny_run), tiny_run)


def test_epsilon_after_five_rounds_equals_opacus_accountant_stepped_by_hand(
    demo_env: Path, dp_run: RunConfig, tmp_path: Path
) -> None:
    trainer = _trainer(demo_env / "hospital_c.yaml", dp_run)  # 64 reports, batch 8, 3 steps a round
    plan = plan_privacy(trainer, dp_run)
    ledger = PrivacyLedger(tmp_path / "ledger.json")
    for round_ in range(1, 6):
        ledger.record(round_, round_mechanisms(plan, trainer, dp_run))
    accountant = RDPAccountant()
    for _ in range(5 * dp_run.local_steps):
        accountant.step(noise_multiplier=dp_run.dp_noise_multiplier, sample_rate=8 / 64)
    expected = accountant.get_epsilon(delta=1e-5)
    assert PrivacyLedger.load(ledger.path).epsilon(1e-5) == pytest.approx(expected, rel=1e-12)
    assert 0 < expected < float("inf")


def test_client_level_epsilon_composes_one_gaussian_release_per_round() -> None:
    accountant = RDPAccountant()
    for _ in range(5):
        accountant.step(noise_multiplier=2.0, sample_rate=1.0)
    assert epsilon_spent([(2.0, 1.0, 1)] * 5, 1e-5) == pytest.approx(accountant.get_epsilon(delta=1e-5), rel=1e-12)


def test_update_is_clipped_to_the_norm_as_one_vector() -> None:
    glob = {"a": torch.zeros(3), "b": torch.ones(2), "n": torch.tensor(4)}
    local = {"a": torch.tensor([3.0, 0.0, 0.0]), "b": torch.tensor([1.0, 5.0]), "n": torch.tensor(5)}
    clipped, norm = clip_update(glob, local, clip=2.5)
    assert norm == pytest.approx(5.0) and set(clipped) == {"a", "b"}  # integer buffers are not updates
    assert clipped["a"].tolist() == pytest.approx([1.5, 0.0, 0.0]) and clipped["b"].tolist() == pytest.approx(
        [0.0, 2.0]
    )
    small, _ = clip_update(glob, local, clip=10.0)
    assert small["b"].tolist() == pytest.approx([0.0, 4.0])  # under the norm: unchanged


def test_noise_has_std_noise_multiplier_times_clip() -> None:
    noise = gaussian_noise({"w": torch.zeros(1_000_000)}, std=0.7 * 2.0, generator=torch.Generator().manual_seed(3))[
        "w"
    ]
    assert abs(float(noise.mean())) < 0.01
    assert float(noise.std()) == pytest.approx(1.4, rel=0.005)


def test_dpsgd_round_trains_with_noise_and_touches_only_the_site_groups(demo_env: Path, dp_run: RunConfig) -> None:
    trainer = _trainer(demo_env / "hospital_b.yaml", dp_run)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = DPSGDTrainer(
        trainer, dp_run, plan_privacy(trainer, dp_run).sources, torch.Generator().manual_seed(0)
    ).train(2, seed=1)
    after = trainer.model.state_dict()
    changed = {
        k.split(".")[0] if not k.startswith("head.") else ".".join(k.split(".")[:2])
        for k in after
        if not torch.equal(before[k], after[k])
    }
    assert changed == {"image", "head.mim"}
    assert {n.split(".")[0] for n in result.touched} == {"image", "head"} and "loss/mim" in result.metrics


def test_norm_key_is_checked_and_privacy_keys_at_defaults_keep_the_config_hash() -> None:
    with pytest.raises(ConfigError, match="'norm'"):
        RunConfig(norm="layer").validate()
    with pytest.raises(ConfigError, match="'dp-client-clip'"):
        RunConfig(dp_client_clip=0.0).validate()
    base = RunConfig()
    assert RunConfig(norm="batch", dp_noise_multiplier=1.0).config_hash() == base.config_hash()
    assert RunConfig(norm="group").config_hash() != base.config_hash()
    assert RunConfig(dp_noise_multiplier=1.5).config_hash() != base.config_hash()


def test_site_privacy_accepts_yaml_1e_minus_5(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("id,report\nr1,no finding\n")
    site = tmp_path / "site.yaml"
    site.write_text("name: s\nsources:\n  - manifest: m.csv\n    kind: reports\nprivacy: {epsilon: 3, delta: 1e-5}\n")
    loaded = load_site(site)
    assert (loaded.epsilon, loaded.delta) == (3.0, 1e-5)


# ------------------------------------------------------------------ the site's own lifetime ledger
def _site(tmp_path: Path, privacy: str) -> Path:
    (tmp_path / "sites").mkdir(exist_ok=True)
    path = tmp_path / "sites" / "h.yaml"
    path.write_text(f"name: h\nsources:\n  - manifest: {tmp_path / 'm.csv'}\n    kind: reports\nprivacy: {privacy}\n")
    (tmp_path / "m.csv").write_text("id,report\n1,clear lungs\n")
    return path


def test_the_ledger_path_depends_on_the_site_only_never_on_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedvlp.core.privacy import ledger_path

    monkeypatch.delenv("FEDVLP_DP_LEDGER", raising=False)
    site = load_site(_site(tmp_path, "{epsilon: 4.0}"))
    assert ledger_path(site) == tmp_path / "sites" / ".dp-ledger" / "h.json"
    monkeypatch.setenv("FEDVLP_DP_LEDGER", str(tmp_path / "env"))
    assert ledger_path(site) == tmp_path / "env" / "h.json"
    pinned = load_site(_site(tmp_path, "{epsilon: 4.0, state_dir: ../state}"))
    assert ledger_path(pinned) == tmp_path / "state" / "h.json"  # the site file's folder wins over the variable


def test_the_ledger_reads_spend_per_run_per_source_and_in_total(tmp_path: Path) -> None:
    a, b = (1.0, 0.125, 3), (5.0, 1.0, 1)
    ledger = PrivacyLedger(tmp_path / "h.json")
    ledger.record(1, [a, a], run="run1", sources=[["/s1"], ["/s2"]])
    ledger.record(1, [b], run="run2", sources=[["/s1", "/s2"]])
    ledger = PrivacyLedger.load(tmp_path / "h.json")
    assert ledger.epsilon(1e-5) == pytest.approx(epsilon_spent([a, a, b], 1e-5), rel=1e-12)
    assert ledger.epsilon(1e-5, run="run1") == pytest.approx(epsilon_spent([a, a], 1e-5), rel=1e-12)
    assert ledger.epsilon(1e-5, source="/s1") == pytest.approx(epsilon_spent([a, b], 1e-5), rel=1e-12)
    assert ledger.epsilon(1e-5, run="run2", source="/s2") == pytest.approx(epsilon_spent([b], 1e-5), rel=1e-12)


def test_per_run_ledgers_of_earlier_versions_count_in_the_lifetime_total(tmp_path: Path) -> None:
    old = PrivacyLedger(tmp_path / "h-0123456789abcdef.json")
    old.record(1, [(1.0, 0.125, 3)])
    PrivacyLedger(tmp_path / "h-b-0123456789abcdef.json").record(1, [(1.0, 1.0, 9)])  # another site's
    ledger = PrivacyLedger.load(tmp_path / "h.json", adopt_legacy="h")
    assert ledger.history == [(1.0, 0.125, 3)] and ledger.runs == ["0123456789abcdef"]


def test_a_damaged_ledger_stops_the_site_instead_of_resetting_its_budget(tmp_path: Path) -> None:
    (tmp_path / "h.json").write_text("")
    with pytest.raises(ConfigError, match=r"h\.json: key '\(file\)': expected a privacy ledger .*never delete it"):
        PrivacyLedger.load(tmp_path / "h.json")


def test_site_privacy_keys_lifetime_budget_state_dir_and_pins(tmp_path: Path) -> None:
    site = load_site(
        _site(tmp_path, "{lifetime_epsilon: 6, state_dir: state, min_noise_multiplier: 1.1, max_client_clip: 0.5}")
    )
    assert site.epsilon == 6.0 and site.lifetime_epsilon == 6.0  # a lifetime budget alone turns DP on
    assert site.state_dir == tmp_path / "sites" / "state"
    assert (
        site.pins.min_noise_multiplier == 1.1 and site.pins.max_client_clip == 0.5 and site.pins.max_grad_norm is None
    )


@pytest.mark.parametrize(
    ("privacy", "key"),
    [
        ("{epsilon: 4.0, lifetime_epsilon: -1}", "privacy.lifetime_epsilon"),
        ("{epsilon: 4.0, min_noise_multipler: 1.0}", "privacy.min_noise_multipler"),
        ("{epsilon: 4.0, max_client_clip: .inf}", "privacy.max_client_clip"),
        ("{epsilon: 4.0, state_dir: 3}", "privacy.state_dir"),
    ],
)
def test_bad_site_privacy_keys_are_refused_by_name(tmp_path: Path, privacy: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"h\.yaml: key '{key}'"):
        load_site(_site(tmp_path, privacy))


def test_a_sources_spend_composes_every_site_ledger_of_the_folder(tmp_path: Path) -> None:
    from fedvlp.core.privacy import source_epsilon

    a, b, c = (1.0, 0.125, 3), (5.0, 1.0, 1), (2.0, 1.0, 4)
    PrivacyLedger(tmp_path / "h.json").record(1, [a, b], run="r1", sources=[["/s1"], ["/s2"]])
    PrivacyLedger(tmp_path / "h-renamed.json").record(1, [b], run="r2", sources=[["/s1", "/s3"]])
    PrivacyLedger(tmp_path / "h-0123456789abcdef.json").record(1, [c])  # an earlier version's per-run file: no sources
    assert source_epsilon(tmp_path, "/s1", 1e-5) == pytest.approx(epsilon_spent([a, b], 1e-5), rel=1e-12)
    assert source_epsilon(tmp_path, "/s2", 1e-5, [a]) == pytest.approx(epsilon_spent([b, a], 1e-5), rel=1e-12)
    assert source_epsilon(tmp_path / "none", "/s1", 1e-5) == 0.0
