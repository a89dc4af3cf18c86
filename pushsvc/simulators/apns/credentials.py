"""Credentials and settings for talking to the APNs peer: a .p8 signing key, a client certificate (with the CA
that issued it, for the peer to trust) and ApnsSettings pointing at a running peer."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pushsvc.config import ApnsSettings

if TYPE_CHECKING:
    from pushsvc.simulators.apns.peer import ApnsPeer
    from pushsvc.simulators.tls import TestPki

APNS_TOPIC = "com.example.app"
APNS_KEY_ID = "ABC123DEFG"
APNS_TEAM_ID = "TEAM123456"


@dataclass(frozen=True)
class ApnsSigningKey:
    key_file: Path  # the .p8 (PKCS#8 PEM EC P-256 private key), as Apple hands it out
    public_pem: bytes  # for the peer to verify JWT signatures
    key_id: str = APNS_KEY_ID
    team_id: str = APNS_TEAM_ID


@dataclass(frozen=True)
class ApnsClientCert:
    cert_file: Path  # certificate + private key in one PEM, as ApnsSettings.cert_file expects
    ca_file: Path  # the CA that issued it, for the peer to verify client certificates
    uid: str  # the topic in the certificate subject, like Apple's push certificates


def make_signing_key(directory: Path, name: str = "AuthKey") -> ApnsSigningKey:
    key = ec.generate_private_key(ec.SECP256R1())
    key_file = directory / f"{name}_{APNS_KEY_ID}.p8"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return ApnsSigningKey(key_file=key_file, public_pem=public_pem)


def make_client_cert(directory: Path, topic: str = APNS_TOPIC) -> ApnsClientCert:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test Apple WWDR CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.USER_ID, topic),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Apple Push Services: {topic}"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_file = directory / "apns-client.pem"
    cert_file.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    ca_file = directory / "apns-client-ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return ApnsClientCert(cert_file=cert_file, ca_file=ca_file, uid=topic)


def apns_token_settings(peer: ApnsPeer, pki: TestPki, key: ApnsSigningKey, **overrides: Any) -> ApnsSettings:
    """ApnsSettings (token auth) pointing at the peer and trusting the test CA."""
    settings = ApnsSettings(
        topic=APNS_TOPIC,
        environment="sandbox",
        key_file=str(key.key_file),
        key_id=key.key_id,
        team_id=key.team_id,
        endpoint=peer.endpoint,
        ca_file=str(pki.ca_file),
        max_connections=4,
    )
    return replace(settings, **overrides)


def apns_cert_settings(peer: ApnsPeer, pki: TestPki, cert: ApnsClientCert, **overrides: Any) -> ApnsSettings:
    settings = ApnsSettings(
        topic=APNS_TOPIC,
        environment="sandbox",
        cert_file=str(cert.cert_file),
        endpoint=peer.endpoint,
        ca_file=str(pki.ca_file),
        max_connections=4,
    )
    return replace(settings, **overrides)
