"""Send messages to the SuperNodes and collect their replies without Flower's 3 s poll.

Why: in Flower 1.41 ``Grid.send_and_receive`` of a deployed ServerApp (``GrpcGrid``/
``HttpGrid``) pushes the messages and then asks the SuperLink for replies every 3 s, so a
reply that arrives just after a pull waits up to 3 s more (1.5 s on average per exchange,
twice per SecAgg+ stage). :func:`send_and_collect` does the same push and pull with a short
pause between pulls; :class:`PromptGrid` puts it behind ``send_and_receive`` so that every
exchange of the ServerApp, including Flower's SecAgg+ workflow, uses it. The simulation's
``InMemoryGrid`` polls every 0.1 s already: the default pause here is the same, so
simulated and deployed rounds wait alike. The cost is one small ``PullMessages`` request
to the SuperLink per pause while replies are outstanding.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

__all__ = ["POLL_SECONDS", "PromptGrid", "send_and_collect"]

# Pause between two pulls while replies are outstanding (Flower's InMemoryGrid default).
POLL_SECONDS = 0.1
# How a reply's arrays that are not at the SuperLink yet are asked for again. A SuperNode
# pushes the reply message before its arrays, so the first pull often finds some missing;
# Flower 1.41 then waits 1 s, 2 s, 4 s... (at most 500 tries). Here 0.05 s doubling up to
# 0.5 s, bounded by Flower's overall pull time limit (2 h). Same schedule as the site side
# (fedvlp.client.supernode.PULL_RETRY; server and client share no code).
PULL_RETRY: dict[str, Any] = {"initial_backoff": 0.05, "backoff_cap": 0.5, "max_tries_per_object": None}


def shorten_pull_retry() -> None:
    """Make the deployed ServerApp's grid (``flwr.superlink.grid.http_grid``) retry a missing
    object on :data:`PULL_RETRY`'s schedule; a no-op when already done."""
    from flwr.superlink.grid import http_grid

    # http_grid imports pull_objects without re-exporting it; the grid looks it up there.
    fn = http_grid.pull_objects  # type: ignore[attr-defined]
    if not getattr(fn, "_fedvlp_pull_retry", False):
        wrapped = functools.partial(fn, **PULL_RETRY)
        wrapped._fedvlp_pull_retry = True  # type: ignore[attr-defined]
        http_grid.pull_objects = wrapped  # type: ignore[attr-defined]


def send_and_collect(
    grid: Grid,
    messages: Iterable[Message],
    timeout: float | None,
    *,
    poll_seconds: float = POLL_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Message]:
    """Push ``messages`` and pull their replies until all arrived or ``timeout`` passed.

    Parameters
    ----------
    grid : Grid
        The ServerApp's grid (its ``push_messages`` and ``pull_messages`` do the work).
    messages : Iterable[Message]
        The messages to send.
    timeout : float or None
        Seconds to wait for replies after the push, as in ``Grid.send_and_receive``;
        ``None`` waits until every pushed message has its reply.
    poll_seconds : float, default POLL_SECONDS
        Pause between two pulls (never past the timeout).
    clock, sleep : callables
        Time source and pause, replaceable so tests can count pulls without waiting.

    Returns
    -------
    list[Message]
        The replies in arrival order; fewer than ``messages`` when the timeout passed. A
        message the SuperLink did not accept (its id comes back empty, Flower logs a
        warning) is not waited for: it can have no reply.
    """
    pending = {mid for mid in grid.push_messages(messages) if mid}
    deadline = None if timeout is None else clock() + timeout
    replies: list[Message] = []
    while pending:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        if not pending:
            break
        left = poll_seconds if deadline is None else min(poll_seconds, deadline - clock())
        if left <= 0:
            break
        sleep(left)
    return replies


class PromptGrid(Grid):
    """A ``Grid`` whose ``send_and_receive`` is :func:`send_and_collect`; all else delegates.

    Parameters
    ----------
    grid : Grid
        The grid Flower gave the ServerApp.
    poll_seconds : float, default POLL_SECONDS
        Pause between two pulls while replies are outstanding.
    """

    def __init__(self, grid: Grid, poll_seconds: float = POLL_SECONDS) -> None:
        self._grid = grid
        self.poll_seconds = poll_seconds
        shorten_pull_retry()

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """Push ``messages`` and collect their replies (see :func:`send_and_collect`)."""
        return send_and_collect(self._grid, messages, timeout, poll_seconds=self.poll_seconds)

    # ---------------------------------------------------------------- plain delegation
    def set_run(self, run: Any) -> None:
        """Delegates to the wrapped grid."""
        self._grid.set_run(run)

    @property
    def run(self) -> Any:
        """The wrapped grid's run."""
        return self._grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        """Delegates to the wrapped grid."""
        return self._grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        """Delegates to the wrapped grid."""
        return self._grid.get_node_ids()

    def get_nodes(self) -> Iterable[Any]:
        """Delegates to the wrapped grid (node info with status, for the run log)."""
        return self._grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Delegates to the wrapped grid."""
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Delegates to the wrapped grid."""
        return self._grid.pull_messages(message_ids)

    def __getattr__(self, name: str) -> Any:
        # Anything a concrete grid adds beyond the Grid interface (close, node, ...).
        if name == "_grid":  # not set yet (copy/unpickle): no recursion
            raise AttributeError(name)
        return getattr(self._grid, name)
