"""Token kinds end to end: a device records what its token is for, and each push type reaches only its kinds.

The APNs peer binds each iOS token to the one topic it was issued for, as Apple does: a regular token
answers DeviceTokenNotForTopic on `<topic>.voip` and a PushKit token on the app's topic. So a VoIP push that
reached a regular token (or an alert a VoIP token) would show in the peer's answers and in the devices.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from pushsvc.cli import main
from pushsvc.store.devices import KIND_BACKFILL
from tests.integration.stack import APNS_TOPIC, Stack, auth_headers
from tests.integration.test_delivery_semantics import alert, finished_with

VOIP_TOPIC = f"{APNS_TOPIC}.voip"


def regular(n: int) -> str:
    return f"a{n:03x}" * 16


def pushkit(n: int) -> str:
    return f"b{n:03x}" * 16


def android(n: int) -> str:
    return f"fcm:{n:04d}-" + "k" * 50


def voip(request_id: str, target: dict) -> dict:
    return {"id": request_id, "app": "demo", "target": target, "message": {"data": {"call_id": request_id}},
            "options": {"push_type": "voip"}}


async def register_user(stack: Stack, n: int, user: str, **fields: Any) -> None:
    """One user's three tokens: regular APNs (no kind given: the iOS default), PushKit, FCM."""
    stack.apns.bind_topic(regular(n), APNS_TOPIC)
    stack.apns.bind_topic(pushkit(n), VOIP_TOPIC)
    await stack.register(regular(n), "ios", user_id=user, **fields)
    await stack.register(pushkit(n), "ios", kind="apns_voip", user_id=user, **fields)
    await stack.register(android(n), "android", user_id=user, **fields)


async def inactive(stack: Stack) -> set[str]:
    return {d["token"] async for d in stack.db.devices.find({"app": "demo", "active": False})}


def topics(stack: Stack, token: str) -> list[str]:
    return [r.headers["apns-topic"] for r in stack.apns.requests_for(token)]


async def test_voip_push_to_a_user_reaches_only_voip_tokens_and_alerts_still_reach_the_regular_one(
    stack: Stack,
) -> None:
    """The issue's case: a `users` VoIP push used to reach the regular token too, which APNs refuses with
    DeviceTokenNotForTopic, which deactivated it: the next alert to that user reached no iOS device."""
    await stack.start()
    await register_user(stack, 1, "carol")

    await stack.publish(voip("call-carol", {"users": ["carol"]}))
    await finished_with(stack, "call-carol", targeted=2, delivered=2)
    assert topics(stack, pushkit(1)) == [VOIP_TOPIC]
    assert stack.apns.requests_for(regular(1)) == []
    assert stack.fcm.requests_for(android(1))[0].message["android"]["priority"] == "high"
    assert await inactive(stack) == set()

    await stack.publish(alert("hello-carol", {"users": ["carol"]}))
    await finished_with(stack, "hello-carol", targeted=2, delivered=2)
    assert topics(stack, regular(1)) == [APNS_TOPIC]
    assert topics(stack, pushkit(1)) == [VOIP_TOPIC]  # not sent the alert
    assert len(stack.fcm.requests_for(android(1))) == 2
    assert await inactive(stack) == set()


async def test_voip_push_never_costs_a_user_without_a_voip_token_their_regular_token(stack: Stack) -> None:
    """The same with registrations as clients made them before kinds (no `kind`): the VoIP push has no
    iOS device to go to, and the regular token stays active for the next alert."""
    await stack.start()
    stack.apns.bind_topic(regular(1), APNS_TOPIC)
    await stack.register(regular(1), "ios", user_id="erin")
    await stack.register(android(1), "android", user_id="erin")

    await stack.publish(voip("call-erin", {"users": ["erin"]}))
    await finished_with(stack, "call-erin", targeted=1, delivered=1)
    assert stack.apns.requests == []
    await stack.publish(alert("hello-erin", {"users": ["erin"]}))
    await finished_with(stack, "hello-erin", targeted=2, delivered=2)
    assert topics(stack, regular(1)) == [APNS_TOPIC]
    assert await inactive(stack) == set()


async def test_every_targeting_path_picks_tokens_by_push_type(stack: Stack) -> None:
    """Explicit tokens, many users (one `$in` query) and segments, for voip, alert and background."""
    await stack.start()
    users = [f"user{n}" for n in range(20)]  # more than the few-users point lookups take
    for n, user in enumerate(users):
        await register_user(stack, n, user, tags=["callers"] if n < 3 else [])
    everything = [t for n in range(20) for t in (regular(n), pushkit(n), android(n))]

    await stack.publish(
        voip("voip-users", {"users": users}),
        voip("voip-segment", {"segment": {"tags_any": ["callers"]}}),
        # A VoIP push naming a regular token: no VoIP token by that name is known.
        voip("voip-tokens", {"tokens": [regular(0), pushkit(0), android(0)]}),
    )
    await finished_with(stack, "voip-users", targeted=40, delivered=40)
    await finished_with(stack, "voip-segment", targeted=6, delivered=6)
    await finished_with(stack, "voip-tokens", targeted=3, delivered=2, unknown_token=1)
    await stack.publish(
        alert("alert-users", {"users": users}),
        alert("alert-segment", {"segment": {"tags_any": ["callers"]}}),
        alert("alert-tokens", {"tokens": [regular(0), pushkit(0), android(0)]}),
        {"id": "background-users", "app": "demo", "target": {"users": users[:2]},
         "message": {"data": {"sync": True}}, "options": {"push_type": "background"}},
    )
    await finished_with(stack, "alert-users", targeted=40, delivered=40)
    await finished_with(stack, "alert-segment", targeted=6, delivered=6)
    await finished_with(stack, "alert-tokens", targeted=3, delivered=2, unknown_token=1)
    await finished_with(stack, "background-users", targeted=4, delivered=4)

    # Every APNs request went to the token's own topic: none was answered DeviceTokenNotForTopic.
    for n in range(20):
        assert set(topics(stack, regular(n))) <= {APNS_TOPIC}
        assert set(topics(stack, pushkit(n))) <= {VOIP_TOPIC}
    assert all(r.headers["apns-push-type"] == "voip" for n in range(20) for r in stack.apns.requests_for(pushkit(n)))
    assert len(stack.apns.requests_for(pushkit(0))) == 3 and len(stack.apns.requests_for(regular(0))) == 4
    assert await inactive(stack) == set()
    assert await stack.db.devices.count_documents({"token": {"$in": everything}}) == 60


