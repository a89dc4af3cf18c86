"""One transient MongoDB error at the wrong moment must never turn into a resend or a wrong count.

A real `pushsvc serve` process reaches a dedicated nx-27017 through the fault proxy, which resets the
connection carrying one chosen write: before the server sees it ("request": the write never happened) or
as its answer comes back ("reply": applied, answer lost — the case a retry must recognise). Seen by the
review: one AutoReconnect during a lease renewal sent a 20-device chunk twice, and one failed batch finish
sent 10 of 10 notifications again.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from tests.integration.stack import Stack, wait_until
from tests.reliability.faultproxy import ProxiedServer
from tests.reliability.harness import FINISHED, outcome_ids, padded_tokens, proxied_replica, register_tagged

pytestmark = pytest.mark.integration


def alert(request_id: str, target: dict) -> dict:
    return {"id": request_id, "app": "demo", "target": target, "message": {"title": "t", "body": "b"}}


async def finished(stack: Stack, ids: list[str], timeout: float = 60) -> list[dict]:
    async def all_final() -> list[dict] | None:
        docs = [await stack.notification(i) for i in ids]
        return docs if all(d and d["state"] in FINISHED for d in docs) else None

    return await wait_until(all_final, timeout=timeout, interval=0.2)


def sends(stack: Stack) -> Counter[str]:
    return Counter(r.token for r in stack.apns.requests)


def renewal(data: bytes) -> bool:
    """A lease renewal: an update of lease_until that is not a claim (a claim also writes "dispatching")."""
    return b"update" in data and b"lease_until" in data and b"dispatching" not in data


def progress(data: bytes) -> bool:
    """A fan-out's progress write after a chunk: cursor and counts in one findAndModify."""
    return b"findAndModify" in data and b"cursor" in data and b"counts." in data


def batch_finish(data: bytes) -> bool:
    """The batch lane's bulk finish: final states with event_pending."""
    return b"update" in data and b"event_pending" in data and b"updates" in data


@pytest.mark.timeout(120)
@pytest.mark.parametrize("when", ["request", "reply"])
async def test_a_renewal_failing_once_neither_stops_nor_repeats_the_chunk(
    stack: Stack, mongo: ProxiedServer, when: str
) -> None:
    # A 3 s lease is renewed every second; the chunk of 20 is answered after 2.5 s, so renewals fall in it.
    serve = await proxied_replica(stack, mongo, lease_seconds=3.0, send_timeout_seconds=2.9, chunk_size=50).start()
    try:
        devices = padded_tokens("r1", 20, "d")
        await register_tagged(serve, devices, "renewal")
        stack.apns.set_default(delay=2.5)
        await stack.publish(alert("renewed", {"segment": {"tags_any": ["renewal"]}}))
        await stack.apns.wait_for_requests(1, timeout=20)
        trap = mongo.proxy.trap(renewal, when=when)  # type: ignore[arg-type]
        (doc,) = await finished(stack, ["renewed"])
        await asyncio.sleep(1.0)  # a repeat would be on its way by now
        assert trap.sprung == 1, "no renewal came while the chunk was in flight"
        assert doc["state"] == "done" and doc["counts"]["delivered"] == 20 and doc["counts"]["targeted"] == 20
        assert set(sends(stack).values()) == {1}, "a device received the push twice"
        assert serve.events("lease_lost") == [] and serve.events("lease_lapsed") == []
    finally:
        await serve.terminate()


