"""Malformed and failing replies in Flower's real simulation engine: the round goes on.

Three demo sites; a mod in front of fedvlp's ClientApp makes site 0 send a reply whose
counts are NaN and site 1 crash outside fedvlp's own error handling (as a broken install
would), so Flower itself turns the crash into an error reply with a Ray traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cloudpickle
import pytest
from flwr.app import Context, Message, MetricRecord

from fedvlp.core.config import RunConfig
from fedvlp.core.params import COUNTS_KEY

pytestmark = pytest.mark.slow

# Ray actors unpickle the ClientApp; this test module is not importable there.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def abuse_mod(msg: Message, context: Context, call_next):  # type: ignore[no-untyped-def]
    partition = int(context.node_config["partition-id"])
    if partition == 1:
        raise RuntimeError("site 1 broke at /srv/hospital_b/secret.py")
    reply = call_next(msg, context)
    if partition == 0 and not reply.has_error():
        counts = MetricRecord({g: 1 for g in reply.content.metric_records[COUNTS_KEY]})
        counts.__dict__["_data"] = {g: float("nan") for g in counts}
        reply.content.metric_records[COUNTS_KEY] = counts
    return reply


def make_abusive_client_app(overrides):  # type: ignore[no-untyped-def]
    from flwr.clientapp import ClientApp

    from fedvlp.client.app import make_client_app

    inner = make_client_app(overrides)
    outer = ClientApp(mods=[abuse_mod])

    @outer.train()
    def train(msg: Message, context: Context) -> Message:
        return inner(msg, context)

    return outer


def test_a_nan_count_and_a_crashed_site_leave_the_round_to_the_honest_site(
    demo_env: Path, tiny_run: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedvlp.server.cli import simulation

    monkeypatch.setattr(simulation, "CLIENT_APP_FACTORY", f"{__name__}:make_abusive_client_app")
    records: list[dict] = []
    simulation.simulate(tiny_run.replace(rounds=1), on_round=records.append)
    assert len(records) == 1 and records[0]["replies"] == 1
    rejected = records[0]["rejected"]
    assert len(rejected) == 2, rejected
    assert any("'group-counts' of group" in r and "is float nan, expected an integer" in r for r in rejected), rejected
    assert any("client error 2: Flower error (ClientAppException; details in the site's log)" in r for r in rejected), (
        rejected
    )
    saved = (Path(tiny_run.out_dir) / "checkpoints" / "round_0001.json").read_text()
    for leak in ("Traceback", 'File "', "/srv/", "pid=", "ip="):
        assert leak not in saved, leak
    assert json.loads(saved)["history"][0]["rejected"] == rejected
