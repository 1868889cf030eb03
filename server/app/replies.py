"""Parse and check one client reply before anything of it reaches the aggregate.

A reply is untrusted input: any record may be missing, of another record type, carry other
keys, or hold values of any type and size. :func:`parse_reply` turns a well-formed reply into
a :class:`~fedvlp.server.app.aggregation.SiteUpdate` and raises
:class:`~fedvlp.server.app.aggregation.ReplyRejected` (naming the node and the reason) for every
other one, so that one bad reply costs its site the round and never the run.

What a well-formed reply holds (``fedvlp.client.app.train_round``):

* ``arrays`` (ArrayRecord): parameter name -> numeric numpy array, packed into one ``uint8``
  array under ``:packed`` (a safetensors buffer, ``core/compression.py``; what fedvlp's
  ClientApp sends), under a compressed upload mode also as ``:packed-zlib`` (inflating to at
  most twice the model's bytes), or one by one;
* ``group-counts`` (MetricRecord): group -> samples that trained it, an ``int`` in
  ``[1, MAX_COUNT]``, one per group of the arrays sent;
* ``metrics`` (MetricRecord, optional): name -> finite number with ``|v| <= MAX_METRIC``;
* ``site-size`` (MetricRecord, optional): group -> samples the site holds, the site's declared
  size (checked across rounds by :class:`SiteSizes`).

Nothing else: no other record, no ConfigRecord.

With run-config ``upload-compression`` other than ``none`` the arrays travel encoded
(``core/compression.py``) and exactly the declared wire layout is accepted: ``bf16``: every
floating parameter as ``uint16`` of its shape; ``int8``: every floating parameter as ``int8``
of its shape with values in [-127, 127] plus its ``float32`` scales (``name:int8-scale``, one per
output channel or one per 0-d / 1-d tensor, finite and >= 0). Integer buffers travel exact in
their own dtype in every mode. Any other dtype, a missing or stray scale, a scale of the wrong
shape or value is rejected; the decoded weights then go through the same checks as fp32 ones.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import Message

from fedvlp.core.compression import (
    DEFLATED_KEY,
    INT8_MAX,
    SCALE_SUFFIX,
    decode_upload,
    packed_key,
    scale_shape,
    unpack_arrays,
)
from fedvlp.core.params import ARRAYS_KEY, COUNTS_KEY, ERROR_REASONS, METRICS_KEY, SIZE_KEY, group_of

from .aggregation import ReplyRejected, SiteUpdate

__all__ = ["MAX_COUNT", "MAX_METRIC", "ParsedReply", "SiteSizes", "clean_metrics", "error_summary", "parse_reply"]

# No hospital holds 10**8 samples of one group (the largest public chest X-ray sets hold ~10**6);
# a count above this is a lie or a bug, whatever else the server knows about the site.
MAX_COUNT = 10**8
MAX_METRIC = 1e12  # metrics are losses, seconds, step counts: finite and far below this
MAX_METRICS = 512  # keys per metric record
_NUMERIC = frozenset({"float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "bool"})
_ARRAY_RECORDS = frozenset({ARRAYS_KEY})
_METRIC_RECORDS = frozenset({COUNTS_KEY, METRICS_KEY, SIZE_KEY})


@dataclass
class ParsedReply:
    """A reply that passed :func:`parse_reply`: the update and what the round log keeps of it."""

    update: SiteUpdate
    metrics: dict[str, float] = field(default_factory=dict)
    declared: dict[str, int] | None = None  # the reply's ``site-size`` record, if any
    bytes: int = 0


def _record_kind(content: Any, key: str) -> str:
    for kind, records in (
        ("ArrayRecord", content.array_records),
        ("MetricRecord", content.metric_records),
        ("ConfigRecord", content.config_records),
    ):
        if key in records:
            return kind
    return "nothing"


def _a(kind: str) -> str:
    return ("an " if kind[0] in "AEIOU" else "a ") + kind


def _check_layout(content: Any) -> None:
    """Exactly the records of a reply, each of its type."""
    expected = {ARRAYS_KEY: "ArrayRecord", COUNTS_KEY: "MetricRecord"}
    for key, kind in expected.items():
        found = _record_kind(content, key)
        if found == "nothing":
            raise ValueError(f"reply lacks '{key}'")
        if found != kind:
            raise ValueError(f"'{key}' is {_a(found)}, expected {_a(kind)}")
    for key in (METRICS_KEY, SIZE_KEY):
        found = _record_kind(content, key)
        if found not in ("nothing", "MetricRecord"):
            raise ValueError(f"'{key}' is {_a(found)}, expected a MetricRecord")
    extra = sorted(set(content.array_records) - _ARRAY_RECORDS) + sorted(set(content.metric_records) - _METRIC_RECORDS)
    extra += sorted(content.config_records)
    if extra:
        raise ValueError(f"unexpected record '{extra[0]}' (a reply holds {sorted(_ARRAY_RECORDS | _METRIC_RECORDS)})")


def _tensor(name: str, array: Any, allowed: frozenset[str] = _NUMERIC) -> torch.Tensor:
    if getattr(array, "stype", None) != "numpy.ndarray":
        raise ValueError(f"'{name}' has serialization type {getattr(array, 'stype', None)!r}, expected 'numpy.ndarray'")
    if array.dtype not in allowed:
        raise ValueError(f"'{name}' has dtype {array.dtype!r}, expected a numeric dtype")
    try:
        value = array.numpy()
    except Exception as err:  # corrupt bytes, shape and data that disagree, pickled objects
        raise ValueError(f"'{name}' does not decode as a numpy array ({type(err).__name__})") from None
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiub":
        raise ValueError(
            f"'{name}' decodes to {type(value).__name__} of dtype {getattr(value, 'dtype', None)}, "
            "expected a numeric array"
        )
    return torch.from_numpy(value if value.flags.writeable else value.copy())


def _wire_dtype(target: torch.Tensor, mode: str) -> str:
    if not target.is_floating_point():
        return str(torch.empty(0, dtype=target.dtype).numpy().dtype)  # integer buffers travel exact
    return {"bf16": "uint16", "int8": "int8"}.get(mode, str(torch.empty(0, dtype=target.dtype).numpy().dtype))


def _numeric(name: str, value: np.ndarray, allowed: frozenset[str]) -> torch.Tensor:
    """An unpacked array (safetensors gives only numeric dtypes; the run's wire layout may allow fewer)."""
    if str(value.dtype) not in allowed or value.dtype.kind not in "fiub":
        raise ValueError(f"'{name}' has dtype {value.dtype}, expected a numeric dtype")
    return torch.from_numpy(value if value.flags.writeable else value.copy())


def _inflate_bound(reference: Mapping[str, torch.Tensor] | None) -> int | None:
    """The most a deflated reply may inflate to: twice the model's bytes (every key in its own
    dtype, plus int8 scales and headers, stays far below); ``None`` without a model to bound by."""
    if reference is None:
        return None
    return 2 * sum(v.numel() * v.element_size() for v in reference.values()) + (1 << 20)


def _arrays(arrays: Any, allowed: frozenset[str], max_bytes: int | None) -> dict[str, torch.Tensor]:
    """The reply's arrays, each checked: a packed record (``core/compression.py``) is unpacked
    first and then held to exactly the same checks as arrays that travel one by one."""
    key = packed_key(str(n) for n in arrays.keys())
    if key is None:
        return {str(n): _tensor(str(n), a, allowed) for n, a in arrays.items()}
    if key == DEFLATED_KEY and max_bytes is None:
        raise ValueError(f"'{key}' is zlib data, which only a compressed upload mode sends")
    packed = _tensor(key, arrays[key], frozenset({"uint8"})).numpy()
    unpacked = unpack_arrays(packed, deflated=key == DEFLATED_KEY, max_bytes=max_bytes)
    return {name: _numeric(name, value, allowed) for name, value in unpacked.items()}


def _decoded(arrays: Any, mode: str, reference: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights of a compressed upload, after checking its exact wire layout (module docstring)."""
    wire = {n: a.numpy() for n, a in _arrays(arrays, _NUMERIC | {"uint16"}, _inflate_bound(reference)).items()}
    for name, value in wire.items():
        if name.endswith(SCALE_SUFFIX):
            owner = name[: -len(SCALE_SUFFIX)]
            if mode != "int8":
                raise ValueError(f"'{name}' is an int8 scale, but upload-compression is '{mode}'")
            if owner not in reference or not reference[owner].is_floating_point():
                raise ValueError(f"'{name}' is the scale of '{owner}', which is not a floating parameter of the model")
            if owner not in wire:
                raise ValueError(f"'{name}' sent without its tensor '{owner}'")
            if str(value.dtype) != "float32" or tuple(value.shape) != scale_shape(tuple(reference[owner].shape)):
                raise ValueError(
                    f"'{name}' is {value.dtype} {tuple(value.shape)}, "
                    f"expected float32 {scale_shape(tuple(reference[owner].shape))}"
                )
            if not (np.isfinite(value).all() and (value >= 0).all()):
                raise ValueError(f"'{name}' holds a negative or non-finite scale, expected finite scales >= 0")
            continue
        if name not in reference:
            raise ValueError(f"unknown parameter '{name}'")
        target, expected = reference[name], _wire_dtype(reference[name], mode)
        if str(value.dtype) != expected:
            raise ValueError(
                f"'{name}' has wire dtype {value.dtype}, expected {expected} (upload-compression '{mode}')"
            )
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(f"'{name}' has shape {tuple(value.shape)}, expected {tuple(target.shape)}")
        if mode == "int8" and target.is_floating_point():
            if name + SCALE_SUFFIX not in wire:
                raise ValueError(f"'{name}' sent without its scale '{name + SCALE_SUFFIX}'")
            if value.size and int(np.abs(value.astype(np.int16)).max()) > INT8_MAX:
                raise ValueError(f"'{name}' holds -128, expected int8 values in [-{INT8_MAX}, {INT8_MAX}]")
    return decode_upload(mode, wire, reference)


def _count(record: str, group: str, value: Any) -> int:
    """A count: an ``int`` (not a bool, not a float, not a list) in ``[1, MAX_COUNT]``."""
    try:
        group_of(group + ".x")  # the record key must be a group name
    except KeyError:
        raise ValueError(
            f"'{record}' has key '{group}', expected a group name (image, text, joint, head.<objective>)"
        ) from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(
            f"'{record}' of group '{group}' is {type(value).__name__} {_short(value)}, expected an integer"
        )
    if not 1 <= value <= MAX_COUNT:
        raise ValueError(f"'{record}' of group '{group}' is {_short(value)}, expected an integer in [1, {MAX_COUNT}]")
    return value


def _metric(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"metric '{name}' is {type(value).__name__} {_short(value)}, expected a number")
    if not math.isfinite(value) or abs(value) > MAX_METRIC:
        raise ValueError(f"metric '{name}' is {_short(value)}, expected a finite number with |value| <= {MAX_METRIC:g}")
    return float(value)


def clean_metrics(metrics: Mapping[str, Any]) -> tuple[dict[str, float], list[str]]:
    """The finite, bounded numeric metrics of a reply the server cannot reject as a whole
    (SecAgg+: the masked vectors are already in the sum), and one reason per value dropped."""
    kept: dict[str, float] = {}
    dropped: list[str] = []
    for name, value in list(metrics.items())[:MAX_METRICS]:
        try:
            kept[str(name)] = _metric(str(name), value)
        except ValueError as err:
            dropped.append(str(err))
    return kept, dropped


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _parse(
    content: Any, node: int, upload: str = "none", reference: Mapping[str, torch.Tensor] | None = None
) -> ParsedReply:
    _check_layout(content)
    arrays = content.array_records[ARRAYS_KEY]
    if upload == "none":
        weights = _arrays(arrays, _NUMERIC, None)
    else:
        if reference is None:
            raise ValueError(f"upload-compression '{upload}' needs the round's global weights to decode")
        weights = _decoded(arrays, upload, reference)
    counts = {str(g): _count(COUNTS_KEY, str(g), v) for g, v in content.metric_records[COUNTS_KEY].items()}
    groups = set()
    for name in weights:
        try:
            groups.add(group_of(name))
        except KeyError:
            raise ValueError(f"unknown parameter '{name}'") from None
    missing = sorted(groups - set(counts))
    if missing:
        raise ValueError(f"group '{missing[0]}' sent without a sample count")
    declared = None
    if SIZE_KEY in content.metric_records:
        declared = {str(g): _count(SIZE_KEY, str(g), v) for g, v in content.metric_records[SIZE_KEY].items()}
        over = sorted(g for g, n in counts.items() if n > declared.get(g, 0))
        if over:
            raise ValueError(
                f"group '{over[0]}' count {counts[over[0]]} exceeds the size {declared.get(over[0], 0)} "
                "the reply declares"
            )
    raw_metrics = content.metric_records.get(METRICS_KEY, {})
    if len(raw_metrics) > MAX_METRICS:
        raise ValueError(f"'{METRICS_KEY}' holds {len(raw_metrics)} values, expected at most {MAX_METRICS}")
    metrics = {str(k): _metric(str(k), v) for k, v in raw_metrics.items()}
    return ParsedReply(SiteUpdate(node, weights, counts), metrics, declared, int(arrays.count_bytes()))


def parse_reply(
    reply: Message, upload: str = "none", reference: Mapping[str, torch.Tensor] | None = None
) -> ParsedReply:
    """Turn a client's reply into an update, or reject it.

    Parameters
    ----------
    reply
        A reply of the round's train messages (``reply.has_error()`` handled by the caller).
    upload
        Run-config ``upload-compression``: the only wire layout accepted (module docstring).
    reference
        The round's global weights; needed to check and decode a compressed upload.

    Returns
    -------
    ParsedReply
        The update (typed tensors, integer counts), finite metrics, the declared size.

    Raises
    ------
    ReplyRejected
        For every reply that is not well-formed (see the module docstring); the message names
        the node and the reason. Nothing else escapes: an unforeseen failure of the parsing
        itself is a rejection too, named by its exception type.
    """
    node = reply.metadata.src_node_id
    try:
        return _parse(reply.content, node, upload, reference)
    except ValueError as err:
        raise ReplyRejected(f"node {node}: {err}") from None
    except Exception as err:  # noqa: BLE001 - a reply must never end the run
        raise ReplyRejected(f"node {node}: malformed reply ({type(err).__name__})") from None


_PATHLIKE = re.compile(r"\S*[/\\]\S*")
_ADDRESS = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b|\bpid=?\s*\d+", re.IGNORECASE)
_EXCEPTION_CLASS = re.compile(r"<class '(?:[\w.]*\.)?(\w+)(?:\((\w+)\))?'>")  # Ray: RayTaskError(ClientAppException)


def error_summary(reply: Message) -> str:
    """The one line the round log keeps of a client's error reply: node, code and reason.

    fedvlp's own codes (``core/params.py``, 1001-1004) keep the first line of their reason;
    Flower's (0-8, e.g. a ClientApp that crashed, with a Ray traceback as its reason) keep
    only the exception class. Paths, IP addresses and pids are cut out and the line is at most
    200 characters: whatever a client sends, no traceback reaches the round JSON.
    """
    error = reply.error
    text = str(error.reason or "")
    if error.code in ERROR_REASONS:
        lines = text.strip().splitlines()
        reason = lines[0] if lines else ERROR_REASONS[error.code]
    else:
        found = _EXCEPTION_CLASS.search(text)
        name = (found.group(2) or found.group(1)) if found else "no reason"
        reason = f"Flower error ({name}; details in the site's log)"
    reason = _ADDRESS.sub("<address>", _PATHLIKE.sub("<path>", reason))[:200]
    return f"node {reply.metadata.src_node_id}: client error {error.code}: {reason}"


class SiteSizes:
    """What each site declared it holds, remembered across rounds (and resumes).

    A site declares its size per group with its first accepted reply: the reply's
    ``site-size`` record, or else its counts. Later replies may not count more samples in a
    group than declared, nor declare more than before; a group the site did not declare yet
    is declared by the first reply that carries it.
    """

    def __init__(self, declared: Mapping[int, Mapping[str, int]] | None = None) -> None:
        self.declared: dict[int, dict[str, int]] = {int(n): dict(g) for n, g in (declared or {}).items()}

    def check(self, parsed: ParsedReply) -> None:
        """Raise :class:`ReplyRejected` when the reply claims more than its site declared."""
        node, known = parsed.update.node_id, self.declared.get(parsed.update.node_id, {})
        for group, size in sorted((parsed.declared or {}).items()):
            if group in known and size > known[group]:
                raise ReplyRejected(f"node {node}: group '{group}' declared size grew from {known[group]} to {size}")
        for group, count in sorted(parsed.update.counts.items()):
            if group in known and count > known[group]:
                raise ReplyRejected(
                    f"node {node}: group '{group}' count {count} exceeds the site's declared size {known[group]}"
                )

    def remember(self, parsed: ParsedReply) -> None:
        """Record the groups an accepted reply declares for the first time."""
        known = self.declared.setdefault(parsed.update.node_id, {})
        for group, size in {**parsed.update.counts, **(parsed.declared or {})}.items():
            known.setdefault(group, size)

    def to_json(self) -> dict[str, dict[str, int]]:
        """For the checkpoint's JSON state (node ids become strings)."""
        return {str(n): dict(sorted(g.items())) for n, g in sorted(self.declared.items())}
