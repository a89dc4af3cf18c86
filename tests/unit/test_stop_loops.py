"""A periodic loop ends when its task is cancelled even if the cancellation was swallowed on the way.

Seen in CI: a replica did not exit after SIGTERM. Its backlog loop was cancelled while a MongoDB count was in
flight; PyMongo completed the operation instead of raising CancelledError, the loop went back to sleep, and
stop() waited for it forever. A cancel is delivered once, so the loop itself must notice.
"""

from __future__ import annotations

import asyncio

import pytest

from pushsvc.service import pause, wait_cancelled


async def swallowing_operation() -> int:
    """Like a driver that finishes its work although it was cancelled."""
    try:
        await asyncio.sleep(0.2)
    except asyncio.CancelledError:
        await asyncio.sleep(0.01)
    return 1


async def periodic(rounds: list[int]) -> None:
    while True:
        rounds.append(await swallowing_operation())
        await pause(0.05)


async def test_a_loop_whose_cancel_was_swallowed_still_ends() -> None:
    rounds: list[int] = []
    task = asyncio.create_task(periodic(rounds))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    assert rounds == [1]


async def test_stop_gives_up_on_a_task_that_ignores_its_cancel_and_names_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def deaf() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.6)  # goes on regardless (ends on its own, so the test leaves nothing behind)

    task = asyncio.create_task(deaf(), name="deaf")
    await asyncio.sleep(0)
    task.cancel()
    started = asyncio.get_running_loop().time()
    await wait_cancelled([task], 0.2)
    assert asyncio.get_running_loop().time() - started < 0.5 and not task.done()
    logged = capsys.readouterr().out
    assert "stop_task_stuck" in logged and "deaf" in logged, logged
    await task
