"""Property-based tests: every parser of outside input, fed arbitrary input, raises only its documented error.

The contract parser (Kafka and HTTP), device registration, campaign bodies, receipt batches, the devices import
CLI's rows,
Retry-After, and the APNs / FCM error-body classification. Strategies reach the edges: huge and odd numbers,
dates from year 1 to 9999 with extreme offsets, deep nesting, unicode and lone surrogates, and every field of a
valid request replaced by a value of the wrong type. Each test sets max_examples so the file stays within
seconds; @example pins the inputs that once crashed a parser.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from h2.exceptions import ProtocolError
from h2.utilities import HeaderValidationFlags, normalize_outbound_headers, validate_outbound_headers
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pushsvc.cli.devices_import import UnreadableRow, read_device_rows
from pushsvc.device_contract import parse_device
from pushsvc.ingest.campaigns import parse_campaign
from pushsvc.ingest.intake import Accepted, Rejection, decode, validate
from pushsvc.ingest.payload_limits import check_payload_size
from pushsvc.ingest.receipts import CLOCK_SKEW_SECONDS, parse_receipts
from pushsvc.model import RequestError, parse_request
from pushsvc.model.fields import encodable
from pushsvc.providers import apns, fcm
from pushsvc.providers.base import parse_retry_after
from pushsvc.scheduling.due import all_timezones, initial_due_at, next_ready_at, next_wave_at, ready_zones

APPS = frozenset({"demo"})
# derandomize: the same examples on every run (CI never fails on a newly drawn input; new finds come from
# raising max_examples locally). The inputs that once crashed a parser are pinned with @example.
FAST = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------------------------- strategies

EDGE_INTS = st.sampled_from([0, -1, 2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1])
INTS = st.one_of(st.integers(), EDGE_INTS, st.integers(min_value=-(10**40), max_value=10**40))
FLOATS = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([1e308, -1e308, 5e-324, -0.0, 1e16])
# Any code point, lone surrogates included (Python callers can pass them; JSON bytes cannot).
ANY_TEXT = st.text(st.characters(codec=None), max_size=40)
JSON_TEXT = st.text(max_size=40)  # what JSON decoding can produce: no lone surrogates
SCALARS = st.none() | st.booleans() | INTS | FLOATS | ANY_TEXT


def json_values(text: st.SearchStrategy[str] = ANY_TEXT, scalars: st.SearchStrategy[Any] = SCALARS) -> Any:
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=5) | st.dictionaries(text, children, max_size=5),
        max_leaves=20,
    )


JSON_VALUES = json_values()
# Values JSON bytes can carry (orjson round-trips them): integers within 64 bits, no surrogates.
PORTABLE = json_values(
    JSON_TEXT,
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | FLOATS | JSON_TEXT,
)


def deep(depth: int) -> Any:
    node: Any = 1
    for _ in range(depth):
        node = {"n": [node]}
    return node


@st.composite
def iso_datetimes(draw: st.DrawFn) -> str:
    """ISO 8601 strings across datetime's whole range, with offsets up to +-23:59 or none, or odd spellings."""
    moment = draw(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)))
    offset = draw(st.none() | st.integers(-(24 * 60 - 1), 24 * 60 - 1))
    text = moment.isoformat()
    if offset is not None:
        sign = "-" if offset < 0 else "+"
        text += f"{sign}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"
    return draw(st.sampled_from([text, text + "Z", text.replace("T", " "), text[:10], text.replace("-", "")]))


SEND_AT = iso_datetimes() | ANY_TEXT | st.sampled_from(["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"])
GOOD = {"id": "r-1", "app": "demo", "target": {"tokens": ["a" * 64]}, "message": {"title": "Hi", "body": "There"}}
# Every place a value can go in a request, to put a wrong type (or an edge value) there.
PATHS = [
    ("id",), ("app",), ("target",), ("target", "tokens"), ("target", "users"), ("target", "segment"),
    ("target", "segment", "tags_any"), ("message",), ("message", "title"), ("message", "body"),
    ("message", "data"), ("message", "data", "k"), ("message", "badge"), ("message", "sound"),
    ("message", "category"), ("message", "thread_id"), ("message", "mutable_content"), ("message", "localized"),
    ("message", "localized", "fr"), ("message", "localized", "fr", "title"), ("options",), ("options", "priority"),
    ("options", "ttl_seconds"), ("options", "collapse_key"), ("options", "push_type"), ("options", "send_at"),
    ("options", "local_time"),
]


