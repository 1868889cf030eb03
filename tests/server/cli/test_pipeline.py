"""The study of a federation folder: federation.toml, its runs, and one real quick study end to end."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from fedvlp.core.config import ConfigError, RunConfig
from fedvlp.core.evaluation import SweepConfig
from fedvlp.server.cli.pipeline import (
    FEDERATION_FILE,
    load_federation,
    pretraining_runs,
    run_study,
    study_sweep_config,
    sweep_in_background,
)
from fedvlp.server.cli.sweep_cli import InitSpec, sweep_and_report
from tests.conftest import DEMO_SITES

EVALUATION = """
[evaluation]
labeled = "{labeled}"
label-columns = ["label_cardiomegaly", "label_pleural_effusion"]
patient-column = "patient_id"
"""


def _federation(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "sites"
    shutil.copytree(DEMO_SITES, folder)
    (folder / FEDERATION_FILE).write_text(text)
    return folder


def _general_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: str, installed: bool = True) -> Path:
    """A federation whose study runs only general-pretrained+federated, with ``[general-pretrained]`` ``settings``."""
    monkeypatch.setattr("fedvlp.server.cli.pipeline.pretrained_installed", lambda: installed)
    return _federation(
        tmp_path,
        f'[general-pretrained]\nimage-init = "efficientnet-lite0"\n{settings}'
        '[study]\nruns = ["general-pretrained+federated"]\n',
    )


def test_a_folder_without_federation_file_is_an_empty_study(tmp_path: Path) -> None:
    folder = tmp_path / "sites"
    shutil.copytree(DEMO_SITES, folder)
    federation = load_federation(folder)
    assert (federation.run, federation.vocab_sites, federation.evaluation) == ({}, (), {})


def test_an_unknown_section_names_the_file_and_section(tmp_path: Path) -> None:
    folder = _federation(tmp_path, "[runs]\nrounds = 2\n")
    with pytest.raises(ConfigError, match=r"federation\.toml: key 'runs': expected one of the sections"):
        load_federation(folder)


def test_a_bad_run_value_names_the_section(tmp_path: Path) -> None:
    folder = _federation(tmp_path, "[run]\nrounds = 0\n")
    with pytest.raises(ConfigError, match=r"federation\.toml \[run\]: key 'rounds'"):
        load_federation(folder)


def test_evaluation_needs_label_columns(tmp_path: Path) -> None:
    folder = _federation(tmp_path, '[evaluation]\nlabeled = "x.csv"\n')
    with pytest.raises(ConfigError, match="label-columns"):
        load_federation(folder)


def test_a_public_vocabulary_site_must_be_a_site_of_the_folder(tmp_path: Path) -> None:
    folder = _federation(tmp_path, '[vocab]\npublic-sites = ["elsewhere.yaml"]\n')
    with pytest.raises(ConfigError, match="vocab.public-sites"):
        load_federation(folder)


def test_runs_share_the_vocabulary_and_baselines_cover_every_site_with_images(tmp_path: Path) -> None:
    folder = _federation(tmp_path, '[run]\nrounds = 3\n[vocab]\npublic-sites = ["hospital_c.yaml"]\n')
    runs = pretraining_runs(load_federation(folder), tmp_path / "out", baselines=True)
    assert sorted(runs) == [
        "central",
        "federated",
        "local-hospital_a",
        "local-hospital_b",
    ]  # hospital_c holds reports only
    assert {run.tokenizer for run in runs.values()} == {str(tmp_path / "out" / "vocab")}
    assert {run.rounds for run in runs.values()} == {3}
    assert runs["local-hospital_a"].out_dir == str(tmp_path / "out" / "local-hospital_a")
    assert list(pretraining_runs(load_federation(folder), tmp_path / "out", baselines=["local"])) == [
        "federated",
        "local-hospital_a",
        "local-hospital_b",
    ]


def test_baselines_of_the_general_pretrained_run_start_from_the_packaged_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _general_study(tmp_path, monkeypatch, "image-lr-scale = 0.1\n")
    runs = pretraining_runs(load_federation(folder), tmp_path / "out", baselines=True)
    assert list(runs) == [
        "general-pretrained+federated",
        "general-pretrained+central",
        "general-pretrained+local-hospital_a",
        "general-pretrained+local-hospital_b",
    ]
    assert {(run.image_init, run.image_lr_scale) for run in runs.values()} == {("efficientnet-lite0", 0.1)}
    local = runs["general-pretrained+local-hospital_b"]
    assert local.out_dir == str(tmp_path / "out" / "general-pretrained+local-hospital_b")
    assert local.replace(out_dir="") == runs["general-pretrained+federated"].replace(out_dir="")


def test_a_general_pretrained_local_baseline_pretrains_its_site_alone(
    demo_env: Path, tiny_run: RunConfig, tmp_path: Path
) -> None:
    from fedvlp.core.checkpoint import load_latest
    from fedvlp.server.cli.pipeline import pretrain

    run = tiny_run.replace(rounds=1, local_steps=2, out_dir=str(tmp_path / "general-pretrained+local-hospital_a"))
    pretrain("general-pretrained+local-hospital_a", run)
    state = load_latest(tmp_path / "general-pretrained+local-hospital_a" / "checkpoints").state
    assert (state["mode"], state["sites"], state["steps_per_round"]) == ("local", ["hospital_a"], 2)


def test_an_unknown_baseline_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="baselines must be among"):
        pretraining_runs(load_federation(_federation(tmp_path, "")), tmp_path / "out", baselines=["pooled"])


def test_study_runs_pick_the_pretraining_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _general_study(tmp_path, monkeypatch, "freeze-image-stages = 5\n")
    runs = pretraining_runs(load_federation(folder), tmp_path / "out")
    assert list(runs) == ["general-pretrained+federated"]
    assert runs["general-pretrained+federated"].freeze_image_stages == 5


def test_without_the_pretrained_weights_the_study_falls_back_to_the_run_from_random(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _general_study(tmp_path, monkeypatch, "", installed=False)
    assert list(pretraining_runs(load_federation(folder), tmp_path / "out")) == ["federated"]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[study]\nruns = ["central"]\n', "study.runs"),
        ("[study]\nrunz = []\n", "study.runz"),
        (
            '[evaluation]\nlabeled = "x.csv"\nlabel-columns = ["y"]\njoin-federation = "test"\n',
            "evaluation.join-federation",
        ),
        (
            '[evaluation]\nlabeled = "x.csv"\nlabel-columns = ["y"]\nfinetune-stages = -1\n',
            "evaluation.finetune-stages",
        ),
        (
            '[evaluation]\nlabeled = "x.csv"\nlabel-columns = ["y"]\nfinetune-head = "linear"\n',
            "evaluation.finetune-head",
        ),
    ],
)
def test_bad_study_keys_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        load_federation(_federation(tmp_path, text))


def test_the_studys_fine_tuning_knobs_reach_its_sweep_and_the_command_line_wins(tmp_path: Path) -> None:
    folder = _federation(
        tmp_path,
        '[evaluation]\nlabeled = "x.csv"\nlabel-columns = ["y"]\nfinetune-stages = 2\nfinetune-head = "probe"\n'
        "seeds = 5\nfractions = [0.01, 1.0]\n",
    )
    config = study_sweep_config(load_federation(folder), seeds=2)
    assert (config.ft_trainable_stages, config.ft_head_init) == (2, "probe")
    assert (config.seeds, config.fractions, config.protocols) == ((0, 1), (0.01, 1.0), ("linear", "finetune"))
    plain = study_sweep_config(
        load_federation(_federation(tmp_path / "b", '[evaluation]\nlabeled = "x.csv"\nlabel-columns = ["y"]\n'))
    )
    assert (plain.ft_trainable_stages, plain.ft_head_init, plain.seeds) == (0, "random", (0, 1, 2))


def test_the_labelled_hospital_joins_with_its_train_images_only(
    tmp_path: Path, world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedvlp.core.config import list_site_files, load_site
    from fedvlp.core.data.manifest import load_source_rows
    from fedvlp.core.evaluation.data import split_manifest
    from fedvlp.server.cli.pipeline import joined_sites

    monkeypatch.setenv("FEDVLP_DEMO_DATA", str(world))
    labeled = world / "labeled" / "manifest.csv"
    federation = load_federation(_federation(tmp_path, EVALUATION.format(labeled=labeled)))
    split = split_manifest(labeled, tmp_path / "split", by="patient_id", fractions=(0.6, 0.2, 0.2))
    folder = joined_sites(federation, tmp_path / "split", tmp_path / "out")
    monkeypatch.delenv("FEDVLP_DEMO_DATA")  # the joined folder holds absolute paths
    names = [path.name for path in list_site_files(folder)]
    assert names == sorted([path.name for path in list_site_files(federation.folder)] + ["labeled_train.yaml"])
    hospital = load_site(folder / "labeled_train.yaml")
    assert hospital.modalities == {"image"}
    assert hospital.sources[0].image_roots == (labeled.parent.resolve(),)  # the split CSV's images live there
    rows = load_source_rows(hospital.sources[0])
    assert not rows.skipped
    train = pd.read_csv(split["train"])
    assert sorted(rows.ids) == sorted(train["id"].astype(str))
    assert len(load_source_rows(load_site(folder / "hospital_a.yaml").sources[0]).ids) > 0


@pytest.mark.slow
def test_a_quick_study_pretrains_splits_by_patient_and_sweeps(
    tmp_path: Path, world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDVLP_DEMO_DATA", str(world))
    folder = _federation(
        tmp_path,
        '[vocab]\npublic-sites = ["hospital_c.yaml"]\nsize = 500\n'
        + EVALUATION.format(labeled=world / "labeled" / "manifest.csv"),
    )
    out = tmp_path / "study"
    summary = run_study(folder, out, quick=True)
    assert summary["runs"]["federated"]["rounds"] == 2
    assert "Traceback" not in (out / "sweep" / "early-cells.log").read_text()
    assert (out / "vocab" / "vocab.txt").is_file()
    splits = {name: pd.read_csv(out / "split" / f"{name}.csv") for name in ("train", "val", "test")}
    patients = [set(frame["patient_id"]) for frame in splits.values()]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    results = pd.read_csv(out / "sweep" / "results.csv")
    auc = results[(results["metric"] == "auc") & (results["class"] == "mean") & (results["protocol"] == "linear")]
    assert sorted(set(auc["init"])) == ["federated", "random"]
    assert sorted(set(auc["label_fraction"])) == [0.1, 1.0]
    assert auc["value"].between(0.0, 1.0).all()


@pytest.mark.slow
def test_cells_of_the_background_sweep_are_reused_and_equal_a_sequential_sweep(tmp_path: Path, world: Path) -> None:
    labeled = world / "labeled" / "manifest.csv"
    columns = ["label_cardiomegaly", "label_pleural_effusion"]
    config = SweepConfig(fractions=(0.5, 1.0), seeds=(0,), protocols=("linear",), num_threads=1)
    random_init = [InitSpec("random", "random")]
    early = sweep_in_background(
        tmp_path / "early.log",
        random_init,
        tmp_path / "early",
        labeled,
        columns,
        config,
        patient_column="patient_id",
        extras=(),
    )
    early.join(timeout=600)
    assert early.exitcode == 0, (tmp_path / "early.log").read_text()
    assert "label-efficiency sweep" in (tmp_path / "early.log").read_text()  # its progress went to its own log
    cells = sorted((tmp_path / "early" / "cells").glob("*.csv"))
    assert len(cells) == 2
    written = {path: path.stat().st_mtime_ns for path in cells}

    reused = sweep_and_report(
        random_init, tmp_path / "early", labeled, columns, config, patient_column="patient_id", extras=()
    )
    fresh = sweep_and_report(
        random_init, tmp_path / "fresh", labeled, columns, config, patient_column="patient_id", extras=()
    )

    assert {path: path.stat().st_mtime_ns for path in cells} == written  # not run again
    pd.testing.assert_frame_equal(reused, fresh)
