"""The top-level settings dataclasses, and what they say about providers per app."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pushsvc.config.providers import ApnsSettings, FcmSettings, HmsSettings, WebPushSettings


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str
    group_id: str = "pushsvc"
    requests_topic: str = "push.requests"
    dlq_topic: str = "push.requests.dlq"
    outcomes_topic: str = "push.outcomes"
    # Upper bound of messages taken per poll; each batch is recorded in MongoDB in one round trip.
    max_poll_records: int = 500
    max_message_bytes: int = 1_000_000
    # Group membership timing; a crashed replica's partitions move after session_timeout_ms.
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    # Longest a fetch waits on the broker for new messages. Apache Kafka answers as soon as data arrives,
    # so there this only sets the idle poll rate (500: two fetches a second while idle). A broker that holds
    # the fetch for the whole wait (Tansu, which `pushsvc dev` and the tests run) adds up to this much to
    # every request's latency: they set 50.
    fetch_max_wait_ms: int = 500
    # Transport security, for the consumer, the DLQ/outcome producer and `pushsvc send` alike
    # (kafka_options.client_options). SSL verifies the broker's certificate and host name, always.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    # CA bundle to trust besides the system's (a private CA); client certificate and key for mutual TLS
    # (the key may sit in the certificate's file).
    ssl_ca_file: str | None = None
    ssl_cert_file: str | None = None
    ssl_key_file: str | None = None
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    # The password: from a file (a mounted Secret), or from the environment (PUSHSVC_KAFKA__SASL_PASSWORD
    # from a Secret); never put it in a config file. Never logged.
    sasl_password_file: str | None = None
    sasl_password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class MongoSettings:
    uri: str
    database: str = "pushsvc"
    # How long an operation waits for a usable server (none reachable, no primary) before it fails.
    server_selection_timeout_ms: int = 5000
    connect_timeout_ms: int = 5000
    # The longest one read from the server may take: an operation on a connection that stopped answering
    # fails after this long instead of hanging. Above the slowest legitimate operation (index builds and
    # one-time migrations at start on large collections).
    socket_timeout_ms: int = 60_000
    max_pool_size: int = 100
    min_pool_size: int = 0
    # How the server answers `$in` on an indexed field: "indexed" (MongoDB: one `$in` reads any set of values
    # from the index), "scanned" (nx-27017: it scans the collection, so a set of up to 300 values is read one
    # equality query each), "auto" (asked at start: nx-27017 names itself in buildInfo). Only ever set to
    # measure one path on the other server, or for a MongoDB-compatible server that scans.
    in_queries: Literal["auto", "indexed", "scanned"] = "auto"


@dataclass(frozen=True)
class HttpSettings:
    host: str = "0.0.0.0"
    port: int = 8080
    max_body_bytes: int = 256 * 1024
    # The most time one API request may spend waiting on MongoDB: past it the request answers 503
    # store_unavailable (the client retries) instead of holding the connection while MongoDB hangs.
    store_timeout_ms: int = 5000


@dataclass(frozen=True)
class DispatchSettings:
    chunk_size: int = 500
    concurrency_per_provider: int = 200
    send_timeout_seconds: float = 10.0
    max_attempts: int = 5
    backoff_base_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    # How long a claim holds a notification without renewal; renewed every third of it. A crashed replica's
    # work is resumed by another after at most this long.
    lease_seconds: float = 30.0
    # The claim loop's safety poll: how soon expired leases (a crashed replica) and due times recorded by
    # other replicas are found. New work does not wait for it: intake dispatches or wakes the loop at once.
    # Each poll is a candidate query per lane (per lane and active state on nx-27017, which scans for an `$in`):
    # 5 s keeps an idle replica under 0.5% of a core.
    poll_interval_seconds: float = 5.0
    # How often each replica counts the waiting notifications for pushsvc_scheduled_backlog: a few counts on the
    # notifications' state index, every replica alike. 30 s is the ServiceMonitor's scrape interval; its alert
    # (PushsvcNoDeliveriesWithBacklog) waits 10 minutes.
    backlog_refresh_seconds: float = 30.0
    # A notification whose runs keep ending without progress (a lost lease, a query that always times out, a
    # crash it causes) is failed with that reason at its next claim once this many runs in a row made none,
    # instead of being claimed again for ever (the alert PushsvcNotificationStalled fires).
    max_runs_without_progress: int = 5
    # Fan-out notifications (segments, long lists, local-time waves, campaigns) one replica runs at once;
    # each has one chunk in flight, and one retrying against a slow provider holds its slot until the
    # chunk ends. Transactional pushes do not use these slots (see max_batched_notifications).
    max_active_notifications: int = 64
    # Transactional notifications (a few tokens or users, sent now) in flight in the batch lane at once.
    max_batched_notifications: int = 5000
    # A campaign whose audience (counted at creation) exceeds this many devices is cut into ranges of about
    # this size before its first chunk, each a unit of work any replica takes (store/ranges.py); 0: never cut.
    range_devices: int = 50_000
    # At most this many ranges per campaign (powers of two: each level of cutting halves every range).
    max_ranges: int = 64
    # Ranges one replica runs at once. One keeps its one core busy: a second one at once made a 1M-device
    # campaign on one replica slower (476 s against 386 s, 392 against 311 us of CPU per delivery: twice the
    # deliveries in flight), and leaves fewer ranges for the other replicas to take.
    max_active_ranges: int = 1
    # After an authentication error the app's provider is paused this long (no request reaches it).
    auth_pause_seconds: float = 60.0
    # Misconfiguration guard, per app and provider: when at least this share of the provider's answers in
    # the last window are errors a wrong setting gives for every token (APNs BadDeviceToken: environment;
    # DeviceTokenNotForTopic: topic; FCM SENDER_ID_MISMATCH: project), over at least min_answers answers,
    # the provider is paused for auth_pause_seconds and those devices are kept (counted auth_error) instead
    # of deactivated. Fewer answers never trip it: below min_answers such answers deactivate as usual.
    misconfig_guard_share: float = 0.5
    misconfig_guard_window_seconds: float = 60.0
    misconfig_guard_min_answers: int = 50
    # Outcome events not confirmed this long after a notification finished are re-published by the sweep.
    outcome_sweep_grace_seconds: float = 30.0
    # On SIGTERM: stop taking work, let in-flight chunks finish for at most this long, then exit.
    drain_timeout_seconds: float = 25.0


@dataclass(frozen=True)
class RetentionSettings:
    # Notifications (their stored request: tokens, user ids, message) are deleted this many days after
    # they finish, by a MongoDB TTL index.
    notification_days: float = 30.0


@dataclass(frozen=True)
class CapLimit:
    """At most `max` capped pushes to one user in any rolling window of `window_hours`."""

    max: int
    window_hours: float


@dataclass(frozen=True)
class FrequencyCapSettings:
    # Every limit holds at once (e.g. 3 per 24 h and 10 per 168 h).
    limits: list[CapLimit] = field(default_factory=list)
    # Requests carrying one of these message categories are capped; campaigns are capped unless their
    # category is exempt (transactional ones: order updates, security codes).
    categories: list[str] = field(default_factory=list)
    exempt_categories: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TracingSettings:
    # OTLP/HTTP (protobuf) traces URL of a collector (https://collector:4318/v1/traces; an empty path gets
    # /v1/traces). None: tracing is off and no OpenTelemetry SDK is loaded (pushsvc/tracing.py). http:// only to
    # this host (a sidecar or node-local collector): TLS is never off on the network.
    otlp_endpoint: str | None = None
    # Share of new traces (requests without a traceparent) sampled; a request with one follows its sampled flag.
    sample_ratio: float = 0.01
    service_name: str = "pushsvc"
    # CA bundle to trust for an https collector besides the system's (a private CA).
    ca_file: str | None = None
    # One export request's bound: spans are exported from a background thread, never from the event loop.
    export_timeout_seconds: float = 10.0


@dataclass(frozen=True)
class AppSettings:
    apns: ApnsSettings | None = None
    fcm: FcmSettings | None = None
    webpush: WebPushSettings | None = None
    hms: HmsSettings | None = None
    # Marketing pressure per user (store/caps.py); None: nothing is capped.
    frequency_caps: FrequencyCapSettings | None = None


@dataclass(frozen=True)
class ApiKeySettings:
    name: str
    # "sha256:<hex>" of the key; the plain key is never stored.
    hash: str
    scopes: list[str] = field(default_factory=list)
    # The apps this key may act for, or ["*"] for every configured app (now and later); required.
    apps: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings
    mongodb: MongoSettings
    apps: dict[str, AppSettings]
    http: HttpSettings = field(default_factory=HttpSettings)
    dispatch: DispatchSettings = field(default_factory=DispatchSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    api_keys: list[ApiKeySettings] = field(default_factory=list)
    tracing: TracingSettings = field(default_factory=TracingSettings)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Free-form name shown in logs and used as lease owner prefix.
    instance_name: str | None = None


def configured_providers(settings: Settings) -> dict[str, frozenset[str]]:
    """Per app, the providers it configures (the keys of providers/registry.py)."""
    return {
        app_id: frozenset(name for name in ("apns", "fcm", "hms", "webpush") if getattr(app, name) is not None)
        for app_id, app in settings.apps.items()
    }


def web_allowed_hosts(settings: Settings) -> dict[str, frozenset[str]]:
    """Per app, the hosts its web subscriptions may name although internal (webpush.allowed_hosts)."""
    return {
        app_id: frozenset(app.webpush.allowed_hosts) for app_id, app in settings.apps.items() if app.webpush is not None
    }
