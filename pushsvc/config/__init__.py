"""Settings from a YAML file plus PUSHSVC_* environment overrides, validated at start.

Every problem is reported with the dotted key that caused it (``apps.demo.apns.key_id: required``)
so an operator can fix the file without reading code. Credentials are never defaulted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from pushsvc.credentials import (
    CredentialError,
    apns_certificate_expiry,
    check_apns_signing_key,
    check_fcm_service_account,
    check_vapid_private_key,
)

ENV_PREFIX = "PUSHSVC_"


class ConfigError(ValueError):
    """Settings are missing or invalid: every problem found, one line each, each naming its key."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


class _Problems:
    """Collects ConfigErrors from independent checks so that one run reports them all."""

    def __init__(self) -> None:
        self.found: list[str] = []

    @contextlib.contextmanager
    def check(self) -> Iterator[None]:
        """A check: its first problem is kept and ends it (later steps of one check depend on earlier)."""
        try:
            yield
        except ConfigError as exc:
            self.found.extend(exc.problems)

    def raise_any(self) -> None:
        if self.found:
            raise ConfigError(*self.found)


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
    # Each poll is a candidate query per lane and active state: 5 s keeps an idle replica under 0.5% of a core.
    poll_interval_seconds: float = 5.0
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
class ApnsSettings:
    topic: str
    environment: Literal["production", "sandbox"] = "production"
    # Token auth (preferred): a .p8 signing key with its key id and team id.
    key_file: str | None = None
    key_id: str | None = None
    team_id: str | None = None
    # Certificate auth: a PEM file holding certificate and private key.
    cert_file: str | None = None
    # Base URL to reach instead of Apple's host (simulators, tests), e.g. https://127.0.0.1:8443
    endpoint: str | None = None
    # Extra CA bundle to trust (a private test CA); verification itself can never be turned off.
    ca_file: str | None = None
    max_connections: int = 10


@dataclass(frozen=True)
class FcmSettings:
    service_account_file: str
    # Base URL to reach instead of Google's FCM host (simulators, tests), e.g. https://127.0.0.1:8443
    endpoint: str | None = None
    ca_file: str | None = None
    max_connections: int = 10


@dataclass(frozen=True)
class WebPushSettings:
    """Web Push (RFC 8030) with VAPID (RFC 8292) for the app's browser subscriptions."""

    # The application server's VAPID key: a PEM EC P-256 private key (its public key is the
    # applicationServerKey the web app subscribed with).
    vapid_private_key_file: str
    # The contact in every VAPID token: "mailto:..." or an https URL (RFC 8292 section 2.1).
    subject: str
    # Hosts a subscription endpoint may name although they are, or resolve to, loopback, private or link-local
    # addresses. Empty in production: a registered endpoint must never make pushsvc call an internal service.
    # Tests and `pushsvc dev` list their local push service here.
    allowed_hosts: list[str] = field(default_factory=list)
    # Extra CA bundle to trust (a test push service); verification itself can never be turned off.
    ca_file: str | None = None
    # Connections per push-service origin (each browser vendor's service is one origin).
    max_connections_per_origin: int = 10


@dataclass(frozen=True)
class HmsSettings:
    """Huawei Push Kit (HMS Core) for Android devices without Google services."""

    # The app id in AppGallery Connect (the {app_id} of /v1/{app_id}/messages:send) and its OAuth 2 client.
    app_id: str
    client_id: str
    # The client secret: from a file (a mounted Secret) or the environment (PUSHSVC_APPS__<APP>__HMS__CLIENT_SECRET).
    client_secret_file: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    # Base URLs instead of Huawei's hosts (simulators, tests): the push endpoint and the OAuth token endpoint.
    endpoint: str | None = None
    token_url: str | None = None
    ca_file: str | None = None
    max_connections: int = 10


@dataclass(frozen=True)
class AppSettings:
    apns: ApnsSettings | None = None
    fcm: FcmSettings | None = None
    webpush: WebPushSettings | None = None
    hms: HmsSettings | None = None


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


