"""The APNs provider token (JWT): one per signing key and process, shared by every connection and app using it.

Apple's rules ("Establishing a token-based connection to APNs"): a token is refused as ExpiredProviderToken
once its ``iat`` is more than an hour old, and a provider that presents new tokens more often than once every
20 minutes is refused as TooManyProviderTokenUpdates. aioapns signs one token per connection, on the wall
clock, with its own 30-minute lifetime: ten connections present ten different tokens, and each new connection
is another "update". Here one ``ProviderTokenSigner`` per (team id, key id) signs the token every connection
of the process sends, its ``iat`` read from the caller's clock (the service passes the database's, as for every
other expiry), and replaces it only when it is at least ``MIN_REFRESH_AGE_SECONDS`` old.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import jwt

from pushsvc.logs import get_logger
from pushsvc.metrics import PROVIDER_TOKEN_REFRESHES

log = get_logger(__name__)

# Apple: "refresh your token no more than once every 20 minutes and no less than once every 60 minutes".
MIN_REFRESH_AGE_SECONDS = 20 * 60
MAX_TOKEN_AGE_SECONDS = 60 * 60
# 50 minutes: well clear of both limits. Ten minutes before the hour leaves room for our clock being behind
# Apple's (a token older than an hour by Apple's clock is refused whatever ours says) and for a send that
# picked the token up just before the refresh point; and refreshing as late as that is safe signs the fewest
# tokens, so even a replica restarted a few times within the hour stays far from "too many updates".
DEFAULT_REFRESH_AGE_SECONDS = 50 * 60


@dataclass(frozen=True, slots=True)
class ProviderToken:
    """A signed token and when it was issued (its ``iat``)."""

    authorization: str  # the header value, "bearer <jwt>": a secret, never logged
    issued_at: int


class ProviderTokenSigner:
    """The current provider token of one (team id, key id); every method is synchronous (no await inside), so
    on one event loop no two sends can refresh it at once.

    ``now`` comes with each call rather than from a clock kept here: the signer outlives the provider that made
    it (another app may share it), and must not hold on to that provider's clock.
    """

    def __init__(self, team_id: str, key_id: str, key: str, refresh_age: float = DEFAULT_REFRESH_AGE_SECONDS) -> None:
        check_refresh_age(refresh_age)
        self.team_id = team_id
        self.key_id = key_id
        self._key = key
        self._refresh_age = refresh_age
        self._current: ProviderToken | None = None

    def current(self, app: str, now: float) -> ProviderToken:
        """The token to send now: the current one, or a new one once the current is ``refresh_age`` old.

        Raises ValueError or jwt.PyJWTError when the key cannot sign (the caller's auth error). ``app`` is whose
        send needed the token, for the refresh counter.
        """
        current = self._current
        if current is None:
            return self._sign(app, now, "first")
        if now - current.issued_at >= self._refresh_age:
            return self._sign(app, now, "age")
        return current

    def replace_rejected(self, rejected: ProviderToken, app: str, now: float) -> ProviderToken | None:
        """APNs answered ExpiredProviderToken to ``rejected``: the token to resend with, or None for none.

        A concurrent send may have replaced it already: then the replacement, not another token. A token younger
        than MIN_REFRESH_AGE_SECONDS is not replaced: Apple would refuse the new one as an update too soon
        (TooManyProviderTokenUpdates), and a token that young refused as expired means our clock is far behind
        Apple's or the key is not the one Apple expects: an operator's problem, answered as an auth error.
        """
        current = self._current
        if current is not None and current is not rejected and current.issued_at >= rejected.issued_at:
            return current
        age = now - rejected.issued_at
        if age < MIN_REFRESH_AGE_SECONDS:
            log.warning(
                "apns_fresh_provider_token_expired",
                app=app,
                team_id=self.team_id,
                key_id=self.key_id,
                token_age_seconds=round(age),
            )
            return None
        return self._sign(app, now, "rejected")

    def _sign(self, app: str, now: float, reason: str) -> ProviderToken:
        issued_at = int(now)
        token = jwt.encode(
            {"iss": self.team_id, "iat": issued_at}, self._key, algorithm="ES256", headers={"kid": self.key_id}
        )
        self._current = ProviderToken(f"bearer {token}", issued_at)
        PROVIDER_TOKEN_REFRESHES.labels(app, "apns", reason).inc()
        log.info("apns_provider_token_signed", app=app, team_id=self.team_id, key_id=self.key_id, reason=reason)
        return self._current


def check_refresh_age(refresh_age: float) -> None:
    if not MIN_REFRESH_AGE_SECONDS <= refresh_age < MAX_TOKEN_AGE_SECONDS:
        raise ValueError(
            f"APNs provider token refresh age {refresh_age:g} s: must be within "
            f"[{MIN_REFRESH_AGE_SECONDS}, {MAX_TOKEN_AGE_SECONDS}) seconds (Apple's 20 and 60 minutes)"
        )


class ProviderTokens:
    """The process's signers, one per (team id, key id, key). The key itself is part of the lookup so an app
    whose key file differs (a rotation not yet everywhere) never sends a token signed with another app's key."""

    def __init__(self) -> None:
        self._signers: dict[tuple[str, str, str], ProviderTokenSigner] = {}

    def signer(
        self, team_id: str, key_id: str, key: str, refresh_age: float = DEFAULT_REFRESH_AGE_SECONDS
    ) -> ProviderTokenSigner:
        """The shared signer for this key; the first caller's refresh age is the one it keeps."""
        check_refresh_age(refresh_age)
        lookup = (team_id, key_id, hashlib.sha256(key.encode()).hexdigest())
        signer = self._signers.get(lookup)
        if signer is None:
            signer = self._signers[lookup] = ProviderTokenSigner(team_id, key_id, key, refresh_age)
        return signer


# Every ApnsProvider of the process uses these unless given its own (a test on a fake clock gives its own).
PROCESS_PROVIDER_TOKENS = ProviderTokens()
