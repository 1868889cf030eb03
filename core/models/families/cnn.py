"""The ``cnn`` family: a ResNet (or EfficientNet-Lite0) image encoder, a BERT text encoder, one head per objective.

Recipes ``mixed``, ``convirt`` and ``timnet``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import cast

from ...config import OPT_IN_OBJECTIVES, ModelConfig, RunConfig
from ...data.tokenizer import SPECIAL_TOKENS, load_run_tokenizer
from ...objectives import (
    ContrastiveObjective,
    DistillObjective,
    MatchingObjective,
    MIMObjective,
    MLMObjective,
    Objective,
)
from .. import pretrained
from ..family import Family
from ..image import ResNetEncoder, build_image_encoder
from ..model import FedVLPModel, freeze_text_half, freeze_text_layers, model_config_for
from ..text import TextEncoder, build_text_encoder

__all__ = ["FAMILY", "build_cnn_model"]


def build_cnn_model(run: RunConfig) -> FedVLPModel:
    """The ResNet + BERT model of ``run`` (seed torch first).

    Only objectives whose weight is above zero get a head. ``text-init`` / ``image-init`` start
    the text encoder from all-MiniLM-L6-v2 or a local BERT folder and the image encoder from
    ImageNet EfficientNet-Lite0 or a local torchvision ResNet file
    (:mod:`fedvlp.core.models.pretrained`); the heads stay random and follow the loaded widths.
    """
    tokenizer = load_run_tokenizer(run)
    config = model_config_for(run)
    if run.spec.image_encoder == "resnet50" and run.model_size == "base" and not run.image_init:
        # The paper's encoder (ConVIRT) at the paper's size: a ResNet-50.
        config = replace(config, image=replace(config.image, block="bottleneck", layers=(3, 4, 6, 3)))
    image, text = _build_encoders(run, config)
    weights = run.objective_weights()
    # one token in, one id out (transformers annotates the list form's return type too)
    special_ids = [cast(int, tokenizer.convert_tokens_to_ids(t)) for t in SPECIAL_TOKENS]
    candidates: dict[str, Callable[[], Objective]] = {
        "contrastive": lambda: ContrastiveObjective(
            image.out_dim, text.out_dim, config.embed_dim, run.tau, run.contrastive_lambda
        ),
        "matching": lambda: MatchingObjective(image.out_dim, text.out_dim, config.embed_dim),
        "mlm": lambda: MLMObjective(
            text.out_dim,
            config.vocab_size,
            special_ids,
            tokenizer.mask_token_id,
            run.mask_ratio,
            tied=run.mlm_decoder == "tied",
        ),
        "mim": lambda: MIMObjective(image.out_dim, image.stride, config.image.in_chans, run.mim_patch, run.mask_ratio),
        "distill": lambda: DistillObjective(image.out_dim, config.embed_dim),
    }
    # The four original heads are always built, in this order, so that every recipe draws the
    # same random initialisation as before; opt-in heads only when their objective is on.
    built = {
        name: build()
        for name, build in candidates.items()
        if name not in OPT_IN_OBJECTIVES or weights.get(name, 0.0) > 0
    }
    objectives = {name: objective for name, objective in built.items() if weights.get(name, 0.0) > 0}
    if run.spec.freeze_text == "half":
        freeze_text_half(text)
    if run.freeze_text_layers:
        freeze_text_layers(text, run.freeze_text_layers)
    return FedVLPModel(
        config, objectives, image, text, locked_image_stages=run.freeze_image_stages, image_bn=run.image_bn
    )


def _build_encoders(
    run: RunConfig, config: ModelConfig
) -> tuple[ResNetEncoder | pretrained.EfficientNetLiteEncoder, TextEncoder]:
    """The encoders: random from ``config``, or general-pretrained per run config."""
    if run.image_init == "efficientnet-lite0":
        image: ResNetEncoder | pretrained.EfficientNetLiteEncoder = pretrained.build_efficientnet_lite0_encoder(
            run.image_size
        )
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


FAMILY = Family(
    name="cnn",
    build=build_cnn_model,
    presets=ModelConfig.preset,
    objectives=("contrastive", "matching", "mlm", "mim", "distill"),
    knobs=frozenset(
        {
            "tau",
            "contrastive-lambda",
            "mask-ratio",
            "mim-patch",
            "mlm-decoder",
            "norm",
            "weight-anchor",
            "image-bn",
            "freeze-image-stages",
            "freeze-text-layers",
            "channels-last",
        }
    ),
    per_sample_dp=True,
    retrieval=True,
    regeneration=True,
    general_inits=True,
)
