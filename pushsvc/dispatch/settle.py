"""The final counts of a chunk's answered deliveries, and the tokens they show dead (`settle`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pushsvc import metrics
from pushsvc.dispatch.sender import FinalResult
from pushsvc.store.counts import count_final
from pushsvc.store.devices import Deactivation
from pushsvc.token_kinds import provider_for, receives


@dataclass
class Settled:
    counts: Counter[str]
    deactivations: list[Deactivation]


def settle(
    app: str,
    route: str,
    results: Iterable[FinalResult],
    misconfig_tripped: Callable[[str], bool],
    dry_run: bool = False,
) -> Settled:
    """Count the final outcomes of delivered results (and their metrics) and pick the tokens to deactivate.

    An invalid-token answer deactivates its device unless
    - its reason is one a wrong app-wide setting gives for every token (BadDeviceToken,
      DeviceTokenNotForTopic, SENDER_ID_MISMATCH) and that provider's misconfiguration guard was tripped at
      any time while the chunk was sent (`misconfig_tripped(provider)`, from DeliverySender.misconfig_watch):
      then it is a configuration problem, counted auth_error, and the device is kept;
    - the device's token kind does not take this push type: the answer was about a route the token is not
      for (APNs: DeviceTokenNotForTopic for a regular token on the VoIP topic), not about the token; it is
      counted invalid_token and the device is kept (targeting sends no such push; this is the last check).
    The store spares, in addition, a device registered again after the answer (Deactivation.registered_by).
    A dry run deactivates nothing (it must change nothing but its own counts) and counts each outcome per
    device platform too (store.counts.platform_key).
    """
    counts: Counter[str] = Counter()
    deactivations: list[Deactivation] = []
    for result in results:
        device = result.delivery.device
        provider = provider_for(device.kind) or "none"
        outcome = result.outcome
        if outcome == "invalid_token":
            if result.misconfiguration and misconfig_tripped(provider):
                outcome = "auth_error"
            elif receives(device.kind, route) and not dry_run:
                deactivations.append(Deactivation(device.token, result.reason, result.invalid_as_of))
                metrics.child(metrics.INVALID_TOKENS, app, provider).inc()
        count_final(counts, outcome, result.delivery.variant, device.platform, dry_run)
        if dry_run:
            metrics.child(metrics.DRY_RUN_OUTCOMES, app, provider, outcome).inc()
        else:
            metrics.child(metrics.DELIVERIES, app, provider, outcome).inc()
    return Settled(counts, deactivations)
