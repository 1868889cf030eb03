"""The ``vit`` family: REFERS' ViT over the views of a study, BERT, study contrastive and report generation heads.

Recipe ``refers``.
"""

from __future__ import annotations

from typing import cast

from ...config import RunConfig
from ...data.tokenizer import SPECIAL_TOKENS, load_run_tokenizer
from .. import pretrained
from ..family import STUDIES, Family
from ..refers import REFERS_OBJECTIVES, REFERSConfig, REFERSModel, build_refers_model

__all__ = ["FAMILY", "build_vit_model"]


def build_vit_model(run: RunConfig) -> REFERSModel:
    """The REFERS model of ``run`` (seed torch first); ``image-init`` may name a timm ViT file of the preset's shape."""
    tokenizer = load_run_tokenizer(run)
    # one token in, one id out (transformers annotates the list form's return type too)
    special = [cast(int, tokenizer.convert_tokens_to_ids(t)) for t in SPECIAL_TOKENS]
    refers = build_refers_model(
        run.model_size,
        run.image_size,
        len(tokenizer),
        special,
        tokenizer.pad_token_id,
        tokenizer.cls_token_id,
        tokenizer.sep_token_id,
        run.tau,
        run.contrastive_lambda,
        run.objective_weights(),
    )
    if run.image_init:  # a timm ViT file of the preset's shape (check_inits allows nothing else)
        pretrained.load_timm_vit(refers.image, run.image_init, run.model_size)
    return refers


FAMILY = Family(
    name="vit",
    build=build_vit_model,
    presets=REFERSConfig.preset,
    objectives=REFERS_OBJECTIVES,
    knobs=frozenset({"tau", "contrastive-lambda"}),
    dataset=STUDIES,
    pools_sources=False,
    # Evaluation embeds through the study contrastive head's projections (patch-token mean, max-pooled report).
    retrieval=True,
    file_image_init=True,
)
