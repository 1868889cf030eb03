"""A progress bar over a run's rounds for the commands that pretrain (demo, simulate, pretrain)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["round_bar"]


@contextmanager
def round_bar(
    rounds: int, checkpoints: str | Path, line: Callable[[dict[str, Any]], str] | None = None
) -> Iterator[Callable[[dict[str, Any]], None]]:
    """A tqdm bar of ``rounds``, started at the rounds already in ``checkpoints`` (a resumed run).

    Yields the ``on_round`` callback that advances it (and prints ``line(record)`` above it when
    given). Log records print above the bar too. The bar is off when stderr is no terminal
    (tqdm's own rule) or with ``fedvlp --quiet`` (``FEDVLP_QUIET=1``); lines still print.
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from fedvlp.core.checkpoint import load_latest

    done = load_latest(Path(checkpoints)) if (Path(checkpoints) / "latest.json").exists() else None
    bar = tqdm(
        total=rounds,
        initial=min(done.round, rounds) if done else 0,
        desc="rounds",
        unit="round",
        disable=True if os.environ.get("FEDVLP_QUIET") == "1" else None,
    )

    def on_round(record: dict[str, Any]) -> None:
        if line is not None:
            bar.write(line(record))
        bar.update(1)
        bar.set_postfix(seconds=f"{record['seconds']:.1f}")

    try:
        with logging_redirect_tqdm():
            yield on_round
    finally:
        bar.close()
