"""Which nodes train in a round: Flower's ``fraction-train`` / ``min-train-nodes`` conventions,
drawn reproducibly.

Flower's strategies draw ``random.sample(node_ids, k)``: a restarted ServerApp draws other
sites, and node ids are random per registration (a new simulation gets new ones). Here every
node gets a score ``sha256(seed, round, key)`` and the ``k`` lowest scores train, where ``key``
is a stable name of the node (its site name, asked once per server process; the node id when
none is known). The draw therefore depends only on the run seed, the round and the set of
connected sites: not on the order the ids arrive in, not on the node ids themselves, and not on
whether the server was restarted in between, so a resumed run samples the sites the
uninterrupted run would have sampled.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

__all__ = ["sample_size", "sample_nodes"]


def sample_size(connected: int, fraction: float, minimum: int) -> int:
    """How many of ``connected`` nodes train: ``max(int(connected * fraction), minimum)``
    (Flower's FedAvg rule), never more than are connected."""
    return min(connected, max(int(connected * fraction), minimum))


def _score(seed: int, round_: int, key: str) -> bytes:
    return hashlib.sha256(f"{seed}:{round_}:{key}".encode()).digest()


def sample_nodes(
    node_ids: Iterable[int],
    round_: int,
    seed: int,
    fraction: float,
    minimum: int,
    keys: Mapping[int, str] | None = None,
) -> list[int]:
    """The node ids that train in ``round_``, sorted.

    Parameters
    ----------
    node_ids
        The connected nodes, in any order.
    round_, seed
        The server round and the run seed: together they fix the draw.
    fraction, minimum
        Run-config ``fraction-train`` and ``min-train-nodes`` (see :func:`sample_size`).
    keys
        A stable name per node id (its site name); nodes without one are drawn by their id.
        Two nodes with the same name are ordered by node id.

    Returns
    -------
    list[int]
        ``sample_size(len(node_ids), fraction, minimum)`` node ids, ascending.
    """
    nodes = sorted(set(node_ids))
    names = keys or {}
    k = sample_size(len(nodes), fraction, minimum)
    ranked = sorted(nodes, key=lambda node: (_score(seed, round_, names.get(node, str(node))), node))
    return sorted(ranked[:k])
