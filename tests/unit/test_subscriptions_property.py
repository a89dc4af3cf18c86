"""Property-based tests of pushsvc/subscriptions.py: the PushSubscription parser, the endpoint rules that keep
pushsvc from calling internal services (SSRF), and the tokens web devices are named by.

* arbitrary JSON, and valid subscriptions with any one value replaced, never raise anything but a
  RequestError naming a ``subscription...`` field;
* a valid subscription round-trips (parsed, stored as its JSON shape, parsed again: the same values);
* every internal address (IPv4 ranges, IPv6 ranges, IPv4-mapped, NAT64, 6to4 and IPv4-compatible forms of
  internal IPv4, and the legacy numeric IPv4 spellings such as 127.1 or 2130706433) is refused, by the
  registration rule and by the connect-time rule, unless its host is allowed; public ones are not;
* tokens are stable, distinct for distinct endpoints, and match the device token pattern.

Each test sets max_examples so the file stays within seconds; derandomize makes every run the same.
"""

from __future__ import annotations

import base64
import ipaddress
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pushsvc.device_contract import TOKEN_PATTERN
from pushsvc.model import RequestError, WebSubscription
from pushsvc.subscriptions import address_refused, endpoint_problem, parse_subscription, subscription_token

FAST = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
PATH = "subscription"

# --------------------------------------------------------------------------------------------- strategies

ANY_TEXT = st.text(st.characters(codec=None), max_size=40)  # lone surrogates included
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT
JSON_VALUES = st.recursive(
    SCALARS, lambda children: st.lists(children, max_size=4) | st.dictionaries(ANY_TEXT, children, max_size=4),
    max_leaves=15,
)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# Not globally reachable, although some Python versions' ipaddress.is_global says so (the rule lists it).
NOT_GLOBAL_V4 = ipaddress.IPv4Network("192.0.0.0/24")
LABEL = st.from_regex(r"\A[a-z]([a-z0-9-]{0,20}[a-z0-9])?\Z")
PUBLIC_NAMES = st.builds(
    lambda labels, tld: ".".join([*labels, tld]),
    st.lists(LABEL, min_size=1, max_size=3),
    st.sampled_from(["com", "net", "org", "example", "push"]),
).filter(lambda host: not host.endswith(".localhost"))
PUBLIC_V4 = st.ip_addresses(v=4).filter(lambda a: a.is_global and not a.is_multicast and a not in NOT_GLOBAL_V4)
PUBLIC_HOSTS = PUBLIC_NAMES | PUBLIC_V4.map(str) | st.sampled_from(
    ["fcm.googleapis.com", "updates.push.services.mozilla.com", "web.push.apple.com", "wns2-by3p.notify.windows.com"]
)
ENDPOINT_PATHS = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_:/", max_size=200)


@st.composite
def endpoints(draw: st.DrawFn) -> str:
    host = draw(PUBLIC_HOSTS)
    port = draw(st.none() | st.integers(1, 65535))
    authority = host if port is None else f"{host}:{port}"
    return f"https://{authority}/{draw(ENDPOINT_PATHS)}"


@st.composite
def subscriptions(draw: st.DrawFn) -> dict[str, Any]:
    """A browser's PushSubscription JSON (keys padded or not, as libraries differ)."""
    point = b"\x04" + draw(st.binary(min_size=64, max_size=64))
    auth = draw(st.binary(min_size=16, max_size=16))
    pad = draw(st.booleans())

    def encode(data: bytes) -> str:
        text = base64.urlsafe_b64encode(data).decode()
        return text if pad else text.rstrip("=")

    keys = {"p256dh": encode(point), "auth": encode(auth)}
    subscription: dict[str, Any] = {"endpoint": draw(endpoints()), "keys": keys}
    if draw(st.booleans()):
        subscription["expirationTime"] = draw(st.none() | st.integers(0, 2**53))
    return subscription


PLACES = [("endpoint",), ("keys",), ("keys", "p256dh"), ("keys", "auth"), ("expirationTime",), ("extra",),
          ("keys", "extra")]


