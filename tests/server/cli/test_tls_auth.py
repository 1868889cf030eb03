"""A secure federation as docs/deployment.md sets it up: TLS and SuperNode authentication.

Flower 1.41's mechanism (checked against the installed flwr): ``flower-superlink
--enable-supernode-auth`` turns off self-registration over the Fleet API; the operator
registers each hospital's ECDSA public key through the Control API with
``flwr supernode register <key.pub> <connection>``; a SuperNode proves its identity with
``--auth-supernode-private-key``. A key that was never registered fails activation
(``[code: 2004] Failed to activate SuperNode``) and the SuperNode exits with code 305.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedvlp.server.cli.local_federation import LocalFederation
from fedvlp.server.cli.operator import make_certificates, make_node_keys

pytestmark = pytest.mark.slow

SITES = Path(__file__).resolve().parents[3] / "sites" / "demo"
HOSPITALS = ("hospital_a", "hospital_b")
# What Flower logs when a SuperNode cannot establish its connection to the SuperLink (the
# process status itself is 1 in 1.41).
CONNECTION_FAILED = "Exit Code: 305"


@pytest.fixture(scope="module")
def secure(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A TLS SuperLink with node auth and the two registered hospitals, connected."""
    root = tmp_path_factory.mktemp("secure")
    certs = make_certificates(root / "certs", ["127.0.0.1"])
    keys = {k.name: k for k in make_node_keys(root / "keys", [*HOSPITALS, "intruder"])}
    fed = LocalFederation(root, ca_cert=certs.ca_cert, extra_env={"FEDVLP_DEMO_DATA": str(world)})
    try:
        fed.start_superlink(certs={"ca": certs.ca_cert, "cert": certs.server_cert, "key": certs.server_key}, auth=True)
        registered = {}
        for name in HOSPITALS:
            res = fed.flwr(
                "supernode",
                "register",
                str(keys[name].public_key),
                "local-deployment",
                "--name",
                name,
                "--format",
                "json",
            )
            assert res.returncode == 0, f"register {name}:\n{res.stdout}\n{res.stderr}"
            registered[name] = int(json.loads(res.stdout[res.stdout.index("{") :])["node-id"])
        for name in HOSPITALS:
            fed.start_supernode(name, SITES / f"{name}.yaml", key=keys[name].private_key)
        for name in HOSPITALS:
            fed.wait_worker_ready(name)
        yield {"fed": fed, "keys": keys, "registered": registered, "root": root}
    finally:
        fed.stop()


def test_registered_nodes_train_a_round_over_tls(secure: dict) -> None:
    fed: LocalFederation = secure["fed"]
    out = secure["root"] / "run"
    fed.run(
        'model-size="tiny" image-size=32 rounds=1 local-steps=2 batch-size=8 min-nodes=2 round-timeout=120 '
        f"out-dir={json.dumps(str(out))}"
    )
    fed.wait_round(out / "checkpoints", 1, watch=("superlink", *HOSPITALS))
    record = json.loads((out / "checkpoints" / "round_0001.json").read_text())["history"][-1]
    assert (record["nodes"], record["replies"], record["rejected"]) == (2, 2, [])
    # The replies came from exactly the two registered identities.
    assert sorted(s["node_id"] for s in record["sites"]) == sorted(secure["registered"].values())
    # ... and the server logs each under the name the operator registered it with (run_log.py)
    rows = [json.loads(line) for line in (out / "site_metrics.jsonl").read_text().splitlines()]
    assert {r["node_id"]: r["site"] for r in rows} == {node: name for name, node in secure["registered"].items()}
    assert (out / "checkpoints" / "round_0001.safetensors").stat().st_size > 0
    assert "Uvicorn running on https://127.0.0.1" in fed.log("superlink")


def test_unregistered_node_is_refused(secure: dict) -> None:
    fed: LocalFederation = secure["fed"]
    proc = fed.start_supernode(
        "intruder", SITES / "hospital_c.yaml", key=secure["keys"]["intruder"].private_key, worker=False
    )
    assert proc.wait(timeout=120) != 0
    assert CONNECTION_FAILED in fed.log("intruder") and "Failed to activate SuperNode" in fed.log("intruder"), fed.log(
        "intruder"
    )
    nodes = fed.node_list()
    assert sorted(int(n["node-id"]) for n in nodes) == sorted(secure["registered"].values())


def test_plaintext_supernode_cannot_reach_a_tls_superlink(secure: dict) -> None:
    fed: LocalFederation = secure["fed"]
    # (Flower itself refuses --insecure together with an auth key, exit code 303; without
    # a key the TLS listener drops the plain-HTTP connection.)
    proc = fed.start_supernode(
        "plaintext", SITES / "hospital_a.yaml", worker=False, insecure=True, extra=["--max-retries", "1"]
    )
    assert proc.wait(timeout=120) != 0
    assert CONNECTION_FAILED in fed.log("plaintext") and "SuperNode ID" not in fed.log("plaintext"), fed.log(
        "plaintext"
    )
