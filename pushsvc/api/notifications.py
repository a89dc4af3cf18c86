"""Notifications over HTTP: the same contract as Kafka, idempotent by request id."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from pushsvc.api.auth import permit, require
from pushsvc.api.context import APP_PROVIDERS, CLOCK, INTAKE, KNOWN_APPS, NOTIFICATIONS
from pushsvc.api.errors import json_error
from pushsvc.api.traced import traced_intake
from pushsvc.api.validation import app_of, json_body
from pushsvc.ingest.intake import Rejection, key, validate
from pushsvc.model import NotificationState
from pushsvc.scheduling.due import epoch_to_iso
from pushsvc.store.campaigns import StateChanges
from pushsvc.store.counts import FINAL_KEYS, split_counts
from pushsvc.store.device_documents import epoch_of, stored_bool
from pushsvc.store.funnel import funnel_view
from pushsvc.store.notifications import LANE_BATCH, request_id_of
from pushsvc.store.ranges import RANGE_KIND, RangeStore
from pushsvc.tracing import TraceContext

routes = web.RouteTableDef()


@dataclass(frozen=True)
class NotificationStatus:
    """What the API shows of a notification (and of the notification a campaign is): read once from the stored
    document by `read_status`, so every answer has the documented types whatever the database gave back."""

    id: str
    app: str
    state: str
    source: str | None
    created_at: float
    due_at: float
    finished_at: float | None
    error: str | None
    # Every COUNT_KEYS counter, 0 where the document has none (recorded before the counter existed).
    counts: Mapping[str, int]
    # A dry run's final outcomes per device platform ({"ios": {"validated": 3}}); None for a real send.
    by_platform: Mapping[str, Mapping[str, int]] | None
    # A campaign with variants or a control group: the final outcomes and `targeted` per variant ("control"
    # for the control group); empty otherwise.
    by_variant: Mapping[str, Mapping[str, int]]


def read_status(doc: Mapping[str, Any]) -> NotificationStatus:
    """The status of a stored notification (a split campaign's: with its ranges' counts summed in)."""
    split = split_counts(doc.get("counts") or {})
    finished_at = doc.get("finished_at")
    return NotificationStatus(
        id=request_id_of(doc),
        app=str(doc["app"]),
        state=str(doc["state"]),
        source=doc.get("source"),
        created_at=epoch_of(doc["created_at"]),
        due_at=epoch_of(doc["due_at"]),
        finished_at=epoch_of(finished_at) if finished_at else None,
        error=doc.get("error"),
        counts=split.plain,
        by_platform=split.by_platform if stored_bool(doc.get("dry_run"), default=False) else None,
        by_variant=split.by_variant,
    )


def counts_view(status: NotificationStatus) -> dict[str, int]:
    """Every counter, plus `pending`: targeted devices without a final outcome yet."""
    counts = dict(status.counts)
    counts["pending"] = max(0, counts["targeted"] - sum(counts[k] for k in FINAL_KEYS))
    return counts


def variant_counts_view(status: NotificationStatus) -> dict[str, dict[str, int]]:
    """A campaign's counts per variant ("control" for the control group): `targeted` and every final outcome,
    0 where none, and `pending`."""
    view = {}
    for variant, counts in sorted(status.by_variant.items()):
        full = {key: int(counts.get(key, 0)) for key in ("targeted", *FINAL_KEYS)}
        full["pending"] = max(0, full["targeted"] - sum(full[k] for k in FINAL_KEYS))
        view[variant] = full
    return view


def dry_run_view(status: NotificationStatus) -> dict[str, Any] | None:
    """A dry run's counts per device platform ({"by_platform": {"ios": {"validated": 3}}}); None otherwise."""
    if status.by_platform is None:
        return None
    return {"by_platform": {platform: dict(counts) for platform, counts in status.by_platform.items()}}


