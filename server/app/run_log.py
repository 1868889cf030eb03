"""A run you can watch: per-round, per-site metrics keyed by site name, and their plots.

After every round the ServerApp calls :func:`log_round`, which

* resolves each replying node to a **site name** on the server side (replies carry no strings):
  the name the operator registered the node under (``flwr supernode register --name NAME``);
  in Flower's simulation engine, the site file whose partition id the node holds (the engine
  registers node ``i`` for partition ``i``, in order, and partition ``i`` is the ``i``-th site
  file, see ``client/app.py``); otherwise ``node-<id>``;
* appends one JSON line per (round, site) to ``<out-dir>/site_metrics.jsonl`` (always);
* writes the same values as TensorBoard scalars under ``<out-dir>/tensorboard/<site>/`` (one
  TensorBoard run per site, so curves overlay with the site as legend; round-level figures go
  to ``tensorboard/server/``) when the ``tensorboard`` package is installed (extra ``watch``).

Reading the log back and plotting it (``fedvlp report``) is :mod:`fedvlp.server.cli.run_report`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fedvlp.core.config import list_site_files, resolve_path

__all__ = [
    "SITE_LOG",
    "TENSORBOARD_DIR",
    "log_round",
    "resolve_site_names",
    "row_scalars",
    "site_rows",
]

log = logging.getLogger("fedvlp.server")

SITE_LOG = "site_metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
SERVER_RUN = "server"  # the TensorBoard run of round-level figures

# Flower's simulation engine registers its virtual SuperNodes with heartbeats disabled
# (flwr.common.constant.HEARTBEAT_INTERVAL_INF); real SuperNodes send heartbeats.
_SIMULATED_HEARTBEAT = 1e300


def _site_file_name(path: Path) -> str:
    """The ``name:`` of a site file, or its stem (the server may lack the site's data paths)."""
    try:
        name = (yaml.safe_load(path.read_text()) or {}).get("name")
    except (OSError, yaml.YAMLError, AttributeError):
        name = None
    return str(name) if name else path.stem


def resolve_site_names(nodes: Iterable[Any], sites: str | None) -> dict[int, str]:
    """Map node ids to site names.

    Parameters
    ----------
    nodes
        Flower ``NodeInfo`` records (``grid.get_nodes()``): ``node_id``, and where known
        ``name`` (set by ``flwr supernode register --name``), ``registered_at`` and
        ``heartbeat_interval``.
    sites
        The run's ``sites`` folder; in simulation, partition ``i`` trains its ``i``-th file.

    Returns
    -------
    dict[int, str]
        A name for every node: the registered name; in simulation the site file's name; else
        ``node-<id>``. A name held by two nodes gets ``@<node id>`` appended on both.
    """
    infos = list(nodes)
    names: dict[int, str] = {}
    simulated = [
        n for n in infos if not getattr(n, "name", "") and getattr(n, "heartbeat_interval", 0.0) >= _SIMULATED_HEARTBEAT
    ]
    if simulated and sites:
        try:
            files = list_site_files(sites)
        except Exception:  # the server may not see the sites folder: fall back to node ids
            files = []
        if len(simulated) <= len(files):
            # registered_at is the engine's registration order, i.e. the partition id order
            for pid, info in enumerate(sorted(simulated, key=lambda n: (getattr(n, "registered_at", ""), n.node_id))):
                names[int(info.node_id)] = _site_file_name(files[pid])
    for info in infos:
        node = int(info.node_id)
        if node not in names:
            names[node] = str(getattr(info, "name", "") or f"node-{node}")
    counts: dict[str, int] = {}
    for name in names.values():
        counts[name] = counts.get(name, 0) + 1
    return {node: (f"{name}@{node}" if counts[name] > 1 else name) for node, name in names.items()}


def site_rows(record: Mapping[str, Any], names: Mapping[int, str]) -> list[dict[str, Any]]:
    """The JSONL rows of one round record of ``server/app/rounds.py`` (one per accepted reply).

    Each row: ``round``, ``site``, ``node_id``, ``metrics`` (the reply's MetricRecord: losses,
    alignment metrics, train-seconds, steps, skips), ``counts`` (samples per parameter group)
    and ``bytes`` (upload size) where the round mode reports them.
    """
    rows = []
    for site in record.get("sites", []):
        node = int(site["node_id"])
        row: dict[str, Any] = {
            "round": int(record["round"]),
            "site": names.get(node, f"node-{node}"),
            "node_id": node,
            "metrics": {k: float(v) for k, v in site.get("metrics", {}).items()},
        }
        if "counts" in site:
            row["counts"] = {k: int(v) for k, v in site["counts"].items()}
        if "bytes" in site:
            row["bytes"] = int(site["bytes"])
        rows.append(row)
    return rows


def row_scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """Every plotted/logged value of a row, by tag: metrics as named, ``samples/<group>``, ``upload-bytes``."""
    values = dict(row.get("metrics", {}))
    values.update({f"samples/{group}": float(n) for group, n in row.get("counts", {}).items()})
    if "bytes" in row:
        values["upload-bytes"] = float(row["bytes"])
    return values


@dataclass
class _RunLog:
    """Open logs of one run folder inside the ServerApp process."""

    out_dir: Path
    first_round: int
    names: dict[int, str] = field(default_factory=dict)
    writers: dict[str, Any] = field(default_factory=dict)
    tensorboard: bool = True

    def writer(self, run_name: str) -> Any | None:
        if not self.tensorboard:
            return None
        if run_name not in self.writers:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.tensorboard = False
                log.info(
                    "TensorBoard logs off: install the `watch` extra (pip install 'fedvlp[watch]'); %s is written",
                    SITE_LOG,
                )
                return None
            # purge_step hides events of rounds a killed server logged but did not checkpoint
            self.writers[run_name] = SummaryWriter(
                str(self.out_dir / TENSORBOARD_DIR / run_name), purge_step=self.first_round
            )
        return self.writers[run_name]


_OPEN: dict[Path, _RunLog] = {}


def _open(out_dir: Path, first_round: int) -> _RunLog:
    state = _OPEN.get(out_dir)
    if state is None or first_round <= state.first_round:
        if state is not None:  # the same folder run again in this process
            for writer in state.writers.values():
                writer.close()
        path = out_dir / SITE_LOG
        if path.exists():  # resumed: drop rows of rounds that will be run again
            kept = [
                line
                for line in path.read_text().splitlines()
                if line.strip() and json.loads(line)["round"] < first_round
            ]
            path.write_text("".join(line + "\n" for line in kept))
        state = _OPEN[out_dir] = _RunLog(out_dir, first_round)
    return state


def log_round(grid: Any, run: Any, record: dict[str, Any]) -> None:
    """Log a finished round record of ``server/app/rounds.py`` by site name (JSONL and TensorBoard).

    Also writes the resolved name into each of ``record["sites"]`` as ``site`` so that the
    checkpoint's round history names the sites too. Failures to write are logged, never fatal:
    watching a run must not stop it.
    """
    out_dir = resolve_path(run.out_dir)
    try:
        state = _open(out_dir, int(record["round"]))
        seen = {int(s["node_id"]) for s in record.get("sites", [])}
        if not seen <= state.names.keys():  # a new or rejoined node: ask the SuperLink again
            state.names.update(resolve_site_names(grid.get_nodes(), getattr(run, "sites", None)))
        rows = site_rows(record, state.names)
        for site, row in zip(record.get("sites", []), rows):
            site["site"] = row["site"]
        out_dir.mkdir(parents=True, exist_ok=True)
        with (out_dir / SITE_LOG).open("a") as fh:
            fh.writelines(json.dumps(row, sort_keys=True) + "\n" for row in rows)
        step = int(record["round"])
        for row in rows:
            writer = state.writer(row["site"])
            if writer is None:
                break
            for tag, value in row_scalars(row).items():
                writer.add_scalar(tag, value, step)
            writer.flush()
        server = state.writer(SERVER_RUN)
        if server is not None:
            for tag in ("replies", "nodes", "seconds", "client-compute-seconds", "other-seconds"):
                if tag in record:
                    server.add_scalar(f"round/{tag}", float(record[tag]), step)
            server.add_scalar("round/rejected", float(len(record.get("rejected", []))), step)
            server.flush()
    except (OSError, ValueError) as err:
        log.warning("Round %s: could not write the site log in %s: %s", record.get("round"), out_dir, err)
