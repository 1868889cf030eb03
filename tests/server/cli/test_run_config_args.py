"""``--run-config`` / ``--set`` items as users type them (server/cli/run_config_args.py)."""

from __future__ import annotations

import pytest

from fedvlp.core.config import ConfigError
from fedvlp.server.cli.run_config_args import run_overrides


def test_toml_values_and_bare_words_parse_to_their_types() -> None:
    assert run_overrides(
        ["rounds=3", "lr=0.5", "quick=true", 'out-dir="runs/a b"', "recipe=convirt", "sites=sites/cxr"]
    ) == {"rounds": 3, "lr": 0.5, "quick": True, "out-dir": "runs/a b", "recipe": "convirt", "sites": "sites/cxr"}


def test_an_item_without_equals_and_an_unclosed_quote_name_the_origin_and_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^--set: key 'rounds': expected key=value"):
        run_overrides(["rounds"], "--set")
    with pytest.raises(
        ConfigError, match=r"^--run-config: key 'recipe': expected a TOML value or one bare word, got '\"convirt'"
    ):
        run_overrides(['recipe="convirt'])
