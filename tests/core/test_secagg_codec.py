"""The SecAgg+ wire format (core/secagg_codec.py): what a site encodes and what the server decodes.

The cross-check against plain aggregation and the server's checks of the summed weights are in
tests/server/app/test_secagg.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedvlp.core.secagg_codec import (
    INTEGER_SCALE,
    SIZE_METRIC_PREFIX,
    declared_sizes,
    decode_keys,
    decode_sum,
    encode_keys,
    encode_update,
    size_metrics,
)

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


def _pairs_site() -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """What a site with image-text pairs sends in plain mode: its trained keys and counts."""
    torch.manual_seed(0)

    def step(k: str) -> torch.Tensor:
        return GLOBAL[k] + 0.05 * torch.randn_like(GLOBAL[k])

    return {"image.w": step("image.w"), "image.bn.num_batches_tracked": torch.tensor(13), "text.w": step("text.w")}, {
        "image": 120,
        "text": 120,
    }


def test_a_site_encodes_weighted_updates_and_per_key_weights() -> None:
    sent, counts = _pairs_site()
    vectors = encode_update(KEYS, GLOBAL, sent, counts, MAX_WEIGHT, 8.0)
    assert len(vectors) == len(KEYS) + 1
    np.testing.assert_allclose(
        vectors[0], 0.12 * (sent["image.w"].double() - GLOBAL["image.w"].double()).numpy().reshape(-1)
    )
    assert vectors[1].shape == (1,)  # flat, never 0-d (Flower's unmasking mishandles 0-d arrays)
    assert vectors[1][0] == pytest.approx(0.12 * 3 / INTEGER_SCALE)  # 13 - 10 local steps, scaled
    assert not vectors[3].any() and not vectors[4].any()  # keys it did not send are zeros
    np.testing.assert_array_equal(vectors[-1], [0.12, 0.12, 0.12, 0.0, 0.0, 0.0])


def test_one_site_decodes_back_to_its_own_weights() -> None:
    sent, counts = _pairs_site()
    decoded, carried = decode_sum(
        KEYS, GLOBAL, encode_update(KEYS, GLOBAL, sent, counts, MAX_WEIGHT, 8.0), min_weight=0.5 / MAX_WEIGHT
    )
    assert carried == set(sent)
    for key in KEYS:
        expected = sent.get(key, GLOBAL[key])
        assert decoded[key].dtype == GLOBAL[key].dtype and decoded[key].shape == GLOBAL[key].shape
        torch.testing.assert_close(decoded[key], expected, rtol=0, atol=1e-6)
    assert int(decoded["image.bn.num_batches_tracked"]) == 13  # the integer buffer comes back whole


def test_a_weight_beyond_the_clipping_range_is_refused() -> None:
    sent, _ = _pairs_site()
    with pytest.raises(ValueError, match="secagg-max-weight"):
        encode_update(KEYS, GLOBAL, sent, {"image": 9000, "text": 1}, MAX_WEIGHT, 8.0)


@pytest.mark.parametrize(
    ("count", "shown"),
    [(-99, "-99"), (0, "0"), (True, "True"), (120.5, "120.5"), (float("nan"), "nan"), (None, "None")],
)
def test_an_honest_client_cannot_encode_a_negative_or_odd_weight(count: object, shown: str) -> None:
    sent, _ = _pairs_site()
    with pytest.raises(ValueError, match=f"group 'image': count {shown} is not an integer >= 1"):
        encode_update(KEYS, GLOBAL, sent, {"image": count, "text": 120}, MAX_WEIGHT, 8.0)  # type: ignore[dict-item]


def test_the_key_order_survives_the_fit_config() -> None:
    assert decode_keys(encode_keys(KEYS)) == KEYS


def test_declared_sizes_come_from_the_clear_metrics() -> None:
    assert declared_sizes({"loss/mlm": 2.0, "site-size/text": 165, "site-size/head.mlm": 45.0, "site-size/x": -1}) == {
        "text": 165,
        "head.mlm": 45,
    }


def test_declared_sizes_read_what_a_site_writes() -> None:
    metrics = size_metrics({"image": 120, "text": 120.0})
    assert metrics == {f"{SIZE_METRIC_PREFIX}image": 120, f"{SIZE_METRIC_PREFIX}text": 120}
    assert declared_sizes({"loss/mlm": 2.0, **metrics}) == {"image": 120, "text": 120}
