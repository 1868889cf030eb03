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
]

ENCODER_GROUPS = ("image", "text", "joint")

# RecordDict keys of train messages (server -> client) and replies (client -> server).
ARRAYS_KEY = "arrays"  # ArrayRecord: parameter name -> tensor
COUNTS_KEY = "group-counts"  # MetricRecord: group name -> samples that trained it
METRICS_KEY = "metrics"  # MetricRecord: scalar training metrics
CONFIG_KEY = "config"  # ConfigRecord: server round and other instructions
SITE_NAME_KEY = "site-name"  # ConfigRecord entry of a QUERY reply: the site's stable name (client sampling)


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
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
