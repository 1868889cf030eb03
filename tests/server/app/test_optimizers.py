"""Server optimizers: FedAdam and FedYogi on the pseudo-gradient, per key, with saved state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedvlp.core.checkpoint import load_latest, save_round
from fedvlp.server.app.optimizers import ServerOptimizer

GLOBAL = {
    "image.w": torch.tensor([0.5, -1.0, 2.0]),
    "text.w": torch.tensor([[1.0, 0.0]]),
    "image.bn.running_var": torch.ones(3),
}
PARAMETERS = frozenset({"image.w", "text.w"})


def _flower_rule(
    kind: str, rounds: list[np.ndarray], x: np.ndarray, lr: float, b1: float, b2: float, tau: float
) -> np.ndarray:
    """flwr.serverapp.strategy.FedAdam / FedYogi.aggregate_train (1.41) for one array, by hand."""
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    for t, aggregate in enumerate(rounds, start=1):
        delta = aggregate - x
        m = b1 * m + (1 - b1) * delta
        if kind == "fedadam":
            v = b2 * v + (1 - b2) * delta**2
            eta = lr * np.sqrt(1 - b2 ** (t + 1.0)) / (1 - b1 ** (t + 1.0))
        else:
            v = v - (1 - b2) * delta**2 * np.sign(v - delta**2)
            eta = lr
        x = x + eta * m / (np.sqrt(v) + tau)
    return x


@pytest.mark.parametrize("kind", ["fedadam", "fedyogi"])
def test_three_rounds_follow_flowers_update_rule(kind: str) -> None:
    rng = np.random.default_rng(0)
    optimizer = ServerOptimizer(kind, PARAMETERS, lr=0.05, beta1=0.9, beta2=0.99, tau=1e-3)
    state = {k: v.clone() for k, v in GLOBAL.items()}
    aggregates: list[np.ndarray] = []
    for _ in range(3):
        target = {k: v + torch.from_numpy(rng.normal(0, 0.1, v.shape)).float() for k, v in state.items()}
        aggregates.append(target["image.w"].double().numpy())
        state = optimizer.step(state, target, set(target))
    # Flower's rule, replayed round by round from the float32 global weights each round started at
    current = GLOBAL["image.w"].double().numpy()
    m = np.zeros(3)
    v = np.zeros(3)
    for t, aggregate in enumerate(aggregates, start=1):
        delta = aggregate - current
        m = 0.9 * m + 0.1 * delta
        if kind == "fedadam":
            v = 0.99 * v + 0.01 * delta**2
            eta = 0.05 * np.sqrt(1 - 0.99 ** (t + 1.0)) / (1 - 0.9 ** (t + 1.0))
        else:
            v = v - 0.01 * delta**2 * np.sign(v - delta**2)
            eta = 0.05
        expected = current + eta * m / (np.sqrt(v) + 1e-3)
        current = expected.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(state["image.w"].numpy(), expected, rtol=1e-6, atol=1e-7)
    assert int(optimizer.state["t.image.w"]) == 3


@pytest.mark.parametrize("kind", ["fedadam", "fedyogi"])
def test_one_round_by_hand(kind: str) -> None:
    x = GLOBAL["text.w"].double().numpy()
    aggregate = x + np.array([[0.2, -0.4]])
    expected = _flower_rule(kind, [aggregate], x, lr=0.1, b1=0.9, b2=0.99, tau=1e-3)
    optimizer = ServerOptimizer(kind, PARAMETERS, lr=0.1)
    out = optimizer.step(GLOBAL, {**GLOBAL, "text.w": torch.from_numpy(aggregate).float()}, {"text.w"})
    np.testing.assert_allclose(out["text.w"].numpy(), expected, rtol=1e-6)
    if kind == "fedyogi":  # m = 0.1 d, v = 0.01 d^2: a step of lr * 0.1 d / (0.1 |d| + tau)
        np.testing.assert_allclose(
            out["text.w"].numpy(),
            x + 0.1 * 0.1 * np.array([[0.2, -0.4]]) / (0.1 * np.array([[0.2, 0.4]]) + 1e-3),
            rtol=1e-6,
        )


def test_keys_nobody_carried_keep_weights_and_moments() -> None:
    optimizer = ServerOptimizer("fedadam", PARAMETERS)
    moved = {k: v + 1 for k, v in GLOBAL.items()}
    optimizer.step(GLOBAL, moved, {"image.w", "text.w"})
    text_m = optimizer.state["m.text.w"].clone()
    out = optimizer.step(GLOBAL, {**GLOBAL, "image.w": GLOBAL["image.w"] + 1}, {"image.w"})
    assert torch.equal(out["text.w"], GLOBAL["text.w"])
    assert torch.equal(optimizer.state["m.text.w"], text_m)
    assert int(optimizer.state["t.text.w"]) == 1 and int(optimizer.state["t.image.w"]) == 2


def test_buffers_take_the_aggregate_and_fedavg_is_the_identity() -> None:
    aggregate = {k: v * 0.5 for k, v in GLOBAL.items()}
    out = ServerOptimizer("fedadam", PARAMETERS).step(GLOBAL, aggregate, set(GLOBAL))
    assert torch.equal(out["image.bn.running_var"], aggregate["image.bn.running_var"])
    fedavg = ServerOptimizer("fedavg", PARAMETERS)
    assert all(torch.equal(v, aggregate[k]) for k, v in fedavg.step(GLOBAL, aggregate, set(GLOBAL)).items())
    assert fedavg.state_tensors() == {}


def test_state_survives_a_checkpoint_bit_for_bit(tmp_path: Path) -> None:
    optimizer = ServerOptimizer("fedyogi", PARAMETERS)
    state = optimizer.step(GLOBAL, {k: v + 0.3 for k, v in GLOBAL.items()}, set(GLOBAL))
    save_round(tmp_path, 1, state, {}, optimizer.state_tensors())
    restored = ServerOptimizer("fedyogi", PARAMETERS)
    restored.load_state_tensors(load_latest(tmp_path).extra)  # type: ignore[union-attr]
    step = {k: v - 0.2 for k, v in state.items()}
    a, b = optimizer.step(state, step, set(GLOBAL)), restored.step(state, step, set(GLOBAL))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert optimizer.state_tensors().keys() == restored.state_tensors().keys()
    assert all(torch.equal(optimizer.state[k], restored.state[k]) for k in optimizer.state)
