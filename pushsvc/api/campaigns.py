"""Campaigns for marketers: audience, per-locale message, schedule (at / local time), quiet hours, throttle.

A campaign is stored as a notification (request id "campaign:<id>" in its app, the Kafka request contract) plus campaign
fields, so the scheduler, leases, runner and counters are the notification machinery, not a second pipeline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson
from aiohttp import web

from pushsvc.api.auth import permit, permitted_apps, require
from pushsvc.api.context import (
    APP_PROVIDERS,
    CAMPAIGNS,
    CLOCK,
    DEVICES,
    INTAKE,
    KNOWN_APPS,
    NOTIFICATIONS,
    PREVIEW,
    WAKE,
)
from pushsvc.api.errors import json_error
from pushsvc.api.notifications import NotificationStatus, counts_view, dry_run_view, read_status, variant_counts_view
from pushsvc.api.traced import traced_intake
from pushsvc.api.validation import app_of, json_body, known_app
from pushsvc.dispatch.preview import audience_breakdown
from pushsvc.dispatch.progress import progress_ratio
from pushsvc.ingest.campaigns import (
    OPTION_FIELDS,
    campaign_intake,
    parse_campaign,
    parse_campaign_id,
    schedule_fields,
)
from pushsvc.ingest.intake import key
from pushsvc.model import PushRequest, RequestError
from pushsvc.model.variants import split_of
from pushsvc.scheduling.due import epoch_to_iso
from pushsvc.store.campaigns import CAMPAIGN_PREFIX, STATUSES
from pushsvc.store.campaigns import KIND as CAMPAIGN_KIND
from pushsvc.store.funnel import funnel_view
from pushsvc.store.records import UnreadableRequest, read_request
from pushsvc.tracing import TraceContext

routes = web.RouteTableDef()


@dataclass(frozen=True)
class CampaignRecord:
    """What the API shows of a campaign: read once from its stored notification by `read_campaign`."""

    id: str
    name: str
    # App, state, times and counts: the notification the campaign is.
    status: NotificationStatus
    # As the campaign was created (the stored request's JSON): audience, message, its campaign options.
    audience: Mapping[str, Any]
    message: Mapping[str, Any]
    options: Mapping[str, Any]
    # schedule.at as given (None: as soon as created) and whether it is a wall-clock time per device.
    schedule_at: str | None
    local_time: bool
    # Local time: how many zones' schedule.at had passed at creation (never sent to).
    zones_passed: int
    # schedule.best_time as created ({"window_hours": W}; None: everyone at schedule.at).
    best_time: Mapping[str, int] | None
    quiet_hours: Mapping[str, str] | None
    throttle_per_second: int | None
    audience_estimate: int
    progress_ratio: float
    # A/B: the variants as created (name, weight, message) and the control group's share; None without.
    variants: list[Mapping[str, Any]] | None
    control_percent: float | None


def read_campaign(doc: Mapping[str, Any]) -> CampaignRecord:
    """The campaign a stored notification is (a split one's: with its ranges' counts summed in)."""
    request = orjson.loads(doc["request"])
    options = request.get("options", {})
    status = read_status(doc)
    quiet = doc.get("quiet_hours")
    throttle = doc.get("throttle_per_second")
    return CampaignRecord(
        id=status.id.removeprefix(CAMPAIGN_PREFIX),
        name=str(doc.get("name")),
        status=status,
        audience=request["target"],
        message=request["message"],
        options={k: v for k, v in options.items() if k in OPTION_FIELDS},
        schedule_at=options.get("send_at") or None,
        local_time=bool(options.get("local_time", False)),
        zones_passed=len(doc.get("zones_passed") or ()),
        best_time=None if not doc.get("best_time") else {"window_hours": int(doc["best_time"]["window_hours"])},
        quiet_hours=None if not quiet else {"start": str(quiet["start"]), "end": str(quiet["end"])},
        throttle_per_second=None if throttle is None else int(throttle),
        audience_estimate=int(doc.get("audience_estimate") or 0),
        progress_ratio=1.0 if status.state == "done" else round(progress_ratio(doc), 4),
        variants=None if not doc.get("variants") else [dict(v) for v in doc["variants"]],
        control_percent=None if doc.get("control_percent") is None else float(doc["control_percent"]),
    )


def campaign_view(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A campaign as the API shows it (the `Campaign` schema of /openapi.json)."""
    campaign = read_campaign(doc)
    status = campaign.status
    funnel = funnel_view(status.counts, doc)
    return {
        "id": campaign.id,
        "name": campaign.name,
        "app": status.app,
        "status": status.state,
        "audience": campaign.audience,
        "message": None if campaign.variants else campaign.message,
        "options": campaign.options,
        "schedule": (
            None
            if campaign.schedule_at is None
            else {"at": campaign.schedule_at, "local_time": campaign.local_time, "zones_passed": campaign.zones_passed,
                  "best_time": None if campaign.best_time is None else dict(campaign.best_time)}
        ),
        "quiet_hours": None if campaign.quiet_hours is None else dict(campaign.quiet_hours),
        "throttle_per_second": campaign.throttle_per_second,
        "created_at": epoch_to_iso(status.created_at),
        "next_run_at": epoch_to_iso(status.due_at),
        "finished_at": None if status.finished_at is None else epoch_to_iso(status.finished_at),
        "counts": counts_view(status),
        "dry_run": dry_run_view(status),
        "funnel": funnel,
        "progress": {"audience_estimate": campaign.audience_estimate, "ratio": campaign.progress_ratio},
        "variants": campaign.variants,
        "control_percent": campaign.control_percent,
        "variant_counts": _with_opens(variant_counts_view(status), funnel)
        if campaign.variants or campaign.control_percent else None,
    }


