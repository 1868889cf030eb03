"""Operator credentials for a secure Flower 1.41 federation: TLS certificates and node keys.

What Flower 1.41 expects (checked against the installed ``flwr``):

* TLS: ``flower-superlink --ssl-ca-certfile ca.crt --ssl-certfile server.pem
  --ssl-keyfile server.key`` (PEM files), and ``flower-supernode --root-certificates ca.crt``
  / ``root-certificates = "/abs/ca.crt"`` in ``$FLWR_HOME/config.toml`` for ``flwr``. The
  server certificate must name every address clients dial in its subjectAltName;
  ``127.0.0.1`` always, because the SuperLink's own SuperExec connects there.
* Node authentication: ``flower-superlink --enable-supernode-auth``; the operator registers
  each hospital's public key with ``flwr supernode register <key.pub> <connection>`` (the
  Control API; the SuperLink then refuses self-registration over the Fleet API), and each
  SuperNode starts with ``--auth-supernode-private-key <key>``. Keys are ECDSA on a NIST
  curve (P-384 as in Flower's docs): the public key in OpenSSH format
  (``flwr`` reads it with ``load_ssh_public_key``), the private key in OpenSSH PEM format
  (``flower-supernode`` reads it with ``load_ssh_private_key``), i.e. what
  ``ssh-keygen -t ecdsa -b 384 -N ""`` writes.

Everything is generated locally with ``cryptography`` (a Flower dependency); nothing
reaches the network.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedvlp.core.checkpoint import atomic_write_bytes

__all__ = [
    "CertificateFiles",
    "CredentialError",
    "NodeKeyFiles",
    "make_certificates",
    "make_node_keys",
    "subject_alt_names",
]

# A node name becomes a file name; keep it to what every file system and shell accepts.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class CertificateFiles:
    """The PEM files of :func:`make_certificates`.

    Attributes
    ----------
    ca_cert : Path
        The CA certificate: ``--ssl-ca-certfile`` of the SuperLink, ``--root-certificates``
        of SuperNodes and of ``flwr``.
    ca_key : Path
        The CA's private key, in its own owner-only folder (``ca-private/`` by default) so the
        SuperLink's folder can be copied to the SuperLink machine without it; keep it offline
        (only needed to issue new server certificates).
    server_cert, server_key : Path
        ``--ssl-certfile`` / ``--ssl-keyfile`` of the SuperLink.
    """

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class NodeKeyFiles:
    """One hospital's key pair from :func:`make_node_keys`.

    Attributes
    ----------
    name : str
        The hospital's name (also the ``--name`` given to ``flwr supernode register``).
    private_key : Path
        ``--auth-supernode-private-key`` of that hospital's SuperNode (stays at the hospital).
    public_key : Path
        What the operator registers (``flwr supernode register <public_key>``).
    """

    name: str
    private_key: Path
    public_key: Path


def subject_alt_names(addresses: Sequence[str]) -> list[x509.GeneralName]:
    """SAN entries for ``addresses`` (IPs or DNS names) plus ``127.0.0.1`` and ``localhost``.

    Parameters
    ----------
    addresses : Sequence[str]
        Host names or IP addresses the SuperLink is reached at (no port, no scheme).

    Returns
    -------
    list[x509.GeneralName]
        One ``IPAddress`` or ``DNSName`` per distinct address, loopback first.

    Raises
    ------
    ValueError
        When an address is empty or carries a port or scheme.
    """
    out: list[x509.GeneralName] = []
    seen: set[str] = set()
    for raw in ["127.0.0.1", "localhost", *addresses]:
        address = raw.strip()
        if not address or "/" in address or (":" in address and not _is_ip(address)):
            raise ValueError(f"server address: expected a host name or IP without port or scheme, got {raw!r}")
        if address.lower() in seen:
            continue
        seen.add(address.lower())
        out.append(x509.IPAddress(ipaddress.ip_address(address)) if _is_ip(address) else x509.DNSName(address))
    return out


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class CredentialError(ValueError):
    """A key or certificate file that must not be written (exists, symlink, bad name); one line."""


def _write(path: Path, data: bytes, private: bool) -> None:
    """Write ``path`` atomically with its final mode from creation (0600 private, 0644 public):
    :func:`~fedvlp.core.checkpoint.atomic_write_bytes` (an unpredictable ``O_EXCL`` temporary
    name, fsynced, renamed), so a pre-created 0644 file does not keep its mode and a symlink's
    target is never written."""
    atomic_write_bytes(path, data, mode=0o600 if private else 0o644)


def _refuse_overwrite(paths: Sequence[Path], overwrite: bool) -> None:
    """Refuse a symlink at any target (even with ``overwrite``) and, without it, an existing file."""
    links = [str(p) for p in paths if p.is_symlink()]
    if links:
        raise CredentialError(
            f"refusing to write {', '.join(links)}: a symbolic link (remove it; keys are never written through links)"
        )
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"refusing to overwrite {', '.join(existing)} (pass overwrite=True / --force)")


def _private_folder(folder: Path) -> None:
    """Create ``folder`` owner-only (0700); an existing one must not be a symlink."""
    if folder.is_symlink():
        raise CredentialError(f"refusing to write into {folder}: a symbolic link")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)


def make_certificates(
    out: Path,
    server_addresses: Sequence[str] = (),
    *,
    days: int = 365,
    overwrite: bool = False,
    ca_key_dir: Path | None = None,
) -> CertificateFiles:
    """Create a CA and a SuperLink certificate signed by it (ECDSA P-384, SHA-384).

    Parameters
    ----------
    out : Path
        Folder for ``ca.crt``, ``server.pem`` and ``server.key`` (created).
    server_addresses : Sequence[str], default ()
        Names / IPs the SuperLink is reached at; ``127.0.0.1`` and ``localhost`` are always
        added (the SuperLink's own SuperExec dials 127.0.0.1).
    days : int, default 365
        Validity of both certificates.
    overwrite : bool, default False
        Replace existing files; otherwise an existing file is an error (a new CA would
        invalidate the one every hospital already trusts). A symlink at any target is refused
        even then.
    ca_key_dir : Path, optional
        Folder for ``ca.key`` (created 0700); default ``out / "ca-private"``. Give a folder on
        another disk to keep the CA key off the SuperLink machine from the start.

    Returns
    -------
    CertificateFiles
        Paths of the four files.

    Raises
    ------
    ValueError
        A bad address or ``days`` < 1; :class:`CredentialError` for a symlink at a target.
    FileExistsError
        A file exists and ``overwrite`` is False.
    """
    if days < 1:
        raise ValueError(f"days: expected >= 1, got {days}")
    sans = subject_alt_names(server_addresses)
    out = Path(out)
    ca_dir = Path(ca_key_dir) if ca_key_dir is not None else out / "ca-private"
    files = CertificateFiles(out / "ca.crt", ca_dir / "ca.key", out / "server.pem", out / "server.key")
    _refuse_overwrite([files.ca_cert, files.ca_key, files.server_cert, files.server_key], overwrite)
    out.mkdir(parents=True, exist_ok=True)
    _private_folder(ca_dir)

    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)  # tolerate small clock skew
    until = now + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedvlp federation CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    common_name = server_addresses[0].strip() if server_addresses else "localhost"
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    pem = serialization.Encoding.PEM
    pkcs8, unencrypted = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    _write(files.ca_key, ca_key.private_bytes(pem, pkcs8, unencrypted), private=True)
    _write(files.ca_cert, ca_cert.public_bytes(pem), private=False)
    _write(files.server_key, server_key.private_bytes(pem, pkcs8, unencrypted), private=True)
    _write(files.server_cert, server_cert.public_bytes(pem), private=False)
    return files


def make_node_keys(out: Path, names: Sequence[str], *, overwrite: bool = False) -> list[NodeKeyFiles]:
    """Create one ECDSA P-384 key pair per hospital in the formats Flower 1.41 reads.

    Parameters
    ----------
    out : Path
        Folder for ``<name>`` (OpenSSH private key, mode 0600) and ``<name>.pub``
        (OpenSSH public key line), created when missing.
    names : Sequence[str]
        Hospital names (letters, digits, ``_``, ``-``, ``.``; distinct).
    overwrite : bool, default False
        Replace existing key files; otherwise an existing file is an error (a registered
        key that changes locks its hospital out).

    Returns
    -------
    list[NodeKeyFiles]
        One entry per name, in the given order.

    Raises
    ------
    ValueError
        (:class:`CredentialError`) No names, a duplicate, a name that is not a plain file name,
        or a symlink at a target (refused even with ``overwrite``).
    FileExistsError
        A key file exists and ``overwrite`` is False.
    """
    if not names:
        raise CredentialError("names: expected at least one hospital name")
    for name in names:
        if not _NAME.match(name):
            raise CredentialError(f"names: expected letters, digits, '_', '-' or '.', got {name!r}")
    if len(set(names)) != len(names):
        raise CredentialError(f"names: expected distinct names, got {list(names)}")
    out = Path(out)
    result = [NodeKeyFiles(name, out / name, out / f"{name}.pub") for name in names]
    _refuse_overwrite([p for r in result for p in (r.private_key, r.public_key)], overwrite)
    out.mkdir(parents=True, exist_ok=True)
    for files in result:
        key = ec.generate_private_key(ec.SECP384R1())
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        _write(files.private_key, private, private=True)
        _write(files.public_key, public + f" {files.name}\n".encode(), private=False)
    return result
