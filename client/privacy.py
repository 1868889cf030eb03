"""A site's differential privacy in the ClientApp: budget check, DP training, private release.

The ML side (opacus DP-SGD, update clipping + noise, the RDP ledger) is ``core/privacy.py``;
this module turns it into replies. See docs/privacy.md.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.app.typing import MetricRecordValues

from fedvlp.core.config import ConfigError, RunConfig, SiteConfig
from fedvlp.core.params import ARRAYS_KEY, COUNTS_KEY, METRICS_KEY
from fedvlp.core.privacy import (
    DPPlan,
    DPSGDTrainer,
    PrivacyLedger,
    clip_and_noise,
    ledger_path,
    plan_privacy,
    round_mechanisms,
    run_key,
    source_epsilon,
    source_key,
)
from fedvlp.core.train import LocalResult, LocalTrainer

__all__ = ["SitePrivacy", "check_pins", "site_privacy", "DP_LEVELS"]

log = logging.getLogger("fedvlp.client")

DP_LEVELS = {"sample": 1.0, "client": 2.0}  # metric dp/level (metrics are numbers)

_PRIVACY: dict[int, SitePrivacy] = {}  # per cached LocalTrainer of this process


def check_pins(site: SiteConfig, run: RunConfig, plan: DPPlan) -> None:
    """Refuse a run config that asks for less noise or a larger clip than the site file pins.

    Only the settings of the site's DP level count (sample level: ``dp-noise-multiplier``,
    ``dp-max-grad-norm``; client level: ``dp-client-noise-multiplier``, ``dp-client-clip``).

    Raises
    ------
    ConfigError
        Naming the run-config key, the site file's pin and the value the run asked for.
    """
    pins = site.pins
    if plan.level == "sample":
        checks = [
            ("dp-noise-multiplier", run.dp_noise_multiplier, pins.min_noise_multiplier, ">="),
            ("dp-max-grad-norm", run.dp_max_grad_norm, pins.max_grad_norm, "<="),
        ]
    else:
        checks = [
            ("dp-client-noise-multiplier", run.dp_client_noise_multiplier, pins.min_client_noise_multiplier, ">="),
            ("dp-client-clip", run.dp_client_clip, pins.max_client_clip, "<="),
        ]
    pin_names = {
        "dp-noise-multiplier": "min_noise_multiplier",
        "dp-max-grad-norm": "max_grad_norm",
        "dp-client-noise-multiplier": "min_client_noise_multiplier",
        "dp-client-clip": "max_client_clip",
    }
    for key, value, pin, op in checks:
        if pin is not None and (value < pin if op == ">=" else value > pin):
            raise ConfigError(
                "run_config",
                key,
                f"{op} {pin:g}, the pin privacy.{pin_names[key]} of site file {site.path}; "
                "this site does not train with less noise or a larger clip",
                value,
            )


class SitePrivacy:
    """DP for one site and run: the level from its objectives, its lifetime ledger, its budgets.

    Parameters
    ----------
    site
        The site; ``site.epsilon`` is its budget per run, ``site.lifetime_epsilon`` (default:
        ``site.epsilon``) its budget over every run, ``site.delta`` its delta, ``site.pins``
        the noise / clip limits a run may not go past.
    run
        Noise multipliers and clipping norms (``dp-*`` run-config keys).
    trainer
        The site's plain trainer (model, datasets, objectives).
    generator
        Source of the DP noise and the Poisson sampling; secret (OS-seeded) when omitted.
    """

    def __init__(
        self, site: SiteConfig, run: RunConfig, trainer: LocalTrainer, generator: torch.Generator | None = None
    ) -> None:
        assert site.epsilon is not None
        self.site, self.run, self.trainer, self.generator = site, run, trainer, generator
        self.budget, self.delta = float(site.epsilon), float(site.delta)
        self.lifetime_budget = float(site.lifetime_epsilon if site.lifetime_epsilon is not None else site.epsilon)
        self.plan = plan_privacy(trainer, run)
        check_pins(site, run, self.plan)
        self.mechanisms = round_mechanisms(self.plan, trainer, run)
        keys = [source_key(site, i) for i in self.plan.sources]
        # Sample level: one mechanism per training source; client level: one release of all of them.
        self.mechanism_sources = [[k] for k in keys] if self.plan.level == "sample" else [keys]
        self.ledger_path = ledger_path(site)
        self.run_key = run_key(run)
        self._dpsgd = DPSGDTrainer(trainer, run, self.plan.sources, generator) if self.plan.level == "sample" else None
        log.info("Site %s: %s-level DP (%s)", site.name, self.plan.level, self.plan.reason)

    def ledger(self) -> PrivacyLedger:
        """The site's lifetime ledger as on disk now."""
        return PrivacyLedger.load(self.ledger_path, adopt_legacy=self.site.name)

    def spent(self) -> float:
        """Epsilon spent so far in this run (from the ledger on disk)."""
        return self.ledger().epsilon(self.delta, run=self.run_key)

    def lifetime_spent(self) -> float:
        """Epsilon spent so far over every run of this site (from the ledger on disk)."""
        return self.ledger().epsilon(self.delta)

    def exhausted(self) -> bool:
        """Whether one more round would exceed the run budget or the lifetime budget, of the
        site or of one of its data sources (over every site ledger of the state folder)."""
        ledger = self.ledger()
        if (
            ledger.epsilon(self.delta, self.mechanisms, run=self.run_key) > self.budget
            or ledger.epsilon(self.delta, self.mechanisms) > self.lifetime_budget
        ):
            return True
        for key in {k for keys in self.mechanism_sources for k in keys}:
            extra = [m for m, keys in zip(self.mechanisms, self.mechanism_sources) if key in keys]
            if source_epsilon(self.ledger_path.parent, key, self.delta, extra) > self.lifetime_budget:
                return True
        return False

    def _metrics(self, spent: float, exhausted: bool) -> dict[str, float]:
        return {
            "dp/epsilon": spent,
            "dp/lifetime-epsilon": self.lifetime_spent(),
            "dp/delta": self.delta,
            "dp/epsilon-budget": self.budget,
            "dp/lifetime-epsilon-budget": self.lifetime_budget,
            "dp/level": DP_LEVELS[self.plan.level],
            "dp/budget-exhausted": float(exhausted),
        }

    def exhausted_reply(self) -> RecordDict:
        """A reply that trains nothing: no arrays, no counts, and a metric saying why."""
        spent, lifetime = self.spent(), self.lifetime_spent()
        log.warning(
            "Site %s: another round would exceed the privacy budget (this run: spent %.3f of %g; lifetime: spent "
            "%.3f of %g, ledger %s); not contributing",
            self.site.name,
            spent,
            self.budget,
            lifetime,
            self.lifetime_budget,
            self.ledger_path,
        )
        metrics: dict[str, MetricRecordValues] = dict(self._metrics(spent, True))
        return RecordDict(
            {
                ARRAYS_KEY: ArrayRecord({}),
                COUNTS_KEY: MetricRecord({}),
                METRICS_KEY: MetricRecord(metrics),
            }
        )

    def train(self, steps: int, seed: int = 0) -> LocalResult:
        """DP-SGD at sample level; plain local training at client level (noise comes on release)."""
        return self._dpsgd.train(steps, seed) if self._dpsgd is not None else self.trainer.train(steps, seed)

    def release(
        self,
        global_state: Mapping[str, torch.Tensor],
        trained: Mapping[str, torch.Tensor],
        metrics: Mapping[str, float],
        server_round: int,
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """What may leave the site, and the round's spend recorded in the ledger.

        Only parameters leave (BatchNorm running statistics would be an un-noised data
        summary); at client level they are clipped and noised; training losses stay home
        (they are computed on the data without noise).
        """
        parameters = {name for name, _ in self.trainer.model.named_parameters()}
        out = {k: v for k, v in trained.items() if k in parameters}
        if self.plan.level == "client":
            out, _ = clip_and_noise(
                global_state, out, self.run.dp_client_clip, self.run.dp_client_noise_multiplier, self.generator
            )
        ledger = self.ledger()
        ledger.record(server_round, self.mechanisms, self.run_key, self.mechanism_sources)
        released = {k: v for k, v in metrics.items() if not k.startswith("loss/")}
        return out, {**released, **self._metrics(ledger.epsilon(self.delta, run=self.run_key), False)}


def site_privacy(site: SiteConfig, run: RunConfig, trainer: LocalTrainer) -> SitePrivacy | None:
    """The site's :class:`SitePrivacy` (one per cached trainer), or None without ``privacy.epsilon``."""
    if site.epsilon is None:
        return None
    if id(trainer) not in _PRIVACY:
        _PRIVACY[id(trainer)] = SitePrivacy(site, run, trainer)
    private = _PRIVACY[id(trainer)]
    # A trainer serves every run of one configuration; each run (out-dir) has its own run budget,
    # and all of them draw on the one lifetime ledger.
    private.run_key = run_key(run)
    return private