def _with_opens(by_variant: dict[str, dict[str, int]], funnel: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Each variant's counts with its receipts (`received`, `opened`: the `funnel`'s variant breakdown, counted
    by POST /v1/receipts), so a marketer reads an A/B test's result in one place."""
    receipts_by_variant = funnel["by"].get("variant", {})
    for name, counts in by_variant.items():
        receipts = receipts_by_variant.get(name, {})
        counts["received"], counts["opened"] = receipts.get("received", 0), receipts.get("opened", 0)
    return by_variant


def _campaign_id(request: web.Request) -> str:
    return parse_campaign_id(request.match_info["campaign_id"], "campaign_id")


@routes.post("/v1/campaigns")
@require("campaigns")
@traced_intake
async def create_campaign(request: web.Request, trace: TraceContext | None) -> web.Response:
    """Create a campaign; repeating an id returns the existing campaign with 200 (409 if the body differs).

    Recorded through intake like any request (one insert; a repeated id told apart by its stored hash), so a
    concurrent create of the same id is one insert and the other call is answered as a repeat. Every answer is
    built from the document intake inserted or compared the repeat with: nothing is read back after the insert."""
    campaign_id, raw, fields, parsed = parse_campaign(
        await json_body(request), request.app[KNOWN_APPS], request.app[APP_PROVIDERS]
    )
    permit(request, parsed.app)
    known = await request.app[NOTIFICATIONS].find(parsed.app, parsed.id)
    if known is None:
        # Only a new campaign's time is judged against the clock: a repeat (a retry after a timeout) is
        # answered with the campaign as created even once its time has passed.
        fields = {**fields, **schedule_fields(parsed, request.app[CLOCK]())}
    estimate = await _audience_estimate(request, parsed, known)
    item = replace(campaign_intake(campaign_id, raw, fields, parsed, estimate), trace=trace)
    result = await request.app[INTAKE].record([item], source="campaign")
    if result.rejected:
        return json_error(400, "store_rejected", result.rejected[0][1])
    notification = key(item)
    created = result.documents.get(notification)
    if created is not None:
        return web.json_response(_created_view(request, created, result.requests[notification]), status=201)
    existing = result.existing.get(notification)
    if existing is None:  # a repeat whose record retention deleted between intake's insert and its read
        message = f"campaign {campaign_id!r} was created before and its record has expired: use a new id"
        return json_error(409, "conflict", message, "id")
    if existing.get("kind") != CAMPAIGN_KIND:
        return json_error(409, "conflict", "a notification with this id exists and is not a campaign", "id")
    if result.conflicts:  # the id was used before with another body: the first campaign stands
        differs = result.conflicts[0][1].field
        message = (f"campaign {campaign_id!r} was created before in app {parsed.app!r} with a different body "
                   f"({differs} differs); the first one stands: use a new id for a new campaign")
        return json_error(409, "conflict", message, differs)
    # A repeat: the campaign as first created, with its counts so far as GET shows them; a dry run's preview
    # renders the request it holds (as stamped then), the one case its stored request is parsed.
    current = await request.app[CAMPAIGNS].with_counts_so_far(existing)
    stored = read_request(existing) if parsed.options.dry_run else None
    return web.json_response(_created_view(request, current, stored), status=200)


async def _audience_estimate(request: web.Request, parsed: PushRequest, known: Mapping[str, Any] | None) -> int:
    """The campaign's audience, counted exactly (named kinds, the activity): marketers read it as the audience.

    A repeat reuses what its first create counted (the estimate is not part of what a repeat is compared by):
    a repeat is typically a retry after a timeout, and counting a large audience again (tens of seconds for a
    million devices on nx-27017) would time it out again. `known`: the notification already recorded under its
    id, read by id (cheap beside any count)."""
    if known is not None and known.get("audience_estimate") is not None:
        return int(known["audience_estimate"])
    return await request.app[DEVICES].count_audience(parsed)


def _created_view(
    request: web.Request, doc: Mapping[str, Any], parsed: PushRequest | UnreadableRequest | None
) -> dict[str, Any]:
    """The campaign as created; a dry run adds what a marketer checks first: how many devices it reaches (the
    active devices whose token takes it, opted-out devices excluded)
    and the payload each platform would get, per locale (from `parsed`, the request the campaign holds)."""
    view = campaign_view(doc)
    if isinstance(parsed, PushRequest) and parsed.options.dry_run:
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


@routes.get("/v1/campaigns/{campaign_id}/preview")
@require("read")
async def preview_campaign(request: web.Request) -> web.Response:
    """Whom the campaign reaches now (per platform and per text) and what each platform's provider would get
    per text: computed at each call, from the devices as they are (a campaign is counted once, at creation)."""
    app, campaign_id = app_of(request), _campaign_id(request)
    doc = await request.app[CAMPAIGNS].get(app, campaign_id)
    if doc is None:
        return json_error(404, "not_found", "no campaign with that id")
    stored = read_request(doc)
    if isinstance(stored, UnreadableRequest):
        return json_error(409, "invalid_state", f"the campaign cannot be previewed: {stored.reason}")
    groups = await request.app[DEVICES].count_audience_by(stored)
    # With variants the stored message is the first variant's; each variant's payloads are shown as well.
    split = split_of(stored.id, doc.get("variants"), doc.get("control_percent"), stored.options)
    variants = None if split is None or not split.variants else {
        v.name: request.app[PREVIEW](dataclasses.replace(stored, message=v.message)) for v in split.variants
    }
    return web.json_response({
        "id": campaign_id,
        "app": app,
        "audience": audience_breakdown(stored.message, groups),
        "payloads": request.app[PREVIEW](stored),
        "variants": variants,
    })


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
