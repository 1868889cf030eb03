"""WordPiece tokenizers, built offline from a vocabulary file.

``"demo"`` is the vocabulary that ships with fedvlp for the synthetic demo world
(``core/data/vocab/demo.txt``); any other value is a folder or ``vocab.txt`` path.
Every site of a federation must use the same vocabulary, so it is part of the run config,
never derived from one site's data.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from transformers import BertTokenizerFast

from ..config import ConfigError, resolve_path

__all__ = ["load_tokenizer", "vocab_path", "SPECIAL_TOKENS"]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_BUILTIN = Path(__file__).resolve().parent / "vocab"


def vocab_path(name: str) -> Path:
    """The ``vocab.txt`` behind a tokenizer name (``"demo"``, a folder, or a file)."""
    if (_BUILTIN / f"{name}.txt").is_file():
        return _BUILTIN / f"{name}.txt"
    path = resolve_path(name)
    if path.is_dir():
        path = path / "vocab.txt"
    if not path.is_file():
        raise ConfigError("run_config", "tokenizer", "'demo' or a path to a WordPiece vocab.txt (or its folder)", name)
    return path


@lru_cache(maxsize=8)
def load_tokenizer(name: str = "demo") -> BertTokenizerFast:
    """Load a lower-casing WordPiece tokenizer.

    ``BertTokenizerFast(vocab=dict)`` is used on purpose: in transformers 5 the
    ``vocab_file=`` argument is silently ignored and every token becomes ``[UNK]``.
    """
    path = vocab_path(name)
    tokens = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()]
    tokens = [t for t in tokens if t]
    missing = [t for t in SPECIAL_TOKENS if t not in tokens]
    if missing:
        raise ConfigError(str(path), "(vocabulary)", f"the special tokens {list(SPECIAL_TOKENS)}; missing {missing}")
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    return BertTokenizerFast(vocab=vocab, do_lower_case=True)
