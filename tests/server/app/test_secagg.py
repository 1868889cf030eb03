"""SecAgg+ with modality-aware weighting on the server: the decoded sum against plain aggregation,
the checks of the summed weights and a real simulated round (the wire format alone:
tests/core/test_secagg_codec.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedvlp.core.config import ConfigError, RunConfig
from fedvlp.core.secagg_codec import decode_sum, encode_update
from fedvlp.server.app.aggregation import SiteUpdate, aggregate
from fedvlp.server.app.secagg import check_summed_weights, error_bound, flower_share_settings

GLOBAL = {
    "image.w": torch.tensor([[0.5, -1.0], [2.0, 0.0]]),
    "image.bn.num_batches_tracked": torch.tensor(10),
    "text.w": torch.tensor([1.0, 2.0, 3.0]),
    "text.frozen": torch.tensor([7.0]),
    "head.mlm.w": torch.tensor([0.0]),
    "head.contrastive.w": torch.tensor([5.0]),
}
KEYS = list(GLOBAL)
MAX_WEIGHT = 1000.0


def _replies() -> list[SiteUpdate]:
    torch.manual_seed(0)

    def step(k: str) -> torch.Tensor:
        return GLOBAL[k] + 0.05 * torch.randn_like(GLOBAL[k])

    pairs = SiteUpdate(
        1,
        {"image.w": step("image.w"), "image.bn.num_batches_tracked": torch.tensor(13), "text.w": step("text.w")},
        {"image": 120, "text": 120},
    )
    images = SiteUpdate(
        2, {"image.w": step("image.w"), "image.bn.num_batches_tracked": torch.tensor(14)}, {"image": 300}
    )
    # a text site that trained the MLM head; 'text.frozen' got no gradient so it is not sent
    reports = SiteUpdate(3, {"text.w": step("text.w"), "head.mlm.w": step("head.mlm.w")}, {"text": 45, "head.mlm": 45})
    return [pairs, images, reports]


def _encoded_sum(replies: list[SiteUpdate], clip: float = 8.0) -> list[np.ndarray]:
    vectors = [encode_update(KEYS, GLOBAL, r.weights, r.counts, MAX_WEIGHT, clip) for r in replies]
    return [np.sum(parts, axis=0) for parts in zip(*vectors)]


def test_decoded_sum_equals_the_plain_modality_aware_aggregate() -> None:
    replies = _replies()
    decoded, carried = decode_sum(KEYS, GLOBAL, _encoded_sum(replies), min_weight=0.5 / MAX_WEIGHT)
    plain = aggregate(GLOBAL, replies)
    assert carried == {"image.w", "image.bn.num_batches_tracked", "text.w", "head.mlm.w"}
    for key in KEYS:
        assert decoded[key].dtype == plain[key].dtype
        torch.testing.assert_close(decoded[key], plain[key], rtol=0, atol=1e-6)
    assert torch.equal(decoded["text.frozen"], GLOBAL["text.frozen"])  # nobody sent it
    assert decoded["image.bn.num_batches_tracked"].item() == 14  # (120*13 + 300*14) / 420 = 13.71 -> 14


def test_quantised_sum_stays_within_the_stated_bound() -> None:
    """Flower's own stochastic quantiser on each site's vectors, then the exact decode."""
    from flwr.common.secure_aggregation.quantization import dequantize, quantize

    clip, levels = 8.0, 2**22
    replies = _replies()
    vectors = [encode_update(KEYS, GLOBAL, r.weights, r.counts, MAX_WEIGHT, clip) for r in replies]
    np.random.seed(3)
    quantised = [dequantize(quantize(v, clip, levels), clip, levels) for v in vectors]
    summed = [np.sum(parts, axis=0) for parts in zip(*quantised)]
    decoded, _ = decode_sum(KEYS, GLOBAL, summed, min_weight=0.5 / MAX_WEIGHT)
    plain = aggregate(GLOBAL, replies)
    for key, weight in (("image.w", 0.42), ("text.w", 0.165), ("head.mlm.w", 0.045)):
        mean_update = float((plain[key].double() - GLOBAL[key].double()).abs().max())
        bound = error_bound(3, clip, levels, weight, mean_update)
        error = float((decoded[key].double() - plain[key].double()).abs().max())
        assert error <= bound, (key, error, bound)
    assert decoded["image.bn.num_batches_tracked"].item() == 14


DECLARED = {"image": 420, "text": 165, "head.mlm": 45}  # the three sites' sizes, summed per group
TOLERANCE = 3 * 2 * 8.0 / 2**22


def test_honest_summed_weights_pass_the_checks() -> None:
    summed = _encoded_sum(_replies())
    assert check_summed_weights(KEYS, summed[-1], DECLARED, MAX_WEIGHT, TOLERANCE) == []


def test_a_negative_weight_shows_in_the_sum() -> None:
    """Issue 12: a site adding -0.0994 to the weights of its keys turned an update of 0.01 into 1.67."""
    summed = _encoded_sum(_replies())
    weights = summed[-1].copy()
    weights[0] += -0.0994  # 'image.w': 0.42 - 0.0994 = 0.3206, i.e. 320.6 samples
    problems = check_summed_weights(KEYS, weights, DECLARED, MAX_WEIGHT, TOLERANCE)
    assert problems == ["'image.w': summed weight 0.3206 is not a whole number of samples (320.6000)"]
    weights[0] = -0.0994
    assert (
        check_summed_weights(KEYS, weights, DECLARED, MAX_WEIGHT, TOLERANCE)[0]
        == "'image.w': summed weight -0.0994 is negative"
    )


def test_a_weight_above_the_declared_sizes_shows_in_the_sum() -> None:
    replies = _replies()
    replies[1].counts["image"] = 8000  # declared 300 with its size, claims 8000 in its weight
    summed = _encoded_sum(replies)
    problems = check_summed_weights(KEYS, summed[-1], DECLARED, MAX_WEIGHT, TOLERANCE)
    assert (
        problems[0] == "'image.w': summed weight 8.12 = 8120.0 samples exceeds the 420 the sites declared for 'image'"
    )


def test_share_settings_follow_flowers_int_or_fraction_convention(tiny_run: RunConfig) -> None:
    assert flower_share_settings(tiny_run) == (3, 2)
    assert flower_share_settings(tiny_run.replace(secagg_num_shares=0.6, secagg_reconstruction_threshold=1.0)) == (
        0.6,
        1.0,
    )


def test_secagg_with_a_robust_aggregation_is_a_config_error(tiny_run: RunConfig) -> None:
    with pytest.raises(ConfigError, match="aggregation"):
        tiny_run.replace(secure_aggregation="secagg+", aggregation="median")


@pytest.mark.slow
def test_a_secagg_round_matches_the_plain_round_within_quantisation_error(
    demo_env: Path, tiny_run: RunConfig, tmp_path: Path
) -> None:
    """Three simulated sites, one round each way from the same initial weights.

    Local training is deterministic given the global weights and the round, so both runs see
    the same replies; the plain round aggregates them in the clear, SecAgg+ only their sum.
    """
    from fedvlp.core.checkpoint import load_round
    from fedvlp.server.cli.simulation import simulate

    plain_run = tiny_run.replace(rounds=1, out_dir=str(tmp_path / "plain"), update_norm_factor=0.0)
    secure_run = plain_run.replace(out_dir=str(tmp_path / "secagg"), secure_aggregation="secagg+")
    plain_records: list[dict] = []
    secure_records: list[dict] = []
    simulate(plain_run, on_round=plain_records.append)
    simulate(secure_run, on_round=secure_records.append)
    assert plain_records[0]["replies"] == secure_records[0]["replies"] == 3
    assert all("counts" not in s for s in secure_records[0]["sites"])  # the server never sees a site's counts
    start = load_round(Path(plain_run.out_dir) / "checkpoints", 0).weights
    plain = load_round(Path(plain_run.out_dir) / "checkpoints", 1).weights
    secure = load_round(Path(secure_run.out_dir) / "checkpoints", 1).weights
    assert all(torch.equal(start[k], load_round(Path(secure_run.out_dir) / "checkpoints", 0).weights[k]) for k in start)
    changed_plain = {k for k in start if not torch.equal(start[k], plain[k])}
    changed_secure = {k for k in start if not torch.equal(start[k], secure[k])}
    # Not the same sets: a key sent with a (near-)zero update can move by quantisation noise
    # alone, or not move in float32 where plain mode's tiny update does; the bound covers both.
    assert len(changed_secure) >= 0.9 * len(changed_plain) > 0
    # smallest possible summed weight of a sent key: one site's smallest group count / max weight
    smallest = min(n for s in plain_records[0]["sites"] for n in s["counts"].values()) / plain_run.secagg_max_weight
    for key in start:
        if not start[key].is_floating_point():
            assert abs(int(secure[key]) - int(plain[key])) <= 1
            continue
        update = float((plain[key].double() - start[key].double()).abs().max())
        bound = error_bound(3, plain_run.secagg_clipping_range, plain_run.secagg_quantization_range, smallest, update)
        error = float((secure[key].double() - plain[key].double()).abs().max())
        assert error <= bound, (key, error, bound)
