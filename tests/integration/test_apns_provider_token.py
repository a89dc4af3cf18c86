"""The APNs provider token's lifetime, against the TLS + HTTP/2 ApnsPeer on a clock the test moves.

The peer judges tokens as Apple does (ExpiredProviderToken past an hour of ``iat``; with
``provider_tokens.min_update_seconds`` set, 429 TooManyProviderTokenUpdates for a new token within 20 minutes
of the previous one of the same key) and logs every distinct token it accepted, so "one token for every
connection, refreshed between 20 and 60 minutes" is checked by the peer itself, over hours of a fake clock.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from pushsvc.metrics import REGISTRY
from pushsvc.model import Message, Options, Outcome, Recipient
from pushsvc.providers.apns import ApnsProvider
from pushsvc.providers.apns_token import (
    DEFAULT_REFRESH_AGE_SECONDS,
    MAX_TOKEN_AGE_SECONDS,
    MIN_REFRESH_AGE_SECONDS,
    ProviderTokens,
)
from pushsvc.providers.base import Delivery
from pushsvc.simulators.apns import (
    TOKEN_UPDATE_MIN_SECONDS,
    ApnsPeer,
    ApnsSigningKey,
    apns_token_settings,
)
from pushsvc.simulators.tls import TestPki as Pki  # aliased: pytest would try to collect Test*
from tests.peers.fake_clock import FakeClock

# apns_pki, apns_signing_key
pytest_plugins = ("tests.peers.fixtures_apns",)
pytestmark = pytest.mark.integration

SEND_TIMEOUT = 3.0
_devices = itertools.count()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def peer(apns_pki: Pki, apns_signing_key: ApnsSigningKey, clock: FakeClock) -> AsyncIterator[ApnsPeer]:
    """A peer on the test's clock, enforcing Apple's token update limit; two streams per connection, so a few
    concurrent sends need several connections."""
    peer = ApnsPeer(
        apns_pki,
        auth="token",
        jwt_public_key=apns_signing_key.public_pem,
        key_id=apns_signing_key.key_id,
        team_id=apns_signing_key.team_id,
        max_concurrent_streams=2,
        clock=clock,
    )
    peer.provider_tokens.min_update_seconds = TOKEN_UPDATE_MIN_SECONDS
    async with peer:
        yield peer


MakeProvider = Callable[..., ApnsProvider]


@pytest.fixture
async def make_provider(
    peer: ApnsPeer, apns_pki: Pki, apns_signing_key: ApnsSigningKey, clock: FakeClock
) -> AsyncIterator[MakeProvider]:
    """Providers on the test's clock, sharing one token registry of their own (a fresh "process")."""
    tokens = ProviderTokens()
    providers: list[ApnsProvider] = []

    def make(app: str = "app1", registry: ProviderTokens | None = None, **kwargs: Any) -> ApnsProvider:
        settings = apns_token_settings(peer, apns_pki, apns_signing_key, max_connections=4)
        provider = ApnsProvider(app, settings, SEND_TIMEOUT, clock=clock, provider_tokens=registry or tokens, **kwargs)
        providers.append(provider)
        return provider

    yield make
    for provider in providers:
        await provider.close()


def delivery(app: str = "app1", token: str | None = None) -> Delivery:
    return Delivery(
        notification_id="n1",
        device=Recipient(app=app, token=token or f"dev-{next(_devices)}", platform="ios"),
        message=Message(title="Hello", body="World"),
        options=Options(),
    )


def refreshes(app: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "pushsvc_provider_token_refreshes_total", {"app": app, "provider": "apns", "reason": reason}
    )
    return value or 0.0


