"""A throwaway loopback TLS certificate, generated at run time (none is committed)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def write_loopback_certificate(directory: Path, hosts: Sequence[str] = ()) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, localhost and `hosts`; returns (certificate, key) paths.

    The certificate is its own CA (basic constraints CA=true), so a client can trust exactly it, e.g.
    with `REQUESTS_CA_BUNDLE=<certificate>` or `SSL_CERT_FILE=<certificate>`. `hosts` lets a loopback
    server present a real service's host name (e.g. `api.businesscentral.dynamics.com`) to a client
    whose base URL is fixed; the client reaches the loopback server through a proxy
    (tests/conformance/third_party/proxy.py), never the real host.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bc-dataverse-sync test loopback")])
    now = dt.datetime.now(dt.UTC)
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    names += [x509.DNSName(host) for host in hosts]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "loopback-cert.pem", directory / "loopback-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path
