"""Provider credentials are checked at load (start and check-config), naming the setting, never the secret.

Seen by the review: k8s/secret.example.yaml's placeholder key passed check-config and readiness, then every
send failed as adapter_error (ValueError, no message) and the auth alert never fired.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from pushsvc.config import ConfigError, load_settings
from pushsvc.credentials import apns_certificate_expiry
from tests.unit.credential_files import apns_certificate, apns_key, rsa_key, service_account

K8S_EXAMPLE = Path(__file__).resolve().parents[2] / "k8s" / "secret.example.yaml"


def settings_with(tmp_path: Path, apns: dict, sa: Path) -> dict:
    return {"kafka": {"bootstrap_servers": "k:9092"}, "mongodb": {"uri": "mongodb://m"},
            "apps": {"demo": {"apns": {"topic": "com.example.demo", **apns},
                              "fcm": {"service_account_file": str(sa)}}}}


def problems(tmp_path: Path, config: dict) -> list[str]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as raised:
        load_settings(path, {})
    return raised.value.problems


def token_auth(key_file: Path, key_id: str = "KEYID12345", team_id: str = "TEAMID1234") -> dict:
    return {"key_file": str(key_file), "key_id": key_id, "team_id": team_id}


def test_the_example_secrets_placeholders_are_refused_naming_both_settings(tmp_path: Path) -> None:
    data = yaml.safe_load(K8S_EXAMPLE.read_text())["stringData"]
    key = tmp_path / "AuthKey.p8"
    key.write_text(data["demo-apns-authkey.p8"])
    sa = tmp_path / "sa.json"
    sa.write_text(data["demo-fcm-service-account.json"])
    found = problems(tmp_path, settings_with(tmp_path, token_auth(key), sa))
    assert found == [
        "apps.demo.apns.key_file: the .p8 signing key is not a readable, unencrypted PEM private key",
        "apps.demo.fcm.service_account_file: private_key is not a readable, unencrypted PEM private key",
    ]
    assert not any("EXAMPLE-PLACEHOLDER" in p for p in found)


@pytest.mark.parametrize(
    ("apns", "expected"),
    [
        ({"curve": ec.SECP384R1()}, "apps.demo.apns.key_file: expected an EC P-256 key"),
        ({"rsa": True}, "apps.demo.apns.key_file: expected an EC P-256 key"),
        ({"key_id": "abc"}, "apps.demo.apns.key_id: expected Apple's 10-character key id"),
        ({"team_id": "team-12345"}, "apps.demo.apns.team_id: expected Apple's 10-character team id"),
    ],
)
def test_an_apns_signing_key_must_be_a_p256_key_with_apple_shaped_ids(tmp_path: Path, apns: dict,
                                                                      expected: str) -> None:
    key = apns_key(tmp_path / "k.p8", apns.get("curve"))
    if apns.get("rsa"):
        from tests.unit.credential_files import pem

        key.write_bytes(pem(rsa_key()))
    auth = token_auth(key, apns.get("key_id", "KEYID12345"), apns.get("team_id", "TEAMID1234"))
    found = problems(tmp_path, settings_with(tmp_path, auth, service_account(tmp_path / "sa.json")))
    assert len(found) == 1 and found[0].startswith(expected), found


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"type": "authorized_user"}, 'expected a service account key ("type": "service_account")'),
        ({"client_email": None, "token_uri": None}, "missing client_email, token_uri"),
        ({"token_uri": "http://oauth2.googleapis.com/token"}, "token_uri must be an https URL"),
        ({"ec": True}, "private_key must be an RSA key"),
    ],
)
def test_an_fcm_service_account_must_be_complete(tmp_path: Path, fields: dict, expected: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1()) if fields.pop("ec", False) else None
    sa = service_account(tmp_path / "sa.json", key, **fields)
    found = problems(tmp_path, settings_with(tmp_path, token_auth(apns_key(tmp_path / "k.p8")), sa))
    assert found == [f"apps.demo.fcm.service_account_file: {expected}"]


def test_an_fcm_service_account_that_is_not_json(tmp_path: Path) -> None:
    sa = tmp_path / "sa.json"
    sa.write_text("project_id: demo")
    found = problems(tmp_path, settings_with(tmp_path, token_auth(apns_key(tmp_path / "k.p8")), sa))
    assert found == ["apps.demo.fcm.service_account_file: not a JSON file (expected a service account key)"]


def test_an_apns_certificate_is_read_for_its_expiry_and_refused_when_expired_or_keyless(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    sa = service_account(tmp_path / "sa.json")
    good = apns_certificate(tmp_path / "good.pem", now + dt.timedelta(days=40))
    assert abs(apns_certificate_expiry(str(good), "apns") - (now + dt.timedelta(days=40))) < dt.timedelta(seconds=2)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(settings_with(tmp_path, {"cert_file": str(good)}, sa)))
    assert load_settings(path, {}).apps["demo"].apns is not None

    expired = apns_certificate(tmp_path / "old.pem", now - dt.timedelta(days=1))
    found = problems(tmp_path, settings_with(tmp_path, {"cert_file": str(expired)}, sa))
    assert len(found) == 1 and found[0].startswith("apps.demo.apns.cert_file: the certificate expired on ")
    keyless = apns_certificate(tmp_path / "nokey.pem", now + dt.timedelta(days=40), with_key=False)
    found = problems(tmp_path, settings_with(tmp_path, {"cert_file": str(keyless)}, sa))
    assert found == ["apps.demo.apns.cert_file: the certificate's private key (in the same file) is not a readable, "
                     "unencrypted PEM private key"]
