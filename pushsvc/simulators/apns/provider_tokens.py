"""Provider tokens (JWTs) as the APNs peer sees them over time: each distinct token a (team, key) presented, and
Apple's limit on how often a new one may come.

Apple refuses a token whose ``iat`` is more than an hour old (ExpiredProviderToken: checks.py, on the peer's
clock) and a provider that updates its token more often than once every 20 minutes (429
TooManyProviderTokenUpdates). The second is off unless ``min_update_seconds`` is set: the session-wide peers
serve several replicas (separate processes, a token each) at once, which Apple does not seem to count
against one another, and a test about something else must not trip over it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TOKEN_UPDATE_MIN_SECONDS = 20 * 60  # Apple: "no more than once every 20 minutes"


@dataclass
class SeenProviderToken:
    """One distinct token the peer accepted: whose, its ``iat``, when first presented (peer clock), where used."""

    team_id: str
    key_id: str
    issued_at: int
    first_seen: float
    authorization: str  # the whole header value, to match against recorded requests
    connections: set[int] = field(default_factory=set)
    requests: int = 0


class ProviderTokenLog:
    """Every distinct provider token accepted, per (team id, key id) in the order first seen."""

    def __init__(self) -> None:
        self.min_update_seconds: float | None = None  # e.g. TOKEN_UPDATE_MIN_SECONDS; None: no limit
        self.tokens: list[SeenProviderToken] = []
        self.updates_refused = 0  # TooManyProviderTokenUpdates answers given
        self._by_value: dict[str, SeenProviderToken] = {}

    def presented(
        self, authorization: str, team_id: str, key_id: str, issued_at: int, connection_id: int, now: float
    ) -> str | None:
        """A valid, unexpired token on a request: None if accepted, or the reason it is refused."""
        seen = self._by_value.get(authorization)
        if seen is None:
            previous = self.latest(team_id, key_id)
            if (
                previous is not None
                and self.min_update_seconds is not None
                and now - previous.first_seen < self.min_update_seconds
            ):
                self.updates_refused += 1
                return "TooManyProviderTokenUpdates"
            seen = SeenProviderToken(team_id, key_id, issued_at, now, authorization)
            self.tokens.append(seen)
            self._by_value[authorization] = seen
        seen.connections.add(connection_id)
        seen.requests += 1
        return None

    def latest(self, team_id: str, key_id: str) -> SeenProviderToken | None:
        for seen in reversed(self.tokens):
            if (seen.team_id, seen.key_id) == (team_id, key_id):
                return seen
        return None

    def refreshes(self, team_id: str, key_id: str) -> int:
        """How often the (team, key) came with a new token after its first (the refreshes Apple saw)."""
        return max(0, sum(1 for seen in self.tokens if (seen.team_id, seen.key_id) == (team_id, key_id)) - 1)

    def clear(self) -> None:
        self.tokens.clear()
        self._by_value.clear()
        self.updates_refused = 0
