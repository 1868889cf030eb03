"""Modality-aware FedAvg: per-key weighted means over the sites that sent the key."""

from __future__ import annotations

import pytest
import torch

from fedvlp.server.aggregation import ReplyRejected, SiteUpdate, aggregate, validate_update

CURRENT = {
    "image.w": torch.tensor([0.0, 0.0]),
    "text.w": torch.tensor([10.0]),
    "head.mlm.w": torch.tensor([1.0]),
    "head.contrastive.w": torch.tensor([5.0]),
    "image.bn.num_batches_tracked": torch.tensor(0),
}


def test_keys_average_over_their_senders_weighted_by_group_counts() -> None:
    pairs = SiteUpdate(1, {"image.w": torch.tensor([1.0, 2.0]), "text.w": torch.tensor([4.0])}, {"image": 100, "text": 100})
    images = SiteUpdate(2, {"image.w": torch.tensor([4.0, 8.0])}, {"image": 300})
    reports = SiteUpdate(3, {"text.w": torch.tensor([1.0]), "head.mlm.w": torch.tensor([3.0])}, {"text": 50, "head.mlm": 50})
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
def test_invalid_replies_are_rejected_with_the_reason(weights: dict[str, torch.Tensor], counts: dict[str, int], message: str) -> None:
    with pytest.raises(ReplyRejected, match=message):
        validate_update(SiteUpdate(9, weights, counts), CURRENT)
