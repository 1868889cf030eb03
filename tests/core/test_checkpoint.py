"""Checkpoints: safetensors + JSON per round, atomic, checksummed, resumed from the newest intact round."""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from pathlib import Path

import pytest
import torch

from fedvlp.core.checkpoint import CheckpointError, latest_round, load_latest, load_round, save_round


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


# ------------------------------------------------------------------ damage and fallback
def four_rounds(folder: Path) -> None:
    """Rounds 0-3 whose weight 'image.w' is [r, r, r, r] and whose extra 'm' is [10 r]."""
    for r in range(4):
        save_round(
            folder, r, {"image.w": torch.full((4,), float(r))}, {"config_hash": "h1"}, {"m": torch.tensor([10.0 * r])}
        )


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40  # inside the last float of the tensor data, the header stays valid
    path.write_bytes(bytes(data))


def _nan_in_data(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-4:] = struct.pack("<f", float("nan"))
    path.write_bytes(bytes(data))


# (what is damaged, how, the round resume must pick, the file and the reason in the warning)
DAMAGE = {
    "truncated weights": ("round_0003.safetensors", _truncate, 2, "SHA-256 differs"),
    "empty weights": ("round_0003.safetensors", lambda p: p.write_bytes(b""), 2, "empty file"),
    "missing weights": ("round_0003.safetensors", lambda p: p.unlink(), 2, "missing"),
    "flipped byte in tensor data": ("round_0003.safetensors", _flip_byte, 2, "SHA-256 differs"),
    "NaN written into tensor data": ("round_0003.safetensors", _nan_in_data, 2, "SHA-256 differs"),
    "truncated extra tensors": ("round_0003.extra.safetensors", _truncate, 2, "SHA-256 differs"),
    "missing round JSON": ("round_0003.json", lambda p: p.unlink(), 2, "missing"),
    "empty round JSON": ("round_0003.json", lambda p: p.write_bytes(b""), 2, "empty file"),
    "round JSON of another round": (
        "round_0003.json",
        lambda p: p.write_text(p.with_name("round_0002.json").read_text()),
        2,
        "not the state of round 3",
    ),
    "empty latest.json": ("latest.json", lambda p: p.write_bytes(b""), 3, "empty file"),
    "latest.json not a pointer": (
        "latest.json",
        lambda p: p.write_text('{"round": "three"}'),
        3,
        "not a round pointer",
    ),
    "pointer to a missing round": (
        "latest.json",
        lambda p: p.write_text('{"round": 9}'),
        3,
        "points at round 9, which has no files",
    ),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_resume_falls_back_to_the_newest_intact_round_and_names_the_damage(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    name, damage, expected_round, reason = DAMAGE[kind]
    four_rounds(tmp_path)
    damage(tmp_path / name)
    with caplog.at_level(logging.WARNING, logger="fedvlp.checkpoint"):
        loaded = load_latest(tmp_path)
    assert loaded is not None and loaded.round == expected_round
    assert loaded.weights["image.w"].tolist() == [float(expected_round)] * 4
    assert loaded.extra["m"].tolist() == [10.0 * expected_round]
    assert len(loaded.problems) == 1 and str(tmp_path / name) in loaded.problems[0] and reason in loaded.problems[0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        len(warnings) == 1
        and str(tmp_path / name) in warnings[0]
        and f"resuming from round {expected_round}" in warnings[0]
    )


def test_two_damaged_rounds_cost_those_two_rounds_only(tmp_path: Path) -> None:
    four_rounds(tmp_path)
    (tmp_path / "round_0003.safetensors").write_bytes(b"")
    (tmp_path / "round_0002.json").unlink()
    loaded = load_latest(tmp_path)
    assert loaded is not None and loaded.round == 1 and len(loaded.problems) == 2


def test_nan_in_a_round_without_checksums_is_caught_by_the_finite_check(tmp_path: Path) -> None:
    four_rounds(tmp_path)
    state = json.loads((tmp_path / "round_0003.json").read_text())
    del state["sha256"]  # a round written before checksums existed
    (tmp_path / "round_0003.json").write_text(json.dumps(state))
    _nan_in_data(tmp_path / "round_0003.safetensors")
    loaded = load_latest(tmp_path)
    assert loaded is not None and loaded.round == 2
    assert loaded.problems == [f"{tmp_path / 'round_0003.safetensors'}: tensor 'image.w' holds NaN or Inf"]


def test_load_round_names_the_damaged_file(tmp_path: Path) -> None:
    four_rounds(tmp_path)
    _flip_byte(tmp_path / "round_0001.safetensors")
    with pytest.raises(CheckpointError, match=r"round_0001\.safetensors: SHA-256 differs"):
        load_round(tmp_path, 1)


def test_a_folder_with_no_intact_round_is_a_one_line_error(tmp_path: Path) -> None:
    save_round(tmp_path, 0, {"image.w": torch.zeros(2)}, {})
    (tmp_path / "round_0000.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError) as err:
        load_latest(tmp_path)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{tmp_path}: no intact round")
    assert "round_0000.safetensors: empty file" in str(err.value)


def test_the_json_records_the_sha256_of_each_tensor_file(tmp_path: Path) -> None:
    four_rounds(tmp_path)
    recorded = json.loads((tmp_path / "round_0002.json").read_text())["sha256"]
    assert recorded == {
        n: hashlib.sha256((tmp_path / n).read_bytes()).hexdigest()
        for n in ("round_0002.safetensors", "round_0002.extra.safetensors")
    }
    assert "sha256" not in load_round(tmp_path, 2).state


def test_a_rewritten_round_without_extra_drops_the_stale_extra_file(tmp_path: Path) -> None:
    four_rounds(tmp_path)
    save_round(tmp_path, 3, {"image.w": torch.zeros(4)}, {"config_hash": "h1"})
    assert not (tmp_path / "round_0003.extra.safetensors").exists() and load_round(tmp_path, 3).extra == {}


# ------------------------------------------------------------------ mixed configurations
def test_without_latest_json_resume_finds_the_newest_round(tmp_path: Path) -> None:
    four_rounds(tmp_path)
    (tmp_path / "latest.json").unlink()
    loaded = load_latest(tmp_path)
    assert loaded is not None and loaded.round == 3 and loaded.state["config_hash"] == "h1" and loaded.problems == []


def test_a_folder_holding_rounds_of_another_configuration_is_refused(tmp_path: Path) -> None:
    four_rounds(tmp_path)
    (tmp_path / "latest.json").unlink()
    before = (tmp_path / "round_0000.safetensors").read_bytes()
    with pytest.raises(CheckpointError) as err:
        save_round(tmp_path, 0, {"image.w": torch.ones(4)}, {"config_hash": "h2"})
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{tmp_path}: holds rounds of another configuration")
    assert (
        "round_0000.json: hash h1, this run: h2" in message
        and "pick another out-dir or pass the same configuration" in message
    )
    assert (tmp_path / "round_0000.safetensors").read_bytes() == before  # nothing overwritten


# ------------------------------------------------------------------ a real writer and resumer
def test_a_real_run_resumed_over_a_damaged_round_redoes_only_that_round(
    demo_env: Path, tmp_path: Path, tiny_run
) -> None:
    from fedvlp.core.central import pretrain_local

    run = tiny_run.replace(rounds=3, local_steps=2)
    straight = load_latest(pretrain_local(run, "hospital_c", tmp_path / "straight").checkpoint_dir)
    pretrain_local(run, "hospital_c", tmp_path / "damaged")
    folder = tmp_path / "damaged" / "checkpoints"
    _flip_byte(folder / "round_0003.safetensors")
    records: list[dict] = []
    pretrain_local(run, "hospital_c", tmp_path / "damaged", on_round=records.append)
    assert [r["round"] for r in records] == [3]  # rounds 1-2 kept, round 3 trained again
    resumed = load_latest(folder)
    assert straight is not None and resumed is not None and resumed.round == 3 and resumed.problems == []
    assert all(torch.equal(straight.weights[k], resumed.weights[k]) for k in straight.weights)


def test_a_real_run_of_another_configuration_refuses_a_folder_without_latest_json(
    demo_env: Path, tmp_path: Path, tiny_run
) -> None:
    from fedvlp.core.central import pretrain_local
    from fedvlp.core.config import ConfigError

    run = tiny_run.replace(rounds=2, local_steps=1)
    pretrain_local(run, "hospital_c", tmp_path / "out")
    folder = tmp_path / "out" / "checkpoints"
    (folder / "latest.json").unlink()
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(ConfigError, match="use another --out") as err:
        pretrain_local(run.replace(seed=run.seed + 1), "hospital_c", tmp_path / "out")
    assert str(err.value).startswith(f"{folder}: ") and "\n" not in str(err.value)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
