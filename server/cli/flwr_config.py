"""Write the SuperLink connections of ``flwr run`` into ``$FLWR_HOME/config.toml``.

Flower 1.41 no longer reads federations from ``pyproject.toml``: ``flwr run <app> <name>``
looks up the connection ``<name>`` in the Flower configuration file
``$FLWR_HOME/config.toml`` (``~/.flwr/config.toml`` by default)::

    [superlink]
    default = "local-sim"

    [superlink.local-sim]
    address = ":local:"

    [superlink.local-deployment]
    address = "127.0.0.1:9093"
    insecure = true

The size and resources of the simulated federation no longer belong in the connection: Flower
1.41 warns that ``options.`` fields there are deprecated and wants them per run, as
``flwr run . local-sim --federation-config FILE``, where FILE is a TOML file of
``SimulationConfig`` fields; this module writes it next to ``config.toml``
(:func:`federation_config_path`)::

    num-supernodes = 3
    client-resources-num-cpus = 1
    client-resources-num-gpus = 0.3333

``address = ":local:"`` makes ``flwr run`` start (once, detached) a local simulation
SuperLink listening on ``127.0.0.1:39091`` (``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT``) and
``127.0.0.1:39093`` (``FLWR_LOCAL_CONTROL_API_PORT``); it keeps running after the run (with
the ``flower-superexec`` it starts, which exits with it: ``fedvlp flwr-config --stop``
stops it, see :func:`stop_local_superlink`) and keeps its state and log in
``$FLWR_HOME/local-superlink/``. Any other address is the SuperLink's HTTP API
(``flower-superlink --host H --port P``), which in Flower 1.41 serves the Control, Fleet and
ServerApp runtime APIs on that single port.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

__all__ = [
    "write_flwr_config",
    "federation_config_path",
    "local_superlink_pids",
    "stop_local_superlink",
    "SIM_CONNECTION",
    "DEPLOYMENT_CONNECTION",
    "CONFIG_FILE",
    "FEDERATION_CONFIG_FILE",
]

SIM_CONNECTION = "local-sim"
DEPLOYMENT_CONNECTION = "local-deployment"
CONFIG_FILE = "config.toml"
FEDERATION_CONFIG_FILE = "local-sim-federation.toml"


def federation_config_path(flwr_home: Path) -> Path:
    """The ``--federation-config`` file of ``flwr run . local-sim`` that :func:`write_flwr_config` writes."""
    return Path(flwr_home).expanduser() / FEDERATION_CONFIG_FILE


# What Flower writes itself the first time any `flwr` command runs without a config file
# (flwr.cli.constant.DEFAULT_FLOWER_CONFIG_TOML); kept so that `flwr run . local` still works.
_FLOWER_DEFAULTS: dict[str, Any] = {
    "superlink": {
        "default": "local",
        "supergrid": {"address": "api.flower.ai"},
        "local": {"address": ":local:"},
    }
}


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (Flower writes connections with dotted keys)."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


_QUOTED_DOTTED_KEY = re.compile(r'^"([A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)+)"(\s*=)', re.MULTILINE)


def _dumps(document: Mapping[str, Any]) -> str:
    """TOML text in Flower's own layout: one table per connection, dotted option keys."""
    superlink = dict(document.get("superlink", {}))
    for name, connection in list(superlink.items()):
        if isinstance(connection, Mapping):
            superlink[name] = _flatten(connection)
    text = tomli_w.dumps({**document, "superlink": superlink})
    # tomli_w quotes keys that contain dots; bare dotted keys are nested tables again.
    return _QUOTED_DOTTED_KEY.sub(r"\1\2", text)


