"""Report text: sections (findings, impression, ...) and the text views recipes train on."""

from __future__ import annotations

import re

import torch

__all__ = ["SECTIONS", "split_sections", "split_sentences", "text_view", "TEXT_VIEWS"]

SECTIONS = ("indication", "comparison", "findings", "impression")
TEXT_VIEWS = ("full", "findings", "sentence")

_HEADER = re.compile(r"\b(INDICATION|HISTORY|CLINICAL HISTORY|COMPARISON|FINDINGS|IMPRESSION|CONCLUSION)\s*:", re.IGNORECASE)
_ALIASES = {"history": "indication", "clinical history": "indication", "conclusion": "impression"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sections(text: str) -> dict[str, str]:
    """Split a whole report at its ``HEADER:`` markers.

    Text before the first header, or a report without headers, goes to ``findings``.
    Returns only non-empty sections, keyed by :data:`SECTIONS` names.
    """
    sections: dict[str, str] = {}
    matches = list(_HEADER.finditer(text))
    if not matches:
        return {"findings": text.strip()} if text.strip() else {}
    lead = text[: matches[0].start()].strip()
    if lead:
        sections["findings"] = lead
    for index, match in enumerate(matches):
        name = match.group(1).lower()
        name = _ALIASES.get(name, name)
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        body = text[match.end() : end].strip()
        if body:
            sections[name] = f"{sections[name]} {body}".strip() if name in sections else body
    return sections


def split_sentences(text: str) -> list[str]:
    """Sentences of a text, split after ``.``, ``!`` or ``?``."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def text_view(text: str, view: str, generator: torch.Generator | None = None) -> str:
    """The part of a report a recipe trains on.

    ``full``: the whole report; ``findings``: the findings section (TIMNet; the whole text
    when there is none); ``sentence``: one sentence drawn uniformly from findings +
    impression (ConVIRT's text augmentation).
    """
    if view == "full":
        return text
    sections = split_sections(text)
    if view == "findings":
        return sections.get("findings") or text
    if view == "sentence":
        body = " ".join(sections[s] for s in ("findings", "impression") if s in sections) or text
        sentences = split_sentences(body) or [body]
        index = int(torch.randint(len(sentences), (1,), generator=generator).item())
        return sentences[index]
    raise ValueError(f"unknown text view '{view}', expected one of {TEXT_VIEWS}")
