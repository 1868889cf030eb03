"""The model-family registry: every recipe's family builds a VLPModel, ignored keys are errors."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from fedvlp.core.config import RECIPE_SPECS, ConfigError, RecipeSpec, RunConfig
from fedvlp.core.models import (
    FedVLPModel,
    VLPModel,
    build_model,
    create_model,
    get_family,
    list_families,
    register_family,
)
from fedvlp.core.models.family import STUDIES, Family
from fedvlp.core.models.registry import check_run, family_knobs, unregister_family


def test_every_recipe_names_a_registered_family_that_has_its_objectives() -> None:
    for recipe, spec in RECIPE_SPECS.items():
        family = get_family(spec.family)
        assert set(spec.objectives) <= set(family.objectives), recipe
    assert set(list_families()) == {"cnn", "vit", "uwox", "unit"}


@pytest.mark.parametrize("family", ["cnn", "vit", "uwox", "unit"])
def test_each_family_builds_a_vlp_model_at_tiny_size(tiny_run: RunConfig, family: str) -> None:
    recipe = next(name for name, spec in RECIPE_SPECS.items() if spec.family == family)
    model = build_model(tiny_run.replace(recipe=recipe))
    assert isinstance(model, VLPModel)
    assert [o.name for o in model.objectives] == list(model.head)
    assert model.max_text_len > 0 and list(model.image_backbone().parameters())
    assert model.supports_regeneration() == (get_family(family).regeneration and "mim" in model.head)
    assert model.supports_retrieval() == get_family(family).retrieval


def test_the_call_site_answers_live_in_the_family() -> None:
    assert get_family("vit").dataset == STUDIES and not get_family("vit").pools_sources
    assert [name for name in list_families() if get_family(name).per_sample_dp] == ["cnn"]
    assert [name for name in list_families() if get_family(name).shared_encoder] == ["unit", "uwox"]
    assert get_family("cnn").presets("tiny", 32, 100).embed_dim == 32


@pytest.mark.parametrize(
    ("recipe", "key", "value"),
    [
        ("refers", "mask_ratio", 0.3),
        ("uwox", "mim_patch", 16),
        ("unit", "mim_patch", 4),
        ("uwox", "freeze_image_stages", 2),
        ("unit", "freeze_text_layers", 1),
        ("refers", "norm", "group"),
        ("uwox", "tau", 0.2),
        ("mixed", "bert_init", "some/bert"),
    ],
)
def test_a_key_the_family_ignores_set_away_from_its_default_is_an_error(
    tiny_run: RunConfig, recipe: str, key: str, value: object
) -> None:
    run = replace(tiny_run, recipe=recipe, **{key: value})  # not validated: RunConfig knows no families
    dashed = key.replace("_", "-")
    family = RECIPE_SPECS[recipe].family
    expected = rf"key '{dashed}': .*recipe '{recipe}' \(the {family} family does not use it"
    with pytest.raises(ConfigError, match=expected) as err:
        build_model(run)
    assert isinstance(err.value, ValueError) and err.value.key == dashed
    for used in get_family(family).knobs:  # the message names what the family does use
        assert used in str(err.value)


def test_keys_a_family_reads_may_change_and_defaults_always_pass(tiny_run: RunConfig) -> None:
    assert check_run(tiny_run.replace(recipe="refers", tau=0.2)).name == "vit"
    assert check_run(tiny_run.replace(recipe="uwox", mask_ratio=0.3)).name == "uwox"
    assert check_run(tiny_run.replace(mim_patch=16, mask_ratio=0.3)).name == "cnn"
    for recipe in RECIPE_SPECS:
        check_run(tiny_run.replace(recipe=recipe))
    assert {"mask-ratio", "mim-patch", "bert-init", "norm"} <= family_knobs()


def test_an_unknown_family_is_an_error_naming_the_registered_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown model family 'resnet-3d' \(registered: cnn, unit, uwox, vit\)"):
        get_family("resnet-3d")
    with pytest.raises(ValueError, match="already registered"):
        register_family(get_family("cnn"))


@pytest.fixture
def toy_family(monkeypatch: pytest.MonkeyPatch) -> Iterator[Family]:
    """A family named ``toy`` (the cnn builder at the tiny preset) and a recipe ``toy`` that uses it."""
    built: list[RunConfig] = []

    def build(run: RunConfig) -> VLPModel:
        built.append(run)
        return get_family("cnn").build(run.replace(recipe="timnet", model_size="tiny"))

    family = replace(get_family("cnn"), name="toy", build=build, objectives=("matching",), knobs=frozenset({"tau"}))
    register_family(family)
    monkeypatch.setitem(RECIPE_SPECS, "toy", RecipeSpec(("matching",), family="toy"))
    try:
        yield family
    finally:
        unregister_family("toy")
    assert built


def test_a_registered_toy_family_is_what_build_model_builds(tiny_run: RunConfig, toy_family: Family) -> None:
    run = replace(tiny_run, recipe="toy")
    assert get_family("toy") is toy_family and "toy" in list_families()
    model = build_model(run)
    assert isinstance(model, FedVLPModel) and list(model.head) == ["matching"]
    with pytest.raises(ConfigError, match=r"key 'mask-ratio': .*recipe 'toy' \(the toy family does not use it"):
        build_model(replace(run, mask_ratio=0.3))


def test_create_model_builds_a_recipe_by_name() -> None:
    model = create_model("timnet", model_size="tiny", image_size=32)
    assert isinstance(model, FedVLPModel) and list(model.head) == ["matching"]
