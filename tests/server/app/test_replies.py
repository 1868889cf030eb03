"""Reply parsing as an attacker or a broken site would probe it: real flwr Messages, each
malformed kind rejected with its node id and reason, and the round goes on with the others."""

from __future__ import annotations

import io
import re
from collections.abc import Callable

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, Metadata, MetricRecord, RecordDict

from fedvlp.core.compression import DEFLATED_KEY, PACKED_KEY, pack_arrays
from fedvlp.core.config import RunConfig
from fedvlp.core.params import ARRAYS_KEY, COUNTS_KEY, METRICS_KEY, SIZE_KEY
from fedvlp.server.app.aggregation import ReplyRejected
from fedvlp.server.app.replies import MAX_COUNT, SiteSizes, clean_metrics, error_summary, parse_reply
from fedvlp.server.app.rounds import Guards, check_replies

STATE = {
    "image.w": torch.tensor([0.0, 0.0]),
    "text.w": torch.tensor([10.0]),
    "image.bn.num_batches_tracked": torch.tensor(4),
}
RUN = RunConfig(model_size="tiny", image_size=32, local_steps=3, update_norm_factor=0.0)


def _metadata(node: int) -> Metadata:
    return Metadata(
        run_id=1,
        message_id="",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id="m",
        group_id="1",
        created_at=0.0,
        ttl=60.0,
        message_type=MessageType.TRAIN,
    )


def _reply(content: RecordDict, node: int = 7) -> Message:
    return Message(content=content, metadata=_metadata(node))


def _good(**change: object) -> RecordDict:
    """A well-formed reply (image and text trained), with records replaced by ``change``."""
    records: dict[str, object] = {
        ARRAYS_KEY: ArrayRecord(
            {
                "image.w": torch.tensor([0.1, -0.1]),
                "text.w": torch.tensor([10.2]),
                "image.bn.num_batches_tracked": torch.tensor(7),
            }
        ),
        COUNTS_KEY: MetricRecord({"image": 40, "text": 40}),
        METRICS_KEY: MetricRecord({"loss/mlm": 2.5, "train-seconds": 0.3}),
    }
    records.update(change)
    return RecordDict({k: v for k, v in records.items() if v is not None})


def _forced(record: MetricRecord, key: str, value: object) -> MetricRecord:
    """A MetricRecord holding a value its constructor refuses (as a tampered decoder could)."""
    record.__dict__["_data"][key] = value
    return record


def _array(values: np.ndarray, **override: object) -> Array:
    buffer = io.BytesIO()
    np.save(buffer, values, allow_pickle=False)
    fields = {
        "dtype": str(values.dtype),
        "shape": tuple(values.shape),
        "stype": "numpy.ndarray",
        "data": buffer.getvalue(),
        **override,
    }
    return Array(**fields)  # type: ignore[arg-type]


def _arrays(**arrays: Array) -> ArrayRecord:
    return ArrayRecord({k.replace("__", "."): v for k, v in arrays.items()})


def _counts(image: object) -> MetricRecord:
    return MetricRecord({"image": image, "text": 40})  # type: ignore[dict-item]


F32 = _array(np.array([0.1, -0.1], dtype=np.float32))
GOOD_ARRAYS = {
    "image.w": np.array([0.1, -0.1], dtype=np.float32),
    "text.w": np.array([10.2], dtype=np.float32),
    "image.bn.num_batches_tracked": np.array(7),
}


def _packed(arrays: dict[str, np.ndarray], **beside: Array) -> RecordDict:
    """A reply whose arrays travel packed (what fedvlp's ClientApp sends), plus arrays ``beside``."""
    return _good(**{ARRAYS_KEY: ArrayRecord({PACKED_KEY: Array(pack_arrays(arrays)), **beside})})


def _packed_bytes(data: bytes) -> RecordDict:
    return _good(**{ARRAYS_KEY: ArrayRecord({PACKED_KEY: Array(np.frombuffer(data, dtype=np.uint8))})})


