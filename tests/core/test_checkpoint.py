"""Checkpoints: safetensors + JSON per round, atomic, with a latest pointer."""

from __future__ import annotations

from pathlib import Path

import torch
from fedvlp.core.checkpoint import latest_round, load_latest, load_round, save_round


def test_round_trip_keeps_weights_and_state(tmp_path: Path) -> None:
    weights = {"image.w": torch.randn(3, 4), "image.n": torch.tensor(5)}
    save_round(tmp_path, 2, weights, {"config_hash": "abc", "history": [{"round": 2}]})
    loaded = load_round(tmp_path, 2)
    assert torch.equal(loaded.weights["image.w"], weights["image.w"])
    assert loaded.weights["image.n"].item() == 5
    assert loaded.state == {"round": 2, "config_hash": "abc", "history": [{"round": 2}]}


def test_latest_points_at_the_last_saved_round(tmp_path: Path) -> None:
    assert load_latest(tmp_path) is None
    for r in range(3):
        save_round(tmp_path, r, {"text.w": torch.full((2,), float(r))}, {})
    latest = load_latest(tmp_path)
    assert latest is not None and latest.round == 2 and latest.weights["text.w"][0].item() == 2.0
    assert latest_round(tmp_path) == 2
    assert (tmp_path / "round_0000.safetensors").is_file()  # earlier rounds survive


def test_no_temporary_files_are_left_behind(tmp_path: Path) -> None:
    save_round(tmp_path, 1, {"text.w": torch.zeros(1)}, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json", "round_0001.json", "round_0001.safetensors"]


def test_extra_tensors_are_saved_beside_the_weights(tmp_path: Path) -> None:
    extra = {"m.image.w": torch.randn(3, dtype=torch.float64), "t.image.w": torch.tensor(4)}
    save_round(tmp_path, 1, {"image.w": torch.zeros(3)}, {}, extra)
    loaded = load_latest(tmp_path)
    assert loaded is not None and loaded.extra.keys() == extra.keys()
    assert all(torch.equal(loaded.extra[k], extra[k]) for k in extra)
    assert (tmp_path / "round_0001.extra.safetensors").is_file()
    save_round(tmp_path, 2, {"image.w": torch.zeros(3)}, {})
    assert load_round(tmp_path, 2).extra == {}
