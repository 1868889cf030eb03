import numpy as np
import torch

from fedvlp.core.evaluation import auc_per_class, build_encoder, extract_features, linear_probe


def test_linear_probe_learns_a_clearly_separable_fixture(labeled, tiny_config):
    features = extract_features(build_encoder(tiny_config, None, seed=0), labeled.images)
    train, val, test = (labeled.indices(s) for s in ("train", "val", "test"))
    result = linear_probe(features, labeled.labels, train, val, test, standardise_idx=train)
    aucs = auc_per_class(labeled.labels[test], result.test_scores, labeled.label_names)
    assert aucs["square"] > 0.9  # a big bright square: clearly separable even on random features


def test_linear_probe_picks_its_weight_decay_from_the_grid_and_is_deterministic():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(120, 8))).float()
    y = (x[:, :1] + 0.5 * torch.from_numpy(rng.normal(size=(120, 1))).float() > 0).float()
    idx = np.arange(120)
    first = linear_probe(x, y, idx[:60], idx[60:90], idx[90:], weight_decays=(1.0, 1e-2))
    second = linear_probe(x, y, idx[:60], idx[60:90], idx[90:], weight_decays=(1.0, 1e-2))
    assert first.weight_decay in (1.0, 1e-2)
    assert first.test_scores.shape == (30, 1)
    assert np.array_equal(first.test_scores, second.test_scores)


def test_extract_features_is_batched_and_restores_train_mode(labeled, tiny_config):
    encoder = build_encoder(tiny_config, None, seed=0).train()
    all_at_once = extract_features(encoder, labeled.images, batch_size=1000)
    batched = extract_features(encoder, labeled.images, batch_size=7)
    assert encoder.training
    assert batched.shape == (len(labeled), encoder.out_dim)
    assert torch.allclose(all_at_once, batched, atol=1e-5)