def notification_view(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A notification as the API shows it (the `Notification` schema of /openapi.json)."""
    status = read_status(doc)
    return {
        "id": status.id,
        "app": status.app,
        "state": status.state,
        "source": status.source,
        "created_at": epoch_to_iso(status.created_at),
        "due_at": epoch_to_iso(status.due_at),
        "finished_at": None if status.finished_at is None else epoch_to_iso(status.finished_at),
        "error": status.error,
        "counts": counts_view(status),
        "dry_run": dry_run_view(status),
        # targeted -> sent -> delivered -> received -> opened, from the counts and the receipts (store/funnel.py).
        "funnel": funnel_view(status.counts, doc),
    }


@routes.post("/v1/notifications")
@require("notify")
@traced_intake
async def create_notification(request: web.Request, trace: TraceContext | None) -> web.Response:
    """Record a request; repeating the same id returns the existing record with 200 instead of 201."""
    outcome = validate(await json_body(request), request.app[KNOWN_APPS], request.app[APP_PROVIDERS])
    if isinstance(outcome, Rejection):
        return json_error(400, outcome.reason, outcome.detail, outcome.field)
    outcome = replace(outcome, trace=trace)
    permit(request, outcome.request.app)
    result = await request.app[INTAKE].record([outcome], source="api")
    if result.rejected:
        return json_error(400, "store_rejected", result.rejected[0][1])
    if result.conflicts:  # the id was used before with another body: the first request stands
        conflict = result.conflicts[0][1]
        return json_error(409, "conflict", conflict.detail, conflict.field)
    notification = key(outcome)
    doc = result.documents.get(notification) or result.existing.get(notification)
    if doc is None:  # a repeat whose record retention deleted between intake's insert and its read
        message = f"notification {outcome.request.id[:200]!r} was recorded before and its record expired: use a new id"
        return json_error(409, "conflict", message, "id")
    return web.json_response(notification_view(doc), status=201 if result.inserted else 200)


@routes.get("/v1/notifications/{notification_id}")
@require("read")
async def get_notification(request: web.Request) -> web.Response:
    """A notification by its request id within `?app=` (optional when the key acts for one app only)."""
    app = app_of(request)
    notifications = request.app[NOTIFICATIONS]
    doc = await notifications.find(app, request.match_info["notification_id"])
    if doc is None:
        return json_error(404, "not_found", "no notification with that id")
    # A campaign split into ranges counts in its ranges until it is settled.
    return web.json_response(notification_view(await RangeStore(notifications).live_counts(doc)))


@routes.post("/v1/notifications/{notification_id}/cancel")
@require("campaigns")
async def cancel_notification(request: web.Request) -> web.Response:
    """Cancel a notification of `?app=` (the campaigns' cancel, StateChanges.cancel): one not started is never
    sent, a fan-out in flight stops after its chunk; 409 naming the state when it is over (or a few devices'
    notification already on its way). Scoped like the campaign actions: an operator's key, not a producer's."""
    app = app_of(request)
    notifications = request.app[NOTIFICATIONS]
    doc = await notifications.find(app, request.match_info["notification_id"])
    # A range is a part of a split notification, cancelled only with it (through its parent's id).
    if doc is None or doc.get("kind") == RANGE_KIND:
        return json_error(404, "not_found", "no notification with that id")
    changes = StateChanges(notifications)
    after = await changes.cancel(doc, request.app[CLOCK]())
    if after is None:
        current = await notifications.get(doc["_id"])
        if current is None:
            return json_error(404, "not_found", "no notification with that id")
        return json_error(409, "invalid_state", _cannot_cancel(current))
    return web.json_response(notification_view(after))


def _cannot_cancel(doc: dict) -> str:
    """Why a cancel was refused, naming the state."""
    state = doc["state"]
    if state == str(NotificationState.DISPATCHING) and doc.get("lane") == LANE_BATCH:
        # Sent as one chunk (a few tokens or users) by the replica holding its lease: no chunk boundary to stop at.
        return (
            "cannot cancel a notification that is dispatching: a few devices' notification is sent as one chunk, "
            "and a replica holds it now (once its lease runs out unfinished, it can be cancelled)"
        )
    return f"cannot cancel a notification that is {state}"
