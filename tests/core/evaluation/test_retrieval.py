import numpy as np
import pytest
import torch

from fedvlp.core.evaluation.retrieval import label_sets, load_queries, precision_at_k
from fedvlp.core.evaluation.tasks import Task


def test_precision_at_k_on_a_hand_made_similarity_matrix():
    similarity = np.array([[0.9, 0.8, 0.1, 0.5], [0.2, 0.3, 0.9, 0.1]])
    relevant = np.array([[True, False, False, True], [False, True, False, False]])
    p = precision_at_k(similarity, relevant, ks=(1, 2, 3, 10))
    # query 0 ranks 0 (rel), 1, 3 (rel), 2; query 1 ranks 2, 1 (rel), 0, 3
    assert p[1].tolist() == [1.0, 0.0]
    assert p[2].tolist() == [0.5, 0.5]
    assert p[3].tolist() == pytest.approx([2 / 3, 1 / 3])
    assert p[10].tolist() == [0.5, 0.25]  # k clipped to the gallery size 4


def test_image_to_image_precision_excludes_the_query_itself():
    similarity = np.array([[1.0, 0.2, 0.9], [0.2, 1.0, 0.1], [0.9, 0.1, 1.0]])
    relevant = np.array([[True, False, True], [False, True, False], [True, False, True]])
    p = precision_at_k(similarity, relevant, ks=(1,), exclude_self=True)
    assert p[1].tolist() == [1.0, 0.0, 1.0]


def test_label_sets_are_positive_labels_and_rows_with_a_blank_are_not_fully_known():
    tasks = (Task("a"), Task("b"), Task("s", "categorical", ("x", "y")))
    sets, known = label_sets(torch.tensor([[1, 0, 1], [0, 0, 0], [1, float("nan"), 0]], dtype=torch.float32), tasks)
    assert sets[0] == frozenset({"a", "s=y"}) and sets[1] == frozenset({"s=x"})
    assert known.tolist() == [True, True, False]


def test_queries_yaml_accepts_texts_and_lists_and_rejects_empty(tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text("nodule: a nodule\neffusion: [fluid, blunted angle]\n")
    assert load_queries(path) == {"nodule": ["a nodule"], "effusion": ["fluid", "blunted angle"]}
    path.write_text("nodule: ''\n")
    with pytest.raises(ValueError, match="q.yaml: key 'nodule'"):
        load_queries(path)


@pytest.mark.parametrize("recipe, supported", [("mixed", True), ("convirt", True), ("timnet", True), ("uwox", False)])
def test_retrieval_runs_on_the_cnn_family_and_refuses_others_clearly(tiny_run, recipe, supported):
    from fedvlp.core.data.tokenizer import load_run_tokenizer
    from fedvlp.core.evaluation.retrieval import retrieval_metrics, supports_retrieval
    from fedvlp.core.models import build_model

    run = tiny_run.replace(recipe=recipe)
    model = build_model(run)
    assert supports_retrieval(model) is supported
    images = torch.rand(6, 1, 32, 32)
    labels = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1], [0, 0], [1, 0]], dtype=torch.float32)
    queries = {"a": ["fluid"], "b": "a nodule", "none": "normal"}
    args = (model, load_run_tokenizer(run), images, labels, (Task("a"), Task("b")), queries)
    if not supported:
        with pytest.raises(ValueError, match="retrieval needs a ResNet \\+ BERT model"):
            retrieval_metrics(*args)
        return
    rows = {(m, c): v for m, c, v in retrieval_metrics(*args, ks=(1, 50))}
    assert set(rows) == {
        ("i2i_p@1", "mean"),
        ("i2i_p@50", "mean"),
        ("t2i_p@1", "mean"),
        ("t2i_p@50", "mean"),
        *((f"t2i_p@{k}", c) for k in (1, 50) for c in ("a", "b", "none")),
    }
    # k clipped to the gallery (the 5 others for an image query, all 6 for a text query), so
    # whatever the ranking: image queries find 2 of 5 (label a), 1 of 5 (b) or 0 of 5 (none)
    assert rows[("i2i_p@50", "mean")] == pytest.approx((3 * 2 / 5 + 2 * 1 / 5 + 0) / 6)
    assert rows[("t2i_p@50", "a")] == pytest.approx(3 / 6) and rows[("t2i_p@50", "b")] == pytest.approx(2 / 6)
    assert rows[("t2i_p@50", "none")] == pytest.approx(1 / 6)  # the one image without a label
    assert rows[("t2i_p@50", "mean")] == pytest.approx((3 / 6 + 2 / 6 + 1 / 6) / 3)
