"""Server optimizers applied to the aggregate: FedAvg, FedAdam, FedYogi (Reddi et al., 2021).

"Adaptive Federated Optimization" treats ``aggregate - global`` as a pseudo-gradient and feeds it
to an adaptive optimizer on the server. The update rules and defaults follow Flower's own
``flwr.serverapp.strategy.FedAdam`` / ``FedYogi`` (1.41), per key instead of over the whole model:

* ``m = beta1 m + (1 - beta1) d``
* FedAdam: ``v = beta2 v + (1 - beta2) d^2`` and
  ``x += lr sqrt(1 - beta2^(t+1)) / (1 - beta1^(t+1)) m / (sqrt(v) + tau)`` (Flower's bias
  correction, with ``t`` the round in Flower and here the number of rounds that updated the key)
* FedYogi: ``v = v - (1 - beta2) d^2 sign(v - d^2)`` and ``x += lr m / (sqrt(v) + tau)``

Modality-aware: only keys that some reply carried this round step (and count a step); the
others keep their weights and moments. Only trainable parameters are optimised: buffers
(BatchNorm statistics, step counters) take the aggregate as is, since an adaptive step could
drive a running variance negative. The state is a flat tensor dict (``m.<key>``, ``v.<key>``,
``t.<key>``) saved beside each round's weights, so a resumed run continues bit for bit.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import torch

from fedvlp.core.config import SERVER_OPTIMIZERS

__all__ = ["SERVER_OPTIMIZERS", "ServerOptimizer"]


@dataclass
class ServerOptimizer:
    """One of :data:`SERVER_OPTIMIZERS` with its moment state.

    Parameters
    ----------
    kind
        ``fedavg`` (the aggregate becomes the global model), ``fedadam`` or ``fedyogi``.
    parameters
        Names of the trainable parameters; other keys (buffers) are never stepped.
    lr, beta1, beta2, tau
        Server learning rate, first and second moment decay, adaptivity (Reddi et al.).
    """

    kind: str
    parameters: frozenset[str]
    lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    state: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in SERVER_OPTIMIZERS:
            raise ValueError(f"unknown server optimizer '{self.kind}', expected one of {SERVER_OPTIMIZERS}")

    def step(
        self, current: Mapping[str, torch.Tensor], aggregated: Mapping[str, torch.Tensor], carried: Collection[str]
    ) -> dict[str, torch.Tensor]:
        """The new global weights from the round's aggregate.

        Parameters
        ----------
        current
            Global weights the round started from.
        aggregated
            The aggregate (keys nobody carried equal ``current``).
        carried
            Keys that at least one accepted reply carried.
        """
        if self.kind == "fedavg":
            return {k: v.clone() for k, v in aggregated.items()}
        out = {k: v.clone() for k, v in aggregated.items()}
        # sorted: the state dict's insertion order, hence the saved file, is reproducible
        for key in sorted(k for k in carried if k in self.parameters and current[k].is_floating_point()):
            x = current[key].to(torch.float64)
            delta = aggregated[key].to(torch.float64) - x
            m = self.state.get(f"m.{key}", torch.zeros_like(x))
            v = self.state.get(f"v.{key}", torch.zeros_like(x))
            t = int(self.state.get(f"t.{key}", torch.tensor(0, dtype=torch.int64))) + 1
            m = self.beta1 * m + (1 - self.beta1) * delta
            if self.kind == "fedadam":
                v = self.beta2 * v + (1 - self.beta2) * delta**2
                lr = self.lr * (1 - self.beta2 ** (t + 1)) ** 0.5 / (1 - self.beta1 ** (t + 1))
            else:
                v = v - (1 - self.beta2) * delta**2 * torch.sign(v - delta**2)
                lr = self.lr
            self.state[f"m.{key}"], self.state[f"v.{key}"] = m, v
            self.state[f"t.{key}"] = torch.tensor(t, dtype=torch.int64)
            out[key] = (x + lr * m / (v.sqrt() + self.tau)).to(current[key].dtype)
        return out

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The moment state as a flat tensor dict (empty for FedAvg)."""
        return {k: self.state[k] for k in sorted(self.state)}

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_tensors` returned (from a checkpoint)."""
        self.state = {k: v.clone() for k, v in tensors.items()}
