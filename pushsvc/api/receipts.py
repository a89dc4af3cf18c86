"""Receipts over HTTP: an app's mobile backend reports pushes its devices received and users opened.

`POST /v1/receipts` (scope `receipts`). The batch is validated whole (400 naming the field, nothing recorded);
each valid item then ends in one outcome, answered in order and counted in `pushsvc_receipts_total`:
recorded (new: stored, counted in its notification's funnel, announced on `push.outcomes`), duplicate
(recorded before: a retried batch counts nothing twice), unknown_notification or unknown_device (counted and
dropped: nothing is stored for a notification or device the app does not have, so receipts cannot grow the
database without bound).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from pushsvc import metrics
from pushsvc.api.auth import permit, require
from pushsvc.api.context import CLOCK, KNOWN_APPS, RECEIPT_EVENTS, RECEIPT_STORE
from pushsvc.api.validation import json_body
from pushsvc.ingest.receipts import OPENED, RECEIVED, Receipt, check_not_before, parse_receipts
from pushsvc.logs import get_logger
from pushsvc.metrics import RECEIPT_OUTCOMES
from pushsvc.outcomes import ReceiptEvent
from pushsvc.store.receipts import NewReceipt, NotificationRef, ReceiptStore, receipt_key

log = get_logger(__name__)
routes = web.RouteTableDef()

RECORDED, DUPLICATE, UNKNOWN_NOTIFICATION, UNKNOWN_DEVICE = RECEIPT_OUTCOMES
# How long an answer waits for the broker to acknowledge the batch's receipt events: the API's bound on MongoDB
# (http.store_timeout_ms) does not cover Kafka, and a broker outage must not hold a mobile backend's request.
# Events not acknowledged by then may still go out (they are queued in the producer), or be lost.
EVENTS_WAIT_SECONDS = 2.0


@dataclass(frozen=True)
class Resolved:
    """A valid item of the batch and what it names, or the outcome that drops it."""

    receipt: Receipt
    outcome: str | None  # UNKNOWN_NOTIFICATION, UNKNOWN_DEVICE, or None: to be recorded
    new: NewReceipt | None = None


def _device(receipt: Receipt) -> str:
    """The device part of the idempotency key: a token, or a user (counted once per user, whatever devices)."""
    return f"t:{receipt.token}" if receipt.token is not None else f"u:{receipt.user_id}"


@routes.post("/v1/receipts")
@require("receipts")
async def post_receipts(request: web.Request) -> web.Response:
    """Record a batch of receipts; 200 with one outcome per item, in order."""
    now = request.app[CLOCK]()
    batch = parse_receipts(await json_body(request), request.app[KNOWN_APPS], now)
    app = permit(request, batch.app)
    store = request.app[RECEIPT_STORE]
    notifications = await store.notifications(app, [r.notification_id for r in batch.receipts])
    for receipt in batch.receipts:
        found = notifications.get(receipt.notification_id)
        if found is not None:
            check_not_before(receipt, found.created_at)  # 400 naming receipts[i].at: before anything is written
    known = [r for r in batch.receipts if r.notification_id in notifications]
    by_token = await store.devices(app, "token", [r.token for r in known if r.token is not None])
    by_user = await store.devices(app, "user_id", [r.user_id for r in known if r.user_id is not None])

    resolved: list[Resolved] = []
    implied: list[NewReceipt] = []
    persons: dict[str, str] = {}  # an opened receipt's key -> whose open it is (store/open_hours.py)
    for receipt in batch.receipts:
        notification = notifications.get(receipt.notification_id)
        if notification is None:
            resolved.append(Resolved(receipt, UNKNOWN_NOTIFICATION))
            continue
        device = by_token.get(receipt.token) if receipt.token is not None else by_user.get(str(receipt.user_id))
        if device is None:
            resolved.append(Resolved(receipt, UNKNOWN_DEVICE))
            continue
        dimensions = device.dimensions
        if notification.split is not None:  # bounded: at most 10 variant names, control and default
            dimensions = {**dimensions, "variant": notification.split.group(device.identity)}
        new = _new(notification, receipt, receipt.event, dimensions)
        resolved.append(Resolved(receipt, None, new))
        if receipt.event == OPENED:
            persons[new.key] = device.person
            implied.append(_new(notification, receipt, RECEIVED, dimensions, implied=True))

    # One document per key: an item's own receipt before any implied one (an explicit "received" in the same
    # batch as the "opened" is the one recorded), and the first of repeated items.
    unique: dict[str, NewReceipt] = {}
    for new in [r.new for r in resolved if r.new is not None] + implied:
        unique.setdefault(new.key, new)
    new_keys = await store.record(list(unique.values()), now)
    recorded = [new for key, new in unique.items() if key in new_keys]
    await store.count(recorded)
    # Each open's id: its receipt's key (a hash) cut to 64 bits, ample among one user's few hundred opens.
    opens = [(persons[r.key], r.at, r.key[:16]) for r in recorded if r.key in persons]
    await _remember_opens(store, app, opens, request.app[CLOCK])

    outcomes = [_outcome(r, unique, new_keys) for r in resolved]
    for r, outcome in zip(resolved, outcomes, strict=True):
        metrics.RECEIPTS.labels(app, r.receipt.event, outcome).inc()
    await _announce(request, recorded, now)
    totals = {outcome: outcomes.count(outcome) for outcome in RECEIPT_OUTCOMES}
    return web.json_response({"app": app, "results": outcomes, "counts": totals})


async def _remember_opens(
    store: ReceiptStore, app: str, opens: list[tuple[str, float, str]], clock: Callable[[], float]
) -> None:
    """Each new open to its user's open hours (best-time delivery). Like the funnel's count, at most once: a
    failure here is logged and the open is not counted there (a retry finds the receipt recorded); the answer
    still says what was recorded."""
    if not opens:
        return
    try:
        await store.opens.record(app, opens, clock)
    except Exception as exc:
        # The type only: a write error's text quotes the filter, which names the user or the token.
        log.warning("open_hours_lost", app=app, count=len(opens), error=type(exc).__name__)


def _new(
    notification: NotificationRef, receipt: Receipt, event: str, dimensions: dict[str, str], implied: bool = False
) -> NewReceipt:
    key = receipt_key(notification.key, _device(receipt), event)
    return NewReceipt(key, notification, event, receipt.at, dimensions, implied)


def _outcome(item: Resolved, unique: dict[str, NewReceipt], new_keys: set[str]) -> str:
    if item.outcome is not None:
        return item.outcome
    assert item.new is not None
    # Recorded only by the item whose document was inserted: a copy later in the batch is a duplicate.
    return RECORDED if item.new.key in new_keys and unique[item.new.key] is item.new else DUPLICATE


async def _announce(request: web.Request, recorded: list[NewReceipt], now: float) -> None:
    """One receipt event per new receipt on `push.outcomes`: best effort, never fails the answer (the receipts
    are stored and counted already; a retry would find them recorded and announce nothing)."""
    publisher = request.app[RECEIPT_EVENTS]
    if publisher is None or not recorded:
        return
    events = [
        ReceiptEvent(r.notification.key, r.notification.request_id, r.notification.app, r.event, r.at, now,
                     r.dimensions, r.implied)
        for r in recorded
    ]
    try:
        published = await asyncio.wait_for(publisher.publish_many(events), EVENTS_WAIT_SECONDS)
    except Exception as exc:  # TimeoutError included
        published = []
        log.warning("receipt_events_unconfirmed", count=len(events), error=f"{type(exc).__name__}: {exc}"[:200])
    if len(published) < len(events):
        log.warning("receipt_events_lost", count=len(events) - len(published))
