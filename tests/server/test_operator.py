"""Operator credentials: certificates that verify, keys that Flower 1.41's own loaders accept."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_private_key

from fedvlp.server.cli import main
from fedvlp.server.operator import make_certificates, make_node_keys


def test_server_certificate_is_signed_by_the_ca_and_names_every_address(tmp_path: Path) -> None:
    files = make_certificates(tmp_path, ["10.0.0.5", "superlink.example.org"])
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises when the signature or issuer is wrong
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.0.0.5")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "superlink.example.org"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    key = load_pem_private_key(files.server_key.read_bytes(), password=None)
    assert key.public_key().public_numbers() == server.public_key().public_numbers()


def test_private_files_are_owner_only(tmp_path: Path) -> None:
    files = make_certificates(tmp_path / "certs")
    keys = make_node_keys(tmp_path / "keys", ["hospital_a"])
    for path in (files.ca_key, files.server_key, keys[0].private_key):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_node_keys_load_with_flowers_own_loaders(tmp_path: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import bytes_to_public_key, uses_nist_ec_curve

    keys = make_node_keys(tmp_path, ["hospital_a", "hospital_b"])
    assert [k.name for k in keys] == ["hospital_a", "hospital_b"]
    publics = []
    for files in keys:
        # What `flower-supernode --auth-supernode-private-key` reads.
        private = load_ssh_private_key(files.private_key.read_bytes(), password=None)
        assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
        # What `flwr supernode register` reads and sends.
        public = bytes_to_public_key(try_load_public_key(files.public_key))
        assert uses_nist_ec_curve(public)
        assert public.public_numbers() == private.public_key().public_numbers()
        publics.append(public.public_numbers())
    assert publics[0] != publics[1]


def test_existing_files_are_not_overwritten(tmp_path: Path) -> None:
    make_node_keys(tmp_path, ["hospital_a"])
    before = (tmp_path / "hospital_a").read_bytes()
    with pytest.raises(FileExistsError, match="hospital_a"):
        make_node_keys(tmp_path, ["hospital_a"])
    assert (tmp_path / "hospital_a").read_bytes() == before
    make_node_keys(tmp_path, ["hospital_a"], overwrite=True)
    assert (tmp_path / "hospital_a").read_bytes() != before
    make_certificates(tmp_path / "certs")
    with pytest.raises(FileExistsError, match="ca.crt"):
        make_certificates(tmp_path / "certs")


@pytest.mark.parametrize(
    ("names", "message"),
    [([], "at least one"), (["../etc"], "letters, digits"), (["a", "a"], "distinct")],
)
def test_bad_node_names_are_refused(tmp_path: Path, names: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_node_keys(tmp_path, names)


def test_address_with_port_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="without port or scheme"):
        make_certificates(tmp_path, ["superlink.example.org:9093"])


def test_cli_writes_certificates_and_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "--out", str(tmp_path / "certs"), "--server-address", "127.0.0.1"]) == 0
    assert main(["node-keys", "--out", str(tmp_path / "keys"), "--names", "hospital_a", "hospital_b"]) == 0
    assert sorted(p.name for p in (tmp_path / "certs").iterdir()) == ["ca.crt", "ca.key", "server.key", "server.pem"]
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["hospital_a", "hospital_a.pub", "hospital_b", "hospital_b.pub"]
    assert "--auth-supernode-private-key" in capsys.readouterr().out
