"""/openapi.json and the validators agree on the request contract (and on campaign and device bodies).

The schemas are built from the validators' constants (api/openapi_inputs.py); this asks the validators
themselves. Walking every closed object schema of a body: each key the schema lists is accepted (some valid
example carries it), a key it does not list is refused naming that field; each enum's values are accepted and
no other value is (the other enums' values, case variants, junk). Valid examples also validate against the
schema, and the unknown-key mutants fail it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from pushsvc.api.openapi import spec
from pushsvc.device_contract import parse_device
from pushsvc.ingest.campaigns import parse_campaign
from pushsvc.model import RequestError, parse_request
from pushsvc.model.message import MAX_LOCALE_LENGTH

SCHEMAS = spec()["components"]["schemas"]
APPS = frozenset({"demo"})
UNLISTED = "zz_not_in_schema"
Path = tuple[str, ...]  # keys from the body's root; "*" in a schema path stands for any key of a map

P256DH = "BAEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE"
AUTH = "AgICAgICAgICAgICAgICAg"
REQUESTS: list[dict[str, Any]] = [
    {
        "id": "alert", "app": "demo", "target": {"tokens": ["token-1", "token-2"]},
        "message": {
            "title": "Hi", "body": "There", "data": {"order": 42, "ok": True, "s": "x"}, "badge": 1,
            "sound": "default", "category": "orders", "thread_id": "order-42", "mutable_content": True,
            "localized": {"fr": {"title": "Salut", "body": "Toi"}},
        },
        "options": {
            "priority": "high", "ttl_seconds": 3600, "collapse_key": "order-42", "push_type": "alert",
            "send_at": "2030-01-01T09:00:00Z", "local_time": False, "dry_run": True,
        },
    },
    {"id": "background", "app": "demo", "target": {"users": ["u1"]}, "message": {"data": {"k": "v"}},
     "options": {"push_type": "background", "priority": "normal"}},
    {"id": "voip", "app": "demo", "target": {"segment": {"tags_any": ["fr"], "tags_all": ["beta"]}},
     "message": {"data": {"call": "1"}}, "options": {"push_type": "voip"}},
    {
        "id": "la-start", "app": "demo", "target": {"users": ["u1"]},
        "message": {"title": "Order", "sound": "default", "live_activity": {
            "event": "start", "content_state": {"step": 1}, "timestamp": 1800000000, "stale_date": 1800003600,
            "relevance_score": 50, "attributes_type": "DeliveryAttributes", "attributes": {"order": 42},
        }},
        "options": {"push_type": "liveactivity"},
    },
    {
        "id": "la-update", "app": "demo", "target": {"tokens": ["token-1"]},
        "message": {"live_activity": {"event": "update", "content_state": {"step": 2}}},
        "options": {"push_type": "liveactivity"},
    },
    {
        "id": "la-end", "app": "demo", "target": {"users": ["u1"]},
        "message": {"live_activity": {"event": "end", "activity_id": "order-42", "dismissal_date": 1800007200}},
        "options": {"push_type": "liveactivity", "send_at": "2030-01-01T09:00:00", "local_time": True},
    },
]
CAMPAIGNS: list[dict[str, Any]] = [
    {
        "id": "spring-sale", "name": "Spring", "app": "demo", "audience": {"segment": {"tags_any": ["fr"]}},
        "message": {"title": "Sale"},
        "options": {"priority": "high", "ttl_seconds": 60, "collapse_key": "sale", "push_type": "alert",
                    "dry_run": True},
        "schedule": {"at": "2030-01-01T09:00:00", "local_time": True},
        "quiet_hours": {"start": "22:00", "end": "07:00"}, "throttle_per_second": 100,
    },
    {"name": "Sync", "app": "demo", "audience": {"users": ["u1"]}, "message": {"data": {"k": "v"}},
     "options": {"push_type": "background", "priority": "normal"}, "schedule": {"at": "2030-01-01T09:00:00Z"}},
    {"name": "Best time", "app": "demo", "audience": {"users": ["u1"]}, "message": {"title": "Hi"},
     "schedule": {"at": "2030-01-01T10:00:00Z", "best_time": {"window_hours": 24}}},
    {"name": "Calls", "app": "demo", "audience": {"users": ["u1"]}, "message": {"data": {"k": "v"}},
     "options": {"push_type": "voip"}},
    {"name": "Activity", "app": "demo", "audience": {"users": ["u1"]},
     "message": {"live_activity": {"event": "update", "activity_id": "a1", "content_state": {}}},
     "options": {"push_type": "liveactivity"}},
    {"name": "Test", "app": "demo", "audience": {"segment": {"tags_any": ["fr"]}}, "control_percent": 10,
     "variants": [{"name": "A", "weight": 3, "message": {"title": "Sale"}},
                  {"name": "B", "message": {"title": "-20%"}}]},
]
DEVICES: list[dict[str, Any]] = [
    {"app": "demo", "token": "apns-token-1", "platform": "ios", "kind": "apns", "user_id": "u1", "tags": ["fr"],
     "locale": "fr-FR", "timezone": "Europe/Paris", "app_version": "1.2.3", "opt_out": ["promo"]},
    {"app": "demo", "token": "activity-token-1", "platform": "ios", "kind": "apns_liveactivity", "activity_id": "a1"},
    {"app": "demo", "token": "fcm-token-1", "platform": "android"},
    {"app": "demo", "token": "hms-token-1", "platform": "huawei"},
    {"app": "demo", "platform": "web", "subscription": {
        "endpoint": "https://push.example.com/send/abc", "expirationTime": 1893456000000,
        "keys": {"p256dh": P256DH, "auth": AUTH},
    }},
]
# Which body each schema describes: its validator, its valid examples, and whether its walk follows $refs
# (a campaign's message is the request's Message, walked with the requests).
CONTRACTS: dict[str, tuple[Callable[[Any], object], list[dict[str, Any]], bool]] = {
    "NotificationRequest": (lambda body: parse_request(body, APPS), REQUESTS, True),
    "CampaignInput": (lambda body: parse_campaign(body, APPS), CAMPAIGNS, False),
    "DeviceInput": (lambda body: parse_device(body, APPS), DEVICES, True),
}


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = SCHEMAS[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _closed_objects(schema: dict[str, Any], path: Path, follow: bool) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every object schema that lists its keys (additionalProperties false), with its path in the body."""
    if "$ref" in schema and not follow and path:
        return
    schema = _resolve(schema)
    if schema.get("type") != "object":
        return
    extra = schema.get("additionalProperties")
    if extra is False:
        yield path, schema
        for key, sub in schema["properties"].items():
            yield from _closed_objects(sub, (*path, key), follow)
    elif isinstance(extra, dict):
        yield from _closed_objects(extra, (*path, "*"), follow)


