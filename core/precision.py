"""Whether local training runs its forward passes under bfloat16 autocast on a CPU.

bfloat16 pays on a CPU only where the hardware computes it: AVX512-BF16 or AMX tiles. Elsewhere
oneDNN emulates it and autocast *slows* a step down (EfficientNet-Lite0 at 128 px, forward +
backward, one thread: 1.9x slower than fp32 on an AVX512 Xeon without BF16, README "Speed
options"). ``cpu-autocast = "auto"`` therefore turns bf16 on only where it is native.
"""

from __future__ import annotations

from functools import lru_cache

import torch

__all__ = ["cpu_has_native_bf16", "cpu_autocast_enabled", "describe_cpu_autocast"]

# torch.cpu's probes of the instruction sets oneDNN uses for bfloat16 (private, hence looked up)
_NATIVE_BF16_PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """``True`` when this CPU has AVX512-BF16 or AMX (a torch without the probes answers ``False``)."""
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in _NATIVE_BF16_PROBES)


def cpu_autocast_enabled(mode: str) -> bool:
    """Whether run-config ``cpu-autocast = mode`` trains under bf16 autocast on this CPU.

    Parameters
    ----------
    mode
        ``"off"`` (never), ``"bf16"`` (always) or ``"auto"`` (where :func:`cpu_has_native_bf16`).

    Raises
    ------
    ValueError
        For any other mode.
    """
    if mode == "off":
        return False
    if mode == "bf16":
        return True
    if mode == "auto":
        return cpu_has_native_bf16()
    raise ValueError(f"cpu-autocast must be 'off', 'bf16' or 'auto', got {mode!r}")


def describe_cpu_autocast(mode: str) -> str:
    """One line for the logs: what ``mode`` does on this CPU, e.g. ``auto: fp32 (no native bfloat16)``."""
    enabled = cpu_autocast_enabled(mode)
    why = ""
    if mode == "auto":
        why = " (native bfloat16)" if enabled else " (no native bfloat16 on this CPU)"
    return f"{mode}: {'bf16' if enabled else 'fp32'}{why}"
