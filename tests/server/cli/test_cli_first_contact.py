"""``fedvlp`` as a new user meets it: argument mistakes answered at once, in one line, before
anything is written; plain-text help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedvlp.core.config import project_root
from fedvlp.server.cli.main import UsageError, _user_error, build_parser, main, parse_run_config
from fedvlp.server.cli.run_config_args import parse_value as _parse_value

HEAVY = ("torch", "flwr", "ray", "transformers")

# Runs main() on bad arguments in a fresh interpreter and reports, per call, the exit code and
# which heavy modules had been imported when the error came.
PROBE = """
import contextlib, io, json, sys
from fedvlp.server.cli.main import main
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse's own errors
            code = stop.code
    out.append([code, [m for m in {heavy!r} if m in sys.modules], err.getvalue()])
print(json.dumps(out))
""".format(heavy=HEAVY)


def _probe(argvs: list[list[str]], cwd: Path) -> list[tuple[int, list[str], str]]:
    env = {**os.environ, "FEDVLP_HOME": str(cwd / "state")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argvs)], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return [tuple(row) for row in json.loads(done.stdout)]


def test_argument_mistakes_are_refused_before_torch_or_flower_is_imported(tmp_path: Path) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    argvs = [
        ["demo", "--out", str(tmp_path / "new"), "--bogus"],
        ["demo", "--out", str(a_file)],
        ["demo", "--out", str(tmp_path / "new"), "--recipe", "bogus"],
        ["demo", "--out", str(tmp_path / "new"), "--fractions", "2"],
        ["simulate", "--run-config", "recipe=convirt", "rounds=0"],
        ["simulate", "--run-config", f"sites={tmp_path / 'missing'}"],
        ["simulate", "--gpus-per-client", "1.5"],
        ["export", str(tmp_path / "missing"), "--out", str(tmp_path / "new")],
    ]
    results = _probe(argvs, tmp_path)
    assert [code for code, _, _ in results] == [2] * len(argvs)
    assert [heavy for _, heavy, _ in results] == [[]] * len(argvs)
    assert all(err.count("\n") == 1 for _, _, err in results[1:])  # one line each (argparse adds its usage)
    assert not (tmp_path / "new").exists() and not (tmp_path / "state").exists()  # nothing written


def test_demo_out_that_is_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "results"
    a_file.write_text("x")
    assert main(["demo", "--out", str(a_file)]) == 2
    assert (
        capsys.readouterr().err
        == f"fedvlp demo: --out {a_file}: exists and is not a folder (choose a new or existing folder)\n"
    )


def test_demo_out_under_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "results"
    a_file.write_text("x")
    assert main(["demo", "--out", str(a_file / "run")]) == 2
    assert capsys.readouterr().err == f"fedvlp demo: --out {a_file / 'run'}: {a_file} is a file, not a folder\n"


def test_demo_bad_recipe_names_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path / "run"), "--recipe", "clip"]) == 2
    assert capsys.readouterr().err == (
        "fedvlp demo: --recipe clip: expected one of ('mixed', 'convirt', 'timnet', 'refers', 'uwox', 'unit')\n"
    )
    assert not (tmp_path / "run").exists()


def test_demo_baselines_without_sites_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path / "run"), "--baselines", "local"]) == 2
    assert capsys.readouterr().err == (
        "fedvlp demo: --baselines: only with --sites (the synthetic demo has no baseline runs)\n"
    )


def test_demo_baselines_takes_the_pipelines_kinds_and_alone_means_all() -> None:
    from fedvlp.server.cli.pipeline import BASELINE_KINDS

    parser = build_parser()
    assert parser.parse_args(["demo", "--baselines", "local"]).baselines == ["local"]
    assert parser.parse_args(["demo", "--baselines"]).baselines == []
    assert parser.parse_args(["demo"]).baselines is None
    assert parser.parse_args(["demo", "--baselines", *BASELINE_KINDS]).baselines == list(BASELINE_KINDS)
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--baselines", "pooled"])


def test_debug_shows_the_traceback_instead(tmp_path: Path) -> None:
    a_file = tmp_path / "results"
    a_file.write_text("x")
    with pytest.raises(UsageError, match="exists and is not a folder"):
        main(["--debug", "demo", "--out", str(a_file)])


def test_fedvlp_debug_variable_shows_the_traceback_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDVLP_DEBUG", "1")
    with pytest.raises(UsageError):
        main(["simulate", "--gpus-per-client", "-1"])


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("convirt", "convirt"),
        ("sites/cxr", "sites/cxr"),
        ('"convirt"', "convirt"),
        ("'a b'", "a b"),
        ("3", 3),
        ("0.5", 0.5),
        ("1e-4", 1e-4),
        ("true", True),
        ("false", False),
        ("", ""),
    ],
)
def test_run_config_values_are_toml_or_one_bare_word(raw: str, value: object) -> None:
    parsed = _parse_value(raw)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize("raw", ['"unclosed', "[1, 2", "two words"])
def test_run_config_values_that_are_neither_are_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="expected a TOML value"):
        _parse_value(raw)


def test_bare_recipe_builds_the_run_config() -> None:
    run = parse_run_config(["recipe=convirt", "rounds=3", "persistent-optimizer=true"])
    assert (run.recipe, run.rounds, run.persistent_optimizer) == ("convirt", 3, True)


def test_simulate_bare_word_reaches_the_site_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--run-config", "recipe=convirt", f"sites={tmp_path / 'none'}"]) == 2
    assert (
        capsys.readouterr().err
        == "fedvlp: configuration error: run_config: key 'sites': expected a folder of site YAML files, got "
        f"'{tmp_path / 'none'}'\n"
    )


def test_a_run_config_item_without_equals_names_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--run-config", "convirt"]) == 2
    assert (
        capsys.readouterr().err
        == "fedvlp: configuration error: --run-config: key 'convirt': expected key=value, e.g. rounds=3 "
        "recipe=convirt\n"
    )


def test_user_errors_are_one_line_and_bugs_are_not() -> None:
    assert _user_error(FileExistsError(17, "File exists", "/tmp/runs/x")) == "File exists: /tmp/runs/x"
    assert _user_error(ValueError("/data/site.yaml: not valid TOML")) == "/data/site.yaml: not valid TOML"
    assert _user_error(ValueError("math domain error")) is None
    assert _user_error(KeyError("image")) is None  # not even a ValueError: a bug, with its traceback
    assert _user_error(OSError("no filename")) is None


def test_help_is_plain_text() -> None:
    parser = build_parser()
    texts = [parser.format_help()]
    sub = next(a for a in parser._actions if a.dest == "command")
    texts += [p.format_help() for p in sub.choices.values()]
    assert not [t for t in texts if "``" in t or ":func:" in t or ":class:" in t]


def test_import_of_the_cli_stays_light() -> None:
    code = (
        f"import sys, fedvlp.server.cli.main, fedvlp.server.cli.simulation; print([m for m in {HEAVY!r} if m in "
        "sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=project_root(), timeout=120)
    assert done.stdout.strip() == "[]", done.stderr


@pytest.mark.slow
def test_simulate_shows_each_round_once_and_where_sites_train_without_ray_warnings(
    demo_env: Path, tmp_path: Path
) -> None:
    run = [
        'model-size="tiny"',
        "image-size=32",
        "rounds=1",
        "local-steps=1",
        "batch-size=4",
        f"out-dir={tmp_path / 'run'}",
    ]
    env = {**os.environ, "FEDVLP_HOME": str(tmp_path / "state")}
    env.pop("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", None)
    done = subprocess.run(
        [sys.executable, "-m", "fedvlp.server.cli", "simulate", "--run-config", *run],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert output.count("Round 1/1") == 1, output
    assert "round 1:" not in output  # the CLI's own echo of the server's line is gone
    assert "FutureWarning" not in output and "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO" not in output, output
    import torch

    where = "cuda" if torch.cuda.is_available() else "cpu"
    for site in ("hospital_a", "hospital_b", "hospital_c"):
        assert f"site {site}: trains on {where}" in output, output
