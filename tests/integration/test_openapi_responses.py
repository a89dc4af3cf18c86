"""Every answer of the HTTP API is what /openapi.json says it is.

A running service is driven through each route and each documented status a client can reach (2xx, 400, 401,
403, 404, 409, 413), and every body is checked against the response schema the service itself serves for
that route and status. The check is stricter than plain JSON Schema where typed clients are: an integer is
never a float, a date-time carries its offset, and a field the schema does not name is an error (an answer
leaking a stored field, or a new field nobody documented). A status a route answers that its description
does not list fails too, and so does a route served but not described, or described but not served.

Why: the views were built straight from stored documents, each coercing what its author remembered to.
nx-27017 keeps a boolean written with `$set` as 0/1, so a device deactivated by a provider's invalid-token
answer, or registered again, answers `"active": 1` unless the view converts it (the answers now come from
typed records read once by the store: store/devices.py `read_device`); this test fails on that, and on any
other answer that drifts from the description.
"""

from __future__ import annotations

import copy
import json
import time
from datetime import datetime
from typing import Any

import jsonschema
import pytest
from jsonschema.validators import extend

from pushsvc.scheduling.due import epoch_to_iso
from tests.integration.stack import API_KEY, Stack, wait_until
from tests.reliability.harness import api_key_config

pytestmark = pytest.mark.integration

ALL_SCOPES = ["devices:write", "notify", "campaigns", "read", "receipts"]
# A key with every scope for another app: 403 on every route that names app demo.
SHOP_KEY = "key-of-the-shop-backend-0123456789"
IOS = "a1" * 32
IOS_DEAD = "b2" * 32
IOS_OPTED_OUT = "c3" * 32
ANDROID = "fcm:" + "q" * 60
# The statuses this test must reach wherever a route documents them. 503 needs MongoDB down (the fault tests
# cover it); /readyz's 503 shows only while the service starts.
REACHABLE = {200, 201, 202, 204, 400, 401, 403, 404, 409, 413}
# Documented (method, route, status) no client can bring about, each with the reason.
UNREACHABLE: set[tuple[str, str, int]] = {
    # A stored campaign this version cannot read: only after an incompatible upgrade or a hand edit.
    ("get", "/v1/campaigns/{campaign_id}/preview", 409),
}


# ------------------------------------------------------------------------------------------ schema checks


def _json_schema(node: Any, schemas: dict[str, Any]) -> Any:
    """An OpenAPI 3.0 schema as strict JSON Schema: `$ref`s inlined, `nullable` as a null type, and every
    object that names its properties closed to others (the test's strictness, not the served document's:
    a client may still ignore fields added later)."""
    if isinstance(node, list):
        return [_json_schema(item, schemas) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        return _json_schema(schemas[ref.removeprefix("#/components/schemas/")], schemas)
    out = {key: _json_schema(value, schemas) for key, value in node.items() if key != "nullable"}
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if out.get("type") in ("object", ["object", "null"]) and "properties" in out:
        out.setdefault("additionalProperties", False)
    return out


def _is_integer(_: Any, instance: Any) -> bool:
    # JSON Schema counts 3.0 as an integer; a typed client (Go's int, Kotlin's Int) refuses it.
    return isinstance(instance, int) and not isinstance(instance, bool)


def _is_date_time(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    try:
        return datetime.fromisoformat(instance).tzinfo is not None
    except ValueError:
        return False


FORMATS = jsonschema.FormatChecker(formats=())
FORMATS.checks("date-time")(_is_date_time)
StrictValidator = extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)


class ApiCheck:
    """Calls the service, checks each answer against the served description, and remembers what it reached."""

    def __init__(self, stack: Stack, spec: dict[str, Any]) -> None:
        self.stack = stack
        self.spec = spec
        self.schemas = spec["components"]["schemas"]
        self.reached: set[tuple[str, str, int]] = set()

    async def call(
        self,
        method: str,
        route: str,
        path: str,
        body: Any = None,
        *,
        expect: int,
        key: str | None = API_KEY,
        data: bytes | None = None,
    ) -> Any:
        """`method path` (an instance of `route`, as /openapi.json names it); asserts the status is `expect`
        and the body what the description says for it. Returns the decoded body."""
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        async with self.stack.http.request(
            method, self.stack.url(path), json=None if data is not None else body, data=data, headers=headers
        ) as response:
            raw = await response.read()
            status, media = response.status, response.content_type
        assert status == expect, (method, path, status, raw[:500])
        operation = self.spec["paths"][route][method.lower()]
        documented = operation["responses"].get(str(status))
        assert documented is not None, f"{method} {route} answered {status}, not a status its description lists"
        self.reached.add((method.lower(), route, status))
        content = documented.get("content")
        if not content:
            assert raw == b"", (method, path, status, raw[:200])
            return None
        assert media in content, f"{method} {route} {status}: {media} is not one of {sorted(content)}"
        if media != "application/json":
            return raw.decode()
        answer = json.loads(raw)
        schema = _json_schema(content[media]["schema"], self.schemas)
        errors = sorted(StrictValidator(schema, format_checker=FORMATS).iter_errors(answer), key=str)
        assert not errors, f"{method} {path} {status}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path)) or '<body>'}: {e.message}" for e in errors[:5]
        )
        return answer

    def unreached(self) -> list[tuple[str, str, int]]:
        """The documented (method, route, status) in REACHABLE that no call answered with."""
        missing = []
        for route, operations in self.spec["paths"].items():
            for method, operation in operations.items():
                for status in map(int, operation["responses"]):
                    # Of the public routes (probes, descriptions), their successful answers.
                    wanted = status in REACHABLE and (route.startswith("/v1/") or status < 300)
                    if wanted and (method, route, status) not in UNREACHABLE | self.reached:
                        missing.append((method, route, status))
        return sorted(missing)