def write_flwr_config(
    flwr_home: Path,
    *,
    num_supernodes: int = 3,
    superlink: str = "127.0.0.1:9093",
    root_certificates: Path | None = None,
    gpus_per_client: float = 0.0,
) -> Path:
    """Write (or update) ``flwr_home/config.toml`` with fedvlp's two SuperLink connections.

    ``local-sim`` runs the federation in Flower's local simulation runtime and becomes the
    default connection; its size and resources (one virtual SuperNode per site, one CPU and
    ``gpus_per_client`` GPU each) go to :func:`federation_config_path`, the file that
    ``flwr run . local-sim --federation-config FILE`` reads.
    ``local-deployment`` points at a SuperLink that you started yourself
    (``flower-superlink``, see ``docs/deployment.md``). Other connections and settings
    already in the file are kept; these two are replaced.

    Parameters
    ----------
    flwr_home : Path
        The Flower home folder (what ``FLWR_HOME`` must point to when ``flwr`` runs).
        Created when missing.
    num_supernodes : int, default 3
        Virtual SuperNodes of the simulation; use the number of site files of the run
        (a node with ``partition-id`` beyond the last site file fails its rounds).
    superlink : str, default "127.0.0.1:9093"
        ``host:port`` of the SuperLink's HTTP API, i.e. ``--host``/``--port`` of
        ``flower-superlink`` (Flower 1.41 serves Control, Fleet and runtime APIs there).
    root_certificates : Path or None, default None
        PEM file of the CA that signed the SuperLink's certificate. ``None`` writes an
        insecure (plain HTTP) connection; otherwise the connection uses TLS and stores the
        absolute path of this file (Flower rejects relative paths).
    gpus_per_client : float, default 0.0
        Ray's GPU share of each virtual SuperNode (``fedvlp flwr-config`` passes
        GPUs / supernodes, at most 1, when GPUs are visible).

    Returns
    -------
    Path
        The written ``config.toml``.

    Raises
    ------
    ValueError
        When ``num_supernodes`` < 1, ``superlink`` is not ``host:port``, the existing file is
        not valid TOML, ``root_certificates`` does not exist, or ``gpus_per_client`` is not
        in [0, 1].
    """
    if (
        isinstance(gpus_per_client, bool)
        or not isinstance(gpus_per_client, (int, float))
        or not 0.0 <= gpus_per_client <= 1.0
    ):
        raise ValueError(f"gpus_per_client: expected a share of one GPU between 0 and 1, got {gpus_per_client!r}")
    if isinstance(num_supernodes, bool) or not isinstance(num_supernodes, int) or num_supernodes < 1:
        raise ValueError(f"num_supernodes: expected an integer >= 1, got {num_supernodes!r}")
    host, sep, port = superlink.rpartition(":")
    if not sep or not host or not port.isdigit() or "://" in superlink:
        raise ValueError(f"superlink: expected 'host:port' without a scheme, got {superlink!r}")
    flwr_home = Path(flwr_home).expanduser()
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / CONFIG_FILE

    if path.is_file():
        try:
            document: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path}: not valid TOML ({err}); fix or remove it") from err
    else:
        document = {
            "superlink": {k: (dict(v) if isinstance(v, dict) else v) for k, v in _FLOWER_DEFAULTS["superlink"].items()}
        }
    connections = document.setdefault("superlink", {})
    if not isinstance(connections, dict):
        raise ValueError(f"{path}: 'superlink' must be a table, got {type(connections).__name__}")

    # No `options.` here: Flower 1.41 warns at every `flwr run` that they are deprecated.
    connections[SIM_CONNECTION] = {"address": ":local:"}
    deployment: dict[str, Any] = {"address": superlink}
    if root_certificates is None:
        deployment["insecure"] = True
    else:
        ca = Path(root_certificates).expanduser().resolve()
        if not ca.is_file():
            raise ValueError(f"root_certificates: expected an existing PEM file, got {str(root_certificates)!r}")
        deployment["root-certificates"] = str(ca)
    connections[DEPLOYMENT_CONNECTION] = deployment
    # `default` first, as Flower writes it.
    document["superlink"] = {"default": SIM_CONNECTION, **{k: v for k, v in connections.items() if k != "default"}}

    _write_atomic(path, _dumps(document))
    # Keys are SimulationConfig's fields with dashes (flwr.cli.run: `-` -> `_`); Flower takes
    # CPUs as an integer and the GPU share as a float.
    federation = {
        "num-supernodes": num_supernodes,
        "client-resources-num-cpus": 1,
        "client-resources-num-gpus": float(gpus_per_client),
    }
    _write_atomic(federation_config_path(flwr_home), tomli_w.dumps(federation))
    return path


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def local_superlink_pids(flwr_home: Path) -> list[int]:
    """PIDs of the local SuperLinks that ``flwr run . local-sim`` left running for ``flwr_home``.

    ``flwr run`` starts ``flower-superlink --simulation`` detached (own session) and keeps it
    for the next run; it writes its log to ``$FLWR_HOME/local-superlink/superlink.log``, which
    is how it is told apart from other SuperLinks. Its ``flower-superexec`` watches its parent
    and exits with it. Linux only (reads ``/proc``); an empty list elsewhere.
    """
    log_file = str(Path(flwr_home).expanduser().resolve() / "local-superlink" / "superlink.log")
    found: list[int] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0")]
        except OSError:  # gone, or not ours to read
            continue
        if any(Path(a).name == "flower-superlink" for a in argv[:2]) and log_file in argv:
            found.append(int(entry.name))
    return sorted(found)


def stop_local_superlink(flwr_home: Path, timeout: float = 10.0) -> list[int]:
    """Stop (SIGTERM, then SIGKILL after ``timeout`` s) the local SuperLinks of ``flwr_home``.

    Returns
    -------
    list[int]
        The PIDs that were running.
    """
    import signal
    import time

    pids = local_superlink_pids(flwr_home)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() and not _zombie(pid) for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        if Path(f"/proc/{pid}").exists() and not _zombie(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return pids


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
