import pandas as pd
import pytest
import torch

from fedvlp.core.evaluation import RESULT_COLUMNS, SweepConfig, build_encoder, load_results, run_sweep
from fedvlp.core.evaluation import sweep as sweep_module

FAST = dict(
    fractions=(0.2, 1.0),
    seeds=(0,),
    batch_size=16,
    ft_min_steps=8,
    ft_epochs=1,
    ft_max_steps=8,
    ft_eval_every=4,
    probe_max_iter=50,
    probe_weight_decays=(1.0, 1e-2),
    num_threads=1,
)


@pytest.fixture(scope="module")
def pretrained(tiny_config):
    return build_encoder(tiny_config, None, seed=99).state_dict()


@pytest.fixture
def counted(monkeypatch):
    calls = []
    original = sweep_module._run_cell

    def counting(ctx, init, protocol, fraction, seed):
        calls.append((init, protocol, fraction, seed))
        return original(ctx, init, protocol, fraction, seed)

    monkeypatch.setattr(sweep_module, "_run_cell", counting)
    return calls


def test_end_to_end_writes_results_report_and_plot(tmp_path, labeled, tiny_config, pretrained):
    df = run_sweep(
        {"random": None, "pretrained": pretrained}, tiny_config, labeled, tmp_path, SweepConfig(**FAST), progress=False
    )
    on_disk = load_results(tmp_path / "results.csv")
    assert list(pd.read_csv(tmp_path / "results.csv").columns) == RESULT_COLUMNS
    cells = on_disk[["init", "protocol", "label_fraction", "seed"]].drop_duplicates()
    assert len(cells) == 2 * 2 * 2 * 1 and len(df) == len(on_disk)
    auc = on_disk[on_disk.metric == "auc"]
    assert set(auc["class"]) == {"square", "bar", "mean"}
    assert auc["value"].between(0, 1).all()
    n_train = on_disk[on_disk.metric == "n_train"].groupby("label_fraction")["value"].first()
    assert n_train[1.0] == len(labeled.indices("train")) and n_train[0.2] < n_train[1.0]
    assert "| init | protocol | 20% | 100% |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "auc_vs_labels.png").read_bytes()[:4] == b"\x89PNG"


def test_a_pretrained_state_dict_and_a_random_init_give_different_probe_features(
    tmp_path, labeled, tiny_config, pretrained
):
    config = SweepConfig(**{**FAST, "protocols": ("linear",), "fractions": (1.0,)})
    df = run_sweep({"random": None, "pretrained": pretrained}, tiny_config, labeled, tmp_path, config, progress=False)
    mean = df[(df.metric == "auc") & (df["class"] == "mean")].set_index("init")["value"]
    assert set(mean.index) == {"random", "pretrained"} and mean["random"] != mean["pretrained"]


def test_resuming_skips_cells_already_in_results(tmp_path, labeled, tiny_config, counted):
    config = SweepConfig(**{**FAST, "fractions": (0.5,)})
    first = run_sweep({"random": None}, tiny_config, labeled, tmp_path, config, progress=False)
    assert len(counted) == 2
    counted.clear()
    second = run_sweep(
        {"random": None},
        tiny_config,
        labeled,
        tmp_path,
        SweepConfig(**{**FAST, "fractions": (0.5,), "seeds": (0, 1)}),
        progress=False,
    )
    assert sorted({c[3] for c in counted}) == [1] and len(counted) == 2
    seed0 = second[second.seed == 0].reset_index(drop=True)
    pd.testing.assert_frame_equal(seed0, first.reset_index(drop=True), check_dtype=False)


def test_resuming_with_other_training_settings_is_refused(tmp_path, labeled, tiny_config):
    config = SweepConfig(**{**FAST, "protocols": ("linear",), "fractions": (1.0,)})
    run_sweep({"random": None}, tiny_config, labeled, tmp_path, config, progress=False)
    with pytest.raises(ValueError, match="probe_max_iter"):
        run_sweep(
            {"random": None},
            tiny_config,
            labeled,
            tmp_path,
            SweepConfig(**{**FAST, "protocols": ("linear",), "fractions": (1.0,), "probe_max_iter": 10}),
            progress=False,
        )


def test_a_state_dict_that_does_not_fit_fails_before_any_run(tmp_path, labeled, tiny_config, pretrained, counted):
    broken = {f"image_encoder.{k}": v for k, v in pretrained.items()}
    with pytest.raises(ValueError, match="init 'fed'"):
        run_sweep({"fed": broken}, tiny_config, labeled, tmp_path, SweepConfig(**FAST), progress=False)
    assert counted == []


def test_the_sweep_restores_the_callers_thread_count(tmp_path, labeled, tiny_config):
    import torch

    torch.set_num_threads(1)
    config = SweepConfig(**{**FAST, "protocols": ("linear",), "fractions": (1.0,), "num_threads": 2})
    run_sweep({"random": None}, tiny_config, labeled, tmp_path, config, progress=False)
    assert torch.get_num_threads() == 1