def served_routes(stack: Stack) -> set[tuple[str, str]]:
    found = set()
    for route in stack.services[0].http_app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if path and route.method not in ("HEAD", "OPTIONS", "*"):
            found.add((route.method.lower(), path))
    return found


# ------------------------------------------------------------------------------------------ the test


def alert(request_id: str, target: dict[str, Any], **options: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": request_id, "app": "demo", "target": target,
                            "message": {"title": "Hi", "body": "there", "category": "promo"}}
    if options:
        body["options"] = options
    return body


def campaign(campaign_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": campaign_id, "name": f"Campaign {campaign_id}", "app": "demo",
            "audience": {"segment": {"tags_any": ["fr"]}}, "message": {"title": "Sale", "body": "Now"}, **fields}


async def started(stack: Stack) -> ApiCheck:
    keys = [api_key_config("test", API_KEY, ALL_SCOPES, ["*"]), api_key_config("shop", SHOP_KEY, ALL_SCOPES, ["shop"])]
    await stack.start(more_apps=["shop"], extra={"api_keys": keys})
    async with stack.http.get(stack.url("/openapi.json")) as response:
        assert response.status == 200
        spec = await response.json()
    return ApiCheck(stack, spec)


async def test_every_answer_matches_the_served_openapi_description(stack: Stack) -> None:
    api = await started(stack)
    assert served_routes(stack) == {(m, p) for p, ops in api.spec["paths"].items() for m in ops}, (
        "served routes and /openapi.json differ: "
        f"{served_routes(stack) ^ {(m, p) for p, ops in api.spec['paths'].items() for m in ops}}"
    )

    # Public routes.
    await api.call("GET", "/healthz", "/healthz", expect=200, key=None)
    await wait_until(lambda: _ready(stack), timeout=20)
    await api.call("GET", "/readyz", "/readyz", expect=200, key=None)
    await api.call("GET", "/metrics", "/metrics", expect=200, key=None)
    await api.call("GET", "/openapi.json", "/openapi.json", expect=200, key=None)
    await api.call("GET", "/asyncapi.json", "/asyncapi.json", expect=200, key=None)

    await _devices(api)
    await _notifications(api)
    await _receipts(api)
    await _campaigns(api)

    assert api.unreached() == [], "documented statuses this test never saw: add a case (or a reason in UNREACHABLE)"


async def _ready(stack: Stack) -> bool:
    async with stack.http.get(stack.url("/readyz")) as response:
        return response.status == 200


