"""`pushsvc dev`: a whole local stack for trying pushsvc by hand.

Starts Tansu (Kafka protocol), nx-27017 (MongoDB protocol), the APNs, FCM, Huawei Push Kit and Web Push
simulators from tests/peers (TLS; they log every notification they receive, the Web Push one decrypted),
writes a config with fresh test credentials, and runs `pushsvc serve` against it. Must be run from a
checkout of the repository.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pushsvc.api.auth import hash_api_key
from pushsvc.dev.servers import ServerProcess, create_topics, free_port, nx27017, tansu, wait_for_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def _write_apns_key(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _write_service_account(path: Path, token_uri: str) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "dev-project",
                "private_key_id": secrets.token_hex(20),
                "private_key": pem,
                "client_email": "pushsvc-dev@dev-project.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": token_uri,
            }
        )
    )


def _peer(module: str, port: int, cert: Path, key: Path, log: Path) -> ServerProcess:
    return ServerProcess(
        module.rsplit(".", 1)[-1],
        port,
        [sys.executable, "-m", module, "--port", str(port), "--cert", str(cert), "--key", str(key)],
        log,
    )


def run_dev_stack(directory: str, http_port: int) -> int:
    if not (REPO_ROOT / "tests" / "peers").is_dir():
        print("pushsvc dev needs a checkout of the repository (it runs the simulators in tests/peers)")
        return 2
    sys.path.insert(0, str(REPO_ROOT))
    from tests.peers.tls import make_test_pki

    work = Path(directory).resolve()
    work.mkdir(parents=True, exist_ok=True)
    pki = make_test_pki(work / "pki")
    processes: list[ServerProcess] = []
    try:
        broker = tansu(work).start()
        processes.append(broker)
        mongo = nx27017(work).start()
        processes.append(mongo)
        bootstrap = f"127.0.0.1:{broker.port}"
        asyncio.run(create_topics(bootstrap, {"push.requests": 3, "push.requests.dlq": 1, "push.outcomes": 1}))
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "SSL_CERT_FILE": str(pki.bundle_file),
               "REQUESTS_CA_BUNDLE": str(pki.bundle_file)}
        apns = _peer("tests.peers.apns_peer", free_port(), pki.cert_file, pki.key_file, work / "apns-sim.log")
        fcm = _peer("tests.peers.fcm_peer", free_port(), pki.cert_file, pki.key_file, work / "fcm-sim.log")
        hms = _peer("tests.peers.hms_peer", free_port(), pki.cert_file, pki.key_file, work / "hms-sim.log")
        web = _peer("tests.peers.webpush_peer", free_port(), pki.cert_file, pki.key_file, work / "webpush-sim.log")
        # A browser's subscription at the simulator, for the walkthrough to register (written before it listens).
        web.command += ["--write-subscription", str(work / "web-subscription.json")]
        for peer in (apns, fcm, hms, web):
            peer.log_file.write_bytes(b"")
            peer.process = subprocess.Popen(peer.command, stdout=peer.log_file.open("ab"), stderr=subprocess.STDOUT,
                                            env=env, cwd=REPO_ROOT, start_new_session=True)
            wait_for_port(peer.port, 20, peer.process)
            processes.append(peer)
        # The registration a web app's backend would send for alice's browser (README "Try it locally").
        subscription = json.loads((work / "web-subscription.json").read_text())
        (work / "web-device.json").write_text(
            json.dumps({"app": "demo", "platform": "web", "user_id": "alice", "subscription": subscription})
        )
        _write_apns_key(work / "apns-key.p8")
        _write_apns_key(work / "vapid-key.pem")  # a VAPID key is the same kind of key: EC P-256, PEM
        (work / "hms-client-secret.txt").write_text(secrets.token_urlsafe(16) + "\n")
        _write_service_account(work / "fcm-service-account.json", f"https://127.0.0.1:{fcm.port}/token")
        api_key = secrets.token_urlsafe(24)
        config = {
            # Tansu holds a fetch for the whole wait, even when data arrives: keep it short (config.py).
            "kafka": {"bootstrap_servers": bootstrap, "fetch_max_wait_ms": 50},
            "mongodb": {"uri": f"mongodb://127.0.0.1:{mongo.port}", "database": "pushsvc"},
            "http": {"host": "127.0.0.1", "port": http_port},
            "apps": {
                "demo": {
                    "apns": {"topic": "com.example.demo", "environment": "sandbox",
                             "key_file": str(work / "apns-key.p8"), "key_id": "DEVKEY1234", "team_id": "DEVTEAM123",
                             "endpoint": f"https://127.0.0.1:{apns.port}", "ca_file": str(pki.ca_file)},
                    "fcm": {"service_account_file": str(work / "fcm-service-account.json"),
                            "endpoint": f"https://127.0.0.1:{fcm.port}", "ca_file": str(pki.ca_file)},
                    "hms": {"app_id": "100000001", "client_id": "100000001",
                            "client_secret_file": str(work / "hms-client-secret.txt"),
                            "endpoint": f"https://127.0.0.1:{hms.port}",
                            "token_url": f"https://127.0.0.1:{hms.port}/oauth2/v3/token", "ca_file": str(pki.ca_file)},
                    # The simulator is on this machine: the one host subscriptions may name although internal.
                    "webpush": {"vapid_private_key_file": str(work / "vapid-key.pem"),
                                "subject": "mailto:dev@example.com", "allowed_hosts": ["127.0.0.1"],
                                "ca_file": str(pki.ca_file)},
                }
            },
            "api_keys": [{"name": "dev", "hash": hash_api_key(api_key),
                          "scopes": ["devices:write", "notify", "campaigns", "read"], "apps": ["demo"]}],
        }
        config_file = work / "config.yaml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        (work / "api-key.txt").write_text(api_key + "\n")
        service = subprocess.Popen([sys.executable, "-m", "pushsvc.cli", "serve", "--config", str(config_file)],
                                   env=env, start_new_session=True)
        wait_for_port(http_port, 60, service)
        _print_banner(work, bootstrap, mongo.port, {"APNs": apns, "FCM": fcm, "HMS": hms, "Web Push": web}, http_port,
                      api_key)
        stop = {"requested": False}

        def request_stop(*_: object) -> None:
            stop["requested"] = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        while not stop["requested"] and service.poll() is None:
            time.sleep(0.2)
        if service.poll() is None:
            service.send_signal(signal.SIGTERM)
            service.wait(60)
        return service.returncode or 0
    finally:
        for process in reversed(processes):
            process.stop()


def _print_banner(work: Path, bootstrap: str, mongo_port: int, simulators: dict[str, ServerProcess],
                  http_port: int, api_key: str) -> None:
    lines = "\n".join(
        f"  {name + ' simulator':<20}https://127.0.0.1:{peer.port}   log: {peer.log_file}"
        for name, peer in simulators.items()
    )
    print(
        f"""
pushsvc dev stack is up (files in {work}; Ctrl-C stops everything)
  HTTP API        http://127.0.0.1:{http_port}   (API key: {api_key}, also in {work}/api-key.txt)
  Kafka (Tansu)   {bootstrap}   topics push.requests, push.requests.dlq, push.outcomes
  MongoDB (nx)    mongodb://127.0.0.1:{mongo_port}/pushsvc
{lines}

Try it (see README "Try it locally"):
  KEY=$(cat {work}/api-key.txt)
  curl -s -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \\
    -d '{{"app":"demo","token":"{"ab" * 32}","platform":"ios","user_id":"alice"}}' \\
    http://127.0.0.1:{http_port}/v1/devices
  curl -s -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \\
    -d '{{"id":"hello-1","app":"demo","target":{{"users":["alice"]}},"message":{{"title":"Hi","body":"there"}}}}' \\
    http://127.0.0.1:{http_port}/v1/notifications
  tail -f {work}/apns-sim.log
  # alice's browser too: the Web Push simulator decrypts what it receives
  curl -s -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \\
    -d @{work}/web-device.json http://127.0.0.1:{http_port}/v1/devices
  tail -f {work}/webpush-sim.log
""",
        flush=True,
    )
