"""The uwox / unit objectives: CoMat matching, masked patch L1, gradient groups, caching, learning."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from fedvlp.core.data.synthetic import render_image, sample_case, write_report
from fedvlp.core.data.tokenizer import SPECIAL_TOKENS, load_tokenizer
from fedvlp.core.models.uwox import UWOXConfig, UWOXModel, build_uwox_model
from fedvlp.core.objectives import BatchView
from fedvlp.core.objectives.matching import shuffled_negatives
from fedvlp.core.objectives.uwox import (
    IMAGE_KEY,
    TEXT_KEY,
    UWOXMatchingObjective,
    comat_features,
    masked_patch_l1,
    random_patch_mask,
)
from fedvlp.core.params import group_of

torch.set_num_threads(1)

ALL = {"mlm": 1.0, "mim": 1.0, "matching": 1.0}
IDENTITY = SimpleNamespace(pair_states=lambda text, mask, image: (text, image))  # a model without fusion


def _build(fusion: bool = False, seed: int = 0) -> UWOXModel:
    tok = load_tokenizer("demo")
    torch.manual_seed(seed)
    config = UWOXConfig.preset("tiny", 32, len(tok), fusion)
    return build_uwox_model(
        config, [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS], tok.mask_token_id, 0.15, ALL
    )


def _pairs_batch(count: int, size: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """Synthetic radiographs and their reports."""
    rng = np.random.default_rng(seed)
    images, reports = [], []
    for _ in range(count):
        case = sample_case(rng)
        images.append(torch.from_numpy(render_image(case, rng, size)).float().div(255.0).unsqueeze(0))
        reports.append(write_report(case, rng))
    encoded = load_tokenizer("demo")(reports, padding=True, truncation=True, max_length=48, return_tensors="pt")
    return {
        "image": torch.stack(images),
        "input_ids": encoded["input_ids"],
        "attention_mask": encoded["attention_mask"],
    }


def _groups_with_gradient(model: UWOXModel) -> set[str]:
    return {group_of(n) for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_comat_pooling_and_linear_give_the_hand_computed_loss() -> None:
    # One pair, D = 2: text tokens t0 = (1, 0), t1 = (0, 2) and a padding token; image tokens
    # i0 = (1, 1), i1 = (2, 0). CoMat * sqrt(2) = [[1, 2], [2, 0]] (padding row dropped).
    # Text axis (mean over image tokens): [1.5, 1.0] / sqrt(2), padded to max_len 4 with zeros.
    # Image axis (mean over the 2 real text tokens): [1.5, 1.0] / sqrt(2).
    text = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]])
    mask = torch.tensor([[1, 1, 0]])
    image = torch.tensor([[[1.0, 1.0], [2.0, 0.0]]])
    root2 = math.sqrt(2.0)
    features = comat_features(text, mask, image, max_len=4)
    assert torch.allclose(features, torch.tensor([[1.5, 1.0, 0.0, 0.0, 1.5, 1.0]]) / root2)
    head = UWOXMatchingObjective(max_len=4, image_tokens=2)
    with torch.no_grad():
        head.classifier.weight.copy_(torch.tensor([[1.0, -1.0, 7.0, 7.0, 2.0, 0.0]]))  # 7s sit on padding
        head.classifier.bias.fill_(-0.5)
    with torch.no_grad():
        logit = head.logits(IDENTITY, text, mask, image)
    expected_logit = (1.5 - 1.0 + 2 * 1.5) / root2 - 0.5
    assert math.isclose(float(logit), expected_logit, rel_tol=1e-6)
    loss = F.binary_cross_entropy(torch.sigmoid(logit), torch.ones(1))
    assert math.isclose(float(loss), math.log1p(math.exp(-expected_logit)), rel_tol=1e-5)


def test_masked_l1_counts_only_masked_patches() -> None:
    target = torch.zeros(1, 3, 4)
    prediction = torch.tensor([[[1.0] * 4, [2.0] * 4, [100.0] * 4]])
    mask = torch.tensor([[True, True, False]])
    assert math.isclose(float(masked_patch_l1(prediction, target, mask)), 1.5)  # (4 * 1 + 4 * 2) / 8 pixels
    prediction[0, 2] = -7.0  # an unmasked patch: no effect
    assert math.isclose(float(masked_patch_l1(prediction, target, mask)), 1.5)


def test_random_patch_mask_hides_fifteen_percent_of_each_image() -> None:
    mask = random_patch_mask(5, 196, 0.15)
    assert mask.shape == (5, 196) and mask.sum(dim=1).tolist() == [29] * 5
    assert random_patch_mask(2, 4, 0.15).sum(dim=1).tolist() == [1, 1]  # at least one


def test_an_image_only_batch_trains_only_image_joint_and_the_mim_head() -> None:
    model = _build(fusion=True).train()
    view = BatchView(model, {"image": torch.rand(4, 1, 32, 32)})
    objectives = [o for o in model.objectives if o.applies_to(view.modalities)]
    assert [o.name for o in objectives] == ["mim"]
    sum(o.loss(view) for o in objectives).backward()
    assert _groups_with_gradient(model) == {"image", "joint", "head.mim"}
    assert all(p.grad is None for p in model.joint.fusion.parameters())  # unit's fusion needs pairs


def test_a_text_only_batch_trains_only_text_joint_and_the_mlm_head() -> None:
    model = _build().train()
    batch = _pairs_batch(4)
    view = BatchView(model, {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
    objectives = [o for o in model.objectives if o.applies_to(view.modalities)]
    assert [o.name for o in objectives] == ["mlm"]
    sum(o.loss(view) for o in objectives).backward()
    assert _groups_with_gradient(model) == {"text", "joint", "head.mlm"}


def test_declared_groups_match_what_the_losses_reach() -> None:
    model = _build()
    assert {o.name: o.groups for o in model.objectives} == {
        "mlm": ("text", "joint", "head.mlm"),
        "mim": ("image", "joint", "head.mim"),
        "matching": ("image", "text", "joint", "head.matching"),
    }


def test_matching_pairs_each_image_with_its_report_and_another_rows_report() -> None:
    model = _build().eval()
    batch = _pairs_batch(4)
    head = model.head["matching"]
    torch.manual_seed(5)
    loss = head.loss(BatchView(model, batch))
    torch.manual_seed(5)
    negatives = shuffled_negatives(4)
    text = model.encode_text(batch["input_ids"], batch["attention_mask"])
    image = model.encode_image(batch["image"])["tokens"]
    mask = batch["attention_mask"]
    positive = head.logits(model, text, mask, image)
    negative = head.logits(model, text[negatives], mask[negatives], image)
    expected = F.binary_cross_entropy_with_logits(torch.cat([positive, negative]), torch.tensor([1.0] * 4 + [0.0] * 4))
    assert torch.allclose(loss, expected, atol=1e-6)


def test_matching_uses_the_batch_paired_targets_when_given() -> None:
    model = _build(fusion=True).eval()
    batch = _pairs_batch(3)
    batch["paired"] = torch.tensor([0.0, 1.0, 0.0])
    loss = model.head["matching"].loss(BatchView(model, batch))
    text = model.encode_text(batch["input_ids"], batch["attention_mask"])
    logits = model.head["matching"].logits(
        model, text, batch["attention_mask"], model.encode_image(batch["image"])["tokens"]
    )
    assert torch.allclose(loss, F.binary_cross_entropy_with_logits(logits, batch["paired"]), atol=1e-6)


def test_clean_encodings_are_computed_once_per_batch() -> None:
    model = _build().eval()
    calls = {"image": 0, "text": 0}
    encode_image, encode_text = model.encode_image, model.encode_text

    def counting_image(*args, **kwargs):
        calls["image"] += 1
        return encode_image(*args, **kwargs)

    def counting_text(*args, **kwargs):
        calls["text"] += 1
        return encode_text(*args, **kwargs)

    model.encode_image, model.encode_text = counting_image, counting_text  # type: ignore[method-assign]
    view = BatchView(model, _pairs_batch(2))
    first, second = model.head["matching"].loss(view), model.head["matching"].loss(view)
    assert calls == {"image": 1, "text": 1}
    assert TEXT_KEY in view._cache and IMAGE_KEY in view._cache
    assert first.shape == second.shape == ()


def test_thirty_steps_on_a_fixed_batch_lower_the_total_loss() -> None:
    model = _build(fusion=True, seed=1)
    batch = _pairs_batch(8)

    def losses(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)  # the same masks and negatives before and after training
        view = BatchView(model, batch)
        return {objective.name: objective.loss(view) for objective in model.objectives}

    model.eval()
    with torch.no_grad():
        before = {name: float(loss) for name, loss in losses(123).items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for step in range(30):
        optimizer.zero_grad()
        sum(losses(step).values()).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = {name: float(loss) for name, loss in losses(123).items()}
    assert sum(after.values()) < 0.85 * sum(before.values())
    assert all(after[name] < before[name] for name in before), (before, after)
