"""SiteDataset: no image opened at construction; rejected images come back with their reason and row."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fedvlp.core.config import SourceConfig
from fedvlp.core.data.datasets import SiteDataset, collate_samples, pad_token_ids, train_transform
from fedvlp.core.data.manifest import load_source_rows
from tests.core.data.test_images import colour_png, grey_png, png16, truncated_png
from tests.core.data.test_manifest import write_large_manifest


def _images_site(tmp_path: Path, accept: frozenset[str] = frozenset()) -> SiteDataset:
    folder = tmp_path / "images"
    folder.mkdir()
    grey_png(folder / "ok.png", level=51)
    colour_png(folder / "colour.png")
    png16(folder / "deep.png")
    truncated_png(folder / "cut.png")
    (tmp_path / "m.csv").write_text(
        "id,image\na,images/ok.png\nb,images/colour.png\nc,images/deep.png\nd,images/cut.png\ne,images/gone.png\n"
    )
    rows = load_source_rows(SourceConfig(tmp_path / "m.csv", report_column=None, accept=accept))
    return SiteDataset(rows, 16, augment=False)


def test_rejected_images_come_back_with_reason_and_row(tmp_path: Path) -> None:
    dataset = _images_site(tmp_path)
    batch = collate_samples([dataset[i] for i in range(5)])
    assert batch["ids"] == ["a"] and batch["image"].shape == (1, 1, 16, 16)
    assert [(i, reason) for i, reason, _ in batch["skipped"]] == [
        ("b", "image_rgb"),
        ("c", "image_16bit"),
        ("d", "image_truncated"),
        ("e", "image_missing"),
    ]
    detail = batch["skipped"][0][2]
    assert detail.startswith(f"{tmp_path / 'm.csv'}:3: image_rgb (id 'b': ") and "colour.png" in detail


def test_a_source_that_accepts_16bit_and_rgb_converts_them(tmp_path: Path) -> None:
    dataset = _images_site(tmp_path, accept=frozenset({"16bit", "rgb"}))
    batch = collate_samples([dataset[i] for i in range(5)])
    assert batch["ids"] == ["a", "b", "c"]
    assert [reason for _, reason, _ in batch["skipped"]] == ["image_truncated", "image_missing"]


def test_worker_processes_decode_and_report_skips(tmp_path: Path) -> None:
    dataset = _images_site(tmp_path)
    loader = DataLoader(dataset, batch_size=5, num_workers=2, collate_fn=collate_samples)
    (batch,) = list(loader)
    assert batch["ids"] == ["a"] and sorted(r for _, r, _ in batch["skipped"]) == [
        "image_16bit",
        "image_missing",
        "image_rgb",
        "image_truncated",
    ]


def test_building_a_400k_row_dataset_opens_no_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "images").mkdir()
    names = [grey_png(tmp_path / "images" / f"{k}.png", level=10 * k).name for k in range(1, 4)]
    write_large_manifest(tmp_path / "big.csv", 400_000, [f"images/{n}" for n in names])
    opened: list[object] = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    dataset = SiteDataset(load_source_rows(SourceConfig(tmp_path / "big.csv", report_column=None)), 16, augment=False)
    assert len(dataset) == 400_000 and opened == []
    assert round(float(dataset[399_999]["image"].mean()) * 255) == 10 * (1 + 399_999 % 3) and len(opened) == 1


def test_the_full_text_view_reaches_the_tokenizer_with_deid_placeholders_normalized(tmp_path: Path) -> None:
    from fedvlp.core.data.reports import DEID_TOKEN
    from fedvlp.core.data.tokenizer import load_tokenizer

    (tmp_path / "r.csv").write_text("id,report\na,Heart size XXXX normal.\nb,Heart size ___ normal.\n")
    tokenizer = load_tokenizer("demo")
    rows = load_source_rows(SourceConfig(tmp_path / "r.csv", image_column=None))
    dataset = SiteDataset(rows, 16, tokenizer=tokenizer, augment=False, text_view="full")
    expected = tokenizer(f"Heart size {DEID_TOKEN} normal.")["input_ids"]
    assert dataset[0]["input_ids"].tolist() == dataset[1]["input_ids"].tolist() == expected


def test_pad_token_ids_pads_to_the_longest_sequence_with_zeros_and_masks_them() -> None:
    ids, mask = pad_token_ids([torch.tensor([101, 7, 102]), torch.tensor([101, 102])])
    assert ids.tolist() == [[101, 7, 102], [101, 102, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]


def _flipped_share(profile: str, draws: int = 40) -> float:
    """Share of draws in which a left-bright image comes out right-bright."""
    image = torch.zeros(1, 32, 32)
    image[:, :, :10] = 1.0
    transform = train_transform(32, profile)
    torch.manual_seed(0)
    outs = [transform(image) for _ in range(draws)]
    return sum(float(o[:, :, 16:].mean() > o[:, :, :16].mean()) for o in outs) / draws


@pytest.mark.parametrize(("profile", "flips"), [("light", False), ("moco-cxr", True), ("strong", True)])
def test_only_the_image_only_profiles_flip(profile: str, flips: bool) -> None:
    share = _flipped_share(profile)
    assert 0.25 < share < 0.75 if flips else share == 0.0


def test_an_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'sharp'.*'light', 'convirt', 'moco-cxr', 'strong'"):
        train_transform(32, "sharp")
