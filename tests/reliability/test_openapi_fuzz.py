"""Fuzz the HTTP API from its own OpenAPI description (schemathesis): no input may cause a 5xx.

Runs the schemathesis CLI against a real `pushsvc serve`, authenticated with a key holding every scope,
both with valid-by-schema (positive) and schema-violating (negative) input.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.integration.stack import API_KEY, Stack
from tests.reliability.harness import Replica, register_devices

pytestmark = pytest.mark.integration


def schemathesis_cli() -> str | None:
    found = Path(sys.executable).with_name("schemathesis")
    return str(found) if found.is_file() else shutil.which("schemathesis")


@pytest.mark.timeout(200)
async def test_api_fuzzed_from_openapi_spec_never_answers_5xx(stack: Stack) -> None:
    cli = schemathesis_cli()
    if cli is None:
        pytest.skip("schemathesis is not installed (pip install schemathesis)")
    replica = await Replica(stack, "openapi-fuzz").start()
    async with aiohttp.ClientSession() as http, http.get(f"{replica.url}/openapi.json") as r:
        if r.status == 404:
            await replica.terminate()
            pytest.skip("the service does not serve /openapi.json yet")
        assert r.status == 200
        spec = await r.json()
    assert spec.get("openapi", "").startswith("3."), spec.get("openapi")
    await register_devices(replica, 4)  # something to find for the GET routes
    report = stack.tmp_path / "schemathesis.xml"
    process = await asyncio.create_subprocess_exec(
        cli,
        "run",
        f"{replica.url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "25",
        "--seed",
        "7",
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--suppress-health-check",
        "all",
        "-H",
        f"Authorization: Bearer {API_KEY}",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 180)
    text = out.decode(errors="replace")
    print(text[-3000:])
    assert replica.alive, replica.tail()
    await replica.terminate()
    assert not replica.events("api_unhandled_error"), replica.events("api_unhandled_error")[:3]
    assert process.returncode == 0, text[-6000:]
