"""Web Push subscriptions from outside: their shape, the token pushsvc names them by, and where they may point.

A browser's PushSubscription (``{"endpoint", "keys": {"p256dh", "auth"}}``) is registered through the device API
or the import CLI. Its endpoint is a URL chosen by whoever registers the device, and pushsvc will POST to it:
so it must be https, and must not lead to loopback, private, link-local or other internal addresses, or
registering a device would make pushsvc call internal services (SSRF). Registration refuses such a literal
address or name here; the Web Push adapter checks again, on every new connection, the addresses the host
name resolves to (a public name can resolve to an internal address, and change later), with the same rule
(``address_refused``). Hosts an operator lists in ``apps.<app>.webpush.allowed_hosts`` are exempt (tests and
``pushsvc dev`` reach their local push service that way).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
import socket
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

from pushsvc.model import RequestError, WebSubscription

MAX_ENDPOINT_LENGTH = 2048
P256_POINT_BYTES = 65  # an uncompressed P-256 public key: 0x04 || X || Y
AUTH_SECRET_BYTES = 16  # RFC 8291 section 3.2
# The token of a web device registered without one: "web:" and 43 characters of its endpoint's SHA-256.
TOKEN_PREFIX = "web:"
_LEGACY_IPV4 = re.compile(r"[0-9a-fA-FxX.]+")
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def parse_subscription(obj: Any, path: str, allowed_hosts: Collection[str] = ()) -> WebSubscription:
    """A PushSubscription object, checked strictly; raises RequestError naming the field."""
    if not isinstance(obj, Mapping):
        raise RequestError(path, "required for a web device: the browser's PushSubscription (endpoint, keys)")
    unknown = sorted(set(obj) - {"endpoint", "keys", "expirationTime"})
    if unknown:
        raise RequestError(f"{path}.{unknown[0][:64]}", "unknown field (allowed: endpoint, expirationTime, keys)")
    endpoint = obj.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise RequestError(f"{path}.endpoint", "required: the push service URL the browser gave")
    problem = endpoint_problem(endpoint, allowed_hosts)
    if problem is not None:
        raise RequestError(f"{path}.endpoint", problem)
    keys = obj.get("keys")
    if not isinstance(keys, Mapping):
        raise RequestError(f"{path}.keys", "required: {p256dh, auth} from the subscription")
    unknown = sorted(set(keys) - {"p256dh", "auth"})
    if unknown:
        raise RequestError(f"{path}.keys.{unknown[0][:64]}", "unknown field (allowed: auth, p256dh)")
    p256dh = _key(keys.get("p256dh"), f"{path}.keys.p256dh", P256_POINT_BYTES)
    if base64url_decode(p256dh)[0] != 4:
        raise RequestError(f"{path}.keys.p256dh", "must be an uncompressed P-256 point (65 bytes starting 0x04)")
    auth = _key(keys.get("auth"), f"{path}.keys.auth", AUTH_SECRET_BYTES)
    return WebSubscription(endpoint=endpoint, p256dh=p256dh, auth=auth)


def subscription_token(endpoint: str) -> str:
    """The token a web device is known by when none was given: stable for one endpoint, URL-safe, and
    short enough for the device routes (/v1/devices/{app}/{token})."""
    digest = hashlib.sha256(endpoint.encode()).digest()
    return TOKEN_PREFIX + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def endpoint_problem(endpoint: str, allowed_hosts: Collection[str] = ()) -> str | None:
    """Why pushsvc must not send to this endpoint (None: it may). Checks the URL and, when its host is an
    address or a local name, that address; names are resolved and checked by the adapter when it connects."""
    if len(endpoint) > MAX_ENDPOINT_LENGTH:
        return f"longer than {MAX_ENDPOINT_LENGTH} characters"
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        return "not a URL"
    if parts.scheme != "https":
        return "must be an https URL (RFC 8030: push services are reached over TLS)"
    host = (parts.hostname or "").rstrip(".")
    if not host:
        return "must name a host"
    if parts.username is not None or parts.password is not None or parts.fragment:
        return "must not carry credentials or a fragment"
    if host in allowed_hosts:
        return None
    if host.lower() in LOCAL_NAMES or host.lower().endswith(".localhost"):
        return f"must not point to this machine ({host})"
    address = _address_literal(host)
    if address is None:
        return None  # a name: its addresses are checked when the adapter connects
    return _refused_because(address)


def _address_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address `host` spells, including the legacy IPv4 forms the resolver still accepts ("2130706433",
    "127.1", "0x7f.0.0.1": all 127.0.0.1); None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _LEGACY_IPV4.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def address_refused(address: str, host: str, allowed_hosts: Collection[str] = ()) -> str | None:
    """Why a resolved `address` of `host` must not be connected to (None: it may)."""
    if host in allowed_hosts:
        return None
    try:
        parsed = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return f"unusable address {address!r}"
    return _refused_because(parsed)


def _refused_because(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not address.is_global or address.is_multicast:
        # is_global is False for loopback, private (RFC 1918, fc00::/7), link-local (cloud metadata at
        # 169.254.169.254), shared (100.64/10), reserved and unspecified ranges.
        return f"must not point to an internal address ({address})"
    return None


def base64url_decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _key(value: Any, path: str, size: int) -> str:
    if not isinstance(value, str) or not value:
        raise RequestError(path, "required (base64url)")
    if len(value) > 2 * size + 8 or "=" in value.rstrip("="):
        raise RequestError(path, f"must be base64url of {size} bytes")
    try:
        decoded = base64url_decode(value.rstrip("="))
    except (binascii.Error, ValueError):
        raise RequestError(path, f"must be base64url of {size} bytes") from None
    if len(decoded) != size or not all(c.isalnum() or c in "-_" for c in value.rstrip("=")):
        raise RequestError(path, f"must be base64url of {size} bytes")
    return value.rstrip("=")


__all__ = [
    "address_refused",
    "endpoint_problem",
    "parse_subscription",
    "subscription_token",
]
