"""The counters kept on each notification: final outcomes per device, and a dry run's per-platform split."""

from __future__ import annotations

from collections.abc import Mapping
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
    # A dry run's devices whose payload was built and accepted (FCM: by its validate_only check).
    "validated",
)
# The counters that are final outcomes for a targeted device.
FINAL_KEYS = COUNT_KEYS[1:]
# A dry run also counts each final outcome per device platform, as "<outcome>:<platform>" (flat keys, so the
# same $inc per chunk, sums and hand-backs carry them; split_counts shows them nested).
PLATFORM_SEPARATOR = ":"


def platform_key(outcome: str, platform: str) -> str:
    return f"{outcome}{PLATFORM_SEPARATOR}{platform}"


def split_counts(counts: Mapping[str, Any]) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Stored counts as (the COUNT_KEYS counters, {platform: {outcome: n}} of a dry run)."""
    plain: dict[str, int] = {}
    by_platform: dict[str, dict[str, int]] = {}
    for key, value in counts.items():
        outcome, separator, platform = key.partition(PLATFORM_SEPARATOR)
        if separator:
            by_platform.setdefault(platform, {})[outcome] = int(value)
        else:
            plain[key] = int(value)
    return plain, by_platform


def full_counts(counts: Mapping[str, int]) -> dict[str, int]:
    """Every counter of COUNT_KEYS, zero where `counts` has none, and a dry run's per-platform counters."""
    full = {key: int(counts.get(key, 0)) for key in COUNT_KEYS}
    full.update((key, int(value)) for key, value in counts.items() if PLATFORM_SEPARATOR in key)
    return full
