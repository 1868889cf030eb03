"""Top-1 retrieval accuracy on held-out pairs, and the metrics of a model without alignment heads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedvlp.core.alignment import alignment_metrics, top1_accuracy

SIMILARITY = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.1, 0.8], [0.0, 0.3, 0.4]])


def test_top1_accuracy_counts_rows_whose_best_column_is_their_own() -> None:
    # argmax per row: 0 (own, correct), 2 (row 1 wants 1: wrong), 2 (own, correct) -> 2/3
    assert top1_accuracy(SIMILARITY, ["a", "b", "c"]) == pytest.approx(2 / 3)


def test_top1_accuracy_counts_a_column_of_the_same_group_as_correct() -> None:
    # row 1 picks column 2, which shares group "b" with it: 3/3
    assert top1_accuracy(SIMILARITY, ["a", "b", "b"]) == 1.0


def test_top1_accuracy_reads_queries_by_row() -> None:
    # Transposed (text to image): argmax per row of the transpose = per column of SIMILARITY:
    # column 0 -> row 0 (correct), column 1 -> row 2 (wrong), column 2 -> row 1 (wrong) -> 1/3
    assert top1_accuracy(SIMILARITY.t(), ["a", "b", "c"]) == pytest.approx(1 / 3)


def test_alignment_metrics_without_alignment_heads_report_pairs_and_chance() -> None:
    model = nn.Module()
    model.head = nn.ModuleDict({"other": nn.Linear(1, 1)})
    batch = {"input_ids": torch.zeros(4, 3, dtype=torch.long)}
    # 4 pairs: chance of top-1 retrieval 1/4
    assert alignment_metrics(model, batch, ["a", "b", "c", "d"]) == {"align/pairs": 4.0, "align/chance-top1": 0.25}
