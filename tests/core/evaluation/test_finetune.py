import dataclasses

import numpy as np
import torch

from fedvlp.core.evaluation import FinetuneConfig, build_encoder, finetune
from fedvlp.core.evaluation.finetune import step_budget

FAST = FinetuneConfig(batch_size=16, min_steps=12, epochs=1, eval_every=4, patience=2)


def _run(labeled, tiny_config, seed):
    encoder = build_encoder(tiny_config, None, seed)
    train, val, test = (labeled.indices(s) for s in ("train", "val", "test"))
    return finetune(encoder, encoder.out_dim, labeled.images, labeled.labels, train, val, test, seed, FAST)


def test_same_seed_gives_the_same_scores(labeled, tiny_config):
    first, second = _run(labeled, tiny_config, 3), _run(labeled, tiny_config, 3)
    assert np.array_equal(first.test_scores, second.test_scores)
    assert first.best_step == second.best_step and first.best_step > 0


def test_finetune_leaves_the_global_rng_untouched(labeled, tiny_config):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _run(labeled, tiny_config, 0)
    assert torch.equal(torch.rand(3), expected)


def test_step_budget_has_a_floor_for_small_subsets_and_scales_with_size():
    config = FinetuneConfig(batch_size=64, min_steps=100, epochs=10, max_steps=1000)
    assert step_budget(7, config) == 100
    assert step_budget(1280, config) == 200
    assert step_budget(100_000, config) == 1000


def _head_from_probe(labeled, encoder, train, val):
    from fedvlp.core.evaluation import extract_features, fit_probe

    features = extract_features(encoder, labeled.images)
    return fit_probe(features, labeled.labels, train, val, weight_decays=(1e-2,)).raw_head(), features


def test_a_given_head_is_kept_when_no_step_beats_it_on_validation(labeled, tiny_config):
    encoder = build_encoder(tiny_config, None, 0)
    train, val, test = (labeled.indices(s) for s in ("train", "val", "test"))
    head, features = _head_from_probe(labeled, encoder, train, val)
    frozen = dataclasses.replace(FAST, lr_head=0.0, lr_encoder=0.0)  # no step can do better
    result = finetune(encoder, encoder.out_dim, labeled.images, labeled.labels, train, val, test, 0, frozen, head=head)
    assert result.best_step == 0 and result.steps == 2 * FAST.eval_every  # patience 2 after the start
    expected = head(features[torch.as_tensor(test)]).detach().double().numpy()
    assert np.allclose(result.test_scores, expected, atol=1e-4)


def test_fine_tuning_from_a_probe_head_starts_where_a_random_head_does_not(labeled, tiny_config):
    train, val, test = (labeled.indices(s) for s in ("train", "val", "test"))
    encoder = build_encoder(tiny_config, None, 0)
    head, _ = _head_from_probe(labeled, encoder, train, val)
    kept = finetune(encoder, encoder.out_dim, labeled.images, labeled.labels, train, val, test, 0, FAST, head=head)
    plain = _run(labeled, tiny_config, 0)
    assert not np.allclose(kept.test_scores, plain.test_scores, atol=1e-3)


def test_a_head_of_the_wrong_shape_is_refused(labeled, tiny_config):
    import pytest

    encoder = build_encoder(tiny_config, None, 0)
    train, val, test = (labeled.indices(s) for s in ("train", "val", "test"))
    wrong = torch.nn.Linear(encoder.out_dim + 1, labeled.labels.shape[1])
    expected = f"head maps {encoder.out_dim + 1} -> 2 features; expected {encoder.out_dim} -> 2"
    with pytest.raises(ValueError, match=expected):
        finetune(encoder, encoder.out_dim, labeled.images, labeled.labels, train, val, test, 0, FAST, head=wrong)
