"""Every message a hospital sends carries weights, counts and scalar metrics: nothing else.

A real Flower mod wraps fedvlp's ClientApp in a real run of Flower's simulation engine (the
three demo sites: image-report pairs, images only, reports only) and writes down each
outgoing reply as it leaves the ClientApp. The test then checks every array against the
model's own parameter names, shapes and dtypes (so no pixels, token ids or text can hide
in an array: each must be exactly a parameter or buffer of the model), and every other
value against what counts and metrics may be (finite numbers under plain keys, no strings,
no lists, no paths).
"""

from __future__ import annotations

import json
import math
import os
import re
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from fedvlp.core.config import RunConfig
from fedvlp.core.models import build_model
from fedvlp.core.params import ARRAYS_KEY, COUNTS_KEY, METRICS_KEY, SIZE_KEY, group_of

pytestmark = pytest.mark.slow

RECORD_DIR_ENV = "FEDVLP_TEST_RECORD_DIR"


def _describe(reply: Any) -> dict[str, Any]:
    """What a reply carries, in JSON: array names with shape and dtype (unpacked from the one
    packed array that travels), metric and config records verbatim (they are small), and the
    error if any."""
    from fedvlp.core.compression import unpack_record

    if reply.has_error():
        return {"error": reply.error.reason}
    content = reply.content
    return {
        "records": {name: type(record).__name__ for name, record in content.items()},
        "arrays": {
            name: {
                key: {"shape": list(arr.shape), "dtype": str(arr.dtype)}
                for key, arr in unpack_record({k: a.numpy() for k, a in record.items()}).items()
            }
            for name, record in content.array_records.items()
        },
        "metrics": {name: dict(record) for name, record in content.metric_records.items()},
        "configs": {name: {k: repr(v) for k, v in record.items()} for name, record in content.config_records.items()},
    }


def recording_client_app(overrides: Mapping[str, Any] | None = None) -> Any:
    """fedvlp's ClientApp behind a mod that writes every outgoing reply to a JSON file.

    Loaded by ``fedvlp.server.cli.simulation`` in place of ``make_client_app`` (same signature);
    the folder is read here, in the driver, and travels inside the mod to the Ray actors.
    """
    from flwr.clientapp import ClientApp

    from fedvlp.client.app import make_client_app

    folder = Path(os.environ[RECORD_DIR_ENV])
    inner = make_client_app(overrides)

    def record_outgoing(msg: Any, context: Any, call_next: Callable[[Any, Any], Any]) -> Any:
        reply = call_next(msg, context)
        entry = {
            "node_config": dict(context.node_config),
            "message_type": msg.metadata.message_type,
            **_describe(reply),
        }
        (folder / f"{uuid.uuid4().hex}.json").write_text(json.dumps(entry))
        return reply

    outer = ClientApp(mods=[record_outgoing])

    @outer.train()
    def train(msg: Any, context: Any) -> Any:
        return inner(message=msg, context=context)

    return outer


# Metric keys are short identifiers such as "loss/mlm" or "skipped/corrupt-image".
_KEY = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)?$")
_FILE_LIKE = re.compile(r"\.(csv|parquet|png|jpe?g|dcm|ya?ml|txt|json)$", re.IGNORECASE)


def _plain_key(key: str, world: Path) -> bool:
    return bool(_KEY.match(key)) and len(key) <= 48 and not _FILE_LIKE.search(key) and str(world) not in key


def test_replies_carry_only_model_arrays_counts_and_scalar_metrics(
    demo_env: Path, world: Path, tiny_run: RunConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fedvlp.server.cli.simulation as simulation

    folder = tmp_path / "replies"
    folder.mkdir()
    monkeypatch.setenv(RECORD_DIR_ENV, str(folder))
    monkeypatch.setattr(simulation, "CLIENT_APP_FACTORY", f"{__name__}:recording_client_app")
    run = tiny_run.replace(rounds=2, local_steps=2)
    simulation.simulate(run)

    replies = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    assert len(replies) == 3 * run.rounds  # every site, every round
    assert not [r for r in replies if "error" in r]
    model_state = build_model(run).state_dict()
    groups = {group_of(k) for k in model_state}
    for reply in replies:
        site = reply["node_config"]
        # Only these four records, of these kinds; no config record (strings travel there).
        assert reply["records"] == {
            ARRAYS_KEY: "ArrayRecord",
            COUNTS_KEY: "MetricRecord",
            METRICS_KEY: "MetricRecord",
            SIZE_KEY: "MetricRecord",
        }, site
        assert reply["configs"] == {}
        arrays = reply["arrays"][ARRAYS_KEY]
        assert arrays, f"{site}: uploaded nothing"
        for name, meta in arrays.items():
            assert name in model_state, f"{site}: unknown array {name!r}"
            expected = model_state[name]
            assert meta["shape"] == list(expected.shape), (
                f"{site}: {name} has shape {meta['shape']}, the model {list(expected.shape)}"
            )
            assert meta["dtype"] == str(expected.dtype).removeprefix("torch."), f"{site}: {name} is {meta['dtype']}"
        counts = reply["metrics"][COUNTS_KEY]
        assert set(counts) <= groups and counts, f"{site}: counts {counts}"
        assert all(isinstance(n, int) and n > 0 for n in counts.values()), f"{site}: counts {counts}"
        # The declared size: one integer per counted group, never below its count.
        sizes = reply["metrics"][SIZE_KEY]
        assert sizes.keys() == counts.keys() and all(
            isinstance(sizes[g], int) and sizes[g] >= counts[g] for g in counts
        ), f"{site}: sizes {sizes}"
        # Uploaded arrays belong to the groups that were counted, and nothing else.
        assert {group_of(k) for k in arrays} == set(counts), site
        for key, value in reply["metrics"][METRICS_KEY].items():
            assert _plain_key(key, world), f"{site}: metric key {key!r}"
            assert isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value), (
                f"{site}: {key}={value!r}"
            )
    # The three kinds of site really took part: one uploads image groups only, one text only.
    uploads = {frozenset(r["metrics"][COUNTS_KEY]) for r in replies}
    assert frozenset({"image", "head.mim"}) in uploads and frozenset({"text", "head.mlm"}) in uploads