async def test_three_hours_of_sends_share_one_token_refreshed_between_20_and_60_minutes(
    make_provider: MakeProvider, peer: ApnsPeer, clock: FakeClock, apns_signing_key: ApnsSigningKey
) -> None:
    """Two apps on one key, several connections each, sends every 7 minutes for 3 hours: the peer sees one
    token at a time on every connection, a new one only 20 to 60 minutes after the last, and never refuses one
    (neither expired nor an update too soon): every send is one request, delivered."""
    first_before, age_before = refreshes("app1", "first"), refreshes("app1", "age") + refreshes("app2", "age")
    apps = [make_provider("app1"), make_provider("app2")]
    peer.set_default(delay=0.02)  # streams stay open a moment: concurrent sends spread over connections
    start, step, sends = clock(), 7 * 60, 0
    steps: list[list[int]] = []  # per step, the indexes of its requests at the peer
    while clock() - start <= 3 * 3600:
        before = len(peer.requests)
        jobs = [(p, delivery(p.app_id)) for p in apps for _ in range(6)]
        results = await asyncio.gather(*(p.send(d) for p, d in jobs))
        assert {r.outcome for r in results} == {Outcome.DELIVERED}, results
        sends += len(jobs)
        steps.append(list(range(before, len(peer.requests))))
        clock.advance(step)

    assert len(peer.requests) == sends  # nothing refused and sent again
    assert peer.provider_tokens.updates_refused == 0
    tokens = peer.provider_tokens.tokens
    assert {(t.team_id, t.key_id) for t in tokens} == {(apns_signing_key.team_id, apns_signing_key.key_id)}
    gaps = [later.first_seen - earlier.first_seen for earlier, later in itertools.pairwise(tokens)]
    assert gaps and all(MIN_REFRESH_AGE_SECONDS <= gap < MAX_TOKEN_AGE_SECONDS for gap in gaps), gaps
    assert all(t.first_seen - t.issued_at < 60 for t in tokens)  # each used from the moment it was signed
    assert len(tokens) == 4  # signed at 0, 56, 112 and 168 minutes: the first step at or past 50 minutes' age
    # One token at a time for every connection of both apps, and several connections were in use.
    for indexes in steps:
        assert len({peer.requests[i].headers["authorization"] for i in indexes}) == 1
    assert len({r.connection_id for r in peer.requests}) >= 4
    assert all(len(t.connections) >= 4 for t in tokens)
    # Counted once per token: the first, then the scheduled ones (wherever the send that signed it came from).
    assert refreshes("app1", "first") - first_before == 1
    assert refreshes("app1", "age") + refreshes("app2", "age") - age_before == len(tokens) - 1


async def test_expired_provider_token_is_answered_by_one_refresh_and_a_resend(
    make_provider: MakeProvider, peer: ApnsPeer, clock: FakeClock
) -> None:
    """APNs's clock 15 minutes ahead of ours: at 46 minutes (ours; not yet due at 50) the token is past the hour
    for APNs. Ten sends in flight with it get ExpiredProviderToken: one new token, each push resent once and
    delivered once, the connection kept, the provider not paused (no auth error)."""
    peer.clock = lambda: clock() + 15 * 60
    provider = make_provider()
    assert (await provider.send(delivery())).outcome is Outcome.DELIVERED
    rejected_before = refreshes("app1", "rejected")
    clock.advance(46 * 60)
    peer.requests.clear()

    results = await asyncio.gather(*(provider.send(delivery(token=f"skew-{i}")) for i in range(10)))

    assert {(r.outcome, r.status) for r in results} == {(Outcome.DELIVERED, 200)}
    old, new = peer.provider_tokens.tokens
    assert new.issued_at - old.issued_at == 46 * 60
    for i in range(10):
        refused, resent = peer.requests_for(f"skew-{i}")
        assert refused.headers["authorization"] == old.authorization
        assert resent.headers["authorization"] == new.authorization
        assert refused.headers["apns-id"] == resent.headers["apns-id"]  # the same notification, not a second one
    assert refreshes("app1", "rejected") - rejected_before == 1
    # No connection retired for it: requests on them simply carry the new token.
    assert peer.connections_active == peer.connections_opened
    assert peer.provider_tokens.updates_refused == 0


async def test_one_expired_answer_gets_one_refresh_and_the_push_delivered_once(
    make_provider: MakeProvider, peer: ApnsPeer, clock: FakeClock
) -> None:
    provider = make_provider()
    assert (await provider.send(delivery())).outcome is Outcome.DELIVERED
    clock.advance(25 * 60)  # old enough to replace (20 minutes), not due yet (50)
    peer.script("tok-once", status=403, reason="ExpiredProviderToken", times=1)

    result = await provider.send(delivery(token="tok-once"))

    assert (result.outcome, result.status) == (Outcome.DELIVERED, 200)
    refused, delivered = peer.requests_for("tok-once")
    assert refused.headers["authorization"] != delivered.headers["authorization"]
    assert peer.provider_tokens.refreshes(peer.team_id or "", peer.key_id or "") == 1
    assert peer.connections_opened == 1
    # Later sends carry the new token, without another refresh.
    assert (await provider.send(delivery(token="tok-after"))).outcome is Outcome.DELIVERED
    assert peer.requests_for("tok-after")[0].headers["authorization"] == delivered.headers["authorization"]
    assert len(peer.provider_tokens.tokens) == 2


async def test_a_fresh_token_refused_as_expired_is_an_auth_error_without_a_refresh(
    make_provider: MakeProvider, peer: ApnsPeer, clock: FakeClock
) -> None:
    """A new token within 20 minutes would be TooManyProviderTokenUpdates: a token of 10 minutes refused as
    expired is our clock or our key, for an operator (the auth error pauses and pages)."""
    provider = make_provider()
    assert (await provider.send(delivery())).outcome is Outcome.DELIVERED
    clock.advance(10 * 60)
    peer.script("tok-young", status=403, reason="ExpiredProviderToken", times=1)

    result = await provider.send(delivery(token="tok-young"))

    assert (result.outcome, result.reason, result.status) == (Outcome.AUTH_ERROR, "ExpiredProviderToken", 403)
    assert len(peer.requests_for("tok-young")) == 1
    # Neither a new token nor a new connection (a new connection must not mean a new token either).
    assert (await provider.send(delivery(token="tok-next"))).outcome is Outcome.DELIVERED
    assert len(peer.provider_tokens.tokens) == 1
    assert peer.connections_opened == 1


async def test_a_token_update_within_20_minutes_is_refused_by_the_peer(
    make_provider: MakeProvider, peer: ApnsPeer, clock: FakeClock
) -> None:
    """The peer's rule, and its answer's class: two token registries (two processes, or aioapns's token per
    connection) presenting new tokens minutes apart. Retryable: the token already in use stays good."""
    first = make_provider("app1", registry=ProviderTokens())
    second = make_provider("app2", registry=ProviderTokens())
    assert (await first.send(delivery("app1"))).outcome is Outcome.DELIVERED
    clock.advance(5 * 60)
    result = await second.send(delivery("app2"))
    assert (result.outcome, result.reason, result.status) == (Outcome.RETRYABLE, "TooManyProviderTokenUpdates", 429)
    assert peer.provider_tokens.updates_refused == 1
    clock.advance(TOKEN_UPDATE_MIN_SECONDS)
    assert (await second.send(delivery("app2"))).outcome is Outcome.DELIVERED
    assert len(peer.provider_tokens.tokens) == 2


@pytest.mark.parametrize("minutes", [19, 60, 90])
def test_refresh_age_outside_apples_window_is_refused(
    make_provider: MakeProvider, minutes: int
) -> None:
    with pytest.raises(ValueError, match=r"refresh age"):
        make_provider(token_refresh_age=minutes * 60)
    assert MIN_REFRESH_AGE_SECONDS <= DEFAULT_REFRESH_AGE_SECONDS < MAX_TOKEN_AGE_SECONDS
