"""``fedvlp export``: a run's checkpoint out as files that plain torchvision / transformers load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedvlp.core.checkpoint import save_round
from fedvlp.core.config import RunConfig, project_root
from fedvlp.core.data.tokenizer import load_run_tokenizer
from fedvlp.core.models import build_model
from fedvlp.server.cli.main import main

TEXTS = ["heart size is normal", "right lower lobe opacity"]

# Fresh interpreter, empty working folder: torch, torchvision and transformers only.
_LOAD = r"""
import importlib.util, json, sys
from pathlib import Path
import torch
root = Path(sys.argv[1])
spec = importlib.util.spec_from_file_location("loader", root / "load_image_encoder.py")
loader = importlib.util.module_from_spec(spec); spec.loader.exec_module(loader)
from transformers import AutoModel, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(root / "text_encoder")
text = AutoModel.from_pretrained(root / "text_encoder", add_pooling_layer=False)
batch = tokenizer(json.loads(sys.argv[2]), return_tensors="pt", padding=True, truncation=True)
with torch.no_grad():
    image = loader.load()(loader.preprocess(torch.load(sys.argv[3])))
    states = text(**batch).last_hidden_state
assert not any(name.split(".")[0] == "fedvlp" for name in sys.modules), "fedvlp was imported"
torch.save({"image": image, "text": states, "ids": batch["input_ids"]}, sys.argv[4])
"""


def _trained_checkpoint(tmp_path: Path) -> tuple[RunConfig, Path]:
    """A tiny run whose weights moved away from the initialisation (one optimizer step on every
    parameter), saved as the federated server saves rounds."""
    run = RunConfig(
        model_size="tiny",
        image_size=32,
        rounds=1,
        out_dir=str(tmp_path / "run"),
        sites=str(project_root() / "sites" / "demo"),
    )
    model = build_model(run)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.01)
    save_round(
        tmp_path / "run" / "checkpoints",
        1,
        model.state_dict(),
        {"config_hash": run.config_hash(), "run_config": run.to_flat(), "history": []},
    )
    return run, tmp_path / "run"


@pytest.mark.slow  # one subprocess importing torchvision and transformers (~10 s)
def test_export_loads_in_torchvision_and_transformers_with_fedvlp_features(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, run_folder = _trained_checkpoint(tmp_path)
    out = tmp_path / "export"
    assert main(["export", str(run_folder), "--out", str(out)]) == 0
    assert f"exported round 1 of {run_folder / 'checkpoints' / 'round_0001.safetensors'}" in capsys.readouterr().out

    model = build_model(run)
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(run_folder / "checkpoints" / "round_0001.safetensors")))
    model.eval()
    images = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.save(images, tmp_path / "images.pt")
    tokenizer = load_run_tokenizer(run)
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True, truncation=True, max_length=model.max_text_len)
    with torch.no_grad():
        image, text = model.image_backbone()(images), model.text(batch["input_ids"], batch["attention_mask"])

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ""}
    work = tmp_path / "elsewhere"
    work.mkdir()
    subprocess.run(
        [
            sys.executable,
            "-c",
            _LOAD,
            str(out),
            json.dumps(TEXTS),
            str(tmp_path / "images.pt"),
            str(tmp_path / "theirs.pt"),
        ],
        check=True,
        cwd=work,
        env=env,
        timeout=300,
    )
    theirs = torch.load(tmp_path / "theirs.pt")
    assert torch.equal(theirs["ids"], batch["input_ids"])
    assert (theirs["image"] - image).abs().max() <= 1e-5
    assert (theirs["text"] - text).abs().max() <= 1e-5


def test_export_into_a_used_folder_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, run_folder = _trained_checkpoint(tmp_path)
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["export", str(run_folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"fedvlp: configuration error: {out}: key '--out': expected a new or empty folder (or --force to replace "
        "an earlier export there)\n"
    )
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_export_of_a_folder_without_checkpoints_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "export")]) == 2
    assert (
        f"fedvlp: configuration error: {tmp_path}: key 'CHECKPOINT': expected a run folder" in capsys.readouterr().err
    )
    assert not (tmp_path / "export").exists()