_GOOD_BYTES = pack_arrays(GOOD_ARRAYS).tobytes()
# (kind, reply content, expected reason)
MALFORMED: list[tuple[str, Callable[[], RecordDict], str]] = [
    (
        "count NaN",
        lambda: _good(**{COUNTS_KEY: _counts(float("nan"))}),
        "'group-counts' of group 'image' is float nan, expected an integer",
    ),
    ("count +Inf", lambda: _good(**{COUNTS_KEY: _counts(float("inf"))}), "is float inf, expected an integer"),
    ("count -Inf", lambda: _good(**{COUNTS_KEY: _counts(float("-inf"))}), "is float -inf, expected an integer"),
    ("count 1e300", lambda: _good(**{COUNTS_KEY: _counts(1e300)}), r"is float 1e\+300, expected an integer"),
    ("count 50.0", lambda: _good(**{COUNTS_KEY: _counts(50.0)}), "is float 50.0, expected an integer"),
    ("count list", lambda: _good(**{COUNTS_KEY: _counts([1, 2])}), r"is list \[1, 2\], expected an integer"),
    (
        "count str",
        lambda: _good(**{COUNTS_KEY: _forced(_counts(1), "image", "40")}),
        "is str '40', expected an integer",
    ),
    (
        "count bool",
        lambda: _good(**{COUNTS_KEY: _forced(_counts(1), "image", True)}),
        "is bool True, expected an integer",
    ),
    (
        "count negative",
        lambda: _good(**{COUNTS_KEY: _counts(-5)}),
        rf"is -5, expected an integer in \[1, {MAX_COUNT}\]",
    ),
    ("count zero", lambda: _good(**{COUNTS_KEY: _counts(0)}), rf"is 0, expected an integer in \[1, {MAX_COUNT}\]"),
    (
        "count 10**9",
        lambda: _good(**{COUNTS_KEY: _counts(10**9)}),
        rf"is 1000000000, expected an integer in \[1, {MAX_COUNT}\]",
    ),
    (
        "count 10**20",
        lambda: _good(**{COUNTS_KEY: _counts(10**20)}),
        r"is 100000000000000000000, expected an integer in \[1,",
    ),
    (
        "count key not a group",
        lambda: _good(**{COUNTS_KEY: MetricRecord({"image": 1, "text": 1, "imagez": 3})}),
        "has key 'imagez', expected a group name",
    ),
    (
        "counts as ConfigRecord",
        lambda: _good(**{COUNTS_KEY: ConfigRecord({"image": 40, "text": 40})}),
        "'group-counts' is a ConfigRecord, expected a MetricRecord",
    ),
    (
        "arrays as MetricRecord",
        lambda: _good(**{ARRAYS_KEY: MetricRecord({"image.w": [0.1, -0.1]})}),
        "'arrays' is a MetricRecord, expected an ArrayRecord",
    ),
    (
        "arrays as ConfigRecord",
        lambda: _good(**{ARRAYS_KEY: ConfigRecord({"image.w": "0.1"})}),
        "'arrays' is a ConfigRecord, expected an ArrayRecord",
    ),
    (
        "string-dtype array",
        lambda: _good(**{ARRAYS_KEY: _arrays(image__w=_array(np.array(["a", "b"])))}),
        "'image.w' has dtype '<U1', expected a numeric dtype",
    ),
    (
        "object-dtype array",
        lambda: _good(**{ARRAYS_KEY: _arrays(image__w=_array(np.array([0.1, 0.2]), dtype="object"))}),
        "'image.w' has dtype 'object'",
    ),
    (
        "dtype that lies",
        lambda: _good(**{ARRAYS_KEY: _arrays(image__w=_array(np.array(["a", "b"]), dtype="float32"))}),
        "'image.w' decodes to ndarray of dtype <U1",
    ),
    (
        "corrupt array bytes",
        lambda: _good(**{ARRAYS_KEY: _arrays(image__w=_array(np.zeros(2, np.float32), data=b"\x93NUMPY garbage"))}),
        "'image.w' does not decode",
    ),
    (
        "torch stype",
        lambda: _good(**{ARRAYS_KEY: _arrays(image__w=_array(np.zeros(2, np.float32), stype="torch.Tensor"))}),
        "serialization type 'torch.Tensor'",
    ),
    ("missing arrays", lambda: _good(**{ARRAYS_KEY: None}), "reply lacks 'arrays'"),
    ("missing counts", lambda: _good(**{COUNTS_KEY: None}), "reply lacks 'group-counts'"),
    ("empty content", lambda: RecordDict(), "reply lacks 'arrays'"),
    (
        "wrong record name",
        lambda: RecordDict(
            {"weights": ArrayRecord({"image.w": torch.zeros(2)}), COUNTS_KEY: MetricRecord({"image": 1})}
        ),
        "reply lacks 'arrays'",
    ),
    ("extra array record", lambda: _good(extra=ArrayRecord({"image.w": torch.zeros(2)})), "unexpected record 'extra'"),
    ("extra config record", lambda: _good(note=ConfigRecord({"x": "y"})), "unexpected record 'note'"),
    (
        "metrics as ArrayRecord",
        lambda: _good(**{METRICS_KEY: ArrayRecord({"image.w": torch.zeros(2)})}),
        "'metrics' is an ArrayRecord, expected a MetricRecord",
    ),
    (
        "site-size as ConfigRecord",
        lambda: _good(**{SIZE_KEY: ConfigRecord({"image": 40})}),
        "'site-size' is a ConfigRecord, expected a MetricRecord",
    ),
    (
        "count above its declared size",
        lambda: _good(**{SIZE_KEY: MetricRecord({"image": 30, "text": 40})}),
        "group 'image' count 40 exceeds the size 30 the reply declares",
    ),
    (
        "parameter without group",
        lambda: _good(**{ARRAYS_KEY: ArrayRecord({"weird": torch.zeros(2)})}),
        "unknown parameter 'weird'",
    ),
    (
        "unknown parameter",
        lambda: _good(**{ARRAYS_KEY: ArrayRecord({"image.unknown": torch.zeros(2)})}),
        "unknown parameter 'image.unknown'",
    ),
    (
        "group without count",
        lambda: _good(**{COUNTS_KEY: MetricRecord({"text": 40})}),
        "group 'image' sent without a sample count",
    ),
    (
        "wrong shape",
        lambda: _good(**{ARRAYS_KEY: ArrayRecord({"image.w": torch.zeros(3)})}),
        r"'image.w' has shape \(3,\), expected \(2,\)",
    ),
    (
        "wrong dtype",
        lambda: _good(**{ARRAYS_KEY: ArrayRecord({"image.w": torch.zeros(2, dtype=torch.float64)})}),
        "'image.w' has dtype torch.float64",
    ),
    (
        "NaN weight",
        lambda: _good(**{ARRAYS_KEY: ArrayRecord({"image.w": torch.tensor([float("nan"), 0.0])})}),
        "'image.w' contains NaN or Inf",
    ),
    (
        "Inf weight",
        lambda: _good(**{ARRAYS_KEY: ArrayRecord({"image.w": torch.tensor([float("inf"), 0.0])})}),
        "'image.w' contains NaN or Inf",
    ),
    (
        "num_batches_tracked 2**62",
        lambda: _good(**{ARRAYS_KEY: ArrayRecord({"image.bn.num_batches_tracked": torch.tensor(2**62)})}),
        r"'image.bn.num_batches_tracked' is 4611686018427387904, expected an integer in \[0, 196\]",
    ),
    (
        "num_batches_tracked negative",
        lambda: _good(**{ARRAYS_KEY: ArrayRecord({"image.bn.num_batches_tracked": torch.tensor(-1)})}),
        r"is -1, expected an integer in \[0, 196\]",
    ),
    (
        "metric NaN",
        lambda: _good(**{METRICS_KEY: MetricRecord({"loss/mlm": float("nan")})}),
        "metric 'loss/mlm' is nan, expected a finite number",
    ),
    (
        "metric 1e300",
        lambda: _good(**{METRICS_KEY: MetricRecord({"loss/mlm": 1e300})}),
        r"metric 'loss/mlm' is 1e\+300, expected a finite number with \|value\| <= 1e\+12",
    ),
    (
        "metric list",
        lambda: _good(**{METRICS_KEY: MetricRecord({"loss/mlm": [1.0, 2.0]})}),
        "metric 'loss/mlm' is list",
    ),
    ("packed: truncated", lambda: _packed_bytes(_GOOD_BYTES[:-5]), "':packed' does not decode as packed arrays"),
    ("packed: garbage", lambda: _packed_bytes(b"\xff" * 64), "':packed' does not decode as packed arrays"),
    ("packed: empty", lambda: _packed_bytes(b""), "':packed' does not decode as packed arrays"),
    (
        "packed: header past the end",
        lambda: _packed_bytes((10**9).to_bytes(8, "little") + b"{}"),
        "':packed' does not decode as packed arrays",
    ),
    (
        "packed: float32 buffer",
        lambda: _good(**{ARRAYS_KEY: ArrayRecord({PACKED_KEY: F32})}),
        "':packed' has dtype 'float32', expected a numeric dtype",
    ),
    (
        "packed: stray array beside it",
        lambda: _packed(GOOD_ARRAYS, **{"text.w": F32}),
        "a packed record holds ':packed' alone, found 'text.w' beside it",
    ),
    (
        "packed: unknown parameter inside",
        lambda: _packed({**GOOD_ARRAYS, "image.extra": np.zeros(2, np.float32)}),
        "unknown parameter 'image.extra'",
    ),
    (
        "packed: wrong shape inside",
        lambda: _packed({**GOOD_ARRAYS, "image.w": np.zeros(3, np.float32)}),
        r"'image.w' has shape \(3,\), expected \(2,\)",
    ),
    (
        "deflated under upload none",
        lambda: _good(**{ARRAYS_KEY: ArrayRecord({DEFLATED_KEY: Array(pack_arrays(GOOD_ARRAYS, deflate=True))})}),
        "':packed-zlib' is zlib data, which only a compressed upload mode sends",
    ),
    (
        "packed: NaN inside",
        lambda: _packed({**GOOD_ARRAYS, "text.w": np.array([np.nan], np.float32)}),
        "'text.w' contains NaN or Inf",
    ),
]


