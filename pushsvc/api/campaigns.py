"""Campaigns for marketers: audience, per-locale message, schedule (at / local time), quiet hours, throttle.

A campaign is stored as a notification (request id "campaign:<id>" in its app, the Kafka request contract) plus campaign
fields, so the scheduler, leases, runner and counters are the notification machinery, not a second pipeline.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection, Mapping
from typing import Any

import orjson
from aiohttp import web

from pushsvc.api.auth import permit, permitted_apps, require
from pushsvc.api.context import APP_PROVIDERS, CAMPAIGNS, CLOCK, DEVICES, KNOWN_APPS, NOTIFICATIONS, PREVIEW, WAKE
from pushsvc.api.errors import json_error
from pushsvc.api.notifications import counts_view, dry_run_view
from pushsvc.api.validation import app_of, field_name, json_body, known_app
from pushsvc.dispatch.progress import progress_ratio
from pushsvc.ingest.payload_limits import check_payload_size
from pushsvc.model import PushRequest, RequestError, parse_request, stamp_live_activity
from pushsvc.scheduling.due import epoch_to_iso, initial_due_at, parse_hhmm
from pushsvc.store.campaigns import CAMPAIGN_PREFIX, KIND, STATUSES, campaign_request_id
from pushsvc.store.devices import audience_filter
from pushsvc.store.notifications import LANE_FANOUT, new_document, request_id_of

routes = web.RouteTableDef()

CAMPAIGN_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
CAMPAIGN_FIELDS = {
    "id",
    "name",
    "app",
    "audience",
    "message",
    "options",
    "schedule",
    "quiet_hours",
    "throttle_per_second",
}
OPTION_FIELDS = {"priority", "ttl_seconds", "collapse_key", "push_type", "dry_run"}
MAX_THROTTLE = 100_000


def parse_campaign(
    body: Any, known_apps: frozenset[str], providers: Mapping[str, Collection[str]] | None = None
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Validate a campaign body; returns (campaign id, the notification request, the campaign fields)."""
    if not isinstance(body, dict):
        raise RequestError("body", "must be a JSON object")
    unknown = sorted(set(body) - CAMPAIGN_FIELDS)
    if unknown:
        raise RequestError(field_name(unknown[0]), f"unknown field (allowed: {', '.join(sorted(CAMPAIGN_FIELDS))})")
    campaign_id = body.get("id", uuid.uuid4().hex)
    if not isinstance(campaign_id, str) or not CAMPAIGN_ID.match(campaign_id):
        raise RequestError("id", "must be 1-64 characters of letters, digits, '.', '_' or '-'")
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise RequestError("name", "required non-empty string of at most 200 characters")
    audience = body.get("audience")
    if not isinstance(audience, dict) or set(audience) - {"users", "segment"} or len(audience) != 1:
        raise RequestError("audience", "must be an object with exactly one of users, segment")
    options = body.get("options", {})
    if not isinstance(options, dict):
        raise RequestError("options", "must be an object")
    extra = sorted(set(options) - OPTION_FIELDS)
    if extra:
        where = f"options.{field_name(extra[0])}" if extra[0] else "options"
        raise RequestError(where, "unknown field (use schedule for timing)")
    options = dict(options)
    schedule = body.get("schedule")
    if schedule is not None:
        if not isinstance(schedule, dict) or set(schedule) - {"at", "local_time"}:
            raise RequestError("schedule", "must be an object with at and optional local_time")
        if "at" not in schedule:
            raise RequestError("schedule.at", "required")
        options["send_at"] = schedule["at"]
        options["local_time"] = schedule.get("local_time", False)
    fields: dict[str, Any] = {"kind": KIND, "name": name}
    quiet = body.get("quiet_hours")
    if quiet is not None:
        if not isinstance(quiet, dict) or set(quiet) != {"start", "end"}:
            raise RequestError("quiet_hours", "must be an object with start and end (HH:MM, device-local)")
        for key in ("start", "end"):
            try:
                parse_hhmm(quiet[key])
            except (ValueError, TypeError) as exc:
                raise RequestError(f"quiet_hours.{key}", "must be HH:MM (00:00-23:59)") from exc
        if quiet["start"] == quiet["end"]:
            raise RequestError("quiet_hours.end", "must differ from start")
        fields["quiet_hours"] = {"start": quiet["start"], "end": quiet["end"]}
    throttle = body.get("throttle_per_second")
    if throttle is not None:
        if not isinstance(throttle, int) or isinstance(throttle, bool) or not 1 <= throttle <= MAX_THROTTLE:
            raise RequestError("throttle_per_second", f"must be an integer between 1 and {MAX_THROTTLE}")
        fields["throttle_per_second"] = throttle
    raw = {
        "id": campaign_request_id(campaign_id),
        "app": body.get("app"),
        "target": audience,
        "message": body.get("message"),
        "options": options,
    }
    try:
        parsed = parse_request(raw, known_apps)
        check_payload_size(parsed, None if providers is None else providers.get(parsed.app, ()))
    except RequestError as exc:
        field = exc.field or "body"
        if field.startswith("target"):
            field = "audience" + field.removeprefix("target")
        elif field == "options.send_at":
            field = "schedule.at"
        elif field == "options.local_time":
            field = "schedule.local_time"
        raise RequestError(field, exc.reason) from exc
    return campaign_id, raw, fields