def test_results_from_before_a_new_knob_existed_are_still_resumable(tmp_path, labeled, tiny_config, counted):
    import json

    config = SweepConfig(**{**FAST, "protocols": ("linear",), "fractions": (1.0,)})
    run_sweep({"random": None}, tiny_config, labeled, tmp_path, config, progress=False)
    meta = json.loads((tmp_path / "sweep_meta.json").read_text())
    del meta["settings"]["ft_precision"]  # as written by an older version
    (tmp_path / "sweep_meta.json").write_text(json.dumps(meta))
    counted.clear()
    run_sweep({"random": None}, tiny_config, labeled, tmp_path, config, progress=False)
    assert counted == []


def test_ap_is_recorded_per_class_and_a_multi_label_task_has_no_accuracy_or_f1(tmp_path, labeled, tiny_config):
    config = SweepConfig(**{**FAST, "protocols": ("linear",), "fractions": (1.0,)})
    df = run_sweep({"random": None}, tiny_config, labeled, tmp_path, config, progress=False)
    ap = df[df.metric == "ap"]
    assert set(ap["class"]) == {"square", "bar", "mean"} and ap["value"].between(0, 1).all()
    assert not df.metric.isin(["accuracy", "f1"]).any()
    assert "Mean average precision" in (tmp_path / "report.md").read_text()


def test_a_binary_task_records_accuracy_and_f1(tmp_path, manifest, tiny_config):
    from fedvlp.core.evaluation import load_labeled

    binary = load_labeled(manifest, ["square"], 32)
    config = SweepConfig(**{**FAST, "protocols": ("linear",), "fractions": (1.0,)})
    df = run_sweep({"random": None}, tiny_config, binary, tmp_path, config, progress=False)
    scalar = df[df.metric.isin(["accuracy", "f1"])]
    assert sorted(scalar.metric) == ["accuracy", "f1"] and set(scalar["class"]) == {"mean"}
    assert scalar["value"].between(0, 1).all()
    assert set(df.loc[df.metric == "ap", "class"]) == {"square", "mean"}


def test_binary_metrics_are_computed_from_the_test_logits(tmp_path, manifest, tiny_config, monkeypatch):
    import numpy as np
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score

    from fedvlp.core.evaluation import ProbeResult, load_labeled

    binary = load_labeled(manifest, ["square"], 32)
    y = binary.labels[binary.indices("test")].numpy()[:, 0]
    logits = np.where(y == 1, 1.0, -1.0) * np.where(np.arange(len(y)) % 3 == 0, -1.0, 1.0)  # every third one wrong
    monkeypatch.setattr(
        sweep_module,
        "linear_probe",
        lambda *a, **k: ProbeResult(test_scores=logits[:, None], val_auc=0.5, weight_decay=1.0),
    )
    config = SweepConfig(**{**FAST, "protocols": ("linear",), "fractions": (1.0,)})
    df = run_sweep({"random": None}, tiny_config, binary, tmp_path, config, progress=False)
    value = df.set_index(["metric", "class"])["value"]
    pred = (logits >= 0).astype(int)
    assert value["accuracy", "mean"] == pytest.approx(accuracy_score(y, pred))
    assert value["f1", "mean"] == pytest.approx(f1_score(y, pred))
    assert value["ap", "square"] == pytest.approx(average_precision_score(y, logits))


def test_a_cell_file_present_is_skipped_and_the_results_are_identical(tmp_path, labeled, tiny_config, counted):
    config = SweepConfig(**{**FAST, "fractions": (0.5,)})
    full = run_sweep({"random": None}, tiny_config, labeled, tmp_path / "full", config, progress=False)
    # a half-finished sweep: one cell file written, results.csv not yet (killed in between)
    half = tmp_path / "half"
    run_sweep(
        {"random": None},
        tiny_config,
        labeled,
        half,
        SweepConfig(**{**FAST, "fractions": (0.5,), "protocols": ("linear",)}),
        progress=False,
    )
    (half / "results.csv").unlink()
    assert sweep_module.cell_file(half, "random", "linear", 0.5, 0).is_file()
    counted.clear()
    resumed = run_sweep({"random": None}, tiny_config, labeled, half, config, progress=False)
    assert counted == [("random", "finetune", 0.5, 0)]
    pd.testing.assert_frame_equal(resumed, full, check_dtype=False)


def test_a_categorical_task_trains_a_softmax_head_in_both_protocols(tmp_path, tiny_config):
    import numpy as np

    from fedvlp.core.evaluation import load_labeled

    from .conftest import write_manifest

    manifest = write_manifest(tmp_path / "data", corrupt=False, bad_label=False)
    frame = pd.read_csv(manifest)
    frame["shape"] = np.where(frame["square"] == 1, "square", np.where(frame["bar"] == 1, "bar", ""))  # blank: neither
    frame.to_csv(manifest, index=False)
    labeled = load_labeled(manifest, ["shape", "bar"], 32)
    df = run_sweep(
        {"random": None},
        tiny_config,
        labeled,
        tmp_path / "out",
        SweepConfig(**{**FAST, "fractions": (1.0,)}),
        progress=False,
    )
    auc = df[df.metric == "auc"]
    assert {"shape", "shape=bar", "shape=square", "bar", "mean"} <= set(auc["class"])
    assert set(df.loc[df.metric == "accuracy", "class"]) == {"shape"}
    assert auc["value"].dropna().between(0, 1).all()


