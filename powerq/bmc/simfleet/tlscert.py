"""A self-signed certificate for a Redfish fleet's loopback address, made at start-up.

One certificate (its own CA, EC P-256: a cheap handshake) serves every BMC of
the fleet; its PEM goes into each manifest entry as ``ca_bundle``, so clients
verify TLS exactly as against a real BMC with a private CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID_DAYS = 30


def self_signed(address: str) -> tuple[str, str]:
    """(certificate PEM, private key PEM) for ``address`` (an IP), valid for 30 days.

    :raises ValueError: ``address`` is not an IP address.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "powerq simulated BMC")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


def server_context(cert_pem: str, key_pem: str) -> ssl.SSLContext:
    """A TLS server context holding the certificate (files exist only while loading).

    :raises ssl.SSLError: the certificate and key do not match.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="powerq-simfleet-tls-") as directory:
        cert_path, key_path = Path(directory) / "bmc.crt", Path(directory) / "bmc.key"
        cert_path.write_text(cert_pem)
        key_path.touch(mode=0o600)
        key_path.write_text(key_pem)
        context.load_cert_chain(cert_path, key_path)
    return context
