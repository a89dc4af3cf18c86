"""A notification's funnel: targeted -> sent -> delivered (from its delivery counts) -> received -> opened (from
receipts, store/receipts.py), overall and broken down by dimension.

Stored on the notification document, written only by a new receipt's `$inc` (O(1) per receipt, bounded):
  funnel:    {"received": n, "opened": n}
  funnel_by: {"<dimension>": {"<value>": {"received": n, "opened": n}}}
Dimensions today: `platform` and `locale`. The values are bounded sets (`platform_value`, `locale_value`), so
the document cannot grow without bound whatever the receipts say. A new dimension (the A/B `variant`, from the
device's assignment) is one more entry of `Dimensions` when a receipt is recorded; this view shows any
dimension stored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pushsvc.model import PLATFORMS

FUNNEL = "funnel"
FUNNEL_BY = "funnel_by"
RECEIPT_EVENTS = ("received", "opened")
# The outcomes that mean a provider was asked to take the push (sent), listed rather than derived: the other
# final counts (unknown_token, opted_out, expired, control, capped, a dry run's validated) were never sent.
SENT_KEYS = ("delivered", "invalid_token", "rejected", "failed", "auth_error")
# Bounded dimension values: a platform outside PLATFORMS, or a locale whose language is not two letters, is
# "other"; a user_id receipt whose devices disagree is "mixed" (store/receipts.py).
OTHER = "other"
MIXED = "mixed"
_LANGUAGE = re.compile(r"^[a-z]{2}$")
RATE_DIGITS = 4


def platform_value(platform: Any) -> str:
    return platform if isinstance(platform, str) and platform in PLATFORMS else OTHER


def locale_value(locale: Any) -> str:
    """The language of a device locale ("fr-FR" -> "fr"): at most 26 x 26 values, and never a `.` or `$` that
    would make it a field path. Three-letter languages and anything unparsable are "other"."""
    if not isinstance(locale, str):
        return OTHER
    language = locale.replace("_", "-").split("-", 1)[0].lower()
    return language if _LANGUAGE.match(language) else OTHER


def increments(event: str, dimensions: Mapping[str, str], count: int = 1) -> dict[str, int]:
    """The `$inc` one new receipt makes on its notification."""
    inc = {f"{FUNNEL}.{event}": count}
    for dimension, value in dimensions.items():
        inc[f"{FUNNEL_BY}.{dimension}.{value}.{event}"] = count
    return inc


def _rate(part: int, whole: int) -> float | None:
    return None if whole <= 0 else round(part / whole, RATE_DIGITS)


def _count(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError, OverflowError):  # a hand-edited document: shown as 0, the read not failed
        return 0


def funnel_view(counts: Mapping[str, int], doc: Mapping[str, Any]) -> dict[str, Any]:
    """The funnel the API shows (the `Funnel` schema of /openapi.json): `counts` are the notification's delivery
    counts as shown (a split campaign's summed from its ranges), `doc` the stored document with its receipts'
    counters. Each rate is a stage over the stage before (null when that is 0); `open_rate` is opened over
    delivered, the number a marketer asks for."""
    stored = doc.get(FUNNEL) or {}
    targeted = _count(counts.get("targeted", 0))
    sent = sum(_count(counts.get(k, 0)) for k in SENT_KEYS)
    delivered = _count(counts.get("delivered", 0))
    received = _count(stored.get("received", 0))
    opened = _count(stored.get("opened", 0))
    by: dict[str, dict[str, dict[str, Any]]] = {}
    stored_by = doc.get(FUNNEL_BY) or {}
    for dimension, values in stored_by.items() if isinstance(stored_by, Mapping) else ():
        if not isinstance(values, Mapping):
            continue
        shown = by.setdefault(str(dimension), {})
        for value, events in values.items():
            if not isinstance(events, Mapping):
                continue
            got, open_ = _count(events.get("received", 0)), _count(events.get("opened", 0))
            shown[str(value)] = {"received": got, "opened": open_, "open_rate": _rate(open_, got)}
    return {
        "targeted": targeted,
        "sent": sent,
        "delivered": delivered,
        "received": received,
        "opened": opened,
        "rates": {
            "sent": _rate(sent, targeted),
            "delivered": _rate(delivered, sent),
            "received": _rate(received, delivered),
            "opened": _rate(opened, received),
            "open_rate": _rate(opened, delivered),
        },
        "by": by,
    }
