"""`pushsvc dev`: a whole local stack for trying pushsvc by hand.

Starts Tansu (Kafka protocol), nx-27017 (MongoDB protocol), the APNs, FCM, Huawei Push Kit and Web Push
simulators of pushsvc.simulators (TLS; they log every notification they receive, the Web Push one decrypted),
writes a config with fresh test credentials, and runs `pushsvc serve` against it. Every port it will bind is
checked before anything starts: a busy one is one line on stderr and exit code 2. Tansu and nx-27017 come with
the dev extra (pip install -e '.[dev]', which `make dev` does).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pushsvc.api.auth import hash_api_key
from pushsvc.dev.servers import (
    ServerFailed,
    ServerProcess,
    create_topics,
    free_ports,
    nx27017,
    port_unavailable,
    stop_process,
    tansu,
    wait_for_port,
)
from pushsvc.simulators.tls import TestPki, make_test_pki

TOPICS = {"push.requests": 3, "push.requests.dlq": 1, "push.outcomes": 1}
# Module of pushsvc.simulators -> the provider's name in messages and the banner.
SIMULATORS = {"apns": "APNs", "fcm": "FCM", "hms": "HMS", "webpush": "Web Push"}
EXIT_PORT_BUSY = 2
EXIT_START_FAILED = 1
EXIT_INTERRUPTED = 130  # the shell's code for SIGINT: stopped while starting


@dataclass(frozen=True)
class DevPorts:
    """Every port the stack listens on, chosen before anything starts. Metrics are served on the HTTP port."""

    http: int
    kafka: int
    mongodb: int
    simulators: dict[str, int]  # module of pushsvc.simulators -> port

    @classmethod
    def choose(cls, http_port: int) -> DevPorts:
        kafka, mongodb, *rest = free_ports(2 + len(SIMULATORS), exclude={http_port})
        return cls(http_port, kafka, mongodb, dict(zip(SIMULATORS, rest, strict=True)))

    def problem(self) -> str | None:
        """One line naming the first port that cannot be listened on, what wanted it and what to do; or None."""
        alternative = self.http + 1 if 0 < self.http < 65535 else 8081
        http_advice = f"choose another: make dev HTTP_PORT={alternative} (or pushsvc dev --http-port {alternative})"
        # The others were free a moment ago (free_ports); something took one since: a new run picks new ones.
        again = "run it again: the other ports are picked afresh each run"
        wanted = [(self.http, "the HTTP API and /metrics", http_advice), (self.kafka, "Kafka (Tansu)", again),
                  (self.mongodb, "MongoDB (nx-27017)", again)]
        wanted += [(port, f"the {SIMULATORS[name]} simulator", again) for name, port in self.simulators.items()]
        for port, what, advice in wanted:
            reason = port_unavailable(port)
            if reason is not None:
                return f"pushsvc dev: port {port} for {what} is {reason}; {advice}"
        return None


@dataclass
class DevStack:
    """The servers pushsvc talks to, once they listen."""

    work: Path
    ports: DevPorts
    pki: TestPki
    simulators: dict[str, ServerProcess]  # module of pushsvc.simulators -> its process

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports.kafka}"


def run_dev_stack(directory: str, http_port: int) -> int:
    """Check the ports, start the stack, serve until Ctrl-C or SIGTERM, stop everything; the exit code."""
    ports = DevPorts.choose(http_port)
    problem = ports.problem()
    if problem is not None:
        print(problem, file=sys.stderr)
        return EXIT_PORT_BUSY
    work = Path(directory).resolve()
    work.mkdir(parents=True, exist_ok=True)
    # Ctrl-C and SIGTERM stop through the cleanup below, not leaving servers behind; SIGINT set explicitly because
    # a shell without job control starts background commands with it ignored.
    previous = {signum: signal.signal(signum, _interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    running = contextlib.ExitStack()  # each process started registers its stop; closed in reverse order
    try:
        stack = _start_servers(work, ports, running)
        api_key = secrets.token_urlsafe(24)
        config_file = _write_dev_files(stack, api_key)
        service = _start_service(config_file, stack.pki, http_port, running)
        _print_banner(stack, api_key)
        return _serve_until_stopped(service)
    except (ServerFailed, TimeoutError) as failed:
        print(f"pushsvc dev: {failed} (logs in {work})", file=sys.stderr)
        return EXIT_START_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        _ignore_interrupts()  # a second Ctrl-C must not cut the cleanup short and leave servers running
        running.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _start_servers(work: Path, ports: DevPorts, running: contextlib.ExitStack) -> DevStack:
    """Broker with its topics, MongoDB, and the four provider simulators behind a fresh test CA."""
    pki = make_test_pki(work / "pki")
    _launch(tansu(work, ports.kafka), running)
    _launch(nx27017(work, ports.mongodb), running)
    asyncio.run(create_topics(f"127.0.0.1:{ports.kafka}", TOPICS))
    simulators: dict[str, ServerProcess] = {}
    for name, port in ports.simulators.items():
        command = [sys.executable, "-m", f"pushsvc.simulators.{name}", "--port", str(port),
                   "--cert", str(pki.cert_file), "--key", str(pki.key_file)]
        if name == "webpush":
            # A browser's subscription at the simulator, for the walkthrough to register (written before it listens).
            command += ["--write-subscription", str(work / "web-subscription.json")]
        simulator = ServerProcess(name, port, command, work / f"{name}-sim.log")
        simulator.log_file.write_bytes(b"")  # this run's log only
        simulators[name] = _launch(simulator, running)
    return DevStack(work, ports, pki, simulators)


def _launch(server: ServerProcess, running: contextlib.ExitStack) -> ServerProcess:
    # Registered before it starts: one that hangs before listening is stopped too.
    running.callback(server.stop)
    return server.start(timeout=20)


def _write_dev_files(stack: DevStack, api_key: str) -> Path:
    """Credentials, the walkthrough's device and config.yaml in the work directory; returns the config file."""
    work = stack.work
    # The registration a web app's backend would send for alice's browser (README "Try it locally").
    subscription = json.loads((work / "web-subscription.json").read_text())
    (work / "web-device.json").write_text(
        json.dumps({"app": "demo", "platform": "web", "user_id": "alice", "subscription": subscription})
    )
    _write_apns_key(work / "apns-key.p8")
    _write_apns_key(work / "vapid-key.pem")  # a VAPID key is the same kind of key: EC P-256, PEM
    (work / "hms-client-secret.txt").write_text(secrets.token_urlsafe(16) + "\n")
    fcm_port = stack.ports.simulators["fcm"]
    _write_service_account(work / "fcm-service-account.json", f"https://127.0.0.1:{fcm_port}/token")
    config_file = work / "config.yaml"
    config_file.write_text(yaml.safe_dump(_dev_config(stack, api_key), sort_keys=False))
    (work / "api-key.txt").write_text(api_key + "\n")
    return config_file


