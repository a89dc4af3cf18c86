"""The one count-down of a scripted rule's ``times``, for every simulator (APNs, FCM, Huawei Push Kit, Web Push).

``times`` is how many more requests the rule answers: ``times=N`` answers exactly the next N, ``times=0`` none,
``None`` every one. A rule used up stays where it was set, answering nothing more, until a new one replaces it.
"""

from __future__ import annotations

from typing import Protocol, TypeVar


class CountedRule(Protocol):
    times: int | None  # how many more requests the rule answers; None: every one


R = TypeVar("R", bound=CountedRule)
D = TypeVar("D")


def take_rule(rule: R | None, default: D) -> R | D:
    """``rule`` for this request, counting it off the rule's ``times``; ``default`` when there is no rule or it
    is used up. The default is the peer's answer without a script: a rule of its own (APNs, Web Push), or None
    where the peer then checks the request as usual (FCM, Huawei Push Kit)."""
    if rule is None:
        return default
    if rule.times is not None:
        if rule.times <= 0:
            return default
        rule.times -= 1
    return rule
