"""Building the shared WordPiece vocabulary."""

from __future__ import annotations

from pathlib import Path

from fedvlp.core.data.tokenizer import SPECIAL_TOKENS, build_vocab, load_tokenizer

# Many merges tie on count here, which is where the trainer's own numbering used to decide.
TEXTS = [
    "Wel come to the Tok en izers libr ary.",
    "no acute cardio pulmonary process",
    "heart size is normal",
    "mild basilar atelectasis",
    "small left pleural effusion",
] * 2


def test_the_same_texts_always_give_the_same_vocabulary(tmp_path: Path) -> None:
    built = {
        build_vocab(TEXTS, tmp_path / str(i), vocab_size=120, min_frequency=2).read_text(encoding="utf-8")
        for i in range(30)
    }
    assert len(built) == 1


def test_special_tokens_come_first_and_every_word_tokenizes_without_unknowns(tmp_path: Path) -> None:
    path = build_vocab(TEXTS, tmp_path / "vocab", vocab_size=120, min_frequency=2)
    assert path.read_text(encoding="utf-8").splitlines()[: len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS)
    load_tokenizer.cache_clear()
    tokenizer = load_tokenizer(str(path))
    assert "[UNK]" not in tokenizer.tokenize("Small left pleural effusion. Heart size is normal.")
    assert "".join(t.removeprefix("##") for t in tokenizer.tokenize("atelectasis")) == "atelectasis"
