"""The connection options every Kafka client of pushsvc uses (consumer, DLQ/outcome producer, `pushsvc send`):
bootstrap servers and transport security from `kafka.*` settings, in one place so no client connects
differently from the others.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from pushsvc.config import KafkaSettings


def client_options(settings: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaConsumer / AIOKafkaProducer / AIOKafkaAdminClient."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.security_protocol,
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = tls_context(settings)
    if settings.security_protocol.startswith("SASL_"):
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = sasl_password(settings)
    return options


def tls_context(settings: KafkaSettings) -> ssl.SSLContext:
    """The system's CAs (plus `ssl_ca_file`), certificate and host name verified; a client certificate for
    mutual TLS when one is configured. There is no setting that turns verification off."""
    context = ssl.create_default_context()
    if settings.ssl_ca_file:
        context.load_verify_locations(settings.ssl_ca_file)
    if settings.ssl_cert_file:
        context.load_cert_chain(settings.ssl_cert_file, settings.ssl_key_file)
    return context


def sasl_password(settings: KafkaSettings) -> str:
    """The SASL password, read from its file at connection time (a rotated Secret is picked up by the next
    client), or from the setting (an environment variable)."""
    if settings.sasl_password_file:
        return Path(settings.sasl_password_file).read_text().rstrip("\r\n")
    return settings.sasl_password or ""
