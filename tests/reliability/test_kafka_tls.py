"""Kafka over TLS with client certificates (mutual TLS), end to end, against a broker endpoint that requires it.

Tansu 0.6's own TLS listener did not work (`--cert` and `--key` refuse each other; `--cert` alone gives no
TLS listener), so nginx's stream module terminates TLS in front of a dedicated Tansu that advertises the
proxy's port: every Kafka request of every pushsvc client (consumer, DLQ/outcome producer, `pushsvc send`)
crosses TLS, with the broker's certificate and host name verified and the client's certificate required.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import glob
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError

from pushsvc.config import KafkaSettings
from pushsvc.dev.servers import free_port, tansu, wait_for_port
from pushsvc.kafka_options import client_options
from pushsvc.simulators.apns import ApnsClientCert, make_client_cert
from tests.conftest import unique
from tests.integration.stack import Stack

pytestmark = pytest.mark.integration

NGINX_CONF = """
load_module {module};
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log info;
events {{ worker_connections 256; }}
stream {{
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_client_certificate {client_ca};
        ssl_verify_client on;
        proxy_pass 127.0.0.1:{upstream};
    }}
}}
"""


@dataclass
class TlsBroker:
    bootstrap: str  # the TLS endpoint (what the broker advertises too)
    client: ApnsClientCert  # a client certificate the endpoint accepts (and the CA that issued it)
    topics: dict[str, str]


def stream_module() -> str:
    found = glob.glob("/usr/lib/nginx/modules/ngx_stream_module.so")
    if shutil.which("nginx") is None or not found:
        pytest.skip("nginx with the stream module not installed (apt-get install nginx libnginx-mod-stream)")
    return found[0]


@pytest.fixture
async def tls_broker(stack: Stack, tmp_path: Path) -> AsyncIterator[TlsBroker]:
    module = stream_module()
    port = free_port()
    broker = tansu(tmp_path / "tansu", advertised_port=port)
    await asyncio.to_thread(broker.start)
    work = tmp_path / "nginx"
    work.mkdir()
    client = make_client_cert(work)
    (work / "nginx.conf").write_text(NGINX_CONF.format(
        module=module, work=work, port=port, cert=stack.pki.cert_file, key=stack.pki.key_file,
        client_ca=client.ca_file, upstream=broker.port,
    ))
    nginx = await asyncio.to_thread(
        subprocess.Popen, ["nginx", "-p", str(work), "-c", str(work / "nginx.conf"), "-g", "daemon off;"],
        stderr=subprocess.DEVNULL,
    )
    try:
        await asyncio.to_thread(wait_for_port, port, 10, nginx)
        topics = {"requests_topic": unique("tls.requests"), "dlq_topic": unique("tls.dlq"),
                  "outcomes_topic": unique("tls.outcomes"), "group_id": unique("tls")}
        tls = TlsBroker(f"127.0.0.1:{port}", client, topics)
        # The broker advertises only the TLS endpoint: topics are made through it too.
        admin = AIOKafkaAdminClient(**client_options(KafkaSettings(**tls_kafka(stack, tls))))  # type: ignore[arg-type]
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topics["requests_topic"], 2, 1), NewTopic(topics["dlq_topic"], 1, 1),
                                       NewTopic(topics["outcomes_topic"], 1, 1)])
        finally:
            await admin.close()
        yield tls
    finally:
        for service in list(stack.services):  # pushsvc leaves the group while its broker is still there
            await stack.stop(service)
        nginx.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            nginx.wait(10)
        await asyncio.to_thread(broker.stop)


def tls_kafka(stack: Stack, broker: TlsBroker) -> dict[str, object]:
    return {"bootstrap_servers": broker.bootstrap, "security_protocol": "SSL", "ssl_ca_file": str(stack.pki.ca_file),
            "ssl_cert_file": str(broker.client.cert_file), **broker.topics,
            "session_timeout_ms": 2000, "heartbeat_interval_ms": 500}


@pytest.mark.timeout(120)
async def test_requests_in_and_events_out_over_mutual_tls(stack: Stack, tls_broker: TlsBroker) -> None:
    ios = "c8" * 32
    service = await stack.start(extra={"kafka": tls_kafka(stack, tls_broker)})
    await stack.register(ios, "ios", user_id="tls-user")
    config = stack.tmp_path / "config-0.yaml"
    assert config.is_file()

    # `pushsvc send`, the producer path other teams copy, over the same settings.
    sent = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pushsvc.cli", "send", "--config", str(config), "--app", "demo", "--user", "tls-user",
        "--title", "over TLS", "--body", "hello", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(sent.communicate(), 60)
    assert sent.returncode == 0, err.decode()
    request_id = orjson.loads(out.splitlines()[-1])["published"]

    done = await stack.wait_finished(request_id, timeout=30)
    assert done["counts"]["delivered"] == 1
    assert [r.body["aps"]["alert"]["title"] for r in stack.apns.requests_for(ios)] == ["over TLS"]

    # The outcome event went out through the service's producer, over TLS too.
    settings = dataclasses.replace(service.settings.kafka)
    consumer = AIOKafkaConsumer(tls_broker.topics["outcomes_topic"], **client_options(settings),
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=10_000)
        events = [orjson.loads(r.value) for records in batch.values() for r in records]
    finally:
        await consumer.stop()
    assert [(e["id"], e["state"]) for e in events] == [(request_id, "done")]


@pytest.mark.timeout(60)
async def test_the_endpoint_refuses_clients_without_a_certificate_or_trust(stack: Stack, tls_broker: TlsBroker) -> None:
    """The endpoint really requires what the test above relies on: TLS, and a client certificate. (That the
    broker's certificate is verified is tests/unit/test_kafka_options.py: this session's SSL_CERT_FILE trusts
    the test CA anyway.)"""
    base = KafkaSettings(**tls_kafka(stack, tls_broker))  # type: ignore[arg-type]
    variants = {
        "no client certificate": dataclasses.replace(base, ssl_cert_file=None),
        "plaintext": dataclasses.replace(base, security_protocol="PLAINTEXT", ssl_ca_file=None, ssl_cert_file=None),
    }
    for name, settings in variants.items():
        producer = AIOKafkaProducer(**client_options(settings), request_timeout_ms=3000)
        with pytest.raises(KafkaConnectionError):
            await producer.start()
            pytest.fail(f"{name}: connected")
        await producer.stop()
    producer = AIOKafkaProducer(**client_options(base))
    await producer.start()
    await producer.stop()
