"""Every Prometheus metric of pushsvc, in one place.

Label values are kept to small, closed sets (app ids from config, provider names, outcome classes,
provider reason codes) so that cardinality stays bounded; device tokens and request ids are never labels.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from pushsvc.model import Outcome

REGISTRY = CollectorRegistry(auto_describe=True)

_Metric = TypeVar("_Metric", Counter, Gauge, Histogram)
_CHILDREN: dict[tuple[Any, tuple[str, ...]], Any] = {}


def child(metric: _Metric, *values: str) -> _Metric:
    """`metric.labels(*values)`, looked up once. `.labels()` takes a lock and formats every label on each call
    (~0.7 us), and each push asks for the same few children (its app's, provider's, outcome's, lane's). Only for
    the closed label sets above: no child is ever removed, so the cache is as bounded as the series."""
    key = (metric, values)
    found = _CHILDREN.get(key)
    if found is None:
        found = _CHILDREN[key] = metric.labels(*values)
    return found

# Provider round trips are usually 20-300 ms; the buckets also resolve slow tails up to the send timeout.
_PROVIDER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# End-to-end spans queueing and scheduling too, so it reaches into minutes. 1.0 is the threshold of the
# transactional-latency SLO (docs/slo.md): keep a bucket boundary there.
_E2E_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# Due time to a fan-out run's first send: the claim loop's safety poll is 5 s, a full lane waits longer.
# 60.0 is the threshold of the campaign-start SLO (docs/slo.md): keep a bucket boundary there.
_START_DELAY_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

BUILD_INFO = Info("pushsvc_build", "Version of the running pushsvc", registry=REGISTRY)

REQUESTS_INGESTED = Counter(
    "pushsvc_requests_ingested_total",
    "Notification requests taken in, by source (kafka|api|campaign) and outcome (accepted|duplicate|conflict|invalid)",
    ["source", "outcome"],
    registry=REGISTRY,
)
DLQ_MESSAGES = Counter(
    "pushsvc_dlq_messages_total",
    "Messages sent to the dead-letter topic, by reason"
    " (invalid_json|invalid_request|too_large|store_rejected|conflict)",
    ["reason"],
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "pushsvc_deliveries_total",
    "Final delivery outcomes per device (delivered|invalid_token|rejected|failed|auth_error|unknown_token)",
    ["app", "provider", "outcome"],
    registry=REGISTRY,
)
# Kept apart from deliveries: a dry run delivers nothing, and its rejections (what it is run to find) must not
# count toward the failure-ratio alert.
DRY_RUN_OUTCOMES = Counter(
    "pushsvc_dry_run_outcomes_total",
    "Final outcomes of dry-run devices (validated|invalid_token|rejected|failed|auth_error): checked, not delivered",
    ["app", "provider", "outcome"],
    registry=REGISTRY,
)
DELIVERY_ERRORS = Counter(
    "pushsvc_delivery_errors_total",
    "Provider error answers by provider reason code (BadDeviceToken, UNREGISTERED, timeout, ...)",
    ["app", "provider", "reason"],
    registry=REGISTRY,
)
PROVIDER_LATENCY = Histogram(
    "pushsvc_provider_request_duration_seconds",
    "Time from sending one request to a provider to its answer",
    ["provider", "outcome"],
    buckets=_PROVIDER_BUCKETS,
    registry=REGISTRY,
)
END_TO_END_LATENCY = Histogram(
    "pushsvc_end_to_end_latency_seconds",
    "Time from the request being due (recorded at intake, or send_at) to the provider's acknowledgement of a "
    "delivered push, by the lane of its notification (batch: transactional, fanout, range)",
    ["provider", "lane"],
    buckets=_E2E_BUCKETS,
    registry=REGISTRY,
)
FANOUT_START_DELAY = Histogram(
    "pushsvc_fanout_start_delay_seconds",
    "Time from a fan-out notification (campaign, segment, long list; each range of a split campaign, each "
    "local-time wave) being due to its first chunk going out",
    ["app"],
    buckets=_START_DELAY_BUCKETS,
    registry=REGISTRY,
)
RETRIES = Counter(
    "pushsvc_retries_total",
    "Delivery attempts retried after a transient error, by reason",
    ["app", "provider", "reason"],
    registry=REGISTRY,
)
INVALID_TOKENS = Counter(
    "pushsvc_invalid_tokens_total",
    "Device tokens deactivated because the provider said they are no longer valid",
    ["app", "provider"],
    registry=REGISTRY,
)
INFLIGHT = Gauge(
    "pushsvc_provider_inflight_requests",
    "Requests sent to a provider and not yet answered",
    ["provider"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "pushsvc_dispatch_queue_depth",
    "Deliveries waiting for a free provider slot",
    ["provider"],
    registry=REGISTRY,
)
PROVIDER_PAUSED = Gauge(
    "pushsvc_provider_paused",
    "1 while an app's provider is paused after an authentication error or a tripped misconfiguration guard",
    ["app", "provider"],
    registry=REGISTRY,
)
APNS_CERTIFICATE_EXPIRY = Gauge(
    "pushsvc_apns_certificate_expiry_timestamp_seconds",
    "When the app's APNs client certificate expires (epoch seconds); only for certificate auth",
    ["app"],
    registry=REGISTRY,
)
MISCONFIG_GUARD_TRIPS = Counter(
    "pushsvc_misconfig_guard_trips_total",
    "Times an app's provider was paused because too many answers were errors a wrong setting gives for every "
    "token (BadDeviceToken, DeviceTokenNotForTopic, SENDER_ID_MISMATCH)",
    ["app", "provider"],
    registry=REGISTRY,
)
KAFKA_CONSUMER_RESTARTS = Counter(
    "pushsvc_kafka_consumer_restarts_total",
    "Request consumers replaced because their background fetching stopped (see ingest/kafka.py fetcher_failure)",
    registry=REGISTRY,
)
KAFKA_CONSUMER_LAG = Gauge(
    "pushsvc_kafka_consumer_lag",
    "Messages in the partition not yet consumed by this replica",
    ["topic", "partition"],
    registry=REGISTRY,
)
ACTIVE_NOTIFICATIONS = Gauge(
    "pushsvc_active_notifications",
    "Notifications this replica is working on, by claim lane (batch: a few devices each, fanout: chunked, "
    "range: ranges of split campaigns)",
    ["lane"],
    registry=REGISTRY,
)
SCHEDULED_BACKLOG = Gauge(
    "pushsvc_scheduled_backlog",
    "Notifications waiting in MongoDB, by whether they are already due (due|future); counted every "
    "dispatch.backlog_refresh_seconds",
    ["due"],
    registry=REGISTRY,
)
NOTIFICATIONS_FINISHED = Counter(
    "pushsvc_notifications_finished_total",
    "Notifications that reached a final state (done|failed|cancelled)",
    ["app", "state"],
    registry=REGISTRY,
)
NOTIFICATIONS_STALLED = Counter(
    "pushsvc_notifications_stalled_total",
    "Notifications failed because their runs kept ending without progress (dispatch.max_runs_without_progress)",
    ["app", "lane"],
    registry=REGISTRY,
)
DEVICES_TARGETED = Counter(
    "pushsvc_devices_targeted_total",
    "Devices resolved for notifications (fan-out size)",
    ["app"],
    registry=REGISTRY,
)
CAMPAIGN_PROGRESS = Gauge(
    "pushsvc_campaign_progress_ratio",
    "Share of a running campaign's targeted devices that reached a final outcome (campaign ids are per app)",
    ["app", "campaign"],
    registry=REGISTRY,
)

# Closed label sets, used to create every known series at start.
DELIVERY_OUTCOMES = ("delivered", "invalid_token", "rejected", "failed", "auth_error")
FINISHED_STATES = ("done", "failed", "cancelled")
LANES = ("batch", "fanout", "range")  # store/notifications.py LANE_BATCH, LANE_FANOUT; store/ranges.py LANE_RANGE
DLQ_REASONS = ("invalid_json", "invalid_request", "too_large", "store_rejected", "conflict")
# A conflict: a repeated request id with another body (ingest/idempotency.py), dead-lettered or answered 409.
INGEST_OUTCOMES = {
    "kafka": ("accepted", "duplicate", "conflict", "invalid"),
    "api": ("accepted", "duplicate", "conflict"),
    "campaign": ("accepted", "duplicate", "conflict"),
}
# Provider reason codes are an open set, but the common ones are documented (Apple's and FCM's error
# tables) plus the adapters' own network reasons: those retry/error series start at 0 so that the first
# incident's first increment shows in rate() instead of appearing as a flat new series.
TRANSIENT_REASONS = {
    "apns": (
        "TooManyRequests",
        "InternalServerError",
        "ServiceUnavailable",
        "Shutdown",
        "IdleTimeout",
        "TooManyProviderTokenUpdates",
        "timeout",
        "connection_error",
    ),
    "fcm": ("UNAVAILABLE", "INTERNAL", "QUOTA_EXCEEDED", "timeout", "connection_error"),
    # Huawei Push Kit reasons are its result codes (81000001: system error), or http_<status> without one.
    "hms": ("81000001", "http_503", "http_429", "timeout", "connection_error", "token_refresh_failed"),
    "webpush": ("TooManyRequests", "http_500", "http_503", "timeout", "connection_error"),
}
INVALID_TOKEN_REASONS = {
    "apns": ("BadDeviceToken", "DeviceTokenNotForTopic", "Unregistered"),
    "fcm": ("UNREGISTERED", "SENDER_ID_MISMATCH"),
    "hms": ("80300007", "80100000"),
    "webpush": ("NotFound", "Gone", "EndpointNotAllowed"),
}


def init_series(app_providers: Iterable[tuple[str, str]]) -> None:
    """Create every series of a closed label set at zero for the configured (app, provider) pairs.

    A counter that first appears on its first increment hides that increment from rate() and makes
    panels and alerts show "no data" instead of 0 on a healthy replica. Open label sets (rarer provider
    reason codes, Kafka partitions, campaigns) appear when they occur;
    so does the scheduled backlog, which stays absent rather than a false 0 until MongoDB answered.
    """
    pairs = sorted(set(app_providers))
    for app, provider in pairs:
        for outcome in DELIVERY_OUTCOMES:
            DELIVERIES.labels(app, provider, outcome)
        INVALID_TOKENS.labels(app, provider)
        PROVIDER_PAUSED.labels(app, provider).set(0)
        MISCONFIG_GUARD_TRIPS.labels(app, provider)
        for reason in TRANSIENT_REASONS.get(provider, ()):
            RETRIES.labels(app, provider, reason)
            DELIVERY_ERRORS.labels(app, provider, reason)
        for reason in INVALID_TOKEN_REASONS.get(provider, ()):
            DELIVERY_ERRORS.labels(app, provider, reason)
        for reason in TOKEN_REFRESH_REASONS.get(provider, ()):
            PROVIDER_TOKEN_REFRESHES.labels(app, provider, reason)
    for provider in sorted({provider for _, provider in pairs}):
        INFLIGHT.labels(provider)
        QUEUE_DEPTH.labels(provider)
        # Histograms too: a first observation that creates its series is invisible to rate(), and
        # histogram_quantile over a series without a visible increase gives NaN.
        for attempt_outcome in Outcome:
            PROVIDER_LATENCY.labels(provider, str(attempt_outcome))
        for lane in LANES:
            END_TO_END_LATENCY.labels(provider, lane)
    for app in sorted({app for app, _ in pairs}):
        DELIVERIES.labels(app, "none", "unknown_token")
        DEVICES_TARGETED.labels(app)
        FANOUT_START_DELAY.labels(app)
        for state in FINISHED_STATES:
            NOTIFICATIONS_FINISHED.labels(app, state)
        for lane in LANES:
            NOTIFICATIONS_STALLED.labels(app, lane)
    for source, outcomes in INGEST_OUTCOMES.items():
        for outcome in outcomes:
            REQUESTS_INGESTED.labels(source, outcome)
    for reason in DLQ_REASONS:
        DLQ_MESSAGES.labels(reason)


PROVIDER_TOKEN_REFRESHES = Counter(
    "pushsvc_provider_token_refreshes_total",
    "Provider credentials obtained: APNs provider tokens (JWTs) signed, FCM OAuth access tokens fetched. reason: "
    "first, age/expiry (scheduled: APNs at 50 minutes, FCM 5 minutes before expiry), rejected (the provider "
    "refused the current one). One APNs token serves every app sharing the key: counted for the app whose send "
    "signed it",
    ["app", "provider", "reason"],
    registry=REGISTRY,
)
# The refresh counter's reasons per provider (apns_token.py, fcm.py), created at zero by init_series.
TOKEN_REFRESH_REASONS = {"apns": ("first", "age", "rejected"), "fcm": ("first", "expiry", "rejected")}
# A provider quota shared by every replica (dispatch/quota.py). scope: what the quota counts against, e.g.
# "fcm:<project id>" (from config: bounded). cause: limit (the shared limiter's slice was used up) or
# quota_exceeded (the provider answered so: every send of the scope held back for 60 s or its Retry-After).
PROVIDER_QUOTA_WAITS = Counter(
    "pushsvc_provider_quota_waits_total",
    "Provider requests held back before going out, by quota scope and cause (limit|quota_exceeded)",
    ["scope", "cause"],
    registry=REGISTRY,
)
PROVIDER_QUOTA_HELD_SECONDS = Counter(
    "pushsvc_provider_quota_held_seconds_total",
    "Seconds this replica sent nothing of a quota scope, by cause (limit: waiting for the next slice of the "
    "shared limiter; quota_exceeded: the hold after the provider's QUOTA_EXCEEDED)",
    ["scope", "cause"],
    registry=REGISTRY,
)
PROVIDER_QUOTA_BLOCKS = Counter(
    "pushsvc_provider_quota_blocks_total",
    "Blocks of permits asked of the shared quota limiter in MongoDB (one round trip each)",
    ["scope"],
    registry=REGISTRY,
)
PROVIDER_QUOTA_PERMITS = Counter(
    "pushsvc_provider_quota_permits_total",
    "Permits the shared quota limiter granted this replica (one per provider request)",
    ["scope"],
    registry=REGISTRY,
)

# Receipts (POST /v1/receipts, api/receipts.py): what became of each receipt of a valid batch. recorded: new,
# counted in the funnel; duplicate: recorded before (a retried batch); unknown_notification: no such
# notification in the app (never sent, expired by retention, or another app's id); unknown_device: no device of
# the app has that token or user id. Only `recorded` ones are stored and counted.
RECEIPTS = Counter(
    "pushsvc_receipts_total",
    "Receipts posted by apps' backends, by event (received|opened) and outcome "
    "(recorded|duplicate|unknown_notification|unknown_device)",
    ["app", "event", "outcome"],
    registry=REGISTRY,
)
RECEIPT_EVENTS = ("received", "opened")
RECEIPT_OUTCOMES = ("recorded", "duplicate", "unknown_notification", "unknown_device")


def init_receipt_series(apps: Iterable[str]) -> None:
    """Every app's receipt series at zero, so a rate over the first receipts is not lost to a missing start."""
    for app in apps:
        for event in RECEIPT_EVENTS:
            for outcome in RECEIPT_OUTCOMES:
                RECEIPTS.labels(app, event, outcome)
