"""RFC 8292 VAPID verification, as a push service does it: the ``vapid t=<JWT>, k=<key>`` Authorization.

401 when the token is missing, malformed, not an ES256 signature by ``k``, addressed to another origin
(``aud``), expired or more than 24 hours ahead (``exp``), or without a mailto: or https: ``sub``; 403 when
``k`` is not the applicationServerKey the subscription was made with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from pushsvc.simulators.webpush.keys import b64url_decode

MAX_VAPID_LIFETIME = 24 * 3600  # RFC 8292 section 2: exp at most 24 hours ahead


@dataclass(frozen=True)
class VapidCheck:
    status: int | None  # None: accepted; 401 or 403
    problem: str | None
    token: str | None = None
    key: str | None = None
    claims: dict[str, Any] | None = None


def parse_vapid(authorization: str) -> tuple[str, str] | None:
    """(t, k) from ``vapid t=<jwt>, k=<key>`` (parameters in any order, spaces optional), or None."""
    scheme, _, params = authorization.strip().partition(" ")
    if scheme.lower() != "vapid":
        return None
    values: dict[str, str] = {}
    for part in params.split(","):
        name, sep, value = part.strip().partition("=")
        if sep:
            values[name.strip().lower()] = value.strip()
    if not values.get("t") or not values.get("k"):
        return None
    return values["t"], values["k"]


def check_vapid(authorization: str | None, origin: str, now: float, application_server_key: str | None) -> VapidCheck:
    if not authorization:
        return VapidCheck(401, "missing Authorization (VAPID required)")
    parsed = parse_vapid(authorization)
    if parsed is None:
        return VapidCheck(401, "Authorization is not 'vapid t=..., k=...'")
    token, key = parsed
    try:
        raw_key = b64url_decode(key)
        public_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw_key)
    except ValueError:
        return VapidCheck(401, "k is not a base64url uncompressed P-256 point", token, key)
    if len(raw_key) != 65:
        return VapidCheck(401, "k must be the uncompressed point (65 bytes)", token, key)
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, public_key, algorithms=["ES256"],
                            options={"verify_exp": False, "verify_aud": False, "verify_iat": False})
    except jwt.PyJWTError as exc:
        return VapidCheck(401, f"JWT not signed by k with ES256 ({exc})", token, key)
    check = VapidCheck(None, None, token, key, claims)
    problem = None
    if header.get("alg") != "ES256":
        problem = "alg must be ES256"
    elif claims.get("aud") != origin:
        problem = f"aud {claims.get('aud')!r} is not this origin {origin!r}"
    elif not isinstance(claims.get("exp"), int):
        problem = "exp missing"
    elif claims["exp"] <= now:
        problem = "expired"
    elif claims["exp"] > now + MAX_VAPID_LIFETIME:
        problem = "exp more than 24 hours ahead"
    elif not isinstance(claims.get("sub"), str) or not claims["sub"].startswith(("mailto:", "https:")):
        problem = "sub must be a mailto: or https: URI"
    if problem is not None:
        return VapidCheck(401, problem, token, key, claims)
    if application_server_key is not None and key != application_server_key:
        return VapidCheck(403, "k is not the key the subscription was made with", token, key, claims)
    return check
