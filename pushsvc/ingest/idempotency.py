"""Request ids are idempotency keys: a repeat with the same body is answered with the original, a repeat with a
different body is a conflict naming the first field that differs (as payment APIs treat idempotency keys).

Each notification stores `request_hash`, the hash of the canonical JSON of what the caller sent (keys sorted,
no whitespace), taken before intake stamps anything on it (a Live Activity's default timestamp). A repeat is
compared by hash alone; the stored request is read field by field only to name the difference. Documents
stored before hashes existed (or under another hash version) are compared by their stored request.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

# The field every notification document carries (store.notifications documents it).
REQUEST_HASH = "request_hash"
# "v1": SHA-256 of orjson with sorted keys. A stored hash of another version is ignored (the stored request is
# compared instead), so changing the canonical form never turns an honest repeat into a conflict.
HASH_VERSION = "v1:"
# Named when the hashes differ but no field does (the stored request was rewritten since, e.g. by an erasure).
WHOLE_BODY = "body"


def canonical(value: Any) -> bytes:
    """The canonical JSON of a request: key order and whitespace never matter; values keep their JSON types
    (42, 42.0 and "42" differ: FCM would receive "42" and "42.0")."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def request_hash(sent: Mapping[str, Any]) -> str:
    """What is stored as `request_hash` for a request as the caller sent it."""
    return HASH_VERSION + hashlib.sha256(canonical(sent)).hexdigest()


def differing_field(stored: Mapping[str, Any], stored_hash: str | None, sent: Mapping[str, Any]) -> str | None:
    """None when `sent` repeats the stored request, else the dotted path of the first field that differs.

    `stored` is the request as stored (intake may have stamped fields on it), `stored_hash` its
    `request_hash` (None for a document recorded before hashes existed).
    """
    if stored_hash is not None and stored_hash.startswith(HASH_VERSION):
        if stored_hash == request_hash(sent):
            return None
    elif canonical(_unstamped(stored, sent)) == canonical(sent):
        return None
    # Stamped fields the caller left out are no difference of theirs; only if nothing else differs is the
    # stamp what differs (the caller sent a timestamp once and not the other time).
    return first_difference(_unstamped(stored, sent), sent) or first_difference(stored, sent) or WHOLE_BODY


def first_difference(stored: Any, sent: Any, path: str = "") -> str | None:
    """The dotted path (`message.title`, `target.users[2]`) of the first value that differs, in the order the
    caller wrote the fields (then fields only the stored request has); None if equal."""
    if isinstance(stored, Mapping) and isinstance(sent, Mapping):
        for name in [*sent, *sorted(k for k in stored if k not in sent)]:
            child = f"{path}.{name}" if path else str(name)
            if name not in stored or name not in sent:
                return child
            found = first_difference(stored[name], sent[name], child)
            if found is not None:
                return found
        return None
    if isinstance(stored, list) and isinstance(sent, list):
        for index, (old, new) in enumerate(zip(stored, sent, strict=False)):
            found = first_difference(old, new, f"{path}[{index}]")
            if found is not None:
                return found
        # One is a prefix of the other: the first item only one of them has.
        return None if len(stored) == len(sent) else f"{path}[{min(len(stored), len(sent))}]"
    return None if canonical(stored) == canonical(sent) else (path or WHOLE_BODY)


def _unstamped(stored: Mapping[str, Any], sent: Mapping[str, Any]) -> Mapping[str, Any]:
    """`stored` without what intake stamps on a request (model.stamp_live_activity: a Live Activity's
    `timestamp`) where the caller did not send it."""
    activity = _live_activity(stored)
    sent_activity = _live_activity(sent)
    if activity is None or "timestamp" not in activity or (sent_activity is not None and "timestamp" in sent_activity):
        return stored
    message = {**stored["message"], "live_activity": {k: v for k, v in activity.items() if k != "timestamp"}}
    return {**stored, "message": message}


def _live_activity(request: Mapping[str, Any]) -> Mapping[str, Any] | None:
    message = request.get("message")
    activity = message.get("live_activity") if isinstance(message, Mapping) else None
    return activity if isinstance(activity, Mapping) else None
