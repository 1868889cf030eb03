"""The whole pretraining model: encoders plus one head per active objective."""

from __future__ import annotations

from dataclasses import replace
from typing import cast

import torch
from torch import nn

from ..config import ModelConfig, RunConfig
from ..data.tokenizer import load_run_tokenizer
from ..objectives import ContrastiveObjective, MatchingObjective, MIMObjective, Objective, patch_mask
from .stages import FeatureMapEncoder, lock_stages, locked_modules
from .text import TextEncoder

__all__ = ["FedVLPModel", "model_config_for", "freeze_text_half", "freeze_text_layers"]


class FedVLPModel(nn.Module):
    """``image`` and ``text`` encoders and ``head[<objective>]`` modules.

    The attribute names are the parameter groups of DESIGN.md, so ``state_dict()`` keys
    read ``image.…``, ``text.…`` and ``head.<objective>.…``.
    """

    def __init__(
        self,
        config: ModelConfig,
        objectives: dict[str, Objective],
        image: nn.Module,
        text: TextEncoder,
        locked_image_stages: int = 0,
        image_bn: str = "train",
    ):
        super().__init__()
        self.config = config
        self.image = image
        self.text = text
        self.head = nn.ModuleDict(objectives)
        self.max_text_len = config.text.max_len
        # Lower image stages that never train (run-config freeze-image-stages): their
        # parameters have requires_grad False and train() keeps them in eval mode.
        self.locked_image_stages = lock_stages(self.encoder, locked_image_stages) if locked_image_stages else 0
        self.image_bn = image_bn

    def train(self, mode: bool = True) -> "FedVLPModel":
        """``nn.Module.train``, except that locked image stages stay in eval mode and, under
        ``image-bn = "frozen"``, so does every BatchNorm of the image encoder (its running
        statistics are those of the start, e.g. ImageNet's, not of a site's small batches)."""
        super().train(mode)
        if mode:
            for module in locked_modules(self.encoder, self.locked_image_stages) if self.locked_image_stages else []:
                module.eval()
            if self.image_bn == "frozen":
                for module in self.image.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
        return self

    @property
    def encoder(self) -> FeatureMapEncoder:
        """``image`` as what it is: every image encoder of the family is a :class:`FeatureMapEncoder`."""
        # nn.Module.__getattr__ types submodules as Tensor | Module; the builders pass ResNetEncoder
        # or EfficientNetLiteEncoder, both feature-map encoders.
        return cast(FeatureMapEncoder, self.image)

    def image_backbone(self) -> nn.Module:
        """The module the fine-tuning sweep trains: images in ``[0, 1]`` to pooled features."""
        return self.image

    @property
    def objectives(self) -> list[Objective]:
        """The active objectives, in a fixed order."""
        return [self.head[name] for name in self.head]  # type: ignore[misc]

    def _retrieval_head(self) -> ContrastiveObjective | MatchingObjective | None:
        for name in ("contrastive", "matching"):  # contrastive first: trained for cosine similarity
            if name in self.head:
                return self.head[name]  # type: ignore[return-value]
        return None

    def supports_retrieval(self) -> bool:
        """Whether a contrastive or matching head embeds images and texts into one space."""
        return self._retrieval_head() is not None

    def _require_retrieval(self) -> ContrastiveObjective | MatchingObjective:
        head = self._retrieval_head()
        if head is None:
            raise ValueError("this model has no contrastive or matching head to embed images and texts with")
        return head

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder feature map, average pool, the head's image projection (contrastive first)."""
        return self._require_retrieval().embed_image_map(self.encoder.forward_features(images))

    def embed_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """BERT states pooled as the head pools them, the head's text projection."""
        return self._require_retrieval().embed_text_states(self.text(input_ids, attention_mask), attention_mask)

    def supports_regeneration(self) -> bool:
        """Whether the masked-image (``mim``) head is active."""
        return "mim" in self.head

    def regenerate_masked(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Square patches greyed out (0.5) as in pretraining, the ``mim`` decoder on the encoder's feature map."""
        head = cast(MIMObjective, self.head["mim"])
        mask = patch_mask(images.shape[0], images.shape[-1], head.patch, head.ratio, images.device)
        features = self.encoder.forward_features(images.masked_fill(mask, 0.5))
        prediction = head.decoder(features).float().clamp(0.0, 1.0)
        return mask, prediction


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
