"""One chunk of a notification: resolve the next devices, deliver to them, count the outcomes.

Shared by the fan-out runner (one notification, many chunks, progress saved per chunk) and the batch
lane (many single-chunk notifications, progress saved once for the whole batch).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pushsvc import metrics
from pushsvc.dispatch.sender import PROVIDER_FOR_PLATFORM, DeliverySender
from pushsvc.model import PushRequest
from pushsvc.providers.base import Delivery
from pushsvc.scheduling.due import DEFAULT_TIMEZONE
from pushsvc.store.devices import DeviceStore, to_device


@dataclass
class Chunk:
    devices: list[dict]
    unknown_tokens: int
    next_cursor: Any
    exhausted: bool


class ChunkWorker:
    def __init__(self, devices: DeviceStore, sender: DeliverySender) -> None:
        self._devices = devices
        self._sender = sender

    async def next_chunk(
        self, request: PushRequest, cursor: Any, wave: list[str] | None, count_unknown: bool, size: int
    ) -> Chunk:
        if request.target.tokens:
            # Explicit tokens are paged by position in the request.
            start = int(cursor or 0)
            tokens = request.target.tokens[start : start + size]
            found = await self._devices.find_by_tokens(request.app, tokens) if tokens else []
            known = {d["token"] for d in found}
            unknown = sum(1 for t in tokens if t not in known) if count_unknown else 0
            if wave is not None:
                zones = set(wave)
                found = [d for d in found if (d.get("timezone") or DEFAULT_TIMEZONE) in zones]
            end = start + len(tokens)
            return Chunk(found, unknown, end, end >= len(request.target.tokens))
        timezones: list[str | None] | None = None
        if wave is not None:
            timezones = [*wave, None] if DEFAULT_TIMEZONE in wave else list(wave)
        found = await self._devices.find_audience(
            request.app, request.target, request.message.category, timezones, cursor, size
        )
        # Saved as hex text: a plain string cursor is portable across MongoDB implementations and JSON.
        next_cursor = str(found[-1]["_id"]) if found else cursor
        return Chunk(found, 0, next_cursor, len(found) < size)

    async def deliver(self, request: PushRequest, chunk: Chunk, due_at: float) -> Counter[str]:
        counts: Counter[str] = Counter()
        counts["targeted"] = len(chunk.devices) + chunk.unknown_tokens
        counts["unknown_token"] = chunk.unknown_tokens
        if chunk.unknown_tokens:
            metrics.DELIVERIES.labels(request.app, "none", "unknown_token").inc(chunk.unknown_tokens)
        expires_at = None if request.options.ttl_seconds is None else due_at + request.options.ttl_seconds
        deliveries = []
        category = request.message.category
        for doc in chunk.devices:
            if category and category in (doc.get("opt_out") or ()):
                counts["opted_out"] += 1
                continue
            deliveries.append(
                Delivery(request.id, to_device(doc), request.message, request.options, expires_at)
            )
        if counts["targeted"]:
            metrics.DEVICES_TARGETED.labels(request.app).inc(counts["targeted"])
        results = await asyncio.gather(*(self._sender.deliver(d, due_at) for d in deliveries))
        invalid: list[tuple[str, str]] = []
        for result in results:
            counts[result.outcome] += 1
            provider = PROVIDER_FOR_PLATFORM.get(result.delivery.device.platform, "none")
            metrics.DELIVERIES.labels(request.app, provider, result.outcome).inc()
            if result.outcome == "invalid_token":
                invalid.append((result.delivery.device.token, result.reason))
                metrics.INVALID_TOKENS.labels(request.app, provider).inc()
        if invalid:
            # Deactivate before saving progress: if we crash in between, the retried chunk skips these.
            await self._devices.deactivate(request.app, invalid)
        return counts
