"""The synthetic world's pixels and reports pinned for a few seeds.

Studies and tests compare against worlds generated earlier; refactoring the generator must not
move one pixel or one word. The expected digests were computed before the module was split.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from fedvlp.core.data.synthetic import (
    DEVICES,
    Acquisition,
    Finding,
    WorldSpec,
    demo_vocabulary,
    generate_world,
    plan_site,
    render_image,
    write_report,
)


def _tree_digest(root: Path) -> str:
    """Digest of every file's relative path and content (PNG files by their decoded pixels)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode())
            digest.update(np.asarray(Image.open(path)).tobytes() if path.suffix == ".png" else path.read_bytes())
    return digest.hexdigest()


def test_a_small_world_is_bit_identical(tmp_path: Path) -> None:
    spec = WorldSpec(n_pairs=40, n_images=30, n_reports=40, n_labeled=40, seed=7, size_a=64, size_b=96, size_labeled=64)
    generate_world(tmp_path / "w", spec)
    assert _tree_digest(tmp_path / "w") == "ac4bde23839973f105f87bac9c9cb64c39a12758339aac750180b2cd7974a209"


def test_sampled_cases_render_and_report_identically() -> None:
    digest = hashlib.sha256()
    for item in plan_site(WorldSpec(n_labeled=200, seed=11), "labeled"):
        digest.update(render_image(item.case, item.rng(1), 64, WorldSpec().acq_b).tobytes())
        digest.update(write_report(item.case, item.rng(2)).encode())
    assert digest.hexdigest() == "f7f53caec20dc86142c401046b2d81a2e45a6fd6575dc3316b8330a4d4dccffe"


def test_every_finding_side_severity_and_device_renders_identically() -> None:
    digest = hashlib.sha256()
    acquisition = Acquisition(gamma=0.9, contrast=1.1, brightness=0.01, noise=0.02, blur=0.6)
    for item in plan_site(WorldSpec(n_pairs=12, seed=5), "hospital_a"):
        for side in ("left", "right", "bilateral"):
            for severity in ("mild", "moderate", "large"):
                one_side = "left" if side == "bilateral" else side
                case = item.case.with_findings(
                    cardiomegaly=Finding(severity=severity),
                    pleural_effusion=Finding(side=side, severity=severity),
                    pneumothorax=Finding(side=one_side, severity=severity),
                    nodule=Finding(
                        side="right" if side == "bilateral" else side, zone="upper", size_mm=14, position=(0.2, 0.3)
                    ),
                    consolidation=Finding(side=side, severity=severity, zone="lower", position=(0.24, 0.65)),
                    support_devices=Finding(devices=DEVICES),
                )
                digest.update(render_image(case, item.rng(1), 96, acquisition).tobytes())
                digest.update(write_report(case, item.rng(2)).encode())
    assert digest.hexdigest() == "877a3081646e2312e71f1df20a94779b43c3b42350f4851acef14b9b1410338a"


def test_demo_vocabulary_is_unchanged() -> None:
    digest = hashlib.sha256("\n".join(demo_vocabulary()).encode()).hexdigest()
    assert digest == "fa320729c6ec1cc49224716122b865929167794d3e806d3e00a8f8630c9eff35"
