"""Each loss equals a value computed by hand on a tiny example."""

from __future__ import annotations

import math

import torch

from fedvlp.core.objectives import info_nce, masked_l1, matching_loss, mlm_loss
from fedvlp.core.objectives.masked import mask_tokens, patch_mask
from fedvlp.core.objectives.matching import shuffled_negatives


def test_info_nce_matches_hand_computed_value() -> None:
    # Orthonormal-ish 2-D embeddings: cos(v0,u0)=1, cos(v0,u1)=0, cos(v1,u0)=0.6, cos(v1,u1)=0.8
    image = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    text = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # norms do not matter (cosine)
    tau, lam = 0.5, 0.75
    cos = [[1.0, 0.0], [0.6, 0.8]]
    i2t = -0.5 * (
        math.log(math.exp(cos[0][0] / tau) / (math.exp(cos[0][0] / tau) + math.exp(cos[0][1] / tau)))
        + math.log(math.exp(cos[1][1] / tau) / (math.exp(cos[1][0] / tau) + math.exp(cos[1][1] / tau)))
    )
    t2i = -0.5 * (
        math.log(math.exp(cos[0][0] / tau) / (math.exp(cos[0][0] / tau) + math.exp(cos[1][0] / tau)))
        + math.log(math.exp(cos[1][1] / tau) / (math.exp(cos[0][1] / tau) + math.exp(cos[1][1] / tau)))
    )
    expected = lam * i2t + (1 - lam) * t2i
    assert abs(info_nce(image, text, tau, lam).item() - expected) < 1e-6


def test_info_nce_lambda_one_is_image_to_text_only() -> None:
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # logits = cos / 0.1: row 0 = [10, 6], row 1 = [0, 8]; the true pair is the diagonal
    row0 = -math.log(math.exp(10) / (math.exp(10) + math.exp(6)))
    row1 = -math.log(math.exp(8) / (math.exp(0) + math.exp(8)))
    assert abs(info_nce(image, text, 0.1, 1.0).item() - (row0 + row1) / 2) < 1e-5


def test_matching_loss_is_binary_cross_entropy() -> None:
    logits = torch.tensor([2.0, -1.0])
    targets = torch.tensor([1.0, 0.0])
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = -(math.log(sigmoid(2.0)) + math.log(1 - sigmoid(-1.0))) / 2
    assert abs(matching_loss(logits, targets).item() - expected) < 1e-6


def test_shuffled_negatives_never_pick_the_true_report() -> None:
    for size in range(2, 9):
        for _ in range(20):
            negatives = shuffled_negatives(size)
            assert not torch.any(negatives == torch.arange(size))
            assert sorted(negatives.tolist()) == list(range(size))


def test_mlm_loss_ignores_unmasked_positions() -> None:
    logits = torch.zeros(1, 3, 4)
    logits[0, 1] = torch.tensor([0.0, math.log(3.0), 0.0, 0.0])  # p(token 1) = 3/6
    labels = torch.tensor([[-100, 1, -100]])
    assert abs(mlm_loss(logits, labels).item() - (-math.log(0.5))) < 1e-6


def test_mlm_objective_decoding_only_targets_equals_the_loss_over_all_positions() -> None:
    from torch import nn

    from fedvlp.core.objectives.masked import MLMObjective

    torch.manual_seed(0)

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(20, 8)

        def text(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.embed(ids)

    objective, encoder = MLMObjective(hidden=8, vocab_size=20, special_ids=[0, 1, 2], mask_id=3), Encoder()
    masked = torch.randint(4, 20, (3, 6))
    labels = torch.full((3, 6), -100)
    labels[0, 1], labels[1, 4], labels[1, 5], labels[2, 0] = 7, 9, 11, 5
    everywhere = mlm_loss(objective.decoder(objective.transform(encoder.text(masked, torch.ones_like(masked)))), labels)
    assert torch.allclose(
        objective.masked_loss(encoder, masked, torch.ones_like(masked), labels), everywhere, atol=1e-6
    )


def test_masked_l1_averages_over_masked_pixels_only() -> None:
    prediction = torch.tensor([[[[1.0, 0.0], [0.5, 0.0]]]])
    target = torch.zeros(1, 1, 2, 2)
    mask = torch.tensor([[[[True, False], [True, False]]]])
    assert masked_l1(prediction, target, mask).item() == (1.0 + 0.5) / 2


def test_mask_tokens_only_masks_real_tokens_and_at_least_one() -> None:
    torch.manual_seed(0)
    ids = torch.tensor([[2, 10, 11, 12, 3, 0, 0], [2, 20, 3, 0, 0, 0, 0]])
    attention = (ids != 0).long()
    special = torch.tensor([0, 1, 2, 3, 4])
    masked, labels = mask_tokens(ids, attention, special, mask_id=4, vocab_size=30, ratio=0.15)
    targets = labels != -100
    assert targets.sum(dim=1).min() >= 1
    assert not targets[torch.isin(ids, special)].any()
    assert torch.equal(labels[targets], ids[targets])
    assert torch.equal(masked[~targets], ids[~targets])


def test_patch_mask_masks_the_requested_share_of_patches() -> None:
    mask = patch_mask(batch=3, size=32, patch=8, ratio=0.25)
    assert mask.shape == (3, 1, 32, 32)
    # 16 patches of 64 pixels, 4 masked per image
    assert mask.view(3, -1).sum(dim=1).tolist() == [4 * 64] * 3
