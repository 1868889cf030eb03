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
