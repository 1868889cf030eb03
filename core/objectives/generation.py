"""REFERS' report generation: a transformer decoder writes the report from the study's views.

Teacher forcing: the decoder reads report tokens ``0 .. L-2`` (BERT's ``[CLS]`` serves as
the start token) under causal self-attention and cross-attends to every token (class and
patch tokens) of every real view of the study; it predicts tokens ``1 .. L-1`` (the last
real one is ``[SEP]``, the end token). Padding targets are ignored.

The decoder has its own token embedding and output layer, so the gradient of this loss
reaches the image encoder and this head only: ``encoder_groups = ("image",)``. Reports are
needed as *targets*, which is why the objective still requires the ``text`` modality.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .base import IMAGE, PAIR, TEXT, BatchView, Objective
from .study_contrastive import encode_views

__all__ = ["lm_loss", "teacher_forcing", "GenerationObjective"]


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Mean token cross-entropy of ``(B, L, V)`` logits against ``(B, L)`` targets, skipping ``pad_id``."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=pad_id)


def teacher_forcing(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder inputs (tokens ``0 .. L-2``) and targets (tokens ``1 .. L-1``, ``pad_id`` at padding)."""
    inputs = input_ids[:, :-1].masked_fill(attention_mask[:, :-1] == 0, pad_id)
    targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, pad_id)
    return inputs, targets


class GenerationObjective(Objective):
    """Pre-norm transformer decoder (causal self-attention + cross-attention to view tokens).

    Parameters
    ----------
    visual_dim
        Width of the image encoder's tokens (projected to ``hidden``).
    vocab_size, hidden, layers, heads, feedforward, max_len
        Decoder shape; ``max_len`` bounds the report length in tokens.
    pad_id, bos_id, eos_id
        Padding (ignored as target), start and end tokens (used by :meth:`generate`).
    special_ids
        Tokens never produced by :meth:`generate` (apart from ``eos_id``).
    """

    name: ClassVar[str] = "generation"
    blocked_ids: torch.Tensor  # a buffer
    modalities: ClassVar[frozenset[str]] = frozenset({IMAGE, TEXT, PAIR})
    encoder_groups: ClassVar[tuple[str, ...]] = ("image",)

    def __init__(
        self,
        visual_dim: int,
        vocab_size: int,
        hidden: int,
        layers: int,
        heads: int,
        feedforward: int,
        max_len: int,
        pad_id: int,
        bos_id: int,
        eos_id: int,
        special_ids: Sequence[int] = (),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.visual_proj = nn.Linear(visual_dim, hidden)
        self.token_embed = nn.Embedding(vocab_size, hidden, padding_idx=pad_id)
        self.pos_embed = nn.Embedding(max_len, hidden)
        self.embed_norm = nn.LayerNorm(hidden)
        self.embed_drop = nn.Dropout(dropout)
        layer = nn.TransformerDecoderLayer(
            hidden, heads, feedforward, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(hidden))
        self.output = nn.Linear(hidden, vocab_size)
        self.max_len, self.pad_id, self.bos_id, self.eos_id = max_len, pad_id, bos_id, eos_id
        self.register_buffer(
            "blocked_ids", torch.tensor(sorted(set(special_ids) - {eos_id}), dtype=torch.long), persistent=False
        )
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.token_embed.weight[pad_id].zero_()

    def memory(self, view: BatchView) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3 (1 + N), hidden)`` projected view tokens and the key padding mask of placeholder views."""
        tokens, mask = encode_views(view)
        batch, views, length, _ = tokens.shape
        padding = (~mask).unsqueeze(-1).expand(batch, views, length).reshape(batch, views * length)
        return self.visual_proj(tokens.flatten(1, 2)), padding

    def decode(
        self, tokens: torch.Tensor, memory: torch.Tensor, memory_padding: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, T)`` tokens to ``(B, T, V)`` next-token logits (position ``t`` sees tokens ``<= t``)."""
        length = tokens.shape[1]
        if length > self.max_len:
            raise ValueError(f"report of {length} tokens is longer than the decoder's max_len {self.max_len}")
        positions = torch.arange(length, device=tokens.device)
        x = self.embed_drop(self.embed_norm(self.token_embed(tokens) + self.pos_embed(positions)))
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device, dtype=x.dtype)
        x = self.decoder(x, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=memory_padding)
        result: torch.Tensor = self.output(x)
        return result

    def loss(self, view: BatchView) -> torch.Tensor:
        inputs, targets = teacher_forcing(view.batch["input_ids"], view.batch["attention_mask"], self.pad_id)
        memory, padding = self.memory(view)
        return lm_loss(self.decode(inputs, memory, padding), targets, self.pad_id)

    @torch.no_grad()
    def generate(self, view: BatchView, max_len: int | None = None) -> torch.Tensor:
        """Greedy decoding from ``bos_id``: ``(B, T)`` token ids, ``pad_id`` after each ``eos_id``."""
        max_len = min(max_len or self.max_len, self.max_len)
        memory, padding = self.memory(view)
        tokens = torch.full((memory.shape[0], 1), self.bos_id, dtype=torch.long, device=memory.device)
        done = torch.zeros(memory.shape[0], dtype=torch.bool, device=memory.device)
        for _ in range(max_len - 1):
            logits = self.decode(tokens, memory, padding)[:, -1]
            logits[:, self.blocked_ids] = float("-inf")
            step = logits.argmax(dim=-1).masked_fill(done, self.pad_id)
            tokens = torch.cat([tokens, step.unsqueeze(1)], dim=1)
            done |= step == self.eos_id
            if bool(done.all()):
                break
        return tokens