def put(obj: dict, path: tuple[str, ...], value: Any) -> dict:
    result = json.loads(json.dumps(obj))
    node = result
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    return result


@st.composite
def mutated_requests(draw: st.DrawFn, values: st.SearchStrategy[Any] = JSON_VALUES) -> dict:
    request = GOOD
    for _ in range(draw(st.integers(1, 3))):
        request = put(request, draw(st.sampled_from(PATHS)), draw(values))
    return request


REQUESTS = mutated_requests() | JSON_VALUES | st.builds(
    lambda send_at, local: put(put(GOOD, ("options", "send_at"), send_at), ("options", "local_time"), local),
    SEND_AT,
    st.booleans(),
)


def only_contract_errors(raw: Any) -> Any:
    """parse_request + the payload check: a PushRequest, or RequestError; anything else fails the test."""
    try:
        request = parse_request(raw, APPS)
        check_payload_size(request)
        return request
    except RequestError as exc:
        assert exc.field, exc
        return None


# ------------------------------------------------------------------------------------------ the contract


@FAST
@given(REQUESTS)
@example(put(GOOD, ("options", "send_at"), "9999-12-31T23:59:59-23:59"))  # OverflowError: dropped a Kafka batch
@example(put(GOOD, ("message", "data"), {"n": math.nan}))
@example(put(GOOD, ("message", "data"), {"n": 10**30}))
@example(put(GOOD, ("message", "badge"), 10**30))
@example(put(GOOD, ("message", "data"), deep(50)))
@example({"": None})  # an empty key was named as field ""
@example(put(GOOD, ("message", "title"), "\ud800"))  # UnicodeEncodeError building the APNs payload
@example(put(GOOD, ("message", "data"), {"k": "\udfff"}))
def test_contract_parser_raises_only_the_contract_error(raw: Any) -> None:
    parsed = only_contract_errors(raw)
    outcome = validate(raw, APPS)
    assert isinstance(outcome, Accepted | Rejection)
    assert isinstance(outcome, Accepted) == (parsed is not None)


@FAST
@given(mutated_requests(PORTABLE) | PORTABLE)
def test_accepted_requests_can_be_recorded_and_sent(raw: Any) -> None:
    """What intake accepts is what the store (orjson text) and both providers can encode, within their limits."""
    outcome = validate(raw, APPS)
    if isinstance(outcome, Rejection):
        assert outcome.field, outcome  # a contract error naming the field, never an unforeseen exception
        return
    orjson.dumps(outcome.raw)
    message = outcome.request.message
    for locale in [None, *message.localized]:
        text = message.text_for(locale)
        assert fcm.counted_payload_bytes(text.title, text.body, message.data_as_strings()) <= fcm.MAX_PAYLOAD_BYTES


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(max_size=70) | st.text(st.characters(max_codepoint=0x7F), max_size=70))
@example("order-7\n")  # Python's "$" matches before a final newline
@example("order 7")
@example(" order-7")
@example("\u2003")  # blank in Unicode terms: refused as blank, like every text field
def test_an_accepted_collapse_key_is_a_valid_http_header_value(key: str) -> None:
    """The APNs connection sends headers without h2's checks (apns_connection.py): a collapse key intake accepts
    must pass them unchanged; one they refuse or would strip is refused naming the field, and so is one with a
    control character (not a field-vchar, RFC 9110 section 5.5), which h2 lets through."""
    try:
        parsed = parse_request(put(GOOD, ("options", "collapse_key"), key), APPS).options.collapse_key
    except RequestError as exc:
        assert exc.field == "options.collapse_key", exc
        parsed = None
    header = (b"apns-collapse-id", key.encode("utf-8", "surrogatepass"))
    block = [(b":method", b"POST"), (b":scheme", b"https"), (b":path", b"/3/device/a"), (b":authority", b"a"), header]
    flags = HeaderValidationFlags(is_client=True, is_trailer=False, is_response_header=False, is_push_promise=False)
    try:
        checked = list(validate_outbound_headers(normalize_outbound_headers(block, flags), flags))
        # Normalizing strips spaces at either end: a key it changes is one we would send malformed.
        valid = checked[-1] == header and encodable(key)
    except ProtocolError:
        valid = False
    if parsed is not None:
        assert parsed == key and valid, (key, valid)
    # RFC 9110's field-vchar (visible ASCII, obs-text) with spaces inside only: taken as it is.
    if key.strip() and key.strip(" ") == key and len(key.encode("utf-8", "surrogatepass")) <= 64 and encodable(key):
        assert parsed == key or any(ord(c) < 0x20 or ord(c) == 0x7F for c in key), key


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    st.binary(max_size=300)
    | st.builds(lambda raw: orjson.dumps(raw), PORTABLE)
    | st.builds(lambda raw, cut: orjson.dumps(raw)[:cut], mutated_requests(PORTABLE), st.integers(0, 200))
    | st.sampled_from(
        [
            b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"[" * 5000 + b"]" * 5000,
            b'{"id": "\\ud800"}', b'{"id": "\xed\xa0\x80"}', b"\xef\xbb\xbf{}", b"18446744073709551616",
            b'{"a":1,"a":2}', b"\x00", b"",
        ]
    )
    | st.none()
)
def test_kafka_decode_never_raises_on_arbitrary_bytes(value: bytes | None) -> None:
    outcome = decode(value, 64 * 1024, APPS)
    assert isinstance(outcome, Accepted | Rejection)
    if isinstance(outcome, Rejection):
        assert outcome.reason in ("invalid_json", "invalid_request", "too_large")


