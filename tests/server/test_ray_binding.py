"""``fedvlp simulate`` starts Ray listening on 127.0.0.1 only (issue 12, item 14)."""

from __future__ import annotations

import os
import re
import socket
import struct
from pathlib import Path

import pytest
from fedvlp.core.config import RunConfig

pytestmark = pytest.mark.slow


def _listening() -> dict[str, tuple[str, int]]:
    """Socket inode -> (address, port) of every listening TCP socket (/proc/net/tcp, tcp6)."""
    out: dict[str, tuple[str, int]] = {}
    for path, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(path).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            hex_address, hex_port = fields[1].split(":")
            words = [int(hex_address[i : i + 8], 16) for i in range(0, len(hex_address), 8)]
            address = socket.inet_ntop(family, b"".join(struct.pack("<I", w) for w in words))
            out[fields[9]] = (address, int(hex_port, 16))
    return out


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in found]
        found.update(children)
        frontier.extend(children)
    return found


def _sockets_of(pid: int, listening: dict[str, tuple[str, int]]) -> list[tuple[str, int]]:
    out = []
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            match = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(f"/proc/{pid}/fd/{fd}"))
            if match and match.group(1) in listening:
                out.append(listening[match.group(1)])
    except OSError:
        pass
    return out


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux /proc")
def test_ray_listens_on_loopback_only(demo_env: Path, tiny_run: RunConfig) -> None:
    from fedvlp.server.simulation import simulate

    seen: list[tuple[int, str, int]] = []

    def probe(record: dict) -> None:  # runs while Ray and its actors are up
        listening = _listening()
        for pid in _descendants(os.getpid()):
            seen.extend((pid, address, port) for address, port in _sockets_of(pid, listening))

    simulate(tiny_run.replace(rounds=1), on_round=probe)
    assert len({pid for pid, _, _ in seen}) >= 3, seen  # GCS, raylet, actors
    assert {address for _, address, _ in seen} <= {"127.0.0.1", "::ffff:127.0.0.1"}, seen
