"""A clock a test moves by hand, shared by a provider and its peer: hours of token lifetime pass in a moment."""

from __future__ import annotations

import time


class FakeClock:
    """Epoch seconds that move only when the test says so; starts at the real time unless told otherwise (a
    credential signed on the wall clock then still looks right to a peer on this clock, until it advances)."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