async def _devices(api: ApiCheck) -> None:
    stack = api.stack
    devices, one = "/v1/devices", "/v1/devices/{app}/{token}"
    user_devices, user = "/v1/users/{user_id}/devices", "/v1/users/{user_id}"
    body = {"app": "demo", "token": IOS, "platform": "ios", "user_id": "alice", "tags": ["fr"], "locale": "fr-FR",
            "timezone": "Europe/Paris", "opt_out": ["promo"]}
    created = await api.call("POST", devices, devices, body, expect=201)
    assert created["active"] is True
    await api.call("POST", devices, devices, {**body, "opt_out": []}, expect=200)
    await api.call("POST", devices, devices, {**body, "platform": "windows"}, expect=400)
    await api.call("POST", devices, devices, body, expect=401, key=None)
    await api.call("POST", devices, devices, body, expect=403, key=SHOP_KEY)
    await api.call("POST", devices, devices, data=b"[" * 300_000, expect=413)
    await api.call("POST", devices, devices, {"app": "demo", "token": ANDROID, "platform": "android",
                                              "user_id": "alice", "tags": ["fr"]}, expect=201)

    # A token the provider calls dead is deactivated; the answers show it as a boolean, before and after the
    # device registers again (which makes it active: nx-27017 stores these `$set` booleans as 0 and 1).
    await api.call("POST", devices, devices, {"app": "demo", "token": IOS_DEAD, "platform": "ios",
                                              "user_id": "carol"}, expect=201)
    stack.apns.script(IOS_DEAD, status=410, reason="Unregistered")
    await api.call("POST", "/v1/notifications", "/v1/notifications", alert("to-the-dead", {"tokens": [IOS_DEAD]}),
                   expect=201)
    await stack.wait_finished("to-the-dead")
    listed = await api.call("GET", user_devices, "/v1/users/carol/devices?app=demo", expect=200)
    assert [(d["active"], d["deactivated_reason"]) for d in listed["devices"]] == [(False, "Unregistered")]
    again = await api.call("POST", devices, devices, {"app": "demo", "token": IOS_DEAD, "platform": "ios",
                                                      "user_id": "carol"}, expect=200)
    assert again["active"] is True and again["deactivated_reason"] is None
    listed = await api.call("GET", user_devices, "/v1/users/carol/devices?app=demo", expect=200)
    assert [d["active"] for d in listed["devices"]] == [True]

    tagged = await api.call("PATCH", one, f"/v1/devices/demo/{IOS_DEAD}", {"tags": ["vip"]}, expect=200)
    assert tagged["active"] is True and tagged["tags"] == ["vip"]
    await api.call("PATCH", one, f"/v1/devices/demo/{IOS_DEAD}", {"tags": "vip"}, expect=400)
    await api.call("PATCH", one, f"/v1/devices/demo/{'f0' * 32}", {"tags": []}, expect=404)
    await api.call("PATCH", one, f"/v1/devices/demo/{IOS_DEAD}", {"tags": []}, expect=401, key=None)
    await api.call("PATCH", one, f"/v1/devices/demo/{IOS_DEAD}", {"tags": []}, expect=403, key=SHOP_KEY)
    await api.call("PATCH", one, f"/v1/devices/demo/{IOS_DEAD}", data=b"[" * 300_000, expect=413)

    await api.call("GET", user_devices, "/v1/users/alice/devices?app=nope", expect=400)
    await api.call("GET", user_devices, "/v1/users/alice/devices?app=demo", expect=401, key=None)
    await api.call("GET", user_devices, "/v1/users/alice/devices?app=demo", expect=403, key=SHOP_KEY)

    await api.call("DELETE", one, "/v1/devices/demo/short", expect=400)
    await api.call("DELETE", one, f"/v1/devices/demo/{IOS_DEAD}", expect=401, key=None)
    await api.call("DELETE", one, f"/v1/devices/demo/{IOS_DEAD}", expect=403, key=SHOP_KEY)
    await api.call("DELETE", one, f"/v1/devices/demo/{IOS_DEAD}", expect=204)
    await api.call("DELETE", one, f"/v1/devices/demo/{IOS_DEAD}", expect=404)

    await api.call("DELETE", user, "/v1/users/carol?app=nope", expect=400)
    await api.call("DELETE", user, "/v1/users/carol?app=demo", expect=401, key=None)
    await api.call("DELETE", user, "/v1/users/carol?app=demo", expect=403, key=SHOP_KEY)
    erased = await api.call("DELETE", user, "/v1/users/carol?app=demo", expect=200)
    assert erased["user_id"] == "carol"