def _enums(name: str) -> list[tuple[Path, list[str]]]:
    _, _, follow = CONTRACTS[name]
    return [
        ((*path, key), sub["enum"])
        for path, schema in _closed_objects(SCHEMAS[name], (), follow)
        for key, sub in schema["properties"].items()
        if "enum" in sub
    ]


def _places(body: Any, path: Path) -> Iterator[Path]:
    """The concrete paths in `body` of the objects a schema path names ("*": each key there)."""
    if not path:
        if isinstance(body, dict):
            yield ()
        return
    head, *rest = path
    if not isinstance(body, dict):
        return
    for key in (body if head == "*" else [head] if head in body else []):
        yield from ((key, *tail) for tail in _places(body[key], tuple(rest)))


def _with(body: dict[str, Any], path: Path, value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(body)
    node = changed
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return changed


def _get(body: Any, path: Path) -> Any:
    for key in path:
        body = body[key]
    return body


def _error(name: str, body: dict[str, Any]) -> RequestError | None:
    validate, _, _ = CONTRACTS[name]
    try:
        validate(body)
    except RequestError as exc:
        return exc
    return None


def _schema_validator(name: str) -> Draft202012Validator:
    # nullable (OpenAPI 3.0) is not JSON Schema: the examples hold no nulls where it matters.
    return Draft202012Validator({**SCHEMAS[name], "components": {"schemas": SCHEMAS}})


def _sample(schema: dict[str, Any]) -> Any:
    """A plain value of a schema's type, for a key no example carries (None: can't make one up)."""
    schema = _resolve(schema)
    if "enum" in schema:
        return schema["enum"][0]
    if "pattern" in schema:
        return None
    kind = schema.get("type")
    if kind == "string":
        return "x" * max(1, schema.get("minLength", 1))
    if kind in ("integer", "number"):
        return schema.get("minimum", 1)
    if kind == "boolean":
        return False
    if kind == "array":
        return [_sample(schema["items"])] if schema.get("minItems") else []
    return {} if kind == "object" else None


@pytest.mark.parametrize("name", CONTRACTS)
def test_the_examples_are_valid_for_both(name: str) -> None:
    _, examples, _ = CONTRACTS[name]
    validator = _schema_validator(name)
    for body in examples:
        assert _error(name, body) is None, body
        assert not list(validator.iter_errors(body)), body


@pytest.mark.parametrize("name", CONTRACTS)
def test_every_key_the_schema_lists_is_accepted(name: str) -> None:
    _, examples, follow = CONTRACTS[name]
    for path, schema in _closed_objects(SCHEMAS[name], (), follow):
        for key, sub in schema["properties"].items():
            carried = any(
                (*place, key) and key in _get(body, place)
                for body in examples
                for place in _places(body, path)
            )
            if carried:
                continue  # a valid example holds it (test_the_examples_are_valid_for_both)
            value = _sample(sub)
            tried = [
                _with(body, (*place, key), value) for body in examples for place in _places(body, path)
            ] if value is not None else []
            assert any(_error(name, body) is None for body in tried), (
                f"{name}: the schema lists {'.'.join((*path, key))} but no valid body carries it "
                "(add it to an example)"
            )


def _all_keys() -> set[str]:
    keys = {UNLISTED, "Title"}
    for name in CONTRACTS:
        for _, schema in _closed_objects(SCHEMAS[name], (), True):
            keys |= set(schema["properties"])
    return keys


# Any key some object of these bodies takes, tried where it is not listed: a validator that took a key its
# schema leaves out would show here.
ALL_KEYS = sorted(_all_keys())


@pytest.mark.parametrize("name", CONTRACTS)
def test_a_key_the_schema_does_not_list_is_refused_naming_it(name: str) -> None:
    _, examples, follow = CONTRACTS[name]
    validator = _schema_validator(name)
    checked = 0
    for path, schema in _closed_objects(SCHEMAS[name], (), follow):
        for key in set(ALL_KEYS) - set(schema["properties"]):
            for body in examples:
                for place in _places(body, path):
                    mutant = _with(body, (*place, key), 1)
                    error = _error(name, mutant)
                    named = ".".join((*place, key))
                    assert error is not None, f"{name}: {named} accepted but not in the schema"
                    assert (error.field, "unknown field") == (named, error.reason[:13]), (
                        f"{name}: {named} is not in the schema, but the validator did not refuse it as unknown: "
                        f"{error}"
                    )
                    assert list(validator.iter_errors(mutant)), f"{name}: the schema takes {named}"
                    checked += 1
    assert checked


ALL_ENUM_VALUES = sorted({value for name in CONTRACTS for _, values in _enums(name) for value in values})


@pytest.mark.parametrize("name", CONTRACTS)
def test_each_enum_is_exactly_what_the_validator_accepts(name: str) -> None:
    _, examples, _ = CONTRACTS[name]
    enums = _enums(name)
    assert enums
    for path, values in enums:
        field = ".".join(path)
        places = [(body, (*place, path[-1])) for body in examples for place in _places(body, path[:-1])]
        for value in values:
            assert any(_error(name, _with(body, where, value)) is None for body, where in places), (
                f"{name}: {field} {value!r} is in the schema's enum but no body takes it"
            )
        near = {*(v.upper() for v in values), f"{values[0]} ", "liveactivity_start", "bogus", ""}
        others = {*ALL_ENUM_VALUES, *near} - set(values)
        for value in sorted(others):
            for body, where in places:
                error = _error(name, _with(body, where, value))
                assert error is not None, f"{name}: {field} {value!r} accepted but not in the enum {values}"
                assert error.field == ".".join(where), f"{name}: {field} {value!r} not refused as such: {error}"


def _bounds(name: str) -> list[tuple[Path, dict[str, Any]]]:
    """Every key of a closed object whose schema states a numeric range or a longest string (but names from a
    set, which no string of the longest length is: `app`, a configured app, and `timezone`, an IANA zone)."""
    _, _, follow = CONTRACTS[name]
    return [
        ((*path, key), sub)
        for path, schema in _closed_objects(SCHEMAS[name], (), follow)
        for key, sub in ((k, _resolve(s)) for k, s in schema["properties"].items())
        if key not in ("app", "timezone") and "enum" not in sub and "pattern" not in sub
        and ({"minimum", "maximum", "maxLength"} & set(sub))
    ]


def _edges(schema: dict[str, Any], base: str) -> Iterator[tuple[Any, bool]]:
    """Values at each stated bound (in the schema) and just past it (outside); strings are the example's own
    (`base`: a URL stays a URL) padded to the length."""
    step = 1 if schema.get("type") == "integer" else 0.5
    if "maximum" in schema:
        yield schema["maximum"], True
        yield schema["maximum"] + step, False
    if "minimum" in schema:
        yield schema["minimum"], True
        yield schema["minimum"] - step, False
    if "maxLength" in schema:
        longest = schema["maxLength"]
        yield base[:longest].ljust(longest, "a"), True
        yield base[:longest].ljust(longest + 1, "a"), False


@pytest.mark.parametrize("name", CONTRACTS)
def test_each_stated_bound_is_exactly_what_the_validator_accepts(name: str) -> None:
    """A limit the schema states is the validator's: its edge is taken, one step past it is refused naming
    the field, and the schema refuses it too."""
    _, examples, _ = CONTRACTS[name]
    validator = _schema_validator(name)
    checked = 0
    for path, schema in _bounds(name):
        field = ".".join(path)
        places = [(body, (*place, path[-1])) for body in examples for place in _places(body, path[:-1])]
        carried = [_get(body, where) for body, where in places if path[-1] in _get(body, where[:-1])]
        base = next((value for value in carried if isinstance(value, str)), "")
        for value, inside in _edges(schema, base):
            shown = repr(value) if not isinstance(value, str) else f"{len(value)} characters"
            mutants = [_with(body, where, value) for body, where in places]
            if inside:
                assert not places or any(_error(name, body) is None for body in mutants), (
                    f"{name}: {field} = {shown} is within the schema's bound but no body takes it"
                )
                continue
            for mutant, (_, where) in zip(mutants, places, strict=True):
                error = _error(name, mutant)
                assert error is not None, f"{name}: {field} = {shown} accepted, past the schema's bound"
                assert error.field == ".".join(where), f"{name}: {field} = {shown} refused for another field: {error}"
                assert list(validator.iter_errors(mutant)), f"{name}: the schema takes {field} = {shown}"
                checked += 1
    assert checked


def test_what_json_schema_cannot_state_is_in_the_descriptions() -> None:
    """OpenAPI 3.0 has no propertyNames and counts characters, not bytes: those limits are written out."""
    message = SCHEMAS["Message"]["properties"]
    assert str(MAX_LOCALE_LENGTH) in message["localized"]["description"]
    options = _resolve(SCHEMAS["NotificationRequest"]["properties"]["options"])["properties"]
    assert "bytes" in options["collapse_key"]["description"]
    locale = "x" * (MAX_LOCALE_LENGTH + 1)
    error = _error("NotificationRequest", _with(REQUESTS[0], ("message", "localized"), {locale: {"title": "t"}}))
    assert error is not None and error.field == f"message.localized.{locale}"
    wide = "é" * (options["collapse_key"]["maxLength"] // 2 + 1)  # within maxLength characters, past it in bytes
    error = _error("NotificationRequest", _with(REQUESTS[0], ("options", "collapse_key"), wide))
    assert error is not None and error.field == "options.collapse_key"
