"""DP rounds of the ClientApp: epsilon in the metrics, client-level release, budget stop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedvlp.client.app import train_round
from fedvlp.client.privacy import SitePrivacy
from fedvlp.core.config import ConfigError, RunConfig, load_site
from fedvlp.core.models import build_model
from fedvlp.core.params import ARRAYS_KEY, COUNTS_KEY, METRICS_KEY, group_of
from fedvlp.core.privacy import clip_update, epsilon_spent
from fedvlp.core.train import LocalTrainer, load_site_datasets
from tests.conftest import DEMO_SITES, record_arrays

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


def dp_site(world: Path, folder: Path, name: str, epsilon: float, delta: float = 1e-5) -> Path:
    """A demo site file pointing at ``world`` with ``privacy: {epsilon, delta}``."""
    text = (DEMO_SITES / f"{name}.yaml").read_text().replace("${FEDVLP_DEMO_DATA:-../../.fedvlp/demo}", str(world))
    text = text.split("device: auto")[0] + f"device: cpu\nprivacy: {{epsilon: {epsilon!r}, delta: {delta:.1e}}}\n"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(text)
    return folder / f"{name}.yaml"


@pytest.fixture()
def dp_run(tiny_run: RunConfig) -> RunConfig:
    return tiny_run.replace(norm="group", dp_noise_multiplier=1.1)


@pytest.mark.parametrize(
    ("name", "groups"), [("hospital_b", {"image", "head.mim"}), ("hospital_c", {"text", "head.mlm"})]
)
def test_dp_round_at_a_single_modality_site_reports_its_epsilon(
    world: Path, tmp_path: Path, dp_run: RunConfig, name: str, groups: set[str]
) -> None:
    site = load_site(dp_site(world, tmp_path / "sites", name, epsilon=50.0))
    content = train_round(site, dp_run, build_model(dp_run).state_dict(), server_round=1)
    metrics = dict(content.metric_records[METRICS_KEY])
    rate = dp_run.batch_size / 64  # 64 rows per site in the test world
    assert metrics["dp/epsilon"] == pytest.approx(epsilon_spent([(1.1, rate, dp_run.local_steps)], 1e-5))
    assert metrics["dp/level"] == 1.0 and metrics["dp/budget-exhausted"] == 0.0
    assert not any(k.startswith("loss/") for k in metrics)  # un-noised losses stay home
    assert {group_of(k) for k in record_arrays(content.array_records[ARRAYS_KEY])} == groups
    assert set(content.metric_records[COUNTS_KEY]) == groups


def test_pair_site_sends_a_clipped_update_with_noise_of_the_right_std(
    world: Path, tmp_path: Path, dp_run: RunConfig
) -> None:
    run = dp_run.replace(dp_client_clip=0.1, dp_client_noise_multiplier=0.3)
    site = load_site(dp_site(world, tmp_path / "sites", "hospital_a", epsilon=100.0))
    model = build_model(run)
    trainer = LocalTrainer(model, load_site_datasets(site, run, model.max_text_len), run, torch.device("cpu"))
    private = SitePrivacy(site, run, trainer, generator=torch.Generator().manual_seed(7))
    assert private.plan.level == "client"
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    result = private.train(run.local_steps, seed=1)
    parameters = dict(model.named_parameters())
    local = {k: v.detach().clone() for k, v in parameters.items() if k in result.touched}
    sent, metrics = private.release(global_state, local, result.metrics, server_round=1)
    clipped, norm = clip_update(global_state, local, run.dp_client_clip)
    clipped_norm = float(torch.sqrt(sum((u * u).sum() for u in clipped.values())))
    assert norm > run.dp_client_clip and clipped_norm == pytest.approx(run.dp_client_clip, rel=1e-9)
    noise = torch.cat([(sent[k].double() - global_state[k].double() - clipped[k]).flatten() for k in sent])
    assert noise.numel() > 100_000
    assert float(noise.std()) == pytest.approx(0.3 * 0.1, rel=0.01) and abs(float(noise.mean())) < 0.0005
    assert metrics["dp/level"] == 2.0 and metrics["dp/epsilon"] == pytest.approx(epsilon_spent([(0.3, 1.0, 1)], 1e-5))


def test_a_site_stops_sending_arrays_when_the_next_round_would_exceed_its_budget(
    world: Path, tmp_path: Path, dp_run: RunConfig
) -> None:
    per_round = epsilon_spent([(1.1, 8 / 64, dp_run.local_steps)], 1e-5)
    two_rounds = epsilon_spent([(1.1, 8 / 64, dp_run.local_steps)] * 2, 1e-5)
    site = load_site(dp_site(world, tmp_path / "sites", "hospital_c", epsilon=(per_round + two_rounds) / 2))
    state = build_model(dp_run).state_dict()
    first = train_round(site, dp_run, state, server_round=1)
    second = train_round(site, dp_run, state, server_round=2)
    assert len(first.array_records[ARRAYS_KEY]) > 0 and dict(first.metric_records[METRICS_KEY])[
        "dp/epsilon"
    ] == pytest.approx(per_round)
    assert len(second.array_records[ARRAYS_KEY]) == 0 and len(second.metric_records[COUNTS_KEY]) == 0
    metrics = dict(second.metric_records[METRICS_KEY])
    assert metrics["dp/budget-exhausted"] == 1.0 and metrics["dp/epsilon"] == pytest.approx(per_round)


def test_the_ledger_on_disk_survives_a_new_process(world: Path, tmp_path: Path, dp_run: RunConfig) -> None:
    import fedvlp.client.app as client_app
    import fedvlp.client.privacy as client_privacy

    site = load_site(dp_site(world, tmp_path / "sites", "hospital_c", epsilon=50.0))
    state = build_model(dp_run).state_dict()
    train_round(site, dp_run, state, server_round=1)
    client_app._TRAINERS.clear()  # what a fresh ClientApp process starts with
    client_privacy._PRIVACY.clear()
    second = train_round(site, dp_run, state, server_round=2)
    expected = epsilon_spent([(1.1, 8 / 64, dp_run.local_steps)] * 2, 1e-5)
    assert dict(second.metric_records[METRICS_KEY])["dp/epsilon"] == pytest.approx(expected)


@pytest.mark.slow
def test_federation_goes_on_when_a_site_exhausts_its_budget(world: Path, tmp_path: Path, dp_run: RunConfig) -> None:
    from fedvlp.server.cli.simulation import simulate

    folder = tmp_path / "sites"
    one_round = epsilon_spent([(1.1, 8 / 64, dp_run.local_steps)], 1e-5)
    two_rounds = epsilon_spent([(1.1, 8 / 64, dp_run.local_steps)] * 2, 1e-5)
    dp_site(world, folder, "hospital_a", epsilon=1000.0)
    dp_site(world, folder, "hospital_b", epsilon=(one_round + two_rounds) / 2)  # one round only
    dp_site(world, folder, "hospital_c", epsilon=1000.0)
    run = dp_run.replace(sites=str(folder), rounds=2, dp_client_noise_multiplier=5.0, dp_client_clip=0.1)
    records: list[dict] = []
    simulate(run, on_round=records.append)
    assert [r["round"] for r in records] == [1, 2] and all(not r["rejected"] for r in records)
    exhausted = [[s["metrics"]["dp/budget-exhausted"] for s in r["sites"]] for r in records]
    assert sorted(exhausted[0]) == [0.0, 0.0, 0.0] and sorted(exhausted[1]) == [0.0, 0.0, 1.0]
    stopped = next(s for s in records[1]["sites"] if s["metrics"]["dp/budget-exhausted"] == 1.0)
    assert (
        stopped["counts"] == {}
        and stopped["bytes"] == 0
        and stopped["metrics"]["dp/epsilon"] == pytest.approx(one_round)
    )
    assert all(s["metrics"]["dp/epsilon"] > 0 for r in records for s in r["sites"])


# ------------------------------------------------------------------ a budget the server cannot reset
def pinned_site(world: Path, folder: Path, name: str, privacy: str) -> Path:
    """A demo site file pointing at ``world`` with the given ``privacy`` mapping (YAML flow)."""
    path = dp_site(world, folder, name, epsilon=1.0)
    path.write_text(path.read_text().split("privacy:")[0] + f"privacy: {privacy}\n")
    return path


def test_the_lifetime_ledger_sums_runs_of_any_out_dir_and_refuses_the_third(
    world: Path, tmp_path: Path, dp_run: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FEDVLP_DP_LEDGER", raising=False)
    one = epsilon_spent([(1.1, 8 / 64, dp_run.local_steps)], 1e-5)
    two = epsilon_spent([(1.1, 8 / 64, dp_run.local_steps)] * 2, 1e-5)
    three = epsilon_spent([(1.1, 8 / 64, dp_run.local_steps)] * 3, 1e-5)
    # Each run may spend 50, the site's data at most enough for two rounds in its life.
    site = load_site(
        pinned_site(
            world, tmp_path / "sites", "hospital_c", f"{{epsilon: 50.0, lifetime_epsilon: {(two + three) / 2!r}}}"
        )
    )
    state = build_model(dp_run).state_dict()
    replies = []
    for index, out in enumerate(("run_a", "run_b", "run_c")):  # the server picks a new out-dir and seed each time
        run = dp_run.replace(out_dir=str(tmp_path / out), seed=dp_run.seed + index)
        replies.append(dict(train_round(site, run, state, server_round=1).metric_records[METRICS_KEY]))
    assert [r["dp/epsilon"] for r in replies[:2]] == pytest.approx([one, one])  # each run's own spend
    assert replies[0]["dp/lifetime-epsilon"] == pytest.approx(one) and replies[1][
        "dp/lifetime-epsilon"
    ] == pytest.approx(two)
    assert one < two < 2 * one  # RDP composition: more than one run's epsilon, less than their plain sum
    assert replies[2]["dp/budget-exhausted"] == 1.0 and replies[2]["dp/lifetime-epsilon"] == pytest.approx(two)
    assert replies[2]["dp/epsilon"] == 0.0  # the third run spent nothing: it was refused before training
    assert sorted(p.name for p in (tmp_path / "sites" / ".dp-ledger").iterdir()) == ["hospital_c.json"]
    assert not any(
        (tmp_path / out).exists() and any((tmp_path / out).rglob("*.json")) for out in ("run_a", "run_b", "run_c")
    )


def test_a_third_run_is_refused_without_arrays_or_counts(world: Path, tmp_path: Path, dp_run: RunConfig) -> None:
    one = epsilon_spent([(1.1, 8 / 64, dp_run.local_steps)], 1e-5)
    two = epsilon_spent([(1.1, 8 / 64, dp_run.local_steps)] * 2, 1e-5)
    site = load_site(
        pinned_site(
            world,
            tmp_path / "sites",
            "hospital_c",
            f"{{epsilon: 50.0, lifetime_epsilon: {(one + two) / 2!r}, state_dir: state}}",
        )
    )
    state = build_model(dp_run).state_dict()
    first = train_round(site, dp_run.replace(out_dir=str(tmp_path / "a")), state, server_round=1)
    second = train_round(site, dp_run.replace(out_dir=str(tmp_path / "b")), state, server_round=1)
    assert len(first.array_records[ARRAYS_KEY]) > 0
    assert len(second.array_records[ARRAYS_KEY]) == 0 and len(second.metric_records[COUNTS_KEY]) == 0
    assert (tmp_path / "sites" / "state" / "hospital_c.json").is_file()


@pytest.mark.parametrize(
    ("name", "pin", "change", "key"),
    [
        ("hospital_c", "min_noise_multiplier: 1.5", {}, "dp-noise-multiplier"),  # run asks for 1.1
        ("hospital_c", "max_grad_norm: 0.5", {}, "dp-max-grad-norm"),  # run asks for 1.0
        (
            "hospital_a",
            "min_client_noise_multiplier: 2.0",
            {"dp_client_noise_multiplier": 1.0},
            "dp-client-noise-multiplier",
        ),
        ("hospital_a", "max_client_clip: 0.1", {"dp_client_clip": 1.0}, "dp-client-clip"),
    ],
)
def test_a_run_asking_for_less_noise_or_a_larger_clip_than_the_site_pins_is_refused(
    world: Path, tmp_path: Path, dp_run: RunConfig, name: str, pin: str, change: dict, key: str
) -> None:
    path = pinned_site(world, tmp_path / "sites", name, f"{{epsilon: 50.0, {pin}}}")
    with pytest.raises(ConfigError) as err:
        train_round(load_site(path), dp_run.replace(**change), build_model(dp_run).state_dict(), server_round=1)
    message = str(err.value)
    assert (
        message.startswith(f"run_config: key '{key}': expected ")
        and f"the pin privacy.{pin.split(':')[0]} of site file {path}" in message
    )
    assert not (tmp_path / "sites" / ".dp-ledger").exists()  # nothing trained, nothing spent


def test_pins_at_the_runs_values_or_of_the_other_level_let_it_train(
    world: Path, tmp_path: Path, dp_run: RunConfig
) -> None:
    path = pinned_site(
        world,
        tmp_path / "sites",
        "hospital_c",
        "{epsilon: 50.0, min_noise_multiplier: 1.1, max_grad_norm: 1.0, max_client_clip: 0.01}",
    )
    content = train_round(load_site(path), dp_run, build_model(dp_run).state_dict(), server_round=1)
    assert len(content.array_records[ARRAYS_KEY]) > 0


def test_a_renamed_site_file_over_the_same_manifest_keeps_the_datas_lifetime_spend(
    world: Path, tmp_path: Path, dp_run: RunConfig
) -> None:
    one = epsilon_spent([(1.1, 8 / 64, dp_run.local_steps)], 1e-5)
    two = epsilon_spent([(1.1, 8 / 64, dp_run.local_steps)] * 2, 1e-5)
    privacy = f"{{epsilon: 50.0, lifetime_epsilon: {(one + two) / 2!r}}}"
    path = pinned_site(world, tmp_path / "sites", "hospital_c", privacy)
    state = build_model(dp_run).state_dict()
    first = train_round(load_site(path), dp_run, state, server_round=1)
    renamed = path.with_name("renamed.yaml")
    renamed.write_text(path.read_text().replace("name: hospital_c", "name: hospital_c_renamed"))
    second = train_round(load_site(renamed), dp_run.replace(out_dir=str(tmp_path / "other")), state, server_round=1)
    assert len(first.array_records[ARRAYS_KEY]) > 0
    metrics = dict(second.metric_records[METRICS_KEY])
    assert len(second.array_records[ARRAYS_KEY]) == 0 and metrics["dp/budget-exhausted"] == 1.0
    assert (
        metrics["dp/lifetime-epsilon"] == 0.0
    )  # the renamed site's own ledger is empty: the source's spend refused it