API_SCOPES = frozenset({"devices:write", "notify", "campaigns", "read"})
MIN_LEASE_SECONDS = 2.0
APP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def load_settings(
    path: str | os.PathLike[str] | None, environ: typing.Mapping[str, str] | None = None
) -> Settings:
    """Read ``path`` (YAML), apply ``PUSHSVC_A__B=value`` overrides, validate and return Settings."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_config_file(Path(path))
    _apply_env_overrides(raw, environ)
    settings = _build(Settings, raw, "")
    _check_semantics(settings)
    return settings


def _read_config_file(file: Path) -> dict[str, Any]:
    """The file's top-level mapping; any problem reading it is one line naming the file (an operator reads it
    in `kubectl logs` or a terminal: PyYAML's own message spans five lines and quotes the text around)."""
    if file.is_dir():
        raise ConfigError(f"config file {file} is a directory, not a file")
    if not file.is_file():
        raise ConfigError(f"config file not found: {file}")
    try:
        loaded = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except OSError as exc:  # present but unreadable: permissions
        raise ConfigError(f"config file {file} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {file} is not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {file} is not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {file} must hold a mapping at top level")
    return loaded


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What PyYAML found wrong and where (1-based line and column), on one line."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        return exc.problem if mark is None else f"{exc.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split("\n")[0].split())  # ReaderError and the like: their first line says it


class EnvText(str):
    """A setting's value as an environment variable gave it: converted by the type of the setting it sets
    (`_from_env`), not read as YAML, so `KEY_ID=0123` stays the string "0123" (YAML 1.1 would read the
    octal 83) and `1.10` stays "1.10". `name` is the variable, for errors (which never echo the value:
    it may be a secret)."""

    name: str

    def __new__(cls, value: str, name: str) -> EnvText:
        text = super().__new__(cls, value)
        text.name = name
        return text


def _from_env(tp: Any, text: EnvText, key: str) -> Any:
    """`text` as the type `tp` of setting `key`; anything else (lists, mappings, booleans) is YAML."""
    where = f"{key} (from {text.name})"
    if tp is str or typing.get_origin(tp) is Literal:
        return str(text)
    if tp in (int, float):
        try:
            return tp(text.strip())
        except ValueError:
            raise ConfigError(f"{where}: expected a {tp.__name__}") from None
    try:
        return yaml.safe_load(str(text))
    except yaml.YAMLError:
        raise ConfigError(f"{where}: not valid YAML") from None


def _apply_env_overrides(raw: dict[str, Any], environ: typing.Mapping[str, str]) -> None:
    # PUSHSVC_KAFKA__BOOTSTRAP_SERVERS=host:9092 -> raw["kafka"]["bootstrap_servers"]; each value is converted
    # by the type of the setting it lands on (EnvText), once the settings' types are known.
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == "PUSHSVC_CONFIG":
            continue
        keys = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        node = raw
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"environment {name}: {'.'.join(keys)} crosses a non-mapping value")
            node = child
        node[keys[-1]] = EnvText(value, name) if value else None


