"""Configuration errors name the key; credentials are never defaulted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pushsvc.config import ConfigError, load_settings
from tests.unit.credential_files import apns_key, service_account


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return {"key": apns_key(tmp_path / "k.p8"), "sa": service_account(tmp_path / "sa.json"), "dir": tmp_path}


def base(files: dict[str, Path]) -> dict:
    return {
        "kafka": {"bootstrap_servers": "k:9092"},
        "mongodb": {"uri": "mongodb://m"},
        "apps": {
            "demo": {
                "apns": {"topic": "com.x", "key_file": str(files["key"]), "key_id": "KEYID12345",
                         "team_id": "TEAMID1234"},
                "fcm": {"service_account_file": str(files["sa"])},
            }
        },
    }


def load(files: dict[str, Path], config: dict, env: dict[str, str] | None = None):
    path = files["dir"] / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_settings(path, env or {})


def test_valid_config_and_defaults(files: dict[str, Path]) -> None:
    settings = load(files, base(files))
    assert settings.kafka.requests_topic == "push.requests"
    assert settings.apps["demo"].apns is not None
    assert settings.apps["demo"].apns.environment == "production"


def test_env_overrides_with_types(files: dict[str, Path]) -> None:
    settings = load(files, base(files), {"PUSHSVC_HTTP__PORT": "9000", "PUSHSVC_MONGODB__URI": "mongodb://other"})
    assert settings.http.port == 9000
    assert settings.mongodb.uri == "mongodb://other"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c["kafka"].pop("bootstrap_servers"), "kafka.bootstrap_servers: required"),
        (lambda c: c["apps"]["demo"]["apns"].pop("key_id"), "apps.demo.apns.key_id: required"),
        (lambda c: c["apps"]["demo"]["apns"].update(key_file="/nope.p8"), "apps.demo.apns.key_file: file not found"),
        (lambda c: c["apps"]["demo"]["fcm"].pop("service_account_file"), "apps.demo.fcm.service_account_file"),
        (lambda c: c["apps"]["demo"]["apns"].update(environment="prod"), "apps.demo.apns.environment"),
        (lambda c: c["kafka"].update(bootstrap="x"), "kafka.bootstrap: unknown setting"),
        (lambda c: c.update(http={"port": "eighty"}), "http.port: expected a int"),
        (lambda c: c.update(apps={}), "apps: at least one app"),
        (lambda c: c.update(api_keys=[{"name": "a", "hash": "plain"}]), "api_keys[0].hash"),
        (lambda c: c.update(api_keys=[{"name": "a", "hash": "sha256:" + "0" * 64, "scopes": ["admin"]}]),
         "api_keys[0].scopes: unknown scope 'admin'"),
        (lambda c: c.update(api_keys=[{"name": "a", "hash": "sha256:" + "g" * 64, "scopes": ["read"], "apps": ["*"]}]),
         "api_keys[0].hash: must be 'sha256:' followed by 64 hex digits"),
        (lambda c: c.update(api_keys=[{"name": "a", "hash": "sha256:" + "0" * 64, "scopes": [], "apps": ["*"]}]),
         "api_keys[0].scopes: required"),
        (lambda c: c.update(api_keys=[{"name": "a", "hash": "sha256:" + "0" * 64, "scopes": ["read"]}]),
         "api_keys[0].apps: required"),
        (lambda c: c.update(api_keys=[{"name": "a", "hash": "sha256:" + "0" * 64, "scopes": ["read"], "apps": []}]),
         "api_keys[0].apps: required"),
        (lambda c: c.update(api_keys=[{"name": "a", "hash": "sha256:" + "0" * 64, "scopes": ["read"],
                                       "apps": ["shop"]}]), "api_keys[0].apps: unknown app 'shop'"),
        (lambda c: c.update(api_keys=[{"name": "a", "hash": "sha256:" + "0" * 64, "scopes": ["read"],
                                       "apps": ["*", "demo"]}]), "api_keys[0].apps: .* stands alone"),
        (lambda c: c.update(api_keys=[{"name": "a", "hash": "sha256:" + "0" * 64, "scopes": ["read"], "apps": ["*"]},
                                      {"name": "a", "hash": "sha256:" + "1" * 64, "scopes": ["read"], "apps": ["*"]}]),
         "api_keys: names must be unique"),
        (lambda c: c.update(dispatch={"misconfig_guard_share": 1.5}), "dispatch.misconfig_guard_share: must be in"),
        (lambda c: c.update(dispatch={"misconfig_guard_share": 0}), "dispatch.misconfig_guard_share: must be in"),
        (lambda c: c.update(dispatch={"misconfig_guard_window_seconds": 0.5}), "dispatch.misconfig_guard_window"),
        (lambda c: c.update(dispatch={"misconfig_guard_min_answers": 0}), "dispatch.misconfig_guard_min_answers"),
        (lambda c: c.update(dispatch={"poll_interval_seconds": 0}), "dispatch.poll_interval_seconds: must be greater"),
        (lambda c: c.update(dispatch={"backlog_refresh_seconds": 0}),
         "dispatch.backlog_refresh_seconds: must be greater than 0, got 0"),
    ],
)
def test_errors_name_the_key(files: dict[str, Path], mutate, message: str) -> None:
    config = base(files)
    mutate(config)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load(files, config)


def test_missing_file_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "absent.yaml", {})


def test_mongodb_client_settings_reach_the_driver(files: dict[str, Path]) -> None:
    """The settings an operator sets are the options PyMongo's client runs with (it connects lazily)."""
    from pushsvc.store.database import Database

    config = base(files)
    config["mongodb"].update(server_selection_timeout_ms=1500, connect_timeout_ms=700, socket_timeout_ms=9000,
                             max_pool_size=7, min_pool_size=2)
    config["http"] = {"store_timeout_ms": 1200}
    settings = load(files, config)
    assert settings.http.store_timeout_ms == 1200
    database = Database.connect(settings.mongodb)
    options = database.client.options
    assert options.server_selection_timeout == 1.5
    assert options.pool_options.connect_timeout == 0.7
    assert options.pool_options.socket_timeout == 9.0
    assert (options.pool_options.max_pool_size, options.pool_options.min_pool_size) == (7, 2)
    assert database.db.name == settings.mongodb.database


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("mongodb", {"socket_timeout_ms": 0}, "mongodb.socket_timeout_ms: must be at least 1"),
        ("mongodb", {"max_pool_size": 0}, "mongodb.max_pool_size: must be at least 1"),
        ("mongodb", {"min_pool_size": 200}, "mongodb.min_pool_size: must be between 0 and"),
        ("http", {"store_timeout_ms": 0}, "http.store_timeout_ms: must be at least 1"),
        ("mongodb", {"in_queries": "fast"}, "mongodb.in_queries: .*auto.*indexed.*scanned"),
    ],
)
def test_mongodb_client_settings_are_checked(files: dict[str, Path], section: str, values: dict, message: str) -> None:
    config = base(files)
    config.setdefault(section, {}).update(values)
    with pytest.raises(ConfigError, match=message):
        load(files, config)