def _dev_config(stack: DevStack, api_key: str) -> dict[str, Any]:
    work, ca_file, sim = stack.work, str(stack.pki.ca_file), stack.ports.simulators
    return {
        # Tansu holds a fetch for the whole wait, even when data arrives: keep it short (config.py).
        "kafka": {"bootstrap_servers": stack.bootstrap, "fetch_max_wait_ms": 50},
        "mongodb": {"uri": f"mongodb://127.0.0.1:{stack.ports.mongodb}", "database": "pushsvc"},
        "http": {"host": "127.0.0.1", "port": stack.ports.http},
        "apps": {
            "demo": {
                "apns": {"topic": "com.example.demo", "environment": "sandbox",
                         "key_file": str(work / "apns-key.p8"), "key_id": "DEVKEY1234", "team_id": "DEVTEAM123",
                         "endpoint": f"https://127.0.0.1:{sim['apns']}", "ca_file": ca_file},
                "fcm": {"service_account_file": str(work / "fcm-service-account.json"),
                        "endpoint": f"https://127.0.0.1:{sim['fcm']}", "ca_file": ca_file},
                "hms": {"app_id": "100000001", "client_id": "100000001",
                        "client_secret_file": str(work / "hms-client-secret.txt"),
                        "endpoint": f"https://127.0.0.1:{sim['hms']}",
                        "token_url": f"https://127.0.0.1:{sim['hms']}/oauth2/v3/token", "ca_file": ca_file},
                # The simulator is on this machine: the one host subscriptions may name although internal.
                "webpush": {"vapid_private_key_file": str(work / "vapid-key.pem"),
                            "subject": "mailto:dev@example.com", "allowed_hosts": ["127.0.0.1"],
                            "ca_file": ca_file},
            }
        },
        "api_keys": [{"name": "dev", "hash": hash_api_key(api_key),
                      "scopes": ["devices:write", "notify", "campaigns", "read", "receipts"], "apps": ["demo"]}],
    }


def _start_service(config_file: Path, pki: TestPki, http_port: int, running: contextlib.ExitStack) -> subprocess.Popen:
    """`pushsvc serve` on the dev config, its log on this terminal; returns once it listens."""
    # google-auth fetches FCM tokens with requests, which trusts REQUESTS_CA_BUNDLE, not the config's ca_file.
    env = {**os.environ, "SSL_CERT_FILE": str(pki.bundle_file), "REQUESTS_CA_BUNDLE": str(pki.bundle_file)}
    service = subprocess.Popen([sys.executable, "-m", "pushsvc.cli", "serve", "--config", str(config_file)],
                               env=env, start_new_session=True)
    running.callback(stop_process, service, 60)  # a graceful stop finishes the sends in flight
    wait_for_port(http_port, 60, service)
    return service


def _serve_until_stopped(service: subprocess.Popen) -> int:
    """Wait for Ctrl-C or SIGTERM (then stop the service gracefully) or for the service to exit."""
    try:
        while service.poll() is None:
            time.sleep(0.2)
    except KeyboardInterrupt:
        _ignore_interrupts()
        stop_process(service, 60)
    return service.returncode or 0


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _ignore_interrupts() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


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


def _print_banner(stack: DevStack, api_key: str) -> None:
    work, http_port = stack.work, stack.ports.http
    lines = "\n".join(
        f"  {SIMULATORS[name] + ' simulator':<20}https://127.0.0.1:{sim.port}   log: {sim.log_file}"
        for name, sim in stack.simulators.items()
    )
    print(
        f"""
pushsvc dev stack is up (files in {work}; Ctrl-C stops everything)
  HTTP API        http://127.0.0.1:{http_port}   (API key: {api_key}, also in {work}/api-key.txt)
  Kafka (Tansu)   {stack.bootstrap}   topics {", ".join(TOPICS)}
  MongoDB (nx)    mongodb://127.0.0.1:{stack.ports.mongodb}/pushsvc
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
