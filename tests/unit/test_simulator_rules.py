"""The one meaning of a scripted rule's ``times`` that every simulator counts with (pushsvc/simulators/rules.py)."""

from __future__ import annotations

from dataclasses import dataclass

from pushsvc.simulators.rules import take_rule


@dataclass
class Rule:
    name: str
    times: int | None = None


DEFAULT = Rule("default")


def answers(rule: Rule | None, requests: int) -> list[str]:
    return [take_rule(rule, DEFAULT).name for _ in range(requests)]


def test_times_n_answers_exactly_the_next_n_then_the_default() -> None:
    assert answers(Rule("scripted", times=2), 4) == ["scripted", "scripted", "default", "default"]


def test_times_zero_answers_none() -> None:
    assert answers(Rule("scripted", times=0), 2) == ["default", "default"]


def test_no_times_answers_every_request() -> None:
    assert answers(Rule("scripted"), 3) == ["scripted"] * 3


def test_no_rule_is_the_default_which_may_be_none() -> None:
    assert answers(None, 1) == ["default"]
    assert take_rule(Rule("scripted", times=0), None) is None  # FCM and HMS then check the request as usual
