"""Write the SuperLink connections of ``flwr run`` into ``$FLWR_HOME/config.toml``.

Flower 1.41 no longer reads federations from ``pyproject.toml``: ``flwr run <app> <name>``
looks up the connection ``<name>`` in the Flower configuration file
``$FLWR_HOME/config.toml`` (``~/.flwr/config.toml`` by default)::

    [superlink]
    default = "local-sim"

    [superlink.local-sim]
    address = ":local:"
    options.num-supernodes = 3
    options.backend.client-resources.num-cpus = 1
    options.backend.client-resources.num-gpus = 0

    [superlink.local-deployment]
    address = "127.0.0.1:9093"
    insecure = true

``address = ":local:"`` makes ``flwr run`` start (once, detached) a local simulation
SuperLink listening on ``127.0.0.1:39091`` (``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT``) and
``127.0.0.1:39093`` (``FLWR_LOCAL_CONTROL_API_PORT``); it keeps running after the run and
keeps its state and log in ``$FLWR_HOME/local-superlink/``. Any other address is the
SuperLink's HTTP API (``flower-superlink --host H --port P``), which in Flower 1.41 serves
the Control, Fleet and ServerApp runtime APIs on that single port.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

__all__ = ["write_flwr_config", "SIM_CONNECTION", "DEPLOYMENT_CONNECTION", "CONFIG_FILE"]

SIM_CONNECTION = "local-sim"
DEPLOYMENT_CONNECTION = "local-deployment"
CONFIG_FILE = "config.toml"

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
) -> Path:
    """Write (or update) ``flwr_home/config.toml`` with fedvlp's two SuperLink connections.

    ``local-sim`` runs the federation in Flower's local simulation runtime (one virtual
    SuperNode per site, one CPU each, no GPU) and becomes the default connection.
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

    Returns
    -------
    Path
        The written ``config.toml``.

    Raises
    ------
    ValueError
        When ``num_supernodes`` < 1, ``superlink`` is not ``host:port``, the existing file is
        not valid TOML, or ``root_certificates`` does not exist.
    """
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
        document = {"superlink": {k: (dict(v) if isinstance(v, dict) else v) for k, v in _FLOWER_DEFAULTS["superlink"].items()}}
    connections = document.setdefault("superlink", {})
    if not isinstance(connections, dict):
        raise ValueError(f"{path}: 'superlink' must be a table, got {type(connections).__name__}")

    connections[SIM_CONNECTION] = {
        "address": ":local:",
        "options": {
            "num-supernodes": num_supernodes,
            "backend": {"client-resources": {"num-cpus": 1, "num-gpus": 0}},
        },
    }
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

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(_dumps(document), encoding="utf-8")
    os.replace(tmp, path)
    return path
