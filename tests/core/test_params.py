"""Parameter names map to the groups of DESIGN.md."""

from __future__ import annotations

import pytest
import torch

from fedvlp.core.params import filter_groups, group_of, strip_group


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("image.stem.0.weight", "image"),
        ("text.bert.embeddings.word_embeddings.weight", "text"),
        ("joint.layer.0.w", "joint"),
        ("head.mlm.decoder.bias", "head.mlm"),
    ],
)
def test_group_of_reads_the_prefix(name: str, group: str) -> None:
    assert group_of(name) == group


@pytest.mark.parametrize("name", ["bert.weight", "head.mlm", "image", "heads.x.y"])
def test_group_of_rejects_names_outside_the_groups(name: str) -> None:
    with pytest.raises(KeyError, match=name):
        group_of(name)


def test_filter_and_strip_groups() -> None:
    state = {"image.a": torch.zeros(1), "text.b": torch.ones(1), "head.mim.c": torch.ones(2)}
    assert set(filter_groups(state, ["image", "head.mim"])) == {"image.a", "head.mim.c"}
    assert set(strip_group(state, "image")) == {"a"}
