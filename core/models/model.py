"""The whole pretraining model: encoders plus one head per active objective."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ..config import OPT_IN_OBJECTIVES, ModelConfig, RunConfig
from ..data.tokenizer import SPECIAL_TOKENS, load_run_tokenizer
from ..objectives import ContrastiveObjective, DistillObjective, MatchingObjective, MIMObjective, MLMObjective, Objective
from .image import build_image_encoder
from .stages import lock_stages, locked_modules
from .text import TextEncoder, build_text_encoder

__all__ = ["FedVLPModel", "build_model", "model_config_for", "freeze_text_half", "freeze_text_layers", "BackboneFactory", "backbone_state"]


class FedVLPModel(nn.Module):
    """``image`` and ``text`` encoders and ``head[<objective>]`` modules.

    The attribute names are the parameter groups of DESIGN.md, so ``state_dict()`` keys
    read ``image.…``, ``text.…`` and ``head.<objective>.…``.
    """

    def __init__(self, config: ModelConfig, objectives: dict[str, Objective], image: nn.Module, text: TextEncoder,
                 locked_image_stages: int = 0, image_bn: str = "train"):
        super().__init__()
        self.config = config
        self.image = image
        self.text = text
        self.head = nn.ModuleDict(objectives)
        self.max_text_len = config.text.max_len
        # Lower image stages that never train (run-config freeze-image-stages): their
        # parameters have requires_grad False and train() keeps them in eval mode.
        self.locked_image_stages = lock_stages(image, locked_image_stages) if locked_image_stages else 0
        self.image_bn = image_bn

    def train(self, mode: bool = True) -> "FedVLPModel":
        """``nn.Module.train``, except that locked image stages stay in eval mode and, under
        ``image-bn = "frozen"``, so does every BatchNorm of the image encoder (its running
        statistics are those of the start, e.g. ImageNet's, not of a site's small batches)."""
        super().train(mode)
        if mode:
            for module in locked_modules(self.image, self.locked_image_stages) if self.locked_image_stages else []:
                module.eval()
            if self.image_bn == "frozen":
                for module in self.image.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
        return self

    def image_backbone(self) -> nn.Module:
        """The module the fine-tuning sweep trains: images in ``[0, 1]`` to pooled features."""
        return self.image

    @property
    def objectives(self) -> list[Objective]:
        """The active objectives, in a fixed order."""
        return [self.head[name] for name in self.head]  # type: ignore[misc]


def model_config_for(run: RunConfig) -> ModelConfig:
    """The model size preset of a run, with its tokenizer's vocabulary size.

    Under ``text-init = "minilm"`` the text encoder takes MiniLM's widths (384 hidden, 6 layers)
    and vocabulary; the maximum text length stays the preset's.
    """
    vocab_size = len(load_run_tokenizer(run))
    config = ModelConfig.preset(run.model_size, run.image_size, vocab_size, run.mim_patch)
    from . import pretrained

    if run.text_init == "minilm":
        config = replace(config, text=pretrained.minilm_text_config(config.text.max_len))
    elif run.text_init:  # a local BERT folder: its widths
        config = replace(config, text=pretrained.local_text_config(run.text_init, config.text.max_len))
    if pretrained.is_local_init(run.image_init):  # a torchvision ResNet file: its depths and widths
        config = replace(config, image=pretrained.local_resnet_config(run.image_init, run.image_size))
    return config


def build_model(run: RunConfig, seed: int | None = None) -> nn.Module:
    """Build the model of a run with random weights (seeded by ``seed`` or ``run.seed``).

    The recipe's family picks the architecture (``cnn``: ResNet + BERT; ``vit``: REFERS).
    Only objectives whose weight is above zero get a head. Every model has the attributes
    ``objectives``, ``max_text_len`` and ``image_backbone()``.

    ``text-init`` / ``image-init`` (cnn family only) start the text encoder from
    all-MiniLM-L6-v2 and the image encoder from ImageNet EfficientNet-Lite0, read from the
    packages of ``fedvlp[pretrained]``, or from a local BERT folder / torchvision ResNet file
    (:mod:`fedvlp.core.models.pretrained`); the heads stay random and follow the loaded widths.

    Raises
    ------
    ConfigError
        When an init is set for another family or its package is not installed.
    """
    from .pretrained import check_inits

    check_inits(run)
    torch.manual_seed(run.seed if seed is None else seed)
    tokenizer = load_run_tokenizer(run)
    if run.spec.family == "vit":
        from .refers import build_refers_model

        special = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
        refers = build_refers_model(
            run.model_size, run.image_size, len(tokenizer), special, tokenizer.pad_token_id,
            tokenizer.cls_token_id, tokenizer.sep_token_id, run.tau, run.contrastive_lambda, run.objective_weights(),
        )
        if run.image_init:  # a timm ViT file of the preset's shape (check_inits allows nothing else)
            from .pretrained import load_timm_vit

            load_timm_vit(refers.image, run.image_init, run.model_size)
        return refers
    if run.spec.family in ("uwox", "unit"):
        from .uwox import UWOXConfig, build_uwox_model

        uwox = UWOXConfig.preset(run.model_size, run.image_size, len(tokenizer), fusion=run.spec.family == "unit")
        special = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
        model = build_uwox_model(uwox, special, tokenizer.mask_token_id, run.mask_ratio, run.objective_weights())
        if run.bert_init:
            model.init_shared_from(load_bert_state(run.bert_init))
        return model
    config = model_config_for(run)
    if run.recipe == "convirt" and run.model_size == "base" and not run.image_init:
        # ConVIRT's paper encoder is a ResNet-50.
        config = replace(config, image=replace(config.image, block="bottleneck", layers=(3, 4, 6, 3)))
    image, text = _build_encoders(run, config)
    weights = run.objective_weights()
    special_ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    candidates: dict[str, Callable[[], Objective]] = {  # heads of the cnn family
        "contrastive": lambda: ContrastiveObjective(image.out_dim, text.out_dim, config.embed_dim, run.tau, run.contrastive_lambda),
        "matching": lambda: MatchingObjective(image.out_dim, text.out_dim, config.embed_dim),
        "mlm": lambda: MLMObjective(text.out_dim, config.vocab_size, special_ids, tokenizer.mask_token_id, run.mask_ratio,
                                    tied=run.mlm_decoder == "tied"),
        "mim": lambda: MIMObjective(image.out_dim, image.stride, config.image.in_chans, run.mim_patch, run.mask_ratio),
        "distill": lambda: DistillObjective(image.out_dim, config.embed_dim),
    }
    # The four original heads are always built, in this order, so that every recipe draws the
    # same random initialisation as before; opt-in heads only when their objective is on.
    built = {name: build() for name, build in candidates.items() if name not in OPT_IN_OBJECTIVES or weights.get(name, 0.0) > 0}
    objectives = {name: objective for name, objective in built.items() if weights.get(name, 0.0) > 0}
    if run.spec.freeze_text == "half":
        freeze_text_half(text)
    if run.freeze_text_layers:
        freeze_text_layers(text, run.freeze_text_layers)
    return FedVLPModel(config, objectives, image, text, locked_image_stages=run.freeze_image_stages, image_bn=run.image_bn)


def _build_encoders(run: RunConfig, config: ModelConfig) -> tuple[nn.Module, TextEncoder]:
    """The cnn family's encoders: random from ``config``, or general-pretrained per run config."""
    from . import pretrained

    if run.image_init == "efficientnet-lite0":
        image: nn.Module = pretrained.build_efficientnet_lite0_encoder(run.image_size)
    elif run.image_init:
        image = pretrained.build_local_resnet_encoder(run.image_init, run.image_size)
    else:
        image = build_image_encoder(config.image, run.norm)
    if run.text_init == "minilm":
        text = pretrained.build_minilm_encoder(config.text.max_len)
    elif run.text_init:
        text = pretrained.build_local_text_encoder(run.text_init, config.text, config.vocab_size)
    else:
        text = build_text_encoder(config.text, config.vocab_size)
    return image, text


