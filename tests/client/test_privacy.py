"""DP rounds of the ClientApp: epsilon in the metrics, client-level release, budget stop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedvlp.client.app import train_round
from fedvlp.client.privacy import SitePrivacy
from fedvlp.core.config import RunConfig, load_site
from fedvlp.core.models import build_model
from fedvlp.core.params import ARRAYS_KEY, COUNTS_KEY, METRICS_KEY, group_of
from fedvlp.core.privacy import clip_update, epsilon_spent
from fedvlp.core.train import LocalTrainer, load_site_datasets

from tests.conftest import DEMO_SITES

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


@pytest.mark.parametrize(("name", "groups"), [("hospital_b", {"image", "head.mim"}), ("hospital_c", {"text", "head.mlm"})])
def test_dp_round_at_a_single_modality_site_reports_its_epsilon(world: Path, tmp_path: Path, dp_run: RunConfig, name: str, groups: set[str]) -> None:
    site = load_site(dp_site(world, tmp_path / "sites", name, epsilon=50.0))
    content = train_round(site, dp_run, build_model(dp_run).state_dict(), server_round=1)
    metrics = dict(content.metric_records[METRICS_KEY])
    rate = dp_run.batch_size / 64  # 64 rows per site in the test world
    assert metrics["dp/epsilon"] == pytest.approx(epsilon_spent([(1.1, rate, dp_run.local_steps)], 1e-5))
    assert metrics["dp/level"] == 1.0 and metrics["dp/budget-exhausted"] == 0.0
    assert not any(k.startswith("loss/") for k in metrics)  # un-noised losses stay home
    assert {group_of(k) for k in content.array_records[ARRAYS_KEY]} == groups
    assert set(content.metric_records[COUNTS_KEY]) == groups


def test_pair_site_sends_a_clipped_update_with_noise_of_the_right_std(world: Path, tmp_path: Path, dp_run: RunConfig) -> None:
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


def test_a_site_stops_sending_arrays_when_the_next_round_would_exceed_its_budget(world: Path, tmp_path: Path, dp_run: RunConfig) -> None:
    per_round = epsilon_spent([(1.1, 8 / 64, dp_run.local_steps)], 1e-5)
    two_rounds = epsilon_spent([(1.1, 8 / 64, dp_run.local_steps)] * 2, 1e-5)
    site = load_site(dp_site(world, tmp_path / "sites", "hospital_c", epsilon=(per_round + two_rounds) / 2))
    state = build_model(dp_run).state_dict()
    first = train_round(site, dp_run, state, server_round=1)
    second = train_round(site, dp_run, state, server_round=2)
    assert len(first.array_records[ARRAYS_KEY]) > 0 and dict(first.metric_records[METRICS_KEY])["dp/epsilon"] == pytest.approx(per_round)
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
    from fedvlp.server.simulation import simulate

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
    assert stopped["counts"] == {} and stopped["bytes"] == 0 and stopped["metrics"]["dp/epsilon"] == pytest.approx(one_round)
    assert all(s["metrics"]["dp/epsilon"] > 0 for r in records for s in r["sites"])