@pytest.mark.slow
def test_two_jobs_give_the_same_results_as_one(tmp_path, labeled, tiny_config, pretrained):
    config = SweepConfig(**{**FAST, "fractions": (0.5,), "num_threads": 1})
    inits = {"random": None, "pretrained": pretrained}
    one = run_sweep(inits, tiny_config, labeled, tmp_path / "one", config, progress=False, jobs=1)
    two = run_sweep(inits, tiny_config, labeled, tmp_path / "two", config, progress=False, jobs=2)
    pd.testing.assert_frame_equal(one, two)
    on_disk = [
        load_results(tmp_path / name / "results.csv").sort_values(RESULT_COLUMNS[:6]).reset_index(drop=True)
        for name in ("one", "two")
    ]  # results.csv is in completion order
    pd.testing.assert_frame_equal(*on_disk)


def test_results_made_before_head_warm_up_existed_are_not_mixed_with_new_ones(tmp_path, labeled, tiny_config):
    import json

    config = SweepConfig(**{**FAST, "protocols": ("linear",), "fractions": (1.0,)})
    run_sweep({"random": None}, tiny_config, labeled, tmp_path, config, progress=False)
    meta = json.loads((tmp_path / "sweep_meta.json").read_text())
    del meta["settings"]["ft_warmup_fraction"], meta["settings"]["ft_plateau_patience"]  # an older version's folder
    (tmp_path / "sweep_meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="ft_warmup_fraction"):
        run_sweep({"random": None}, tiny_config, labeled, tmp_path, config, progress=False)
    legacy = SweepConfig(
        **{
            **FAST,
            "protocols": ("linear",),
            "fractions": (1.0,),
            "ft_warmup_fraction": 0.0,
            "ft_plateau_patience": None,
        }
    )
    run_sweep({"random": None}, tiny_config, labeled, tmp_path, legacy, progress=False)  # the old protocol resumes


def test_fine_tuning_the_top_stage_runs_on_cached_lower_stage_outputs(tmp_path, labeled, tiny_config, pretrained):
    from fedvlp.core.evaluation import Init
    from fedvlp.core.models.stages import num_stages

    config = SweepConfig(**{**FAST, "fractions": (1.0,), "protocols": ("finetune",)}, ft_trainable_stages=1)
    ctx = sweep_module._Context(
        {labeled.image_size: labeled}, {"pre": Init(tiny_config, pretrained)}, config, labeled.image_size
    )
    upper, inputs, cached = ctx.finetune_inputs("pre", 0)
    encoder = build_encoder(tiny_config, pretrained, 0).eval()
    assert cached and upper.start == num_stages(encoder) - 1
    upper.eval()
    assert torch.allclose(upper(inputs[:4]), encoder(labeled.images[:4]), atol=1e-5)  # same features, cheaper input
    rows = run_sweep({"pre": pretrained}, tiny_config, labeled, tmp_path, config, progress=False)
    auc = rows[(rows.metric == "auc") & (rows["class"] == "mean")]
    assert len(auc) == 1 and 0.0 <= float(auc["value"].iloc[0]) <= 1.0
    trainable = {n for n, p in upper.named_parameters() if p.requires_grad}
    assert trainable and trainable < {n for n, _ in upper.named_parameters()}  # only the top stage trains


def test_an_init_at_another_image_size_needs_a_labelled_set_of_that_size(tmp_path, labeled, tiny_config, pretrained):
    from fedvlp.core.evaluation import Init

    with pytest.raises(ValueError, match="evaluated at 64 px but no labelled set of that size"):
        run_sweep(
            {"big": Init(tiny_config, pretrained, image_size=64)},
            tiny_config,
            labeled,
            tmp_path,
            SweepConfig(**FAST),
            progress=False,
        )


def test_a_probe_head_makes_a_fine_tuning_cell_start_from_the_linear_cell(tmp_path, labeled, tiny_config, pretrained):
    # With learning rates 0 the fine-tuning cell keeps its starting head: its test AUC is the linear cell's.
    config = SweepConfig(
        **{**FAST, "fractions": (1.0,), "protocols": ("linear", "finetune")},
        ft_head_init="probe",
        ft_lr_head=0.0,
        ft_lr_encoder=0.0,
        ft_dropout=0.0,
    )
    rows = run_sweep({"pre": pretrained}, tiny_config, labeled, tmp_path, config, progress=False)
    auc = rows[(rows.metric == "auc")].pivot_table(index="class", columns="protocol", values="value")
    assert auc.loc["square", "linear"] > 0.8  # the fixture is learnable: the check below compares real scores
    assert auc["finetune"].tolist() == pytest.approx(auc["linear"].tolist(), abs=1e-6)


def test_an_unknown_head_init_names_the_knob_and_the_choices():
    with pytest.raises(ValueError, match=r"ft_head_init must be one of \('random', 'probe'\), got 'linear'"):
        SweepConfig(ft_head_init="linear").validate()
