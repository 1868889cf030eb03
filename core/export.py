"""Pretrained encoders out of fedvlp, in the formats other code loads (``fedvlp export``).

A checkpoint of a pretraining run (federated, central or local: :mod:`fedvlp.core.checkpoint`)
becomes a folder that needs neither fedvlp nor its checkpoint format::

    DIR/README.md                  model card: run config, sites, rounds, sweep result, how to load
    DIR/fedvlp.json                the same, machine-readable
    DIR/image_encoder.safetensors  image encoder state dict (also image_encoder.pt)
    DIR/load_image_encoder.py      torch/torchvision (or timm / efficientnet-lite-pytorch) code that
                                   builds the matching model and loads the file with strict=True
    DIR/text_encoder/              Hugging Face folder: BertModel + tokenizer (AutoModel/AutoTokenizer)
    DIR/shared_encoder.safetensors uwox/unit: the shared transformer (no BERT equivalent, see card)

Image encoders take 3-channel input: fedvlp's 1-channel stem weights are repeated over the three
channels and divided by 3, so a grey image repeated to RGB gives exactly fedvlp's features. The
normalisation fedvlp applies inside its encoders is written in the card and in ``fedvlp.json``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .checkpoint import RoundCheckpoint, load_latest, load_round
from .config import ConfigError, RunConfig, list_site_files, resolve_path

if TYPE_CHECKING:
    from .models.protocol import VLPModel
    from .models.text import TextEncoder

__all__ = [
    "EXPORT_FORMAT",
    "ExportResult",
    "find_checkpoint",
    "torchvision_arch",
    "torchvision_resnet_state",
    "timm_vit_state",
    "export_image_encoder",
    "export_text_encoder",
    "export_checkpoint",
]

EXPORT_FORMAT = "fedvlp-export/1"
IMAGE_FILE = "image_encoder.safetensors"
IMAGE_PT_FILE = "image_encoder.pt"
IMAGE_LOADER = "load_image_encoder.py"
TEXT_FOLDER = "text_encoder"
SHARED_FILE = "shared_encoder.safetensors"
META_FILE = "fedvlp.json"
CARD_FILE = "README.md"
_OWN_FILES = (IMAGE_FILE, IMAGE_PT_FILE, IMAGE_LOADER, TEXT_FOLDER, SHARED_FILE, META_FILE, CARD_FILE)

# torchvision constructors whose layout a ResNetEncoder can have: (block, blocks per stage).
_TORCHVISION_RESNETS: dict[tuple[str, tuple[int, ...]], str] = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
}
_TORCHVISION_WIDTHS = (64, 128, 256, 512)


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What :func:`export_checkpoint` wrote."""

    out: Path
    files: tuple[str, ...]
    meta: dict[str, Any]


# ------------------------------------------------------------------------------ checkpoint
def find_checkpoint(spec: str | Path) -> tuple[RoundCheckpoint, Path, Path]:
    """The checkpoint ``spec`` names: a ``round_NNNN.safetensors`` file, a checkpoints folder
    (its latest round) or a run folder holding ``checkpoints/``.

    Returns
    -------
    tuple
        The checkpoint, its weights file and the run folder (the checkpoints folder's parent).

    Raises
    ------
    ConfigError
        When ``spec`` is none of these or the round's JSON state has no ``run_config``.
    """
    path = resolve_path(str(spec))
    checkpoint: RoundCheckpoint | None = None
    if (
        path.is_file()
        and path.name.startswith("round_")
        and path.name.endswith(".safetensors")
        and ".extra." not in path.name
    ):
        folder = path.parent
        try:
            round_ = int(path.name[len("round_") :].split(".")[0])
        except ValueError:
            round_ = -1
        if round_ >= 0 and (folder / f"round_{round_:04d}.json").is_file():
            checkpoint = load_round(folder, round_)
    else:
        for folder in (path, path / "checkpoints"):
            if (folder / "latest.json").is_file():
                checkpoint = load_latest(folder)
                break
    if checkpoint is None:
        raise ConfigError(
            str(spec),
            "CHECKPOINT",
            "a run folder (with checkpoints/latest.json), a checkpoints folder, "
            "or a round_NNNN.safetensors file next to its round_NNNN.json",
        )
    if "run_config" not in checkpoint.state:
        raise ConfigError(
            str(folder / f"round_{checkpoint.round:04d}.json"),
            "run_config",
            "the run config of the round (written by fedvlp pretraining)",
        )
    run_folder = folder.parent if folder.name == "checkpoints" else folder
    return checkpoint, folder / f"round_{checkpoint.round:04d}.safetensors", run_folder