def _build(cls: Any, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or '<root>'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    problems = _Problems()
    for name in sorted(set(data) - set(fields)):
        problems.found.append(f"{_join(path, name)}: unknown setting (known: {', '.join(sorted(fields))})")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key = _join(path, name)
        with problems.check():
            if name not in data or data[name] is None:
                has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
                if not has_default:
                    raise ConfigError(f"{key}: required")
                continue
            values[name] = _convert(hints[name], data[name], key)
    problems.raise_any()
    return cls(**values)


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(options[0], value, key)
    if isinstance(value, EnvText):
        try:
            return _convert(tp, _from_env(tp, value, key), key)
        except ConfigError as exc:
            # The setting's own checks, without the value (an environment variable may carry a secret).
            cut = [problem.split(", got ")[0] for problem in exc.problems]
            raise ConfigError(*(p if value.name in p else f"{p} (from {value.name})" for p in cut)) from None
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: must be one of {', '.join(map(str, allowed))}, got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping")
        _, value_type = typing.get_args(tp)
        problems, converted = _Problems(), {}
        for k, v in value.items():
            with problems.check():
                converted[str(k)] = _convert(value_type, v if v is not None else {}, f"{key}.{k}")
        problems.raise_any()
        return converted
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list")
        (item_type,) = typing.get_args(tp)
        problems, items = _Problems(), []
        for i, v in enumerate(value):
            with problems.check():
                items.append(_convert(item_type, v, f"{key}[{i}]"))
        problems.raise_any()
        return items
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp in (int, float):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (tp is int and not isinstance(value, int))
        ):
            raise ConfigError(f"{key}: expected a {tp.__name__}, got {value!r}")
        if value < 0:
            raise ConfigError(f"{key}: must not be negative, got {value!r}")
        return tp(value)
    if tp is str:
        if not isinstance(value, str | int) or isinstance(value, bool) or str(value).strip() == "":
            raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported setting type {tp!r}")  # pragma: no cover - programming error


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _check_semantics(settings: Settings) -> None:
    """Every independent check runs; all their problems are reported together."""
    problems = _Problems()
    with problems.check():
        if not settings.apps:
            raise ConfigError("apps: at least one app must be configured")
    for app_id, app in settings.apps.items():
        with problems.check():
            _check_app(app_id, app)
    for i, key in enumerate(settings.api_keys):
        with problems.check():
            _check_api_key(i, key, settings)
    with problems.check():
        names = [key.name for key in settings.api_keys]
        if len(set(names)) != len(names):
            raise ConfigError("api_keys: names must be unique (logs and errors name the key)")
    at_least_one = [
        *(("kafka", name) for name in ("max_poll_records", "fetch_max_wait_ms")),
        *(("mongodb", name) for name in ("server_selection_timeout_ms", "connect_timeout_ms", "socket_timeout_ms",
                                         "max_pool_size")),
        ("http", "store_timeout_ms"),
        *(("dispatch", name) for name in ("chunk_size", "concurrency_per_provider", "max_attempts",
                                          "max_active_notifications", "max_batched_notifications",
                                          "misconfig_guard_min_answers", "max_ranges", "max_active_ranges")),
    ]
    with problems.check():
        if settings.dispatch.range_devices < 0:
            raise ConfigError("dispatch.range_devices: must be 0 (never cut) or more")
    for section, name in at_least_one:
        with problems.check():
            if getattr(getattr(settings, section), name) < 1:
                raise ConfigError(f"{section}.{name}: must be at least 1")
    with problems.check():
        _check_kafka_security(settings.kafka)
    with problems.check():
        if not 0 <= settings.mongodb.min_pool_size <= settings.mongodb.max_pool_size:
            raise ConfigError("mongodb.min_pool_size: must be between 0 and mongodb.max_pool_size")
    with problems.check():
        _check_dispatch(settings.dispatch)
    with problems.check():
        if settings.retention.notification_days <= 0:
            raise ConfigError("retention.notification_days: must be greater than 0")
    problems.raise_any()


def _check_kafka_security(kafka: KafkaSettings) -> None:
    tls = kafka.security_protocol in ("SSL", "SASL_SSL")
    sasl = kafka.security_protocol.startswith("SASL_")
    ssl_files = {"ssl_ca_file": kafka.ssl_ca_file, "ssl_cert_file": kafka.ssl_cert_file,
                 "ssl_key_file": kafka.ssl_key_file}
    sasl_values = {"sasl_mechanism": kafka.sasl_mechanism, "sasl_username": kafka.sasl_username,
                   "sasl_password_file": kafka.sasl_password_file, "sasl_password": kafka.sasl_password}
    problems = _Problems()
    for name, value in ssl_files.items():
        with problems.check():
            if value and not tls:
                raise ConfigError(f"kafka.{name}: needs kafka.security_protocol SSL or SASL_SSL")
            if value:
                _require_file(value, f"kafka.{name}")
    with problems.check():
        if kafka.ssl_key_file and not kafka.ssl_cert_file:
            raise ConfigError("kafka.ssl_key_file: needs kafka.ssl_cert_file (the certificate it belongs to)")
    if not sasl:
        for name, value in sasl_values.items():
            with problems.check():
                if value:
                    raise ConfigError(f"kafka.{name}: needs kafka.security_protocol SASL_SSL or SASL_PLAINTEXT")
    else:
        for name in ("sasl_mechanism", "sasl_username"):
            with problems.check():
                if not sasl_values[name]:
                    raise ConfigError(f"kafka.{name}: required with security_protocol {kafka.security_protocol}")
        with problems.check():
            if bool(kafka.sasl_password) == bool(kafka.sasl_password_file):
                raise ConfigError("kafka.sasl_password_file: set exactly one of sasl_password_file or sasl_password")
            if kafka.sasl_password_file:
                _require_file(kafka.sasl_password_file, "kafka.sasl_password_file")
    problems.raise_any()


