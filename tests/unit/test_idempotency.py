"""Request ids as idempotency keys: the canonical hash, and the first field a repeat with another body changes."""

from __future__ import annotations

from typing import Any

from pushsvc.ingest.idempotency import WHOLE_BODY, differing_field, first_difference, request_hash


def alert(**message: Any) -> dict[str, Any]:
    return {"id": "order-1", "app": "demo", "target": {"users": ["u1", "u2"]},
            "message": {"title": "Hi", "body": "there", **message}}


def test_key_order_and_whitespace_do_not_matter_json_types_do() -> None:
    reordered = {"message": {"body": "there", "title": "Hi"}, "target": {"users": ["u1", "u2"]},
                 "app": "demo", "id": "order-1"}
    assert request_hash(alert()) == request_hash(reordered)
    assert request_hash(alert()).startswith("v1:")
    # FCM would receive "42" and "42.0", APNs 42 and true: not the same request.
    assert request_hash(alert(data={"n": 42})) != request_hash(alert(data={"n": 42.0}))
    assert request_hash(alert(data={"n": 1})) != request_hash(alert(data={"n": True}))


def test_a_repeat_is_no_difference_with_or_without_a_stored_hash() -> None:
    assert differing_field(alert(), request_hash(alert()), alert()) is None
    assert differing_field(alert(), None, alert()) is None  # recorded before hashes existed
    # A hash of a canonical form this version does not know is not trusted: the stored request decides.
    assert differing_field(alert(), "v0:whatever", alert()) is None


def test_the_first_field_that_differs_is_named_as_a_dotted_path() -> None:
    assert differing_field(alert(), request_hash(alert()), alert(title="Hello")) == "message.title"
    assert differing_field(alert(), None, alert(title="Hello")) == "message.title"
    assert differing_field(alert(), None, alert(badge=1)) == "message.badge"  # only the new one has it
    changed = {**alert(), "target": {"users": ["u1", "u3"]}}
    assert differing_field(alert(), None, changed) == "target.users[1]"
    longer = {**alert(), "target": {"users": ["u1", "u2", "u4"]}}
    assert differing_field(alert(), None, longer) == "target.users[2]"
    # In the order the caller wrote the fields: the target before the message here.
    both = {**alert(title="Hello"), "target": {"tokens": ["t"]}}
    assert differing_field(alert(), None, both) == "target.tokens"
    # A field only the recorded request had.
    assert first_difference({**alert(), "options": {"ttl_seconds": 60}}, alert()) == "options"
    assert first_difference(alert(), alert()) is None


def live_activity(**activity: Any) -> dict[str, Any]:
    return {"id": "la-1", "app": "demo", "target": {"tokens": ["t"]}, "options": {"push_type": "liveactivity"},
            "message": {"live_activity": {"event": "update", "content_state": {"eta": 5}, **activity}}}


def test_what_intake_stamps_is_no_difference_of_the_callers() -> None:
    sent = live_activity()
    stored = live_activity(timestamp=1764000000)  # intake stamped the moment it was accepted
    assert differing_field(stored, request_hash(sent), sent) is None
    assert differing_field(stored, None, sent) is None  # an old document: compared by its stored request
    other = live_activity(content_state={"eta": 7})
    assert differing_field(stored, request_hash(sent), other) == "message.live_activity.content_state.eta"
    assert differing_field(stored, None, other) == "message.live_activity.content_state.eta"
    # The caller sent a timestamp once and not the other time: that is what differs.
    first = live_activity(timestamp=1764000000)
    assert differing_field(first, request_hash(first), sent) == "message.live_activity.timestamp"
    assert differing_field(first, request_hash(first), live_activity(timestamp=1)) == "message.live_activity.timestamp"


def test_hashes_differing_with_no_field_left_name_the_body() -> None:
    """The stored request was rewritten since (a GDPR erasure scrubs it; the hash keeps the original)."""
    assert differing_field(alert(), request_hash(alert(title="x")), alert()) == WHOLE_BODY
