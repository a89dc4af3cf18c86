"""A stored notification read once into a `NotificationRecord`: typed fields, the request parsed at read time,
and an unreadable request kept as the reason the runner fails it with (never raised at the read)."""

from __future__ import annotations

import math

import orjson

from pushsvc.dispatch.ranges import RANGE_MIN_RATE, may_cut, parts_for
from pushsvc.model import PushRequest, parse_request
from pushsvc.outcomes import OutcomeEvent
from pushsvc.scheduling.lanes import lane_for
from pushsvc.store.notifications import Claim, new_document
from pushsvc.store.records import UNREADABLE_DETAIL_CHARS, NotificationRecord, UnreadableRequest

RAW = {"id": "r1", "app": "demo", "target": {"segment": {"tags_any": ["news"]}}, "message": {"title": "t"}}


def stored(raw: dict = RAW, **fields: object) -> dict:
    """The document `raw` becomes (store.notifications.new_document), with `fields` as a later run left them."""
    request = parse_request(raw)
    return {**new_document(request, raw, "test", 100.0, 100.0, lane=lane_for(request)), **fields}


def test_a_new_document_reads_as_a_fresh_notification() -> None:
    record = NotificationRecord.from_document(stored())
    assert (record.id, record.app, record.request_id, record.state) == ("demo:r1", "demo", "r1", "accepted")
    assert record.request == parse_request(RAW)
    assert (record.lane, record.kind, record.due_at, record.dry_run) == ("fanout", None, 100.0, False)
    assert record.progress_seq == 0 and record.stalled_runs == 0 and record.cursor is None
    assert record.chunk_done == frozenset() and record.zones_done == frozenset() and record.wave_zones is None
    assert record.boundaries is None and record.ranges == 0 and record.bounds == (None, None)
    assert record.counts["targeted"] == 0 and record.finished_at == 0.0 and record.error is None


def test_progress_saved_by_earlier_runs_is_read_typed() -> None:
    doc = stored(
        progress_seq=3, stalled_runs=2, cursor={"token": "k"}, chunk_done=["a", "b"], wave_zones=["UTC"],
        zones_done=["Asia/Tokyo"], throttle_per_second=500, quiet_hours={"start": "22:00", "end": "08:00"},
        audience_estimate=1000, boundaries=["m"], counts={"targeted": 4, "delivered": 3, "delivered:ios": 3},
        kind="campaign", request_id="campaign:spring", dry_run=True,
    )
    record = NotificationRecord.from_document(doc)
    assert record.progress_seq == 3 and record.stalled_runs == 2 and record.cursor == {"token": "k"}
    assert record.chunk_done == frozenset({"a", "b"}) and record.wave_zones == ("UTC",)
    assert record.zones_done == frozenset({"Asia/Tokyo"}) and record.boundaries == ("m",)
    assert record.throttle_per_second == 500 and record.quiet_hours == {"start": "22:00", "end": "08:00"}
    assert record.audience_estimate == 1000 and record.kind == "campaign" and record.request_id == "campaign:spring"
    assert dict(record.counts) == {"targeted": 4, "delivered": 3, "delivered:ios": 3} and record.dry_run


def test_a_range_reads_its_parent_and_bounds() -> None:
    record = NotificationRecord.from_document(stored(kind="range", parent="demo:r1", bounds=["f", None]))
    assert record.parent == "demo:r1" and record.bounds == ("f", None)


def test_an_unreadable_request_is_kept_as_the_reason_not_raised() -> None:
    record = NotificationRecord.from_document(stored(request=orjson.dumps({**RAW, "target": {}}).decode()))
    assert isinstance(record.request, UnreadableRequest)
    assert record.request.detail.startswith("RequestError: ") and "target" in record.request.detail
    garbled = NotificationRecord.from_document(stored(request="{" + "x" * 1000))
    assert isinstance(garbled.request, UnreadableRequest)
    detail = garbled.request.detail
    assert detail.startswith("JSONDecodeError") and len(detail) <= UNREADABLE_DETAIL_CHARS


def test_a_request_given_is_not_parsed_again() -> None:
    """Intake's direct dispatch hands the request it has just validated (and stamped)."""
    request = parse_request(RAW)
    doc = stored(**Claim("t", "replica", 130.0).fields(), request="not parsed")
    record = NotificationRecord.from_document(doc, request)
    assert record.request is request and record.state == "dispatching"


def test_a_read_without_the_request_names_and_ends_the_notification() -> None:
    """The outcome sweep's projection: who it is and how it ended, which is all an outcome event needs."""
    pending = {"_id": "demo:r1", "app": "demo", "request_id": "r1", "state": "done", "counts": {"delivered": 1},
               "error": None, "finished_at": 1764000000.5}
    record = NotificationRecord.from_document(pending)
    assert isinstance(record.request, UnreadableRequest) and record.due_at == 0.0
    event = OutcomeEvent.of(record, record.state, record.counts, record.error, record.finished_at)
    assert (event.notification_id, event.request_id, event.app, event.finished_at) == (
        "demo:r1", "r1", "demo", 1764000000.5,
    )
    assert not event.dry_run
    dry = NotificationRecord.from_document({**pending, "counts": {"validated:ios": 1}})
    assert OutcomeEvent.of(dry, "done", dry.counts, None, 0.0).dry_run


def test_only_an_audience_not_begun_whole_may_be_cut_into_ranges() -> None:
    request = parse_request(RAW)
    assert isinstance(request, PushRequest)
    assert may_cut(NotificationRecord.from_document(stored()), request, 50_000)
    assert not may_cut(NotificationRecord.from_document(stored()), request, 0)
    for begun in ({"cursor": {"token": "k"}}, {"chunk_done": ["a"]}, {"zones_done": ["UTC"]},
                  {"wave_zones": []}, {"progress_seq": 1}, {"kind": "range"}):
        assert not may_cut(NotificationRecord.from_document(stored(**begun)), request, 50_000), begun
    tokens = {**RAW, "target": {"tokens": ["a" * 64]}}
    assert not may_cut(NotificationRecord.from_document(stored(tokens)), parse_request(tokens), 50_000)


def test_parts_follow_the_estimate_the_limit_and_the_throttle() -> None:
    assert parts_for(120_000, 50_000, 16, None) == 3
    assert parts_for(math.inf, 50_000, 16, None) == 16
    assert parts_for(10_000_000, 50_000, 16, None) == 16
    assert parts_for(120_000, 50_000, 16, 2 * RANGE_MIN_RATE) == 2
    assert parts_for(120_000, 50_000, 16, RANGE_MIN_RATE / 2) == 0  # under 2: run whole
