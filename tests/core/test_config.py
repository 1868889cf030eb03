"""Run and site configuration: defaults, validation and clear errors."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from fedvlp.core.config import (
    HASH_POLICIES,
    LOADER_WORKERS_ENV,
    ConfigError,
    RunConfig,
    expand_vars,
    flower_config_table,
    list_site_files,
    load_site,
    loader_workers,
    project_root,
)


def test_pyproject_defaults_equal_the_dataclass_defaults() -> None:
    pyproject = tomllib.loads((project_root() / "pyproject.toml").read_text())
    assert pyproject["tool"]["flwr"]["app"]["config"] == RunConfig().to_flat()


def test_pyproject_table_is_the_rendering_of_the_dataclass() -> None:
    text = (project_root() / "pyproject.toml").read_text()
    start = text.index("[tool.flwr.app.config]\n")
    block = text[start : text.index("\n\n", start) + 1]
    assert block == flower_config_table(), "paste fedvlp.core.config.flower_config_table() into pyproject.toml"


def test_every_field_has_a_known_hash_policy() -> None:
    policies = {f.name: f.metadata.get("hash", "always") for f in dataclasses.fields(RunConfig)}
    assert set(policies.values()) <= set(HASH_POLICIES)
    never = sorted(name for name, policy in policies.items() if policy == "never")
    assert never == [
        "device",
        "loader_workers",
        "min_nodes",
        "min_replies",
        "out_dir",
        "round_timeout",
        "rounds",
        "trainer_cache_mb",
        "trainer_cache_size",
    ]


@pytest.mark.parametrize(
    ("run_value", "env", "node_default", "expected"),
    [
        (0, None, None, 0),
        (0, "3", None, 3),
        (2, "3", None, 2),
        (2, None, 5, 2),
        (0, "3", 1, 1),
        (0, " ", None, 0),
    ],
)
def test_loader_workers_run_config_wins_over_the_node_default(
    monkeypatch, run_value, env, node_default, expected
) -> None:
    if env is None:
        monkeypatch.delenv(LOADER_WORKERS_ENV, raising=False)
    else:
        monkeypatch.setenv(LOADER_WORKERS_ENV, env)
    assert loader_workers(RunConfig(loader_workers=run_value), node_default) == expected


def test_a_bad_loader_workers_variable_names_itself(monkeypatch) -> None:
    monkeypatch.setenv(LOADER_WORKERS_ENV, "two")
    with pytest.raises(ConfigError, match=r"\$FEDVLP_LOADER_WORKERS: key 'loader-workers'"):
        loader_workers(RunConfig())


def test_from_flat_reads_dashed_keys_and_coerces_ints_to_floats() -> None:
    run = RunConfig.from_flat({"local-steps": 7, "lr": 1, "recipe": "convirt"})
    assert (run.local_steps, run.lr, run.recipe) == (7, 1.0, "convirt")


def test_unknown_run_key_names_the_key() -> None:
    with pytest.raises(ConfigError, match="run_config: key 'local_stepz'"):
        RunConfig.from_flat({"local_stepz": 3})


@pytest.mark.parametrize(
    ("values", "key", "expected"),
    [
        ({"rounds": "5"}, "rounds", "an integer"),
        ({"recipe": "clip"}, "recipe", "one of"),
        ({"image-size": 50}, "image-size", "multiple of 32"),
        ({"mask-ratio": 1.5}, "mask-ratio", "fraction"),
        ({"rounds": 0}, "rounds", ">= 1"),
    ],
)
def test_bad_run_values_name_key_and_expectation(values: dict[str, object], key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_flat(values)
    assert err.value.key == key and expected in err.value.expected


def test_config_hash_ignores_rounds_but_not_the_model() -> None:
    base = RunConfig()
    assert base.config_hash() == base.replace(rounds=9).config_hash()
    assert base.config_hash() != base.replace(model_size="tiny").config_hash()


def test_recipes_switch_objectives() -> None:
    assert RunConfig(recipe="convirt").objective_weights() == {
        "contrastive": 1.0,
        "matching": 0.0,
        "mlm": 0.0,
        "mim": 0.0,
        "generation": 0.0,
        "distill": 0.0,
    }
    assert RunConfig(recipe="refers").objective_weights()["generation"] == 1.0
    assert RunConfig(recipe="mixed").objective_weights()["mim"] == 1.0
    assert RunConfig(recipe="mixed").objective_weights()["distill"] == 0.0  # opt-in
    assert RunConfig(recipe="mixed", weight_distill=0.5).objective_weights()["distill"] == 0.5


def test_knobs_a_recipe_ignores_are_errors_not_silently_dropped() -> None:
    with pytest.raises(ConfigError, match="weight-distill"):
        RunConfig(recipe="convirt", weight_distill=1.0).validate()
    # Keys a recipe's model family ignores: tests/core/models/test_registry.py (checked when the model is built).
    with pytest.raises(ConfigError, match="layer-decay"):
        RunConfig(layer_decay=0.0).validate()
    with pytest.raises(ConfigError, match="image-bn"):
        RunConfig(image_bn="sometimes").validate()


def test_an_unknown_image_only_augmentation_names_the_key_and_the_profiles() -> None:
    with pytest.raises(ConfigError, match=r"image-only-augment.*'moco-cxr', 'strong'.*'sharp'"):
        RunConfig(image_only_augment="sharp").validate()
    RunConfig(image_only_augment="strong").validate()
    assert RunConfig(image_only_augment="").config_hash() == RunConfig().config_hash()
    assert RunConfig(image_only_augment="strong").config_hash() != RunConfig().config_hash()


def test_training_knobs_at_their_defaults_keep_the_config_hash() -> None:
    base = RunConfig()
    assert RunConfig(image_bn="train", warmup_steps=0, align_holdout=0.1).config_hash() == base.config_hash()
    assert RunConfig(image_bn="frozen").config_hash() != base.config_hash()
    assert RunConfig(weight_distill=1.0).config_hash() != base.config_hash()


def _site(tmp_path: Path, text: str) -> Path:
    (tmp_path / "m.csv").write_text("id,image,report\n")
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return path


def test_demo_site_files_load_with_their_modalities(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDVLP_DEMO_DATA", "/data/world")
    files = list_site_files(project_root() / "sites" / "demo")
    sites = [load_site(f) for f in files]
    assert [s.name for s in sites] == ["hospital_a", "hospital_b", "hospital_c"]
    assert [sorted(s.modalities) for s in sites] == [["image", "pair", "text"], ["image"], ["text"]]
    assert sites[0].sources[0].manifest == Path("/data/world/hospital_a/manifest.csv")


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("sources: [{manifest: m.csv}]\n", "name", "non-empty string"),
        ("name: a\n", "sources", "non-empty list"),
        ("name: a\nsources: [{path: m.csv}]\n", "sources[0].path", "one of"),
        ("name: a\nsources: [{manifest: m.txt}]\n", "sources[0].manifest", ".csv or .parquet"),
        ("name: a\nsources: [{manifest: m.csv, kind: video}]\n", "sources[0].kind", "one of"),
        ("name: a\nsources: [{manifest: m.csv}]\nprivacy: {epsilon: -1}\n", "privacy.epsilon", "positive"),
        ("name: a\nsources: [{manifest: m.csv}]\nhospital: x\n", "hospital", "one of"),
        ("name: [a\n", "(file)", "valid YAML"),
    ],
)
def test_bad_site_files_name_file_key_and_expectation(tmp_path: Path, text: str, key: str, expected: str) -> None:
    path = _site(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_site(path)
    assert err.value.key == key and expected in err.value.expected
    assert str(path) in str(err.value)


def test_missing_site_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nothere.yaml"):
        load_site(tmp_path / "nothere.yaml")


def test_expand_vars_supports_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDVLP_X", raising=False)
    assert expand_vars("${FEDVLP_X:-a/b}/c") == "a/b/c"
    monkeypatch.setenv("FEDVLP_X", "/z")
    assert expand_vars("${FEDVLP_X:-a/b}/c") == "/z/c"


def test_image_roots_are_relative_to_the_site_file_and_apply_to_every_source(tmp_path: Path) -> None:
    (tmp_path / "pacs").mkdir()
    site = tmp_path / "s.yaml"
    site.write_text(
        "name: t\nimage_roots: [pacs]\nsources:\n  - manifest: a.csv\n  - manifest: b.csv\n    kind: images\n"
    )
    loaded = load_site(site)
    assert [s.image_roots for s in loaded.sources] == [((tmp_path / "pacs").resolve(),)] * 2


def test_run_file_roots_pin_the_files_a_run_config_may_make_a_site_read(tmp_path: Path) -> None:
    from fedvlp.core.config import check_run_files

    (tmp_path / "m.csv").write_text("id,report\n1,clear lungs\n")
    (tmp_path / "approved" / "vocab").mkdir(parents=True)
    body = "name: s\nsources:\n  - manifest: m.csv\n    kind: reports\n    id_column: id\n    report_column: report\n"
    (tmp_path / "open.yaml").write_text(body)
    (tmp_path / "pinned.yaml").write_text(body + "run_file_roots: [approved]\n")
    (tmp_path / "packaged.yaml").write_text(body + "run_file_roots: []\n")
    inside = RunConfig(tokenizer=str(tmp_path / "approved" / "vocab"))
    outside = RunConfig(tokenizer=str(tmp_path))
    check_run_files(outside, load_site(tmp_path / "open.yaml"))  # no pin: anything goes
    check_run_files(inside, load_site(tmp_path / "pinned.yaml"))
    check_run_files(RunConfig(tokenizer="demo"), load_site(tmp_path / "packaged.yaml"))  # packaged names need no folder
    with pytest.raises(
        ConfigError,
        match=r"pinned\.yaml: key 'run_file_roots': expected run-config 'tokenizer' inside the site's pinned "
        r"folders \(.*approved\)",
    ):
        check_run_files(outside, load_site(tmp_path / "pinned.yaml"))
    with pytest.raises(
        ConfigError, match=r"packaged\.yaml: key 'run_file_roots': expected .*\(none: packaged names only\)"
    ):
        check_run_files(inside, load_site(tmp_path / "packaged.yaml"))
    with pytest.raises(ConfigError, match=r"key 'run_file_roots\[0\]': expected an existing folder"):
        (tmp_path / "bad.yaml").write_text(body + "run_file_roots: [missing]\n")
        load_site(tmp_path / "bad.yaml")
