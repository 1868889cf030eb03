"""Exported encoders load into torchvision / transformers / the EfficientNet package alone and
give fedvlp's features; the card and fedvlp.json describe the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedvlp.core.checkpoint import save_round
from fedvlp.core.config import ConfigError, ImageEncoderConfig, RunConfig, project_root
from fedvlp.core.data.tokenizer import load_tokenizer
from fedvlp.core.export import (
    export_checkpoint,
    export_image_encoder,
    export_text_encoder,
    find_checkpoint,
    torchvision_arch,
    torchvision_resnet_state,
)
from fedvlp.core.models import build_model
from fedvlp.core.models.image import ResNetEncoder
from fedvlp.core.models.vit import ViTConfig, ViTEncoder

TEXTS = ["no acute cardiopulmonary process", "small left pleural effusion. heart size is normal", "cardiomegaly"]
TV_WIDTHS = (64, 128, 256, 512)

# Runs in a fresh interpreter from an empty folder: only torch, torchvision, transformers,
# timm / efficientnet-lite-pytorch may be imported. It writes each export's features.
_LOADER = r"""
import importlib.util, json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
root = Path(sys.argv[1])
images = torch.load(root / "images.pt")
out = {}
for folder in sorted(p for p in root.iterdir() if p.is_dir()):
    if (folder / "load_image_encoder.py").is_file():
        library = json.loads((folder / "library.json").read_text())
        if library == "timm" and importlib.util.find_spec("timm") is None:
            continue
        spec = importlib.util.spec_from_file_location(folder.name, folder / "load_image_encoder.py")
        module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
        with torch.no_grad():
            out[folder.name] = module.load()(module.preprocess(images))
    if (folder / "text_encoder").is_dir():
        from transformers import AutoModel, AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(folder / "text_encoder")
        model = AutoModel.from_pretrained(folder / "text_encoder", add_pooling_layer=False)
        texts = json.loads((root / "texts.json").read_text())
        batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True)
        with torch.no_grad():
            out[folder.name] = model(**batch).last_hidden_state
        out[folder.name + ".ids"] = batch["input_ids"]
assert not any(name == "fedvlp" or name.startswith("fedvlp.") for name in sys.modules), "fedvlp was imported"
torch.save(out, root / "features.pt")
"""


def _close(theirs: torch.Tensor, ours: torch.Tensor) -> bool:
    """Equal within 1e-5 of the features' scale (random BatchNorm statistics make ResNet-50's
    features reach ~60, where float32 rounding alone is ~1e-5)."""
    return theirs.shape == ours.shape and float((theirs - ours).abs().max()) <= 1e-5 * max(1.0, float(ours.abs().max()))


def _with_statistics(encoder: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random BatchNorm statistics and affine values, so a norm layer loaded in the wrong place
    would change the features (fresh BatchNorms are the identity in eval mode)."""
    generator = torch.Generator().manual_seed(seed)
    for module in encoder.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
        if isinstance(module, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm)) and module.affine:
            module.weight.data.copy_(
                torch.rand(
                    module.num_features if hasattr(module, "num_features") else module.num_channels, generator=generator
                )
                + 0.5
            )
            module.bias.data.normal_(0, 0.1, generator=generator)
    return encoder.eval()