async def _notifications(api: ApiCheck) -> None:
    stack = api.stack
    create, one = "/v1/notifications", "/v1/notifications/{notification_id}"
    cancel = "/v1/notifications/{notification_id}/cancel"
    sent = alert("hello", {"users": ["alice"]})
    await api.call("POST", create, create, sent, expect=201)
    await api.call("POST", create, create, sent, expect=200)
    await api.call("POST", create, create, {**sent, "message": {"title": "Other"}}, expect=409)
    refused = await api.call("POST", create, create, alert("everyone", {"segment": {}}), expect=400)
    assert refused["error"]["field"] == "target.segment"
    await api.call("POST", create, create, sent, expect=401, key=None)
    await api.call("POST", create, create, sent, expect=403, key=SHOP_KEY)
    await api.call("POST", create, create, data=b"[" * 300_000, expect=413)
    await stack.wait_finished("hello")
    done = await api.call("GET", one, "/v1/notifications/hello?app=demo", expect=200)
    assert done["state"] == "done" and done["dry_run"] is None
    await api.call("GET", one, "/v1/notifications/hello", expect=400)  # two apps: ?app= is required
    await api.call("GET", one, "/v1/notifications/nope?app=demo", expect=404)
    await api.call("GET", one, "/v1/notifications/hello?app=demo", expect=401, key=None)
    await api.call("GET", one, "/v1/notifications/hello?app=demo", expect=403, key=SHOP_KEY)

    await api.call("POST", create, create, alert("rehearsal", {"tokens": [IOS, ANDROID]}, dry_run=True), expect=201)
    await stack.wait_finished("rehearsal")
    rehearsal = await api.call("GET", one, "/v1/notifications/rehearsal?app=demo", expect=200)
    assert rehearsal["dry_run"] is not None and rehearsal["counts"]["validated"] == 2, rehearsal

    later = alert("later", {"users": ["alice"]}, send_at=epoch_to_iso(time.time() + 3600))
    await api.call("POST", create, create, later, expect=201)
    await api.call("POST", cancel, "/v1/notifications/later/cancel", expect=400)
    await api.call("POST", cancel, "/v1/notifications/later/cancel?app=demo", expect=401, key=None)
    await api.call("POST", cancel, "/v1/notifications/later/cancel?app=demo", expect=403, key=SHOP_KEY)
    await api.call("POST", cancel, "/v1/notifications/nope/cancel?app=demo", expect=404)
    cancelled = await api.call("POST", cancel, "/v1/notifications/later/cancel?app=demo", expect=200)
    assert cancelled["state"] == "cancelled"
    await api.call("POST", cancel, "/v1/notifications/later/cancel?app=demo", expect=409)


async def _receipts(api: ApiCheck) -> None:
    """After _notifications: "hello" was delivered to alice's two devices."""
    route = "/v1/receipts"
    now = epoch_to_iso(time.time())
    batch = {"app": "demo", "receipts": [
        {"notification_id": "hello", "token": IOS, "event": "received", "at": now},
        {"notification_id": "hello", "user_id": "alice", "event": "opened", "at": now},
        {"notification_id": "nope", "token": IOS, "event": "opened", "at": now},
    ]}
    answer = await api.call("POST", route, route, batch, expect=200)
    assert answer["results"] == ["recorded", "recorded", "unknown_notification"], answer
    again = await api.call("POST", route, route, batch, expect=200)
    assert again["results"] == ["duplicate", "duplicate", "unknown_notification"], again
    refused = await api.call("POST", route, route, {**batch, "receipts": [{**batch["receipts"][0], "event": "x"}]},
                             expect=400)
    assert refused["error"]["field"] == "receipts[0].event"
    await api.call("POST", route, route, batch, expect=401, key=None)
    await api.call("POST", route, route, batch, expect=403, key=SHOP_KEY)
    await api.call("POST", route, route, data=b"[" * 300_000, expect=413)
    shown = await api.call("GET", "/v1/notifications/{notification_id}", "/v1/notifications/hello?app=demo",
                           expect=200)
    assert shown["funnel"]["received"] == 2 and shown["funnel"]["opened"] == 1, shown["funnel"]


