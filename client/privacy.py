"""A site's differential privacy in the ClientApp: budget check, DP training, private release.

The ML side (opacus DP-SGD, update clipping + noise, the RDP ledger) is ``core/privacy.py``;
this module turns it into replies. See docs/privacy.md.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict

from fedvlp.core.config import RunConfig, SiteConfig
from fedvlp.core.params import ARRAYS_KEY, COUNTS_KEY, METRICS_KEY
from fedvlp.core.privacy import DPSGDTrainer, PrivacyLedger, clip_and_noise, ledger_path, plan_privacy, round_mechanisms
from fedvlp.core.train import LocalResult, LocalTrainer

__all__ = ["SitePrivacy", "site_privacy", "DP_LEVELS"]

log = logging.getLogger("fedvlp.client")

DP_LEVELS = {"sample": 1.0, "client": 2.0}  # metric dp/level (metrics are numbers)

_PRIVACY: dict[int, SitePrivacy] = {}  # per cached LocalTrainer of this process


class SitePrivacy:
    """DP for one site and run: the level from its objectives, its ledger, its budget.

    Parameters
    ----------
    site
        The site; ``site.epsilon`` is its budget and ``site.delta`` its delta.
    run
        Noise multipliers and clipping norms (``dp-*`` run-config keys).
    trainer
        The site's plain trainer (model, datasets, objectives).
    generator
        Source of the DP noise and the Poisson sampling; secret (OS-seeded) when omitted.
    """

    def __init__(self, site: SiteConfig, run: RunConfig, trainer: LocalTrainer, generator: torch.Generator | None = None) -> None:
        assert site.epsilon is not None
        self.site, self.run, self.trainer, self.generator = site, run, trainer, generator
        self.budget, self.delta = float(site.epsilon), float(site.delta)
        self.plan = plan_privacy(trainer, run)
        self.mechanisms = round_mechanisms(self.plan, trainer, run)
        self.ledger_path = ledger_path(site, run)
        self._dpsgd = DPSGDTrainer(trainer, run, self.plan.sources, generator) if self.plan.level == "sample" else None
        log.info("Site %s: %s-level DP (%s)", site.name, self.plan.level, self.plan.reason)

    def spent(self) -> float:
        """Epsilon spent so far in this run (from the ledger on disk)."""
        return PrivacyLedger.load(self.ledger_path).epsilon(self.delta)

    def exhausted(self) -> bool:
        """Whether one more round would exceed the budget."""
        return PrivacyLedger.load(self.ledger_path).epsilon(self.delta, self.mechanisms) > self.budget

    def _metrics(self, spent: float, exhausted: bool) -> dict[str, float]:
        return {
            "dp/epsilon": spent,
            "dp/delta": self.delta,
            "dp/epsilon-budget": self.budget,
            "dp/level": DP_LEVELS[self.plan.level],
            "dp/budget-exhausted": float(exhausted),
        }

    def exhausted_reply(self) -> RecordDict:
        """A reply that trains nothing: no arrays, no counts, and a metric saying why."""
        spent = self.spent()
        log.warning("Site %s: privacy budget epsilon=%g would be exceeded by another round (spent %.3f); not contributing", self.site.name, self.budget, spent)
        return RecordDict({ARRAYS_KEY: ArrayRecord({}), COUNTS_KEY: MetricRecord({}), METRICS_KEY: MetricRecord(self._metrics(spent, True))})

    def train(self, steps: int, seed: int = 0) -> LocalResult:
        """DP-SGD at sample level; plain local training at client level (noise comes on release)."""
        return self._dpsgd.train(steps, seed) if self._dpsgd is not None else self.trainer.train(steps, seed)

    def release(
        self, global_state: Mapping[str, torch.Tensor], trained: Mapping[str, torch.Tensor], metrics: Mapping[str, float], server_round: int
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """What may leave the site, and the round's spend recorded in the ledger.

        Only parameters leave (BatchNorm running statistics would be an un-noised data
        summary); at client level they are clipped and noised; training losses stay home
        (they are computed on the data without noise).
        """
        parameters = {name for name, _ in self.trainer.model.named_parameters()}
        out = {k: v for k, v in trained.items() if k in parameters}
        if self.plan.level == "client":
            out, _ = clip_and_noise(global_state, out, self.run.dp_client_clip, self.run.dp_client_noise_multiplier, self.generator)
        ledger = PrivacyLedger.load(self.ledger_path)
        ledger.record(server_round, self.mechanisms)
        released = {k: v for k, v in metrics.items() if not k.startswith("loss/")}
        return out, {**released, **self._metrics(ledger.epsilon(self.delta), False)}


def site_privacy(site: SiteConfig, run: RunConfig, trainer: LocalTrainer) -> SitePrivacy | None:
    """The site's :class:`SitePrivacy` (one per cached trainer), or None without ``privacy.epsilon``."""
    if site.epsilon is None:
        return None
    if id(trainer) not in _PRIVACY:
        _PRIVACY[id(trainer)] = SitePrivacy(site, run, trainer)
    return _PRIVACY[id(trainer)]
