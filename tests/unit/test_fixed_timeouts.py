"""pushsvc/timeouts.py: bounds of one length sharing a timer, and cuts timed from outside, behave as
asyncio.timeout() does (each bound on its own deadline), under uvloop as the service runs them."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from pushsvc.timeouts import Bound, Cut, FixedTimeouts

SECONDS = 0.2
SLACK = 0.25  # the loop's timer resolution (1 ms) and scheduling under a loaded CI box


async def _bounded(timeouts: FixedTimeouts, work: float) -> tuple[str, float, bool]:
    """What a bound makes of `work` seconds of waiting: "done" or "timeout", when, and whether it expired."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    bound = timeouts.bound()
    try:
        with bound:
            await asyncio.sleep(work)
        return "done", loop.time() - started, bound.expired()
    except TimeoutError:
        return "timeout", loop.time() - started, bound.expired()


async def _cancelled_from_outside(scope: Bound | Cut, arm: Callable[[], None] = lambda: None) -> None:
    """A task waiting in `scope` (timed by `arm`, inside it) is cancelled from elsewhere: CancelledError
    propagates and the scope did not expire."""

    async def work() -> None:
        with scope:
            arm()
            await asyncio.sleep(10)

    task = asyncio.ensure_future(work())
    await asyncio.sleep(SECONDS / 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not scope.expired()


def test_work_within_the_bound_ends_normally_and_longer_work_times_out_at_the_bound() -> None:
    async def main() -> None:
        timeouts = FixedTimeouts(SECONDS)
        outcome, _, expired = await _bounded(timeouts, SECONDS / 5)
        assert (outcome, expired) == ("done", False)
        outcome, took, expired = await _bounded(timeouts, 10.0)
        assert (outcome, expired) == ("timeout", True)
        assert SECONDS - 0.002 <= took <= SECONDS + SLACK

    uvloop.run(main())


# Start offsets and lengths of work, in units of SECONDS: the bounds overlap in every order, some finishing
# before bounds that began earlier, some expiring while others run on.
RUNS = st.lists(st.tuples(st.floats(0, 1.5), st.floats(0, 2.0)), min_size=1, max_size=12)


@settings(max_examples=10, deadline=None)
@given(RUNS)
def test_each_bound_expires_on_its_own_deadline_whatever_the_others_do(runs: list[tuple[float, float]]) -> None:
    # Work close to the bound could end either way on a busy box: those are left out, not guessed (half the
    # bound's length either side: a loop held up that long by the box still orders the two timers rightly).
    runs = [(start, work) for start, work in runs if abs(work - 1.0) > 0.5]

    async def one(timeouts: FixedTimeouts, start: float, work: float) -> tuple[str, float, bool]:
        await asyncio.sleep(start * SECONDS)
        return await _bounded(timeouts, work * SECONDS)

    async def main() -> None:
        timeouts = FixedTimeouts(SECONDS)
        results = await asyncio.gather(*(one(timeouts, start, work) for start, work in runs))
        for (_, work), (outcome, took, expired) in zip(runs, results, strict=True):
            if work < 1.0:
                assert (outcome, expired) == ("done", False)
            else:
                assert (outcome, expired) == ("timeout", True)
                assert SECONDS - 0.002 <= took <= SECONDS + SLACK
        assert not timeouts._running  # every bound let go of

    uvloop.run(main())


def test_a_cancellation_from_elsewhere_propagates_and_is_not_a_timeout() -> None:
    async def main() -> None:
        timeouts = FixedTimeouts(SECONDS)
        await _cancelled_from_outside(timeouts.bound())
        assert not timeouts._running

    uvloop.run(main())


def test_a_cancellation_racing_the_expiry_still_propagates() -> None:
    """As asyncio.timeout: the bound expired, but another cancellation came too, so the task is cancelled."""

    async def main() -> None:
        timeouts = FixedTimeouts(SECONDS)
        bound = timeouts.bound()
        expire = timeouts._expire

        def cancel_then_expire(due: float) -> None:
            task.cancel()  # another cancellation, in the same loop pass as the expiry
            expire(due)

        timeouts._expire = cancel_then_expire  # type: ignore[method-assign]  # before the bound sets the timer

        async def work() -> None:
            with bound:
                await asyncio.sleep(10)

        task = asyncio.ensure_future(work())
        with pytest.raises(asyncio.CancelledError):
            await task
        assert bound.expired()

    uvloop.run(main())


def test_an_expiry_due_when_its_timer_runs_is_not_put_off() -> None:
    """The loop runs a timer when its clock (milliseconds) reaches the deadline (a float): the bound due then
    expires in that pass, before a cancellation arriving in the next one could win over it."""

    async def one_round() -> None:
        loop = asyncio.get_running_loop()
        timeouts = FixedTimeouts(SECONDS / 10)
        bound = timeouts.bound()
        expire = timeouts._expire

        def expire_then_cancel(due: float) -> None:
            expire(due)
            loop.call_soon(task.cancel)  # the next pass: too late to be the one that ends the block

        timeouts._expire = expire_then_cancel  # type: ignore[method-assign]

        async def work() -> None:
            with bound:
                await asyncio.sleep(10)

        task = asyncio.ensure_future(work())
        with pytest.raises(TimeoutError):
            await task

    async def main() -> None:
        for _ in range(20):  # the clock's reading against the deadline varies from round to round
            await one_round()

    uvloop.run(main())


def test_a_timeout_raised_inside_is_not_taken_for_an_expiry() -> None:
    async def main() -> None:
        timeouts = FixedTimeouts(SECONDS)
        bound = timeouts.bound()
        with pytest.raises(TimeoutError), bound:
            raise TimeoutError("the adapter's own")
        assert not bound.expired()

    uvloop.run(main())


def test_many_bounds_cost_a_timer_per_expiry_round_not_one_each() -> None:
    """Ten thousand short bounds share the one timer the first set: it fires once, finds none running, and
    is not set again."""

    async def main() -> None:
        timeouts = FixedTimeouts(SECONDS)
        fired: list[float] = []
        expire = timeouts._expire

        def counted(due: float) -> None:
            fired.append(due)
            expire(due)

        timeouts._expire = counted  # type: ignore[method-assign]
        rng = random.Random(7)
        with timeouts.bound():
            first = timeouts._timer
        for _ in range(10_000):
            with timeouts.bound():
                if rng.random() < 0.01:
                    await asyncio.sleep(0)
        assert first is not None and timeouts._timer is first and not timeouts._running
        await asyncio.sleep(SECONDS * 1.5)
        assert len(fired) == 1 and timeouts._timer is None

    uvloop.run(main())


def test_a_bound_needs_a_task_and_a_positive_length() -> None:
    with pytest.raises(ValueError, match="seconds"):
        FixedTimeouts(0)
    with pytest.raises(RuntimeError), FixedTimeouts(1).bound():
        pass


def test_a_cut_timed_from_outside_ends_the_block_with_a_timeout_then() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        cut = Cut()
        started = loop.time()
        with pytest.raises(TimeoutError), cut:
            loop.call_later(0.01, lambda: cut.at(loop.time() + SECONDS))
            await asyncio.sleep(10)
        assert cut.expired()
        assert 0.01 + SECONDS - 0.002 <= loop.time() - started <= 0.01 + SECONDS + SLACK
        with pytest.raises(RuntimeError):
            cut.at(loop.time())  # over: no new time

    uvloop.run(main())


def test_a_cut_whose_block_ends_first_never_fires_later() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        cut = Cut()
        with cut:
            cut.at(loop.time() + SECONDS)
            await asyncio.sleep(SECONDS / 5)
        await asyncio.sleep(SECONDS * 2)  # a timer left behind would cancel this task here
        assert not cut.expired()
        assert asyncio.current_task().cancelling() == 0

    uvloop.run(main())


def test_a_cut_lets_a_cancellation_from_elsewhere_through_even_at_its_own_time() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        cut = Cut()
        await _cancelled_from_outside(cut, lambda: cut.at(loop.time() + SECONDS))

        racing = Cut()

        async def racing_work() -> None:
            with racing:
                racing.at(loop.time())  # fires in the next iteration, beside the cancel below
                task2.cancel()
                await asyncio.sleep(10)

        task2 = asyncio.ensure_future(racing_work())
        with pytest.raises(asyncio.CancelledError):
            await task2
        assert racing.expired()

    uvloop.run(main())
