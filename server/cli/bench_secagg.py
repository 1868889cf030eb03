"""Plain vs SecAgg+ rounds on the quick demo world: seconds per round and the aggregate's error.

Figures, not a test (README "Secure aggregation"): ``python -m fedvlp.server.cli.bench_secagg [rounds]``.
"""

from __future__ import annotations

from typing import Any

from fedvlp.core.config import RunConfig

__all__ = ["bench"]


def bench(rounds: int = 3, local_steps: int = 3) -> dict[str, float]:
    """Plain vs SecAgg+ on the quick demo world with the tiny model: figures, not a test.

    Returns the steady-state round seconds of both modes (round 1, with process start-up,
    left out), the overhead, and the largest deviation of the SecAgg+ round-1 weights from the
    plain ones (both runs start from the same weights and see the same replies in round 1).
    """
    import os
    import tempfile
    from pathlib import Path

    from fedvlp.core.checkpoint import load_round
    from fedvlp.core.config import project_root
    from fedvlp.core.data.synthetic import WorldSpec, generate_world
    from fedvlp.core.runtime import offline_env, state_dir
    from fedvlp.server.app import round_summary

    from .simulation import simulate

    offline_env(threads_per_client=1)
    world = state_dir() / "demo-quick"
    generate_world(world, WorldSpec.quick())
    os.environ["FEDVLP_DEMO_DATA"] = str(world)
    out = Path(tempfile.mkdtemp(prefix="fedvlp-secagg-bench-"))
    base = RunConfig(
        sites=str(project_root() / "sites" / "demo"),
        model_size="tiny",
        image_size=32,
        batch_size=16,
        rounds=rounds,
        local_steps=local_steps,
        update_norm_factor=0.0,
    )
    histories: dict[str, list[dict[str, Any]]] = {}
    for mode in ("off", "secagg+"):
        run = base.replace(secure_aggregation=mode, out_dir=str(out / mode.replace("+", "")))
        histories[mode] = []
        simulate(run, on_round=histories[mode].append)
    start = load_round(out / "off" / "checkpoints", 0).weights
    plain = load_round(out / "off" / "checkpoints", 1).weights
    secure = load_round(out / "secagg" / "checkpoints", 1).weights
    errors = [
        float((secure[k].double() - plain[k].double()).abs().max()) for k in start if start[k].is_floating_point()
    ]
    updates = [
        float((plain[k].double() - start[k].double()).abs().max()) for k in start if start[k].is_floating_point()
    ]
    plain_s, secure_s = round_summary(histories["off"]), round_summary(histories["secagg+"])
    return {
        "plain-round-seconds": plain_s["round-seconds"],
        "secagg-round-seconds": secure_s["round-seconds"],
        "secagg-overhead-seconds": secure_s["round-seconds"] - plain_s["round-seconds"],
        "plain-other-seconds": plain_s["round-other-seconds"],
        "secagg-other-seconds": secure_s["round-other-seconds"],
        "round1-max-abs-error": max(errors),
        "round1-max-abs-update": max(updates),
        "quantisation-step": 2 * base.secagg_clipping_range / base.secagg_quantization_range,
    }


if __name__ == "__main__":  # python -m fedvlp.server.cli.bench_secagg [rounds]
    import sys

    for name, value in bench(int(sys.argv[1]) if len(sys.argv) > 1 else 3).items():
        print(f"{name}: {value:.6g}")
