"""Configuration errors name the key; credentials are never defaulted."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pushsvc.config import ConfigError, load_settings


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    key = tmp_path / "k.p8"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    sa = tmp_path / "sa.json"
    sa.write_text("{}")
    return {"key": key, "sa": sa, "dir": tmp_path}


def base(files: dict[str, Path]) -> dict:
    return {
        "kafka": {"bootstrap_servers": "k:9092"},
        "mongodb": {"uri": "mongodb://m"},
        "apps": {
            "demo": {
                "apns": {"topic": "com.x", "key_file": str(files["key"]), "key_id": "K", "team_id": "T"},
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
    ],
)
def test_mongodb_client_settings_are_checked(files: dict[str, Path], section: str, values: dict, message: str) -> None:
    config = base(files)
    config.setdefault(section, {}).update(values)
    with pytest.raises(ConfigError, match=message):
        load(files, config)