@settings(max_examples=60, deadline=None, derandomize=True)
@given(SEND_AT, st.booleans(), st.sampled_from([None, (22 * 60, 8 * 60), (0, 1), (23 * 60 + 59, 0)]))
@example("2099-12-31T23:59:59.999999", True, (22 * 60, 8 * 60))
@example("2000-01-01T00:00:00", True, (22 * 60, 8 * 60))
@example("2000-01-01T00:00:00+23:59", False, None)
def test_any_accepted_send_at_keeps_time_arithmetic_in_range(send_at: str, local: bool, quiet: Any) -> None:
    """initial_due_at and the local-time waves in every IANA zone never overflow for an accepted send_at."""
    request = only_contract_errors(put(GOOD, ("options",), {"send_at": send_at, "local_time": local}))
    if request is None:
        return
    wall = request.options.send_at
    due = initial_due_at(request.options, 1_800_000_000.0)
    assert math.isfinite(due)
    if local:
        for now in (due - 1.0, due + 30 * 3600.0):
            assert next_wave_at(wall, set()) is not None
            ready_zones(wall, True, quiet, now, set())
            next_ready_at(wall, True, quiet, now, set())
    assert len(all_timezones()) > 300


def test_send_at_strategy_reaches_the_extremes() -> None:
    """The extremes the strategy is meant to reach exist and are refused (not an overflow)."""
    for value in (
        datetime(9999, 12, 31, 23, 59, tzinfo=timezone(-timedelta(hours=23, minutes=59))).isoformat(),
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=23, minutes=59))).isoformat(),
        datetime(2100, 1, 1, tzinfo=UTC).isoformat(),
    ):
        assert only_contract_errors(put(GOOD, ("options",), {"send_at": value})) is None


# -------------------------------------------------------------------------------------------- other parsers

DEVICE = {"app": "demo", "token": "ab" * 32, "platform": "ios", "locale": "fr-FR", "timezone": "Europe/Paris"}
DEVICE_FIELDS = ["app", "token", "platform", "user_id", "tags", "locale", "timezone", "app_version", "opt_out"]


@FAST
@given(
    JSON_VALUES
    | st.builds(lambda key, value: {**DEVICE, key: value}, st.sampled_from([*DEVICE_FIELDS, "x"]), JSON_VALUES)
    | st.dictionaries(st.sampled_from(DEVICE_FIELDS), JSON_VALUES)
)
@example({**DEVICE, "": 1})  # named as field ""
def test_device_registration_raises_only_request_error(body: Any) -> None:
    try:
        parse_device(body, APPS)
    except RequestError as exc:
        assert exc.field


CAMPAIGN = {
    "id": "bf", "name": "Black Friday", "app": "demo", "audience": {"segment": {"tags_any": ["fr"]}},
    "message": {"title": "Sale"}, "schedule": {"at": "2026-11-27T09:00:00", "local_time": True},
    "quiet_hours": {"start": "22:00", "end": "08:00"}, "throttle_per_second": 500,
}
CAMPAIGN_PATHS = [
    ("id",), ("name",), ("app",), ("audience",), ("audience", "segment"), ("audience", "users"), ("message",),
    ("message", "title"), ("message", "localized"), ("options",), ("options", "ttl_seconds"), ("schedule",),
    ("schedule", "at"), ("schedule", "local_time"), ("quiet_hours",), ("quiet_hours", "start"),
    ("quiet_hours", "end"), ("throttle_per_second",), ("unknown",),
]


