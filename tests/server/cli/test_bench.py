"""``fedvlp bench``'s step figures: the bare loop, the default trainer and each speed option, with their deltas."""

from __future__ import annotations

from pathlib import Path

from fedvlp.core.config import RunConfig
from fedvlp.server.cli.bench import SPEED_OPTIONS, step_figures


def test_step_figures_time_each_option_against_the_bare_loop(demo_env: Path, tiny_run: RunConfig) -> None:
    options = {"channels-last": SPEED_OPTIONS["channels-last"], "foreach-adamw": SPEED_OPTIONS["foreach-adamw"]}
    figures = step_figures(tiny_run, steps=1, repeats=1, options=options)
    assert figures["step-ratio"] > 0 and figures["step-seconds/bare-pytorch"] > 0
    for name in options:
        assert figures[f"step-ratio/{name}"] > 0
    assert figures["loss-delta/foreach-adamw"] == 0.0 and figures["weight-delta/foreach-adamw"] == 0.0
    assert abs(figures["loss-delta/channels-last"]) < 1e-3
