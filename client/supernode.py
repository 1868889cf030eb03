"""``flower-supernode`` with a shorter idle pause between two pulls from the SuperLink.

Why: Flower 1.41's SuperNode loop (``flwr.supernode.start_client_internal``) pulls the
SuperLink for a message and, when there is none, calls ``time.sleep(3)`` before the next
pull; there is no flag to change it. Between rounds every SuperNode finds nothing (the
server is still aggregating), so the next round's message waits up to 3 s (1.5 s on
average, per exchange) before the site even sees it.

This launcher runs Flower's own ``flower-supernode`` entry point, with every argument
passed through, after replacing the ``time`` module *as seen by that one module* with a
shim whose ``sleep(3)`` sleeps ``--poll-interval`` seconds instead; every other call
(``sleep(0.5)`` while a reply is awaited, ``time.time()``, ...) goes to the real ``time``
module, and no other module is affected. The cost is one more small pull request (an HTTP
call to the SuperLink) per interval per SuperNode while it is idle: 0.3 s means about 3
requests per second per site instead of one every 3 s.

Use it exactly like ``flower-supernode``::

    python -m fedvlp.client.supernode --poll-interval 0.3 --insecure \\
        --superlink 127.0.0.1:9092 --isolation process ...
    fedvlp-supernode --poll-interval 0.3 ...        # the same, as a console script
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Sequence
from types import ModuleType
from typing import Any

__all__ = [
    "IDLE_SLEEP_SECONDS",
    "POLL_INTERVAL",
    "PULL_RETRY",
    "IdleSleepShim",
    "install_poll_interval",
    "main",
    "shorten_pull_retry",
    "split_args",
]

# The pause Flower 1.41's SuperNode takes after a pull that found no message.
IDLE_SLEEP_SECONDS = 3.0
# Our default pause instead (seconds).
POLL_INTERVAL = 0.3
# How often an object that is not there yet is asked for again. Flower 1.41 waits 1 s, then
# 2, 4, 8, 10, 10... s (at most 500 tries). A SuperNode creates the ClientApp task and
# stores the message *before* it has pulled the message's arrays from the SuperLink, so
# the worker that acquired the task at once usually finds them missing and loses 1+2+4 s
# per round to that back-off. Here: 0.05 s doubling up to 0.5 s, bounded by Flower's
# overall pull time limit (2 h) instead of a count of tries.
PULL_RETRY = {"initial_backoff": 0.05, "backoff_cap": 0.5, "max_tries_per_object": None}


class IdleSleepShim:
    """Stands in for the ``time`` module inside ``flwr.supernode.start_client_internal``.

    ``sleep(IDLE_SLEEP_SECONDS)`` (Flower's idle pause) sleeps ``poll_interval`` instead;
    every other sleep and every other attribute is the real ``time`` module's.

    Parameters
    ----------
    poll_interval : float
        Seconds to sleep in place of the idle pause.
    real : module, default time
        The module everything else is delegated to.
    """

    def __init__(self, poll_interval: float, real: ModuleType = time) -> None:
        self.poll_interval = poll_interval
        self._real = real

    def sleep(self, seconds: float) -> None:
        """Sleep ``poll_interval`` for the idle pause, ``seconds`` otherwise."""
        self._real.sleep(self.poll_interval if seconds == IDLE_SLEEP_SECONDS else seconds)

    def __getattr__(self, name: str) -> Any:
        if name == "_real":  # not set yet (copy/unpickle): no recursion
            raise AttributeError(name)
        return getattr(self._real, name)


def install_poll_interval(poll_interval: float) -> IdleSleepShim:
    """Make the SuperNode loop of this process pause ``poll_interval`` s when idle.

    Parameters
    ----------
    poll_interval : float
        Seconds between two pulls that found no message (> 0).

    Returns
    -------
    IdleSleepShim
        The shim now installed as ``flwr.supernode.start_client_internal.time``.

    Raises
    ------
    ValueError
        ``poll_interval`` is not a positive number.
    RuntimeError
        The installed Flower has no ``time`` module in that place (another version): the
        shim would silently do nothing, so the launcher refuses to start.
    """
    if not poll_interval > 0:
        raise ValueError(f"--poll-interval: expected a positive number of seconds, got {poll_interval}")
    from flwr.supernode import start_client_internal as loop

    if getattr(loop, "time", None) is not time and not isinstance(getattr(loop, "time", None), IdleSleepShim):
        raise RuntimeError(
            "flwr.supernode.start_client_internal has no 'time' module to wrap in this Flower version; "
            "run flower-supernode without --poll-interval"
        )
    shim = IdleSleepShim(poll_interval)
    loop.time = shim  # type: ignore[attr-defined, assignment]  # only this module sees the shim
    return shim


def shorten_pull_retry(module: ModuleType, name: str) -> None:
    """Make ``module.name`` (Flower's ``pull_objects`` or a function built on it) retry a
    missing object on :data:`PULL_RETRY`'s schedule; a no-op when already done.

    Parameters
    ----------
    module : module
        The Flower module that calls the function by its global name.
    name : str
        ``pull_objects`` or ``pull_and_inflate_object_from_tree``.
    """
    fn = getattr(module, name)
    if not getattr(fn, "_fedvlp_pull_retry", False):
        wrapped = functools.partial(fn, **PULL_RETRY)
        wrapped._fedvlp_pull_retry = True  # type: ignore[attr-defined]
        setattr(module, name, wrapped)


def split_args(argv: Sequence[str]) -> tuple[float, list[str]]:
    """Take ``--poll-interval`` out of ``argv``; the rest is for ``flower-supernode``.

    Parameters
    ----------
    argv : Sequence[str]
        The command line after the program name.

    Returns
    -------
    tuple[float, list[str]]
        The poll interval (default :data:`POLL_INTERVAL`) and the untouched other arguments.
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--poll-interval", type=float, default=POLL_INTERVAL)
    known, rest = parser.parse_known_args(list(argv))
    return known.poll_interval, rest


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``flower-supernode`` with ``argv`` minus ``--poll-interval`` (see the module doc)."""
    args = sys.argv[1:] if argv is None else argv
    if "-h" in args or "--help" in args:
        print(
            f"--poll-interval SECONDS  pause between two idle pulls (default {POLL_INTERVAL}; Flower's is "
            f"{IDLE_SLEEP_SECONDS:g})\n"
        )
    poll_interval, rest = split_args(args)
    try:
        install_poll_interval(poll_interval)
    except (ValueError, RuntimeError) as err:
        raise SystemExit(f"fedvlp-supernode: {err}") from None
    from flwr.supernode import start_client_internal
    from flwr.supernode.cli import flower_supernode

    shorten_pull_retry(start_client_internal, "pull_objects")  # the message's arrays from the SuperLink

    # Flower's parser reads sys.argv itself.
    sys.argv = ["flower-supernode", *rest]
    flower_supernode()


if __name__ == "__main__":
    main()
