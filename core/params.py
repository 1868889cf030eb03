"""Parameter groups and the message keys that the server and the clients share.

Every parameter (and buffer) name starts with its group: ``image.`` (image encoder),
``text.`` (text encoder), ``joint.`` (shared or fusion transformer) or
``head.<objective>.`` (an objective's head). Sites return only the groups their data
trained, each with the number of samples that trained it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

__all__ = [
    "ENCODER_GROUPS",
    "group_of",
    "split_by_group",
    "filter_groups",
    "strip_group",
    "ARRAYS_KEY",
    "COUNTS_KEY",
    "METRICS_KEY",
    "CONFIG_KEY",
    "SITE_NAME_KEY",
    "SIZE_KEY",
    "ERROR_SITE_CONFIG",
    "ERROR_NO_DATA",
    "ERROR_TRAINING",
    "ERROR_REPLY",
    "ERROR_NO_BASE",
    "ERROR_REASONS",
]

ENCODER_GROUPS = ("image", "text", "joint")

# RecordDict keys of train messages (server -> client) and replies (client -> server).
ARRAYS_KEY = "arrays"  # ArrayRecord: parameter name -> tensor
COUNTS_KEY = "group-counts"  # MetricRecord: group name -> samples that trained it
METRICS_KEY = "metrics"  # MetricRecord: scalar training metrics
CONFIG_KEY = "config"  # ConfigRecord: server round and other instructions
SITE_NAME_KEY = "site-name"  # ConfigRecord entry of a QUERY reply: the site's stable name (client sampling)
SIZE_KEY = "site-size"  # MetricRecord: group name -> samples the site holds for it (its declared size)

# Error codes of a client's error reply (Flower's own codes are 0-8). The reply carries the code
# and a one-line reason only: the traceback stays in the site's own log.
ERROR_SITE_CONFIG = 1001  # the site file or the node config is invalid
ERROR_NO_DATA = 1002  # the site has no usable data for this run
ERROR_TRAINING = 1003  # local training (or building the reply) failed
ERROR_REPLY = 1004  # the site would send a reply it must not send (e.g. a weight outside SecAgg+'s range)
ERROR_NO_BASE = 1005  # a delta download whose base the site no longer holds (the server resends the whole model)
ERROR_REASONS = {
    ERROR_SITE_CONFIG: "site config invalid",
    ERROR_NO_DATA: "no usable data",
    ERROR_TRAINING: "training failed",
    ERROR_REPLY: "reply refused by the site",
    ERROR_NO_BASE: "no base for the delta download",
}


def group_of(name: str) -> str:
    """The group of a parameter name: ``image``, ``text``, ``joint`` or ``head.<objective>``.

    Raises
    ------
    KeyError
        When the name does not start with a known group.
    """
    first, _, rest = name.partition(".")
    if first in ENCODER_GROUPS and rest:
        return first
    if first == "head":
        objective, _, tail = rest.partition(".")
        if objective and tail:
            return f"head.{objective}"
    raise KeyError(f"parameter '{name}' does not start with a group (image., text., joint., head.<objective>.)")


def split_by_group(names: Iterable[str]) -> dict[str, list[str]]:
    """Parameter names grouped by :func:`group_of`, keeping their order."""
    out: dict[str, list[str]] = {}
    for name in names:
        out.setdefault(group_of(name), []).append(name)
    return out


def filter_groups(state: Mapping[str, torch.Tensor], groups: Iterable[str]) -> dict[str, torch.Tensor]:
    """The entries of ``state`` whose group is in ``groups``."""
    wanted = set(groups)
    return {k: v for k, v in state.items() if group_of(k) in wanted}


def strip_group(state: Mapping[str, torch.Tensor], group: str) -> dict[str, torch.Tensor]:
    """Entries of one group with the ``group.`` prefix removed (to load into the bare module)."""
    prefix = group + "."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
