"""`pushsvc topics create` makes the three topics with the service's own Kafka settings, and is idempotent."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from aiokafka.admin import AIOKafkaAdminClient

from tests.conftest import unique
from tests.integration.stack import Stack


async def topics_create(stack: Stack, env: dict[str, str]) -> tuple[int, str, str]:
    stack.settings()  # writes the config file the CLI reads
    config = stack.tmp_path / "config-0.yaml"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pushsvc.cli", "topics", "create", "--config", str(config), "--partitions", "4",
        "--replication-factor", "1", env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode(), err.decode()


async def test_creates_what_is_missing_then_reports_it_exists(stack: Stack) -> None:
    names = {"REQUESTS_TOPIC": unique("t.requests"), "DLQ_TOPIC": unique("t.dlq"), "OUTCOMES_TOPIC": unique("t.out")}
    env = {f"PUSHSVC_KAFKA__{k}": v for k, v in names.items()}
    code, out, err = await topics_create(stack, env)
    assert code == 0, err
    assert json.loads(out) == {name: "created" for name in names.values()}
    code, out, err = await topics_create(stack, env)
    assert code == 0, err
    assert json.loads(out) == {name: "exists" for name in names.values()}

    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(names.values()))
    finally:
        await admin.close()
    partitions = {t["topic"]: len(t["partitions"]) for t in described}
    assert partitions == {names["REQUESTS_TOPIC"]: 4, names["DLQ_TOPIC"]: 1, names["OUTCOMES_TOPIC"]: 2}
