"""The Kafka contract for producers and consumers in other languages: an AsyncAPI 3 document for the three
topics (served at /asyncapi.json) and standalone JSON Schema files for their messages (docs/contracts/).

The request schema is the one the HTTP API publishes (openapi_schemas.SCHEMAS, the same contract as Kafka); the
dead-letter envelope and the outcome event are described here beside the code that writes them
(ingest/kafka.py, outcomes.py). tests/unit/test_contracts.py checks the files equal what this module
generates, that every example is accepted by the service's own validator, that real envelopes and events
validate, and that sample bad requests fail the schema on the same field as the service's error.

`python -m pushsvc.api.asyncapi docs/contracts` rewrites the files.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from pushsvc import __version__
from pushsvc.api.openapi_schemas import SCHEMAS, STATES
from pushsvc.store.counts import COUNT_KEYS

JSON_SCHEMA = "https://json-schema.org/draft/2020-12/schema"

DEAD_LETTER = {
    "type": "object",
    "required": ["reason", "error", "source", "value_truncated", "failed_at"],
    "properties": {
        "reason": {
            "type": "string",
            "enum": ["invalid_json", "invalid_request", "too_large", "store_rejected", "conflict"],
            "description": "conflict: the request id was recorded before in its app with a different body; the "
                           "first request stands (it is sent once), this one is kept here",
        },
        "error": {"type": "string", "description": "what was wrong, naming the field"},
        "field": {
            "type": ["string", "null"],
            "description": "the request field at fault, when there is one (for conflict: the first field that "
                           "differs from the recorded request, e.g. message.title)",
        },
        "source": {
            "type": "object",
            "required": ["topic", "partition", "offset", "timestamp_ms", "key"],
            "properties": {
                "topic": {"type": "string"},
                "partition": {"type": "integer", "minimum": 0},
                "offset": {"type": "integer", "minimum": 0},
                "timestamp_ms": {"type": "integer"},
                "key": {"type": ["string", "null"]},
            },
        },
        "value": {"type": "string", "description": "the original message (UTF-8), possibly a prefix"},
        "value_base64": {"type": "string", "description": "the original message, when it was not UTF-8"},
        "value_truncated": {"type": "boolean", "description": "true: value holds a prefix (oversize input)"},
        "key_truncated": {"type": "boolean"},
        "headers_dropped": {"type": "boolean"},
        "failed_at": {"type": "number", "description": "epoch seconds"},
    },
    "oneOf": [{"required": ["value"]}, {"required": ["value_base64"]}],
}
OUTCOME_EVENT = {
    "type": "object",
    "required": ["id", "app", "state", "counts", "error", "finished_at"],
    "properties": {
        "id": {"type": "string", "description": "the request id (unique within the app)"},
        "app": {"type": "string"},
        "state": {"type": "string", "enum": [s for s in STATES if s in ("done", "failed", "cancelled")]},
        "counts": {
            "type": "object",
            "required": list(COUNT_KEYS),
            "properties": {k: {"type": "integer", "minimum": 0} for k in COUNT_KEYS},
        },
        "error": {"type": ["string", "null"]},
        "finished_at": {"type": "number", "description": "epoch seconds, as stored"},
        "dry_run": {
            "type": "object",
            "description": "present only for a dry run (options.dry_run): its final outcomes per device platform",
            "required": ["by_platform"],
            "properties": {
                "by_platform": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "additionalProperties": {"type": "integer", "minimum": 0},
                    },
                }
            },
        },
        "variants": {
            "type": "object",
            "description": "present only for a campaign with variants or a control group: `targeted` and the final "
            "outcomes per variant ('control': the held-out users, counted `control`; 'default': everyone else "
            "when there are no variants)",
            "additionalProperties": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
        },
    },
}

# outcomes.py ReceiptEvent: on the same topic and key as the outcome event; `type` tells them apart (an outcome
# event has none).
RECEIPT_EVENT = {
    "type": "object",
    "required": ["type", "id", "app", "event", "at", "recorded_at", "platform", "locale", "implied"],
    "properties": {
        "type": {"const": "receipt", "description": "a receipt event; outcome events carry no type"},
        "id": {"type": "string", "description": "the request id (unique within the app)"},
        "app": {"type": "string"},
        "event": {"type": "string", "enum": ["received", "opened"]},
        "at": {"type": "number", "description": "epoch seconds: when the device says it happened"},
        "recorded_at": {"type": "number", "description": "epoch seconds: when pushsvc recorded it"},
        "platform": {"type": "string", "description": "the device's platform (ios, android, huawei, web), 'other', "
                     "or 'mixed' for a receipt by user_id whose devices differ"},
        "locale": {"type": "string", "description": "the language of the device's locale (fr), 'other' or 'mixed'"},
        "variant": {"type": "string", "description": "a campaign with variants or a control group only: the group "
                    "the device was in (a variant's name, 'control', or 'default')"},
        "implied": {"type": "boolean", "description": "true: a received recorded because the device reported "
                    "opened"},
    },
}

REQUEST_EXAMPLES = [
    {"name": "order-shipped", "payload": {
        "id": "order-1234-shipped", "app": "demo", "target": {"users": ["u-42"]},
        "message": {"title": "Your order shipped", "body": "Arriving Thursday", "data": {"order": "1234"}},
        "options": {"priority": "high", "collapse_key": "order-1234"}}},
    {"name": "segment-at-local-time", "payload": {
        "id": "spring-sale", "app": "demo", "target": {"segment": {"tags_any": ["fr", "be"]}},
        "message": {"title": "Sale", "body": "Today only", "localized": {"fr": {"title": "Soldes"}}},
        "options": {"send_at": "2030-03-01T09:00:00", "local_time": True, "ttl_seconds": 3600}}},
    {"name": "voip-call", "payload": {
        "id": "call-77", "app": "demo", "target": {"tokens": ["a1" * 32]},
        "message": {"data": {"caller": "Alice"}}, "options": {"push_type": "voip"}}},
]
DEAD_LETTER_EXAMPLE = {
    "reason": "invalid_request", "error": "message.badge: must be an integer between 0 and 2147483647",
    "field": "message.badge",
    "source": {"topic": "push.requests", "partition": 3, "offset": 1187, "timestamp_ms": 1764000000000,
               "key": "demo:order-9"},
    "value_truncated": False, "failed_at": 1764000000.25,
    "value": '{"id":"order-9","app":"demo","target":{"users":["u-1"]},"message":{"title":"Hi","badge":"3"}}',
}
CONFLICT_EXAMPLE = {
    "reason": "conflict",
    "error": "request id 'order-9' was recorded before in app 'demo' with a different body (message.title "
             "differs); the first request stands: use a new id for a new notification",
    "field": "message.title",
    "source": {"topic": "push.requests", "partition": 1, "offset": 2203, "timestamp_ms": 1764000060000,
               "key": "demo:order-9"},
    "value_truncated": False, "failed_at": 1764000060.5,
    "value": '{"id":"order-9","app":"demo","target":{"users":["u-1"]},"message":{"title":"Hello again"}}',
}
OUTCOME_EXAMPLE = {
    "id": "order-1234-shipped", "app": "demo", "state": "done",
    "counts": {"targeted": 2, "delivered": 1, "invalid_token": 1, "rejected": 0, "failed": 0, "auth_error": 0,
               "unknown_token": 0, "opted_out": 0, "expired": 0, "control": 0, "capped": 0, "validated": 0},
    "error": None, "finished_at": 1764000001.5,
}

RECEIPT_EXAMPLE = {
    "type": "receipt", "id": "order-1234-shipped", "app": "demo", "event": "opened", "at": 1764000060.0,
    "recorded_at": 1764000061.25, "platform": "ios", "locale": "fr", "implied": False,
}


def _refs_to(prefix: str, schema: Any) -> Any:
    """`schema` with its OpenAPI component references pointed at `prefix` (#/$defs/ or #/components/...)."""
    text = json.dumps(schema).replace('"#/components/schemas/', f'"{prefix}')
    return json.loads(text)


def json_schemas() -> dict[str, dict[str, Any]]:
    """Standalone JSON Schema (2020-12) documents, by file name."""
    request = _refs_to("#/$defs/", copy.deepcopy(SCHEMAS["NotificationRequest"]))
    return {
        "notification-request.schema.json": {
            "$schema": JSON_SCHEMA, "$id": "https://pushsvc.invalid/contracts/notification-request.schema.json",
            "title": "pushsvc notification request (Kafka push.requests value, POST /v1/notifications body)",
            **request, "$defs": {"Message": _refs_to("#/$defs/", SCHEMAS["Message"])},
        },
        "dead-letter.schema.json": {
            "$schema": JSON_SCHEMA, "$id": "https://pushsvc.invalid/contracts/dead-letter.schema.json",
            "title": "pushsvc dead letter (push.requests.dlq value)", **DEAD_LETTER,
        },
        "outcome-event.schema.json": {
            "$schema": JSON_SCHEMA, "$id": "https://pushsvc.invalid/contracts/outcome-event.schema.json",
            "title": "pushsvc outcome event (push.outcomes value)", **OUTCOME_EVENT,
        },
        "receipt-event.schema.json": {
            "$schema": JSON_SCHEMA, "$id": "https://pushsvc.invalid/contracts/receipt-event.schema.json",
            "title": "pushsvc receipt event (push.outcomes value with type receipt)", **RECEIPT_EVENT,
        },
    }


def trace_headers(traceparent: str, **more: Any) -> dict[str, Any]:
    """Kafka headers of a message: the W3C trace context (pushsvc/tracing.py), and `more`."""
    return {
        "type": "object",
        "properties": {
            "traceparent": {"type": "string", "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}",
                            "description": traceparent},
            "tracestate": {"type": "string", "maxLength": 512, "description": "W3C tracestate, passed on"},
            **more,
        },
    }


def spec(requests_topic: str = "push.requests", dlq_topic: str = "push.requests.dlq",
         outcomes_topic: str = "push.outcomes") -> dict[str, Any]:
    """The AsyncAPI 3.0 document for the three topics (names as configured)."""
    def message(
        name: str, title: str, schema: str, examples: list[dict[str, Any]], key: str, headers: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "name": name, "title": title, "contentType": "application/json",
            "headers": headers,
            "payload": {"$ref": f"#/components/schemas/{schema}"},
            "bindings": {"kafka": {"key": {"type": "string", "description": key}}},
            "examples": examples,
        }

    return {
        "asyncapi": "3.0.0",
        "info": {"title": "pushsvc Kafka contract", "version": __version__,
                 "description": "Requests in, dead letters, outcome and receipt events out. At-least-once: a "
                                "consumer of push.outcomes may see an outcome event twice; request ids are idempotency "
                                "keys per app."},
        "defaultContentType": "application/json",
        "channels": {
            "requests": {"address": requests_topic, "messages": {"request": {"$ref": "#/components/messages/request"}}},
            "deadLetters": {"address": dlq_topic,
                            "messages": {"deadLetter": {"$ref": "#/components/messages/deadLetter"}}},
            "outcomes": {"address": outcomes_topic, "messages": {
                "outcome": {"$ref": "#/components/messages/outcome"},
                "receipt": {"$ref": "#/components/messages/receipt"},
            }},
        },
        "operations": {
            "consumeRequests": {"action": "receive", "channel": {"$ref": "#/channels/requests"},
                                "summary": "pushsvc records each valid request once per (app, id) and delivers it"},
            "publishDeadLetters": {"action": "send", "channel": {"$ref": "#/channels/deadLetters"},
                                   "summary": "requests pushsvc cannot accept, with the reason and the field"},
            "publishOutcomes": {"action": "send", "channel": {"$ref": "#/channels/outcomes"},
                                "summary": "one event per finished notification (at least once), and one per new "
                                           "receipt (type receipt, best effort); both keyed <app>:<id>",
                                "messages": [{"$ref": "#/channels/outcomes/messages/outcome"},
                                             {"$ref": "#/channels/outcomes/messages/receipt"}]},
        },
        "components": {
            "schemas": {
                "NotificationRequest": SCHEMAS["NotificationRequest"], "Message": SCHEMAS["Message"],
                "DeadLetter": DEAD_LETTER, "OutcomeEvent": OUTCOME_EVENT, "ReceiptEvent": RECEIPT_EVENT,
            },
            "messages": {
                "request": message("NotificationRequest", "A push request", "NotificationRequest",
                                   REQUEST_EXAMPLES, "<app>:<id> recommended (spreads apps over partitions)",
                                   trace_headers("optional: the producer's span; the push's spans join its trace "
                                                 "(without it, a new trace begins at intake)")),
                "deadLetter": message("DeadLetter", "A rejected request", "DeadLetter",
                                      [{"name": "bad-badge", "payload": DEAD_LETTER_EXAMPLE},
                                       {"name": "id-reused-with-another-body", "payload": CONFLICT_EXAMPLE}],
                                      "the original key",
                                      trace_headers("the request's intake span (tracing off or not sampled: the "
                                                    "producer's traceparent as it came)",
                                                    **{"pushsvc-dlq-reason": {"type": "string"}})),
                "outcome": message("OutcomeEvent", "A finished notification", "OutcomeEvent",
                                   [{"name": "done", "payload": OUTCOME_EXAMPLE}], "<app>:<id>",
                                   trace_headers("the event's publish span, in the push's trace (tracing off or "
                                                 "not sampled: the context stored at intake); absent for a "
                                                 "notification recorded without one while tracing was off")),
                "receipt": message("ReceiptEvent", "A new receipt (POST /v1/receipts)", "ReceiptEvent",
                                   [{"name": "opened", "payload": RECEIPT_EXAMPLE}], "<app>:<id>",
                                   {"type": "object", "description": "none: receipts are not traced"}),
            },
        },
    }


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    files = {**json_schemas(), "asyncapi.json": spec()}
    written = []
    for name, document in files.items():
        path = directory / name
        path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        written.append(path)
    return written


routes = web.RouteTableDef()
KAFKA_TOPICS: web.AppKey[tuple[str, str, str]] = web.AppKey("kafka_topics")


@routes.get("/asyncapi.json")
async def asyncapi_json(request: web.Request) -> web.Response:
    return web.json_response(spec(*request.app[KAFKA_TOPICS]))


if __name__ == "__main__":
    for path in write(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/contracts")):
        print(path)
