"""Google's OAuth2 token endpoint as the FCM peer plays it: a service account's signed JWT assertion in, an
access token out, living ``token_lifetime`` seconds on the peer's clock; the check of an access token presented
later; and the service-account files whose token_uri points at the peer."""

from __future__ import annotations

import base64
import json
import secrets
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from pushsvc.simulators.http_server import Reply

GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEFAULT_TOKEN_LIFETIME = 3600  # Google's expires_in for a service account's access token


@dataclass
class TokenRequest:
    """One request to the OAuth2 token endpoint."""

    form: dict[str, str]
    claims: dict[str, Any] | None  # decoded JWT assertion claims
    time: float  # on the peer's clock
    granted: str | None  # the access token issued, None if refused


class TokenEndpoint:
    """Token requests, the access tokens issued and the service accounts' public keys, to check assertions with."""

    def __init__(self, accept_any_auth: bool) -> None:
        self.accept_any_auth = accept_any_auth
        # Read per request: a test may set a fake clock (shared with the provider) and a shorter lifetime.
        self.clock: Callable[[], float] = time.time
        self.token_lifetime: float = DEFAULT_TOKEN_LIFETIME
        self.requests: list[TokenRequest] = []
        self.issued: set[str] = set()
        self.expires_at: dict[str, float] = {}  # issued token -> when it stops working, on the peer's clock
        self.public_keys: dict[str, Any] = {}  # client_email -> RSA public key of service accounts we wrote
        self.token_uri = ""

    def handle(self, body: bytes) -> Reply:
        form = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace")))
        record = TokenRequest(form=form, claims=None, time=self.clock(), granted=None)
        self.requests.append(record)
        if form.get("grant_type") != JWT_BEARER_GRANT:
            return Reply(400, to_json({"error": "unsupported_grant_type", "error_description": "Invalid grant_type"}))
        assertion = form.get("assertion", "")
        problem = self._check_assertion(assertion, record)
        if problem:
            return Reply(400, to_json({"error": "invalid_grant", "error_description": problem}))
        access_token = "ya29.peer-" + secrets.token_urlsafe(24)
        lifetime = self.token_lifetime
        self.issued.add(access_token)
        self.expires_at[access_token] = record.time + lifetime
        record.granted = access_token
        answer = {"access_token": access_token, "expires_in": lifetime, "token_type": "Bearer"}
        return Reply(200, to_json(answer), [("content-type", "application/json; charset=utf-8")])

    @property
    def fetches(self) -> int:
        """Access tokens granted so far (each one a fetch by a client)."""
        return sum(1 for request in self.requests if request.granted is not None)

    def auth(self, bearer: str) -> str:
        """What a bearer token presented to messages:send is: "valid", "expired", "unknown" or "missing"."""
        if not bearer:
            return "missing"
        if bearer not in self.issued:
            return "unknown"
        return "valid" if self.clock() < self.expires_at.get(bearer, float("inf")) else "expired"

    def _check_assertion(self, assertion: str, record: TokenRequest) -> str | None:
        parts = assertion.split(".")
        if len(parts) != 3:
            return "Invalid JWT: assertion missing or malformed"
        try:
            header = json.loads(_b64url_decode(parts[0]))
            claims = json.loads(_b64url_decode(parts[1]))
            signature = _b64url_decode(parts[2])
        except ValueError:
            return "Invalid JWT: not base64url JSON"
        record.claims = claims
        if self.accept_any_auth:
            return None
        key = self.public_keys.get(claims.get("iss", ""))
        if key is None:
            return "Invalid JWT Signature."  # what Google says for an unknown or deleted key
        if header.get("alg") != "RS256":
            return "Invalid JWT: alg must be RS256"
        try:
            key.verify(signature, f"{parts[0]}.{parts[1]}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except Exception:
            return "Invalid JWT Signature."
        # google-auth always addresses the assertion to Google's token endpoint, whatever token_uri says.
        if claims.get("aud") not in (self.token_uri, GOOGLE_TOKEN_AUDIENCE):
            return "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe"
        if not claims.get("scope"):
            return "Invalid JWT: scope missing"
        # The wall clock, not the peer's: google-auth signs the assertion on the wall clock, which no test sets.
        if float(claims.get("exp", 0)) < time.time():
            return "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe."
        return None

    def write_service_account(self, path: str | Path, project_id: str, base_url: str) -> Path:
        """Write a service-account JSON with a fresh RSA key whose token_uri points at this peer."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        email_addr = f"pushsvc-test-{secrets.token_hex(4)}@{project_id}.iam.gserviceaccount.com"
        self.public_keys[email_addr] = key.public_key()
        info = {
            "type": "service_account",
            "project_id": project_id,
            "private_key_id": secrets.token_hex(20),
            "private_key": pem,
            "client_email": email_addr,
            "client_id": str(secrets.randbelow(10**20)),
            "auth_uri": f"{base_url}/auth",
            "token_uri": f"{base_url}/token",
            "auth_provider_x509_cert_url": f"{base_url}/certs",
            "client_x509_cert_url": f"{base_url}/certs/{email_addr}",
            "universe_domain": "googleapis.com",
        }
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(info, indent=2))
        return out


def to_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
