"""The ServerApp's reply collection (server/app/exchange.py): when it pulls, stops and gives up.

The loop is driven by a scripted stand-in for the grid's push/pull pair and a fake clock, so
each test counts pulls and pauses exactly; the real grids (simulation and SuperLink) run it
end to end in test_simulation.py and test_deployment.py.
"""

from __future__ import annotations

from types import SimpleNamespace

from fedvlp.server.app.exchange import send_and_collect


class ScriptedGrid:
    """Accepts pushes under the given ids; pull number k returns the replies scripted for k."""

    def __init__(self, ids: list[str], replies_at: dict[int, list[str]]) -> None:
        self.ids = ids
        self.replies_at = replies_at
        self.pulls: list[set[str]] = []

    def push_messages(self, messages):  # noqa: ANN001, ANN201 - the Grid signature
        list(messages)
        return list(self.ids)

    def pull_messages(self, message_ids):  # noqa: ANN001, ANN201
        self.pulls.append(set(message_ids))
        return [
            SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=m))
            for m in self.replies_at.get(len(self.pulls), [])
        ]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


def test_pulls_until_every_reply_arrived_then_stops() -> None:
    grid, clock = ScriptedGrid(["a", "b"], {1: ["a"], 3: ["b"]}), FakeClock()
    replies = send_and_collect(grid, ["msg-a", "msg-b"], None, poll_seconds=0.1, clock=clock, sleep=clock.sleep)
    assert [r.metadata.reply_to_message_id for r in replies] == ["a", "b"]
    assert grid.pulls == [{"a", "b"}, {"b"}, {"b"}]  # only outstanding ids are asked for
    assert clock.sleeps == [0.1, 0.1]


def test_gives_up_at_the_timeout_with_the_replies_so_far() -> None:
    grid, clock = ScriptedGrid(["a", "b"], {1: ["a"]}), FakeClock()
    replies = send_and_collect(grid, ["msg-a", "msg-b"], 0.25, poll_seconds=0.1, clock=clock, sleep=clock.sleep)
    assert [r.metadata.reply_to_message_id for r in replies] == ["a"]
    assert clock.sleeps == [0.1, 0.1, 0.05]  # the last pause ends at the deadline, not past it
    assert len(grid.pulls) == 4


def test_a_message_the_superlink_refused_is_not_waited_for() -> None:
    grid, clock = ScriptedGrid(["", "b"], {1: ["b"]}), FakeClock()
    replies = send_and_collect(grid, ["msg-a", "msg-b"], None, poll_seconds=0.1, clock=clock, sleep=clock.sleep)
    assert [r.metadata.reply_to_message_id for r in replies] == ["b"]
    assert grid.pulls == [{"b"}] and clock.sleeps == []