@pytest.mark.parametrize(("kind", "build", "reason"), MALFORMED, ids=[k for k, _, _ in MALFORMED])
def test_a_malformed_reply_is_rejected_with_node_and_reason(
    kind: str, build: Callable[[], RecordDict], reason: str
) -> None:
    guards = Guards()
    updates, sites, rejected = check_replies([_reply(build(), node=13), _reply(_good(), node=7)], RUN, STATE, guards)
    assert [u.node_id for u in updates] == [7] and [s["node_id"] for s in sites] == [7]  # the round goes on
    assert len(rejected) == 1 and rejected[0].startswith("node 13: "), rejected
    assert re.search(reason, rejected[0]), rejected[0]


def test_fuzz_table_tried_rejected_crashed() -> None:
    """Every kind through the round's checks: the figures of issue 12 (0 crashes)."""
    tried = rejected = crashed = 0
    for _, build, _ in MALFORMED:
        tried += 1
        try:
            updates, _, reasons = check_replies([_reply(build(), node=13)], RUN, STATE, Guards())
        except Exception:  # noqa: BLE001 - counted: this is what the test measures
            crashed += 1
            continue
        rejected += int(not updates and len(reasons) == 1)
    print(f"replies tried / rejected / crashed the round: {tried} / {rejected} / {crashed}")
    assert (tried, rejected, crashed) == (len(MALFORMED), len(MALFORMED), 0)
    assert tried >= 40


