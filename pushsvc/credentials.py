"""Provider credentials read and checked before anything is sent: the APNs signing key (.p8) with its key id
and team id, the APNs client certificate, the FCM service account.

A placeholder or truncated credential used to pass `check-config` and readiness and then fail every send as
an unexplained adapter error. Each check here raises ConfigError naming the setting, at start and in
`pushsvc check-config` (config._check_app calls them). Secrets never appear in a message: only what kind
of thing was found where something else was expected.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

# Apple's key ids and team ids are 10 characters of upper-case letters and digits.
APPLE_ID = re.compile(r"^[A-Z0-9]{10}$")
SERVICE_ACCOUNT_FIELDS = ("project_id", "private_key", "client_email", "token_uri")


class CredentialError(ValueError):
    """A credential file is not what its setting needs; `key` is the setting."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key


def check_apns_signing_key(key_file: str, key_id: str, team_id: str, base: str) -> None:
    """An APNs token-auth key: a PEM (PKCS#8) EC private key on P-256, with Apple-shaped key and team ids."""
    if not APPLE_ID.match(key_id):
        raise CredentialError(f"{base}.key_id", "expected Apple's 10-character key id (A-Z, 0-9)")
    if not APPLE_ID.match(team_id):
        raise CredentialError(f"{base}.team_id", "expected Apple's 10-character team id (A-Z, 0-9)")
    key = _private_key(Path(key_file).read_bytes(), f"{base}.key_file", "the .p8 signing key")
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise CredentialError(f"{base}.key_file", "expected an EC P-256 key (an APNs .p8 signing key)")


def apns_certificate_expiry(cert_file: str, base: str, now: dt.datetime | None = None) -> dt.datetime:
    """When the APNs client certificate in `cert_file` (PEM: certificate and its private key) expires.
    Raises for an unreadable, keyless or already expired certificate."""
    data = Path(cert_file).read_bytes()
    key = f"{base}.cert_file"
    try:
        certificate = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CredentialError(key, "no PEM certificate found") from None
    _private_key(data, key, "the certificate's private key (in the same file)")
    expires = certificate.not_valid_after_utc
    if expires <= (now or dt.datetime.now(dt.UTC)):
        raise CredentialError(key, f"the certificate expired on {expires.isoformat()}")
    return expires


def check_fcm_service_account(path: str, base: str) -> None:
    """A Firebase service account JSON key: type service_account, the fields firebase-admin and google-auth
    read, an RSA private key, an https token_uri."""
    key = f"{base}.service_account_file"
    try:
        info: Any = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError):
        raise CredentialError(key, "not a JSON file (expected a service account key)") from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise CredentialError(key, 'expected a service account key ("type": "service_account")')
    missing = [name for name in SERVICE_ACCOUNT_FIELDS if not isinstance(info.get(name), str) or not info[name]]
    if missing:
        raise CredentialError(key, f"missing {', '.join(missing)}")
    token_uri = urlsplit(info["token_uri"])
    if token_uri.scheme != "https" or not token_uri.hostname:
        raise CredentialError(key, "token_uri must be an https URL")
    private = _private_key(info["private_key"].encode(), key, "private_key")
    if not isinstance(private, rsa.RSAPrivateKey):
        raise CredentialError(key, "private_key must be an RSA key")


def check_vapid_private_key(path: str, key: str) -> None:
    """A VAPID key: a PEM EC private key on P-256 (RFC 8292 signs with ES256)."""
    private = _private_key(Path(path).read_bytes(), key, "the VAPID private key")
    if not isinstance(private, ec.EllipticCurvePrivateKey) or not isinstance(private.curve, ec.SECP256R1):
        raise CredentialError(key, "expected an EC P-256 private key (VAPID signs with ES256)")


def _private_key(data: bytes, key: str, what: str) -> Any:
    try:
        return load_pem_private_key(data, password=None)
    except (ValueError, TypeError):  # not PEM, garbage inside, encrypted, unsupported
        raise CredentialError(key, f"{what} is not a readable, unencrypted PEM private key") from None
