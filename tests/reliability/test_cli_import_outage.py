"""`pushsvc devices import` against a MongoDB that connects, takes some rows, then stops answering.

A terminal user must get one line within the configured socket timeout (not a hang for as long as TCP keeps
the connection), saying how many devices were stored before it and that importing again is safe; and the
rerun, once MongoDB answers again, must leave every row stored once.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest
import yaml
from pymongo import AsyncMongoClient

from tests.reliability.faultproxy import proxied_nx27017
from tests.unit.credential_files import apns_key
from tests.unit.test_cli_manners import STARTUP_SLACK_SECONDS, closed_port, pushsvc_command

pytestmark = pytest.mark.integration

ROWS = 6000
SOCKET_TIMEOUT_MS = 2000


def write_rows(path: Path) -> None:
    with path.open("w") as rows:
        for n in range(ROWS):
            rows.write(json.dumps({"app": "demo", "token": f"{n:064x}", "platform": "ios", "user_id": f"u{n}"}))
            rows.write("\n")


def write_config(path: Path, mongo_address: str) -> Path:
    config = {
        "kafka": {"bootstrap_servers": f"127.0.0.1:{closed_port()}"},
        "mongodb": {"uri": f"mongodb://{mongo_address}", "socket_timeout_ms": SOCKET_TIMEOUT_MS},
        "apps": {"demo": {"apns": {"topic": "com.example.demo", "key_file": str(apns_key(path / "key.p8")),
                                   "key_id": "KEYID12345", "team_id": "TEAMID1234"}}},
    }
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    return path / "config.yaml"


async def run_import(config: Path, rows: Path) -> asyncio.subprocess.Process:
    clean = {name: value for name, value in os.environ.items() if not name.startswith("PUSHSVC_")}
    return await asyncio.create_subprocess_exec(
        *pushsvc_command(), "devices", "import", str(rows), "--config", str(config),
        env=clean, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


@pytest.mark.timeout(180)
async def test_a_mongodb_that_goes_silent_mid_import_fails_in_one_line_and_the_rerun_completes(
    tmp_path: Path,
) -> None:
    rows = tmp_path / "devices.jsonl"
    write_rows(rows)
    async with proxied_nx27017(tmp_path / "nx") as mongo:
        config = write_config(tmp_path, mongo.address)
        direct = AsyncMongoClient(f"mongodb://{mongo.direct_address}")
        devices = direct.get_default_database("pushsvc").devices
        try:
            process = await run_import(config, rows)
            deadline = time.monotonic() + 60
            while await devices.count_documents({}) == 0:  # connected and storing
                assert time.monotonic() < deadline and process.returncode is None, "the import never began"
                await asyncio.sleep(0.05)
            mongo.proxy.blackhole()  # every connection, open or new: nothing flows, nothing is closed
            silenced = time.monotonic()
            stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
            waited = time.monotonic() - silenced
            stored = await devices.count_documents({})

            assert process.returncode == 2, stderr.decode()
            lines = stderr.decode().splitlines()
            assert len(lines) == 1 and "Traceback" not in lines[0], stderr.decode()
            assert stdout == b""
            line = lines[0]
            lost = f"pushsvc devices import: lost the connection to MongoDB at mongodb://{mongo.address} ("
            assert line.startswith(lost), line
            assert f"no answer within {SOCKET_TIMEOUT_MS // 1000} s" in line, line
            # What the line says was stored, was (the batch in flight may have landed too, unacknowledged).
            said = int(line.split(" devices were imported before it")[0].rsplit("(", 1)[1])
            assert 0 < said <= stored < ROWS, (said, stored, line)
            assert "importing again is safe" in line
            # The socket timeout (per batch in flight) bounds it, not TCP's minutes.
            assert waited < SOCKET_TIMEOUT_MS / 1000 * 2 + STARTUP_SLACK_SECONDS, waited

            mongo.proxy.heal()
            rerun = await run_import(config, rows)
            stdout, stderr = await asyncio.wait_for(rerun.communicate(), 120)
            assert rerun.returncode == 0, stderr.decode()
            summary = json.loads(stdout)
            assert summary["rows"] == ROWS and summary["imported"] == ROWS and summary["errors"] == 0, summary
            # Updates: what was stored before, and the batch the blackhole held, delivered once healed.
            assert summary["inserted"] + summary["updated"] == ROWS and summary["inserted"] <= ROWS - said, summary
            assert await devices.count_documents({}) == ROWS
        finally:
            await direct.close()