def test_a_second_reply_of_a_node_in_one_round_is_rejected() -> None:
    updates, _, rejected = check_replies([_reply(_good(), node=7), _reply(_good(), node=7)], RUN, STATE, Guards())
    assert len(updates) == 1 and rejected == ["node 7: a second reply in the same round"]


def test_parse_reply_raises_reply_rejected_only() -> None:
    with pytest.raises(ReplyRejected, match="^node 13: 'group-counts' is a ConfigRecord"):
        parse_reply(_reply(_good(**{COUNTS_KEY: ConfigRecord({"image": 1})}), node=13))


def test_a_packed_reply_parses_to_the_same_update_as_arrays_sent_one_by_one() -> None:
    packed = parse_reply(_reply(_packed(GOOD_ARRAYS)))
    plain = parse_reply(_reply(_good()))
    assert packed.update.weights.keys() == plain.update.weights.keys()
    assert all(torch.equal(packed.update.weights[k], plain.update.weights[k]) for k in plain.update.weights)
    assert packed.update.counts == plain.update.counts and packed.metrics == plain.metrics


def test_a_well_formed_reply_parses_to_typed_values() -> None:
    parsed = parse_reply(_reply(_good(**{SIZE_KEY: MetricRecord({"image": 50, "text": 40})})))
    assert parsed.update.node_id == 7 and parsed.update.counts == {"image": 40, "text": 40}
    assert torch.equal(parsed.update.weights["image.bn.num_batches_tracked"], torch.tensor(7))
    assert parsed.metrics == {"loss/mlm": 2.5, "train-seconds": 0.3} and parsed.declared == {"image": 50, "text": 40}


