"""The SuperNode launcher (client/supernode.py): only Flower's 3 s idle pause gets shorter."""

from __future__ import annotations

import sys
import time
from types import ModuleType

import pytest
from flwr.supernode import start_client_internal as loop

from fedvlp.client.supernode import IdleSleepShim, install_poll_interval, shorten_pull_retry, split_args

REAL_SLEEP = time.sleep


class Recorder:
    """The 'real' time module of a shim: records sleeps instead of sleeping."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def monotonic(self) -> float:
        return 42.0


def test_the_idle_sleep_becomes_the_poll_interval_and_other_sleeps_stay() -> None:
    real = Recorder()
    shim = IdleSleepShim(0.25, real=real)  # type: ignore[arg-type]
    shim.sleep(3)
    shim.sleep(0.5)  # Flower's wait for a reply of the running ClientApp
    shim.sleep(3.5)
    assert real.sleeps == [0.25, 0.5, 3.5]
    assert shim.monotonic() == 42.0  # everything else is the real module's


def test_install_replaces_time_in_the_supernode_loop_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "time", time)  # restored after the test
    shim = install_poll_interval(0.2)
    assert loop.time is shim and shim.poll_interval == 0.2
    assert sys.modules["time"] is time and time.sleep is REAL_SLEEP  # the process's time module is untouched


def test_a_poll_interval_that_is_not_positive_is_refused() -> None:
    with pytest.raises(ValueError, match="--poll-interval: expected a positive number of seconds, got 0.0"):
        install_poll_interval(0.0)


def test_poll_interval_is_taken_out_and_everything_else_passes_through() -> None:
    argv = [
        "--insecure",
        "--poll-interval",
        "0.2",
        "--superlink",
        "127.0.0.1:9092",
        "--node-config",
        "site-config='a.yaml'",
    ]
    assert split_args(argv) == (
        0.2,
        ["--insecure", "--superlink", "127.0.0.1:9092", "--node-config", "site-config='a.yaml'"],
    )
    assert split_args(["--insecure"]) == (0.3, ["--insecure"])


def test_missing_objects_are_retried_soon_and_the_wrap_happens_once() -> None:
    calls: list[dict] = []
    module = ModuleType("fake_flower_module")
    original = lambda ids, fn, **kw: calls.append(kw)  # noqa: E731
    module.pull_objects = original  # type: ignore[attr-defined]
    shorten_pull_retry(module, "pull_objects")
    shorten_pull_retry(module, "pull_objects")
    assert module.pull_objects.func is original  # type: ignore[attr-defined]  # wrapped once, not twice
    module.pull_objects(["id"], None)  # type: ignore[attr-defined]
    assert calls == [{"initial_backoff": 0.05, "backoff_cap": 0.5, "max_tries_per_object": None}]
