"""A/B assignment: deterministic per (campaign, user), weighted, and the control group independent of weights."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from pushsvc.model import Message
from pushsvc.model.variants import CONTROL, Split, Variant


def split(weights: tuple[int, ...], control: float = 0.0, campaign: str = "campaign:c1") -> Split:
    return Split(campaign, tuple(Variant(f"v{i}", w, Message(title=f"t{i}")) for i, w in enumerate(weights)), control)


def groups(s: Split, users: int) -> Counter[str]:
    out: Counter[str] = Counter()
    for u in range(users):
        assigned = s.assign(f"user-{u}")
        out[assigned if isinstance(assigned, str) else assigned.name] += 1
    return out


def test_weights_and_control_share_hold_over_many_users() -> None:
    counted = groups(split((1, 3), control=10.0), 20_000)
    assert abs(counted[CONTROL] / 20_000 - 0.10) < 0.01
    assert abs(counted["v1"] / (counted["v0"] + counted["v1"]) - 0.75) < 0.02


@given(st.text(min_size=1, max_size=40), st.lists(st.integers(1, 100), min_size=1, max_size=5))
def test_assignment_is_a_function_of_campaign_and_user(user: str, weights: list[int]) -> None:
    assert split(tuple(weights), 20.0).assign(user) == split(tuple(weights), 20.0).assign(user)


def test_changing_weights_moves_nobody_in_or_out_of_control() -> None:
    before, after = split((1, 1), 15.0), split((5, 1, 2), 15.0)
    users = [f"user-{u}" for u in range(2_000)]
    assert [before.assign(u) == CONTROL for u in users] == [after.assign(u) == CONTROL for u in users]


def test_another_campaign_draws_its_groups_afresh() -> None:
    users = [f"user-{u}" for u in range(2_000)]
    first = [split((1, 1), 0.0, "campaign:a").assign(u) for u in users]
    second = [split((1, 1), 0.0, "campaign:b").assign(u) for u in users]
    same = sum(a == b for a, b in zip(first, second, strict=True))
    assert 850 < same < 1150  # about half, not all: independent draws
