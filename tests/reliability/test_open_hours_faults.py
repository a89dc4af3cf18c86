"""Open hours (best-time delivery's state) against one transient MongoDB error on their own write: an open is
kept at most once, and exactly once when the write reached the server.

A real `pushsvc serve` reaches nx-27017 through the fault proxy, which resets the connection carrying the
versioned write of `open_hours` documents (store/open_hours.py): before the server sees it ("request": nothing
written; PyMongo may retry it once, or the opens are lost and logged `open_hours_lost`) or as its answer comes
back ("reply": written, answer lost; a retry finds its own version and must not add the opens again).
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from pushsvc.store.caps import user_key
from tests.integration.stack import API_KEY, Stack
from tests.reliability.faultproxy import ProxiedServer
from tests.reliability.harness import padded_tokens, proxied_replica

pytestmark = pytest.mark.integration

USERS = ["ua", "ub", "uc"]


def open_hours_write(data: bytes) -> bool:
    """The versioned write of users' recorded opens."""
    return (b"insert" in data or b"update" in data) and b"open_hours" in data and b"opens" in data


async def post(http: aiohttp.ClientSession, url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(f"{url}{path}", json=body) as response:
        assert response.status in (200, 201), await response.text()
        return await response.json()


async def opens_of(stack: Stack, user: str) -> list[list[Any]]:
    doc = await stack.db.open_hours.find_one({"_id": {"$eq": user_key("demo", f"u:{user}")}})
    return [] if doc is None else doc["opens"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("when", ["request", "reply"])
async def test_an_open_hours_write_failing_once_keeps_each_open_at_most_once(
    stack: Stack, mongo: ProxiedServer, when: str
) -> None:
    serve = proxied_replica(stack, mongo)
    await serve.start()
    try:
        tokens = padded_tokens("0b", len(USERS), "e")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
            for user, token in zip(USERS, tokens, strict=True):
                await post(http, serve.url, "/v1/devices", {"app": "demo", "token": token, "platform": "ios",
                                                            "user_id": user})
            seeds = [f"seed-{when}-{i}" for i in range(4)]
            for request_id in seeds:  # dry runs: notifications for receipts to name, nothing sent
                await post(http, serve.url, "/v1/notifications", {
                    "id": request_id, "app": "demo", "target": {"tokens": tokens}, "message": {"title": "x"},
                    "options": {"dry_run": True}})

            def batch(ids: list[str]) -> dict[str, Any]:
                at = datetime.now(UTC).isoformat()  # after the seeds were created (the rule for receipts)
                return {"app": "demo", "receipts": [
                    {"notification_id": n, "user_id": u, "event": "opened", "at": at} for n in ids for u in USERS]}

            trap = mongo.proxy.trap(open_hours_write, when=when)  # type: ignore[arg-type]
            answer = await post(http, serve.url, "/v1/receipts", batch(seeds[:2]))
            assert trap.sprung == 1, "the open hours' write never went through the proxy"
            assert answer["counts"]["recorded"] == 2 * len(USERS), answer
            first = {u: await opens_of(stack, u) for u in USERS}
            for user, opens in first.items():
                ids = Counter(o[2] for o in opens)
                assert all(n == 1 for n in ids.values()), (user, opens)  # never twice
                # Written (the reply was lost, or the request retried): exactly both; else both lost, logged.
                assert len(opens) == 2 or (when == "request" and not opens), (user, opens)
            if when == "reply":
                assert all(len(opens) == 2 for opens in first.values()), first

            # The same batch again: duplicates, nothing added; new opens: added once each.
            again = await post(http, serve.url, "/v1/receipts", batch(seeds[:2]))
            assert again["counts"]["duplicate"] == 2 * len(USERS), again
            await post(http, serve.url, "/v1/receipts", batch(seeds[2:]))
            for user in USERS:
                opens = await opens_of(stack, user)
                assert len(opens) == len(first[user]) + 2 and len({o[2] for o in opens}) == len(opens), opens
    finally:
        await serve.terminate()
