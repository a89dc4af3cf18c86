"""Each simulator as `pushsvc dev` runs it (``python -m pushsvc.simulators.<name> --port --cert --key``): it says
it listens once the port is open, answers there over TLS, writes the files its flags ask for first, and Ctrl-C
stops it quietly. (The APNs one's log lines are checked in test_apns_adapter.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pushsvc.simulators.tls import TestPki as Pki

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.asynccontextmanager
async def running(name: str, port: int, pki: Pki, *extra: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """The simulator's process (SIGINT ignored, the hardest start for Ctrl-C), killed at the end if the test
    did not stop it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"pushsvc.simulators.{name}", "--port", str(port),
        "--cert", str(pki.cert_file), "--key", str(pki.key_file), *extra,
        cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        # Started with SIGINT ignored, as a shell without job control (a CI job) starts background commands:
        # Ctrl-C must stop it all the same, wherever the tests run.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def handshake(port: int, pki: Pki) -> str | None:
    """The protocol the simulator picks by ALPN, offered both; the connection must verify with the test CA."""
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    context.set_alpn_protocols(["h2", "http/1.1"])
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    protocol = writer.get_extra_info("ssl_object").selected_alpn_protocol()
    writer.close()
    return protocol


async def interrupt(process: asyncio.subprocess.Process) -> tuple[int | None, bytes]:
    """Ctrl-C, then the exit code and what was left on stderr."""
    process.send_signal(signal.SIGINT)
    async with asyncio.timeout(15):
        _, stderr = await process.communicate()
    return process.returncode, stderr


@pytest.mark.parametrize("name", ["fcm", "hms"])
async def test_fcm_and_hms_say_on_stderr_that_they_listen_and_stop_on_ctrl_c(name: str, pki: Pki) -> None:
    port = free_port()
    async with running(name, port, pki) as process:
        assert process.stderr is not None
        async with asyncio.timeout(15):
            said = (await process.stderr.readline()).decode()
        assert said.startswith(f"{name.upper()} peer listening on https://127.0.0.1:{port} (h2 + http/1.1)")
        assert await handshake(port, pki) == "h2"
        code, stderr = await interrupt(process)
    assert code == 0 and b"Traceback" not in stderr


async def test_fcm_writes_a_service_account_whose_token_uri_points_at_it(pki: Pki, tmp_path: Path) -> None:
    port, account = free_port(), tmp_path / "sa.json"
    async with running("fcm", port, pki, "--write-service-account", str(account), "--project", "p1") as process:
        assert process.stderr is not None
        async with asyncio.timeout(15):
            assert (await process.stderr.readline()).decode() == f"service account written to {account}\n"
            assert b"FCM peer listening" in await process.stderr.readline()
    written = json.loads(account.read_text())
    assert (written["project_id"], written["token_uri"]) == ("p1", f"https://127.0.0.1:{port}/token")


async def test_webpush_writes_its_subscription_before_it_listens(pki: Pki, tmp_path: Path) -> None:
    port, subscription = free_port(), tmp_path / "web-subscription.json"
    async with running("webpush", port, pki, "--write-subscription", str(subscription)) as process:
        assert process.stdout is not None
        async with asyncio.timeout(15):
            lines = [json.loads(await process.stdout.readline()) for _ in range(2)]
        assert lines == [
            {"event": "webpush_subscription_written", "file": str(subscription)},
            {"event": "webpush_peer_listening", "endpoint": f"https://127.0.0.1:{port}"},
        ]
        assert json.loads(subscription.read_text())["endpoint"].startswith(f"https://127.0.0.1:{port}/push/")
        assert await handshake(port, pki) == "http/1.1"
        code, stderr = await interrupt(process)
    assert code == 0 and b"Traceback" not in stderr
