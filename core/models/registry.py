"""The registry of model families and the one way to build a run's model (:func:`build_model`).

Modelled on timm's model registry and open_clip's ``create_model``: a recipe
(``RECIPE_SPECS`` in :mod:`fedvlp.core.config`) names a family, the registry maps the name to
its :class:`~fedvlp.core.models.family.Family`, and the family builds the model and answers
what it supports. Call sites ask :func:`family_of` instead of comparing family names.

Adding a family: one module under :mod:`fedvlp.core.models.families` that declares its
``Family``, and one line in :data:`_BUILTIN` below (docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..config import RECIPE_SPECS, ConfigError, RunConfig
from .families import cnn, uwox, vit
from .family import Family
from .pretrained import check_inits
from .protocol import VLPModel

__all__ = [
    "register_family",
    "get_family",
    "list_families",
    "family_of",
    "family_knobs",
    "check_run",
    "build_model",
    "create_model",
]

_FAMILIES: dict[str, Family] = {}


def register_family(family: Family, replace: bool = False) -> Family:
    """Make ``family`` buildable under ``family.name``.

    Raises
    ------
    ValueError
        When the name is taken and ``replace`` is not set.
    """
    if family.name in _FAMILIES and not replace:
        raise ValueError(f"model family '{family.name}' is already registered")
    _FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> None:
    """Remove a family (tests that register a toy family clean up with this)."""
    _FAMILIES.pop(name, None)


def get_family(name: str) -> Family:
    """The family registered as ``name``.

    Raises
    ------
    ValueError
        Naming the registered families when ``name`` is not one of them.
    """
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family '{name}' (registered: {', '.join(list_families())})") from None


def list_families() -> tuple[str, ...]:
    """The registered family names, sorted."""
    return tuple(sorted(_FAMILIES))


def family_of(run: RunConfig) -> Family:
    """The family of ``run``'s recipe."""
    return get_family(run.spec.family)


def family_knobs() -> frozenset[str]:
    """Every family-specific run-config key: those some registered family reads."""
    return frozenset().union(*(registered.knobs for registered in _FAMILIES.values()))


def check_run(run: RunConfig, origin: str = "run_config") -> Family:
    """Check that ``run``'s family has what its recipe names and that no key it ignores was changed.

    Returns
    -------
    Family
        The run's family.

    Raises
    ------
    ConfigError
        Naming ``recipe`` when its family has no head for one of the recipe's objectives, or a
        family-specific key (:func:`family_knobs`) the family does not read that is set away
        from its default, with the recipe and the keys the family does use.
    """
    family = family_of(run)
    missing = [name for name in run.spec.objectives if name not in family.objectives]
    if missing:
        expected = f"a recipe of objectives the '{family.name}' family has ({family.objectives}); it has no {missing}"
        raise ConfigError(origin, "recipe", expected, run.recipe)
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    for key in sorted(family_knobs() - family.knobs):
        name = key.replace("-", "_")
        value = getattr(run, name)
        if value != defaults[name]:
            uses = ", ".join(sorted(family.knobs)) or "none of them"
            expected = (
                f"its default {defaults[name]!r} with recipe '{run.recipe}' "
                f"(the {family.name} family does not use it; of the family-specific keys it uses {uses})"
            )
            raise ConfigError(origin, key, expected, value)
    return family


def build_model(run: RunConfig, seed: int | None = None) -> VLPModel:
    """Build the model of a run with random weights (seeded by ``seed`` or ``run.seed``).

    The recipe's family (:func:`family_of`) picks the architecture; only objectives whose
    weight is above zero get a head. General-pretrained inits (``text-init`` / ``image-init``,
    ``bert-init``) are applied by the family's builder.

    Raises
    ------
    ConfigError
        When an init is set for a family that does not take it or its package is not installed,
        or a key the family ignores is set away from its default (:func:`check_run`).
    """
    family = check_run(run)
    check_inits(run, family, [name for name, spec in RECIPE_SPECS.items() if _takes_general_inits(spec.family)])
    torch.manual_seed(run.seed if seed is None else seed)
    return family.build(run)


def _takes_general_inits(name: str) -> bool:
    return name in _FAMILIES and _FAMILIES[name].general_inits


def create_model(recipe: str, seed: int | None = None, **overrides: Any) -> VLPModel:
    """open_clip-style shortcut: the model of ``recipe`` with run-config ``overrides`` (``model_size="tiny"``, …)."""
    return build_model(RunConfig(recipe=recipe).replace(**overrides), seed=seed)


# The built-in families; a new family adds its module's Family here.
_BUILTIN = (cnn.FAMILY, vit.FAMILY, uwox.UWOX, uwox.UNIT)
for _builtin in _BUILTIN:
    register_family(_builtin)