def _check_app(app_id: str, app: AppSettings) -> None:
    base = f"apps.{app_id}"
    if not APP_ID.match(app_id):
        # Notification keys are "<app>:<request id>": an app id must not hold the separator.
        raise ConfigError(f"{base}: app ids are 1-64 letters, digits, '.', '_' or '-' (starting alphanumeric)")
    if app.apns is None and app.fcm is None and app.webpush is None and app.hms is None:
        raise ConfigError(f"{base}: configure at least one provider (apns, fcm, hms, webpush)")
    problems = _Problems()
    if app.apns is not None:
        with problems.check():
            _check_apns(app.apns, f"{base}.apns")
    if app.fcm is not None:
        with problems.check():
            _require_file(app.fcm.service_account_file, f"{base}.fcm.service_account_file")
            with _credential():
                check_fcm_service_account(app.fcm.service_account_file, f"{base}.fcm")
            if app.fcm.ca_file:
                _require_file(app.fcm.ca_file, f"{base}.fcm.ca_file")
            if app.fcm.endpoint:
                endpoint_address(app.fcm.endpoint, f"{base}.fcm.endpoint", path_allowed=True)
    if app.webpush is not None:
        with problems.check():
            _check_webpush(app.webpush, f"{base}.webpush")
    if app.hms is not None:
        with problems.check():
            _check_hms(app.hms, f"{base}.hms")
    problems.raise_any()


def _check_webpush(webpush: WebPushSettings, base: str) -> None:
    _require_file(webpush.vapid_private_key_file, f"{base}.vapid_private_key_file")
    with _credential():
        check_vapid_private_key(webpush.vapid_private_key_file, f"{base}.vapid_private_key_file")
    subject = urlsplit(webpush.subject)
    domain = subject.path.rpartition("@")[2] if subject.scheme == "mailto" else subject.hostname or ""
    if subject.scheme not in ("mailto", "https") or (subject.scheme == "mailto" and "@" not in subject.path):
        raise ConfigError(f"{base}.subject: expected 'mailto:you@example.com' or an https URL (RFC 8292)")
    if "." not in domain.strip(".") or domain.lower().rstrip(".").endswith(("localhost", ".local")):
        # Push services contact the subject's owner; Apple's answers 403 BadJwtToken for a local one.
        raise ConfigError(f"{base}.subject: must name a public domain push services can reach, got {domain!r}")
    for i, host in enumerate(webpush.allowed_hosts):
        # A bare host: "push.example" or an address; "host:port" (one colon) and URLs are refused.
        if not host or "/" in host or host.count(":") == 1:
            raise ConfigError(f"{base}.allowed_hosts[{i}]: a host name or address, without scheme or port")
    if webpush.ca_file:
        _require_file(webpush.ca_file, f"{base}.ca_file")
    if webpush.max_connections_per_origin < 1:
        raise ConfigError(f"{base}.max_connections_per_origin: must be at least 1")


def _check_hms(hms: HmsSettings, base: str) -> None:
    for name in ("app_id", "client_id"):
        if not re.fullmatch(r"[0-9A-Za-z._-]{1,64}", getattr(hms, name)):
            raise ConfigError(f"{base}.{name}: expected the id from AppGallery Connect (letters, digits)")
    if bool(hms.client_secret_file) == bool(hms.client_secret):
        raise ConfigError(
            f"{base}.client_secret_file: required (or the environment's {ENV_PREFIX}APPS__<APP>__HMS__CLIENT_SECRET),"
            " not both"
        )
    if hms.client_secret_file:
        _require_file(hms.client_secret_file, f"{base}.client_secret_file")
        if not Path(hms.client_secret_file).read_text().strip():
            raise ConfigError(f"{base}.client_secret_file: empty")
    for name in ("endpoint", "token_url"):
        if getattr(hms, name):
            endpoint_address(getattr(hms, name), f"{base}.{name}", path_allowed=True)
    if hms.ca_file:
        _require_file(hms.ca_file, f"{base}.ca_file")