@st.composite
def mutated_subscriptions(draw: st.DrawFn) -> Any:
    subscription = draw(subscriptions())
    for _ in range(draw(st.integers(1, 2))):
        place = draw(st.sampled_from(PLACES))
        node = subscription
        for key in place[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[place[-1]] = draw(JSON_VALUES)
    return subscription


INTERNAL_V4_NETWORKS = [
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10",
    "0.0.0.0/8", "192.0.0.0/24", "198.18.0.0/15", "240.0.0.0/4", "224.0.0.0/4", "192.0.2.0/24",
]
INTERNAL_V6_NETWORKS = [
    "::1/128", "::/128", "fc00::/7", "fe80::/10", "ff00::/8", "2001:db8::/32", "64:ff9b:1::/48", "fec0::/10",
    "100::/64", "3fff::/20",
]
INTERNAL_V4 = st.one_of(*(st.ip_addresses(network=n) for n in INTERNAL_V4_NETWORKS))
INTERNAL_V6 = st.one_of(*(st.ip_addresses(network=n) for n in INTERNAL_V6_NETWORKS))


def v6_forms(v4: ipaddress.IPv4Address) -> list[ipaddress.IPv6Address]:
    """IPv6 addresses that lead to `v4`: mapped, NAT64 (RFC 6052), 6to4, IPv4-compatible."""
    value = int(v4)
    return [
        ipaddress.IPv6Address((0xFFFF << 32) | value),
        ipaddress.IPv6Address((0x64FF9B << 96) | value),
        ipaddress.IPv6Address((0x2002 << 112) | (value << 80) | 1),
        ipaddress.IPv6Address(value),
    ]


def legacy_spellings(v4: ipaddress.IPv4Address) -> list[str]:
    """What inet_aton (and so getaddrinfo) reads as `v4`, although it is not a dotted quad."""
    a, b, c, d = v4.packed
    value = int(v4)
    return [
        str(value),
        hex(value),
        f"{a}.{(b << 16) | (c << 8) | d}",
        f"{a}.{b}.{(c << 8) | d}",
        ".".join(f"0{octet:o}" for octet in (a, b, c, d)),
        ".".join(hex(octet) for octet in (a, b, c, d)),
    ]


def url_host(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return f"[{address}]" if address.version == 6 else str(address)


# ----------------------------------------------------------------------------------------------- parsing


def only_subscription_errors(raw: Any, allowed_hosts: list[str] | None = None) -> WebSubscription | None:
    try:
        return parse_subscription(raw, PATH, allowed_hosts or ())
    except RequestError as exc:
        assert exc.field == PATH or exc.field.startswith(PATH + "."), exc.field
        assert exc.reason
        return None


@FAST
@given(JSON_VALUES, st.lists(ANY_TEXT, max_size=3))
@example({"endpoint": "https://[::1", "keys": {}}, [])
@example({"endpoint": "https://push.example:99999/x", "keys": {}}, [])
@example({1: "x", "endpoint": "https://push.example/x"}, [])
@example({"endpoint": "https://push.example/x", "keys": {None: 1, "p256dh": "x"}}, [])
def test_arbitrary_json_raises_only_request_errors_naming_a_subscription_field(raw: Any, hosts: list[str]) -> None:
    only_subscription_errors(raw, hosts)


@FAST
@given(mutated_subscriptions())
def test_valid_subscriptions_with_a_value_replaced_raise_only_request_errors(raw: Any) -> None:
    only_subscription_errors(raw)


@FAST
@given(subscriptions())
def test_a_valid_subscription_round_trips(raw: dict[str, Any]) -> None:
    parsed = parse_subscription(raw, PATH)

    assert parsed.endpoint == raw["endpoint"]
    assert parsed.p256dh == raw["keys"]["p256dh"].rstrip("=")
    assert parsed.auth == raw["keys"]["auth"].rstrip("=")
    assert base64.urlsafe_b64decode(parsed.p256dh + "=" * (-len(parsed.p256dh) % 4))[0] == 4
    stored = {"endpoint": parsed.endpoint, "keys": {"p256dh": parsed.p256dh, "auth": parsed.auth}}
    assert parse_subscription(stored, PATH) == parsed


# ---------------------------------------------------------------------------------------------- the rules


@FAST
@given(INTERNAL_V4 | INTERNAL_V6)
def test_internal_addresses_are_refused_unless_allowed(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    host = url_host(address)
    endpoint = f"https://{host}:8443/push/x"

    assert endpoint_problem(endpoint) is not None
    assert address_refused(str(address), "push.example.com") is not None
    # Allowed by the host as written in the URL (what an operator lists) or by the name resolved.
    assert endpoint_problem(endpoint, [host.strip("[]")]) is None
    assert address_refused(str(address), "push.example.com", ["push.example.com"]) is None


@FAST
@given(INTERNAL_V4)
def test_ipv6_forms_of_internal_ipv4_are_refused(v4: ipaddress.IPv4Address) -> None:
    for v6 in v6_forms(v4):
        assert endpoint_problem(f"https://[{v6}]/push/x") is not None, v6
        assert address_refused(str(v6), "push.example.com") is not None, v6


@FAST
@given(PUBLIC_V4)
def test_ipv6_forms_of_public_ipv4_are_judged_by_it(v4: ipaddress.IPv4Address) -> None:
    for v6 in v6_forms(v4):
        assert address_refused(str(v6), "push.example.com") is None, v6


@FAST
@given(st.ip_addresses(v=4))
@example(ipaddress.IPv4Address("127.0.0.1"))
@example(ipaddress.IPv4Address("169.254.169.254"))
def test_legacy_numeric_spellings_of_any_ipv4_address_are_refused(v4: ipaddress.IPv4Address) -> None:
    for spelling in legacy_spellings(v4):
        problem = endpoint_problem(f"https://{spelling}/push/x")
        assert problem is not None, spelling


@FAST
@given(st.ip_addresses(v=4))
def test_an_ipv4_address_is_refused_exactly_when_it_is_not_public(v4: ipaddress.IPv4Address) -> None:
    public = v4.is_global and not v4.is_multicast and v4 not in NOT_GLOBAL_V4
    assert (address_refused(str(v4), "push.example.com") is None) is public
    assert (endpoint_problem(f"https://{v4}/push/x") is None) is public


@FAST
@given(endpoints())
def test_public_endpoints_are_allowed(endpoint: str) -> None:
    assert endpoint_problem(endpoint) is None


@FAST
@given(ANY_TEXT, st.lists(ANY_TEXT, max_size=3))
@example("https://[fe80::1%25eth0]/x", [])
@example("https://%31%30.0.0.1/x", [])
@example("https://push.example\\@10.0.0.1/x", [])
def test_the_rules_never_raise(endpoint: str, hosts: list[str]) -> None:
    for problem in (endpoint_problem(endpoint, hosts), address_refused(endpoint, endpoint, hosts)):
        assert problem is None or isinstance(problem, str)


@FAST
@given(st.sampled_from(["localhost", "LOCALHOST", "ip6-localhost", "push.localhost", "localhost."]))
def test_local_names_are_refused_unless_allowed(host: str) -> None:
    assert endpoint_problem(f"https://{host}:8443/x") is not None
    assert endpoint_problem(f"https://{host}:8443/x", [host.lower().rstrip(".")]) is None


# ------------------------------------------------------------------------------------------------ tokens


@FAST
@given(st.text(max_size=300) | endpoints())  # what a stored endpoint can be: no lone surrogates
def test_tokens_are_stable_and_match_the_device_token_pattern(endpoint: str) -> None:
    token = subscription_token(endpoint)
    assert token == subscription_token(endpoint)
    assert TOKEN_PATTERN.match(token), token
    assert token.startswith("web:")


@FAST
@given(st.lists(endpoints(), min_size=2, max_size=20, unique=True))
def test_distinct_endpoints_get_distinct_tokens(endpoints_: list[str]) -> None:
    assert len({subscription_token(e) for e in endpoints_}) == len(endpoints_)
