"""The commands a PyMongo client sends, counted as the driver reports them (a CommandListener passed in
`event_listeners`): for tests that hold a store to a count of round trips."""

from __future__ import annotations

from collections import Counter

from pymongo import monitoring


class CommandCounter(monitoring.CommandListener):
    """Commands sent, by name (`find`, `count`, `getMore`, ...); only those about `collection` if one is given."""

    def __init__(self, collection: str | None = None) -> None:
        self.commands: Counter[str] = Counter()
        self._collection = collection

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self._collection is None or event.command.get(event.command_name) == self._collection:
            self.commands[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass
