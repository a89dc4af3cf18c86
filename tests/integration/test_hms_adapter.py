"""HmsProvider against the TLS Push Kit peer: exact message JSON, the OAuth token flow, and every outcome class.

Everything goes through real sockets: tokens are fetched from the peer's token endpoint over HTTP/1.1 + TLS,
messages travel over HTTP/2 + TLS, verified against the test CA given as ``ca_file``. The provider and the
peer share a fake clock, so an hour of token lifetime passes in a moment and "never an expired token" is
checked by the peer itself; no assertion depends on how long anything takes.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from pushsvc.config import HmsSettings
from pushsvc.model import LocalizedText, Message, Options, Outcome, Recipient
from pushsvc.providers import hms
from pushsvc.providers.base import Delivery, PayloadRejected
from pushsvc.providers.hms import HmsProvider
from pushsvc.simulators import tls
from pushsvc.simulators.hms import DEFAULT_CLIENT_SECRET, HmsPeer

# hms_test_pki, hms_test_peer (one TLS peer per session)
pytest_plugins = ["tests.peers.fixtures_hms"]

pytestmark = pytest.mark.integration

SEND_TIMEOUT = 2.0
T0 = 1_750_000_000.0


class FakeClock:
    """The provider's and the peer's clock: epoch seconds that move only when a test says so."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def peer(hms_test_peer: HmsPeer, clock: FakeClock) -> Iterator[HmsPeer]:
    """The session's peer with no scripts, records or tokens, on the test's clock."""
    hms_test_peer.reset()
    hms_test_peer.clock = clock
    yield hms_test_peer
    hms_test_peer.reset()
    hms_test_peer.client_secret = DEFAULT_CLIENT_SECRET


@pytest.fixture
def settings(peer: HmsPeer, hms_test_pki: tls.TestPki) -> HmsSettings:
    return peer.settings(hms_test_pki.ca_file)


@pytest_asyncio.fixture
async def provider(settings: HmsSettings, clock: FakeClock) -> AsyncIterator[HmsProvider]:
    p = HmsProvider("demo", settings, send_timeout=SEND_TIMEOUT, clock=clock)
    try:
        yield p
    finally:
        await p.close()


def delivery(
    token: str,
    *,
    locale: str | None = None,
    message: Message | None = None,
    options: Options | None = None,
    expires_at: float | None = None,
    notification_id: str = "demo:n-1",
) -> Delivery:
    return Delivery(
        notification_id=notification_id,
        device=Recipient(app="demo", token=token, platform="huawei", locale=locale),
        message=message or Message(title="Hi", body="there"),
        options=options or Options(),
        expires_at=expires_at,
    )


async def assert_still_works(provider: HmsProvider, peer: HmsPeer, token: str = "healthy-token-1") -> None:
    before = len(peer.requests_for(token))
    result = await provider.send(delivery(token))
    assert result.outcome is Outcome.DELIVERED, result
    assert len(peer.requests_for(token)) == before + 1


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------ encoding


async def test_alert_message_json_is_exact(provider: HmsProvider, peer: HmsPeer, clock: FakeClock) -> None:
    message = Message(
        title="Hello",
        body="Default body",
        data={"order": 42, "vip": True, "ratio": 1.5, "note": "x"},
        badge=3,
        sound="default",
        localized={"pt-BR": LocalizedText("Olá", "Corpo"), "de": LocalizedText(title="Hallo")},
    )
    options = Options(priority="high", collapse_key="7", push_type="alert")

    result = await provider.send(
        delivery("tok-pt-1", locale="pt_BR", message=message, options=options, expires_at=clock() + 3600)
    )

    assert result.outcome is Outcome.DELIVERED, result
    assert result.status == 200
    assert result.provider_id  # HMS's requestId
    [received] = peer.requests
    assert received.app_id == peer.app_id
    assert received.http_version == "h2"
    assert received.auth == "valid"
    assert received.headers["authorization"] == f"Bearer {peer.token_requests[0].granted}"
    assert received.headers["content-type"].startswith("application/json")
    assert received.body == {
        "validate_only": False,
        "message": {
            "token": ["tok-pt-1"],
            "data": '{"order":"42","vip":"true","ratio":"1.5","note":"x"}',
            "android": {
                "urgency": "HIGH",
                "ttl": "3600s",
                "collapse_key": 7,
                "bi_tag": "demo:n-1",
                "notification": {
                    "title": "Olá",
                    "body": "Corpo",
                    "click_action": {"type": 3},
                    "default_sound": True,
                },
            },
        },
    }

    # Locale fallback: "de_AT" -> "de" (title only, body from the default); an unknown locale -> default text.
    await provider.send(delivery("tok-de-1", locale="de_AT", message=message, options=options))
    await provider.send(delivery("tok-xx-1", locale="fr", message=message, options=options))
    notification_de = peer.requests_for("tok-de-1")[0].message["android"]["notification"]
    notification_xx = peer.requests_for("tok-xx-1")[0].message["android"]["notification"]
    assert (notification_de["title"], notification_de["body"]) == ("Hallo", "Default body")
    assert (notification_xx["title"], notification_xx["body"]) == ("Hello", "Default body")


async def test_alert_with_normal_priority_custom_sound_and_body_only(provider: HmsProvider, peer: HmsPeer) -> None:
    message = Message(body="Only a body", sound="chime")
    result = await provider.send(delivery("tok-n-1", message=message, options=Options(priority="normal")))

    assert result.outcome is Outcome.DELIVERED, result
    assert peer.requests[0].message == {
        "token": ["tok-n-1"],
        "android": {
            "urgency": "NORMAL",
            "bi_tag": "demo:n-1",
            "notification": {
                "body": "Only a body",
                "click_action": {"type": 3},
                "sound": "chime",
                "default_sound": False,
            },
        },
    }


async def test_background_push_is_a_data_message(provider: HmsProvider, peer: HmsPeer) -> None:
    message, options = Message(data={"sync": True, "since": 17}), Options(priority="normal", push_type="background")
    result = await provider.send(delivery("tok-bg-1", message=message, options=options))

    assert result.outcome is Outcome.DELIVERED, result
    assert peer.requests[0].body == {
        "validate_only": False,
        "message": {
            "token": ["tok-bg-1"],
            "data": '{"sync":"true","since":"17"}',
            "android": {"urgency": "NORMAL", "bi_tag": "demo:n-1"},
        },
    }


async def test_voip_push_is_a_high_priority_data_message(provider: HmsProvider, peer: HmsPeer) -> None:
    options = Options(priority="high", push_type="voip")
    message = Message(data={"call_id": "c-9", "caller": "Ana"})
    result = await provider.send(delivery("tok-voip-1", message=message, options=options))

    assert result.outcome is Outcome.DELIVERED, result
    assert peer.requests[0].message == {
        "token": ["tok-voip-1"],
        "data": '{"call_id":"c-9","caller":"Ana"}',
        "android": {"urgency": "HIGH", "category": "VOIP", "bi_tag": "demo:n-1"},
    }


@pytest.mark.parametrize(
    ("collapse_key", "group"),
    [("1", 1), ("42", 42), ("100", 100), ("0", None), ("101", None), ("007", None), ("orders-7", None), (None, None)],
)
async def test_collapse_key_maps_to_a_cache_group_or_nothing(
    provider: HmsProvider, peer: HmsPeer, collapse_key: str | None, group: int | None
) -> None:
    result = await provider.send(delivery("tok-ck-1", options=Options(collapse_key=collapse_key)))

    assert result.outcome is Outcome.DELIVERED, result
    android = peer.requests[0].message["android"]
    assert android.get("collapse_key") == group
    assert ("collapse_key" in android) == (group is not None)


@pytest.mark.parametrize(
    ("expires_in", "ttl"),
    [(3600.9, "3600s"), (59.0, "59s"), (0.4, "1s"), (-30.0, "1s"), (40 * 86400.0, "1296000s"), (None, None)],
)
async def test_ttl_comes_from_the_delivery_expiry(
    provider: HmsProvider, peer: HmsPeer, clock: FakeClock, expires_in: float | None, ttl: str | None
) -> None:
    expires_at = None if expires_in is None else clock() + expires_in
    result = await provider.send(delivery("tok-ttl-1", expires_at=expires_at))

    assert result.outcome is Outcome.DELIVERED, result  # the peer refuses a ttl that has already ended
    assert peer.requests[0].message["android"].get("ttl") == ttl


async def test_bi_tag_is_the_notification_id_or_its_digest(provider: HmsProvider, peer: HmsPeer) -> None:
    long_id = "demo:" + "r" * 120
    await provider.send(delivery("tok-tag-1", notification_id="demo:order-7"))
    await provider.send(delivery("tok-tag-2", notification_id=long_id))

    assert peer.requests_for("tok-tag-1")[0].message["android"]["bi_tag"] == "demo:order-7"
    long_tag = peer.requests_for("tok-tag-2")[0].message["android"]["bi_tag"]
    assert peer.requests_for("tok-tag-2")[0].code == "80000000"
    assert long_tag == hms.bi_tag_for(long_id) != hms.bi_tag_for(long_id + "x")
    assert long_tag.startswith("sha256:") and len(long_tag.encode()) <= hms.MAX_BI_TAG_BYTES


def padded(extra_bytes: int) -> Message:
    """An alert whose HMS message (without token) is exactly MAX_MESSAGE_BYTES + extra_bytes long."""
    base = hms.message_bytes(hms.build_message(delivery("t", message=Message(title="T", data={"pad": ""})), T0))
    return Message(title="T", data={"pad": "x" * (hms.MAX_MESSAGE_BYTES - base + extra_bytes)})


async def test_message_size_limit_is_checked_before_sending(provider: HmsProvider, peer: HmsPeer) -> None:
    at_limit = await provider.send(delivery("tok-size-1", message=padded(0)))
    assert at_limit.outcome is Outcome.DELIVERED, at_limit  # the peer counts the same 4096 bytes

    over = delivery("tok-size-2", message=padded(1))
    result = await provider.send(over)
    assert (result.outcome, result.reason) == (Outcome.REJECTED, "80300008")
    with pytest.raises(PayloadRejected) as rejected:
        provider.render(over)
    assert rejected.value.reason == "80300008"
    assert (await provider.validate(over)).outcome is Outcome.REJECTED
    assert peer.requests_for("tok-size-2") == []


async def test_render_and_dry_run_never_call_hms(provider: HmsProvider, peer: HmsPeer, clock: FakeClock) -> None:
    d = delivery("tok-render-secret-1", options=Options(collapse_key="3"), expires_at=clock() + 60)

    rendered = provider.render(d)
    validated = await provider.validate(d)

    assert validated.outcome is Outcome.DELIVERED
    assert peer.requests == [] and peer.token_requests == []
    assert "authorization" not in {k.lower() for k in rendered.headers}
    assert rendered.body["message"]["token"] == ["tok-re…(19)"]
    await provider.send(d)
    sent = peer.requests[0].body
    sent["message"]["token"] = rendered.body["message"]["token"]
    assert rendered.body == sent


# ---------------------------------------------------------------------------------------------- OAuth


async def test_one_token_request_serves_many_sends(provider: HmsProvider, peer: HmsPeer) -> None:
    results = [await provider.send(delivery(f"tok-auth-{i}")) for i in range(5)]

    assert [r.outcome for r in results] == [Outcome.DELIVERED] * 5
    [token_request] = peer.token_requests
    assert token_request.form == {"grant_type": "client_credentials", "client_id": peer.client_id}
    assert token_request.secret_matched
    assert {r.bearer for r in peer.requests} == {token_request.granted}


async def test_start_fetches_the_token_ahead(provider: HmsProvider, peer: HmsPeer) -> None:
    await provider.start()
    assert len(peer.token_requests) == 1 and peer.requests == []

    await assert_still_works(provider, peer)
    assert len(peer.token_requests) == 1


async def test_start_never_fails_and_wrong_credentials_are_an_auth_error(
    peer: HmsPeer, hms_test_pki: tls.TestPki, clock: FakeClock
) -> None:
    settings = peer.settings(hms_test_pki.ca_file, client_secret="not-the-secret")
    p = HmsProvider("demo", settings, send_timeout=SEND_TIMEOUT, clock=clock)
    try:
        with capture_logs() as logs:
            await p.start()  # refused: logged, not raised
            clock.advance(hms.TOKEN_FAILURE_HOLD_SECONDS)
            result = await p.send(delivery("tok-badcred-1"))
    finally:
        await p.close()

    assert (result.outcome, result.reason, result.status) == (Outcome.AUTH_ERROR, "token_refresh_failed", None)
    assert [t.status for t in peer.token_requests] == [400, 400]
    assert peer.requests == []  # no message goes out without a token
    assert any(e["event"] == "hms_token_fetch_failed" and e["http_status"] == 400 for e in logs)
    assert "not-the-secret" not in repr(logs)


async def test_token_is_refreshed_before_it_expires(provider: HmsProvider, peer: HmsPeer, clock: FakeClock) -> None:
    await assert_still_works(provider, peer)
    first = peer.token_requests[0].granted

    clock.advance(3600 - hms.REFRESH_MARGIN_SECONDS - 1)  # one second before the refresh point
    await assert_still_works(provider, peer)
    assert len(peer.token_requests) == 1 and peer.requests[-1].bearer == first

    clock.advance(2)  # past it, still valid for almost five minutes: replaced before the next send
    await assert_still_works(provider, peer)
    assert len(peer.token_requests) == 2
    assert peer.requests[-1].bearer == peer.token_requests[1].granted != first

    # Three hours in uneven steps: every send carries a token the peer still considers valid.
    for _ in range(111):
        clock.advance(97)
        assert (await provider.send(delivery("tok-walk-1"))).outcome is Outcome.DELIVERED
    assert {r.auth for r in peer.requests} == {"valid"}
    assert len(peer.token_requests) <= 2 + (111 * 97) // (3600 - hms.REFRESH_MARGIN_SECONDS) + 1


async def test_short_lived_tokens_are_refreshed_at_half_their_life(
    provider: HmsProvider, peer: HmsPeer, clock: FakeClock
) -> None:
    peer.token_lifetime = 20
    for _ in range(20):
        assert (await provider.send(delivery("tok-short-1"))).outcome is Outcome.DELIVERED
        clock.advance(3)

    assert {r.auth for r in peer.requests} == {"valid"}
    assert len(peer.token_requests) == 5  # at 0, 12, 24, 36 and 48 seconds: each replaced 10s into its life


async def test_concurrent_sends_share_one_token_request(provider: HmsProvider, peer: HmsPeer, clock: FakeClock) -> None:
    # The delay keeps the fetch open while all sends ask for it; the count holds whatever the timing.
    peer.script_token_endpoint(delay=0.2, times=1)
    results = await asyncio.gather(*(provider.send(delivery(f"tok-cc-{i}")) for i in range(30)))
    assert {r.outcome for r in results} == {Outcome.DELIVERED}
    assert len(peer.token_requests) == 1

    clock.advance(3600 - hms.REFRESH_MARGIN_SECONDS + 1)  # all due for refresh at once
    results = await asyncio.gather(*(provider.send(delivery(f"tok-cc-{i}")) for i in range(30)))
    assert {r.outcome for r in results} == {Outcome.DELIVERED}
    assert len(peer.token_requests) == 2
    assert {r.auth for r in peer.requests} == {"valid"}


@pytest.mark.parametrize(("invalidate", "code"), [("expire_tokens", "80200003"), ("revoke_tokens", "80200001")])
async def test_refused_access_token_is_replaced_once_and_the_message_resent(
    provider: HmsProvider, peer: HmsPeer, invalidate: str, code: str
) -> None:
    await assert_still_works(provider, peer)
    getattr(peer, invalidate)()  # HMS stops taking the token before our clock says it expires

    result = await provider.send(delivery("tok-refused-1"))

    assert result.outcome is Outcome.DELIVERED, result
    first, second = peer.requests_for("tok-refused-1")
    assert (first.status, first.code) == (401, code)
    assert (second.code, second.auth) == ("80000000", "valid")
    assert second.bearer == peer.token_requests[1].granted
    assert len(peer.token_requests) == 2


async def test_concurrent_refusals_cause_one_refresh(provider: HmsProvider, peer: HmsPeer) -> None:
    await assert_still_works(provider, peer)
    peer.expire_tokens()

    results = await asyncio.gather(*(provider.send(delivery(f"tok-cr-{i}")) for i in range(20)))

    assert {r.outcome for r in results} == {Outcome.DELIVERED}
    assert len(peer.token_requests) == 2


async def test_refusal_after_a_new_token_is_an_auth_error(provider: HmsProvider, peer: HmsPeer) -> None:
    peer.script("tok-app-mismatch", code="80200001")  # e.g. tokens of another app: a new one does not help

    result = await provider.send(delivery("tok-app-mismatch"))

    assert (result.outcome, result.reason, result.status) == (Outcome.AUTH_ERROR, "80200001", 401)
    assert len(peer.requests_for("tok-app-mismatch")) == 2  # the send and one resend, no more
    assert len(peer.token_requests) == 2
    await assert_still_works(provider, peer)


async def test_failed_refresh_keeps_the_current_token_while_it_is_valid(
    provider: HmsProvider, peer: HmsPeer, clock: FakeClock
) -> None:
    await assert_still_works(provider, peer)
    first = peer.token_requests[0].granted
    peer.script_token_endpoint(status=503, times=2)

    clock.advance(3600 - hms.REFRESH_MARGIN_SECONDS + 1)
    await assert_still_works(provider, peer)  # the refresh failed; the token still has minutes to live
    assert [t.status for t in peer.token_requests] == [200, 503]
    assert peer.requests[-1].bearer == first

    clock.advance(hms.REFRESH_MARGIN_SECONDS / 2)  # too close to the expiry to send with it any more
    result = await provider.send(delivery("tok-late-1"))
    assert (result.outcome, result.reason) == (Outcome.RETRYABLE, "token_refresh_failed")
    assert peer.requests_for("tok-late-1") == []

    clock.advance(hms.TOKEN_FAILURE_HOLD_SECONDS)
    await assert_still_works(provider, peer)
    assert [t.status for t in peer.token_requests] == [200, 503, 503, 200]
    assert {r.auth for r in peer.requests} == {"valid"}


async def test_a_failed_fetch_is_not_repeated_at_once(provider: HmsProvider, peer: HmsPeer, clock: FakeClock) -> None:
    peer.script_token_endpoint(status=500, retry_after=30, times=1)

    first = await provider.send(delivery("tok-hold-1"))
    second = await provider.send(delivery("tok-hold-2"))  # same moment: the same failure, no new request

    assert (first.outcome, first.reason, first.retry_after) == (Outcome.RETRYABLE, "token_refresh_failed", 30.0)
    assert second == first
    assert len(peer.token_requests) == 1
    clock.advance(hms.TOKEN_FAILURE_HOLD_SECONDS)
    await assert_still_works(provider, peer)
    assert len(peer.token_requests) == 2


@pytest.mark.parametrize(
    ("script", "outcome", "reason"),
    [
        ({"status": 503, "retry_after": 12}, Outcome.RETRYABLE, "token_refresh_failed"),
        ({"status": 429}, Outcome.RETRYABLE, "token_refresh_failed"),
        ({"status": 401}, Outcome.AUTH_ERROR, "token_refresh_failed"),
        ({"action": "close"}, Outcome.RETRYABLE, "token_connection_error"),
    ],
)
async def test_token_endpoint_failures(
    provider: HmsProvider, peer: HmsPeer, clock: FakeClock, script: dict[str, Any], outcome: Outcome, reason: str
) -> None:
    peer.script_token_endpoint(times=1, **script)

    result = await provider.send(delivery("tok-te-1"))

    assert (result.outcome, result.reason) == (outcome, reason)
    assert result.retry_after == (12.0 if "retry_after" in script else None)
    assert peer.requests == []
    clock.advance(hms.TOKEN_FAILURE_HOLD_SECONDS)
    await assert_still_works(provider, peer)


async def test_hung_or_unreachable_token_endpoint_is_retryable(
    peer: HmsPeer, settings: HmsSettings, clock: FakeClock
) -> None:
    peer.script_token_endpoint(action="hang", times=1)
    hung = HmsProvider("demo", settings, send_timeout=0.5, clock=clock)
    unreachable_settings = peer.settings(settings.ca_file or "", token_url=f"https://127.0.0.1:{closed_port()}/t")
    unreachable = HmsProvider("demo", unreachable_settings, send_timeout=SEND_TIMEOUT, clock=clock)
    try:
        hung_result = await hung.send(delivery("tok-hang-1"))
        unreachable_result = await unreachable.send(delivery("tok-unreach-1"))
    finally:
        await hung.close()
        await unreachable.close()

    assert hung_result.outcome is Outcome.RETRYABLE
    assert hung_result.reason in ("timeout", "token_timeout")  # whichever of the two equal bounds fires first
    assert (unreachable_result.outcome, unreachable_result.reason) == (Outcome.RETRYABLE, "token_connection_error")
    assert peer.requests == []


async def test_client_secret_file_is_read_at_each_fetch(
    peer: HmsPeer, hms_test_pki: tls.TestPki, clock: FakeClock, tmp_path: Path
) -> None:
    secret_file = tmp_path / "hms-secret"
    secret_file.write_text(peer.client_secret + "\n")
    settings = peer.settings(hms_test_pki.ca_file, client_secret=None, client_secret_file=str(secret_file))
    p = HmsProvider("demo", settings, send_timeout=SEND_TIMEOUT, clock=clock)
    try:
        await assert_still_works(p, peer)
        peer.client_secret = "rotated-secret-2"  # rotated in AppGallery Connect and in the mounted Secret
        secret_file.write_text("rotated-secret-2\n")
        clock.advance(3600)
        await assert_still_works(p, peer)
    finally:
        await p.close()

    assert [t.secret_matched for t in peer.token_requests] == [True, True]


async def test_secrets_and_access_tokens_never_reach_the_logs(
    provider: HmsProvider, peer: HmsPeer, clock: FakeClock
) -> None:
    with capture_logs() as logs:
        await provider.start()
        peer.script("tok-log-1", code="80300002")
        await provider.send(delivery("tok-log-1"))
        peer.revoke_tokens()
        peer.script_token_endpoint(status=400, msg=f"echo {peer.client_secret}")  # a server echoing the form
        await provider.send(delivery("tok-log-2"))

    text = repr(logs)
    assert any(e["event"] == "hms_auth_error" for e in logs)
    assert any(e["event"] == "hms_token_fetch_failed" for e in logs)
    assert peer.client_secret not in text
    assert peer.token_requests[0].granted not in text


# --------------------------------------------------------------------------------------- result codes


# Every code of RESULT_CODES but success and the two access-token refusals (tested with the token flow above).
CODE_CASES = [
    ("80100001", Outcome.REJECTED),
    ("80100003", Outcome.REJECTED),
    ("80100004", Outcome.REJECTED),
    ("80100013", Outcome.REJECTED),
    ("80100016", Outcome.REJECTED),
    ("80300002", Outcome.AUTH_ERROR),
    ("80300007", Outcome.INVALID_TOKEN),
    ("80300008", Outcome.REJECTED),
    ("80300010", Outcome.REJECTED),
    ("80300011", Outcome.REJECTED),
    ("81000001", Outcome.RETRYABLE),
]


def test_every_mapped_code_is_tested() -> None:
    assert set(hms.RESULT_CODES) - {code for code, _ in CODE_CASES} == {"80000000", "80200001", "80200003"}
    assert "80300007" in HmsProvider.misconfiguration_reasons  # a wrong app id answers it for every token


@pytest.mark.parametrize(("code", "outcome"), CODE_CASES)
async def test_result_codes(provider: HmsProvider, peer: HmsPeer, code: str, outcome: Outcome) -> None:
    peer.script("tok-code-1", code=code, retry_after=5, times=1)

    result = await provider.send(delivery("tok-code-1"))

    assert (result.outcome, result.reason) == (outcome, code)
    assert hms.RESULT_CODES[code] is outcome
    assert result.status == peer.requests_for("tok-code-1")[0].status
    assert result.retry_after == (5.0 if outcome is Outcome.RETRYABLE else None)
    assert len(peer.requests_for("tok-code-1")) == 1  # only a refused access token is resent
    await assert_still_works(provider, peer)


@pytest.mark.parametrize(
    ("msg", "outcome"),
    [
        (None, Outcome.INVALID_TOKEN),  # the peer lists the token among illegal_tokens
        ('{"success":1,"failure":0,"illegal_tokens":[]}', Outcome.DELIVERED),
        ("not json", Outcome.REJECTED),
    ],
)
async def test_partial_success_for_one_token(
    provider: HmsProvider, peer: HmsPeer, msg: str | None, outcome: Outcome
) -> None:
    peer.script("tok-partial-1", code="80100000", msg=msg)

    result = await provider.send(delivery("tok-partial-1"))

    assert result.outcome is outcome, result
    assert result.reason == ("" if outcome is Outcome.DELIVERED else "80100000")


@pytest.mark.parametrize(
    ("status", "retry_after", "outcome", "expected_retry_after"),
    [
        (503, "7", Outcome.RETRYABLE, 7.0),  # Push Kit's flow control
        (429, None, Outcome.RETRYABLE, None),
        (500, None, Outcome.RETRYABLE, None),
        (502, "1.5", Outcome.RETRYABLE, 1.5),
        (404, None, Outcome.AUTH_ERROR, None),  # a wrong endpoint or app id
        (403, None, Outcome.AUTH_ERROR, None),
        (400, None, Outcome.REJECTED, None),
        (200, None, Outcome.REJECTED, None),  # a 200 without HMS's answer: not known to be delivered
    ],
)
async def test_plain_http_answers(
    provider: HmsProvider,
    peer: HmsPeer,
    status: int,
    retry_after: str | None,
    outcome: Outcome,
    expected_retry_after: float | None,
) -> None:
    peer.script("tok-http-1", status=status, retry_after=retry_after, msg="<html>proxy</html>", times=1)

    result = await provider.send(delivery("tok-http-1"))

    assert (result.outcome, result.reason, result.status) == (outcome, f"http_{status}", status)
    assert result.retry_after == expected_retry_after
    await assert_still_works(provider, peer)


async def test_retry_after_as_http_date(provider: HmsProvider, peer: HmsPeer) -> None:
    peer.script("tok-date-1", status=429, retry_after="Wed, 21 Oct 2099 07:28:00 GMT", times=1)

    result = await provider.send(delivery("tok-date-1"))

    assert result.outcome is Outcome.RETRYABLE
    assert result.retry_after is not None and result.retry_after > 0


async def test_timeouts_and_connection_errors_are_retryable(
    peer: HmsPeer, settings: HmsSettings, clock: FakeClock
) -> None:
    p = HmsProvider("demo", settings, send_timeout=0.5, clock=clock)
    try:
        peer.script("tok-hang-2", action="hang", times=1)
        hung = await p.send(delivery("tok-hang-2"))
        peer.script("tok-close-1", action="close", times=1)
        closed = await p.send(delivery("tok-close-1"))
        await assert_still_works(p, peer)
    finally:
        await p.close()

    assert (hung.outcome, hung.reason) == (Outcome.RETRYABLE, "timeout")
    assert (closed.outcome, closed.reason) == (Outcome.RETRYABLE, "connection_error")


async def test_unreachable_push_endpoint_is_retryable(peer: HmsPeer, settings: HmsSettings, clock: FakeClock) -> None:
    down = peer.settings(settings.ca_file or "", endpoint=f"https://127.0.0.1:{closed_port()}")
    p = HmsProvider("demo", down, send_timeout=SEND_TIMEOUT, clock=clock)
    try:
        result = await p.send(delivery("tok-down-1"))
    finally:
        await p.close()

    assert (result.outcome, result.reason) == (Outcome.RETRYABLE, "connection_error")
    assert len(peer.token_requests) == 1  # the token endpoint is another host, and answered


# ------------------------------------------------------------------------------------ the peer's checks


@pytest_asyncio.fixture
async def raw_client(hms_test_pki: tls.TestPki) -> AsyncIterator[httpx.AsyncClient]:
    context = ssl.create_default_context(cafile=str(hms_test_pki.ca_file))
    async with httpx.AsyncClient(verify=context, http2=True) as client:
        yield client


async def raw_send(peer: HmsPeer, client: httpx.AsyncClient, body: Any, app_id: str | None = None) -> tuple[int, str]:
    """POST ``body`` with a fresh token; (HTTP status, result code)."""
    form = {"grant_type": "client_credentials", "client_id": peer.client_id, "client_secret": peer.client_secret}
    token = (await client.post(peer.token_url, data=form)).json()["access_token"]
    url = f"{peer.base_url}/v1/{app_id or peer.app_id}/messages:send"
    response = await client.post(url, content=json.dumps(body), headers={"authorization": f"Bearer {token}"})
    return response.status_code, response.json()["code"]


def good_message(**android: Any) -> dict[str, Any]:
    notification = {"title": "T", "click_action": {"type": 3}}
    return {"message": {"token": ["tok-raw-1"], "android": {"notification": notification, **android}}}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (good_message(), "80000000"),
        ({**good_message(), "dry": True}, "80100003"),  # unknown key at the top
        (good_message(priority="high"), "80100003"),  # FCM's name, unknown to HMS
        ({"message": {"token": ["tok-raw-1"], "data": {"a": "b"}}}, "80100003"),  # data must be a string
        ({"message": {"token": "tok-raw-1", "data": "x"}}, "80100003"),  # token must be a list
        ({"message": {"token": [], "data": "x"}}, "80300010"),
        ({"message": {"token": ["bad token"], "data": "x"}}, "80300007"),
        (good_message(collapse_key="7"), "80100013"),
        (good_message(collapse_key=101), "80100013"),
        (good_message(urgency="high"), "80100001"),
        (good_message(category="VOIP"), "80100001"),  # only with urgency HIGH
        (good_message(ttl="1h"), "80100001"),
        (good_message(ttl="0s"), "80100004"),
        (good_message(bi_tag="b" * 65), "80100001"),
        ({"message": {"token": ["tok-raw-1"], "android": {"notification": {"title": "T"}}}}, "80100003"),
        ({"message": {"token": ["tok-raw-1"], "data": "x" * 4100}}, "80300008"),
    ],
)
async def test_peer_checks_the_json_as_push_kit_does(
    peer: HmsPeer, raw_client: httpx.AsyncClient, body: Any, code: str
) -> None:
    status, answered = await raw_send(peer, raw_client, body)

    assert answered == code
    assert status == (200 if code == "80000000" else 400)
    assert peer.requests[0].body == body  # recorded as received


async def test_peer_checks_the_bearer_token_and_app(peer: HmsPeer, raw_client: httpx.AsyncClient) -> None:
    url = f"{peer.base_url}/v1/{peer.app_id}/messages:send"
    missing = await raw_client.post(url, content=json.dumps(good_message()))
    assert (missing.status_code, missing.json()["code"]) == (401, "80200001")
    assert await raw_send(peer, raw_client, good_message(), app_id="999") == (401, "80200001")
    assert [r.auth for r in peer.requests] == ["missing", "valid"]
