"""Modality-aware aggregation: per-key weighted means, robust statistics, update-norm outliers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import trim_mean

from fedvlp.server.app.aggregation import (
    NORM_HISTORY_WINDOW,
    NormHistory,
    ReplyRejected,
    SiteUpdate,
    aggregate,
    aggregate_robust,
    aggregate_with,
    capped_shares,
    reject_norm_outliers,
    update_norms,
    validate_update,
)

CURRENT = {
    "image.w": torch.tensor([0.0, 0.0]),
    "text.w": torch.tensor([10.0]),
    "head.mlm.w": torch.tensor([1.0]),
    "head.contrastive.w": torch.tensor([5.0]),
    "image.bn.num_batches_tracked": torch.tensor(0),
}


def test_keys_average_over_their_senders_weighted_by_group_counts() -> None:
    pairs = SiteUpdate(
        1, {"image.w": torch.tensor([1.0, 2.0]), "text.w": torch.tensor([4.0])}, {"image": 100, "text": 100}
    )
    images = SiteUpdate(2, {"image.w": torch.tensor([4.0, 8.0])}, {"image": 300})
    reports = SiteUpdate(
        3, {"text.w": torch.tensor([1.0]), "head.mlm.w": torch.tensor([3.0])}, {"text": 50, "head.mlm": 50}
    )
    out = aggregate(CURRENT, [pairs, images, reports])
    # image: (100*[1,2] + 300*[4,8]) / 400 ; text: (100*4 + 50*1) / 150 ; mlm head: only site 3
    assert torch.allclose(out["image.w"], torch.tensor([3.25, 6.5]))
    assert torch.allclose(out["text.w"], torch.tensor([3.0]))
    assert torch.equal(out["head.mlm.w"], torch.tensor([3.0]))


def test_a_key_nobody_sent_keeps_its_value() -> None:
    update = SiteUpdate(1, {"image.w": torch.tensor([1.0, 1.0])}, {"image": 7})
    out = aggregate(CURRENT, [update])
    assert torch.equal(out["head.contrastive.w"], CURRENT["head.contrastive.w"])
    assert torch.equal(out["text.w"], CURRENT["text.w"])


def test_integer_buffers_stay_integers() -> None:
    a = SiteUpdate(1, {"image.bn.num_batches_tracked": torch.tensor(10)}, {"image": 1})
    b = SiteUpdate(2, {"image.bn.num_batches_tracked": torch.tensor(21)}, {"image": 1})
    out = aggregate(CURRENT, [a, b])
    assert out["image.bn.num_batches_tracked"].dtype == torch.int64
    assert out["image.bn.num_batches_tracked"].item() == 16  # round(15.5) to even


def test_result_does_not_depend_on_reply_order() -> None:
    updates = [SiteUpdate(i, {"image.w": torch.rand(2)}, {"image": i + 1}) for i in range(4)]
    forward = aggregate(CURRENT, updates)
    backward = aggregate(CURRENT, list(reversed(updates)))
    assert torch.equal(forward["image.w"], backward["image.w"])


@pytest.mark.parametrize(
    ("weights", "counts", "message"),
    [
        ({"image.unknown": torch.zeros(1)}, {"image": 1}, "unknown parameter"),
        ({"image.w": torch.zeros(3)}, {"image": 1}, "shape"),
        ({"image.w": torch.zeros(2, dtype=torch.float64)}, {"image": 1}, "dtype"),
        ({"image.w": torch.tensor([float("nan"), 0.0])}, {"image": 1}, "NaN"),
        ({"image.w": torch.zeros(2)}, {"text": 3}, "sample count"),
    ],
)
def test_invalid_replies_are_rejected_with_the_reason(
    weights: dict[str, torch.Tensor], counts: dict[str, int], message: str
) -> None:
    with pytest.raises(ReplyRejected, match=message):
        validate_update(SiteUpdate(9, weights, counts), CURRENT)


# ------------------------------------------------------------------ update-norm outliers
def _round_of_four() -> tuple[dict[str, torch.Tensor], list[SiteUpdate]]:
    torch.manual_seed(0)
    current = {"image.w": torch.randn(4, 8), "image.b": torch.randn(8), "text.w": torch.randn(16)}
    updates = []
    for node, count in zip((11, 12, 13), (30, 50, 20)):
        updates.append(
            SiteUpdate(
                node, {k: v + 0.01 * torch.randn_like(v) for k, v in current.items()}, {"image": count, "text": count}
            )
        )
    # a poisoned reply: its image update is 100x the others, its text update is ordinary
    poisoned = {
        "image.w": current["image.w"] + torch.randn(4, 8),
        "image.b": current["image.b"],
        "text.w": current["text.w"] + 0.01 * torch.randn(16),
    }
    updates.append(SiteUpdate(99, poisoned, {"image": 40, "text": 40}))
    return current, updates


def test_update_norms_are_per_group_over_float_keys() -> None:
    current = {"image.w": torch.zeros(2), "image.n": torch.tensor(0), "text.w": torch.zeros(1)}
    update = SiteUpdate(
        1,
        {"image.w": torch.tensor([3.0, 4.0]), "image.n": torch.tensor(7), "text.w": torch.tensor([-2.0])},
        {"image": 1, "text": 1},
    )
    assert update_norms(update, current) == {"image": 5.0, "text": 2.0}


def test_an_outlier_among_four_replies_is_rejected_with_its_node_id() -> None:
    current, updates = _round_of_four()
    kept, reasons = reject_norm_outliers(updates, current, factor=10.0)
    assert [u.node_id for u in kept] == [11, 12, 13]
    assert len(reasons) == 1 and reasons[0].startswith("node 99: group 'image' update norm")
    # the round goes on: the aggregate is the count-weighted mean of the other three
    out = aggregate(current, kept)
    for key in current:
        expected = (
            30 * updates[0].weights[key].double()
            + 50 * updates[1].weights[key].double()
            + 20 * updates[2].weights[key].double()
        ) / 100
        assert torch.allclose(out[key].double(), expected, atol=1e-6)


def test_norm_check_needs_three_replies_per_group_and_can_be_off() -> None:
    current, updates = _round_of_four()
    kept, reasons = reject_norm_outliers([updates[0], updates[3]], current, factor=10.0)
    assert len(kept) == 2 and reasons == []  # a median of two says nothing
    kept, reasons = reject_norm_outliers(updates, current, factor=0.0)
    assert len(kept) == 4 and reasons == []


# ------------------------------------------------------------------ robust aggregation
def _robust_round() -> tuple[dict[str, torch.Tensor], list[SiteUpdate]]:
    torch.manual_seed(1)
    current = {
        "image.w": torch.zeros(3, 2),
        "text.w": torch.zeros(5),
        "head.mlm.w": torch.ones(2),
        "image.n": torch.tensor(0),
    }
    updates = [
        SiteUpdate(
            1,
            {"image.w": torch.randn(3, 2), "text.w": torch.randn(5), "image.n": torch.tensor(3)},
            {"image": 10, "text": 10},
        ),
        SiteUpdate(2, {"image.w": torch.randn(3, 2), "image.n": torch.tensor(4)}, {"image": 99}),
        SiteUpdate(
            3,
            {"image.w": torch.randn(3, 2) * 50, "text.w": torch.randn(5), "image.n": torch.tensor(9)},
            {"image": 5, "text": 5},
        ),
        SiteUpdate(
            4,
            {"image.w": torch.randn(3, 2), "text.w": torch.randn(5), "image.n": torch.tensor(6)},
            {"image": 1, "text": 1},
        ),
        SiteUpdate(5, {"image.w": torch.randn(3, 2), "image.n": torch.tensor(5)}, {"image": 7}),
    ]
    return current, updates


def test_median_per_key_over_its_senders_equals_numpy() -> None:
    current, updates = _robust_round()
    out = aggregate_robust(current, updates, "median")
    image = np.stack([u.weights["image.w"].numpy() for u in updates])
    text = np.stack([u.weights["text.w"].numpy() for u in updates if "text.w" in u.weights])  # 3 senders
    np.testing.assert_allclose(out["image.w"].numpy(), np.median(image, axis=0), rtol=1e-6)
    np.testing.assert_allclose(out["text.w"].numpy(), np.median(text, axis=0), rtol=1e-6)
    assert torch.equal(out["head.mlm.w"], current["head.mlm.w"])  # nobody sent it
    assert out["image.n"].item() == 5 and out["image.n"].dtype == torch.int64


def test_median_of_an_even_count_averages_the_middle_pair() -> None:
    current, updates = _robust_round()
    out = aggregate_robust(current, updates[:4], "median")
    image = np.stack([u.weights["image.w"].numpy() for u in updates[:4]])
    np.testing.assert_allclose(out["image.w"].numpy(), np.median(image, axis=0), rtol=1e-6)


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.4])
def test_trimmed_mean_per_key_equals_scipy(fraction: float) -> None:
    current, updates = _robust_round()
    out = aggregate_robust(current, updates, "trimmed-mean", trim_fraction=fraction)
    image = np.stack([u.weights["image.w"].double().numpy() for u in updates])
    text = np.stack([u.weights["text.w"].double().numpy() for u in updates if "text.w" in u.weights])
    np.testing.assert_allclose(out["image.w"].numpy(), trim_mean(image, fraction, axis=0), rtol=1e-6)
    np.testing.assert_allclose(out["text.w"].numpy(), trim_mean(text, fraction, axis=0), rtol=1e-6)


def test_trimmed_mean_resists_the_scaled_reply() -> None:
    current, updates = _robust_round()
    # by hand for one coordinate: drop the lowest and the highest of five values, average three
    values = sorted(float(u.weights["image.w"][0, 0]) for u in updates)
    out = aggregate_robust(current, updates, "trimmed-mean", trim_fraction=0.2)
    assert out["image.w"][0, 0].item() == pytest.approx(sum(values[1:4]) / 3, rel=1e-6)


def test_aggregate_with_dispatches_on_the_run_config_name() -> None:
    current, updates = _robust_round()
    assert torch.equal(aggregate_with("fedavg", current, updates)["image.w"], aggregate(current, updates)["image.w"])
    assert torch.equal(
        aggregate_with("median", current, updates)["image.w"], aggregate_robust(current, updates, "median")["image.w"]
    )


# ------------------------------------------------------------------ what one site can weigh
def test_capped_shares_by_hand() -> None:
    # 1e9 is cut to 0.5; the other half splits 10 : 30
    assert capped_shares([1e9, 10, 30], 0.5) == [0.5, 0.125, 0.375]
    # a second pass: 0.4 cap on [60, 30, 10] -> 0.4, then 0.6 over 30:10 = 0.45 > 0.4 -> 0.4, 0.2
    assert capped_shares([60, 30, 10], 0.4) == pytest.approx([0.4, 0.4, 0.2])
    assert capped_shares([10**7, 10], 0.5) == [0.5, 0.5]  # two senders, cap 0.5: equal weights
    assert capped_shares([10**7, 10], 0.2) == [0.5, 0.5]  # a cap below 1/n cannot hold: 1/n each
    assert capped_shares([3, 1], 1.0) == [0.75, 0.25]  # 1: no cap (the default)


def test_a_huge_count_cannot_take_over_a_capped_mean() -> None:
    current = {"image.w": torch.zeros(2)}
    honest = SiteUpdate(1, {"image.w": torch.tensor([1.0, 1.0])}, {"image": 40})
    greedy = SiteUpdate(2, {"image.w": torch.tensor([9.0, -9.0])}, {"image": 10**7})
    assert torch.allclose(
        aggregate(current, [honest, greedy])["image.w"], torch.tensor([9.0, -9.0]), atol=1e-4
    )  # uncapped: it wins
    assert torch.equal(aggregate(current, [honest, greedy], max_site_weight=0.5)["image.w"], torch.tensor([5.0, -4.0]))


def test_the_norm_history_bounds_a_lone_sender_after_the_warm_up() -> None:
    current = {"image.w": torch.zeros(2)}
    history = NormHistory()

    def one(norm: float) -> SiteUpdate:
        return SiteUpdate(3, {"image.w": torch.tensor([norm, 0.0])}, {"image": 10})

    for norm in (1.0, 1.2):  # warm-up: two values are not a yardstick yet
        kept, reasons = history.reject([one(50.0)], current, factor=10.0)
        assert len(kept) == 1 and reasons == []
        history.record([{"image": norm}])
    history.record([{"image": 0.8}])
    kept, reasons = history.reject([one(12.0), one(9.0)], current, factor=10.0)  # median 1.0 -> bound 10
    assert [float(u.weights["image.w"][0]) for u in kept] == [9.0]
    assert reasons == ["node 3: group 'image' update norm 12 > 10 x median 1 of earlier rounds"]
    assert len(history.reject([one(12.0)], current, factor=0.0)[0]) == 1


def test_the_norm_history_adds_a_round_in_order_and_keeps_a_window() -> None:
    history = NormHistory()
    history.record([{"image": 3.0, "text": 1.0}, {"image": 1.0}])
    assert history.to_json() == {"image": [1.0, 3.0], "text": [1.0]}
    history.record([{"image": float(v)} for v in range(NORM_HISTORY_WINDOW)])
    assert len(history.norms["image"]) == NORM_HISTORY_WINDOW and history.norms["image"][0] == 0.0
    assert NormHistory(history.to_json()).norms == history.norms  # checkpoint round trip
