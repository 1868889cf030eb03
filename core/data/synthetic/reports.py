"""Radiology-style reports of a :class:`~.cases.Case` and the demo vocabulary read off their grammar."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from .cases import _LUNG_FINDINGS, Case, Finding, _choice

__all__ = ["FINDING_KEYWORDS", "write_report", "demo_vocabulary", "write_vocabulary"]

_VOCAB_FILE = Path(__file__).resolve().parents[1] / "vocab" / "demo.txt"


# Everything a report can say lives in _GRAMMAR, so the demo vocabulary is read off these
# tables instead of being sampled. Slots: {side} {size} {adj} {adv} {zone} {mm} {a_mm} {cm}.
_GRAMMAR: dict[str, Any] = {
    "adjective": {  # severity words per finding
        "cardiomegaly": {"mild": ("mild",), "moderate": ("moderate",), "large": ("severe", "marked")},
        "cardiomegaly_adverb": {"mild": ("mildly",), "moderate": ("moderately",), "large": ("markedly", "severely")},
        "pleural_effusion": {"mild": ("small",), "moderate": ("moderate", "moderate-sized"), "large": ("large",)},
        "pneumothorax": {"mild": ("small", "tiny"), "moderate": ("moderate", "moderate-sized"), "large": ("large",)},
        "consolidation": {
            "mild": ("patchy", "mild"),
            "moderate": ("confluent", "moderate"),
            "large": ("extensive", "dense"),
        },
    },
    "zone": {"upper": ("upper",), "lower": ("lower",)},
    "side": {"left": ("left",), "right": ("right",), "bilateral": ("bilateral",)},
    "positive": {
        "cardiomegaly": (
            "the heart is {adv} enlarged.",
            "the heart is enlarged.",
            "{adj} cardiomegaly.",
            "there is {adj} cardiomegaly.",
            "the cardiac silhouette is {adv} enlarged.",
            "{adj} enlargement of the cardiac silhouette.",
            "heart size is {adv} enlarged.",
        ),
        "pleural_effusion": (
            "{size} {side} pleural effusion.",
            "there is a {size} {side} pleural effusion.",
            "{size} pleural effusion on the {side}.",
            "a {size} {side} pleural effusion is present.",
            "{side} pleural effusion, {size} in size.",
            "opacity at the {side} lung base with a meniscus, consistent with a {size} pleural effusion.",
            "blunting of the {side} costophrenic angle due to a {size} pleural effusion.",
        ),
        "pleural_effusion_bilateral": (
            "{size} bilateral pleural effusions.",
            "there are {size} bilateral pleural effusions.",
            "{size} pleural effusions on both sides.",
            "bilateral pleural effusions, {size} in size.",
            "blunting of both costophrenic angles due to {size} pleural effusions.",
        ),
        "pneumothorax": (
            "{size} {side} pneumothorax.",
            "there is a {size} {side} pneumothorax.",
            "a {size} {side} apical pneumothorax is seen.",
            "{size} pneumothorax on the {side}.",
            "{side} pneumothorax, {size} in size.",
            "a {size} pneumothorax is present at the {side} apex.",
        ),
        "nodule": (
            "there is {a_mm} mm nodule in the {side} {zone} lobe.",
            "{a_mm} mm nodule is seen in the {side} {zone} lung.",
            "{side} {zone} lobe pulmonary nodule measuring {mm} mm.",
            "rounded opacity in the {side} {zone} lung measuring {mm} mm, likely a nodule.",
            "{mm} mm {side} {zone} lobe nodule.",
            "a well-circumscribed nodule measuring {mm} mm projects over the {side} {zone} lung.",
        ),
        "consolidation": (
            "{adj} consolidation in the {side} {zone} lobe.",
            "there is {adj} airspace opacity in the {side} {zone} lung, concerning for pneumonia.",
            "{side} {zone} lobe consolidation.",
            "airspace consolidation is seen in the {side} {zone} lobe.",
            "{adj} opacity in the {side} {zone} lung zone consistent with consolidation.",
        ),
        "consolidation_bilateral": (
            "{adj} bilateral {zone} lobe consolidation.",
            "there is {adj} airspace opacity in both {zone} lobes, concerning for pneumonia.",
            "bilateral {zone} lung consolidation.",
            "airspace consolidation is seen in both {zone} lobes.",
        ),
    },
    "device": {
        "endotracheal_tube": (
            "endotracheal tube in standard position.",
            "the endotracheal tube terminates {cm} cm above the carina.",
            "an endotracheal tube is in place.",
            "ET tube tip is in satisfactory position.",
        ),
        "central_line": (
            "right internal jugular central line with tip in the superior vena cava.",
            "a right-sided central venous catheter terminates in the SVC.",
            "central line in place with tip at the cavoatrial junction.",
        ),
        "pacemaker": (
            "left chest wall pacemaker with lead in the right ventricle.",
            "a cardiac pacemaker is present with lead terminating in the right ventricle.",
            "pacemaker device overlies the left chest wall.",
        ),
        "nasogastric_tube": (
            "nasogastric tube courses below the diaphragm into the stomach.",
            "enteric tube with tip in the stomach.",
            "NG tube in place, tip below the diaphragm.",
        ),
    },
    "negative": {
        "cardiomegaly": (
            "no cardiomegaly.",
            "the heart size is normal.",
            "heart size is within normal limits.",
            "the cardiac silhouette is normal in size.",
            "normal heart size.",
            "the cardiomediastinal silhouette is within normal limits.",
        ),
        "pleural_effusion": (
            "no pleural effusion.",
            "there is no pleural effusion.",
            "no effusion.",
            "the costophrenic angles are sharp.",
        ),
        "pneumothorax": ("no pneumothorax.", "there is no pneumothorax.", "no evidence of pneumothorax."),
        "pleural_effusion+pneumothorax": (
            "no pleural effusion or pneumothorax.",
            "there is no pleural effusion or pneumothorax.",
            "no effusion or pneumothorax.",
        ),
        "nodule": ("no pulmonary nodules.", "no suspicious pulmonary nodule is seen.", "no focal nodule or mass."),
        "consolidation": (
            "no focal consolidation.",
            "there is no focal airspace consolidation.",
            "no consolidation.",
        ),
        "support_devices": ("no lines or tubes.", "no support devices are seen."),
    },
    "lungs_clear": (
        "lungs are clear.",
        "the lungs are clear.",
        "both lungs are clear.",
        "the lungs are well expanded and clear.",
    ),
    "filler": (
        "the osseous structures are intact.",
        "no acute bony abnormality.",
        "visualized osseous structures are unremarkable.",
        "the mediastinal contours are normal.",
        "mild degenerative changes of the thoracic spine.",
    ),
    "impression": {
        "cardiomegaly": ("{adj} cardiomegaly.", "cardiomegaly.", "enlarged heart."),
        "pleural_effusion": ("{size} {side} pleural effusion.", "{side} pleural effusion."),
        "pleural_effusion_bilateral": ("{size} bilateral pleural effusions.", "bilateral pleural effusions."),
        "pneumothorax": ("{size} {side} pneumothorax.", "{side} pneumothorax."),
        "nodule": (
            "{side} {zone} lobe nodule measuring {mm} mm.",
            "{mm} mm {side} lung nodule. recommend CT for further evaluation.",
            "pulmonary nodule in the {side} {zone} lobe.",
        ),
        "consolidation": (
            "{side} {zone} lobe consolidation, concerning for pneumonia.",
            "{side} {zone} lobe pneumonia.",
            "consolidation in the {side} {zone} lobe.",
        ),
        "consolidation_bilateral": (
            "bilateral {zone} lobe consolidation, concerning for pneumonia.",
            "multifocal pneumonia.",
        ),
        "support_devices": ("support devices in standard position.", "lines and tubes as described above."),
        "normal": ("no acute cardiopulmonary process.", "no acute cardiopulmonary abnormality."),
        "normal_no_devices": ("normal chest radiograph.",),
    },
    "sections": ("FINDINGS:", "IMPRESSION:"),
}

# Report words that identify each finding (used by tests and retrieval evaluation).
FINDING_KEYWORDS: dict[str, tuple[str, ...]] = {
    "cardiomegaly": ("cardiomegaly", "enlarged", "enlargement"),
    "pleural_effusion": ("effusion", "effusions"),
    "pneumothorax": ("pneumothorax",),
    "nodule": ("nodule", "nodules"),
    "consolidation": ("consolidation", "airspace", "pneumonia"),
    "support_devices": ("tube", "tubes", "line", "lines", "catheter", "pacemaker", "devices"),
}


def _cap(text: str) -> str:
    """Capitalise the first letter of every sentence in ``text``."""
    return re.sub(r"(^|[.] )([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)


def _a_number(n: int) -> str:
    """``"an 8"`` / ``"an 11"`` / ``"a 9"``."""
    spoken_vowel = str(n).startswith("8") or n in (11, 18)
    return f"{'an' if spoken_vowel else 'a'} {n}"


def _slots(name: str, finding: Finding, rng: np.random.Generator) -> dict[str, str]:
    adjectives = _GRAMMAR["adjective"]
    slots: dict[str, str] = {}
    if finding.side:
        slots["side"] = finding.side
    if finding.zone:
        slots["zone"] = finding.zone
    if finding.size_mm is not None:
        slots["mm"] = str(finding.size_mm)
        slots["a_mm"] = _a_number(finding.size_mm)
    if finding.severity and name in adjectives:
        word = _choice(rng, adjectives[name][finding.severity])
        slots["adj"] = slots["size"] = word
        if name == "cardiomegaly":
            slots["adv"] = _choice(rng, adjectives["cardiomegaly_adverb"][finding.severity])
    return slots


def _positive_key(name: str, finding: Finding) -> str:
    if finding.side == "bilateral" and name in ("pleural_effusion", "consolidation"):
        return f"{name}_bilateral"
    return name


def write_report(case: Case, rng: np.random.Generator) -> str:
    """Write a radiology-style report ``"FINDINGS: ... IMPRESSION: ..."`` for ``case``.

    Positive findings are stated with their attributes in one of several phrasings; some
    absent findings are explicitly negated; "lungs are clear" is only said when there is no
    lung finding. The impression lists the positives or says there is no acute process.

    Parameters
    ----------
    case
        The study to describe.
    rng
        Source of randomness for phrasing and sentence order.

    Returns
    -------
    str
        One line of text.
    """
    g = _GRAMMAR
    f = case.findings
    devices: list[str] = []
    lungs: list[str] = []
    pleura: list[str] = []
    heart: list[str] = []
    other: list[str] = []

    # one wording per finding, reused by the impression
    slots = {name: _slots(name, finding, rng) for name, finding in f.items() if name != "support_devices"}
    if "support_devices" in f:
        for device in f["support_devices"].devices:
            devices.append(_choice(rng, g["device"][device]).format(cm=int(rng.integers(3, 7))))
    elif rng.random() < 0.25:
        devices.append(_choice(rng, g["negative"]["support_devices"]))

    for name, bucket in (
        ("consolidation", lungs),
        ("nodule", lungs),
        ("pleural_effusion", pleura),
        ("pneumothorax", pleura),
        ("cardiomegaly", heart),
    ):
        if name in f:
            finding = f[name]
            template = _choice(rng, g["positive"][_positive_key(name, finding)])
            bucket.append(template.format(**slots[name]))

    # negations of absent findings (a combined sentence for the pleura sometimes)
    absent = [n for n in ("consolidation", "nodule", "pleural_effusion", "pneumothorax", "cardiomegaly") if n not in f]
    if "pleural_effusion" in absent and "pneumothorax" in absent and rng.random() < 0.5:
        pleura.append(_choice(rng, g["negative"]["pleural_effusion+pneumothorax"]))
        absent = [n for n in absent if n not in ("pleural_effusion", "pneumothorax")]
    negation_rate = 0.45 if len(f) < 2 else 0.25
    negated = 0
    for name in absent:
        if rng.random() < negation_rate and negated < 2:
            negated += 1
            bucket = {"consolidation": lungs, "nodule": lungs, "cardiomegaly": heart}.get(name, pleura)
            bucket.append(_choice(rng, g["negative"][name]))
    if not any(n in f for n in _LUNG_FINDINGS) and rng.random() < 0.75:
        lungs.insert(0, _choice(rng, g["lungs_clear"]))
    if rng.random() < (0.4 if len(f) < 2 else 0.15):
        other.append(_choice(rng, g["filler"]))

    for bucket in (lungs, pleura, heart):
        if len(bucket) > 1:
            rng.shuffle(bucket)
    groups = [devices, lungs, pleura, heart]
    if rng.random() < 0.3:  # some radiologists describe the heart before the lungs
        groups = [devices, heart, lungs, pleura]
    sentences = [s for group in groups for s in group] + other

    impression: list[str] = []
    for name in ("pneumothorax", "consolidation", "pleural_effusion", "cardiomegaly", "nodule"):
        if name in f:
            finding = f[name]
            template = _choice(rng, g["impression"][_positive_key(name, finding)])
            impression.append(template.format(**slots[name]))
    if not impression:
        pool = g["impression"]["normal"]
        if "support_devices" not in f:
            pool = pool + g["impression"]["normal_no_devices"]
        impression.append(_choice(rng, pool))
    if "support_devices" in f and rng.random() < 0.5:
        impression.append(_choice(rng, g["impression"]["support_devices"]))

    findings_text = " ".join(_cap(s) for s in sentences) or _cap(_choice(rng, g["filler"]))
    impression_text = " ".join(_cap(s) for s in impression)
    return f"FINDINGS: {findings_text} IMPRESSION: {impression_text}"


# =============================================================================== vocabulary
_PUNCTUATION = (".", ",", ":", ";", "-", "(", ")", "/", "%", "+", "'", '"', "?", "!", "&", "=")


def _grammar_strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for value in node.values():
            yield from _grammar_strings(value)
    elif isinstance(node, (tuple, list)):
        for value in node:
            yield from _grammar_strings(value)


def demo_vocabulary() -> list[str]:
    """The WordPiece vocabulary of the demo world, in file order.

    Special tokens, punctuation, digits, every word the report grammar can emit (read off
    the grammar tables), then single letters and ``##`` continuation pieces as fallbacks, so
    that any lower-case ASCII text tokenizes without ``[UNK]``.

    Returns
    -------
    list[str]
        Unique tokens; line ``i`` of ``core/data/vocab/demo.txt`` is token id ``i``.
    """
    words: set[str] = set()
    for text in _grammar_strings(_GRAMMAR):
        text = re.sub(r"\{[a-z_]+\}", " ", text.lower())
        words.update(re.findall(r"[a-z]+", text))
    words.update(k for keys in FINDING_KEYWORDS.values() for k in keys)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    digits = [str(d) for d in range(10)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_PUNCTUATION, *digits, *sorted(words), *letters]
    tokens += [f"##{c}" for c in letters] + [f"##{d}" for d in digits]
    return list(dict.fromkeys(tokens))


def write_vocabulary(path: str | Path = _VOCAB_FILE) -> Path:
    """Write :func:`demo_vocabulary` one token per line (default: the shipped ``demo.txt``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(demo_vocabulary()) + "\n", encoding="utf-8")
    return path
