"""The request contract and the types the service passes around: requests, messages, targets, options, Live
Activities, devices, states and outcomes.

The contract (README "Request contract") is shared by Kafka and the HTTP API. Validation is strict: unknown
keys are rejected so that a producer's typo ("ttl_second") fails loudly instead of being ignored. Each part of
a request has its module, with the limits and key sets its validator enforces as module-level constants; the
OpenAPI schema (api/openapi_schemas.py) is built from the same constants.

- `errors`: RequestError, naming the field at fault.
- `fields`: checks shared by every part (objects with known keys, strings, lists, the field paths).
- `request`: PushRequest and parse_request, the entry point; its route; stamp_live_activity.
- `target`, `message`, `options`, `live_activity`: one part of a request each.
- `device`: Recipient (a registered device as a push addresses it) and WebSubscription.
- `states`: NotificationState and Outcome.
"""

from pushsvc.model.device import PLATFORMS, Platform, Recipient, WebSubscription
from pushsvc.model.errors import RequestError
from pushsvc.model.fields import MAX_DATA_INT, MAX_FIELD_NAME_IN_ERRORS, MIN_DATA_INT, NOT_UNICODE
from pushsvc.model.live_activity import (
    LIVE_ACTIVITY_EVENTS,
    LIVE_ACTIVITY_FIELDS,
    MAX_JSON_DEPTH,
    MAX_RELEVANCE_SCORE,
    LiveActivity,
)
from pushsvc.model.message import (
    MAX_BADGE,
    MAX_DATA_KEYS,
    MAX_LOCALIZED,
    RESERVED_DATA_KEYS,
    RESERVED_DATA_PREFIXES,
    LocalizedText,
    Message,
)
from pushsvc.model.options import (
    MAX_COLLAPSE_KEY_BYTES,
    MAX_TTL_SECONDS,
    PUSH_TYPES,
    SEND_AT_MAX,
    SEND_AT_MIN,
    Options,
    PushType,
)
from pushsvc.model.request import MAX_ID_LENGTH, PushRequest, parse_request, route_of, stamp_live_activity
from pushsvc.model.states import NotificationState, Outcome
from pushsvc.model.target import MAX_TAGS, MAX_TOKENS_PER_REQUEST, MAX_USERS_PER_REQUEST, Segment, Target

__all__ = [
    "LIVE_ACTIVITY_EVENTS",
    "LIVE_ACTIVITY_FIELDS",
    "MAX_BADGE",
    "MAX_COLLAPSE_KEY_BYTES",
    "MAX_DATA_INT",
    "MAX_DATA_KEYS",
    "MAX_FIELD_NAME_IN_ERRORS",
    "MAX_ID_LENGTH",
    "MAX_JSON_DEPTH",
    "MAX_LOCALIZED",
    "MAX_RELEVANCE_SCORE",
    "MAX_TAGS",
    "MAX_TOKENS_PER_REQUEST",
    "MAX_TTL_SECONDS",
    "MAX_USERS_PER_REQUEST",
    "MIN_DATA_INT",
    "NOT_UNICODE",
    "PLATFORMS",
    "PUSH_TYPES",
    "RESERVED_DATA_KEYS",
    "RESERVED_DATA_PREFIXES",
    "SEND_AT_MAX",
    "SEND_AT_MIN",
    "LiveActivity",
    "LocalizedText",
    "Message",
    "NotificationState",
    "Options",
    "Outcome",
    "Platform",
    "PushRequest",
    "PushType",
    "Recipient",
    "RequestError",
    "Segment",
    "Target",
    "WebSubscription",
    "parse_request",
    "route_of",
    "stamp_live_activity",
]