@pytest.mark.timeout(120)
async def test_a_renewal_hanging_on_its_connection_is_retried_on_another_before_the_lease_lapses(
    stack: Stack, mongo: ProxiedServer
) -> None:
    """The connection carrying a renewal goes silent and stays open (half-open, blackholed). One attempt is
    abandoned after a quarter of the lease and retried on another connection: the lease never lapses. Before,
    the attempt waited for all that was left of the lease and the lease lapsed (seen in the fault checker)."""
    serve = await proxied_replica(stack, mongo, lease_seconds=3.0, send_timeout_seconds=2.9, chunk_size=50).start()
    try:
        devices = padded_tokens("h1", 20, "d")
        await register_tagged(serve, devices, "hanging")
        stack.apns.set_default(delay=2.5)
        await stack.publish(alert("hung", {"segment": {"tags_any": ["hanging"]}}))
        await stack.apns.wait_for_requests(1, timeout=20)
        trap = mongo.proxy.trap(renewal, when="hang")
        (doc,) = await finished(stack, ["hung"])
        await asyncio.sleep(1.0)  # a repeat would be on its way by now
        assert trap.sprung == 1, "no renewal came while the chunk was in flight"
        assert doc["state"] == "done" and doc["counts"]["delivered"] == 20 and doc["counts"]["targeted"] == 20
        assert set(sends(stack).values()) == {1}, "a device received the push twice"
        assert serve.events("lease_lapsed") == [] and serve.events("lease_lost") == []
        assert serve.events("lease_renewal_retry"), "the hung renewal was not retried"
    finally:
        mongo.proxy.heal()
        await serve.terminate()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("when", ["request", "reply"])
async def test_a_progress_write_failing_once_is_retried_not_resent_and_counts_once(
    stack: Stack, mongo: ProxiedServer, when: str
) -> None:
    serve = await proxied_replica(stack, mongo, lease_seconds=10.0, chunk_size=10).start()
    try:
        devices = padded_tokens("p1", 40, "d")
        await register_tagged(serve, devices, "progress")
        stack.apns.set_default(delay=0.3)
        trap = mongo.proxy.trap(progress, when=when)  # type: ignore[arg-type]
        await stack.publish(alert("progressed", {"segment": {"tags_any": ["progress"]}}))
        (doc,) = await finished(stack, ["progressed"])
        await asyncio.sleep(1.0)
        assert trap.sprung == 1
        assert doc["state"] == "done", doc
        assert doc["counts"]["targeted"] == 40 and doc["counts"]["delivered"] == 40, doc["counts"]
        assert set(sends(stack).values()) == {1} and len(sends(stack)) == 40
    finally:
        await serve.terminate()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("when", ["request", "reply"])
async def test_a_batch_finish_failing_once_sends_nothing_again_and_announces_each_once(
    stack: Stack, mongo: ProxiedServer, when: str
) -> None:
    serve = await proxied_replica(stack, mongo, lease_seconds=6.0).start()
    try:
        devices = padded_tokens("b1", 10, "d")
        await register_tagged(serve, devices, "batch")
        for token in devices[5:]:  # half finish in a later round than the first bulk finish
            stack.apns.script(token, delay=1.5)
        trap = mongo.proxy.trap(batch_finish, when=when)  # type: ignore[arg-type]
        ids = [f"txn-{n}" for n in range(10)]
        await stack.publish(*(alert(i, {"tokens": [t]}) for i, t in zip(ids, devices, strict=True)))
        docs = await finished(stack, ids)
        await asyncio.sleep(1.0)
        assert trap.sprung == 1
        assert all(d["state"] == "done" and d["counts"]["delivered"] == 1 for d in docs), docs
        assert set(sends(stack).values()) == {1} and len(sends(stack)) == 10
        events = await outcome_ids(stack)
        assert {i: events[i] for i in ids} == dict.fromkeys(ids, 1), events
    finally:
        await serve.terminate()


def claimed_insert(data: bytes) -> bool:
    """Intake's insert of due-now requests recorded already held by the replica (direct dispatch)."""
    return b"insert" in data and b"notifications" in data and b"dispatching" in data


@pytest.mark.timeout(120)
@pytest.mark.parametrize("when", ["request", "reply"])
async def test_an_insert_of_held_requests_failing_once_sends_each_once_without_waiting_for_the_lease(
    stack: Stack, mongo: ProxiedServer, when: str
) -> None:
    """Intake records a due-now request already held by its replica. If that insert fails ("reply": written,
    answer lost), Kafka redelivers the batch and the written requests come back as duplicates, held by a
    claim nobody runs: they must be released at once and sent once, not left for the 30 s lease."""
    serve = await proxied_replica(stack, mongo, lease_seconds=30.0, poll_interval_seconds=2.0).start()
    try:
        devices = padded_tokens("i1", 8, "d")
        await register_tagged(serve, devices, "intake")
        trap = mongo.proxy.trap(claimed_insert, when=when)  # type: ignore[arg-type]
        ids = [f"held-{n}" for n in range(8)]
        published = asyncio.get_running_loop().time()
        await stack.publish(*(alert(i, {"tokens": [t]}) for i, t in zip(ids, devices, strict=True)))
        docs = await finished(stack, ids, timeout=25)
        took = asyncio.get_running_loop().time() - published
        assert trap.sprung == 1
        assert took < 15, f"took {took:.1f}s: the held requests waited for their lease to expire"
        assert all(d["state"] == "done" and d["counts"]["delivered"] == 1 for d in docs), docs
        await asyncio.sleep(1.0)
        assert set(sends(stack).values()) == {1} and len(sends(stack)) == 8, sends(stack)
    finally:
        await serve.terminate()


