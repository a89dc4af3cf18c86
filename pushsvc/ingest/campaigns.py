"""A campaign's intake: its contract, and the notification document it is recorded as.

A campaign is a notification request (id "campaign:<id>" in its app, the Kafka request contract) plus campaign
fields (name, quiet hours, throttle), so the scheduler, leases, runner and counters are the notification
machinery. This module turns a `POST /v1/campaigns` body into that request and those fields, naming the field
of any error as the caller spelled it (`audience.users[2]`, `schedule.at`), and into what intake records
(`campaign_intake`); the HTTP handler (api/campaigns.py) only permits, counts, records through intake and answers.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any

from pushsvc.ingest.intake import Accepted, RecordAs
from pushsvc.ingest.payload_limits import check_payload_size
from pushsvc.model import PushRequest, RequestError, parse_request
from pushsvc.model.fields import field_name, reject_unknown
from pushsvc.model.timezones import all_timezones
from pushsvc.model.variants import parse_control_percent, parse_variants
from pushsvc.scheduling.best_time import MAX_WINDOW_HOURS, MIN_WINDOW_HOURS
from pushsvc.scheduling.due import PAST_SCHEDULE_GRACE_SECONDS, parse_hhmm, zone_due_at, zones_passed
from pushsvc.store.campaigns import KIND, campaign_request_id
from pushsvc.store.notifications import LANE_FANOUT

CAMPAIGN_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
CAMPAIGN_FIELDS = (
    "id",
    "name",
    "app",
    "audience",
    "message",
    "options",
    "schedule",
    "quiet_hours",
    "throttle_per_second",
    "variants",
    "control_percent",
)
OPTION_FIELDS = ("priority", "ttl_seconds", "collapse_key", "push_type", "dry_run")
AUDIENCE_FIELDS = ("users", "segment")
SCHEDULE_FIELDS = ("at", "local_time", "best_time")
BEST_TIME_FIELDS = ("window_hours",)
QUIET_HOURS_FIELDS = ("start", "end")
MAX_NAME_LENGTH = 200
MAX_THROTTLE = 100_000

# The request contract's field names for what a campaign spells its own way.
_CAMPAIGN_SPELLING = {"options.send_at": "schedule.at", "options.local_time": "schedule.local_time"}

AppProviders = Mapping[str, Collection[str]]


def parse_campaign(
    body: Any, known_apps: frozenset[str], providers: AppProviders | None = None
) -> tuple[str, dict[str, Any], dict[str, Any], PushRequest]:
    """Validate a campaign body; returns (campaign id, the notification request, the campaign fields, that
    request parsed)."""
    body = _object(body, "body")
    unknown = [key for key in body if key not in CAMPAIGN_FIELDS]
    if unknown:
        raise RequestError(field_name(unknown[0]), f"unknown field (allowed: {', '.join(sorted(CAMPAIGN_FIELDS))})")
    campaign_id = parse_campaign_id(body.get("id", uuid.uuid4().hex), "id")
    fields: dict[str, Any] = {"kind": KIND, "name": _name(body.get("name"))}
    if body.get("quiet_hours") is not None:
        fields["quiet_hours"] = _quiet_hours(body["quiet_hours"])
    if body.get("throttle_per_second") is not None:
        fields["throttle_per_second"] = _throttle(body["throttle_per_second"])
    variants = body.get("variants")
    if variants is not None and body.get("message") is not None:
        raise RequestError("message", "leave out when variants are given: each variant carries its message")
    raw = {
        "id": campaign_request_id(campaign_id),
        "app": body.get("app"),
        "target": _audience(body.get("audience")),
        # With variants the request's message is the first variant's: what intake checks, a dry run previews.
        "message": variants[0].get("message") if _first_is_object(variants) else body.get("message"),
        "options": _options(body.get("options", {}), body.get("schedule")),
    }
    try:
        parsed = parse_request(raw, known_apps)
        check_payload_size(parsed, None if providers is None else providers.get(parsed.app, ()))
    except RequestError as exc:
        if variants is not None and exc.field and exc.field.startswith("message"):
            exc = RequestError(f"variants[0].{exc.field}", exc.reason)
        raise RequestError(_as_campaign_field(exc.field or "body"), exc.reason) from exc
    best_time = _best_time_of(body.get("schedule"), raw["options"], fields)
    if best_time is not None:
        fields["best_time"] = best_time
    if variants is not None:
        fields["variants"] = parse_variants(variants, parsed.options)
        _check_variant_sizes(fields["variants"], raw, parsed, known_apps, providers)
    if body.get("control_percent") is not None:
        fields["control_percent"] = parse_control_percent(body["control_percent"])
    return campaign_id, raw, fields, parsed


def schedule_fields(parsed: PushRequest, now: float) -> dict[str, Any]:
    """What a new campaign's schedule.at means at `now` (the server's clock), as fields to record with it.

    A time already past is refused (beyond a minute's grace: then it means now), rather than sent at once as if
    it had been left out. A local-time schedule is a time in each zone: the zones where it has passed are
    recorded as `zones_passed` and never sent to; only when it has passed everywhere is it refused."""
    at, options = parsed.options.send_at, parsed.options
    if at is None:
        return {}
    server_time = datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds")
    if not options.local_time:
        if at.timestamp() < now - PAST_SCHEDULE_GRACE_SECONDS:
            raise RequestError("schedule.at", f"is in the past (server time {server_time}); leave schedule out to "
                               "send now")
        return {}
    passed = zones_passed(at, now)
    if not passed:
        return {}
    ahead = set(all_timezones()).difference(passed)
    if not ahead:
        raise RequestError("schedule.at", f"{at:%Y-%m-%dT%H:%M:%S} has passed in every timezone (server time "
                           f"{server_time})")
    # Due when the first zone still ahead reaches it (intake's due time would be the first zone of all).
    return {"zones_passed": passed, "due_at": min(zone_due_at(at, zone) for zone in ahead)}


def _first_is_object(variants: Any) -> bool:
    return isinstance(variants, list) and bool(variants) and isinstance(variants[0], dict)


def _check_variant_sizes(
    variants: list[dict[str, Any]], raw: Mapping[str, Any], parsed: PushRequest, known_apps: frozenset[str],
    providers: AppProviders | None,
) -> None:
    """Each variant's payload within every configured provider's limit, as intake checks a request's."""
    for index, variant in enumerate(variants[1:], start=1):
        try:
            check_payload_size(
                parse_request({**raw, "message": variant["message"]}, known_apps),
                None if providers is None else providers.get(parsed.app, ()),
            )
        except RequestError as exc:
            raise RequestError(f"variants[{index}].{exc.field or 'message'}", exc.reason) from exc


def parse_campaign_id(value: Any, field: str) -> str:
    if not isinstance(value, str) or not CAMPAIGN_ID.match(value):
        raise RequestError(field, "must be 1-64 characters of letters, digits, '.', '_' or '-'")
    return value


def campaign_intake(
    campaign_id: str, raw: Mapping[str, Any], fields: Mapping[str, Any], parsed: PushRequest, audience_estimate: int
) -> Accepted:
    """A campaign as intake records it (ingest/intake.py, the one way a request becomes a notification): its
    request, in the fan-out lane whatever its size (campaigns keep per-chunk progress: pause, resume, throttle,
    the progress gauge), with its campaign fields, hashed and compared in the caller's terms (`campaign_form`)."""

    def form_of(doc: Mapping[str, Any]) -> Mapping[str, Any]:
        return campaign_form(campaign_id, doc["request"], doc)

    recorded_as = RecordAs(
        lane=LANE_FANOUT,
        fields={**fields, "audience_estimate": audience_estimate},
        sent=campaign_form(campaign_id, raw, fields),
        form_of=form_of,
    )
    return Accepted(parsed, dict(raw), recorded_as)


def campaign_form(campaign_id: str, request: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    """A campaign in the caller's terms (what its request id is compared by), from its notification request and
    campaign fields: as parse_campaign made them, or as stored. Defaults parse_campaign fills in
    (`schedule.local_time`, empty `options`) read the same whether sent or left out."""
    options = dict(request.get("options") or {})
    form: dict[str, Any] = {
        "id": campaign_id,
        "name": fields.get("name"),
        "app": request.get("app"),
        "audience": request.get("target"),
        "message": request.get("message"),
        "options": {k: v for k, v in options.items() if k not in ("send_at", "local_time")},
    }
    if options.get("send_at") is not None:
        form["schedule"] = {"at": options["send_at"], "local_time": bool(options.get("local_time", False))}
    for name in ("quiet_hours", "throttle_per_second", "variants", "control_percent"):
        if fields.get(name) is not None:
            form[name] = fields[name]
    if fields.get("best_time") is not None and "schedule" in form:
        form["schedule"]["best_time"] = fields["best_time"]
    if fields.get("variants") is not None:
        del form["message"]  # the first variant's, as parse_campaign set it: not what the caller sent
    return form


def _object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RequestError(field, "must be a JSON object")
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME_LENGTH:
        raise RequestError("name", f"required non-empty string of at most {MAX_NAME_LENGTH} characters")
    return value


def _audience(value: Any) -> dict[str, Any]:
    """Exactly one of users, segment; what each holds is the request contract's `target` (checked there)."""
    audience = _object(value, "audience")
    reject_unknown(audience, "audience", AUDIENCE_FIELDS)
    if len(audience) != 1:
        raise RequestError("audience", "must have exactly one of users, segment")
    return audience


def _options(value: Any, schedule: Any) -> dict[str, Any]:
    """The request's options: the campaign's own, plus its schedule (a campaign has no send_at of its own)."""
    options = dict(_object(value, "options"))
    for key in options:
        if key not in OPTION_FIELDS:
            where = "options" if not key else f"options.{field_name(key)}"
            raise RequestError(where, "unknown field (use schedule for timing)")
    if schedule is not None:
        schedule = _object(schedule, "schedule")
        reject_unknown(schedule, "schedule", SCHEDULE_FIELDS)
        if "at" not in schedule:
            raise RequestError("schedule.at", "required")
        options["send_at"] = schedule["at"]
        options["local_time"] = schedule.get("local_time", False)
    return options


def _quiet_hours(value: Any) -> dict[str, str]:
    quiet = _object(value, "quiet_hours")
    reject_unknown(quiet, "quiet_hours", QUIET_HOURS_FIELDS)
    for key in QUIET_HOURS_FIELDS:
        if key not in quiet:
            raise RequestError(f"quiet_hours.{key}", "required (HH:MM, device-local)")
        try:
            parse_hhmm(quiet[key])
        except (ValueError, TypeError) as exc:
            raise RequestError(f"quiet_hours.{key}", "must be HH:MM (00:00-23:59)") from exc
    if quiet["start"] == quiet["end"]:
        raise RequestError("quiet_hours.end", "must differ from start")
    return {"start": quiet["start"], "end": quiet["end"]}


def _best_time_of(schedule: Any, options: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, int] | None:
    """`schedule.best_time` (in an object `schedule`, which must give `at`), checked against what it
    cannot be combined with: local time (an hour of day per user and a wall-clock time per zone are two
    schedules) and quiet hours (device-local, while a best hour is one of UTC: left for later)."""
    if not isinstance(schedule, dict) or schedule.get("best_time") is None:
        return None
    best_time = parse_best_time(schedule["best_time"])
    if schedule.get("at") is None:
        # The waves count from it, and a campaign without it is sent at once: nothing to spread.
        raise RequestError("schedule.at", "required with schedule.best_time")
    if options.get("local_time"):
        raise RequestError("schedule.best_time", "not with schedule.local_time: one or the other")
    if fields.get("quiet_hours") is not None:
        raise RequestError("schedule.best_time", "not with quiet_hours")
    return best_time


def parse_best_time(value: Any, path: str = "schedule.best_time") -> dict[str, int]:
    """`{"window_hours": W}`: each user is sent at their best hour within W hours of schedule.at
    (scheduling/best_time.py); RequestError naming the field otherwise."""
    best_time = _object(value, path)
    reject_unknown(best_time, path, BEST_TIME_FIELDS)
    window = best_time.get("window_hours")
    if window is None:
        raise RequestError(f"{path}.window_hours", "required")
    if not isinstance(window, int) or isinstance(window, bool) or not MIN_WINDOW_HOURS <= window <= MAX_WINDOW_HOURS:
        raise RequestError(
            f"{path}.window_hours", f"must be an integer between {MIN_WINDOW_HOURS} and {MAX_WINDOW_HOURS}"
        )
    return {"window_hours": window}


def _throttle(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_THROTTLE:
        raise RequestError("throttle_per_second", f"must be an integer between 1 and {MAX_THROTTLE}")
    return value


def _as_campaign_field(field: str) -> str:
    """A request-contract field as the campaign body spells it: target -> audience, send_at -> schedule.at."""
    if field == "target" or field.startswith(("target.", "target[")):
        return "audience" + field.removeprefix("target")
    return _CAMPAIGN_SPELLING.get(field, field)
