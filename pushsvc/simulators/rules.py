"""Scripted answers shared by the simulators whose rules fall back to a default (APNs, Web Push)."""

from __future__ import annotations

from typing import Protocol, TypeVar


class CountedRule(Protocol):
    times: int | None  # how many more requests the rule answers; None: every one


R = TypeVar("R", bound=CountedRule)


def take_rule(rules: dict[str, R], key: str, default: R) -> R:
    """The rule for ``key`` now, counting down its ``times``; ``default`` when it has none (left)."""
    rule = rules.get(key)
    if rule is None:
        return default
    if rule.times is not None:
        if rule.times <= 0:
            return default
        rule.times -= 1
    return rule