def device_read(data: bytes) -> bool:
    """A read of the devices a batch targets (`ChunkWorker.first_chunks`)."""
    return b"find" in data and b"devices" in data and b"token" in data


@pytest.mark.timeout(120)
@pytest.mark.parametrize("when", ["request", "reply"])
async def test_a_batch_device_read_failing_once_is_read_again_and_each_is_sent_once(
    stack: Stack, mongo: ProxiedServer, when: str
) -> None:
    """The devices of a whole batch are read together: one reset on that read must neither drop the batch's
    notifications (to a lease expiry) nor count a device twice."""
    serve = await proxied_replica(stack, mongo, lease_seconds=30.0).start()
    try:
        devices = padded_tokens("g1", 8, "d")
        await register_tagged(serve, devices, "read")
        trap = mongo.proxy.trap(device_read, when=when)  # type: ignore[arg-type]
        ids = [f"read-{n}" for n in range(8)]
        published = asyncio.get_running_loop().time()
        await stack.publish(*(alert(i, {"tokens": [t]}) for i, t in zip(ids, devices, strict=True)))
        docs = await finished(stack, ids, timeout=25)
        took = asyncio.get_running_loop().time() - published
        assert trap.sprung == 1
        assert took < 15, f"took {took:.1f}s: a notification waited for its lease to expire"
        assert all(d["state"] == "done" and d["counts"] == {**d["counts"], "targeted": 1, "delivered": 1}
                   for d in docs), docs
        await asyncio.sleep(1.0)
        assert set(sends(stack).values()) == {1} and len(sends(stack)) == 8, sends(stack)
    finally:
        await serve.terminate()


def announcement(data: bytes) -> bool:
    """Clearing event_pending once the outcome events are acknowledged (not a finish, which also writes it)."""
    return b"update" in data and b"event_pending" in data and b"$in" in data and b"released_claim" not in data


@pytest.mark.timeout(120)
async def test_a_failed_announcement_cancels_nothing_and_the_sweep_repeats_it(
    stack: Stack, mongo: ProxiedServer
) -> None:
    """Marking outcome events published is best effort: when it fails, the rest of the batch goes on and the
    sweep publishes the events again (at-least-once). It used to end the batch run and cancel its sends."""
    serve = await proxied_replica(stack, mongo, lease_seconds=6.0, outcome_sweep_grace_seconds=1.0).start()
    try:
        devices = padded_tokens("m1", 10, "d")
        await register_tagged(serve, devices, "announce")
        for token in devices[5:]:
            stack.apns.script(token, delay=1.5)
        trap = mongo.proxy.trap(announcement, when="request")
        ids = [f"ann-{n}" for n in range(10)]
        await stack.publish(*(alert(i, {"tokens": [t]}) for i, t in zip(ids, devices, strict=True)))
        docs = await finished(stack, ids)
        assert trap.sprung == 1
        assert all(d["state"] == "done" and d["counts"]["delivered"] == 1 for d in docs), docs

        async def all_announced() -> bool:
            docs = [await stack.notification(i) for i in ids]
            return all(d is not None and not d.get("event_pending") for d in docs)

        await wait_until(all_announced, timeout=30, interval=0.5)
        assert set(sends(stack).values()) == {1} and len(sends(stack)) == 10
        events = await outcome_ids(stack)
        assert all(events[i] >= 1 for i in ids), events
    finally:
        await serve.terminate()
