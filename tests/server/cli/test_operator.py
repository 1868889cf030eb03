"""Operator credentials: certificates that verify, keys that Flower 1.41's own loaders accept."""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_private_key

from fedvlp.server.cli.main import main
from fedvlp.server.cli.operator import CredentialError, make_certificates, make_node_keys


def test_server_certificate_is_signed_by_the_ca_and_names_every_address(tmp_path: Path) -> None:
    files = make_certificates(tmp_path, ["10.0.0.5", "superlink.example.org"])
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises when the signature or issuer is wrong
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("10.0.0.5"),
    ]
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
    assert sorted(p.name for p in (tmp_path / "certs").iterdir()) == [
        "ca-private",
        "ca.crt",
        "server.key",
        "server.pem",
    ]
    assert [p.name for p in (tmp_path / "certs" / "ca-private").iterdir()] == ["ca.key"]
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == [
        "hospital_a",
        "hospital_a.pub",
        "hospital_b",
        "hospital_b.pub",
    ]
    assert "--auth-supernode-private-key" in capsys.readouterr().out


# ------------------------------------------------------------------ key files on a hostile disk
def test_a_pre_created_0644_file_is_refused_and_with_force_replaced_by_a_0600_file(tmp_path: Path) -> None:
    planted = tmp_path / "hospital_a"
    planted.write_bytes(b"planted")
    planted.chmod(0o644)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        make_node_keys(tmp_path, ["hospital_a"])
    assert planted.read_bytes() == b"planted" and stat.S_IMODE(planted.stat().st_mode) == 0o644
    inode = planted.stat().st_ino
    make_node_keys(tmp_path, ["hospital_a"], overwrite=True)
    assert stat.S_IMODE(planted.stat().st_mode) == 0o600 and planted.stat().st_ino != inode
    assert planted.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")


@pytest.mark.parametrize("target", ["hospital_a", "hospital_a.pub"])
def test_a_symlink_at_a_key_target_is_refused_even_with_force_and_its_target_untouched(
    tmp_path: Path, target: str
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    victim.chmod(0o644)
    (tmp_path / "keys").mkdir()
    link = tmp_path / "keys" / target
    link.symlink_to(victim)
    for overwrite in (False, True):
        with pytest.raises(CredentialError, match="a symbolic link"):
            make_node_keys(tmp_path / "keys", ["hospital_a"], overwrite=overwrite)
    assert victim.read_text() == "keep me" and stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert link.is_symlink() and sorted(p.name for p in (tmp_path / "keys").iterdir()) == [target]


def test_a_dangling_symlink_at_the_server_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "server.key").symlink_to(tmp_path / "elsewhere.key")
    with pytest.raises(CredentialError, match=r"server\.key: a symbolic link"):
        make_certificates(tmp_path / "certs", overwrite=True)
    assert not (tmp_path / "elsewhere.key").exists()


def test_a_link_planted_at_the_old_predictable_temporary_name_is_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / f".hospital_a.{os.getpid()}.tmp").symlink_to(victim)
    make_node_keys(tmp_path / "keys", ["hospital_a"])
    assert victim.read_text() == "keep me"


def test_a_0644_file_planted_at_the_old_predictable_temporary_name_does_not_make_the_key_0644(tmp_path: Path) -> None:
    planted = tmp_path / f".hospital_a.{os.getpid()}.tmp"
    planted.write_bytes(b"")
    planted.chmod(0o644)
    keys = make_node_keys(tmp_path, ["hospital_a"])
    assert stat.S_IMODE(keys[0].private_key.stat().st_mode) == 0o600 and planted.read_bytes() == b""


def test_key_modes_are_exact_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)  # the most permissive umask: nothing may come out group/world readable
    try:
        files = make_certificates(tmp_path / "certs")
        keys = make_node_keys(tmp_path / "keys", ["hospital_a"])
    finally:
        os.umask(old)
    modes = {
        p.name: stat.S_IMODE(p.stat().st_mode)
        for p in (
            files.ca_key,
            files.server_key,
            keys[0].private_key,
            files.ca_cert,
            files.server_cert,
            keys[0].public_key,
        )
    }
    assert modes == {
        "ca.key": 0o600,
        "server.key": 0o600,
        "hospital_a": 0o600,
        "ca.crt": 0o644,
        "server.pem": 0o644,
        "hospital_a.pub": 0o644,
    }
    assert stat.S_IMODE(files.ca_key.parent.stat().st_mode) == 0o700


def test_the_ca_key_lives_apart_from_the_superlinks_files(tmp_path: Path) -> None:
    files = make_certificates(tmp_path / "certs", ca_key_dir=tmp_path / "offline")
    assert files.ca_key == tmp_path / "offline" / "ca.key" and files.server_key.parent == tmp_path / "certs"
    assert sorted(p.name for p in (tmp_path / "certs").iterdir()) == ["ca.crt", "server.key", "server.pem"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["node-keys", "--names", "../etc"], "fedvlp node-keys: names: expected letters, digits"),
        (["node-keys", "--names", "hospital_a"], "fedvlp node-keys: refusing to overwrite"),
        (["certs"], "fedvlp certs: refusing to overwrite"),
    ],
)
def test_cli_refusals_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    make_node_keys(tmp_path, ["hospital_a"])
    make_certificates(tmp_path)
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
