"""Security: scopes on every route, no secrets in logs, TLS verification on provider connections."""

from __future__ import annotations

import os
import re
import ssl
from pathlib import Path

import aiohttp
import pytest
import yaml

from pushsvc.config import ConfigError, load_settings
from tests.integration.stack import API_KEY, Stack, consume, publish
from tests.reliability.harness import (
    Load,
    Replica,
    account,
    api_key_config,
    jwt_like,
    leaks,
    register_devices,
    request_for,
    secret_values,
    wait_all_finished,
)

pytestmark = pytest.mark.integration

SCOPES = ["devices:write", "notify", "campaigns", "read", "receipts"]
# Health and metrics are open to probes and scrapers; the API description documents only public shapes.
PUBLIC = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/asyncapi.json"}
# The documented scope of each route (README); routes added later are checked generically.
DOCUMENTED = {
    ("POST", "/v1/devices"): "devices:write",
    ("GET", "/v1/users/{user_id}/devices"): "read",
    ("POST", "/v1/notifications"): "notify",
    ("GET", "/v1/notifications/{notification_id}"): "read",
    ("POST", "/v1/receipts"): "receipts",
}


def scoped_keys() -> dict[str, str]:
    return {scope: f"key-only-{scope.replace(':', '-')}-0123456789" for scope in SCOPES}


async def routes_of_service(stack: Stack) -> list[tuple[str, str]]:
    """Every (method, path) the real application serves (built in-process from the same settings)."""
    from pushsvc.service import PushService

    service = PushService(stack.settings())
    try:
        found = set()
        for route in service.http_app.router.routes():
            info = route.resource.get_info() if route.resource else {}
            path = info.get("path") or info.get("formatter")
            if path and route.method not in ("HEAD", "OPTIONS", "*"):
                found.add((route.method, path))
        return sorted(found)
    finally:
        await service.producer.stop()
        await service.database.close()


@pytest.mark.timeout(90)
async def test_every_route_but_health_and_metrics_needs_a_key_with_the_right_scope(stack: Stack) -> None:
    keys = scoped_keys()
    api_keys = [api_key_config("all", API_KEY, SCOPES)] + [api_key_config(f"only-{s}", k, [s]) for s, k in keys.items()]
    replica = await Replica(stack, "scopes", extra={"api_keys": api_keys}).start()
    routes = await routes_of_service(stack)
    assert ("POST", "/v1/notifications") in routes
    checked = []
    async with aiohttp.ClientSession() as http:
        for method, path in routes:
            url = replica.url + re.sub(r"\{[^}]+\}", "x1", path)
            if path in PUBLIC:
                async with http.request(method, url) as r:
                    assert r.status in (200, 503), (method, path, r.status)
                continue
            for headers in (
                {},
                {"Authorization": "Bearer wrong-key"},
                {"Authorization": f"Basic {API_KEY}"},
                {"Authorization": "Bearer "},
                {"Authorization": API_KEY},
            ):
                async with http.request(method, url, headers=headers, json={}) as r:
                    assert r.status == 401, (method, path, headers, r.status)
            passed = []
            for scope, key in keys.items():
                async with http.request(method, url, headers={"Authorization": f"Bearer {key}"}, json={}) as r:
                    assert r.status != 401, (method, path, scope)
                    if r.status != 403:
                        passed.append(scope)
            assert len(passed) == 1, (method, path, passed)
            if (method, path) in DOCUMENTED:
                assert passed == [DOCUMENTED[(method, path)]], (method, path, passed)
            checked.append(f"{method} {path} -> {passed[0]}")
    print("scopes:", checked)
    await replica.terminate()
    assert leaks([replica], {f"api key {s}": k for s, k in keys.items()} | {"api key": API_KEY}) == []


