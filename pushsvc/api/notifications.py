"""Notifications over HTTP: the same contract as Kafka, idempotent by request id."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from pushsvc.api.auth import permit, require
from pushsvc.api.context import APP_PROVIDERS, INTAKE, KNOWN_APPS, NOTIFICATIONS
from pushsvc.api.errors import json_error
from pushsvc.api.validation import app_of, json_body
from pushsvc.ingest.intake import Rejection, validate
from pushsvc.scheduling.due import epoch_to_iso
from pushsvc.store.notifications import FINAL_KEYS, request_id_of, split_counts
from pushsvc.store.ranges import RangeStore

routes = web.RouteTableDef()


def counts_view(doc: dict) -> dict[str, int]:
    counts, _ = split_counts(doc.get("counts") or {})
    counts["pending"] = max(0, counts.get("targeted", 0) - sum(counts.get(k, 0) for k in FINAL_KEYS))
    return counts


def dry_run_view(doc: dict) -> dict[str, Any] | None:
    """A dry run's counts per device platform ({"ios": {"validated": 3, "rejected": 1}, ...}); None otherwise."""
    if not doc.get("dry_run"):
        return None
    _, by_platform = split_counts(doc.get("counts") or {})
    return {"by_platform": by_platform}


def notification_view(doc: dict) -> dict[str, Any]:
    counts = counts_view(doc)
    return {
        "id": request_id_of(doc),
        "app": doc["app"],
        "state": doc["state"],
        "source": doc.get("source"),
        "created_at": epoch_to_iso(doc["created_at"]),
        "due_at": epoch_to_iso(doc["due_at"]),
        "finished_at": epoch_to_iso(doc["finished_at"]) if doc.get("finished_at") else None,
        "error": doc.get("error"),
        "counts": counts,
        "dry_run": dry_run_view(doc),
    }


@routes.post("/v1/notifications")
@require("notify")
async def create_notification(request: web.Request) -> web.Response:
    """Record a request; repeating the same id returns the existing record with 200 instead of 201."""
    outcome = validate(await json_body(request), request.app[KNOWN_APPS], request.app[APP_PROVIDERS])
    if isinstance(outcome, Rejection):
        return json_error(400, outcome.reason, outcome.detail, outcome.field)
    permit(request, outcome.request.app)
    result = await request.app[INTAKE].record([outcome], source="api")
    if result.rejected:
        return json_error(400, "store_rejected", result.rejected[0][1])
    doc = result.documents.get(result.inserted[0]) if result.inserted else None
    if doc is None:  # recorded before: answer with it as it is now
        doc = await request.app[NOTIFICATIONS].find(outcome.request.app, outcome.request.id)
    assert doc is not None
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
