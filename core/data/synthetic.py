"""The embedded default "data world": synthetic chest radiographs, reports and labels.

Every study is one latent :class:`Case` (patient anatomy plus findings with side, size and
device attributes). The same case drives the rendered image (:func:`render_image`), the
radiology-style report (:func:`write_report`) and the labels, so images and reports share
exactly the information that image-text pretraining can exploit, while the labels are only
written where the evaluation needs them (never into a pretraining manifest).

:func:`generate_world` writes ordinary manifests (CSV) and PNG files, so the synthetic world
goes through the same loading path as real data::

    out_dir/
      world.json                  the spec + format version (cache key)
      hospital_a/manifest.csv     id, image, report, patient_id, study_id   (image + report pairs)
      hospital_b/manifest.csv     id, image, patient_id                     (images only)
      hospital_c/manifest.csv     id, report                                (reports only)
      labeled/manifest.csv        id, image, patient_id, split, label_<finding>...
      hospital_{a,b,c}/labels.csv id, label_<finding>...  (retrieval evaluation only)

Radiographs are shown in the usual orientation: the patient's right is on the image's left.

Command line::

    python -m fedvlp.core.data.synthetic OUT_DIR [--quick] [--seed N]
    python -m fedvlp.core.data.synthetic --write-vocab
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image

__all__ = [
    "FINDINGS",
    "FINDING_KEYWORDS",
    "SEVERITIES",
    "DEVICES",
    "SITES",
    "FORMAT_VERSION",
    "Anatomy",
    "Finding",
    "Case",
    "Acquisition",
    "WorldSpec",
    "PlannedItem",
    "sample_case",
    "render_image",
    "write_report",
    "plan_site",
    "generate_world",
    "demo_vocabulary",
    "write_vocabulary",
    "main",
]

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
SITES: tuple[str, ...] = ("hospital_a", "hospital_b", "hospital_c", "labeled")
FORMAT_VERSION = 1

_LUNG_FINDINGS = ("pleural_effusion", "pneumothorax", "nodule", "consolidation")
_SITE_PREFIX = {"hospital_a": "a", "hospital_b": "b", "hospital_c": "c", "labeled": "l"}
_VOCAB_FILE = Path(__file__).resolve().parent / "vocab" / "demo.txt"


# =============================================================================== latent cases
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


# =============================================================================== images
@dataclass(frozen=True)
class Acquisition:
    """How a site's scanner turns density into pixel values.

    Attributes
    ----------
    gamma
        Exponent applied to the normalised intensity (``< 1`` brightens mid-tones).
    contrast
        Multiplier around mid-grey before the gamma.
    brightness
        Additive offset before the gamma.
    noise
        Standard deviation of additive Gaussian noise (in ``[0, 1]`` intensity units).
    blur
        Gaussian blur sigma in pixels at native resolution (``0`` = none).
    """

    gamma: float = 1.0
    contrast: float = 1.0
    brightness: float = 0.0
    noise: float = 0.015
    blur: float = 0.0


@lru_cache(maxsize=16)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = ((np.arange(size, dtype=np.float32) + 0.5) / size - 0.5).astype(np.float32)
    return np.broadcast_to(c[None, :], (size, size)), np.broadcast_to(c[:, None], (size, size))


def _ramp(z: np.ndarray) -> np.ndarray:
    """Soft step: 0 below -0.5, 1 above 0.5, linear in between (an anti-aliased edge)."""
    return np.clip(z + 0.5, 0.0, 1.0)


def _lowfreq(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in about [-1, 1]: a ``cells x cells`` random grid upsampled bicubically."""
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    big = Image.fromarray(small, mode="F").resize((size, size), Image.BICUBIC)
    return np.asarray(big, dtype=np.float32) * 0.7


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge padding (vectorised: shifted sums)."""
    if sigma <= 0.05:
        return img
    radius = max(1, int(round(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(np.float32)
    k /= k.sum()
    n = img.shape[0]
    pad = np.pad(img, ((radius, radius), (0, 0)), mode="edge")
    img = sum(w * pad[i : i + n] for i, w in enumerate(k))
    pad = np.pad(img, ((0, 0), (radius, radius)), mode="edge")
    return sum(w * pad[:, i : i + n] for i, w in enumerate(k))


def _polyline_distance(x: np.ndarray, y: np.ndarray, points: Sequence[tuple[float, float]]) -> np.ndarray:
    """Distance from every grid point to a polyline (vectorised per segment)."""
    best = None
    for (ax, ay), (bx, by) in zip(points[:-1], points[1:]):
        dx, dy = bx - ax, by - ay
        t = np.clip(((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy + 1e-12), 0.0, 1.0)
        d2 = (x - ax - t * dx) ** 2 + (y - ay - t * dy) ** 2
        best = d2 if best is None else np.minimum(best, d2)
    return np.sqrt(best)


def _side_value(right: np.ndarray, value_right: float, value_left: float) -> np.ndarray | float:
    """Per-pixel value of a side-specific parameter (``right`` marks the patient's right)."""
    if value_right == value_left:
        return value_right
    return np.where(right, np.float32(value_right), np.float32(value_left))


def _lung(
    ad: np.ndarray,
    y: np.ndarray,
    right: np.ndarray,
    a: Anatomy,
    e: float,
    lat_inset: np.ndarray | float = 0.0,
    top_inset: np.ndarray | float = 0.0,
) -> np.ndarray:
    """Soft mask of both lung fields (``ad`` = distance from the midline)."""
    w = a.thorax_half_width
    dome = _side_value(right, a.dome_right, a.dome_left)
    d_apex = 0.42 * w
    t = np.clip((y - a.apex) / (dome - a.apex), 0.0, 1.0)
    lateral = d_apex + (w - d_apex) * np.clip(t / 0.7, 0.0, 1.0) ** 0.45 - lat_inset
    medial = a.mediastinum * (0.85 + 0.4 * t)
    top = a.apex + top_inset + 3.2 * (ad - d_apex) ** 2
    bottom = dome + 0.13 * ((ad - 0.45 * w) / (0.55 * w)) ** 2
    return _ramp((lateral - ad) / e) * _ramp((ad - medial) / e) * _ramp((y - top) / e) * _ramp((bottom - y) / e)


def _rounded_box(x: np.ndarray, y: np.ndarray, cx: float, cy: float, half_w: float, half_h: float,
                 radius: float) -> np.ndarray:
    """Signed distance to a rounded rectangle (negative inside)."""
    qx = np.abs(x - cx) - half_w + radius
    qy = np.abs(y - cy) - half_h + radius
    return np.sqrt(np.maximum(qx, 0.0) ** 2 + np.maximum(qy, 0.0) ** 2) + np.minimum(np.maximum(qx, qy), 0.0) - radius


def render_image(
    case: Case,
    rng: np.random.Generator,
    size: int = 128,
    acquisition: Acquisition = Acquisition(),
) -> np.ndarray:
    """Render a frontal chest radiograph of ``case``.

    The random draws (pose, exposure, texture, noise) do not depend on the findings, so the
    same ``rng`` state renders the same patient with and without a finding: only the finding
    changes. The patient's right is on the image's left.

    Parameters
    ----------
    case
        Anatomy and findings to draw.
    rng
        Per-image randomness (pose, exposure, noise, finding texture).
    size
        Output width and height in pixels (the site's native resolution).
    acquisition
        Scanner characteristics (contrast, gamma, noise, blur).

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of shape ``(size, size)``; bright = dense.
    """
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    a = case.anatomy
    f = case.findings
    # ---- all random draws first, in a fixed order (independent of the findings)
    angle = float(np.clip(rng.normal(0.0, 2.0), -5.0, 5.0)) * np.pi / 180.0
    shift_x, shift_y = float(rng.uniform(-0.035, 0.035)), float(rng.uniform(-0.03, 0.03))
    scale = float(rng.uniform(0.93, 1.06))
    contrast = acquisition.contrast * float(rng.uniform(0.85, 1.15))
    brightness = acquisition.brightness + float(rng.uniform(-0.06, 0.06))
    heel = float(rng.uniform(-0.08, 0.08))
    detail_seed = int(rng.integers(2**31 - 1))
    noise = rng.standard_normal((size, size)).astype(np.float32) * np.float32(acquisition.noise)
    patient = np.random.default_rng(a.texture_seed)  # stable per patient: vessels, ribs, mottle
    phases = patient.uniform(0, 2 * np.pi, 6)
    freqs = patient.integers(16, 34, 3)
    rib_offset = float(patient.uniform(0.0, 0.06))
    mottle = _lowfreq(patient, size, 16)
    detail = np.random.default_rng(detail_seed)

    # ---- patient-frame coordinates: x signed from the midline (negative = patient right)
    gu, gv = _grid(size)
    cos, sin = np.cos(angle), np.sin(angle)
    xr, yr = gu - shift_x, gv - shift_y
    x = ((cos * xr + sin * yr) / scale).astype(np.float32)
    y = ((-sin * xr + cos * yr) / scale + 0.5).astype(np.float32)
    ad = np.abs(x)
    right = x < 0
    e = 1.2 / size
    w = a.thorax_half_width
    dome_r, dome_l = a.dome_right, a.dome_left
    dome = _side_value(right, dome_r, dome_l)

    # ---- body silhouette (neck, sloping shoulders, chest wall, arms) and soft tissue
    chest = w + a.body_margin
    slope = np.clip((y + 0.02) / 0.2, 0.0, 1.0)
    body_half = 0.085 + (chest - 0.085) * np.sin(0.5 * np.pi * slope) ** 0.6
    body_half = body_half - 0.03 * np.clip((y - 0.8) / 0.2, 0.0, 1.0)  # waist
    body = _ramp((body_half - ad) / (2 * e))
    arm_half = chest + 0.075 * np.clip(1.0 - (y - 0.35) / 0.4, 0.0, 1.0)
    arm = _ramp((arm_half - ad) / (2 * e)) * _ramp((y - 0.03 - 0.8 * (ad - chest)) / (3 * e)) * (1.0 - body)
    thickness = np.clip(1.0 - (ad / chest) ** 4, 0.0, 1.0)  # thinner at the edges
    dens = body * (a.soft_tissue * (0.7 + 0.3 * thickness)) + arm * 0.32

    # ---- bones: spine, clavicles, humeral heads, ribs
    dens += body * 0.07 * _ramp((0.032 - ad) / e)
    cx = ad - 0.025
    clav_y = a.apex + 0.06 - 0.32 * cx + 0.35 * cx * cx
    clav_half = 0.015 + 0.006 * np.clip(1.0 - cx / 0.1, 0.0, 1.0)
    clav = _ramp((clav_half - np.abs(y - clav_y)) / e) * _ramp((chest - 0.02 - ad) / e) * _ramp(cx / e)
    dens += 0.16 * clav
    humerus = _ramp((0.065 - np.sqrt((ad - chest - 0.005) ** 2 + (y - a.apex - 0.02) ** 2)) / (2 * e))
    dens += 0.2 * humerus * np.maximum(body, arm)
    lung_full = _lung(ad, y, right, a, e)
    t_lung = np.clip((y - a.apex) / (dome - a.apex), 0.0, 1.0)
    rib_y = y - 0.55 * ad * ad + 0.06 * ad - rib_offset
    rib_phase = np.sqrt(np.clip(rib_y - a.apex + 0.06, 0.0, None)) * 11.0
    ribs = (0.5 + 0.5 * np.cos(2 * np.pi * rib_phase)) ** 4
    thorax = _ramp((w + 0.02 - ad) / (2 * e)) * _ramp((y - a.apex + 0.04) / e) * _ramp((dome + 0.06 - y) / e)
    dens += 0.05 * ribs * thorax * (0.3 + 0.7 * lung_full)

    # ---- heart (cardiothoracic ratio) and mediastinum
    ratio = a.heart_ratio
    if "cardiomegaly" in f:
        # 0.51-0.57 / 0.57-0.63 / 0.63-0.69, larger for patients with a larger heart to begin with
        base = {"mild": 0.51, "moderate": 0.57, "large": 0.63}[f["cardiomegaly"].severity]
        ratio = base + 0.5 * float(np.clip(a.heart_ratio - 0.37, 0.0, 0.12))
    heart_width = ratio * 2 * w
    heart_cy = dome_l - 0.04
    hx = np.where(right, np.float32(0.38 * heart_width), np.float32(0.62 * heart_width))
    hy_down = a.heart_height * 0.7
    hy_up = max(heart_cy - (a.apex + 0.22), 0.05)  # tapers up into the hila / aortic knob
    hy = np.where(y > heart_cy, np.float32(hy_down), np.float32(hy_up))
    q = np.sqrt((x / hx) ** 2 + ((y - heart_cy) / hy) ** 2)
    heart = _ramp((1.0 - q) * hx / (1.5 * e))
    knob = _ramp((0.032 - np.sqrt((x - 0.05) ** 2 + (y - a.apex - 0.16) ** 2)) / e)
    dens += 0.05 * heart

    # ---- findings that replace lung air: effusion (fluid), pneumothorax (collapsed lung)
    lung = lung_full
    ptx_side = None
    if "pneumothorax" in f:
        ptx = f["pneumothorax"]
        rim = {"mild": 0.05, "moderate": 0.08, "large": 0.11}[ptx.severity]
        taper = 1.0 - np.clip((y - a.apex - 0.2) / 0.35, 0.0, 1.0)
        ptx_side = right if ptx.side == "right" else ~right
        lat_inset = np.where(ptx_side, rim * taper, 0.0).astype(np.float32)
        top_inset = np.where(ptx_side, 1.1 * rim, 0.0).astype(np.float32)
        lung = _lung(ad, y, right, a, e, lat_inset, top_inset)
    pleural_air = np.clip(lung_full - lung, 0.0, 1.0)
    fluid = 0.0
    if "pleural_effusion" in f:
        eff = f["pleural_effusion"]
        height = {"mild": 0.12, "moderate": 0.22, "large": 0.35}[eff.severity]
        on_right, on_left = eff.side in ("right", "bilateral"), eff.side in ("left", "bilateral")
        level = dome + 0.1 - _side_value(right, height if on_right else -1.0, height if on_left else -1.0)
        tn = np.clip((ad - a.mediastinum) / (w - a.mediastinum), 0.0, 1.0)
        surface = level + 0.09 * (1.0 - tn) ** 2  # meniscus: fluid climbs the lateral wall
        fluid = _ramp((y - surface) / (2.5 * e))
    air = lung * (1.0 - heart) * (1.0 - fluid) * (1.0 - 0.85 * knob)

    # ---- lung texture: vessels radiating from the hila, hilar shadows, faint mottle
    hdx, hdy = ad - 0.08, y - (a.apex + 0.3)
    r = np.sqrt(hdx * hdx + hdy * hdy)
    phi = np.arctan2(hdy, hdx)
    streak = sum(np.cos(k * phi + p + 12.0 * r) for k, p in zip(freqs, phases[:3])) / 3.0
    vessels = np.clip(streak + 0.5 * mottle, 0.0, None) ** 1.5 * np.exp(-r / 0.17)
    hila = np.exp(-(r / 0.06) ** 2)
    texture = 0.2 * vessels + 0.12 * hila + 0.03 * mottle + 0.1 * t_lung * t_lung

    dens -= 0.34 * air
    dens -= 0.5 * pleural_air * (1.0 - heart)  # hyperlucent, no lung markings
    dens += air * texture
    if ptx_side is not None:  # visceral pleural line at the edge of the collapsed lung
        away = _ramp((ad - a.mediastinum - 0.06) / e) * _ramp((dome - 0.04 - y) / e)  # not medial / basal edges
        dens += 0.1 * ptx_side * np.clip(4.0 * lung * (1.0 - lung), 0.0, 1.0) * lung_full * away

    # trachea (air column), stomach bubble under the left dome
    trachea = _ramp((0.021 - ad) / e) * _ramp((a.apex + 0.2 - y) / e) * body
    dens -= 0.16 * trachea
    bubble = _ramp((1.0 - np.sqrt(((x - 0.16) / 0.05) ** 2 + ((y - dome_l - 0.06) / 0.03) ** 2)) * 0.03 / e)
    dens -= 0.15 * bubble * body

    # ---- focal opacities
    if "nodule" in f:
        nod = f["nodule"]
        lateral, vertical = nod.position or (0.22, 0.3)
        nx = lateral if nod.side == "left" else -lateral
        ny = a.apex + vertical * ((dome_l if nod.side == "left" else dome_r) - a.apex)
        radius = 0.024 + 0.002 * float(nod.size_mm or 12)
        dist = np.sqrt((x - nx) ** 2 + (y - ny) ** 2)
        dens += 0.3 * _ramp((radius - dist) / (1.5 * e)) * (0.75 + 0.25 * np.clip(1 - (dist / radius) ** 2, 0, 1))
    if "consolidation" in f:
        con = f["consolidation"]
        lateral, vertical = con.position or (0.22, 0.65)
        rx, ry = {"mild": (0.075, 0.06), "moderate": (0.1, 0.08), "large": (0.14, 0.11)}[con.severity]
        patches = np.clip(0.6 + 1.0 * _lowfreq(detail, size, 14), 0.0, 1.0)
        blob = 0.0
        for side_name, sign in (("right", -1.0), ("left", 1.0)):
            if con.side in (side_name, "bilateral"):
                cy = a.apex + vertical * ((dome_l if side_name == "left" else dome_r) - a.apex)
                qq = np.sqrt(((x - sign * lateral) / rx) ** 2 + ((y - cy) / ry) ** 2)
                blob = blob + np.clip((1.0 - qq) * 2.0, 0.0, 1.0)
        dens += 0.28 * np.clip(blob, 0.0, 1.0) * patches * lung_full * (1.0 - heart)

    # ---- support devices (radiopaque lines, tubes and boxes)
    if "support_devices" in f:
        devices = f["support_devices"].devices
        metal = 0.0
        carina = a.apex + 0.2
        jitter = detail.uniform(-0.012, 0.012, 4)
        if "endotracheal_tube" in devices:
            d = _polyline_distance(x, y, [(0.003, -0.05), (0.002 + jitter[0], carina - 0.05 + jitter[1])])
            metal = np.maximum(metal, _ramp((0.0085 - d) / e))
        if "central_line" in devices:
            pts = [(-0.16, -0.02), (-0.12, 0.08), (-0.075, a.apex + 0.07), (-0.045, carina),
                   (-0.035, carina + 0.1 + jitter[2])]
            d = _polyline_distance(x, y, pts)
            metal = np.maximum(metal, 0.85 * _ramp((0.006 - d) / e))
        if "pacemaker" in devices:
            bx, by = w - 0.09, a.apex + 0.06
            box = _ramp(-_rounded_box(x, y, bx, by, 0.05, 0.035, 0.015) / e)
            pts = [(bx - 0.04, by), (0.12, a.apex + 0.05), (0.02, a.apex + 0.1), (-0.035, carina + 0.06),
                   (-0.03, heart_cy), (0.04 + jitter[3], heart_cy + 0.05), (0.12, heart_cy + 0.06)]
            d = _polyline_distance(x, y, pts)
            metal = np.maximum(metal, np.maximum(box, 0.9 * _ramp((0.006 - d) / e)))
        if "nasogastric_tube" in devices:
            pts = [(-0.008, -0.05), (-0.012, carina), (0.008, dome_l - 0.1), (0.05, dome_l + 0.03),
                   (0.14, dome_l + 0.07)]
            d = _polyline_distance(x, y, pts)
            metal = np.maximum(metal, 0.8 * _ramp((0.007 - d) / e))
        dens += 0.55 * metal

    # ---- acquisition: exposure, heel effect, gamma, blur, noise
    img = np.clip((dens - 0.35) * contrast * 1.25 + 0.45 + brightness, 0.0, 1.0)
    img *= 1.0 + heel * gu
    img = np.clip(img, 0.0, 1.0) ** np.float32(acquisition.gamma)
    img = _blur(img, acquisition.blur)
    img = img + noise
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


# =============================================================================== reports
# Everything a report can say lives in _GRAMMAR, so the demo vocabulary is read off these
# tables instead of being sampled. Slots: {side} {size} {adj} {adv} {zone} {mm} {a_mm} {cm}.
_GRAMMAR: dict[str, Any] = {
    "adjective": {  # severity words per finding
        "cardiomegaly": {"mild": ("mild",), "moderate": ("moderate",), "large": ("severe", "marked")},
        "cardiomegaly_adverb": {"mild": ("mildly",), "moderate": ("moderately",), "large": ("markedly", "severely")},
        "pleural_effusion": {"mild": ("small",), "moderate": ("moderate", "moderate-sized"), "large": ("large",)},
        "pneumothorax": {"mild": ("small", "tiny"), "moderate": ("moderate", "moderate-sized"), "large": ("large",)},
        "consolidation": {"mild": ("patchy", "mild"), "moderate": ("confluent", "moderate"), "large": ("extensive", "dense")},
    },
    "zone": {"upper": ("upper",), "lower": ("lower",)},
    "side": {"left": ("left",), "right": ("right",), "bilateral": ("bilateral",)},
    "positive": {
        "cardiomegaly": (
            "the heart is {adv} enlarged.",
            "the heart is enlarged.",
            "{adj} cardiomegaly.",
            "there is {adj} cardiomegaly.",
            "the cardiac silhouette is {adv} enlarged.",
            "{adj} enlargement of the cardiac silhouette.",
            "heart size is {adv} enlarged.",
        ),
        "pleural_effusion": (
            "{size} {side} pleural effusion.",
            "there is a {size} {side} pleural effusion.",
            "{size} pleural effusion on the {side}.",
            "a {size} {side} pleural effusion is present.",
            "{side} pleural effusion, {size} in size.",
            "opacity at the {side} lung base with a meniscus, consistent with a {size} pleural effusion.",
            "blunting of the {side} costophrenic angle due to a {size} pleural effusion.",
        ),
        "pleural_effusion_bilateral": (
            "{size} bilateral pleural effusions.",
            "there are {size} bilateral pleural effusions.",
            "{size} pleural effusions on both sides.",
            "bilateral pleural effusions, {size} in size.",
            "blunting of both costophrenic angles due to {size} pleural effusions.",
        ),
        "pneumothorax": (
            "{size} {side} pneumothorax.",
            "there is a {size} {side} pneumothorax.",
            "a {size} {side} apical pneumothorax is seen.",
            "{size} pneumothorax on the {side}.",
            "{side} pneumothorax, {size} in size.",
            "a {size} pneumothorax is present at the {side} apex.",
        ),
        "nodule": (
            "there is {a_mm} mm nodule in the {side} {zone} lobe.",
            "{a_mm} mm nodule is seen in the {side} {zone} lung.",
            "{side} {zone} lobe pulmonary nodule measuring {mm} mm.",
            "rounded opacity in the {side} {zone} lung measuring {mm} mm, likely a nodule.",
            "{mm} mm {side} {zone} lobe nodule.",
            "a well-circumscribed nodule measuring {mm} mm projects over the {side} {zone} lung.",
        ),
        "consolidation": (
            "{adj} consolidation in the {side} {zone} lobe.",
            "there is {adj} airspace opacity in the {side} {zone} lung, concerning for pneumonia.",
            "{side} {zone} lobe consolidation.",
            "airspace consolidation is seen in the {side} {zone} lobe.",
            "{adj} opacity in the {side} {zone} lung zone consistent with consolidation.",
        ),
        "consolidation_bilateral": (
            "{adj} bilateral {zone} lobe consolidation.",
            "there is {adj} airspace opacity in both {zone} lobes, concerning for pneumonia.",
            "bilateral {zone} lung consolidation.",
            "airspace consolidation is seen in both {zone} lobes.",
        ),
    },
    "device": {
        "endotracheal_tube": (
            "endotracheal tube in standard position.",
            "the endotracheal tube terminates {cm} cm above the carina.",
            "an endotracheal tube is in place.",
            "ET tube tip is in satisfactory position.",
        ),
        "central_line": (
            "right internal jugular central line with tip in the superior vena cava.",
            "a right-sided central venous catheter terminates in the SVC.",
            "central line in place with tip at the cavoatrial junction.",
        ),
        "pacemaker": (
            "left chest wall pacemaker with lead in the right ventricle.",
            "a cardiac pacemaker is present with lead terminating in the right ventricle.",
            "pacemaker device overlies the left chest wall.",
        ),
        "nasogastric_tube": (
            "nasogastric tube courses below the diaphragm into the stomach.",
            "enteric tube with tip in the stomach.",
            "NG tube in place, tip below the diaphragm.",
        ),
    },
    "negative": {
        "cardiomegaly": (
            "no cardiomegaly.",
            "the heart size is normal.",
            "heart size is within normal limits.",
            "the cardiac silhouette is normal in size.",
            "normal heart size.",
            "the cardiomediastinal silhouette is within normal limits.",
        ),
        "pleural_effusion": (
            "no pleural effusion.",
            "there is no pleural effusion.",
            "no effusion.",
            "the costophrenic angles are sharp.",
        ),
        "pneumothorax": ("no pneumothorax.", "there is no pneumothorax.", "no evidence of pneumothorax."),
        "pleural_effusion+pneumothorax": (
            "no pleural effusion or pneumothorax.",
            "there is no pleural effusion or pneumothorax.",
            "no effusion or pneumothorax.",
        ),
        "nodule": ("no pulmonary nodules.", "no suspicious pulmonary nodule is seen.", "no focal nodule or mass."),
        "consolidation": (
            "no focal consolidation.",
            "there is no focal airspace consolidation.",
            "no consolidation.",
        ),
        "support_devices": ("no lines or tubes.", "no support devices are seen."),
    },
    "lungs_clear": ("lungs are clear.", "the lungs are clear.", "both lungs are clear.", "the lungs are well expanded and clear."),
    "filler": (
        "the osseous structures are intact.",
        "no acute bony abnormality.",
        "visualized osseous structures are unremarkable.",
        "the mediastinal contours are normal.",
        "mild degenerative changes of the thoracic spine.",
    ),
    "impression": {
        "cardiomegaly": ("{adj} cardiomegaly.", "cardiomegaly.", "enlarged heart."),
        "pleural_effusion": ("{size} {side} pleural effusion.", "{side} pleural effusion."),
        "pleural_effusion_bilateral": ("{size} bilateral pleural effusions.", "bilateral pleural effusions."),
        "pneumothorax": ("{size} {side} pneumothorax.", "{side} pneumothorax."),
        "nodule": (
            "{side} {zone} lobe nodule measuring {mm} mm.",
            "{mm} mm {side} lung nodule. recommend CT for further evaluation.",
            "pulmonary nodule in the {side} {zone} lobe.",
        ),
        "consolidation": (
            "{side} {zone} lobe consolidation, concerning for pneumonia.",
            "{side} {zone} lobe pneumonia.",
            "consolidation in the {side} {zone} lobe.",
        ),
        "consolidation_bilateral": (
            "bilateral {zone} lobe consolidation, concerning for pneumonia.",
            "multifocal pneumonia.",
        ),
        "support_devices": ("support devices in standard position.", "lines and tubes as described above."),
        "normal": ("no acute cardiopulmonary process.", "no acute cardiopulmonary abnormality."),
        "normal_no_devices": ("normal chest radiograph.",),
    },
    "sections": ("FINDINGS:", "IMPRESSION:"),
}

# Report words that identify each finding (used by tests and retrieval evaluation).
FINDING_KEYWORDS: dict[str, tuple[str, ...]] = {
    "cardiomegaly": ("cardiomegaly", "enlarged", "enlargement"),
    "pleural_effusion": ("effusion", "effusions"),
    "pneumothorax": ("pneumothorax",),
    "nodule": ("nodule", "nodules"),
    "consolidation": ("consolidation", "airspace", "pneumonia"),
    "support_devices": ("tube", "tubes", "line", "lines", "catheter", "pacemaker", "devices"),
}


def _cap(text: str) -> str:
    """Capitalise the first letter of every sentence in ``text``."""
    return re.sub(r"(^|[.] )([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)


def _a_number(n: int) -> str:
    """``"an 8"`` / ``"an 11"`` / ``"a 9"``."""
    spoken_vowel = str(n).startswith("8") or n in (11, 18)
    return f"{'an' if spoken_vowel else 'a'} {n}"


def _slots(name: str, finding: Finding, rng: np.random.Generator) -> dict[str, str]:
    adjectives = _GRAMMAR["adjective"]
    slots: dict[str, str] = {}
    if finding.side:
        slots["side"] = finding.side
    if finding.zone:
        slots["zone"] = finding.zone
    if finding.size_mm is not None:
        slots["mm"] = str(finding.size_mm)
        slots["a_mm"] = _a_number(finding.size_mm)
    if finding.severity and name in adjectives:
        word = _choice(rng, adjectives[name][finding.severity])
        slots["adj"] = slots["size"] = word
        if name == "cardiomegaly":
            slots["adv"] = _choice(rng, adjectives["cardiomegaly_adverb"][finding.severity])
    return slots


def _positive_key(name: str, finding: Finding) -> str:
    if finding.side == "bilateral" and name in ("pleural_effusion", "consolidation"):
        return f"{name}_bilateral"
    return name


def write_report(case: Case, rng: np.random.Generator) -> str:
    """Write a radiology-style report ``"FINDINGS: ... IMPRESSION: ..."`` for ``case``.

    Positive findings are stated with their attributes in one of several phrasings; some
    absent findings are explicitly negated; "lungs are clear" is only said when there is no
    lung finding. The impression lists the positives or says there is no acute process.

    Parameters
    ----------
    case
        The study to describe.
    rng
        Source of randomness for phrasing and sentence order.

    Returns
    -------
    str
        One line of text.
    """
    g = _GRAMMAR
    f = case.findings
    devices: list[str] = []
    lungs: list[str] = []
    pleura: list[str] = []
    heart: list[str] = []
    other: list[str] = []

    # one wording per finding, reused by the impression
    slots = {name: _slots(name, finding, rng) for name, finding in f.items() if name != "support_devices"}
    if "support_devices" in f:
        for device in f["support_devices"].devices:
            devices.append(_choice(rng, g["device"][device]).format(cm=int(rng.integers(3, 7))))
    elif rng.random() < 0.25:
        devices.append(_choice(rng, g["negative"]["support_devices"]))

    for name, bucket in (("consolidation", lungs), ("nodule", lungs), ("pleural_effusion", pleura),
                         ("pneumothorax", pleura), ("cardiomegaly", heart)):
        if name in f:
            finding = f[name]
            template = _choice(rng, g["positive"][_positive_key(name, finding)])
            bucket.append(template.format(**slots[name]))

    # negations of absent findings (a combined sentence for the pleura sometimes)
    absent = [n for n in ("consolidation", "nodule", "pleural_effusion", "pneumothorax", "cardiomegaly") if n not in f]
    if "pleural_effusion" in absent and "pneumothorax" in absent and rng.random() < 0.5:
        pleura.append(_choice(rng, g["negative"]["pleural_effusion+pneumothorax"]))
        absent = [n for n in absent if n not in ("pleural_effusion", "pneumothorax")]
    negation_rate = 0.45 if len(f) < 2 else 0.25
    negated = 0
    for name in absent:
        if rng.random() < negation_rate and negated < 2:
            negated += 1
            bucket = {"consolidation": lungs, "nodule": lungs, "cardiomegaly": heart}.get(name, pleura)
            bucket.append(_choice(rng, g["negative"][name]))
    if not any(n in f for n in _LUNG_FINDINGS) and rng.random() < 0.75:
        lungs.insert(0, _choice(rng, g["lungs_clear"]))
    if rng.random() < (0.4 if len(f) < 2 else 0.15):
        other.append(_choice(rng, g["filler"]))

    for bucket in (lungs, pleura, heart):
        if len(bucket) > 1:
            rng.shuffle(bucket)
    groups = [devices, lungs, pleura, heart]
    if rng.random() < 0.3:  # some radiologists describe the heart before the lungs
        groups = [devices, heart, lungs, pleura]
    sentences = [s for group in groups for s in group] + other

    impression: list[str] = []
    for name in ("pneumothorax", "consolidation", "pleural_effusion", "cardiomegaly", "nodule"):
        if name in f:
            finding = f[name]
            template = _choice(rng, g["impression"][_positive_key(name, finding)])
            impression.append(template.format(**slots[name]))
    if not impression:
        pool = g["impression"]["normal"]
        if "support_devices" not in f:
            pool = pool + g["impression"]["normal_no_devices"]
        impression.append(_choice(rng, pool))
    if "support_devices" in f and rng.random() < 0.5:
        impression.append(_choice(rng, g["impression"]["support_devices"]))

    findings_text = " ".join(_cap(s) for s in sentences) or _cap(_choice(rng, g["filler"]))
    impression_text = " ".join(_cap(s) for s in impression)
    return f"FINDINGS: {findings_text} IMPRESSION: {impression_text}"


# =============================================================================== vocabulary
_PUNCTUATION = (".", ",", ":", ";", "-", "(", ")", "/", "%", "+", "'", '"', "?", "!", "&", "=")


def _grammar_strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for value in node.values():
            yield from _grammar_strings(value)
    elif isinstance(node, (tuple, list)):
        for value in node:
            yield from _grammar_strings(value)


def demo_vocabulary() -> list[str]:
    """The WordPiece vocabulary of the demo world, in file order.

    Special tokens, punctuation, digits, every word the report grammar can emit (read off
    the grammar tables), then single letters and ``##`` continuation pieces as fallbacks, so
    that any lower-case ASCII text tokenizes without ``[UNK]``.

    Returns
    -------
    list[str]
        Unique tokens; line ``i`` of ``core/data/vocab/demo.txt`` is token id ``i``.
    """
    words: set[str] = set()
    for text in _grammar_strings(_GRAMMAR):
        text = re.sub(r"\{[a-z_]+\}", " ", text.lower())
        words.update(re.findall(r"[a-z]+", text))
    words.update(k for keys in FINDING_KEYWORDS.values() for k in keys)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    digits = [str(d) for d in range(10)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_PUNCTUATION, *digits, *sorted(words), *letters]
    tokens += [f"##{c}" for c in letters] + [f"##{d}" for d in digits]
    return list(dict.fromkeys(tokens))


def write_vocabulary(path: str | Path = _VOCAB_FILE) -> Path:
    """Write :func:`demo_vocabulary` one token per line (default: the shipped ``demo.txt``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(demo_vocabulary()) + "\n", encoding="utf-8")
    return path


# =============================================================================== worlds
@dataclass(frozen=True)
class WorldSpec:
    """Size, seed and per-site acquisition of a synthetic world.

    Attributes
    ----------
    n_pairs, n_images, n_reports
        Rows of ``hospital_a`` (image + report), ``hospital_b`` (images) and ``hospital_c``
        (reports).
    n_labeled
        Images of the labelled set used by the central fine-tuning sweep.
    seed
        Root seed; each site gets its own ``SeedSequence`` child stream.
    size_a, size_b, size_labeled
        Native image resolution of each image site.
    acq_a, acq_b, acq_labeled
        Scanner characteristics of each image site.
    follow_up_fraction
        Fraction of pretraining rows that are a later study of the previous patient.
    second_image_fraction
        Fraction of labelled-set patients with a second (follow-up) image.
    split_fractions
        ``(train, val, test)`` fractions of labelled-set *patients*.
    """

    n_pairs: int = 800
    n_images: int = 800
    n_reports: int = 800
    n_labeled: int = 1200
    seed: int = 0
    size_a: int = 128
    size_b: int = 160
    size_labeled: int = 112
    acq_a: Acquisition = Acquisition(gamma=1.0, contrast=1.0, brightness=0.0, noise=0.015, blur=0.0)
    acq_b: Acquisition = Acquisition(gamma=0.8, contrast=1.15, brightness=-0.03, noise=0.03, blur=0.8)
    acq_labeled: Acquisition = Acquisition(gamma=1.2, contrast=0.9, brightness=0.04, noise=0.02, blur=0.4)
    follow_up_fraction: float = 0.15
    second_image_fraction: float = 0.25
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)

    def __post_init__(self) -> None:
        for name in ("n_pairs", "n_images", "n_reports", "n_labeled", "seed"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"WorldSpec.{name} must be a non-negative integer, got {value!r}")
        for name in ("size_a", "size_b", "size_labeled"):
            if getattr(self, name) < 32:
                raise ValueError(f"WorldSpec.{name} must be at least 32 pixels, got {getattr(self, name)!r}")
        if len(self.split_fractions) != 3 or min(self.split_fractions) < 0 or sum(self.split_fractions) <= 0:
            raise ValueError(f"WorldSpec.split_fractions must be three non-negative numbers, got {self.split_fractions!r}")

    @classmethod
    def quick(cls, **overrides: Any) -> "WorldSpec":
        """A tiny world (120 / 120 / 120 / 300) through the same code path, for tests and smoke runs."""
        values: dict[str, Any] = {"n_pairs": 120, "n_images": 120, "n_reports": 120, "n_labeled": 300}
        values.update(overrides)
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible dict of all fields (nested acquisitions become dicts)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass(frozen=True)
class PlannedItem:
    """One row of a site before it is rendered: ids, latent case and per-item seeds."""

    site: str
    index: int
    id: str
    patient_id: str
    study_id: str
    case: Case
    split: str | None
    seed: int
    site_index: int

    def rng(self, purpose: int) -> np.random.Generator:
        """The item's stream for ``purpose`` (0 = case, 1 = image, 2 = report).

        Equals ``SeedSequence(seed).spawn(...)[site_index].spawn(...)[index].spawn(...)[purpose]``.
        """
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(self.site_index, self.index, purpose)))


def _site_rng(seed: int, site_index: int, purpose: int) -> np.random.Generator:
    # spawn_key (site, 2**20 + purpose) is disjoint from the per-item keys (site, index, ...)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(site_index, 2**20 + purpose)))


def plan_site(spec: WorldSpec, site: str) -> list[PlannedItem]:
    """The rows of one site with their latent cases (cheap: nothing is rendered).

    Row ``i`` only depends on ``spec.seed``, the site and rows ``< i``, so a smaller world
    is a prefix of a bigger one with the same seed (apart from the labelled split).

    Parameters
    ----------
    spec
        The world.
    site
        One of :data:`SITES`.

    Returns
    -------
    list[PlannedItem]
    """
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; expected one of {SITES}")
    site_index = SITES.index(site)
    prefix = _SITE_PREFIX[site]
    n = {"hospital_a": spec.n_pairs, "hospital_b": spec.n_images, "hospital_c": spec.n_reports,
         "labeled": spec.n_labeled}[site]
    width = max(5, len(str(n)))
    structure = _site_rng(spec.seed, site_index, 0)
    repeat_p = spec.second_image_fraction if site == "labeled" else spec.follow_up_fraction
    items: list[PlannedItem] = []
    patient, study, studies_of_patient, previous = 0, 0, 0, None
    for index in range(n):
        case_rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(site_index, index, 0)))
        repeat = structure.random() < repeat_p and previous is not None and studies_of_patient < 2
        if repeat:
            case = _follow_up(previous, case_rng)
            studies_of_patient += 1
        else:
            case = sample_case(case_rng)
            patient += 1
            studies_of_patient = 1
        study += 1
        previous = case
        items.append(PlannedItem(
            site=site, index=index, id=f"{prefix}_{index + 1:0{width}d}", patient_id=f"{prefix}_p{patient:0{width}d}",
            study_id=f"{prefix}_s{study:0{width}d}", case=case, split=None, seed=spec.seed, site_index=site_index,
        ))
    if site == "labeled" and items:
        patients = list(dict.fromkeys(item.patient_id for item in items))
        order = _site_rng(spec.seed, site_index, 1).permutation(len(patients))
        fractions = np.asarray(spec.split_fractions, dtype=float) / sum(spec.split_fractions)
        bounds = np.round(np.cumsum(fractions) * len(patients)).astype(int)
        split_of = {}
        for rank, p in enumerate(order):
            split_of[patients[p]] = "train" if rank < bounds[0] else "val" if rank < bounds[1] else "test"
        items = [dataclasses.replace(item, split=split_of[item.patient_id]) for item in items]
    return items


def _world_meta(spec: WorldSpec) -> dict[str, Any]:
    return {"format": "fedvlp-synthetic-world", "format_version": FORMAT_VERSION, "spec": spec.to_json()}


def _is_world(out_dir: Path, meta: Mapping[str, Any]) -> bool:
    try:
        stored = json.loads((out_dir / "world.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return stored == meta and all((out_dir / s / "manifest.csv").is_file() for s in SITES)


def _label_columns() -> list[str]:
    return [f"label_{name}" for name in FINDINGS]


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, index=False, lineterminator="\n")


def _generate_site(site: str, spec: WorldSpec, root: Path, bar: Any) -> None:
    folder = root / site
    items = plan_site(spec, site)
    has_images = site != "hospital_c"
    has_reports = site in ("hospital_a", "hospital_c")
    size, acq = {"hospital_a": (spec.size_a, spec.acq_a), "hospital_b": (spec.size_b, spec.acq_b),
                 "labeled": (spec.size_labeled, spec.acq_labeled)}.get(site, (0, None))
    if has_images:
        (folder / "images").mkdir(parents=True)
    else:
        folder.mkdir(parents=True)
    rows, labels = [], []
    for item in items:
        row: dict[str, Any] = {"id": item.id}
        if has_images:
            pixels = render_image(item.case, item.rng(1), size, acq)
            rel = f"images/{item.id}.png"
            Image.fromarray(pixels, mode="L").save(folder / rel, compress_level=4)
            row["image"] = rel
        if has_reports:
            row["report"] = write_report(item.case, item.rng(2))
        if site == "hospital_a":
            row.update(patient_id=item.patient_id, study_id=item.study_id)
        elif site in ("hospital_b", "labeled"):
            row["patient_id"] = item.patient_id
        if site == "labeled":
            row["split"] = item.split
            row.update({f"label_{k}": v for k, v in item.case.labels.items()})
        else:
            labels.append({"id": item.id, **{f"label_{k}": v for k, v in item.case.labels.items()}})
        rows.append(row)
        bar.update(1)
    columns = {
        "hospital_a": ["id", "image", "report", "patient_id", "study_id"],
        "hospital_b": ["id", "image", "patient_id"],
        "hospital_c": ["id", "report"],
        "labeled": ["id", "image", "patient_id", "split", *_label_columns()],
    }[site]
    _write_csv(pd.DataFrame(rows, columns=columns), folder / "manifest.csv")
    if site != "labeled":
        _write_csv(pd.DataFrame(labels, columns=["id", *_label_columns()]), folder / "labels.csv")


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _replaceable(out_dir: Path) -> bool:
    """An existing ``out_dir`` may be replaced only if it is empty or a previous world."""
    if not out_dir.exists():
        return True
    if not out_dir.is_dir():
        return False
    return (out_dir / "world.json").is_file() or not any(out_dir.iterdir())


def generate_world(
    out_dir: str | os.PathLike[str],
    spec: WorldSpec = WorldSpec(),
    *,
    progress: bool = False,
) -> dict[str, Path]:
    """Generate (or reuse) a synthetic world in ``out_dir``.

    If ``out_dir/world.json`` already describes ``spec``, nothing is written. Otherwise the
    world is generated into a temporary folder next to ``out_dir`` and renamed into place, so
    an interrupted run never leaves a half world that looks complete. A previous world with a
    different spec (or an empty folder) is replaced; any other existing folder is refused.
    Concurrent calls for the same spec are safe: the first to finish wins, the others discard
    their copy.

    Parameters
    ----------
    out_dir
        Folder of the world.
    spec
        What to generate; the same spec always gives byte-identical files.
    progress
        Show a tqdm progress bar.

    Returns
    -------
    dict[str, Path]
        ``{site: path to its manifest.csv}`` for ``hospital_a``, ``hospital_b``, ``hospital_c``
        and ``labeled``.

    Raises
    ------
    FileExistsError
        ``out_dir`` exists and is neither empty nor a synthetic world.
    """
    out_dir = Path(out_dir).expanduser().absolute()
    paths = {site: out_dir / site / "manifest.csv" for site in SITES}
    meta = _world_meta(spec)
    if _is_world(out_dir, meta):
        return paths
    if not _replaceable(out_dir):
        raise FileExistsError(f"{out_dir} exists and is not a synthetic world (no world.json); refusing to overwrite it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    old: Path | None = None
    try:
        if progress:
            from tqdm.auto import tqdm

            bar: Any = tqdm(total=spec.n_pairs + spec.n_images + spec.n_reports + spec.n_labeled,
                            desc="synthetic world", unit="row")
        else:
            bar = _NoBar()
        try:
            for site in SITES:
                _generate_site(site, spec, tmp, bar)
        finally:
            bar.close()
        (tmp / "world.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if out_dir.exists():
            if _is_world(out_dir, meta):  # a concurrent run finished first
                shutil.rmtree(tmp, ignore_errors=True)
                return paths
            if not _replaceable(out_dir):
                raise FileExistsError(f"{out_dir} exists and is not a synthetic world; refusing to overwrite it")
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            out_dir.rename(old)
        try:
            tmp.rename(out_dir)
        except OSError:
            if not _is_world(out_dir, meta):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return paths


# =============================================================================== command line
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fedvlp.core.data.synthetic OUT_DIR [--quick] [--seed N] | --write-vocab``."""
    parser = argparse.ArgumentParser(
        prog="python -m fedvlp.core.data.synthetic",
        description="Generate the synthetic chest X-ray world (manifests + PNG files), or rewrite the demo vocabulary.",
    )
    parser.add_argument("out_dir", nargs="?", help="folder of the world (created or replaced)")
    parser.add_argument("--quick", action="store_true", help="tiny world (120/120/120/300 rows)")
    parser.add_argument("--seed", type=int, default=0, help="root seed (default 0)")
    parser.add_argument("--write-vocab", action="store_true", help=f"rewrite {_VOCAB_FILE}")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not args.out_dir and not args.write_vocab:
        parser.error("give OUT_DIR and/or --write-vocab")
    if args.write_vocab:
        path = write_vocabulary()
        print(f"wrote {len(demo_vocabulary())} tokens to {path}")
    if args.out_dir:
        spec = WorldSpec.quick(seed=args.seed) if args.quick else WorldSpec(seed=args.seed)
        start = time.perf_counter()
        paths = generate_world(args.out_dir, spec, progress=not args.no_progress and sys.stderr.isatty())
        print(f"world ready in {time.perf_counter() - start:.1f} s:")
        for site, path in paths.items():
            print(f"  {site}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
