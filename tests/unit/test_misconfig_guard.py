"""The misconfiguration guard's window arithmetic (times are given explicitly: no clock, no sleeping)."""

from __future__ import annotations

from pushsvc.dispatch.guard import Change, MisconfigGuard


def test_trips_on_a_large_share_of_enough_answers_only() -> None:
    guard = MisconfigGuard(share=0.5, window_seconds=60, min_answers=10)
    # Nine suspect answers are too few to judge: no trip, whatever the share.
    assert [guard.record(100.0 + i / 10, suspect=True) for i in range(9)] == [Change.NONE] * 9
    assert guard.record(101.0, suspect=False) is Change.NONE  # a healthy answer never trips it
    assert guard.record(101.1, suspect=True) is Change.TRIPPED  # 10 of 11 suspect
    assert guard.tripped and guard.tripped_since(100.0) and guard.tripped_since(500.0)


def test_a_small_share_of_suspect_answers_is_token_churn() -> None:
    guard = MisconfigGuard(share=0.5, window_seconds=60, min_answers=10)
    changes = [guard.record(100.0 + i / 10, suspect=i % 3 == 0) for i in range(300)]
    assert set(changes) == {Change.NONE}
    assert not guard.tripped_since(0.0)


def test_answers_older_than_the_window_no_longer_count() -> None:
    guard = MisconfigGuard(share=0.5, window_seconds=10, min_answers=10)
    for i in range(9):
        guard.record(100.0 + i / 10, suspect=True)
    # Eleven seconds later the nine are gone: one more suspect answer is one of one, too few.
    assert guard.record(111.5, suspect=True) is Change.NONE
    assert (guard.answers, guard.suspect) == (1, 1)


def test_stays_tripped_until_enough_healthy_answers_then_clears() -> None:
    guard = MisconfigGuard(share=0.5, window_seconds=10, min_answers=4)
    for i in range(3):
        guard.record(100.0 + i, suspect=True)
    assert guard.record(103.0, suspect=True) is Change.TRIPPED
    # Long after (the pause is over, the old answers have left the window) the setting is still wrong.
    assert guard.record(200.0, suspect=True) is Change.STILL_TRIPPED
    assert guard.record(200.5, suspect=False) is Change.NONE  # still too few answers to clear
    assert guard.record(201.0, suspect=False) is Change.NONE
    assert guard.record(202.0, suspect=False) is Change.CLEARED  # 1 suspect of 4
    assert not guard.tripped
    # Whoever watched since before the clearing saw it tripped; whoever starts now does not.
    assert guard.tripped_since(150.0) and guard.tripped_since(202.0)
    assert not guard.tripped_since(202.5)