async def test_registration_records_kind_and_validates_it_against_the_platform(stack: Stack) -> None:
    await stack.start()

    async def register(body: dict) -> tuple[int, dict]:
        full = {"app": "demo", **body}
        async with stack.http.post(stack.url("/v1/devices"), json=full, headers=auth_headers()) as response:
            return response.status, await response.json()

    before = time.time()
    status, view = await register({"token": regular(1), "platform": "ios"})
    assert status == 201 and view["kind"] == "apns"
    assert before <= view["registered_at"] <= time.time()
    status, view = await register({"token": android(1), "platform": "android"})
    assert status == 201 and view["kind"] == "fcm"
    status, view = await register({"token": pushkit(1), "platform": "ios", "kind": "apns_voip"})
    assert status == 201 and view["kind"] == "apns_voip"
    first = view["registered_at"]
    status, view = await register({"token": pushkit(1), "platform": "ios", "kind": "apns_voip"})
    assert status == 200 and view["registered_at"] > first  # every registration is recorded

    for body, message in [
        ({"token": regular(2), "platform": "android", "kind": "apns_voip"}, "not a token kind for platform android"),
        ({"token": regular(2), "platform": "ios", "kind": "fcm"}, "not a token kind for platform ios"),
        ({"token": regular(2), "platform": "ios", "kind": "pushkit"}, "must be one of apns, apns_voip, apns_live"),
        ({"token": regular(2), "platform": "ios", "kind": 3}, "must be one of apns, apns_voip, apns_live"),
    ]:
        status, answer = await register(body)
        assert status == 400, (body, answer)
        assert answer["error"]["field"] == "kind", answer
        assert message in answer["error"]["message"], answer
    assert await stack.db.devices.count_documents({"token": regular(2)}) == 0


async def test_devices_from_before_kinds_keep_working(stack: Stack) -> None:
    """Device documents without `kind` take their platform's default: a startup migration records it, and
    one written later by a replica that predates kinds (a rolling upgrade) still gets alerts."""
    now = time.time()
    legacy = {"app": "demo", "active": True, "user_id": "dave", "tags": [], "opt_out": [], "created_at": now,
              "updated_at": now}
    await stack.db.devices.insert_many([
        {**legacy, "token": regular(1), "platform": "ios"},
        {**legacy, "token": android(1), "platform": "android"},
    ])
    stack.apns.bind_topic(regular(1), APNS_TOPIC)
    await stack.start()
    kinds = {d["token"]: d.get("kind") async for d in stack.db.devices.find({"app": "demo"})}
    assert kinds == {regular(1): "apns", android(1): "fcm"}
    await stack.db.devices.insert_one({**legacy, "token": regular(2), "platform": "ios"})
    stack.apns.bind_topic(regular(2), APNS_TOPIC)

    await stack.publish(voip("voip-dave", {"users": ["dave"]}))
    await finished_with(stack, "voip-dave", targeted=1, delivered=1)
    assert stack.apns.requests == []
    await stack.publish(alert("alert-dave", {"users": ["dave"]}))
    await finished_with(stack, "alert-dave", targeted=3, delivered=3)
    assert topics(stack, regular(1)) == topics(stack, regular(2)) == [APNS_TOPIC]
    assert await inactive(stack) == set()

    # The backfill ran once: a restart finds its marker and does not scan the devices again.
    await stack.start()
    assert {d["token"]: d.get("kind") async for d in stack.db.devices.find({"app": "demo"})} == {
        regular(1): "apns", android(1): "fcm", regular(2): None}
    assert await stack.db.migrations.count_documents({"_id": KIND_BACKFILL}) == 1


async def test_import_takes_kind_like_the_api(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "devices.jsonl"
    rows = [
        {"app": "demo", "token": regular(1), "platform": "ios"},
        {"app": "demo", "token": pushkit(1), "platform": "ios", "kind": "apns_voip"},
        {"app": "demo", "token": android(1), "platform": "android", "kind": "fcm"},
        {"app": "demo", "token": android(2), "platform": "android", "kind": "apns"},
    ]
    file.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    stack.settings()
    config = stack.tmp_path / "config-0.yaml"
    code = await asyncio.to_thread(main, ["devices", "import", str(file), "--config", str(config)])
    out, err = capsys.readouterr()
    assert code == 1, out
    assert json.loads(out.strip().splitlines()[-1])["imported"] == 3
    assert "line 4: kind: 'apns' is not a token kind for platform android (fcm)" in err
    kinds = {d["token"]: (d["kind"], d["registered_at"]) async for d in stack.db.devices.find({"app": "demo"})}
    assert {token: kind for token, (kind, _) in kinds.items()} == {
        regular(1): "apns", pushkit(1): "apns_voip", android(1): "fcm"}
    assert all(isinstance(at, float) for _, at in kinds.values())