def _resnet(block: str, layers: tuple[int, ...], widths: tuple[int, ...], norm: str = "batch") -> ResNetEncoder:
    torch.manual_seed(0)
    return _with_statistics(
        ResNetEncoder(ImageEncoderConfig(block=block, layers=layers, widths=widths, image_size=32), norm), 1
    )  # type: ignore[return-value]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Every export format written once, loaded once in a subprocess without fedvlp.

    Returns the root folder, fedvlp's features by export name and the subprocess' features.
    """
    root = tmp_path_factory.mktemp("exports")
    images = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    torch.save(images, root / "images.pt")
    (root / "texts.json").write_text(json.dumps(TEXTS))
    encoders: dict[str, torch.nn.Module] = {
        "resnet18": _resnet("basic", (2, 2, 2, 2), TV_WIDTHS),
        "resnet50": _resnet("bottleneck", (3, 4, 6, 3), TV_WIDTHS),
        "tiny": _resnet("basic", (1, 1, 1, 1), (8, 16, 32, 64)),
        "tiny-group": _resnet("basic", (1, 1, 1, 1), (8, 16, 32, 64), norm="group"),
    }
    try:  # the package's model code only: random weights, no ImageNet file needed
        from fedvlp.core.models.pretrained import EfficientNetLiteEncoder

        torch.manual_seed(0)
        encoders["efficientnet"] = _with_statistics(EfficientNetLiteEncoder(32), 2)
    except ConfigError:
        pass  # efficientnet-lite-pytorch (fedvlp[pretrained]) not installed: its test skips
    torch.manual_seed(0)
    vit = ViTEncoder(ViTConfig(image_size=32, patch_size=8, dim=32, depth=2, heads=2)).eval()
    encoders["vit"] = vit
    ours: dict[str, torch.Tensor] = {}
    for name, encoder in encoders.items():
        folder = root / name
        folder.mkdir()
        meta = export_image_encoder(encoder, folder, 32)
        (folder / "library.json").write_text(json.dumps(meta["library"]))
        with torch.no_grad():
            ours[name] = encoder(images)
    run = RunConfig(model_size="tiny", image_size=32, sites=str(project_root() / "sites" / "demo"))
    model = build_model(run).eval()
    (root / "text").mkdir()
    tokenizer = load_tokenizer("demo")
    export_text_encoder(model.text, tokenizer, root / "text")
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True, truncation=True, max_length=model.text.config.max_len)
    with torch.no_grad():
        ours["text"] = model.text(batch["input_ids"], batch["attention_mask"])
    ours["text.ids"] = batch["input_ids"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ""}
    subprocess.run([sys.executable, "-c", _LOADER, str(root)], check=True, cwd=root, env=env, timeout=300)
    return root, ours, torch.load(root / "features.pt")


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "tiny", "tiny-group"])
@pytest.mark.slow
def test_resnet_features_equal_fedvlp_without_fedvlp(exported, name: str) -> None:
    _, ours, theirs = exported
    assert _close(theirs[name], ours[name])


@pytest.mark.slow
def test_efficientnet_features_equal_fedvlp_without_fedvlp(exported) -> None:
    _, ours, theirs = exported
    if "efficientnet" not in ours:
        pytest.skip("fedvlp[pretrained] (efficientnet-lite-pytorch) not installed")
    assert theirs["efficientnet"].shape == (3, 1280)
    assert _close(theirs["efficientnet"], ours["efficientnet"])


@pytest.mark.slow
def test_vit_features_equal_fedvlp_in_timm(exported) -> None:
    _, ours, theirs = exported
    if "vit" not in theirs:
        pytest.skip("timm is not installed (it is not a fedvlp dependency)")
    assert _close(theirs["vit"], ours["vit"])


@pytest.mark.slow
def test_text_folder_tokenizes_and_encodes_like_fedvlp(exported) -> None:
    _, ours, theirs = exported
    assert torch.equal(theirs["text.ids"], ours["text.ids"])
    assert _close(theirs["text"], ours["text"])


def test_text_folder_keeps_the_vocabulary_and_the_length_limit(exported) -> None:
    root, _, _ = exported
    saved = (root / "text" / "text_encoder" / "vocab.txt").read_text(encoding="utf-8").split()
    demo = [
        t for t in (project_root() / "core" / "data" / "vocab" / "demo.txt").read_text(encoding="utf-8").split() if t
    ]
    assert saved == list(dict.fromkeys(demo))
    config = json.loads((root / "text" / "text_encoder" / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == 48  # the tiny preset's text length = rows of the position table


def test_torchvision_arch_names_only_torchvision_layouts() -> None:
    assert torchvision_arch(_resnet("basic", (2, 2, 2, 2), TV_WIDTHS)) == "resnet18"
    assert torchvision_arch(_resnet("bottleneck", (3, 4, 6, 3), TV_WIDTHS)) == "resnet50"
    assert torchvision_arch(_resnet("basic", (2, 2, 2, 2), (8, 16, 32, 64))) is None


def test_resnet18_state_has_torchvision_keys_and_a_summed_stem() -> None:
    import torchvision

    encoder = _resnet("basic", (2, 2, 2, 2), TV_WIDTHS)
    state = torchvision_resnet_state(encoder)
    expected = set(torchvision.models.resnet18(weights=None).state_dict()) - {"fc.weight", "fc.bias"}
    assert set(state) == expected and len(state) == 120  # torchvision's 122 entries less the classifier's 2
    stem = encoder.stem[0].weight.detach()
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    for channel in range(3):  # each RGB channel carries a third of the grey weight
        assert torch.allclose(state["conv1.weight"][:, channel], stem[:, 0] / 3)


def test_exported_files_hold_the_same_tensors(exported) -> None:
    root, _, _ = exported
    safetensors = load_file(str(root / "resnet18" / "image_encoder.safetensors"))
    pickled = torch.load(root / "resnet18" / "image_encoder.pt", weights_only=True)
    assert set(safetensors) == set(pickled)
    assert all(torch.equal(safetensors[k], pickled[k]) for k in safetensors)


# ----------------------------------------------------------------------- whole checkpoints
def _checkpoint(tmp_path: Path, **changes: object) -> tuple[RunConfig, Path]:
    run = RunConfig(
        model_size="tiny",
        image_size=32,
        rounds=2,
        out_dir=str(tmp_path / "run"),
        sites=str(project_root() / "sites" / "demo"),
    )
    run = run.replace(**changes) if changes else run
    model = build_model(run)
    history = [
        {"round": 1, "replies": 2, "sites": [{"node_id": 11, "metrics": {}}, {"node_id": 12, "metrics": {}}]},
        {"round": 2, "replies": 1, "sites": [{"node_id": 12, "metrics": {}}]},
    ]
    for round_ in (1, 2):
        save_round(
            tmp_path / "run" / "checkpoints",
            round_,
            model.state_dict(),
            {"config_hash": run.config_hash(), "run_config": run.to_flat(), "history": history[:round_]},
        )
    return run, tmp_path / "run"


def test_find_checkpoint_accepts_run_folder_checkpoints_folder_and_round_file(tmp_path: Path) -> None:
    _, run_folder = _checkpoint(tmp_path)
    assert find_checkpoint(run_folder)[0].round == 2
    assert find_checkpoint(run_folder / "checkpoints")[0].round == 2
    found, weights, folder = find_checkpoint(run_folder / "checkpoints" / "round_0001.safetensors")
    assert (found.round, weights.name, folder) == (1, "round_0001.safetensors", run_folder)


def test_find_checkpoint_names_the_path_it_cannot_use(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nothing-here: key 'CHECKPOINT': expected a run folder"):
        find_checkpoint(tmp_path / "nothing-here")


def test_export_refuses_a_non_empty_folder_before_writing(tmp_path: Path) -> None:
    _, run_folder = _checkpoint(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"key '--out': expected a new or empty folder \(or --force"):
        export_checkpoint(run_folder, out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_export_force_replaces_its_own_files_only(tmp_path: Path) -> None:
    _, run_folder = _checkpoint(tmp_path)
    out = tmp_path / "out"
    export_checkpoint(run_folder / "checkpoints" / "round_0001.safetensors", out)
    (out / "notes.txt").write_text("mine")
    result = export_checkpoint(run_folder, out, force=True)
    assert result.meta["source"]["round"] == 2
    assert (out / "notes.txt").read_text() == "mine"


def test_card_and_meta_describe_the_run_and_sweep(tmp_path: Path) -> None:
    _, run_folder = _checkpoint(tmp_path)
    rows = ["init,protocol,label_fraction,seed,metric,class,value"]
    rows += [f"federated,linear,1.0,{seed},auc,mean,{value}" for seed, value in ((0, 0.7), (1, 0.8))]
    (tmp_path / "results.csv").write_text("\n".join(rows) + "\n")  # fedvlp demo: results.csv next to federated/
    result = export_checkpoint(run_folder, tmp_path / "out")
    meta = json.loads((tmp_path / "out" / "fedvlp.json").read_text())
    assert meta["rounds"] == 2 and meta["run_config"]["model-size"] == "tiny"
    assert meta["training"] == {
        "mode": "federated",
        "steps_per_round": 50,
        "steps_unit": "local steps per site",
        "pooled_sites": None,
    }
    assert meta["sites"]["files"] == ["hospital_a", "hospital_b", "hospital_c"]
    assert meta["sites"]["replied"] == ["11", "12"] and meta["sites"]["replies_by_round"] == {"1": 2, "2": 1}
    assert meta["image"]["mean"] == [0.5] * 3 and meta["image"]["std"] == [0.25] * 3 and meta["image"]["model"] is None
    card = (tmp_path / "out" / "README.md").read_text()
    assert "federated  linear    0.750 +- 0.071" in card  # mean and sample std of 0.7 and 0.8
    assert "no torchvision constructor has widths (8, 16, 32, 64)" in card
    assert (
        "- federated pretraining: recipe `mixed`, model size `tiny`, image size 32 px, 2 completed round(s) of 50 "
        "local steps per site" in card
    )
    assert result.files == (
        "README.md",
        "fedvlp.json",
        "image_encoder.pt",
        "image_encoder.safetensors",
        "load_image_encoder.py",
        "text_encoder",
    )


def test_uwox_exports_the_shared_encoder_and_says_why_not_bert(tmp_path: Path) -> None:
    _, run_folder = _checkpoint(tmp_path, recipe="uwox")
    result = export_checkpoint(run_folder, tmp_path / "out")
    assert result.files == ("README.md", "fedvlp.json", "shared_encoder.safetensors")
    state = load_file(str(tmp_path / "out" / "shared_encoder.safetensors"))
    assert not any(k.startswith("head.") for k in state) and any(k.startswith("joint.encoder.layer.0.") for k in state)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "No Hugging Face BERT folder: the text embedding is LayerNorm(word) + LayerNorm(position)" in card


def test_refers_exports_a_timm_vit_and_its_bert(tmp_path: Path) -> None:
    _, run_folder = _checkpoint(tmp_path, recipe="refers")
    result = export_checkpoint(run_folder, tmp_path / "out")
    assert result.meta["image"]["library"] == "timm"
    assert result.meta["image"]["vit"] == {
        "image_size": 32,
        "patch_size": 8,
        "dim": 32,
        "depth": 2,
        "heads": 2,
        "mlp_ratio": 4.0,
        "dropout": 0.0,
    }
    state = load_file(str(tmp_path / "out" / "image_encoder.safetensors"))
    assert state["patch_embed.proj.weight"].shape == (32, 3, 8, 8) and "blocks.1.mlp.fc2.weight" in state
    assert (tmp_path / "out" / "text_encoder" / "config.json").is_file()
