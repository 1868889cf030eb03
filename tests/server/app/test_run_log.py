"""Per-site round metrics by site name: name resolution, JSONL rows, TensorBoard events, and one
real 2-round simulation of the 3 demo sites whose logs are read back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from flwr.proto.node_pb2 import NodeInfo

from fedvlp.core.config import RunConfig
from fedvlp.server.app.run_log import SITE_LOG, log_round, resolve_site_names, site_rows
from fedvlp.server.cli.run_report import load_site_log, plot_run
from tests.conftest import DEMO_SITES

SIMULATED = 1e300  # the heartbeat interval Flower's simulation engine gives its virtual nodes


def test_registered_names_are_used() -> None:
    nodes = [
        NodeInfo(node_id=7, name="hospital_x", heartbeat_interval=30.0),
        NodeInfo(node_id=9, name="hospital_y", heartbeat_interval=30.0),
    ]
    assert resolve_site_names(nodes, str(DEMO_SITES)) == {7: "hospital_x", 9: "hospital_y"}


def test_simulated_nodes_take_site_files_in_registration_order() -> None:
    # node ids are random; partition i is the i-th node registered and trains the i-th site file
    nodes = [
        NodeInfo(node_id=500, registered_at="2026-12-01T00:00:00.000300+00:00", heartbeat_interval=SIMULATED),
        NodeInfo(node_id=100, registered_at="2026-12-01T00:00:00.000200+00:00", heartbeat_interval=SIMULATED),
        NodeInfo(node_id=300, registered_at="2026-12-01T00:00:00.000100+00:00", heartbeat_interval=SIMULATED),
    ]
    assert resolve_site_names(nodes, str(DEMO_SITES)) == {300: "hospital_a", 100: "hospital_b", 500: "hospital_c"}


def test_unnamed_real_nodes_fall_back_to_node_ids() -> None:
    # a self-registered SuperNode (no --enable-supernode-auth) has no name; order says nothing
    nodes = [NodeInfo(node_id=42, heartbeat_interval=30.0)]
    assert resolve_site_names(nodes, str(DEMO_SITES)) == {42: "node-42"}


def test_a_name_held_twice_gets_node_ids() -> None:
    nodes = [
        NodeInfo(node_id=1, name="h", heartbeat_interval=30.0),
        NodeInfo(node_id=2, name="h", heartbeat_interval=30.0),
    ]
    assert resolve_site_names(nodes, None) == {1: "h@1", 2: "h@2"}


def test_site_rows_carry_metrics_counts_and_bytes() -> None:
    record = {
        "round": 3,
        "sites": [{"node_id": 11, "counts": {"image": 16}, "metrics": {"loss/mim": 0.5, "steps": 2.0}, "bytes": 1024}],
    }
    assert site_rows(record, {11: "hospital_b"}) == [
        {
            "round": 3,
            "site": "hospital_b",
            "node_id": 11,
            "metrics": {"loss/mim": 0.5, "steps": 2.0},
            "counts": {"image": 16},
            "bytes": 1024,
        }
    ]


class _Nodes:
    """The one Grid method log_round asks: the SuperLink's NodeInfo of the run's nodes."""

    def __init__(self, *nodes: NodeInfo) -> None:
        self.nodes = nodes

    def get_nodes(self) -> tuple[NodeInfo, ...]:
        return self.nodes


def test_a_resumed_run_drops_the_rows_of_rounds_it_runs_again(tmp_path: Path) -> None:
    # a server killed after logging round 2 but before checkpointing it resumes at round 2
    path = tmp_path / SITE_LOG
    path.write_text(
        '{"round": 1, "site": "h", "metrics": {"loss/mlm": 3.0}}\n{"round": 2, "site": "h", "metrics": {"loss/mlm": '
        "2.0}}\n"
    )
    record = {"round": 2, "sites": [{"node_id": 5, "metrics": {"loss/mlm": 1.5}}], "rejected": []}
    log_round(_Nodes(NodeInfo(node_id=5, name="h", heartbeat_interval=30.0)), RunConfig(out_dir=str(tmp_path)), record)
    assert [(r["round"], r["metrics"]["loss/mlm"]) for r in map(json.loads, path.read_text().splitlines())] == [
        (1, 3.0),
        (2, 1.5),
    ]
    assert record["sites"][0]["site"] == "h"


# ---------------------------------------------------------------- one real simulation


@pytest.fixture(scope="module")
def simulated(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[dict]]]:
    """A 2-round tiny simulation of the 3 demo sites; its run folder and checkpoint history."""
    from fedvlp.core.checkpoint import load_latest
    from fedvlp.server.cli.simulation import simulate

    out = tmp_path_factory.mktemp("watched") / "run"
    run = RunConfig(
        model_size="tiny", image_size=32, rounds=2, local_steps=2, batch_size=8, out_dir=str(out), sites=str(DEMO_SITES)
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEDVLP_DEMO_DATA", str(world))
        simulate(run)
    latest = load_latest(out / "checkpoints")
    assert latest is not None
    yield out, latest.state["history"]


@pytest.mark.slow
def test_site_log_has_one_row_per_round_and_demo_site_with_the_round_values(simulated: tuple[Path, list[dict]]) -> None:
    out, history = simulated
    rows = [json.loads(line) for line in (out / SITE_LOG).read_text().splitlines()]
    assert sorted((r["round"], r["site"]) for r in rows) == [
        (r, s) for r in (1, 2) for s in ("hospital_a", "hospital_b", "hospital_c")
    ]
    for record in history:
        for site in record["sites"]:
            row = next(r for r in rows if r["round"] == record["round"] and r["node_id"] == site["node_id"])
            assert row["site"] == site["site"] and row["metrics"] == site["metrics"] and row["counts"] == site["counts"]
    # the names belong to the right data: B holds images only, C reports only
    uploads = {r["site"]: set(r["counts"]) for r in rows if r["round"] == 1}
    assert uploads["hospital_b"] == {"image", "head.mim"} and uploads["hospital_c"] == {"text", "head.mlm"}
    assert "loss/contrastive" in next(r for r in rows if r["site"] == "hospital_a")["metrics"]


@pytest.mark.slow
def test_tensorboard_events_hold_the_same_values(simulated: tuple[Path, list[dict]]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = simulated
    rows = load_site_log(out / SITE_LOG)
    assert sorted(p.name for p in (out / "tensorboard").iterdir()) == [
        "hospital_a",
        "hospital_b",
        "hospital_c",
        "server",
    ]
    for site in ("hospital_a", "hospital_b", "hospital_c"):
        events = EventAccumulator(str(out / "tensorboard" / site))
        events.Reload()
        mine = [r for r in rows if r["site"] == site]
        for metric in mine[0]["metrics"]:
            logged = [(e.step, e.value) for e in events.Scalars(metric)]
            # TensorBoard stores float32
            assert logged == [(r["round"], pytest.approx(r["metrics"][metric], rel=1e-6)) for r in mine]
    server = EventAccumulator(str(out / "tensorboard" / "server"))
    server.Reload()
    assert [(e.step, e.value) for e in server.Scalars("round/replies")] == [(1, 3.0), (2, 3.0)]


@pytest.mark.slow
def test_report_plots_the_simulated_losses(simulated: tuple[Path, list[dict]], tmp_path: Path) -> None:
    out, history = simulated
    report = plot_run(out, tmp_path)
    assert report.files["loss"] == tmp_path / "loss.png" and report.files["loss"].stat().st_size > 0
    expected = {
        name: [(r["round"], s["metrics"]["loss/total"]) for r in history for s in r["sites"] if s["site"] == name]
        for name in ("hospital_a", "hospital_b", "hospital_c")
    }
    assert report.series["loss"]["loss/total"] == expected