def freeze_text_layers(text: TextEncoder, count: int) -> int:
    """Lock the word/position embeddings and the ``count`` lowest BERT layers (-1: all layers).

    Returns the number of layers locked.
    """
    layers = text.bert.encoder.layer
    locked = len(layers) if count < 0 else min(count, len(layers))
    for parameter in text.bert.embeddings.parameters():
        parameter.requires_grad_(False)
    for layer in layers[:locked]:
        for parameter in layer.parameters():
            parameter.requires_grad_(False)
    return locked


def freeze_text_half(text: TextEncoder) -> None:
    """ConVIRT: freeze the word embeddings and the first half of the BERT layers."""
    freeze_text_layers(text, len(text.bert.encoder.layer) // 2)


@dataclass(frozen=True)
class BackboneFactory:
    """Builds a run's image backbone (what the fine-tuning sweep trains), picklable.

    The random initialisation follows the torch seed set by the caller, so sweep seeds give
    different random inits.
    """

    run: RunConfig

    @property
    def description(self) -> dict[str, Any]:
        """Recorded in a sweep's metadata."""
        described = {"recipe": self.run.recipe, "model-size": self.run.model_size, "image-size": self.run.image_size, "tokenizer": self.run.tokenizer}
        if self.run.image_init:  # recorded only when set, so existing sweeps keep their description
            described["image-init"] = self.run.image_init
        return described

    def __call__(self) -> nn.Module:
        backbone = build_model(self.run, seed=torch.initial_seed()).image_backbone()
        # Locks are a pretraining setting (freeze-image-stages): the sweep decides what trains.
        for parameter in backbone.parameters():
            parameter.requires_grad_(True)
        return backbone


def backbone_state(run: RunConfig, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The image-backbone state dict inside a checkpoint of ``run``'s whole model."""
    model = build_model(run)
    model.load_state_dict(dict(weights))
    return {k: v.detach().clone() for k, v in model.image_backbone().state_dict().items()}


def load_bert_state(path: str) -> dict[str, torch.Tensor]:
    """A BERT state dict from a ``save_pretrained`` folder or a ``.safetensors`` file (offline).

    Raises
    ------
    ConfigError
        When ``path`` (run-config key ``bert-init``) holds neither.
    """
    from safetensors.torch import load_file
    from transformers import BertModel

    from ..config import ConfigError, resolve_path

    resolved = resolve_path(path)
    if resolved.is_file() and resolved.suffix == ".safetensors":
        return load_file(str(resolved))
    if resolved.is_dir() and (resolved / "config.json").is_file():
        return BertModel.from_pretrained(str(resolved), local_files_only=True).state_dict()
    raise ConfigError("run_config", "bert-init", "a transformers save_pretrained folder or a .safetensors BERT state dict", path)
