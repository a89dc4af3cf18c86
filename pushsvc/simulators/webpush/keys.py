"""The keys of Web Push: a browser's subscription (its P-256 key pair and auth secret, kept here to decrypt
with) and a sender's VAPID key, with the base64url both are written in."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from pushsvc.model import WebSubscription


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class PeerSubscription:
    """A subscription the peer handed out, with the private half a browser keeps."""

    id: str
    endpoint: str
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    p256dh: str
    auth: str
    application_server_key: str | None = None

    @property
    def keys(self) -> dict[str, str]:
        return {"p256dh": self.p256dh, "auth": self.auth}

    @property
    def web_subscription(self) -> WebSubscription:
        return WebSubscription(self.endpoint, self.p256dh, self.auth)

    def as_json(self) -> dict[str, Any]:
        """What PushSubscription.toJSON() gives a web app (and the device API takes)."""
        return {"endpoint": self.endpoint, "expirationTime": None, "keys": self.keys}


def make_subscription(authority: str, application_server_key: str | None = None) -> PeerSubscription:
    """What a browser does on PushManager.subscribe(): a P-256 key pair and an auth secret, for an endpoint at
    `authority` (host:port)."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    public = private_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    subscription_id = secrets.token_urlsafe(24)
    return PeerSubscription(
        id=subscription_id,
        endpoint=f"https://{authority}/push/{subscription_id}",
        private_key=private_key,
        p256dh=b64url(public),
        auth=b64url(secrets.token_bytes(16)),
        application_server_key=application_server_key,
    )


@dataclass(frozen=True)
class VapidKey:
    private_key_file: Path  # PEM, what WebPushSettings.vapid_private_key_file names
    public_key: str  # base64url uncompressed point: the applicationServerKey browsers subscribe with


def make_vapid_key(directory: Path) -> VapidKey:
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    path = directory / "vapid.pem"
    path.write_bytes(
        key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    )
    raw = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return VapidKey(path, b64url(raw))
