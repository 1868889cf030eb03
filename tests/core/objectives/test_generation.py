"""Report generation: the LM loss by hand, teacher forcing, causality and where gradients go."""

from __future__ import annotations

import math

import torch

from fedvlp.core.data.tokenizer import SPECIAL_TOKENS, load_tokenizer
from fedvlp.core.models.refers import REFERSModel, build_refers_model
from fedvlp.core.objectives import BatchView
from fedvlp.core.objectives.generation import GenerationObjective, lm_loss, teacher_forcing
from fedvlp.core.params import group_of

torch.set_num_threads(1)

PAD = 0


def _model() -> REFERSModel:
    tok = load_tokenizer("demo")
    special = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    return build_refers_model(
        "tiny",
        32,
        len(tok),
        special,
        tok.pad_token_id,
        tok.cls_token_id,
        tok.sep_token_id,
        tau=0.1,
        lam=0.75,
        weights={"contrastive": 1.0, "generation": 1.0},
        seed=0,
    )


def _batch() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    ids = torch.tensor([[2, 10, 11, 12, 3], [2, 20, 3, 0, 0]])
    return {"image": torch.rand(2, 1, 32, 32), "input_ids": ids, "attention_mask": (ids != 0).long()}


def test_lm_loss_matches_hand_computed_cross_entropy() -> None:
    logits = torch.zeros(1, 2, 3)
    logits[0, 0] = torch.tensor([0.0, math.log(2.0), 0.0])  # p(1) = 2/4
    logits[0, 1] = torch.tensor([0.0, 0.0, math.log(6.0)])  # p(2) = 6/8
    targets = torch.tensor([[1, 2]])
    expected = -(math.log(2 / 4) + math.log(6 / 8)) / 2
    assert abs(lm_loss(logits, targets, pad_id=PAD).item() - expected) < 1e-6


def test_lm_loss_ignores_padding_targets() -> None:
    logits = torch.randn(1, 3, 5)
    targets = torch.tensor([[4, 1, PAD]])
    changed = logits.clone()
    changed[0, 2] = torch.randn(5) * 10
    assert torch.allclose(lm_loss(logits, targets, PAD), lm_loss(changed, targets, PAD))
    assert torch.allclose(lm_loss(logits, targets, PAD), lm_loss(logits[:, :2], targets[:, :2], PAD))


def test_teacher_forcing_shifts_targets_by_one() -> None:
    ids = torch.tensor([[2, 5, 6, 3, 0]])
    inputs, targets = teacher_forcing(ids, (ids != 0).long(), PAD)
    assert inputs.tolist() == [[2, 5, 6, 3]]
    assert targets.tolist() == [[5, 6, 3, PAD]]


def test_loss_is_zero_for_a_decoder_that_predicts_the_next_token() -> None:
    model = _model()
    head: GenerationObjective = model.head["generation"]  # type: ignore[assignment]
    batch = _batch()
    seen = {}

    def oracle(tokens: torch.Tensor, memory: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        seen["tokens"] = tokens
        following = batch["input_ids"][:, 1:]  # the token after each input position
        return torch.nn.functional.one_hot(following, head.output.out_features).float() * 100.0

    head.decode = oracle  # type: ignore[method-assign]
    loss = head.loss(BatchView(model, batch))
    assert seen["tokens"].tolist() == [[2, 10, 11, 12], [2, 20, 3, 0]]
    assert loss.item() < 1e-6


def test_decoder_is_causal() -> None:
    model = _model().eval()
    head: GenerationObjective = model.head["generation"]  # type: ignore[assignment]
    memory, padding = head.memory(BatchView(model, _batch()))
    tokens = torch.tensor([[2, 10, 11, 12], [2, 20, 3, 0]])
    changed = tokens.clone()
    changed[:, 2] = 30
    before, after = head.decode(tokens, memory, padding), head.decode(changed, memory, padding)
    assert torch.allclose(before[:, :2], after[:, :2], atol=1e-5)
    assert not torch.allclose(before[:, 2], after[:, 2], atol=1e-3)


def test_image_only_batches_cannot_train_generation_or_contrastive() -> None:
    model = _model()
    view = BatchView(model, {"image": torch.rand(2, 1, 32, 32)})
    assert view.modalities == {"image"}
    assert not any(objective.applies_to(view.modalities) for objective in model.objectives)
    assert all(objective.applies_to(frozenset({"image", "text", "pair"})) for objective in model.objectives)
    assert not any(
        objective.applies_to(frozenset({"image", "text"})) for objective in model.objectives
    )  # unpaired tuples


def test_generation_gradients_reach_image_and_its_head_only() -> None:
    model = _model()
    model.head["generation"].loss(BatchView(model, _batch())).backward()
    reached = {group_of(name) for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert reached == {"image", "head.generation"}
    assert model.head["generation"].groups == ("image", "head.generation")


def test_greedy_generation_starts_with_bos_and_stays_in_length() -> None:
    model = _model().eval()
    tokens = model.head["generation"].generate(BatchView(model, _batch()), max_len=6)
    assert tokens.shape[0] == 2 and tokens.shape[1] <= 6
    assert tokens[:, 0].tolist() == [2, 2]
