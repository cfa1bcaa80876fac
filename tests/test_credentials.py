"""`fedtune certs` / `fedtune keys`: real certificates, a real TLS handshake, OpenSSH keys."""

import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    load_ssh_private_key,
    load_ssh_public_key,
)

from fedtune.cli import main
from fedtune.deploy.credentials import CredentialError, make_certificates, make_node_keys


def _handshake(certs, cafile, host="127.0.0.1") -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(certs["server.crt"], certs["server.key"])
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve():
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        client_ctx = ssl.create_default_context(cafile=str(cafile))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                    client_ctx.wrap_socket(raw, server_hostname=host) as tls:
                tls.sendall(b"x")
        finally:
            thread.join(timeout=5)


def test_certificates_give_a_verified_tls_connection(tmp_path):
    certs = make_certificates(tmp_path / "c", ["localhost", "127.0.0.1"])
    server = x509.load_pem_x509_certificate(certs["server.crt"].read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    for name in ("ca.key", "server.key"):
        assert stat.S_IMODE(certs[name].stat().st_mode) == 0o600
    _handshake(certs, certs["ca.crt"])  # verified against our CA, hostname = the IP SAN
    other = make_certificates(tmp_path / "other", ["127.0.0.1"])
    with pytest.raises(ssl.SSLCertVerificationError):  # a client without our CA is refused
        _handshake(certs, other["ca.crt"])
    with pytest.raises(ssl.SSLCertVerificationError):  # a name not in the certificate
        _handshake(certs, certs["ca.crt"], host="example.org")


def test_existing_files_are_never_overwritten_without_force(tmp_path):
    make_certificates(tmp_path, ["127.0.0.1"])
    before = (tmp_path / "ca.crt").read_bytes()
    with pytest.raises(CredentialError, match="pass --force"):
        make_certificates(tmp_path, ["127.0.0.1"])
    assert (tmp_path / "ca.crt").read_bytes() == before
    make_certificates(tmp_path, ["127.0.0.1"], force=True)
    assert (tmp_path / "ca.crt").read_bytes() != before
    assert main(["certs", "--out", str(tmp_path), "--host", "127.0.0.1"]) == 2  # CLI: clear error


def test_node_keys_are_openssh_p384(tmp_path, capsys):
    assert main(["keys", "--out", str(tmp_path), "--name", "client-1"]) == 0
    assert "flwr supernode register" in capsys.readouterr().out
    private = load_ssh_private_key((tmp_path / "client-1").read_bytes(), password=None)
    public = load_ssh_public_key((tmp_path / "client-1.pub").read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.curve.name == "secp384r1"
    assert private.public_key().public_numbers() == public.public_numbers()
    assert (tmp_path / "client-1.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    assert stat.S_IMODE((tmp_path / "client-1").stat().st_mode) == 0o600
    with pytest.raises(CredentialError, match="pass --force"):
        make_node_keys(tmp_path, "client-1")
