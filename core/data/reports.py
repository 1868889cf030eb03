"""Report text: de-identification placeholders, sections (findings, impression, ...) and the
text views recipes train on."""

from __future__ import annotations

import re

import torch

__all__ = [
    "DEID_TOKEN",
    "SECTIONS",
    "TEXT_VIEWS",
    "join_sections",
    "normalize_deid",
    "normalize_report",
    "split_sections",
    "split_sentences",
    "text_view",
]

SECTIONS = ("indication", "comparison", "findings", "impression")
TEXT_VIEWS = ("full", "findings", "sentence")

# One token for every de-identified span (MIMIC's ``___``, IU X-ray's ``XXXX``, MIMIC-III style
# ``[** ... **]``). It must stay ONE word piece in every vocabulary a run can use: the shipped
# demo vocabulary (257 tokens, no ``deid``-like word: ``deid`` becomes 4 pieces, ``___`` three
# [UNK]), a vocabulary built by ``fedvlp build-vocab`` (BERT's pre-tokenizer isolates each
# punctuation character, so a punctuation mark is always one piece once it occurs in the corpus)
# and BERT-uncased vocabularies of pretrained text encoders. ``&`` is a single piece in all
# three and is almost absent from chest X-ray reports (3 times in 3,955 IU reports).
DEID_TOKEN = "&"

_DEID = re.compile(r"\[\*\*.*?\*\*\]|_{3,}|X{3,}", re.DOTALL)
# Placeholders separated only by spaces ("XXXX XXXX XXXX") are one redacted span.
_DEID_RUN = re.compile(re.escape(DEID_TOKEN) + r"(?:\s+" + re.escape(DEID_TOKEN) + r")+")
_SPACE = re.compile(r"\s+")

# Headers whose text becomes a section; matched in any case (``Findings:`` and ``FINDINGS:``).
_SECTION_HEADERS = (
    r"REASON FOR EXAMINATION|REASON FOR EXAM|CLINICAL INFORMATION|CLINICAL HISTORY|INDICATIONS?|HISTORY"
    r"|COMPARISONS?|FINDINGS?|IMPRESSIONS?|CONCLUSIONS?"
)
# MIMIC-CXR headers that end the section before them but are not one of SECTIONS; matched in
# upper case only, as MIMIC writes them, so that "technique:" inside a sentence is left alone.
_OTHER_HEADERS = (
    r"EXAMINATION|EXAM|TECHNIQUE|WET READ|NOTIFICATIONS?|RECOMMENDATIONS?(?:\s*\(S\))?|ADDENDUM|PROCEDURE"
    r"|TYPE OF EXAMINATION"
)
_HEADER = re.compile(rf"\b(?:(?i:(?P<section>{_SECTION_HEADERS}))|(?P<other>{_OTHER_HEADERS}))\s*:")
_ALIASES = {
    "indications": "indication",
    "history": "indication",
    "clinical history": "indication",
    "clinical information": "indication",
    "reason for exam": "indication",
    "reason for examination": "indication",
    "comparisons": "comparison",
    "finding": "findings",
    "impressions": "impression",
    "conclusion": "impression",
    "conclusions": "impression",
}
_LEAD_MARKER = re.compile(r"^\s*FINAL REPORT\b", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def normalize_deid(text: str) -> str:
    """Replace every de-identification placeholder by :data:`DEID_TOKEN`.

    ``___`` (MIMIC-CXR), runs of three or more upper-case ``X`` (IU X-ray's ``XXXX``) and
    ``[** ... **]`` spans become one token; placeholders separated only by spaces collapse into
    one. Idempotent, so text that was normalized at import can pass through it again.
    """
    if not text:
        return text
    return _DEID_RUN.sub(DEID_TOKEN, _DEID.sub(DEID_TOKEN, text))


def normalize_report(text: str) -> str:
    """Normalize de-identification placeholders and collapse all whitespace to single spaces."""
    return _SPACE.sub(" ", normalize_deid(text or "")).strip()


def split_sections(text: str) -> dict[str, str]:
    """Split a whole report at its ``HEADER:`` markers.

    ``INDICATION``/``HISTORY``/``REASON FOR EXAM(INATION)``/``CLINICAL INFORMATION``/``CLINICAL
    HISTORY`` go to ``indication``, ``COMPARISON`` to ``comparison``, ``FINDINGS`` to ``findings``,
    ``IMPRESSION``/``CONCLUSION`` to ``impression`` (any case). MIMIC-CXR's other upper-case
    headers (``EXAMINATION:``, ``TECHNIQUE:``, ``WET READ:``, ``NOTIFICATION:``,
    ``RECOMMENDATION(S):``, ...) end the section before them and their text is dropped.
    Text before the first header (after a leading ``FINAL REPORT`` marker), or a report
    without headers, goes to ``findings``. Returns only non-empty sections, keyed by
    :data:`SECTIONS` names.
    """
    text = _LEAD_MARKER.sub("", text)
    sections: dict[str, str] = {}
    matches = list(_HEADER.finditer(text))
    if not matches:
        return {"findings": text.strip()} if text.strip() else {}
    lead = text[: matches[0].start()].strip()
    if lead:
        sections["findings"] = lead
    for index, match in enumerate(matches):
        if match.group("section") is None:
            continue
        name = _SPACE.sub(" ", match.group("section").lower())
        name = _ALIASES.get(name, name)
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        body = text[match.end() : end].strip()
        if body:
            sections[name] = f"{sections[name]} {body}".strip() if name in sections else body
    return sections


def join_sections(sections: dict[str, str]) -> str:
    """A whole report from its sections, ``NAME: text`` in :data:`SECTIONS` order.

    :func:`split_sections` of the result gives the same sections back.
    """
    return " ".join(
        f"{name.upper()}: {sections[name].strip()}" for name in SECTIONS if (sections.get(name) or "").strip()
    )


def split_sentences(text: str) -> list[str]:
    """Sentences of a text, split after ``.``, ``!`` or ``?``."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def text_view(text: str, view: str, generator: torch.Generator | None = None) -> str:
    """The part of a report a recipe trains on, with de-identification placeholders normalized.

    ``full``: the whole report; ``findings``: the findings section (TIMNet; the whole text
    when there is none); ``sentence``: one sentence drawn uniformly from findings +
    impression (ConVIRT's text augmentation). Every view passes through
    :func:`normalize_deid`, so ``___``, ``XXXX`` and ``[** ... **]`` reach the tokenizer as
    :data:`DEID_TOKEN` whether or not the manifest was written by ``fedvlp import``.
    """
    if view not in TEXT_VIEWS:
        raise ValueError(f"unknown text view '{view}', expected one of {TEXT_VIEWS}")
    text = normalize_deid(text)
    if view == "full":
        return text
    sections = split_sections(text)
    if view == "findings":
        return sections.get("findings") or text
    body = " ".join(sections[s] for s in ("findings", "impression") if s in sections) or text
    sentences = split_sentences(body) or [body]
    index = int(torch.randint(len(sentences), (1,), generator=generator).item())
    return sentences[index]