async def _campaigns(api: ApiCheck) -> None:
    stack = api.stack
    campaigns, one = "/v1/campaigns", "/v1/campaigns/{campaign_id}"
    later = campaign("spring", schedule={"at": epoch_to_iso(time.time() + 3600)}, throttle_per_second=50,
                     quiet_hours={"start": "22:00", "end": "08:00"})
    created = await api.call("POST", campaigns, campaigns, later, expect=201)
    assert created["schedule"]["local_time"] is False and created["status"] == "scheduled"
    await api.call("POST", campaigns, campaigns, later, expect=200)
    differs = await api.call("POST", campaigns, campaigns, {**later, "name": "Other"}, expect=409)
    assert differs["error"]["field"] == "name"
    refused = await api.call("POST", campaigns, campaigns, {**later, "audience": {"segment": {}}}, expect=400)
    assert refused["error"]["field"] == "audience.segment"
    await api.call("POST", campaigns, campaigns, later, expect=401, key=None)
    await api.call("POST", campaigns, campaigns, later, expect=403, key=SHOP_KEY)
    await api.call("POST", campaigns, campaigns, data=b"[" * 300_000, expect=413)
    preview = await api.call("POST", campaigns, campaigns, campaign("rehearsal", options={"dry_run": True}), expect=201)
    assert preview["preview"]["audience"] == 2, preview["preview"]
    await api.call("POST", campaigns, campaigns, campaign("now"), expect=201)
    await stack.wait_finished("campaign:now")
    finished = await api.call("GET", one, "/v1/campaigns/now?app=demo", expect=200)
    assert finished["status"] == "done" and finished["progress"]["ratio"] == 1.0, finished

    await api.call("GET", campaigns, "/v1/campaigns?app=demo&limit=10", expect=200)
    await api.call("GET", campaigns, "/v1/campaigns", expect=200)
    await api.call("GET", campaigns, "/v1/campaigns?status=bogus", expect=400)
    await api.call("GET", campaigns, "/v1/campaigns", expect=401, key=None)
    await api.call("GET", campaigns, "/v1/campaigns?app=demo", expect=403, key=SHOP_KEY)
    await api.call("GET", one, "/v1/campaigns/spring?app=demo", expect=200)
    await api.call("GET", one, "/v1/campaigns/bad!id?app=demo", expect=400)
    await api.call("GET", one, "/v1/campaigns/nope?app=demo", expect=404)
    await api.call("GET", one, "/v1/campaigns/spring?app=demo", expect=401, key=None)
    await api.call("GET", one, "/v1/campaigns/spring?app=demo", expect=403, key=SHOP_KEY)
    look = "/v1/campaigns/{campaign_id}/preview"
    shown = await api.call("GET", look, "/v1/campaigns/spring/preview?app=demo", expect=200)
    assert shown["audience"]["total"] == 2 and set(shown["payloads"]) == {"ios", "android"}, shown
    await api.call("GET", look, "/v1/campaigns/bad!id/preview?app=demo", expect=400)
    await api.call("GET", look, "/v1/campaigns/nope/preview?app=demo", expect=404)
    await api.call("GET", look, "/v1/campaigns/spring/preview?app=demo", expect=401, key=None)
    await api.call("GET", look, "/v1/campaigns/spring/preview?app=demo", expect=403, key=SHOP_KEY)

    # pause -> 409 (paused already) -> resume -> 409 (not paused) -> cancel -> 409 (over); each 400/401/403/404.
    for action in ("pause", "resume", "cancel"):
        route = f"/v1/campaigns/{{campaign_id}}/{action}"
        await api.call("POST", route, f"/v1/campaigns/spring/{action}?app=demo", expect=200)
        await api.call("POST", route, f"/v1/campaigns/spring/{action}?app=demo", expect=409)
        await api.call("POST", route, f"/v1/campaigns/bad!id/{action}?app=demo", expect=400)
        await api.call("POST", route, f"/v1/campaigns/nope/{action}?app=demo", expect=404)
        await api.call("POST", route, f"/v1/campaigns/spring/{action}?app=demo", expect=401, key=None)
        await api.call("POST", route, f"/v1/campaigns/spring/{action}?app=demo", expect=403, key=SHOP_KEY)


# ------------------------------------------------------------------------------------------ documented behaviour


