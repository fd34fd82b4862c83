"""Mutual TLS between services, from a private CA the project generates itself.

`init_certs(DIR)` (the `mixip certs init DIR` command) writes:
- `ca.pem` / `ca.key`: a private certificate authority;
- `<name>.pem` / `<name>.key` for each service, the gateway and the `operator` (the command
  line's own identity for health checks): the certificate's common name is the identity the
  caller rules check, and its subject alternative names cover `<name>`, `localhost` and
  127.0.0.1, so the same files work on one host and in docker-compose.
Keys are written 0600 in a 0700 directory.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path
from typing import cast

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mixip.runtime.config import SERVICES, ConfigError
from mixip.runtime.files import private_dir

IDENTITIES = (*SERVICES, "operator")
CA_NAME = "ca"


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)  # an existing file keeps its mode through O_TRUNC otherwise
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def init_certs(
    directory: Path, *, days: int = 825, names: tuple[str, ...] = IDENTITIES
) -> list[Path]:
    """Creates the CA and one certificate per identity; returns the files written."""
    private_dir(directory)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Mix-IP private CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_subject)
        .issuer_name(ca_subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    written = [directory / "ca.pem", directory / "ca.key"]
    _write(written[0], ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(written[1], _key_pem(ca_key), 0o600)
    for name in names:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName(name),
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        _write(directory / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)
        _write(directory / f"{name}.key", _key_pem(key), 0o600)
        written += [directory / f"{name}.pem", directory / f"{name}.key"]
    return written


def _read(directory: Path, filename: str) -> bytes:
    try:
        return (directory / filename).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"TLS file {directory / filename} is missing ({exc.strerror}); "
            f"create the files with `mixip certs init {directory}`"
        ) from None


def server_credentials(directory: Path, name: str) -> grpc.ServerCredentials:
    """Mutual TLS: this service's certificate, and client certificates from our CA required."""
    return grpc.ssl_server_credentials(
        [(_read(directory, f"{name}.key"), _read(directory, f"{name}.pem"))],
        root_certificates=_read(directory, "ca.pem"),
        require_client_auth=True,
    )


def channel_credentials(directory: Path, name: str) -> grpc.ChannelCredentials:
    """A client that trusts only our CA and presents `name`'s certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(directory, "ca.pem"),
        private_key=_read(directory, f"{name}.key"),
        certificate_chain=_read(directory, f"{name}.pem"),
    )


def caller_identity(context: grpc.ServicerContext) -> str | None:
    """The common name of the verified client certificate, or None on a plaintext port."""
    names = cast(list[bytes], context.auth_context().get("x509_common_name") or [])
    return names[0].decode() if names else None
