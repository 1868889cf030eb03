"""BERT text encoder built from a ``transformers.BertConfig`` (no hub access)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, BertModel

from ..config import TextEncoderConfig

__all__ = ["TextEncoder", "build_text_encoder"]


class TextEncoder(nn.Module):
    """A BERT encoder returning token states; pooling is left to the objectives.

    Position ids and token type ids are passed explicitly, one row per sample (opacus and
    ``torch.func`` cannot trace BERT's registered buffers, which broadcast one row over the
    batch). The MLM head is a separate module, not tied to the word embeddings (opacus cannot
    compute per-sample gradients of a parameter shared by two layers).
    """

    def __init__(self, config: TextEncoderConfig, vocab_size: int) -> None:
        super().__init__()
        self.config = config
        bert_config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=config.hidden,
            num_hidden_layers=config.layers,
            num_attention_heads=config.heads,
            intermediate_size=config.intermediate,
            max_position_embeddings=config.max_len,
            type_vocab_size=1,
            hidden_dropout_prob=config.dropout,
            attention_probs_dropout_prob=config.dropout,
        )
        self.bert = BertModel(bert_config, add_pooling_layer=False)
        self.out_dim = config.hidden

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` token ids and mask to ``(B, L, hidden)`` token states."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0).expand_as(input_ids)
        # Token types too: BERT's default is a (1, L) buffer broadcast over the batch, which
        # gives opacus' per-sample embedding gradients a batch of one.
        token_types = torch.zeros_like(input_ids)
        out = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, token_type_ids=token_types
        )
        result: torch.Tensor = out.last_hidden_state
        return result


def build_text_encoder(config: TextEncoderConfig, vocab_size: int) -> TextEncoder:
    """Build the text encoder with random weights."""
    return TextEncoder(config, vocab_size)
