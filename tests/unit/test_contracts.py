"""The Kafka contract files (docs/contracts/) are what the code generates, every example is accepted by the
service's own validator, real dead letters and outcome events validate, and a bad request fails the schema
on the same field the service names."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from aiokafka.structs import ConsumerRecord
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from pushsvc.api import asyncapi
from pushsvc.ingest.intake import Accepted, Rejection, decode, validate
from pushsvc.ingest.kafka import dead_letter
from pushsvc.outcomes import OutcomeEvent

CONTRACTS = Path(__file__).resolve().parents[2] / "docs" / "contracts"
APPS = frozenset({"demo"})


def schema(name: str) -> Draft202012Validator:
    document = json.loads((CONTRACTS / name).read_text())
    Draft202012Validator.check_schema(document)
    return Draft202012Validator(document)


REQUEST = schema("notification-request.schema.json")
DEAD_LETTER = schema("dead-letter.schema.json")
OUTCOME = schema("outcome-event.schema.json")


def test_the_files_are_what_the_code_generates(tmp_path: Path) -> None:
    asyncapi.write(tmp_path)
    generated = sorted(p.name for p in tmp_path.iterdir())
    assert generated == sorted(p.name for p in CONTRACTS.iterdir()), "run: python -m pushsvc.api.asyncapi"
    for name in generated:
        assert (tmp_path / name).read_text() == (CONTRACTS / name).read_text(), f"{name}: regenerate it"


def test_the_asyncapi_document_names_three_channels_and_their_messages() -> None:
    document = json.loads((CONTRACTS / "asyncapi.json").read_text())
    assert document["asyncapi"] == "3.0.0"
    assert {c["address"] for c in document["channels"].values()} == {
        "push.requests", "push.requests.dlq", "push.outcomes"
    }
    for operation in document["operations"].values():
        channel = operation["channel"]["$ref"].removeprefix("#/channels/")
        assert channel in document["channels"]
    assert asyncapi.spec("a", "b", "c")["channels"]["requests"]["address"] == "a"


@pytest.mark.parametrize("example", asyncapi.REQUEST_EXAMPLES, ids=lambda e: e["name"])
def test_every_request_example_is_valid_for_the_schema_and_the_service(example: dict) -> None:
    REQUEST.validate(example["payload"])
    assert isinstance(validate(example["payload"], APPS), Accepted)


def test_the_other_examples_validate() -> None:
    DEAD_LETTER.validate(asyncapi.DEAD_LETTER_EXAMPLE)
    OUTCOME.validate(asyncapi.OUTCOME_EXAMPLE)


def record(value: bytes, key: bytes | None = b"demo:r1") -> ConsumerRecord:
    return ConsumerRecord("push.requests", 2, 41, 1764000000000, 0, key, value, None, 0, len(value), ())


@pytest.mark.parametrize(
    "value",
    [b'{"id": "r1", "app": "demo", "message": {"title": "x"}}', b"\xff\xfe not utf-8", b"x" * 3000],
    ids=["invalid-request", "not-utf8", "too-large"],
)
def test_real_dead_letters_validate(value: bytes) -> None:
    outcome = decode(value, 2000, APPS)
    assert isinstance(outcome, Rejection)
    letter = dead_letter(record(value), outcome, 1_000_000)
    DEAD_LETTER.validate(orjson.loads(letter.value))


def test_a_real_outcome_event_validates() -> None:
    counts = {k: 0 for k in asyncapi.COUNT_KEYS} | {"targeted": 3, "delivered": 3}
    event = OutcomeEvent("demo:r1", "r1", "demo", "done", counts, None, 1764000000.5)
    OUTCOME.validate(orjson.loads(event.encode()))


def schema_field(error: ValidationError) -> str:
    """The service's way of naming a field (a.b[1]) for a JSON Schema error."""
    path = ""
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    if error.validator == "required":
        missing = error.message.split("'")[1]
        return f"{path}.{missing}" if path else missing
    if error.validator == "additionalProperties":
        extra = error.message.split("'")[1]
        return f"{path}.{extra}" if path else extra
    return path


BASE = {"id": "r1", "app": "demo", "target": {"users": ["u1"]}, "message": {"title": "Hi", "body": "x"}}


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({k: v for k, v in BASE.items() if k != "app"}, "app"),
        ({**BASE, "message": {"title": "Hi", "badge": "3"}}, "message.badge"),
        ({**BASE, "options": {"priority": "urgent"}}, "options.priority"),
        ({**BASE, "options": {"ttl_seconds": -1}}, "options.ttl_seconds"),
        ({**BASE, "target": {"users": ["u"], "tokens": ["t" * 10]}}, "target"),
        ({**BASE, "target": {"users": []}}, "target.users"),
        ({**BASE, "colour": "red"}, "colour"),
        ({**BASE, "message": {"title": "Hi", "colour": "red"}}, "message.colour"),
        ({**BASE, "message": {"title": ""}}, "message.title"),
        ({**BASE, "id": "campaign:x"}, "id"),
        ({**BASE, "target": {"segment": {"tags_any": ["a", 3]}}}, "target.segment.tags_any[1]"),
    ],
)
def test_a_bad_request_fails_the_schema_on_the_field_the_service_names(bad: dict, field: str) -> None:
    rejection = validate(bad, APPS)
    assert isinstance(rejection, Rejection) and rejection.field == field
    error = best_match(REQUEST.iter_errors(bad))
    assert error is not None, "the schema accepts what the service refuses"
    assert schema_field(error) == field, error.message