def campaign_view(doc: dict) -> dict[str, Any]:
    request = orjson.loads(doc["request"])
    options = request.get("options", {})
    schedule = (
        {"at": options["send_at"], "local_time": bool(options.get("local_time", False))}
        if options.get("send_at")
        else None
    )
    state = doc["state"]
    return {
        "id": request_id_of(doc).removeprefix(CAMPAIGN_PREFIX),
        "name": doc.get("name"),
        "app": doc["app"],
        "status": state,
        "audience": request["target"],
        "message": request["message"],
        "options": {k: v for k, v in options.items() if k in OPTION_FIELDS},
        "schedule": schedule,
        "quiet_hours": doc.get("quiet_hours"),
        "throttle_per_second": doc.get("throttle_per_second"),
        "created_at": epoch_to_iso(doc["created_at"]),
        "next_run_at": epoch_to_iso(doc["due_at"]),
        "finished_at": epoch_to_iso(doc["finished_at"]) if doc.get("finished_at") else None,
        "counts": counts_view(doc),
        "dry_run": dry_run_view(doc),
        "progress": {
            "audience_estimate": int(doc.get("audience_estimate") or 0),
            "ratio": 1.0 if state == "done" else round(progress_ratio(doc), 4),
        },
    }


def _campaign_id(request: web.Request) -> str:
    campaign_id = request.match_info["campaign_id"]
    if not CAMPAIGN_ID.match(campaign_id):
        raise RequestError("campaign_id", "must be 1-64 characters of letters, digits, '.', '_' or '-'")
    return campaign_id


@routes.post("/v1/campaigns")
@require("campaigns")
async def create_campaign(request: web.Request) -> web.Response:
    """Create a campaign; repeating an id returns the existing campaign with 200."""
    campaign_id, raw, fields = parse_campaign(
        await json_body(request), request.app[KNOWN_APPS], request.app[APP_PROVIDERS]
    )
    permit(request, raw["app"])
    parsed = parse_request(raw)
    existing = await request.app[CAMPAIGNS].get(raw["app"], campaign_id)
    if existing is not None:
        # The campaign as it was created (ids are idempotency keys), not the body sent again.
        stored_request = parse_request(orjson.loads(existing["request"]))
        return web.json_response(_created_view(request, existing, stored_request), status=200)
    now = request.app[CLOCK]()
    parsed, raw = stamp_live_activity(parsed, raw, now)
    estimate = await request.app[DEVICES].count(
        # Exact (named kinds, the activity): a count is one query, and marketers read it as the audience.
        audience_filter(
            parsed.app, parsed.target, parsed.message.category, None, parsed.route, activity_id=parsed.activity_id
        )
    )
    doc = new_document(parsed, raw, "campaign", initial_due_at(parsed.options, now), now)
    # Campaigns keep per-chunk progress (pause, resume, throttle, progress gauge): the fan-out lane.
    doc.update(fields, audience_estimate=estimate, lane=LANE_FANOUT)
    result = await request.app[NOTIFICATIONS].record([doc])
    if result.rejected:
        return json_error(400, "store_rejected", result.rejected[doc["_id"]])
    stored = await request.app[CAMPAIGNS].get(raw["app"], campaign_id)
    if stored is None:
        return json_error(409, "conflict", "a notification with this id exists and is not a campaign", "id")
    if result.inserted:
        request.app[WAKE](doc["due_at"] if doc["due_at"] > now else None)
    return web.json_response(_created_view(request, stored, parsed), status=201 if result.inserted else 200)