async def test_opted_out_counts_named_tokens_and_an_audience_leaves_opted_out_devices_out(stack: Stack) -> None:
    """What README and /openapi.json say `counts.opted_out` is: a device named in `target.tokens` whose opt_out
    lists the message's category counts there (and in targeted); a users or segment audience is read without
    such devices, so they are in neither count."""
    await stack.start()
    await stack.register(IOS_OPTED_OUT, "ios", user_id="olga", tags=["fr"], opt_out=["promo"])
    await stack.register(IOS, "ios", user_id="olga", tags=["fr"])
    expected = {
        "by-token": (alert("by-token", {"tokens": [IOS_OPTED_OUT, IOS]}), {"targeted": 2, "opted_out": 1}),
        "by-user": (alert("by-user", {"users": ["olga"]}), {"targeted": 1, "opted_out": 0}),
        "by-segment": (alert("by-segment", {"segment": {"tags_any": ["fr"]}}), {"targeted": 1, "opted_out": 0}),
    }
    for body, _ in expected.values():
        async with stack.http.post(stack.url("/v1/notifications"), json=body,
                                   headers={"Authorization": f"Bearer {API_KEY}"}) as response:
            assert response.status == 201, await response.text()
    for request_id, (_, counts) in expected.items():
        await stack.wait_finished(request_id)
        async with stack.http.get(stack.url(f"/v1/notifications/{request_id}"),
                                  headers={"Authorization": f"Bearer {API_KEY}"}) as response:
            view = await response.json()
        assert {k: view["counts"][k] for k in counts} == counts, (request_id, view["counts"])
        assert view["counts"]["delivered"] == 1, (request_id, view["counts"])
    assert len(stack.apns.requests_for(IOS_OPTED_OUT)) == 0


async def test_registering_a_deactivated_token_again_reactivates_it(stack: Stack) -> None:
    """A token a provider called dead is not sent to; registered again (a fresh token the app was given back,
    or the same app reinstalled), it is active and sent to again."""
    await stack.start()
    await stack.register(IOS_DEAD, "ios", user_id="dan")
    stack.apns.script(IOS_DEAD, status=410, reason="Unregistered")
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with stack.http.post(stack.url("/v1/notifications"), json=alert("first", {"users": ["dan"]}),
                               headers=headers) as response:
        assert response.status == 201
    first = await stack.wait_finished("first")
    assert first["counts"]["invalid_token"] == 1
    async with stack.http.post(stack.url("/v1/notifications"), json=alert("while-dead", {"users": ["dan"]}),
                               headers=headers) as response:
        assert response.status == 201
    assert (await stack.wait_finished("while-dead"))["counts"]["targeted"] == 0

    stack.apns.script(IOS_DEAD, status=200)
    device = await stack.register(IOS_DEAD, "ios", user_id="dan")
    assert device["active"] is True and device["deactivated_reason"] is None
    async with stack.http.post(stack.url("/v1/notifications"), json=alert("revived", {"users": ["dan"]}),
                               headers=headers) as response:
        assert response.status == 201
    assert (await stack.wait_finished("revived"))["counts"]["delivered"] == 1
    assert len(stack.apns.requests_for(IOS_DEAD)) == 2  # the first (dead) one and the revived one


def test_the_strict_check_refuses_what_typed_clients_would() -> None:
    """The checker itself: a 0/1 for a boolean, a float for an integer, an undocumented field, a date-time
    without an offset are each an error."""
    schemas = {
        "Thing": {"type": "object", "properties": {"active": {"type": "boolean"}, "n": {"type": "integer"},
                                                    "at": {"type": "string", "format": "date-time"},
                                                    "note": {"type": "string", "nullable": True}}},
    }
    schema = _json_schema({"$ref": "#/components/schemas/Thing"}, copy.deepcopy(schemas))

    def errors(instance: Any) -> int:
        return len(list(StrictValidator(schema, format_checker=FORMATS).iter_errors(instance)))

    assert errors({"active": True, "n": 3, "at": "2026-12-04T10:00:00+00:00", "note": None}) == 0
    assert errors({"active": 1}) == 1
    assert errors({"n": 3.0}) == 1
    assert errors({"at": "2026-12-04T10:00:00"}) == 1
    assert errors({"extra": 1}) == 1