@pytest.mark.timeout(120)
async def test_no_token_key_or_provider_secret_in_any_log_line(stack: Stack) -> None:
    replica = await Replica(stack, "secrets", extra={"log_level": "debug"}, dispatch={"max_attempts": 2}).start()
    tokens = await register_devices(replica, 10)
    ios = [t for t in tokens if not t.startswith("fcm:")]
    android = [t for t in tokens if t.startswith("fcm:")]
    stack.apns.script(ios[0], status=410, reason="Unregistered")
    stack.apns.script(ios[1], status=400, reason="BadDeviceToken")
    stack.apns.script(ios[2], status=503, reason="ServiceUnavailable")
    stack.fcm.script(android[0], error_code="UNREGISTERED")
    stack.fcm.script(android[1], error_code="INVALID_ARGUMENT")
    stack.fcm.script(android[2], error_code="UNAVAILABLE")
    load = Load()
    values = []
    for n, token in enumerate(tokens):
        load.ids[f"sec-{n}"] = token
        values.append(request_for(f"sec-{n}", token))
    # Bad input quoting tokens ends in the DLQ and in log lines about it.
    values.append({"id": "bad", "app": "demo", "target": {"tokens": [tokens[0]]}, "message": {"title": 1}})
    await publish(stack.bootstrap, stack.requests_topic, values)
    await consume(stack.bootstrap, stack.kafka["dlq_topic"], 1)
    async with aiohttp.ClientSession() as http:
        for header in (f"Bearer {API_KEY}x", f"Bearer {tokens[0]}", f"Token {API_KEY}"):
            async with http.get(f"{replica.url}/v1/users/u/devices?app=demo", headers={"Authorization": header}) as r:
                assert r.status == 401
        async with http.post(
            f"{replica.url}/v1/devices",
            headers={"Authorization": f"Bearer {API_KEY}"},
            json={"app": "demo", "token": tokens[0], "platform": "windows"},
        ) as r:
            assert r.status == 400
    await wait_all_finished(stack, load, 60)
    # A revoked OAuth token and an expired APNs provider token: auth error paths log too.
    stack.fcm.revoke_tokens()
    stack.apns.auth_error = "ExpiredProviderToken"
    load2 = Load()
    load2.ids = {"sec-auth-a": android[3], "sec-auth-i": ios[3]}
    await publish(stack.bootstrap, stack.requests_topic, [request_for(r, t) for r, t in load2.ids.items()])
    await wait_all_finished(stack, load2, 60)
    stack.apns.auth_error = None
    acc = await account(stack, load)
    await replica.terminate()
    secrets = secret_values(stack, [replica], tokens)
    lines = len(replica.log_text().splitlines())
    found = leaks([replica], secrets)
    print(f"log lines scanned={lines} secrets checked={len(secrets)} leaks={len(found)} outcomes={acc.summary()}")
    assert lines > 10
    assert found == [], "\n".join(found[:20])
    assert jwt_like([replica]) == []


@pytest.mark.timeout(90)
async def test_tls_verification_is_on_by_default_for_providers(stack: Stack, tmp_path: Path) -> None:
    """Without the test CA (no ca_file, system trust only) the peers' certificates are refused."""
    system = ssl.get_default_verify_paths().openssl_cafile  # not $SSL_CERT_FILE: the suite points that at the test CA
    replica = Replica(
        stack, "tls-default", dispatch={"max_attempts": 2}, env={"SSL_CERT_FILE": system, "REQUESTS_CA_BUNDLE": system}
    )
    config = replica.config
    for provider in ("apns", "fcm"):
        config["apps"]["demo"][provider].pop("ca_file")
    replica.config_path.write_text(yaml.safe_dump(config))
    await replica.start()
    # Devices are registered straight through the API; sends must fail the handshake, never reach a peer.
    tokens = await register_devices(replica, 2)
    load = Load()
    load.ids = {"tls-i": tokens[0], "tls-a": tokens[1]}
    await publish(stack.bootstrap, stack.requests_topic, [request_for(r, t) for r, t in load.ids.items()])
    await wait_all_finished(stack, load, 60)
    acc = await account(stack, load)
    await replica.terminate()
    print(
        f"tls default: {acc.summary()} apns_requests={len(stack.apns.requests)} "
        f"fcm_requests={len(stack.fcm.requests)} fcm_token_requests={len(stack.fcm.token_requests)}"
    )
    assert stack.apns.requests == [] and stack.fcm.requests == [] and stack.fcm.token_requests == []
    assert acc.delivered == 0 and acc.lost == []
    # And there is no setting to turn verification off.
    for key in ("verify", "insecure", "verify_ssl", "tls_verify"):
        broken = yaml.safe_load(replica.config_path.read_text())
        broken["apps"]["demo"]["apns"][key] = False
        path = tmp_path / f"insecure-{key}.yaml"
        path.write_text(yaml.safe_dump(broken))
        with pytest.raises(ConfigError):
            load_settings(path, {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")})
