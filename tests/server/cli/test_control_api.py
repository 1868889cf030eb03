"""Only the operator reaches the Control API (issue 12, item 12).

A TLS SuperLink with SuperNode authentication listens on 127.0.0.1; the Fleet gateway
(``fedvlp.server.cli.gateway``) is the address hospitals reach. A stranger holding the CA
certificate and a fresh key, who reaches only the gateway, can neither register a SuperNode
key nor start a run; a registered hospital trains a round through the same gateway.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedvlp.core.config import project_root
from fedvlp.server.cli.flwr_config import write_flwr_config
from fedvlp.server.cli.gateway import is_forwarded
from fedvlp.server.cli.local_federation import BIN, LocalFederation, flwr_env, free_ports, wait_for_port
from fedvlp.server.cli.operator import make_certificates, make_node_keys

SITES = Path(__file__).resolve().parents[3] / "sites" / "demo"
REFUSED = "not served here: this address serves the Fleet API only"  # what flwr prints of the gateway's 404


@pytest.mark.parametrize(
    ("path", "forwarded"),
    [
        ("/v1/fleet/pull-messages", True),
        ("/health", True),
        ("/v1/control/register-node", False),
        ("/v1/control/start-run", False),
        ("/v1/fleet/../control/start-run", False),
        ("/", False),
        ("/v1/serverappio/pull", False),
    ],
)
def test_only_fleet_paths_are_forwarded(path: str, forwarded: bool) -> None:
    assert is_forwarded(path) is forwarded


@pytest.mark.slow
def test_a_stranger_at_the_fleet_address_cannot_register_a_node_or_start_a_run(world: Path, tmp_path: Path) -> None:
    certs = make_certificates(tmp_path / "certs", ["127.0.0.1"])
    keys = {k.name: k for k in make_node_keys(tmp_path / "keys", ["hospital_a", "stranger"])}
    fed = LocalFederation(tmp_path, ca_cert=certs.ca_cert, extra_env={"FEDVLP_DEMO_DATA": str(world)})
    gateway_port = free_ports(1)[0]
    gateway = f"127.0.0.1:{gateway_port}"
    stranger_home = tmp_path / "stranger"
    write_flwr_config(stranger_home, superlink=gateway, root_certificates=certs.ca_cert)
    stranger_env = flwr_env(stranger_home)

    def stranger(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "flwr"), *args], env=stranger_env, cwd=tmp_path, capture_output=True, text=True, timeout=120
        )

    try:
        fed.start_superlink(certs={"ca": certs.ca_cert, "cert": certs.server_cert, "key": certs.server_key}, auth=True)
        proc = fed._start(
            "gateway",
            [
                sys.executable,
                "-m",
                "fedvlp.server.cli.gateway",
                "--host",
                "127.0.0.1",
                "--port",
                str(gateway_port),
                "--upstream",
                f"https://{fed.address}",
                "--ssl-ca-certfile",
                str(certs.ca_cert),
                "--ssl-certfile",
                str(certs.server_cert),
                "--ssl-keyfile",
                str(certs.server_key),
            ],
        )
        wait_for_port(gateway_port, proc, fed.logs / "gateway.log")
        # The operator registers hospital_a at the SuperLink's own address (127.0.0.1).
        res = fed.flwr(
            "supernode",
            "register",
            str(keys["hospital_a"].public_key),
            "local-deployment",
            "--name",
            "hospital_a",
            "--format",
            "json",
        )
        assert res.returncode == 0, res.stdout + res.stderr
        hospital_a = int(json.loads(res.stdout[res.stdout.index("{") :])["node-id"])

        # The stranger, at the gateway: no registration, no run, no list.
        res = stranger(
            "supernode", "register", str(keys["stranger"].public_key), "local-deployment", "--name", "stranger"
        )
        # refused by the gateway's 404, not by a TLS or connection failure
        assert res.returncode != 0 and REFUSED in res.stdout + res.stderr, res.stdout + res.stderr
        res = stranger("run", str(project_root()), "local-deployment", "--run-config", 'model-size="tiny" rounds=1')
        assert res.returncode != 0 and REFUSED in res.stdout + res.stderr, res.stdout + res.stderr
        assert stranger("ls", "local-deployment").returncode != 0
        assert [int(n["node-id"]) for n in fed.node_list()] == [hospital_a]
        runs = fed.flwr("ls", "local-deployment", "--format", "json")
        assert runs.returncode == 0 and json.loads(runs.stdout[runs.stdout.index("{") :])["runs"] == [], runs.stdout

        # hospital_a reaches the SuperLink through the gateway only, and trains a round.
        fed.address, link = gateway, fed.address
        try:
            fed.start_supernode("hospital_a", SITES / "hospital_a.yaml", key=keys["hospital_a"].private_key)
        finally:
            fed.address = link
        fed.wait_worker_ready("hospital_a")
        out = tmp_path / "run"
        fed.run(
            'model-size="tiny" image-size=32 rounds=1 local-steps=2 batch-size=8 min-nodes=1 round-timeout=120 '
            f"out-dir={json.dumps(str(out))}"
        )
        fed.wait_round(out / "checkpoints", 1, watch=("superlink", "gateway", "hospital_a"))
        record = json.loads((out / "checkpoints" / "round_0001.json").read_text())["history"][-1]
        assert record["replies"] == 1 and [s["node_id"] for s in record["sites"]] == [hospital_a]
    finally:
        fed.stop()
