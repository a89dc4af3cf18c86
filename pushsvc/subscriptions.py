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
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
# One label of a host name in its ASCII (IDNA) form: letters, digits and inner hyphens (RFC 1123).
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
MAX_HOST_LENGTH = 253
# IPv6 ranges that carry an IPv4 address in their last 32 bits and reach it: NAT64's well-known prefix
# (RFC 6052) and the deprecated IPv4-compatible addresses (RFC 4291). Mapped (::ffff:0:0/96) and 6to4
# (2002::/16) addresses are read by ipaddress itself (ipv4_mapped, sixtofour).
_IPV4_EMBEDDING = (
    ipaddress.IPv6Network("64:ff9b::/96"),
    ipaddress.IPv6Network("::/96"),
    ipaddress.IPv6Network("::ffff:0:0:0/96"),  # IPv4-translated (RFC 2765, SIIT)
)
# Ranges that are not globally reachable (IANA special-purpose registries) but that ipaddress.is_global
# calls global in some Python versions: its tables changed in patch releases (3.11.7 has 192.0.0.8 global).
# Listed so that the rule does not depend on the interpreter's patch level.
_NOT_GLOBAL = tuple(
    ipaddress.ip_network(network)
    for network in (
        "192.0.0.0/24",  # IETF protocol assignments (no push service lives there)
        "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215): leads into the local network
        "fec0::/10",  # deprecated site-local
        "5f00::/16",  # SRv6 SIDs (RFC 9602)
        "3fff::/20",  # documentation (RFC 9637)
    )
)


def parse_subscription(obj: Any, path: str, allowed_hosts: Collection[str] = ()) -> WebSubscription:
    """A PushSubscription object, checked strictly; raises RequestError naming the field."""
    if not isinstance(obj, Mapping):
        raise RequestError(path, "required for a web device: the browser's PushSubscription (endpoint, keys)")
    # str(): a Python caller's mapping may have keys of other types (JSON objects only have strings).
    unknown = sorted(str(key) for key in obj if key not in {"endpoint", "keys", "expirationTime"})
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
    unknown = sorted(str(key) for key in keys if key not in {"p256dh", "auth"})
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
    address or a local name, that address; names are resolved and checked by the adapter when it connects.

    The host must be an IP address or a plain DNS name: anything else (percent signs, spaces, an IPv6 zone,
    the legacy numeric IPv4 spellings "127.1", "2130706433", "0x7f.1") is refused, because HTTP clients and
    resolvers read such hosts differently from urlsplit, and that difference is where an SSRF check is lost.
    """
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
    if _allowed(host, allowed_hosts):
        return None
    if host in LOCAL_NAMES or host.endswith(".localhost"):
        return f"must not point to this machine ({host})"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return _name_problem(host)  # a name: its addresses are checked when the adapter connects
    return _refused_because(address)


def address_refused(address: str, host: str, allowed_hosts: Collection[str] = ()) -> str | None:
    """Why a resolved `address` of `host` must not be connected to (None: it may)."""
    if _allowed(host, allowed_hosts):
        return None
    try:
        parsed = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return f"unusable address {address!r}"
    return _refused_because(parsed)


def _allowed(host: str, allowed_hosts: Collection[str]) -> bool:
    """Host names compare without case and without a trailing dot (an FQDN's), as DNS does."""
    def plain(name: str) -> str:
        return name.strip("[]").rstrip(".").lower()  # "[::1]" and "::1" are one host, as are FQDN spellings

    host = plain(host)
    return any(host == plain(allowed) for allowed in allowed_hosts)


def _name_problem(host: str) -> str | None:
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return "must name a valid host"
    if len(ascii_host) > MAX_HOST_LENGTH or not all(_LABEL.match(label) for label in ascii_host.split(".")):
        return "must name a valid host (letters, digits, hyphens and dots, or an IP address)"
    try:
        socket.inet_aton(ascii_host)
    except OSError:
        return None
    # inet_aton reads it as an IPv4 address (127.1, 2130706433, 0x7f.1, 0177.0.0.1): no DNS name looks so.
    return "must not be an IPv4 address in a legacy numeric form (use a host name)"


def _refused_because(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    # An IPv6 form of an IPv4 address is judged by the IPv4 address it leads to.
    target = (_embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else None) or address
    if not target.is_global or target.is_multicast or any(target in network for network in _NOT_GLOBAL):
        # is_global is False for loopback, private (RFC 1918, fc00::/7), link-local (cloud metadata at
        # 169.254.169.254), shared (100.64/10), reserved and unspecified ranges.
        return f"must not point to an internal address ({address})"
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address leads to (mapped, 6to4, NAT64, IPv4-compatible), if any: the v6 form
    of an internal v4 address is as internal as it is, although ipaddress calls some of them global."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in network for network in _IPV4_EMBEDDING):
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
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
