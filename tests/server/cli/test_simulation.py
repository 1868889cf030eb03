"""Real runs of Flower's simulation engine: 3 demo sites, tiny models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedvlp.core.checkpoint import load_latest
from fedvlp.core.config import RunConfig
from fedvlp.core.params import group_of
from tests.conftest import CXR_DATA, needs_cxr
from tests.server.proc_net import descendants, listening_sockets, sockets_of

pytestmark = pytest.mark.slow


def _changed_groups(folder: Path, a: int, b: int) -> set[str]:
    first = load_file(str(folder / f"round_{a:04d}.safetensors"))
    second = load_file(str(folder / f"round_{b:04d}.safetensors"))
    return {group_of(k) for k in first if not torch.equal(first[k], second[k])}


def test_three_sites_two_rounds_train_both_encoders_with_ray_on_loopback_only(
    demo_env: Path, tiny_run: RunConfig
) -> None:
    from fedvlp.server.cli.simulation import simulate

    records: list[dict] = []
    bound: list[tuple[int, str, int]] = []

    def on_round(record: dict) -> None:  # runs while Ray and its actors are up
        records.append(record)
        listening = listening_sockets()
        for pid in descendants(os.getpid()):
            bound.extend((pid, address, port) for address, port in sockets_of(pid, listening))

    simulate(tiny_run, on_round=on_round)
    # Ray's GCS, raylet and actors listen on 127.0.0.1 only (never on every interface)
    assert len({pid for pid, _, _ in bound}) >= 3, bound
    assert {address for _, address, _ in bound} <= {"127.0.0.1", "::ffff:127.0.0.1"}, bound
    folder = Path(tiny_run.out_dir) / "checkpoints"
    assert [r["round"] for r in records] == [1, 2]
    assert all(r["replies"] == 3 and not r["rejected"] for r in records)
    changed = _changed_groups(folder, 0, 2)
    assert {"image", "text", "head.mlm", "head.mim", "head.contrastive", "head.matching"} <= changed
    # an image-only site uploads image groups only, a text-only site text groups only
    uploads = {frozenset(s["counts"]) for s in records[0]["sites"]}
    assert frozenset({"image", "head.mim"}) in uploads and frozenset({"text", "head.mlm"}) in uploads


def _simulate_cmd(run: RunConfig) -> list[str]:
    pairs = [f"{k}={json.dumps(v)}" for k, v in run.to_flat().items()]
    return [sys.executable, "-m", "fedvlp.server.cli", "simulate", "--run-config", *pairs]


def test_a_killed_server_resumes_over_a_damaged_round_with_identical_weights(
    demo_env: Path, tiny_run: RunConfig, tmp_path: Path
) -> None:
    """Kill -9 mid-run, flip one bit of the newest round, restart: the run redoes the damaged
    round and ends bit-identical to an uninterrupted run, FedAdam's moments included."""
    env = {**os.environ, "FEDVLP_DEMO_DATA": os.environ["FEDVLP_DEMO_DATA"]}
    # rounds long enough to kill one midway; FedAdam so that the server's own state must resume too
    slow = tiny_run.replace(local_steps=15, server_optimizer="fedadam", server_lr=0.01)
    reference = slow.replace(rounds=3, out_dir=str(tmp_path / "reference"))
    subprocess.run(_simulate_cmd(reference), env=env, check=True, timeout=600, capture_output=True)

    resumed = slow.replace(rounds=3, out_dir=str(tmp_path / "resumed"))
    folder = Path(resumed.out_dir) / "checkpoints"
    proc = subprocess.Popen(
        _simulate_cmd(resumed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            latest = load_latest(folder) if (folder / "latest.json").exists() else None
            if latest is not None and latest.round >= 1:
                break
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    killed_at = load_latest(folder)
    assert killed_at is not None and 1 <= killed_at.round < 3
    damaged = folder / f"round_{killed_at.round:04d}.safetensors"
    data = bytearray(damaged.read_bytes())
    data[-3] ^= 0x40  # one bit of the last tensor's data: the header still parses, the checksum does not
    damaged.write_bytes(bytes(data))
    done = subprocess.run(_simulate_cmd(resumed), env=env, check=True, timeout=600, capture_output=True, text=True)
    assert f"resuming from round {killed_at.round - 1}" in done.stdout + done.stderr

    final = load_latest(folder)
    expected = load_latest(Path(reference.out_dir) / "checkpoints")
    assert final is not None and expected is not None and final.round == expected.round == 3
    assert [r["round"] for r in final.state["history"]] == [1, 2, 3]
    assert expected.weights.keys() == final.weights.keys()
    assert all(torch.equal(final.weights[k], expected.weights[k]) for k in expected.weights)
    assert expected.extra and expected.extra.keys() == final.extra.keys()
    assert all(torch.equal(expected.extra[k], final.extra[k]) for k in expected.extra)
    # moments exist only for parameters someone trained; every round was a step for them
    assert {int(v) for k, v in expected.extra.items() if k.startswith("t.")} == {3}


@needs_cxr()
@pytest.mark.data
def test_the_real_cxr_federation_runs_a_round(
    tiny_run: RunConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedvlp.core.config import load_site, project_root
    from fedvlp.core.data.manifest import load_source_rows
    from fedvlp.core.data.tokenizer import build_vocab
    from fedvlp.server.cli.simulation import simulate

    monkeypatch.setenv("FEDVLP_CXR_DATA", str(CXR_DATA))
    sites = project_root() / "sites" / "cxr"
    reports = load_source_rows(load_site(sites / "reports_only.yaml").sources[0]).reports or []
    vocab = build_vocab(reports, tmp_path / "vocab", vocab_size=3000)
    run = tiny_run.replace(sites=str(sites), tokenizer=str(vocab.parent), rounds=1, local_steps=2)
    records: list[dict] = []
    simulate(run, on_round=records.append)
    counts = sorted(tuple(sorted(s["counts"].items())) for s in records[0]["sites"])
    assert records[0]["replies"] == 3
    assert (("head.mim", 1000), ("image", 1000)) in counts  # NIH images only
    assert (("head.mlm", 3425), ("text", 3425)) in counts  # IU reports with a findings section
