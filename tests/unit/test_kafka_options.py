"""kafka.* security settings become the same client options for every Kafka client, checked at load."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import yaml

from pushsvc.config import ConfigError, KafkaSettings, load_settings
from pushsvc.kafka_options import client_options
from pushsvc.simulators.apns import make_client_cert
from pushsvc.simulators.tls import make_test_pki
from tests.unit.credential_files import apns_key, service_account


def test_plaintext_by_default() -> None:
    assert client_options(KafkaSettings("k:9092")) == {"bootstrap_servers": "k:9092", "security_protocol": "PLAINTEXT"}


def test_tls_verifies_the_broker_and_presents_the_client_certificate(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path / "pki")
    client = make_client_cert(tmp_path)
    options = client_options(KafkaSettings("k:9093", security_protocol="SSL", ssl_ca_file=str(pki.ca_file),
                                           ssl_cert_file=str(client.cert_file)))
    context = options["ssl_context"]
    assert options["security_protocol"] == "SSL"
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert "sasl_mechanism" not in options


def test_sasl_password_from_a_file_or_the_environment(tmp_path: Path) -> None:
    secret = tmp_path / "kafka-password"
    secret.write_text("s3cret\n")
    options = client_options(KafkaSettings("k:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                                           sasl_username="pushsvc", sasl_password_file=str(secret)))
    assert (options["sasl_mechanism"], options["sasl_plain_username"], options["sasl_plain_password"]) == (
        "SCRAM-SHA-512", "pushsvc", "s3cret")
    settings = KafkaSettings("k:9093", security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                             sasl_username="pushsvc", sasl_password="from-env")
    assert client_options(settings)["sasl_plain_password"] == "from-env"
    assert "from-env" not in repr(settings)


def load(tmp_path: Path, kafka: dict, env: dict[str, str] | None = None):
    config = {"kafka": {"bootstrap_servers": "k:9092", **kafka}, "mongodb": {"uri": "mongodb://m"},
              "apps": {"demo": {"apns": {"topic": "t", "key_file": str(apns_key(tmp_path / "k.p8")),
                                         "key_id": "KEYID12345", "team_id": "TEAMID1234"},
                                "fcm": {"service_account_file": str(service_account(tmp_path / "sa.json"))}}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_settings(path, env or {})


def test_the_password_may_come_from_the_environment_and_is_never_echoed(tmp_path: Path) -> None:
    settings = load(tmp_path, {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256",
                               "sasl_username": "pushsvc"}, {"PUSHSVC_KAFKA__SASL_PASSWORD": "0123"})
    assert settings.kafka.sasl_password == "0123"


@pytest.mark.parametrize(
    ("kafka", "problems"),
    [
        ({"ssl_ca_file": "/ca.pem"}, ["kafka.ssl_ca_file: needs kafka.security_protocol SSL or SASL_SSL"]),
        ({"security_protocol": "SSL", "ssl_cert_file": "/nope.pem"}, ["kafka.ssl_cert_file: file not found"]),
        ({"security_protocol": "SSL", "ssl_key_file": "/nope.key"},
         ["kafka.ssl_key_file: file not found", "kafka.ssl_key_file: needs kafka.ssl_cert_file"]),
        ({"sasl_username": "u"}, ["kafka.sasl_username: needs kafka.security_protocol SASL_"]),
        ({"security_protocol": "SASL_SSL"},
         ["kafka.sasl_mechanism: required", "kafka.sasl_username: required", "kafka.sasl_password_file: set exactly"]),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI", "sasl_username": "u", "sasl_password": "p"},
         ["kafka.sasl_mechanism: must be one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"]),
    ],
)
def test_security_settings_are_checked_together(tmp_path: Path, kafka: dict, problems: list[str]) -> None:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, kafka)
    found = raised.value.problems
    assert len(found) == len(problems) and all(f.startswith(p) for f, p in zip(found, problems, strict=True)), found
