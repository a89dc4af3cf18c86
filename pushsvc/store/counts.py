"""The counters kept on each notification: final outcomes per device, and a dry run's per-platform split."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Final-outcome counters kept on each notification; "pending" is derived from them.
COUNT_KEYS = (
    "targeted",
    "delivered",
    "invalid_token",
    "rejected",
    "failed",
    "auth_error",
    "unknown_token",
    "opted_out",
    # Not sent: due longer ago than its TTL when it would have gone out (scheduling/due.py ttl_lapsed).
    "expired",
    # A campaign's control group: assigned, counted, never sent (model/variants.py).
    "control",
    # Not sent: its user had had as many capped pushes as the app's frequency caps allow (store/caps.py).
    "capped",
    # A dry run's devices whose payload was built and accepted (FCM: by its validate_only check).
    "validated",
)
# The counters that are final outcomes for a targeted device.
FINAL_KEYS = COUNT_KEYS[1:]
# A dry run also counts each final outcome per device platform, as "<outcome>:<platform>" (flat keys, so the
# same $inc per chunk, sums and hand-backs carry them; split_counts shows them nested).
PLATFORM_SEPARATOR = ":"
# A campaign with variants or a control group also counts each device's final outcome (and `targeted`) per
# variant, as "<outcome>@<variant>" (variant names are letters, digits, '_' and '-': no separator inside).
VARIANT_SEPARATOR = "@"
_PLAIN = frozenset(COUNT_KEYS)


def platform_key(outcome: str, platform: str) -> str:
    return f"{outcome}{PLATFORM_SEPARATOR}{platform}"


def variant_key(outcome: str, variant: str) -> str:
    return f"{outcome}{VARIANT_SEPARATOR}{variant}"


def counted_by_platform(counts: Mapping[str, Any]) -> bool:
    """Whether `counts` holds a per-platform counter (what a dry run counts); most hold only plain ones."""
    return not counts.keys() <= _PLAIN and any(PLATFORM_SEPARATOR in key for key in counts)


def count_final(counts: Counter[str], outcome: str, variant: str | None, platform: str, dry_run: bool) -> None:
    """One device's final outcome in a chunk's counts: the counter, its variant's (with the variant's
    `targeted`), and a dry run's per-platform one. Whatever ended it (a provider's answer, or none: opted out,
    control group, expired, capped), it is counted this one way."""
    counts[outcome] += 1
    if variant is not None:
        counts[variant_key(outcome, variant)] += 1
        counts[variant_key("targeted", variant)] += 1
    if dry_run:
        counts[platform_key(outcome, platform)] += 1


@dataclass(frozen=True)
class SplitCounts:
    """Stored counts taken apart: the COUNT_KEYS counters, a dry run's {platform: {outcome: n}}, a campaign's
    {variant: {outcome: n}}."""

    plain: dict[str, int]
    by_platform: dict[str, dict[str, int]]
    by_variant: dict[str, dict[str, int]]


def split_counts(counts: Mapping[str, Any]) -> SplitCounts:
    """`counts` taken apart, its plain counters completed (every COUNT_KEYS counter, 0 where it has none: a
    notification recorded before a counter existed); a plain key this version does not know is left out."""
    plain: dict[str, int] = dict.fromkeys(COUNT_KEYS, 0)
    by_platform: dict[str, dict[str, int]] = {}
    by_variant: dict[str, dict[str, int]] = {}
    for key, value in counts.items():
        # Most keys are plain counters: looked up before any is cut (every outcome event splits them).
        if key in plain:
            plain[key] = int(value)
        elif PLATFORM_SEPARATOR in key:
            outcome, _, platform = key.partition(PLATFORM_SEPARATOR)
            by_platform.setdefault(platform, {})[outcome] = int(value)
        elif VARIANT_SEPARATOR in key:
            outcome, _, variant = key.partition(VARIANT_SEPARATOR)
            by_variant.setdefault(variant, {})[outcome] = int(value)
    return SplitCounts(plain, by_platform, by_variant)


def added_counts(saved: Mapping[str, int], more: Mapping[str, int]) -> dict[str, int]:
    """`full_counts(Counter(saved) + Counter(more))`, what a run's counts on top of those earlier runs saved come
    to, without two Counters per notification: every COUNT_KEYS counter (0 where the sum is not positive), and the
    per-platform and per-variant counters whose sum is. Both hold ints (a record's counts are read as ints)."""
    # Only the keys either holds are visited (a one-device push: two or three), not every counter twice.
    total = dict.fromkeys(COUNT_KEYS, 0)
    split: dict[str, int] = {}
    for counts in (saved, more):
        for key, value in counts.items():
            if key in total:
                total[key] += value
            elif PLATFORM_SEPARATOR in key or VARIANT_SEPARATOR in key:
                split[key] = split.get(key, 0) + value
    if min(total.values()) < 0:  # never, as written; a hand-edited document may hold anything
        total = {key: max(0, value) for key, value in total.items()}
    if split:
        total.update((key, value) for key, value in split.items() if value > 0)
    return total


def full_counts(counts: Mapping[str, int]) -> dict[str, int]:
    """Every counter of COUNT_KEYS, zero where `counts` has none, and the per-platform and per-variant ones."""
    full = {key: int(counts.get(key, 0)) for key in COUNT_KEYS}
    if not counts.keys() <= _PLAIN:
        full.update(
            (key, int(value)) for key, value in counts.items() if PLATFORM_SEPARATOR in key or VARIANT_SEPARATOR in key
        )
    return full