def test_env_overrides_take_the_type_of_the_setting_not_yaml(files: dict[str, Path]) -> None:
    """YAML would read KEY_ID=0123456789 as the number 123456789 (9 characters, no longer a key id); a setting
    that is a string takes the text as given, and numbers are parsed as what their setting is."""
    settings = load(files, base(files), {
        "PUSHSVC_APPS__DEMO__APNS__KEY_ID": "0123456789",
        "PUSHSVC_APPS__DEMO__APNS__TEAM_ID": "0001112223",
        "PUSHSVC_INSTANCE_NAME": "007",
        "PUSHSVC_DISPATCH__LEASE_SECONDS": "12",
        "PUSHSVC_HTTP__PORT": "8081",
        "PUSHSVC_LOG_LEVEL": "debug",
        "PUSHSVC_API_KEYS": '[{name: a, hash: "sha256:' + "0" * 64 + '", scopes: [read], apps: ["*"]}]',
    })
    assert settings.apps["demo"].apns is not None
    assert (settings.apps["demo"].apns.key_id, settings.apps["demo"].apns.team_id) == ("0123456789", "0001112223")
    assert settings.instance_name == "007"
    assert settings.dispatch.lease_seconds == 12.0 and settings.http.port == 8081
    assert settings.log_level == "debug"
    assert settings.api_keys[0].apps == ["*"]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PUSHSVC_HTTP__PORT", "80.5", r"http.port \(from PUSHSVC_HTTP__PORT\): expected a int"),
        ("PUSHSVC_HTTP__PORT", "-1", r"http.port: must not be negative \(from PUSHSVC_HTTP__PORT\)"),
        ("PUSHSVC_LOG_LEVEL", "loud", r"log_level: must be one of debug, .* \(from PUSHSVC_LOG_LEVEL\)"),
        ("PUSHSVC_API_KEYS", "[{name: a", r"api_keys \(from PUSHSVC_API_KEYS\): not valid YAML"),
    ],
)
def test_env_override_errors_name_the_variable_and_never_echo_the_value(
    files: dict[str, Path], name: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        load(files, base(files), {name: value})
    assert value not in str(raised.value)


def test_every_problem_is_reported_at_once(files: dict[str, Path], tmp_path: Path) -> None:
    """An operator fixing a config sees every error in one run, not one per run (check-config included)."""
    config = base(files)
    config["kafka"]["bootstrap"] = "typo"  # unknown setting
    config["http"] = {"port": "eighty"}  # wrong type
    config["apps"]["demo"]["apns"].pop("key_id")  # missing credential part
    config["apps"]["shop"] = {"fcm": {"service_account_file": "/nope.json"}}  # missing file
    config["api_keys"] = [{"name": "a", "hash": "sha256:" + "0" * 64, "scopes": []},  # no scopes, no apps
                          {"name": "b", "hash": "plain", "scopes": ["read"], "apps": ["*"]}]
    config["dispatch"] = {"chunk_size": 0, "lease_seconds": 1}
    with pytest.raises(ConfigError) as raised:
        load(files, config)
    assert [p.split(":")[0] for p in raised.value.problems] == ["kafka.bootstrap", "http.port"], "types first"

    del config["kafka"]["bootstrap"], config["http"]
    with pytest.raises(ConfigError) as raised:
        load(files, config)
    keys = [p.split(":")[0] for p in raised.value.problems]
    assert keys == [
        "apps.demo.apns.key_id", "apps.shop.fcm.service_account_file",
        "api_keys[0].scopes", "api_keys[0].apps", "api_keys[1].hash",
        "dispatch.chunk_size", "dispatch.lease_seconds",
    ], raised.value.problems

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    check = subprocess.run([sys.executable, "-m", "pushsvc.cli", "check-config", "--config", str(path)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 2
    assert "7 configuration error(s)" in check.stderr and all(k in check.stderr for k in keys), check.stderr


@pytest.mark.parametrize(
    ("provider", "endpoint", "error"),
    [
        ("apns", "https://127.0.0.1:8443", None),
        ("apns", "https://apns.example", None),
        ("fcm", "https://127.0.0.1:9443/base", None),
        ("apns", "127.0.0.1:8443", "expected https://host[:port]"),  # the old form: now one form for both
        ("apns", "http://127.0.0.1:8443", "expected https://host[:port]"),  # TLS is never off
        ("apns", "https://127.0.0.1:8443/v1", "and nothing more"),
        ("fcm", "https://:9443", "expected https://host[:port]"),
        ("fcm", "https://127.0.0.1:99999", "not a URL"),
    ],
)
def test_provider_endpoints_are_https_urls(files: dict[str, Path], provider: str, endpoint: str,
                                           error: str | None) -> None:
    config = base(files)
    config["apps"]["demo"][provider]["endpoint"] = endpoint
    if error is None:
        assert getattr(load(files, config).apps["demo"], provider).endpoint == endpoint
        return
    with pytest.raises(ConfigError, match=rf"apps\.demo\.{provider}\.endpoint: .*{re.escape(error)}"):
        load(files, config)


def with_web_and_huawei(files: dict[str, Path], **changes: dict) -> dict:
    """`base` plus Web Push and Huawei Push Kit for app demo; `changes` update either section."""
    config = base(files)
    secret = files["dir"] / "hms-secret"
    secret.write_text("s3cret\n")
    config["apps"]["demo"]["webpush"] = {
        "vapid_private_key_file": str(apns_key(files["dir"] / "vapid.pem")),
        "subject": "mailto:push@example.com",
        **changes.get("webpush", {}),
    }
    config["apps"]["demo"]["hms"] = {
        "app_id": "104567890",
        "client_id": "104567890",
        "client_secret_file": str(secret),
        **changes.get("hms", {}),
    }
    return config


def test_web_push_and_huawei_settings(files: dict[str, Path]) -> None:
    settings = load(files, with_web_and_huawei(files, webpush={"allowed_hosts": ["push.test", "127.0.0.1"]}))
    app = settings.apps["demo"]
    assert app.webpush is not None and app.webpush.allowed_hosts == ["push.test", "127.0.0.1"]
    assert app.hms is not None and app.hms.client_secret is None
    # An app may use only the newer providers.
    config = with_web_and_huawei(files)
    del config["apps"]["demo"]["apns"], config["apps"]["demo"]["fcm"]
    assert load(files, config).apps["demo"].apns is None


def test_the_hms_secret_may_come_from_the_environment_and_is_never_shown(files: dict[str, Path]) -> None:
    config = with_web_and_huawei(files)
    del config["apps"]["demo"]["hms"]["client_secret_file"]
    settings = load(files, config, {"PUSHSVC_APPS__DEMO__HMS__CLIENT_SECRET": "from-env"})
    assert settings.apps["demo"].hms is not None and settings.apps["demo"].hms.client_secret == "from-env"
    assert "from-env" not in repr(settings)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"webpush": {"subject": "push@example.com"}}, "apps.demo.webpush.subject: expected 'mailto:"),
        ({"webpush": {"subject": "http://example.com"}}, "apps.demo.webpush.subject"),
        ({"webpush": {"vapid_private_key_file": "/nope.pem"}}, "apps.demo.webpush.vapid_private_key_file: file not"),
        ({"webpush": {"allowed_hosts": ["push.test:8443"]}}, "apps.demo.webpush.allowed_hosts[0]"),
        ({"webpush": {"allowed_hosts": ["https://push.test"]}}, "apps.demo.webpush.allowed_hosts[0]"),
        ({"webpush": {"max_connections_per_origin": 0}}, "apps.demo.webpush.max_connections_per_origin"),
        ({"hms": {"client_secret_file": None}}, "apps.demo.hms.client_secret_file: required"),
        ({"hms": {"client_secret": "both"}}, "apps.demo.hms.client_secret_file: required"),
        ({"hms": {"app_id": "a b"}}, "apps.demo.hms.app_id"),
        ({"hms": {"endpoint": "http://push-api.cloud.huawei.com"}}, "apps.demo.hms.endpoint: expected https"),
        ({"hms": {"token_url": "ftp://x"}}, "apps.demo.hms.token_url"),
    ],
)
def test_web_push_and_huawei_mistakes_name_the_key(files: dict[str, Path], changes: dict, message: str) -> None:
    config = with_web_and_huawei(files, **changes)
    for section in config["apps"]["demo"].values():
        for key in [k for k, v in section.items() if v is None]:
            del section[key]
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(files, config)


def test_a_vapid_key_must_be_p256(files: dict[str, Path]) -> None:
    from tests.unit.credential_files import pem, rsa_key

    wrong = files["dir"] / "vapid-rsa.pem"
    wrong.write_bytes(pem(rsa_key()))
    with pytest.raises(ConfigError, match=re.escape("apps.demo.webpush.vapid_private_key_file: expected an EC P-256")):
        load(files, with_web_and_huawei(files, webpush={"vapid_private_key_file": str(wrong)}))


@pytest.mark.parametrize("subject", ["mailto:ops@localhost", "mailto:ops@box.local", "https://localhost/contact",
                                     "mailto:ops@intranet"])
def test_a_vapid_subject_names_a_public_domain(files: dict[str, Path], subject: str) -> None:
    with pytest.raises(ConfigError, match=re.escape("apps.demo.webpush.subject: must name a public domain")):
        load(files, with_web_and_huawei(files, webpush={"subject": subject}))