def _created_view(request: web.Request, doc: dict, parsed: PushRequest) -> dict[str, Any]:
    """The campaign as created; a dry run adds what a marketer checks first: how many devices it reaches (the
    active devices whose token takes it, opted-out devices excluded)
    and the payload each platform would get, per locale."""
    view = campaign_view(doc)
    if parsed.options.dry_run:
        view["preview"] = {
            "audience": int(doc.get("audience_estimate") or 0),
            "payloads": request.app[PREVIEW](parsed),
        }
    return view


@routes.get("/v1/campaigns")
@require("read")
async def list_campaigns(request: web.Request) -> web.Response:
    """Newest first, in `?app=` or in every app the key may act for."""
    app = request.query.get("app")
    apps = {permit(request, known_app(request, app))} if app is not None else permitted_apps(request)
    status = request.query.get("status")
    if status is not None and status not in STATUSES:
        raise RequestError("status", f"must be one of {', '.join(STATUSES)}")
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError as exc:
        raise RequestError("limit", "must be an integer between 1 and 1000") from exc
    if not 1 <= limit <= 1000:
        raise RequestError("limit", "must be an integer between 1 and 1000")
    docs = await request.app[CAMPAIGNS].list(apps, status, limit)
    return web.json_response({"campaigns": [campaign_view(d) for d in docs]})


@routes.get("/v1/campaigns/{campaign_id}")
@require("read")
async def get_campaign(request: web.Request) -> web.Response:
    doc = await request.app[CAMPAIGNS].get(app_of(request), _campaign_id(request))
    if doc is None:
        return json_error(404, "not_found", "no campaign with that id")
    return web.json_response(campaign_view(doc))


async def _transition(request: web.Request, action: str) -> web.Response:
    campaigns = request.app[CAMPAIGNS]
    app, campaign_id = app_of(request), _campaign_id(request)
    doc = await getattr(campaigns, action)(app, campaign_id, request.app[CLOCK]())
    if doc is None:
        current = await campaigns.get(app, campaign_id)
        if current is None:
            return json_error(404, "not_found", "no campaign with that id")
        return json_error(409, "invalid_state", f"cannot {action} a campaign that is {current['state']}")
    if action == "resume":
        request.app[WAKE](request.app[CLOCK]())  # scheduled again: a pass looking at every state
    return web.json_response(campaign_view(doc))


@routes.post("/v1/campaigns/{campaign_id}/pause")
@require("campaigns")
async def pause_campaign(request: web.Request) -> web.Response:
    """Stop after the chunk in flight; the cursor is kept for resume."""
    return await _transition(request, "pause")


@routes.post("/v1/campaigns/{campaign_id}/resume")
@require("campaigns")
async def resume_campaign(request: web.Request) -> web.Response:
    return await _transition(request, "resume")


@routes.post("/v1/campaigns/{campaign_id}/cancel")
@require("campaigns")
async def cancel_campaign(request: web.Request) -> web.Response:
    """Final: nothing more is sent after the chunk in flight."""
    return await _transition(request, "cancel")
