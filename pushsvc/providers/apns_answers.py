"""APNs answers: Apple's status/reason table -> outcome class, and what an error body says.

Checkable line by line against Apple's "Handling notification responses from APNs".
"""

from __future__ import annotations

import json

from pushsvc.model import Outcome

# Reasons that mean "this device token will never work again": the dispatcher deactivates the token.
_INVALID_TOKEN_REASONS = frozenset(
    {"BadDeviceToken", "DeviceTokenNotForTopic", "Unregistered", "ExpiredToken"}
)
# Answers about the connection or the rate, not the notification: the same request later can succeed.
# IdleTimeout (400): the connection, not the notification. TooManyRequests (429): too many pushes to one
# device. TooManyProviderTokenUpdates (429): a new provider token within 20 minutes of the previous one;
# apns_token.py never signs that often, so another process signing with the same key did (its next request,
# past the 20 minutes, goes through).
_RETRYABLE_REASONS = frozenset({"IdleTimeout", "TooManyRequests", "TooManyProviderTokenUpdates"})


def classify(status: int, reason: str) -> Outcome:
    """Map an APNs answer to an outcome class (Apple's status/reason table)."""
    if status == 200:
        return Outcome.DELIVERED
    if status == 410 or reason in _INVALID_TOKEN_REASONS:
        return Outcome.INVALID_TOKEN
    if status == 403:  # Expired/Invalid/MissingProviderToken, BadCertificate(Environment), Forbidden
        # ExpiredProviderToken reaches here only when apns.py could not answer it with one new token and one
        # resend: the token refused was itself fresh (our clock far from Apple's, or the wrong key).
        return Outcome.AUTH_ERROR
    if status == 429 or status >= 500 or reason in _RETRYABLE_REASONS:
        return Outcome.RETRYABLE
    return Outcome.REJECTED  # 413 and every other 4xx: resending the same request cannot succeed


MAX_TIMESTAMP_MS = 10**15


def error_details(status: int, body: bytes) -> tuple[str, float | None]:
    """The error body's reason (or http_<status>) and, for a 410, its timestamp in epoch seconds.

    Apple: the timestamp is "the last time at which APNs confirmed that the device token was no longer
    valid for the topic" (milliseconds since the epoch); only a registration after it makes the token good.
    """
    try:
        error = json.loads(body) if body else None
    except (ValueError, RecursionError):  # not JSON, or nested too deep
        error = None
    if not isinstance(error, dict):
        error = {}
    reason = error.get("reason")
    timestamp = error.get("timestamp")
    invalid_since = None
    # Within year 1970..~33658 in milliseconds: anything else is not a time (and a huge JSON integer would
    # not even convert to a float).
    if status == 410 and type(timestamp) in (int, float) and 0 < timestamp < MAX_TIMESTAMP_MS:
        invalid_since = timestamp / 1000.0
    return (reason if isinstance(reason, str) and reason else f"http_{status}"), invalid_since
