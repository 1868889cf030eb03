"""The ``uwox`` and ``unit`` families: one transformer shared by image patches (three scales) and report tokens.

``unit`` adds a cross-attention fusion layer before matching. Recipes ``uwox`` and ``unit``.
"""

from __future__ import annotations

from functools import partial
from typing import cast

import torch

from ...config import ConfigError, RunConfig, resolve_path
from ...data.tokenizer import SPECIAL_TOKENS, load_run_tokenizer
from ..family import Family
from ..uwox import UWOX_OBJECTIVES, UWOXConfig, UWOXModel, build_uwox_model

__all__ = ["UWOX", "UNIT", "build_shared_model", "load_bert_state"]


def build_shared_model(run: RunConfig, fusion: bool) -> UWOXModel:
    """The shared-transformer model of ``run`` (seed torch first), started from ``bert-init`` when set."""
    tokenizer = load_run_tokenizer(run)
    config = UWOXConfig.preset(run.model_size, run.image_size, len(tokenizer), fusion=fusion)
    # one token in, one id out (transformers annotates the list form's return type too)
    special = [cast(int, tokenizer.convert_tokens_to_ids(t)) for t in SPECIAL_TOKENS]
    model = build_uwox_model(config, special, tokenizer.mask_token_id, run.mask_ratio, run.objective_weights())
    if run.bert_init:
        model.init_shared_from(load_bert_state(run.bert_init))
    return model


def load_bert_state(path: str) -> dict[str, torch.Tensor]:
    """A BERT state dict from a ``save_pretrained`` folder or a ``.safetensors`` file (offline).

    Raises
    ------
    ConfigError
        When ``path`` (run-config key ``bert-init``) holds neither.
    """
    from safetensors.torch import load_file
    from transformers import BertModel

    resolved = resolve_path(path)
    if resolved.is_file() and resolved.suffix == ".safetensors":
        return load_file(str(resolved))
    if resolved.is_dir() and (resolved / "config.json").is_file():
        return BertModel.from_pretrained(str(resolved), local_files_only=True).state_dict()
    raise ConfigError(
        "run_config", "bert-init", "a transformers save_pretrained folder or a .safetensors BERT state dict", path
    )


def _family(name: str, fusion: bool) -> Family:
    return Family(
        name=name,
        build=partial(build_shared_model, fusion=fusion),
        presets=partial(UWOXConfig.preset, fusion=fusion),
        objectives=UWOX_OBJECTIVES,
        knobs=frozenset({"mask-ratio", "bert-init"}),
        regeneration=True,
        shared_encoder=True,
        init_hint="; the shared transformer starts from a BERT folder with bert-init",
    )


UWOX = _family("uwox", fusion=False)
UNIT = _family("unit", fusion=True)