@FAST
@given(
    JSON_VALUES
    | st.builds(lambda path, value: put(CAMPAIGN, path, value), st.sampled_from(CAMPAIGN_PATHS), JSON_VALUES)
    | st.builds(lambda at: put(CAMPAIGN, ("schedule", "at"), at), SEND_AT)
    | st.builds(lambda hhmm: put(CAMPAIGN, ("quiet_hours", "start"), hhmm), ANY_TEXT)
)
@example({**CAMPAIGN, "": 1})  # named as field ""
@example(put(CAMPAIGN, ("options", ""), 1))
def test_campaign_bodies_raise_only_request_error(body: Any) -> None:
    try:
        parse_campaign(body, APPS)
    except RequestError as exc:
        assert exc.field


CSV_HEADER = "app,token,platform,user_id,tags,locale,timezone\n"


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    st.sampled_from(["csv", "jsonl"]),
    st.binary(max_size=400)
    | st.builds(lambda text: (CSV_HEADER + text).encode("utf-8", "surrogatepass"), ANY_TEXT)
    | st.builds(lambda rows: b"\n".join(orjson.dumps(r) for r in rows), st.lists(PORTABLE, max_size=4))
    | st.sampled_from([b"[" * 3000 + b"]" * 3000, CSV_HEADER.encode() + b"demo," + b"x" * 140_000, b"\xff\xfe\n"]),
)
@example("jsonl", b"\x80\n")  # UnicodeDecodeError ended the import
@example("csv", CSV_HEADER.encode() + b"demo,\x80\n")
@example("jsonl", b"[" * 3000 + b"]" * 3000)  # RecursionError from json.loads
@example("jsonl", b'{"app": "demo", "token": "\\ud800abcdefgh", "platform": "ios"}')  # BSON could not store it
@example("csv", CSV_HEADER.encode() + b"demo," + b"x" * 140_000)  # csv.Error: field larger than field limit
def test_devices_import_rows_are_records_or_row_errors(fmt: str, content: bytes) -> None:
    """read_device_rows never raises for file content; each row then fails only with RequestError."""
    fd, path = tempfile.mkstemp(suffix=f".{fmt}")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(content)
        for number, row in read_device_rows(path, fmt):
            assert number >= 1
            if isinstance(row, UnreadableRow):
                assert row.field and row.reason
                continue
            try:
                parse_device(row, APPS)
            except RequestError as exc:
                assert exc.field
    finally:
        os.unlink(path)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    st.none()
    | ANY_TEXT
    | st.builds(str, INTS | FLOATS)
    | st.sampled_from(
        ["nan", "inf", "-inf", "1e400", "Wed, 21 Oct 2015 07:28:00 GMT", "Fri, 31 Dec 9999 23:59:59 -2359",
         "Mon, 01 Jan 0001 00:00:00 +2359", "Sun, 06 Nov 1994 08:49:37 +9999"]
    )
)
@example("inf")  # an endless delay
def test_retry_after_is_a_finite_delay_or_none(value: str | None) -> None:
    delay = parse_retry_after(value)
    assert delay is None or (math.isfinite(delay) and delay >= 0)


