"""Credential files of the right kinds (and a few of the wrong ones) for config and credential tests."""

from __future__ import annotations

import datetime as dt
import functools
import json
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

_PKCS8 = (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@functools.cache
def rsa_key() -> rsa.RSAPrivateKey:
    """One RSA key for the session: generating one takes ~0.1 s."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(*_PKCS8)


def apns_key(path: Path, curve: ec.EllipticCurve | None = None) -> Path:
    """An APNs-style .p8: a PKCS#8 EC key, P-256 unless another curve is asked for."""
    path.write_bytes(pem(ec.generate_private_key(curve or ec.SECP256R1())))
    return path


def service_account(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
                    **fields: object) -> Path:
    key = key or rsa_key()
    info = {"type": "service_account", "project_id": "demo-project", "private_key_id": "0" * 40,
            "private_key": pem(key).decode(), "client_email": "pushsvc@demo-project.iam.gserviceaccount.com",
            "token_uri": "https://oauth2.googleapis.com/token", **fields}
    path.write_text(json.dumps({k: v for k, v in info.items() if v is not None}))
    return path


def apns_certificate(path: Path, not_after: dt.datetime, with_key: bool = True) -> Path:
    """A self-signed client certificate (PEM) expiring at `not_after`, its private key in the same file."""
    key = rsa_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Apple Push Services: com.example.demo")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_after - dt.timedelta(days=365))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM) + (pem(key) if with_key else b""))
    return path