# ------------------------------------------------------------------------------ image side
def torchvision_arch(encoder: nn.Module) -> str | None:
    """The torchvision constructor (``"resnet18"``, ``"resnet50"``, ...) whose layout ``encoder``
    has, or ``None`` (widths or depths torchvision does not build, e.g. the tiny/small presets)."""
    from .models.image import ResNetEncoder

    if not isinstance(encoder, ResNetEncoder) or tuple(encoder.config.widths) != _TORCHVISION_WIDTHS:
        return None
    return _TORCHVISION_RESNETS.get((encoder.config.block, tuple(encoder.config.layers)))


def _rgb_stem(weight: torch.Tensor) -> torch.Tensor:
    """1-channel stem weights to 3 channels: repeated and divided by 3, so that a grey image
    repeated to RGB gives the same output (the convolution sums over the channels)."""
    if weight.shape[1] == 3:
        return weight.clone()
    if weight.shape[1] != 1:
        raise ValueError(f"expected a 1- or 3-channel stem, got {weight.shape[1]} channels")
    return weight.repeat(1, 3, 1, 1) / 3.0


def torchvision_resnet_state(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """A :class:`~fedvlp.core.models.image.ResNetEncoder`'s state dict with torchvision's names
    and a 3-channel stem (no ``fc.``: load it into a model whose ``fc`` is ``nn.Identity()``)."""
    from .models.pretrained import to_torchvision_key

    state = {to_torchvision_key(k): v.detach().clone() for k, v in encoder.state_dict().items()}
    state["conv1.weight"] = _rgb_stem(state["conv1.weight"])
    return state


def timm_vit_state(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """A :class:`~fedvlp.core.models.vit.ViTEncoder`'s state dict with ``timm``'s
    ``VisionTransformer`` names and a 3-channel patch embedding.

    The layouts match one to one (pre-norm blocks, fused qkv, exact GELU, LayerNorm eps 1e-6,
    class token, learned positions); only ``patch_embed`` becomes ``patch_embed.proj`` and the
    MLP's ``0``/``3`` become ``fc1``/``fc2``.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in encoder.state_dict().items():
        name = (
            key.replace("patch_embed.", "patch_embed.proj.")
            .replace(".mlp.0.", ".mlp.fc1.")
            .replace(".mlp.3.", ".mlp.fc2.")
        )
        out[name] = value.detach().clone()
    out["patch_embed.proj.weight"] = _rgb_stem(out["patch_embed.proj.weight"])
    return out


def _save_state(out: Path, state: Mapping[str, torch.Tensor], mean: list[float], std: list[float]) -> list[str]:
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in state.items()}
    # The normalisation travels with the file: image-init reads it back (pretrained.file_normalisation).
    metadata = {"format": "pt", "input_mean": json.dumps(mean), "input_std": json.dumps(std)}
    save_file(tensors, str(out / IMAGE_FILE), metadata=metadata)
    torch.save(tensors, out / IMAGE_PT_FILE)
    return [IMAGE_FILE, IMAGE_PT_FILE]


_LOADER_HEAD = '''\
"""Load the exported image encoder WITHOUT fedvlp: ``model = load()``, ``features = model(preprocess(grey))``.

``grey``: a (B, 1, H, W) float tensor in [0, 1] ({size} px as trained). Written by ``fedvlp export``.
"""
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
MEAN = {mean}
STD = {std}


def preprocess(grey: torch.Tensor) -> torch.Tensor:
    """Grey (B, 1, H, W) images in [0, 1] -> the normalised RGB input the encoder expects."""
    rgb = grey.expand(-1, 3, -1, -1) if grey.shape[1] == 1 else grey
    return (rgb - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def _state() -> dict:
    from safetensors.torch import load_file

    return load_file(str(HERE / "{file}"))
'''

_LOADER_TORCHVISION = '''

def load() -> nn.Module:
    """torchvision's {arch} with the exported weights (strict); ``fc`` is ``nn.Identity()``, so the
    output is the globally average-pooled feature vector ({dim} values)."""
    import torchvision

    model = torchvision.models.{arch}(weights=None{norm_arg})
    model.fc = nn.Identity()
    model.load_state_dict(_state(), strict=True)
    return model.eval()
'''

_LOADER_BLOCKS = '''

class ResNetTrunk(nn.Module):
    """torchvision's ResNet with other stage widths/depths (torchvision's own constructor fixes
    them to 64-128-256-512): same module names (conv1, bn1, layerN), blocks from torchvision."""

    def __init__(self, block: type, layers: tuple, widths: tuple, norm_layer=nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(widths[0])
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        planes_in = widths[0]
        for index, (depth, width) in enumerate(zip(layers, widths)):
            blocks = []
            for b in range(depth):
                stride = 2 if index > 0 and b == 0 else 1
                planes_out = width * block.expansion
                downsample = None
                if b == 0 and (stride != 1 or planes_in != planes_out):
                    downsample = nn.Sequential(
                        nn.Conv2d(planes_in, planes_out, 1, stride=stride, bias=False), norm_layer(planes_out)
                    )
                blocks.append(block(planes_in, width, stride, downsample, norm_layer=norm_layer))
                planes_in = planes_out
            setattr(self, f"layer{{index + 1}}", nn.Sequential(*blocks))
        self.num_layers = len(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for index in range(self.num_layers):
            x = getattr(self, f"layer{{index + 1}}")(x)
        return x.mean(dim=(2, 3))


def load() -> nn.Module:
    """The {block} ResNet trunk (layers {layers}, widths {widths}) with the exported weights
    (strict); output: globally average-pooled features ({dim} values)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    block = {{"basic": BasicBlock, "bottleneck": Bottleneck}}["{block}"]
    model = ResNetTrunk(block, {layers}, {widths}{norm_arg})
    model.load_state_dict(_state(), strict=True)
    return model.eval()
'''

_GROUP_NORM = '''

def group_norm(channels: int) -> nn.GroupNorm:
    """fedvlp's GroupNorm (run-config norm = "group"): the most groups up to 32 with >= 4 channels each."""
    groups = max(g for g in range(1, min(32, max(1, channels // 4)) + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)
'''

_LOADER_EFFICIENTNET = '''

def load() -> nn.Module:
    """EfficientNet-Lite0 of the package ``efficientnet-lite-pytorch`` with the exported weights
    (strict); ``_fc`` is ``nn.Identity()``, so the output is the pooled 1280-value feature vector."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0", image_size={size})
    model._fc = nn.Identity()
    model.load_state_dict(_state(), strict=True)
    return model.eval()
'''

_LOADER_TIMM = '''

def load() -> nn.Module:
    """timm's VisionTransformer with the exported weights (strict, ``num_classes=0``): the output
    is the class token after the final LayerNorm ({dim} values)."""
    import timm.models.vision_transformer as vit

    model = vit.VisionTransformer(img_size={size}, patch_size={patch}, in_chans=3, num_classes=0, embed_dim={dim},
                                  depth={depth}, num_heads={heads}, mlp_ratio={mlp_ratio}, qkv_bias=True,
                                  global_pool="token")
    model.load_state_dict(_state(), strict=True)
    return model.eval()
'''


def export_image_encoder(encoder: nn.Module, out: Path, image_size: int) -> dict[str, Any]:
    """Write ``encoder`` (fedvlp's ResNet, EfficientNet-Lite0 or ViT) as a 3-channel state dict
    in the naming of the library that has the same model, plus ``load_image_encoder.py``.

    Parameters
    ----------
    encoder
        The run's image encoder (``model.image_backbone()``).
    out
        The export folder (exists).
    image_size
        Input size the encoder was trained at (EfficientNet's padding and ViT's positions need it).

    Returns
    -------
    dict
        The ``image`` entry of ``fedvlp.json``: files, target library and model, input
        normalisation, feature size.
    """
    from .models.image import PIXEL_MEAN, PIXEL_STD, ResNetEncoder
    from .models.pretrained import IMAGENET_MEAN, IMAGENET_STD, EfficientNetLiteEncoder
    from .models.vit import ViTEncoder

    grey = {"mean": [PIXEL_MEAN] * 3, "std": [PIXEL_STD] * 3}
    meta: dict[str, Any] = {
        "image_size": image_size,
        "in_chans": 3,
        "feature_dim": int(getattr(encoder, "out_dim")),  # every image encoder has one; nn.Module does not say
        "input": "grey image in [0, 1] repeated to 3 channels, then (x - mean) / std per channel",
        "stem": "fedvlp's 1-channel stem weights repeated over 3 channels and divided by 3",
    }
    if isinstance(encoder, ResNetEncoder):
        arch = torchvision_arch(encoder)
        files = _save_state(out, torchvision_resnet_state(encoder), grey["mean"], grey["std"])
        norm_arg = ", norm_layer=group_norm" if encoder.norm == "group" else ""
        params = {
            "arch": arch,
            "dim": encoder.out_dim,
            "norm_arg": norm_arg,
            "block": encoder.config.block,
            "layers": tuple(encoder.config.layers),
            "widths": tuple(encoder.config.widths),
        }
        body = (_GROUP_NORM if encoder.norm == "group" else "") + (
            _LOADER_TORCHVISION if arch else _LOADER_BLOCKS
        ).format(**params)
        meta.update(
            grey,
            library="torchvision",
            norm=encoder.norm,
            block=encoder.config.block,
            layers=list(encoder.config.layers),
            widths=list(encoder.config.widths),
            model=f"torchvision.models.{arch}" if arch else None,
            features="global average pool of layer4 (fc = nn.Identity())",
        )
        if arch is None:
            meta["note"] = (
                f"no torchvision constructor has widths {tuple(encoder.config.widths)} and depths "
                f"{tuple(encoder.config.layers)} (torchvision fixes 64-128-256-512); the keys are torchvision's "
                f"ResNet names, and {IMAGE_LOADER} builds the trunk from torchvision's own blocks"
            )
        if encoder.norm == "group":
            meta["norm_note"] = (
                "GroupNorm: pass norm_layer=group_norm (see load_image_encoder.py); there are no running statistics"
            )
    elif isinstance(encoder, EfficientNetLiteEncoder):
        grey = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
        files = _save_state(
            out, {k: v.detach().clone() for k, v in encoder.net.state_dict().items()}, grey["mean"], grey["std"]
        )
        body = _LOADER_EFFICIENTNET.format(size=image_size)
        meta.update(
            grey,
            library="efficientnet-lite-pytorch",
            model="efficientnet_lite_pytorch.EfficientNet('efficientnet-lite0')",
            stem="3-channel ImageNet stem (fedvlp repeats grey images to RGB before it)",
            features="global average pool after the 1x1 head conv (_fc = nn.Identity())",
        )
    elif isinstance(encoder, ViTEncoder):
        files = _save_state(out, timm_vit_state(encoder), grey["mean"], grey["std"])
        cfg = encoder.config
        body = _LOADER_TIMM.format(
            size=cfg.image_size,
            patch=cfg.patch_size,
            dim=cfg.dim,
            depth=cfg.depth,
            heads=cfg.heads,
            mlp_ratio=cfg.mlp_ratio,
        )
        meta.update(
            grey,
            library="timm",
            model="timm.models.vision_transformer.VisionTransformer",
            vit={k: v for k, v in dataclasses.asdict(cfg).items() if k != "in_chans"},
            features="class token after the final LayerNorm (num_classes=0, global_pool='token')",
            layout=(
                "timm VisionTransformer names; without timm: patch_embed.proj = Conv2d(3, dim, patch, stride=patch), "
                "cls_token, pos_embed (1, 1 + patches, dim), blocks.i = pre-norm (norm1, attn.qkv fused q|k|v, "
                "attn.proj, norm2, mlp.fc1, GELU, mlp.fc2), norm; LayerNorm eps 1e-6"
            ),
        )
    else:
        raise TypeError(f"no standard format for image encoder {type(encoder).__name__}")
    loader = (
        _LOADER_HEAD.format(size=image_size, mean=tuple(meta["mean"]), std=tuple(meta["std"]), file=IMAGE_FILE) + body
    )
    (out / IMAGE_LOADER).write_text(loader, encoding="utf-8")
    meta["files"] = [*files, IMAGE_LOADER]
    return meta


# ------------------------------------------------------------------------------- text side
def export_text_encoder(encoder: TextEncoder, tokenizer: Any, out: Path) -> dict[str, Any]:
    """Write the BERT text encoder and its tokenizer as a Hugging Face folder ``out/text_encoder``.

    ``AutoModel.from_pretrained`` / ``AutoTokenizer.from_pretrained`` load it offline. The
    tokenizer's ``model_max_length`` is the run's maximum text length: the position table
    holds only that many rows. fedvlp's BERT has no pooler, so ``AutoModel`` adds a random one
    (and says so): the features are ``last_hidden_state``.

    Parameters
    ----------
    encoder
        A :class:`~fedvlp.core.models.text.TextEncoder` (its ``bert`` is a ``BertModel``).
    tokenizer
        The run's tokenizer (its vocabulary is saved with the model).
    out
        The export folder (exists).

    Returns
    -------
    dict
        The ``text`` entry of ``fedvlp.json``.
    """
    import copy

    folder = out / TEXT_FOLDER
    bert = encoder.bert
    bert.save_pretrained(str(folder))
    max_len = int(bert.config.max_position_embeddings)
    saved = copy.deepcopy(tokenizer)  # the run's tokenizer is cached and shared with datasets
    saved.model_max_length = max_len
    saved.save_pretrained(str(folder))
    if not (folder / "vocab.txt").is_file():
        # tokenizer.json holds the vocabulary too; vocab.txt is what WordPiece tools and the
        # run-config key ``tokenizer`` read.
        tokens = sorted(saved.get_vocab().items(), key=lambda item: item[1])
        (folder / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in tokens), encoding="utf-8")
    cfg = bert.config
    return {
        "folder": TEXT_FOLDER,
        "library": "transformers",
        "model_type": cfg.model_type,
        "hidden": cfg.hidden_size,
        "layers": cfg.num_hidden_layers,
        "heads": cfg.num_attention_heads,
        "vocab_size": cfg.vocab_size,
        "max_length": max_len,
        "lowercase": bool(getattr(tokenizer, "do_lower_case", True)),
        "features": "last_hidden_state (token states); fedvlp's heads pool them (contrastive: max over tokens, "
        "matching: 1x1 conv + average); the pooler is not part of the export",
    }


def _shared_encoder_export(model: VLPModel, out: Path) -> dict[str, Any]:
    """uwox/unit: the shared transformer with both embeddings as one plain state dict."""
    from safetensors.torch import save_file

    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if not k.startswith("head.")}
    save_file(state, str(out / SHARED_FILE), metadata={"format": "pt"})
    return {
        "files": [SHARED_FILE],
        "library": None,
        "keys": len(state),
        "groups": sorted({k.split(".")[0] for k in state}),
        "why_not_bert": (
            "the text embedding is LayerNorm(word) + LayerNorm(position) (two norms, summed), where BERT has one "
            "LayerNorm(word + position + type); and a UWOX layer follows the BERT layers. No BertModel computes "
            "the same features, so the shared encoder is exported as fedvlp's own state dict: image.* (patch "
            "and 6-value position embeddings of the image pyramid), text.* (token and position embeddings), "
            "joint.encoder.layer.i.* (transformers BertLayer names) and joint.uwox.*"
        ),
    }


# ------------------------------------------------------------------------------- the card
def _training(state: Mapping[str, Any], run: RunConfig) -> dict[str, Any]:
    """How the checkpoint was trained: federated, or ``fedvlp pretrain --central/--local``
    (which record their mode, pooled sites and steps per round in the round's state)."""
    mode = str(state.get("mode", "federated"))
    steps = state.get("steps_per_round", run.local_steps)
    unit = "local steps per site" if mode == "federated" else "optimizer steps"
    return {"mode": mode, "steps_per_round": steps, "steps_unit": unit, "pooled_sites": state.get("sites")}


def _sites(run: RunConfig, history: list[dict[str, Any]]) -> dict[str, Any]:
    """Site files of the run config and who replied in each round."""
    try:
        files = [p.stem for p in list_site_files(run.sites)]
    except ConfigError:
        files = []  # the run folder moved to another machine: the rounds still say who replied
    seen: list[str] = []
    for record in history:
        for site in record.get("sites", []):
            name = str(site.get("site") or site.get("name") or site.get("node_id", ""))
            if name and name not in seen:
                seen.append(name)
    return {
        "folder": run.sites,
        "files": files,
        "replied": seen,
        "replies_by_round": {str(r["round"]): r.get("replies") for r in history if "round" in r},
    }


def _find_sweep(run_folder: Path) -> Path | None:
    """A sweep's ``results.csv`` next to the run: in the run folder, its parent (``fedvlp demo``)
    or the parent's ``sweep/`` (``fedvlp demo --sites``)."""
    for folder in (run_folder, run_folder.parent, run_folder.parent / "sweep"):
        if (folder / "results.csv").is_file():
            return folder / "results.csv"
    return None


def _sweep_table(results: Path) -> str:
    from .evaluation.report import format_table
    from .evaluation.sweep import load_results

    return format_table(load_results(results))


def _card(meta: dict[str, Any], sweep_table: str | None) -> str:
    run = meta["run_config"]
    lines = [
        f"# fedvlp {run['recipe']} encoders ({run['model-size']}, round {meta['source']['round']})",
        "",
        f"Exported by `fedvlp export` from `{meta['source']['checkpoint']}` (config hash "
        f"`{meta['source']['config_hash']}`) on {meta['exported_at']}. Machine-readable: `{META_FILE}`.",
        "",
        "## Training",
        "",
        f"- {meta['training']['mode']} pretraining: recipe `{run['recipe']}`, model size `{run['model-size']}`, "
        f"image size {run['image-size']} px, {meta['rounds']} completed round(s) of "
        f"{meta['training']['steps_per_round']} {meta['training']['steps_unit']}",
        f"- sites: {', '.join(meta['sites']['files']) or '(site files not found)'} (folder "
        f"`{meta['sites']['folder']}`)",
    ]
    if meta["sites"]["replied"]:
        lines.append(
            f"- replied: {', '.join(meta['sites']['replied'])}; replies by round: "
            + ", ".join(f"{k}: {v}" for k, v in meta["sites"]["replies_by_round"].items())
        )
    lines += ["", "## Image encoder", ""]
    image = meta.get("image")
    if image and image.get("library"):
        target = (
            image["model"]
            or f"a {image['block']} ResNet with layers {tuple(image['layers'])} and widths {tuple(image['widths'])}"
        )
        lines += [
            f"`{IMAGE_FILE}` (and `{IMAGE_PT_FILE}`): a state dict that loads with `strict=True` into {target} "
            f"(library `{image['library']}`; `{IMAGE_LOADER}` builds it and loads the file without fedvlp).",
            "",
            f"- input: {image['input']}; mean {image['mean']}, std {image['std']}, {image['image_size']} px as trained",
            f"- stem: {image['stem']}",
            f"- features: {image['features']} ({image['feature_dim']} values)",
        ]
        if image.get("note"):
            lines.append(f"- note: {image['note']}")
        if image.get("norm_note"):
            lines.append(f"- {image['norm_note']}")
        lines += [
            "",
            "```python",
            "import importlib.util, torch",
            f"spec = importlib.util.spec_from_file_location('loader', 'DIR/{IMAGE_LOADER}')",
            "loader = importlib.util.module_from_spec(spec); spec.loader.exec_module(loader)",
            "model = loader.load()  # eval mode",
            f"features = model(loader.preprocess(grey))  # grey: (B, 1, {image['image_size']}, "
            f"{image['image_size']}) in [0, 1]",
            "```",
        ]
    shared = meta.get("shared")
    if shared:
        lines += [
            f"`{SHARED_FILE}`: the shared transformer (groups {', '.join(shared['groups'])}, {shared['keys']} tensors) "
            "as fedvlp's own state dict; load it with fedvlp (`build_model` of the run config in "
            f"`{META_FILE}`, then `load_state_dict(strict=False)`).",
            "",
            f"No Hugging Face BERT folder: {shared['why_not_bert']}.",
        ]
    lines += ["", "## Text encoder", ""]
    text = meta.get("text")
    if text:
        lines += [
            f"`{TEXT_FOLDER}/`: a Hugging Face {text['model_type']} ({text['layers']} layers, {text['hidden']} hidden, "
            f"vocabulary {text['vocab_size']}) with its tokenizer (lower-casing: {text['lowercase']}).",
            "",
            f"- at most {text['max_length']} tokens (the position table is cut to the run's text length): tokenize "
            "with `truncation=True`",
            f"- features: {text['features']}",
            "",
            "```python",
            "from transformers import AutoModel, AutoTokenizer",
            f"tokenizer = AutoTokenizer.from_pretrained('DIR/{TEXT_FOLDER}')",
            f"model = AutoModel.from_pretrained('DIR/{TEXT_FOLDER}', add_pooling_layer=False)",
            "batch = tokenizer(['no acute cardiopulmonary process'], return_tensors='pt', padding=True, "
            "truncation=True)",
            "states = model(**batch).last_hidden_state",
            "```",
        ]
    else:
        lines.append(
            "Not exported separately: "
            + ("see the shared encoder above." if shared else "this recipe has no text encoder.")
        )
    lines += ["", "## Label-efficiency sweep", ""]
    if sweep_table is not None:
        lines += [
            f"From `{meta['sweep']['results']}` (mean test AUC; full report: "
            f"`{meta['sweep']['report'] or 'not found'}`):",
            "",
            "```",
            sweep_table,
            "```",
        ]
    else:
        lines.append("No sweep `results.csv` found next to the run.")
    lines += ["", "## Run config", "", "```toml"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in sorted(run.items())]
    lines += ["```", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the command
def _check_out(out: Path, force: bool) -> None:
    """Refuse a file or a non-empty folder (without ``force``) before anything is built or written."""
    if out.exists() and not out.is_dir():
        raise ConfigError(str(out), "--out", "a folder (this is a file)")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(str(out), "--out", "a new or empty folder (or --force to replace an earlier export there)")


def _prepare_out(out: Path) -> None:
    if out.is_dir():
        for name in _OWN_FILES:  # only what an export writes; anything else in the folder stays
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def export_checkpoint(checkpoint: str | Path, out: str | Path, force: bool = False) -> ExportResult:
    """Export the encoders of a pretraining checkpoint (``fedvlp export``).

    Parameters
    ----------
    checkpoint
        A run folder, a checkpoints folder (latest round) or a ``round_NNNN.safetensors`` file.
    out
        The export folder; it must be new or empty unless ``force``.
    force
        Replace the files of an earlier export in ``out`` (other files stay).

    Returns
    -------
    ExportResult
        The folder, the files written and the ``fedvlp.json`` content.

    Raises
    ------
    ConfigError
        When the checkpoint cannot be found, its run config is invalid, or ``out`` is not empty.
    """
    from .data.tokenizer import load_run_tokenizer
    from .models import build_model, family_of

    found, weights_file, run_folder = find_checkpoint(checkpoint)
    run = RunConfig.from_flat(found.state["run_config"], origin=str(weights_file.with_suffix(".json")))
    out = Path(out).resolve()
    _check_out(out, force)
    model = build_model(run)
    model.load_state_dict(found.weights, strict=True)
    model.eval()
    _prepare_out(out)
    history = list(found.state.get("history", []))
    meta: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "exported_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "source": {
            "checkpoint": str(weights_file),
            "round": found.round,
            "config_hash": found.state.get("config_hash"),
        },
        "rounds": found.round,
        "run_config": run.to_flat(),
        "training": _training(found.state, run),
        "sites": _sites(run, history),
    }
    if family_of(run).shared_encoder:
        meta["shared"] = _shared_encoder_export(model, out)
    else:
        meta["image"] = export_image_encoder(model.image_backbone(), out, run.image_size)
        text: TextEncoder = getattr(model, "text")  # the cnn and vit families' BERT (not part of VLPModel)
        meta["text"] = export_text_encoder(text, load_run_tokenizer(run), out)
    results = _find_sweep(run_folder)
    table = None
    if results is not None:
        report = results.parent / "report.md"
        meta["sweep"] = {"results": str(results), "report": str(report) if report.is_file() else None}
        table = _sweep_table(results)
    (out / CARD_FILE).write_text(_card(meta, table), encoding="utf-8")
    (out / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str), encoding="utf-8")
    files = tuple(sorted(p.name for p in out.iterdir() if p.name in _OWN_FILES))
    return ExportResult(out, files, meta)
