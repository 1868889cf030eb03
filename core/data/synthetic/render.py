"""Frontal chest radiographs of a :class:`~.cases.Case`, drawn as a density map in named steps.

:func:`render_image` draws all its randomness first (:func:`_draw`), so the same generator state
renders the same patient with and without a finding; then each step adds one anatomical layer
or finding to the density, in a fixed order; :func:`_acquire` turns density into pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from .cases import Anatomy, Case, Finding

__all__ = ["Acquisition", "render_image"]


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


def _severity(finding: Finding) -> str:
    """The severity of a finding drawn with one (cardiomegaly, pneumothorax, effusion, consolidation)."""
    if finding.severity is None:
        raise ValueError(f"{finding} has no severity")
    return finding.severity


def _lowfreq(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in about [-1, 1]: a ``cells x cells`` random grid upsampled bicubically."""
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    big = Image.fromarray(small, mode="F").resize((size, size), Image.Resampling.BICUBIC)
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
    result: np.ndarray = sum(w * pad[:, i : i + n] for i, w in enumerate(k))
    return result


def _polyline_distance(x: np.ndarray, y: np.ndarray, points: Sequence[tuple[float, float]]) -> np.ndarray:
    """Distance from every grid point to a polyline (vectorised per segment)."""
    best: np.ndarray | None = None
    for (ax, ay), (bx, by) in zip(points[:-1], points[1:]):
        dx, dy = bx - ax, by - ay
        t = np.clip(((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy + 1e-12), 0.0, 1.0)
        d2 = (x - ax - t * dx) ** 2 + (y - ay - t * dy) ** 2
        best = d2 if best is None else np.minimum(best, d2)
    if best is None:
        raise ValueError("a polyline needs at least two points")
    result: np.ndarray = np.sqrt(best)
    return result


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
    result: np.ndarray = (
        _ramp((lateral - ad) / e) * _ramp((ad - medial) / e) * _ramp((y - top) / e) * _ramp((bottom - y) / e)
    )
    return result


def _rounded_box(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, half_w: float, half_h: float, radius: float
) -> np.ndarray:
    """Signed distance to a rounded rectangle (negative inside)."""
    qx = np.abs(x - cx) - half_w + radius
    qy = np.abs(y - cy) - half_h + radius
    result: np.ndarray = (
        np.sqrt(np.maximum(qx, 0.0) ** 2 + np.maximum(qy, 0.0) ** 2) + np.minimum(np.maximum(qx, qy), 0.0) - radius
    )
    return result


@dataclass(frozen=True)
class _Draws:
    """Every random draw of one image, made before anything is drawn (see :func:`_draw`)."""

    angle: float  # pose: rotation (radians), shift, scale
    shift_x: float
    shift_y: float
    scale: float
    contrast: float  # exposure
    brightness: float
    heel: float
    noise: np.ndarray  # detector noise, (size, size)
    phases: np.ndarray  # the patient's vessel pattern, rib position and mottle (stable per patient)
    freqs: np.ndarray
    rib_offset: float
    mottle: np.ndarray
    detail: np.random.Generator  # finding texture (consolidation patches, device jitter)


@dataclass(frozen=True)
class _Frame:
    """Patient-frame coordinates of every pixel: ``x`` signed from the midline (negative =
    patient right), ``y`` from the top, ``ad = |x|``; ``e`` is the anti-aliasing edge width."""

    a: Anatomy
    f: Mapping[str, Finding]
    size: int
    gu: np.ndarray
    x: np.ndarray
    y: np.ndarray
    ad: np.ndarray
    right: np.ndarray
    e: float
    w: float
    dome: np.ndarray | float


@dataclass
class _Layers:
    """Masks that later steps read: body, lungs, heart and the pleural findings."""

    body: Any = None
    arm: Any = None
    chest: float = 0.0
    lung_full: Any = None
    t_lung: Any = None
    heart: Any = None
    heart_cy: float = 0.0
    knob: Any = None
    lung: Any = None
    ptx_side: Any = None
    pleural_air: Any = None
    fluid: Any = 0.0


def _draw(rng: np.random.Generator, a: Anatomy, size: int, acquisition: Acquisition) -> _Draws:
    """All random draws, in a fixed order that does not depend on the findings."""
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
    return _Draws(
        angle, shift_x, shift_y, scale, contrast, brightness, heel, noise, phases, freqs, rib_offset, mottle, detail
    )


def _patient_frame(case: Case, size: int, draws: _Draws) -> _Frame:
    """Pixel grid rotated, shifted and scaled into the patient's frame."""
    a = case.anatomy
    gu, gv = _grid(size)
    cos, sin = np.cos(draws.angle), np.sin(draws.angle)
    xr, yr = gu - draws.shift_x, gv - draws.shift_y
    x = ((cos * xr + sin * yr) / draws.scale).astype(np.float32)
    y = ((-sin * xr + cos * yr) / draws.scale + 0.5).astype(np.float32)
    right = x < 0
    return _Frame(
        a,
        case.findings,
        size,
        gu,
        x,
        y,
        np.abs(x),
        right,
        1.2 / size,
        a.thorax_half_width,
        _side_value(right, a.dome_right, a.dome_left),
    )


def _body(fr: _Frame, layers: _Layers) -> np.ndarray:
    """Body silhouette (neck, sloping shoulders, chest wall, arms) and soft tissue: the first density."""
    a, ad, y, e = fr.a, fr.ad, fr.y, fr.e
    chest = fr.w + a.body_margin
    slope = np.clip((y + 0.02) / 0.2, 0.0, 1.0)
    body_half = 0.085 + (chest - 0.085) * np.sin(0.5 * np.pi * slope) ** 0.6
    body_half = body_half - 0.03 * np.clip((y - 0.8) / 0.2, 0.0, 1.0)  # waist
    body = _ramp((body_half - ad) / (2 * e))
    arm_half = chest + 0.075 * np.clip(1.0 - (y - 0.35) / 0.4, 0.0, 1.0)
    arm = _ramp((arm_half - ad) / (2 * e)) * _ramp((y - 0.03 - 0.8 * (ad - chest)) / (3 * e)) * (1.0 - body)
    thickness = np.clip(1.0 - (ad / chest) ** 4, 0.0, 1.0)  # thinner at the edges
    layers.body, layers.chest = body, chest
    layers.arm = arm
    result: np.ndarray = body * (a.soft_tissue * (0.7 + 0.3 * thickness)) + arm * 0.32
    return result


def _bones(fr: _Frame, layers: _Layers, draws: _Draws, dens: np.ndarray) -> np.ndarray:
    """Spine, clavicles, humeral heads and ribs (ribs fainter outside the lungs)."""
    a, ad, y, e, w, dome = fr.a, fr.ad, fr.y, fr.e, fr.w, fr.dome
    body, chest = layers.body, layers.chest
    dens += body * 0.07 * _ramp((0.032 - ad) / e)
    cx = ad - 0.025
    clav_y = a.apex + 0.06 - 0.32 * cx + 0.35 * cx * cx
    clav_half = 0.015 + 0.006 * np.clip(1.0 - cx / 0.1, 0.0, 1.0)
    clav = _ramp((clav_half - np.abs(y - clav_y)) / e) * _ramp((chest - 0.02 - ad) / e) * _ramp(cx / e)
    dens += 0.16 * clav
    humerus = _ramp((0.065 - np.sqrt((ad - chest - 0.005) ** 2 + (y - a.apex - 0.02) ** 2)) / (2 * e))
    dens += 0.2 * humerus * np.maximum(body, layers.arm)
    lung_full = _lung(ad, y, fr.right, a, e)
    t_lung = np.clip((y - a.apex) / (dome - a.apex), 0.0, 1.0)
    rib_y = y - 0.55 * ad * ad + 0.06 * ad - draws.rib_offset
    rib_phase = np.sqrt(np.clip(rib_y - a.apex + 0.06, 0.0, None)) * 11.0
    ribs = (0.5 + 0.5 * np.cos(2 * np.pi * rib_phase)) ** 4
    thorax = _ramp((w + 0.02 - ad) / (2 * e)) * _ramp((y - a.apex + 0.04) / e) * _ramp((dome + 0.06 - y) / e)
    dens += 0.05 * ribs * thorax * (0.3 + 0.7 * lung_full)
    layers.lung_full, layers.t_lung = lung_full, t_lung
    return dens


def _heart(fr: _Frame, layers: _Layers, dens: np.ndarray) -> np.ndarray:
    """Heart shadow at the patient's cardiothoracic ratio (widened by cardiomegaly) and the aortic knob."""
    a, f, x, y, e, right = fr.a, fr.f, fr.x, fr.y, fr.e, fr.right
    ratio = a.heart_ratio
    if "cardiomegaly" in f:
        # 0.51-0.57 / 0.57-0.63 / 0.63-0.69, larger for patients with a larger heart to begin with
        base = {"mild": 0.51, "moderate": 0.57, "large": 0.63}[_severity(f["cardiomegaly"])]
        ratio = base + 0.5 * float(np.clip(a.heart_ratio - 0.37, 0.0, 0.12))
    heart_width = ratio * 2 * fr.w
    heart_cy = a.dome_left - 0.04
    hx = np.where(right, np.float32(0.38 * heart_width), np.float32(0.62 * heart_width))
    hy_down = a.heart_height * 0.7
    hy_up = max(heart_cy - (a.apex + 0.22), 0.05)  # tapers up into the hila / aortic knob
    hy = np.where(y > heart_cy, np.float32(hy_down), np.float32(hy_up))
    q = np.sqrt((x / hx) ** 2 + ((y - heart_cy) / hy) ** 2)
    heart = _ramp((1.0 - q) * hx / (1.5 * e))
    layers.knob = _ramp((0.032 - np.sqrt((x - 0.05) ** 2 + (y - a.apex - 0.16) ** 2)) / e)
    layers.heart, layers.heart_cy = heart, heart_cy
    dens += 0.05 * heart
    return dens


def _pleura(fr: _Frame, layers: _Layers) -> None:
    """Findings that replace lung air: pneumothorax (collapsed lung, pleural air) and effusion (fluid)."""
    a, f, ad, y, e, right, w, dome = fr.a, fr.f, fr.ad, fr.y, fr.e, fr.right, fr.w, fr.dome
    lung_full = layers.lung_full
    lung = lung_full
    ptx_side = None
    if "pneumothorax" in f:
        ptx = f["pneumothorax"]
        rim = {"mild": 0.05, "moderate": 0.08, "large": 0.11}[_severity(ptx)]
        taper = 1.0 - np.clip((y - a.apex - 0.2) / 0.35, 0.0, 1.0)
        ptx_side = right if ptx.side == "right" else ~right
        lat_inset = np.where(ptx_side, rim * taper, 0.0).astype(np.float32)
        top_inset = np.where(ptx_side, 1.1 * rim, 0.0).astype(np.float32)
        lung = _lung(ad, y, right, a, e, lat_inset, top_inset)
    layers.pleural_air = np.clip(lung_full - lung, 0.0, 1.0)
    fluid: Any = 0.0
    if "pleural_effusion" in f:
        eff = f["pleural_effusion"]
        height = {"mild": 0.12, "moderate": 0.22, "large": 0.35}[_severity(eff)]
        on_right, on_left = eff.side in ("right", "bilateral"), eff.side in ("left", "bilateral")
        level = dome + 0.1 - _side_value(right, height if on_right else -1.0, height if on_left else -1.0)
        tn = np.clip((ad - a.mediastinum) / (w - a.mediastinum), 0.0, 1.0)
        surface = level + 0.09 * (1.0 - tn) ** 2  # meniscus: fluid climbs the lateral wall
        fluid = _ramp((y - surface) / (2.5 * e))
    layers.lung, layers.ptx_side, layers.fluid = lung, ptx_side, fluid


def _air(fr: _Frame, layers: _Layers, draws: _Draws, dens: np.ndarray) -> np.ndarray:
    """Lung air with its texture (vessels from the hila, hilar shadows, mottle), pleural air,
    the visceral pleural line of a pneumothorax, the trachea and the stomach bubble."""
    a, ad, x, y, e, dome = fr.a, fr.ad, fr.x, fr.y, fr.e, fr.dome
    lung, heart, lung_full = layers.lung, layers.heart, layers.lung_full
    air = lung * (1.0 - heart) * (1.0 - layers.fluid) * (1.0 - 0.85 * layers.knob)
    hdx, hdy = ad - 0.08, y - (a.apex + 0.3)
    r = np.sqrt(hdx * hdx + hdy * hdy)
    phi = np.arctan2(hdy, hdx)
    streak = sum(np.cos(k * phi + p + 12.0 * r) for k, p in zip(draws.freqs, draws.phases[:3])) / 3.0
    vessels = np.clip(streak + 0.5 * draws.mottle, 0.0, None) ** 1.5 * np.exp(-r / 0.17)
    hila = np.exp(-((r / 0.06) ** 2))
    texture = 0.2 * vessels + 0.12 * hila + 0.03 * draws.mottle + 0.1 * layers.t_lung * layers.t_lung

    dens -= 0.34 * air
    dens -= 0.5 * layers.pleural_air * (1.0 - heart)  # hyperlucent, no lung markings
    dens += air * texture
    if layers.ptx_side is not None:  # visceral pleural line at the edge of the collapsed lung
        away = _ramp((ad - a.mediastinum - 0.06) / e) * _ramp((dome - 0.04 - y) / e)  # not medial / basal edges
        dens += 0.1 * layers.ptx_side * np.clip(4.0 * lung * (1.0 - lung), 0.0, 1.0) * lung_full * away

    # trachea (air column), stomach bubble under the left dome
    trachea = _ramp((0.021 - ad) / e) * _ramp((a.apex + 0.2 - y) / e) * layers.body
    dens -= 0.16 * trachea
    bubble = _ramp((1.0 - np.sqrt(((x - 0.16) / 0.05) ** 2 + ((y - a.dome_left - 0.06) / 0.03) ** 2)) * 0.03 / e)
    dens -= 0.15 * bubble * layers.body
    return dens


def _focal_opacities(fr: _Frame, layers: _Layers, draws: _Draws, dens: np.ndarray) -> np.ndarray:
    """Nodule (a bright disc) and consolidation (patchy blobs inside the lungs)."""
    a, f, x, y, e = fr.a, fr.f, fr.x, fr.y, fr.e
    dome_r, dome_l = a.dome_right, a.dome_left
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
        rx, ry = {"mild": (0.075, 0.06), "moderate": (0.1, 0.08), "large": (0.14, 0.11)}[_severity(con)]
        patches = np.clip(0.6 + 1.0 * _lowfreq(draws.detail, fr.size, 14), 0.0, 1.0)
        blob: Any = 0.0
        for side_name, sign in (("right", -1.0), ("left", 1.0)):
            if con.side in (side_name, "bilateral"):
                cy = a.apex + vertical * ((dome_l if side_name == "left" else dome_r) - a.apex)
                qq = np.sqrt(((x - sign * lateral) / rx) ** 2 + ((y - cy) / ry) ** 2)
                blob = blob + np.clip((1.0 - qq) * 2.0, 0.0, 1.0)
        dens += 0.28 * np.clip(blob, 0.0, 1.0) * patches * layers.lung_full * (1.0 - layers.heart)
    return dens


def _devices(fr: _Frame, layers: _Layers, draws: _Draws, dens: np.ndarray) -> np.ndarray:
    """Support devices: radiopaque lines, tubes and the pacemaker box."""
    if "support_devices" not in fr.f:
        return dens
    a, x, y, e, w = fr.a, fr.x, fr.y, fr.e, fr.w
    dome_l, heart_cy = a.dome_left, layers.heart_cy
    devices = fr.f["support_devices"].devices
    metal: Any = 0.0
    carina = a.apex + 0.2
    jitter = draws.detail.uniform(-0.012, 0.012, 4)
    if "endotracheal_tube" in devices:
        d = _polyline_distance(x, y, [(0.003, -0.05), (0.002 + jitter[0], carina - 0.05 + jitter[1])])
        metal = np.maximum(metal, _ramp((0.0085 - d) / e))
    if "central_line" in devices:
        pts = [
            (-0.16, -0.02),
            (-0.12, 0.08),
            (-0.075, a.apex + 0.07),
            (-0.045, carina),
            (-0.035, carina + 0.1 + jitter[2]),
        ]
        d = _polyline_distance(x, y, pts)
        metal = np.maximum(metal, 0.85 * _ramp((0.006 - d) / e))
    if "pacemaker" in devices:
        bx, by = w - 0.09, a.apex + 0.06
        box = _ramp(-_rounded_box(x, y, bx, by, 0.05, 0.035, 0.015) / e)
        pts = [
            (bx - 0.04, by),
            (0.12, a.apex + 0.05),
            (0.02, a.apex + 0.1),
            (-0.035, carina + 0.06),
            (-0.03, heart_cy),
            (0.04 + jitter[3], heart_cy + 0.05),
            (0.12, heart_cy + 0.06),
        ]
        d = _polyline_distance(x, y, pts)
        metal = np.maximum(metal, np.maximum(box, 0.9 * _ramp((0.006 - d) / e)))
    if "nasogastric_tube" in devices:
        pts = [(-0.008, -0.05), (-0.012, carina), (0.008, dome_l - 0.1), (0.05, dome_l + 0.03), (0.14, dome_l + 0.07)]
        d = _polyline_distance(x, y, pts)
        metal = np.maximum(metal, 0.8 * _ramp((0.007 - d) / e))
    dens += 0.55 * metal
    return dens


def _acquire(dens: np.ndarray, fr: _Frame, draws: _Draws, acquisition: Acquisition) -> np.ndarray:
    """The scanner: exposure, heel effect, gamma, blur and noise, as 8-bit pixels."""
    img = np.clip((dens - 0.35) * draws.contrast * 1.25 + 0.45 + draws.brightness, 0.0, 1.0)
    img *= 1.0 + draws.heel * fr.gu
    img = np.clip(img, 0.0, 1.0) ** np.float32(acquisition.gamma)
    img = _blur(img, acquisition.blur)
    img = img + draws.noise
    result: np.ndarray = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return result


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
    draws = _draw(rng, case.anatomy, size, acquisition)
    frame = _patient_frame(case, size, draws)
    layers = _Layers()
    # The order of the steps is the order in which density is added: it fixes every pixel.
    dens = _body(frame, layers)
    dens = _bones(frame, layers, draws, dens)
    dens = _heart(frame, layers, dens)
    _pleura(frame, layers)
    dens = _air(frame, layers, draws, dens)
    dens = _focal_opacities(frame, layers, draws, dens)
    dens = _devices(frame, layers, draws, dens)
    return _acquire(dens, frame, draws, acquisition)
