"""Which devices of a chunk are sent, and what each gets, before anything is sent (`Admission`).

A device is not sent when it opted out of the message's category (`opted_out`), is in a campaign's control
group (`control`), belongs to a notification or wave that began later than its TTL allows (`expired`), or its
user has no room under the app's frequency caps (`capped`); each such device is final here, counted (per
variant and, in a dry run, per platform too) and added to the chunk's answered devices. The others become
deliveries, with their variant's message and an expiry counted from now.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Sequence

from pushsvc import metrics
from pushsvc.model import PushRequest
from pushsvc.model.variants import CONTROL, DEFAULT_VARIANT, Split, Variant
from pushsvc.providers.base import Delivery
from pushsvc.store.caps import identity
from pushsvc.store.counts import count_final
from pushsvc.store.device_documents import to_recipient

Keyed = list[tuple[str, Delivery]]


class Admission:
    """One chunk's admission: the final counts of the devices it keeps from sending go to `counts`, and their
    keys to `newly` (the chunk's answered devices)."""

    def __init__(self, request: PushRequest, counts: Counter[str], newly: list[str]) -> None:
        self._request = request
        self._counts = counts
        self._newly = newly
        self._dry_run = request.options.dry_run

    def deliveries(
        self, devices: Sequence[dict], key_of: Callable[[dict], str], skip: Collection[str], now: float,
        split: Split | None,
    ) -> Keyed:
        """A delivery (with its device key) for each device not in `skip` and neither opted out nor in the
        control group; a device of a variant gets its message.

        The TTL counts from `now`, the send (the sender's clock, which a provider's expiry is on): a wave or a
        scheduled push going out later than it was due still gets its whole TTL at the provider. How late it
        may go at all is `expire`'s."""
        request = self._request
        ttl = request.options.ttl_seconds
        expires_at = None if ttl is None else now + ttl
        category = request.message.category
        deliveries: Keyed = []
        for doc in devices:
            key = key_of(doc)
            if key in skip:
                continue
            if category and category in (doc.get("opt_out") or ()):
                self._final(key, "opted_out", None, str(doc.get("platform")))
                continue
            message, variant = request.message, None
            if split is not None:
                assigned = split.assign(str(doc.get("user_id") or doc["token"]))
                if assigned == CONTROL:
                    self._final(key, "control", CONTROL, str(doc.get("platform")))
                    continue
                if isinstance(assigned, Variant):
                    message, variant = assigned.message, assigned.name
                else:  # a control group and no variants: the others get the campaign's message, as "default"
                    variant = DEFAULT_VARIANT
            deliveries.append((key, Delivery(request.id, to_recipient(doc), message, request.options, expires_at,
                                             variant)))
        return deliveries

    def expire(self, deliveries: Keyed) -> Keyed:
        """The notification (or its wave) began later than its TTL allows (scheduling/due.py ttl_lapsed): every
        delivery is counted `expired` instead of sent."""
        for key, delivery in deliveries:
            self._final(key, "expired", delivery.variant, delivery.device.platform)
        self._metric("expired", len(deliveries))
        return []

    async def within_caps(self, deliveries: Keyed, admit: Callable[[set[str]], Awaitable[set[str]]]) -> Keyed:
        """The deliveries whose user has room under the app's frequency caps (`admit`: store/caps.py, the users
        refused); the others are counted `capped`. Dry runs never get here (caps change nothing for them)."""
        capped = await admit({identity(d.device) for _, d in deliveries})
        if not capped:
            return deliveries
        kept = []
        for key, delivery in deliveries:
            if identity(delivery.device) in capped:
                self._final(key, "capped", delivery.variant, delivery.device.platform)
            else:
                kept.append((key, delivery))
        self._metric("capped", len(deliveries) - len(kept))
        return kept

    def _final(self, key: str, outcome: str, variant: str | None, platform: str) -> None:
        """A device final without a provider's answer: counted as `settle` counts an answered one."""
        count_final(self._counts, outcome, variant, platform, self._dry_run)
        self._newly.append(key)

    def _metric(self, outcome: str, count: int) -> None:
        if count:
            outcomes = metrics.DRY_RUN_OUTCOMES if self._dry_run else metrics.DELIVERIES
            outcomes.labels(self._request.app, "none", outcome).inc(count)
