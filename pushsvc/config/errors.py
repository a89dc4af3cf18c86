"""The one error settings raise, and the collector that lets one run report every problem."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

ENV_PREFIX = "PUSHSVC_"


class ConfigError(ValueError):
    """Settings are missing or invalid: every problem found, one line each, each naming its key."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


class _Problems:
    """Collects ConfigErrors from independent checks so that one run reports them all."""

    def __init__(self) -> None:
        self.found: list[str] = []

    @contextlib.contextmanager
    def check(self) -> Iterator[None]:
        """A check: its first problem is kept and ends it (later steps of one check depend on earlier)."""
        try:
            yield
        except ConfigError as exc:
            self.found.extend(exc.problems)

    def raise_any(self) -> None:
        if self.found:
            raise ConfigError(*self.found)