def test_a_site_with_a_spent_budget_sends_nothing_and_is_not_rejected() -> None:
    empty = RecordDict(
        {ARRAYS_KEY: ArrayRecord({}), COUNTS_KEY: MetricRecord({}), METRICS_KEY: MetricRecord({"dp/exhausted": 1.0})}
    )
    updates, _, rejected = check_replies([_reply(empty)], RUN, STATE, Guards())
    assert rejected == [] and updates[0].weights == {}


def test_an_error_reply_keeps_one_line_of_its_reason() -> None:
    reply = Message(
        error=Error(1003, 'training failed: RuntimeError\nTraceback (most recent call last):\n  File "/home/x.py"'),
        metadata=_metadata(21),
    )
    assert error_summary(reply) == "node 21: client error 1003: training failed: RuntimeError"
    _, _, rejected = check_replies([reply], RUN, STATE, Guards())
    assert rejected == ["node 21: client error 1003: training failed: RuntimeError"]


def test_a_flower_error_reply_keeps_only_the_exception_class() -> None:
    """What Flower's simulation engine sends when a ClientApp crashes: a Ray traceback."""
    ray = (
        "<class 'flwr.clientapp.client_app.ClientAppException'>:<'\nException ClientAppException occurred. Message: "
        'ray::ClientAppActor.run() (pid=4242, ip=10.1.2.3, actor_id=abc)\n  File "/srv/site/x.py", line 3\'>'
    )
    reply = Message(error=Error(2, ray), metadata=_metadata(5))
    assert (
        error_summary(reply) == "node 5: client error 2: Flower error (ClientAppException; details in the site's log)"
    )
    wrapped = Message(
        error=Error(
            2, "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'ray::ClientAppActor.run() (pid=1)'>"
        ),
        metadata=_metadata(5),
    )
    assert (
        error_summary(wrapped) == "node 5: client error 2: Flower error (ClientAppException; details in the site's log)"
    )


def test_paths_and_addresses_are_cut_from_a_fedvlp_reason() -> None:
    reply = Message(error=Error(1002, "no usable data: /srv/h/m.csv at 10.0.0.7:9092 pid 77"), metadata=_metadata(5))
    assert error_summary(reply) == "node 5: client error 1002: no usable data: <path> at <address> <address>"


# ------------------------------------------------------------------ declared sizes
def test_counts_above_the_size_declared_at_the_first_reply_are_rejected() -> None:
    guards = Guards()
    first = _good(**{SIZE_KEY: MetricRecord({"image": 50, "text": 40})})
    assert check_replies([_reply(first)], RUN, STATE, guards)[2] == []
    assert guards.sizes.declared == {7: {"image": 50, "text": 40}}
    later = _good(
        **{COUNTS_KEY: MetricRecord({"image": 10**6, "text": 40}), SIZE_KEY: MetricRecord({"image": 10**6, "text": 40})}
    )
    _, _, rejected = check_replies([_reply(later)], RUN, STATE, guards)
    assert rejected == ["node 7: group 'image' declared size grew from 50 to 1000000"]
    _, _, rejected = check_replies(
        [_reply(_good(**{COUNTS_KEY: MetricRecord({"image": 51, "text": 40})}))], RUN, STATE, guards
    )
    assert rejected == ["node 7: group 'image' count 51 exceeds the site's declared size 50"]


def test_without_a_size_record_the_first_counts_are_the_declared_size() -> None:
    sizes = SiteSizes()
    sizes.remember(parse_reply(_reply(_good())))
    assert sizes.declared == {7: {"image": 40, "text": 40}}
    assert (
        SiteSizes({int(k): v for k, v in sizes.to_json().items()}).declared == sizes.declared
    )  # checkpoint round trip


def test_clean_metrics_keeps_finite_numbers_and_names_the_rest() -> None:
    kept, dropped = clean_metrics({"loss/mlm": 2.5, "steps": 3, "bad": float("inf"), "site-size/text": 40})
    assert kept == {"loss/mlm": 2.5, "steps": 3.0, "site-size/text": 40.0}
    assert dropped == ["metric 'bad' is inf, expected a finite number with |value| <= 1e+12"]