BODIES = (
    st.binary(max_size=200)
    | st.builds(lambda raw: orjson.dumps(raw), PORTABLE)
    | st.builds(lambda raw: orjson.dumps({"error": raw}), PORTABLE)
    | st.builds(lambda raw: orjson.dumps({"reason": raw}), PORTABLE)
    | st.builds(
        lambda details: orjson.dumps({"error": {"code": 400, "status": "INVALID_ARGUMENT", "details": details}}),
        PORTABLE,
    )
    | st.builds(
        lambda violations: orjson.dumps(
            {"error": {"status": "INVALID_ARGUMENT", "message": "x", "details": [
                {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": violations}]}}
        ),
        PORTABLE,
    )
    | st.just(b"[" * 5000 + b"]" * 5000)
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.integers(100, 599) | INTS, BODIES)
@example(400, b"[" * 5000 + b"]" * 5000)  # RecursionError
@example(410, b'{"reason": "Unregistered", "timestamp": 1' + b"0" * 400 + b"}")  # int too large for a float
def test_apns_error_details_never_raise(status: int, body: bytes) -> None:
    reason, invalid_since = apns._error_details(status, body)
    assert isinstance(reason, str) and reason
    assert invalid_since is None or math.isfinite(invalid_since)
    apns.classify(status, reason)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    st.integers(100, 599),
    BODIES,
    st.dictionaries(st.sampled_from(["retry-after", "content-type", "x"]), ANY_TEXT.map(lambda t: t.encode(
        "utf-8", "replace").decode("latin-1")), max_size=2),
)
@example(400, b'{"error": {"details": null}}', {})  # firebase-admin: 'NoneType' object is not iterable
@example(400, b'{"error": {"details": [null]}}', {})
@example(400, b'{"error": "quota"}', {})  # firebase-admin: 'str' object has no attribute 'get'
@example(502, b"\x80<html>", {})  # not UTF-8: UnicodeDecodeError
@example(429, b"{}", {"retry-after": "\xe9"})  # httpx refuses a non-ASCII header value
@example(400, b"[" * 5000 + b"]" * 5000, {})
@example(
    400,
    b'{"error": {"details": [{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": 5}]}}',
    {},
)
def test_fcm_error_classification_never_raises(status: int, body: bytes, headers: dict[str, str]) -> None:
    result = fcm.classify_error(fcm.firebase_error(fcm.HttpReply(status, headers, body), "https://fcm.test/v1"))
    assert result.outcome is not None
    assert result.retry_after is None or (math.isfinite(result.retry_after) and result.retry_after >= 0)


@pytest.mark.parametrize("body", [b"", b"null", b"[]", b'{"error": "x"}', b'{"error": {"details": 5}}'])
def test_fcm_odd_error_bodies_are_rejected_or_retried(body: bytes) -> None:
    result = fcm.classify_error(fcm.firebase_error(fcm.HttpReply(400, {}, body), "https://fcm.test/v1"))
    assert result.outcome.value in ("rejected", "invalid_token")


# ------------------------------------------------------------------------------------------ receipts

NOW = datetime(2026, 12, 4, 21, 30, tzinfo=UTC).timestamp()
RECEIPT = {"notification_id": "order-1", "token": "ab" * 32, "event": "opened", "at": "2026-12-04T21:29:00Z"}
RECEIPT_KEYS = ["notification_id", "token", "user_id", "event", "at", "x", ""]


def receipt_batch(items: list[Any]) -> dict[str, Any]:
    return {"app": "demo", "receipts": items}


@FAST
@given(
    JSON_VALUES
    | st.builds(lambda value: {"app": "demo", "receipts": value}, JSON_VALUES)
    | st.builds(lambda key, value: receipt_batch([RECEIPT, {**RECEIPT, key: value}]),
                st.sampled_from(RECEIPT_KEYS), JSON_VALUES)
    | st.builds(lambda items: receipt_batch(items), st.lists(st.dictionaries(st.sampled_from(RECEIPT_KEYS),
                                                                             JSON_VALUES), max_size=4))
    | st.builds(lambda at: receipt_batch([{**RECEIPT, "at": at}]), SEND_AT)
)
@example(receipt_batch([{**RECEIPT, "at": "9999-12-31T23:59:59-23:59"}]))
@example(receipt_batch([{**RECEIPT, "at": "0001-01-01T00:00:00+23:59"}]))
@example(receipt_batch([RECEIPT] * 501))
def test_receipt_batches_raise_only_request_error_naming_the_item(body: Any) -> None:
    """Any input is a batch or a RequestError; an error inside an item names that item (receipts[1].event), and
    an accepted `at` is a finite time no further ahead than the allowed clock skew."""
    try:
        batch = parse_receipts(body, APPS, NOW)
    except RequestError as exc:
        assert exc.field
        items = body.get("receipts") if isinstance(body, dict) else None
        if isinstance(items, list) and 0 < len(items) <= 500 and body == {"app": "demo", "receipts": items}:
            assert exc.field.startswith("receipts["), exc.field
        return
    for receipt in batch.receipts:
        assert math.isfinite(receipt.at) and receipt.at <= NOW + CLOCK_SKEW_SECONDS
        assert (receipt.token is None) != (receipt.user_id is None)
