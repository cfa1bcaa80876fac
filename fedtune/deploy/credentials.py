"""Credentials for deployment, made with ``cryptography``.

- :func:`make_certificates`: a CA and a server certificate for the SuperLink, with the
  subject alternative names (DNS names and IP addresses) clients will dial. Flower takes them as
  ``flower-superlink --ssl-ca-certfile ca.crt --ssl-certfile server.crt --ssl-keyfile
  server.key``; SuperNodes and ``flwr`` get ``--root-certificates ca.crt``.
- :func:`make_node_keys`: a SuperNode's authentication key pair, NIST P-384 in OpenSSH format
  (what ``ssh-keygen -t ecdsa -b 384`` writes): the public half is registered with
  ``flwr supernode register NAME.pub``, the private half given to ``flower-supernode
  --auth-supernode-private-key NAME``.

Private keys are written with mode 0600, and no existing file is overwritten unless asked.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


class CredentialError(ValueError):
    """A credentials request that cannot be carried out as asked (one clear sentence)."""


def _write(path: Path, data: bytes, private: bool, force: bool) -> None:
    if path.exists() and not force:
        raise CredentialError(f"{path} exists; pass --force to overwrite it, or choose "
                              "another --out folder.")
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600 if private else 0o644)  # also when an existing file was replaced


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def make_certificates(out: str | Path, hosts: Sequence[str], days: int = 365,
                      force: bool = False) -> dict[str, Path]:
    """Write ca.crt, ca.key, server.crt, server.key into ``out``; returns their paths."""
    if not hosts:
        raise CredentialError("give at least one --host (a DNS name or IP address clients "
                              "will use to reach the SuperLink), e.g. --host 127.0.0.1")
    out = Path(out)
    paths = {n: out / n for n in ("ca.crt", "ca.key", "server.crt", "server.key")}
    if not force:
        for p in paths.values():
            if p.exists():
                raise CredentialError(f"{p} exists; pass --force to overwrite it, or choose "
                                      "another --out folder.")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedtune CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP384R1())
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
              .issuer_name(ca_name).public_key(key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(minutes=5))
              .not_valid_after(now + dt.timedelta(days=days))
              .add_extension(_san(hosts), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    _write(paths["ca.key"], _pem_key(ca_key), private=True, force=force)
    _write(paths["ca.crt"], ca.public_bytes(pem), private=False, force=force)
    _write(paths["server.key"], _pem_key(key), private=True, force=force)
    _write(paths["server.crt"], server.public_bytes(pem), private=False, force=force)
    return paths


def make_node_keys(out: str | Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """Write ``NAME`` (private, OpenSSH) and ``NAME.pub`` into ``out``."""
    if not name or "/" in name:
        raise CredentialError(f"--name '{name}' must be a plain file name, e.g. client-1.")
    out = Path(out)
    private, public = out / name, out / f"{name}.pub"
    for p in (private, public):
        if p.exists() and not force:
            raise CredentialError(f"{p} exists; pass --force to overwrite it, or choose "
                                  "another --name.")
    key = ec.generate_private_key(ec.SECP384R1())
    _write(private, key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.OpenSSH,
                                      serialization.NoEncryption()), private=True, force=force)
    _write(public, key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                 serialization.PublicFormat.OpenSSH)
           + f" {name}\n".encode(), private=False, force=force)
    return private, public
