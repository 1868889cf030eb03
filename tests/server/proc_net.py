"""Listening sockets of a process tree, read from Linux /proc (for tests of what binds where)."""

from __future__ import annotations

import os
import re
import socket
import struct
from pathlib import Path

__all__ = ["listening_sockets", "descendants", "sockets_of"]


def listening_sockets() -> dict[str, tuple[str, int]]:
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


def descendants(root: int) -> set[int]:
    """Every process below ``root`` (children, grandchildren, ...)."""
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


def sockets_of(pid: int, listening: dict[str, tuple[str, int]]) -> list[tuple[str, int]]:
    """The (address, port) pairs of ``listening`` that process ``pid`` holds open."""
    out = []
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            match = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(f"/proc/{pid}/fd/{fd}"))
            if match and match.group(1) in listening:
                out.append(listening[match.group(1)])
    except OSError:
        pass
    return out
