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


def test_raw_head_folds_the_standardisation_into_the_weights():
    from fedvlp.core.evaluation import FittedProbe

    layer = torch.nn.Linear(2, 1).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0]]))
        layer.bias.fill_(0.5)
    probe = FittedProbe(layer, torch.tensor([1.0, -2.0]).double(), torch.tensor([2.0, 4.0]).double(), 0.9, 1.0)
    head = probe.raw_head()
    # W / std = [0.5, 0.5]; b - (W / std) . mean = 0.5 - (0.5 - 1.0) = 1.0
    assert head.weight.tolist() == [[0.5, 0.5]] and head.bias.tolist() == [1.0]
    x = torch.tensor([[3.0, 6.0]])  # standardised: [1, 2] -> 1 + 4 + 0.5 = 5.5
    assert head(x).item() == 5.5 == layer(probe.standardise(x)).item()


def test_linear_probe_scores_are_its_fitted_probe_on_the_test_rows():
    from fedvlp.core.evaluation import fit_probe

    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(3.0, 2.0, size=(90, 6))).float()
    y = (x[:, :1] > 3.0).float()
    idx = np.arange(90)
    fitted = fit_probe(x, y, idx[:40], idx[40:70], weight_decays=(1.0, 1e-2), standardise_idx=idx[:70])
    result = linear_probe(x, y, idx[:40], idx[40:70], idx[70:], weight_decays=(1.0, 1e-2), standardise_idx=idx[:70])
    assert (result.weight_decay, result.val_auc) == (fitted.weight_decay, fitted.val_auc)
    raw = fitted.raw_head()(x[70:]).detach().numpy()
    assert np.allclose(raw, result.test_scores, atol=1e-4)
