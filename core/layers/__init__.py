"""Building blocks shared by models (:mod:`fedvlp.core.models`) and objectives (:mod:`fedvlp.core.objectives`).

Both packages import from here and neither imports the other's internals, as timm keeps its
blocks in ``layers/``. This package imports only torch.
"""

from .attention import SAM
from .init import init_bert_style

__all__ = ["SAM", "init_bert_style"]
