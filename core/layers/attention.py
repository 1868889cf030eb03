"""Attention blocks shared by models and objectives (the ``uwox`` / ``unit`` transformer and its decoder)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SAM"]


class SAM(nn.Module):
    """Multi-head attention block ``SAM(q, k, v)``: ``x = LN(q + MHA(q, k, v))``, ``LN(x + MLP(x))``.

    Post-norm like a BERT layer. ``SAM(q)`` is self-attention. The output has the query's
    length. ``key_mask`` ``(B, Lk)`` marks the keys that take part (1) and padding (0).
    Written with plain ``nn.Linear`` layers (no ``nn.MultiheadAttention``) so that
    per-sample-gradient tools can trace it.
    """

    def __init__(self, dim: int, heads: int, intermediate: int, dropout: float = 0.1) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"SAM width {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.attn_norm = nn.LayerNorm(dim, eps=1e-12)
        self.mlp = nn.Sequential(nn.Linear(dim, intermediate), nn.GELU(), nn.Linear(intermediate, dim))
        self.mlp_norm = nn.LayerNorm(dim, eps=1e-12)
        self.dropout = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        key = query if key is None else key
        value = key if value is None else value
        batch, q_len, dim = query.shape
        k_len, head_dim = key.shape[1], dim // self.heads
        q = self.query(query).view(batch, q_len, self.heads, head_dim).transpose(1, 2)
        k = self.key(key).view(batch, k_len, self.heads, head_dim).transpose(1, 2)
        v = self.value(value).view(batch, k_len, self.heads, head_dim).transpose(1, 2)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :].bool()
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_dropout if self.training else 0.0
        )
        out = self.out(out.transpose(1, 2).reshape(batch, q_len, dim))
        x = self.attn_norm(query + self.dropout(out))
        result: torch.Tensor = self.mlp_norm(x + self.dropout(self.mlp(x)))
        return result
