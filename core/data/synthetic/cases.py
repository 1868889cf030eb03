"""Latent cases of the synthetic world: patient anatomy and findings with their attributes.

A :class:`Case` drives both the rendered image (:mod:`.render`) and the report (:mod:`.reports`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["FINDINGS", "SEVERITIES", "DEVICES", "Anatomy", "Finding", "Case", "sample_case"]

FINDINGS: tuple[str, ...] = (
    "cardiomegaly",
    "pleural_effusion",
    "pneumothorax",
    "nodule",
    "consolidation",
    "support_devices",
)
SEVERITIES: tuple[str, ...] = ("mild", "moderate", "large")
DEVICES: tuple[str, ...] = ("endotracheal_tube", "central_line", "pacemaker", "nasogastric_tube")

_LUNG_FINDINGS = ("pleural_effusion", "pneumothorax", "nodule", "consolidation")


@dataclass(frozen=True)
class Anatomy:
    """Per-patient anatomy, in image fractions (patient frame, before pose jitter).

    Attributes
    ----------
    thorax_half_width
        Distance from the midline to the inner rib margin at the lung bases.
    apex, dome_right, dome_left
        Vertical position of the lung apices and of the top of each diaphragm dome.
    heart_ratio
        Cardiothoracic ratio of a normal heart (0.37-0.49); cardiomegaly widens it to > 0.5.
    heart_height
        Vertical half-axis of the heart shadow.
    mediastinum
        Half-width of the upper mediastinum.
    body_margin
        Soft tissue lateral to the ribs.
    soft_tissue
        Density of soft tissue (patient habitus / exposure).
    texture_seed
        Seed of the patient's vessel and rib texture (stable across the patient's studies).
    """

    thorax_half_width: float = 0.38
    apex: float = 0.13
    dome_right: float = 0.71
    dome_left: float = 0.73
    heart_ratio: float = 0.42
    heart_height: float = 0.12
    mediastinum: float = 0.06
    body_margin: float = 0.065
    soft_tissue: float = 0.52
    texture_seed: int = 0


@dataclass(frozen=True)
class Finding:
    """Attributes of one present finding (unused attributes are ``None`` / empty).

    Attributes
    ----------
    side
        ``"left"``, ``"right"`` or ``"bilateral"`` (patient side).
    severity
        ``"mild"``, ``"moderate"`` or ``"large"``.
    zone
        ``"upper"`` or ``"lower"`` lung zone (nodule, consolidation).
    size_mm
        Nodule diameter in millimetres.
    devices
        Support devices present (subset of :data:`DEVICES`).
    position
        ``(lateral, vertical)`` centre of a nodule or consolidation as fractions: distance
        from the midline towards ``side`` and fraction of the apex-to-dome height.
    """

    side: str | None = None
    severity: str | None = None
    zone: str | None = None
    size_mm: int | None = None
    devices: tuple[str, ...] = ()
    position: tuple[float, float] | None = None


@dataclass(frozen=True)
class Case:
    """One study: the patient's anatomy and the findings that are present.

    ``findings`` maps a name from :data:`FINDINGS` to its :class:`Finding`; absent findings
    are simply not in the mapping.
    """

    anatomy: Anatomy = Anatomy()
    findings: Mapping[str, Finding] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.findings) - set(FINDINGS)
        if unknown:
            raise ValueError(f"unknown findings {sorted(unknown)}; expected names from {FINDINGS}")

    def has(self, name: str) -> bool:
        """Whether finding ``name`` is present."""
        return name in self.findings

    @property
    def labels(self) -> dict[str, int]:
        """``{finding: 0 or 1}`` in :data:`FINDINGS` order."""
        return {name: int(name in self.findings) for name in FINDINGS}

    def with_findings(self, **findings: Finding | None) -> "Case":
        """A copy with findings added/replaced (``Finding``) or removed (``None``)."""
        new = dict(self.findings)
        for name, value in findings.items():
            if value is None:
                new.pop(name, None)
            else:
                new[name] = value
        return Case(self.anatomy, {k: new[k] for k in FINDINGS if k in new})


def _choice(rng: np.random.Generator, options: Sequence[Any], p: Sequence[float] | None = None) -> Any:
    """Pick one element of ``options`` (works for sequences of tuples, unlike ``rng.choice``)."""
    if p is None:
        return options[int(rng.integers(len(options)))]
    return options[int(rng.choice(len(options), p=np.asarray(p, dtype=float) / sum(p)))]


def _sample_anatomy(rng: np.random.Generator) -> Anatomy:
    dome_right = float(rng.uniform(0.68, 0.75))
    return Anatomy(
        thorax_half_width=float(rng.uniform(0.34, 0.40)),
        apex=float(rng.uniform(0.11, 0.15)),
        dome_right=dome_right,
        dome_left=dome_right + float(rng.uniform(0.005, 0.035)),
        heart_ratio=float(rng.uniform(0.37, 0.49)),
        heart_height=float(rng.uniform(0.11, 0.135)),
        mediastinum=float(rng.uniform(0.05, 0.065)),
        body_margin=float(rng.uniform(0.05, 0.085)),
        soft_tissue=float(rng.uniform(0.46, 0.58)),
        texture_seed=int(rng.integers(2**31 - 1)),
    )


def _sample_finding(name: str, rng: np.random.Generator) -> Finding:
    if name == "cardiomegaly":
        return Finding(severity=_choice(rng, SEVERITIES, (0.45, 0.35, 0.2)))
    if name == "pleural_effusion":
        return Finding(
            side=_choice(rng, ("left", "right", "bilateral"), (0.35, 0.35, 0.3)),
            severity=_choice(rng, SEVERITIES, (0.4, 0.4, 0.2)),
        )
    if name == "pneumothorax":
        return Finding(side=_choice(rng, ("left", "right")), severity=_choice(rng, SEVERITIES, (0.45, 0.35, 0.2)))
    if name == "nodule":
        zone = _choice(rng, ("upper", "lower"), (0.6, 0.4))
        lateral = float(rng.uniform(0.15, 0.27)) if zone == "upper" else float(rng.uniform(0.22, 0.29))
        vertical = float(rng.uniform(0.2, 0.42)) if zone == "upper" else float(rng.uniform(0.55, 0.72))
        return Finding(
            side=_choice(rng, ("left", "right")),
            zone=zone,
            size_mm=int(rng.integers(8, 25)),
            position=(lateral, vertical),
        )
    if name == "consolidation":
        zone = _choice(rng, ("upper", "lower"), (0.4, 0.6))
        lateral = float(rng.uniform(0.17, 0.26)) if zone == "upper" else float(rng.uniform(0.2, 0.28))
        vertical = float(rng.uniform(0.22, 0.4)) if zone == "upper" else float(rng.uniform(0.58, 0.74))
        return Finding(
            side=_choice(rng, ("left", "right", "bilateral"), (0.42, 0.42, 0.16)),
            severity=_choice(rng, SEVERITIES, (0.4, 0.4, 0.2)),
            zone=zone,
            position=(lateral, vertical),
        )
    if name == "support_devices":
        chosen = tuple(d for d, p in zip(DEVICES, (0.5, 0.4, 0.25, 0.3)) if rng.random() < p)
        return Finding(devices=chosen or (_choice(rng, DEVICES),))
    raise ValueError(f"unknown finding {name!r}")


def sample_case(rng: np.random.Generator, anatomy: Anatomy | None = None) -> Case:
    """Draw one study's latent findings (and, unless given, the patient's anatomy).

    Prevalences are 15-35 % with mild, clinically plausible correlations: support devices
    make pneumothorax and effusion more likely, and cardiomegaly makes effusion more likely.

    Parameters
    ----------
    rng
        Source of randomness; the result depends only on its state.
    anatomy
        Reuse this anatomy (a follow-up study of the same patient) instead of drawing one.

    Returns
    -------
    Case
    """
    anatomy = _sample_anatomy(rng) if anatomy is None else anatomy
    u = rng.random(len(FINDINGS))
    devices = u[5] < 0.28
    cardio = u[0] < 0.24
    present = {
        "cardiomegaly": cardio,
        "pleural_effusion": u[1] < 0.17 + 0.12 * cardio + 0.08 * devices,
        "pneumothorax": u[2] < 0.13 + 0.08 * devices,
        "nodule": u[3] < 0.2,
        "consolidation": u[4] < 0.2 + 0.07 * devices,
        "support_devices": devices,
    }
    return Case(anatomy, {name: _sample_finding(name, rng) for name in FINDINGS if present[name]})


def _follow_up(case: Case, rng: np.random.Generator, persistence: float = 0.6) -> Case:
    """A later study of the same patient: same anatomy, each finding kept w.p. ``persistence``."""
    fresh = sample_case(rng, case.anatomy)
    keep = rng.random(len(FINDINGS)) < persistence
    findings = {}
    for name, kept in zip(FINDINGS, keep):
        source = case if kept else fresh
        if name in source.findings:
            findings[name] = source.findings[name]
    return Case(case.anatomy, findings)
