"""Weight initialisations shared by models and objectives."""

from __future__ import annotations

from torch import nn

__all__ = ["init_bert_style"]


def init_bert_style(module: nn.Module, std: float = 0.02) -> None:
    """BERT's initialisation: linear and embedding weights ~ N(0, std), biases 0, LayerNorm 1/0."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, std=std)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.Embedding):
            nn.init.normal_(sub.weight, std=std)
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)