def _check_api_key(i: int, key: ApiKeySettings, settings: Settings) -> None:
    problems = _Problems()
    with problems.check():
        if not re.fullmatch(r"sha256:[0-9a-fA-F]{64}", key.hash):
            raise ConfigError(f"api_keys[{i}].hash: must be 'sha256:' followed by 64 hex digits")
    with problems.check():
        if not key.scopes:
            raise ConfigError(f"api_keys[{i}].scopes: required: a key without scopes can call nothing")
        bad = sorted(set(key.scopes) - API_SCOPES)
        if bad:
            raise ConfigError(
                f"api_keys[{i}].scopes: unknown scope {bad[0]!r} (known: {', '.join(sorted(API_SCOPES))})"
            )
    with problems.check():
        if not key.apps:
            raise ConfigError(f"api_keys[{i}].apps: required: the apps this key may act for, or ['*'] for all")
        if "*" in key.apps and len(key.apps) > 1:
            raise ConfigError(f"api_keys[{i}].apps: '*' means every app and stands alone")
        unknown = sorted(set(key.apps) - set(settings.apps) - {"*"})
        if unknown:
            known = ", ".join(sorted(settings.apps))
            raise ConfigError(f"api_keys[{i}].apps: unknown app {unknown[0]!r} (configured: {known})")
    problems.raise_any()


def _check_dispatch(d: DispatchSettings) -> None:
    problems = _Problems()
    with problems.check():
        if not 0 < d.misconfig_guard_share <= 1:
            raise ConfigError(f"dispatch.misconfig_guard_share: must be in (0, 1], got {d.misconfig_guard_share}")
    with problems.check():
        if d.misconfig_guard_window_seconds < 1:
            raise ConfigError(
                "dispatch.misconfig_guard_window_seconds: must be at least 1 (answers count per second)"
            )
    with problems.check():
        if d.send_timeout_seconds <= 0 or d.lease_seconds <= d.send_timeout_seconds:
            raise ConfigError("dispatch.lease_seconds: must be greater than dispatch.send_timeout_seconds")
        if d.lease_seconds < MIN_LEASE_SECONDS:
            # Sending stops a safety margin (a tenth, at least 0.5 s) before a lease ends: shorter leases
            # would spend most of their time inside it.
            raise ConfigError(
                f"dispatch.lease_seconds: must be at least {MIN_LEASE_SECONDS:g}, got {d.lease_seconds:g}"
            )
    with problems.check():
        if d.max_runs_without_progress < 1:
            raise ConfigError(
                f"dispatch.max_runs_without_progress: must be at least 1, got {d.max_runs_without_progress}"
            )
    problems.raise_any()


def _check_apns(apns: ApnsSettings, base: str) -> None:
    token_auth = [apns.key_file, apns.key_id, apns.team_id]
    if apns.cert_file and any(token_auth):
        raise ConfigError(f"{base}: use either key_file/key_id/team_id (token auth) or cert_file, not both")
    if apns.cert_file:
        _require_file(apns.cert_file, f"{base}.cert_file")
        with _credential():
            apns_certificate_expiry(apns.cert_file, base)
    else:
        for name, value in zip(("key_file", "key_id", "team_id"), token_auth, strict=True):
            if not value:
                raise ConfigError(f"{base}.{name}: required for token auth (or set {base}.cert_file)")
        _require_file(apns.key_file or "", f"{base}.key_file")
        with _credential():
            check_apns_signing_key(apns.key_file or "", apns.key_id or "", apns.team_id or "", base)
    if apns.ca_file:
        _require_file(apns.ca_file, f"{base}.ca_file")
    if apns.endpoint:
        endpoint_address(apns.endpoint, f"{base}.endpoint", path_allowed=False)


def endpoint_address(url: str, key: str, path_allowed: bool) -> tuple[str, int]:
    """Host and port of a provider `endpoint` setting: one form for APNs and FCM, an https URL
    (https://host[:port], port 443 by default; FCM's may carry a base path). TLS cannot be switched off."""
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError:
        raise ConfigError(f"{key}: not a URL: expected https://host[:port], got {url!r}") from None
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(f"{key}: expected https://host[:port], got {url!r}")
    if parts.query or parts.fragment or parts.username or (parts.path not in ("", "/") and not path_allowed):
        raise ConfigError(f"{key}: expected https://host[:port] and nothing more, got {url!r}")
    return parts.hostname, port


@contextlib.contextmanager
def _credential() -> Iterator[None]:
    """A credential check (pushsvc.credentials) reported like any other setting's problem."""
    try:
        yield
    except CredentialError as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:  # unreadable although present (permissions, a directory)
        raise ConfigError(f"cannot read a credential file: {exc.strerror}: {exc.filename}") from None


def _require_file(path: str, key: str) -> None:
    if not Path(path).is_file():
        raise ConfigError(f"{key}: file not found: {path}")
