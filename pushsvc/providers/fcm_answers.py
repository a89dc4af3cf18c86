"""FCM answers: an error reply as firebase-admin's exception, and that exception -> outcome class.

Checkable against FCM's ErrorCode table (UNREGISTERED, SENDER_ID_MISMATCH, QUOTA_EXCEEDED, ...).
"""

from __future__ import annotations

from typing import Any

import httpx
from firebase_admin import _utils, exceptions, messaging

from pushsvc.model import Outcome
from pushsvc.providers.base import (
    SendResult,
    parse_retry_after,
)
from pushsvc.providers.transport import HttpReply

_FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"


def firebase_error(reply: HttpReply, url: str) -> exceptions.FirebaseError:
    """firebase-admin's own exception for an FCM error answer (UnregisteredError, QuotaExceededError, ...).

    Never raises: firebase-admin's parser assumes Google's error shape (UTF-8 JSON, an "error" object whose
    "details" is a list of objects) and fails on anything else, e.g. a proxy's HTML page or odd JSON; such an
    answer is classified by its HTTP status alone. httpx takes only ASCII header values: others are left out.
    """
    request = httpx.Request("POST", url)
    headers = {k: v for k, v in reply.headers.items() if k.isascii() and v.isascii()}
    response = httpx.Response(reply.status, headers=headers, content=reply.body, request=request)
    error = httpx.HTTPStatusError(f"HTTP {reply.status}", request=request, response=response)
    try:
        return _utils.handle_platform_error_from_httpx(error, messaging._MessagingService._build_fcm_error_httpx)
    except Exception:
        return _utils.handle_httpx_error(error)


def classify_error(error: exceptions.FirebaseError) -> SendResult:
    """Outcome for a firebase-admin exception raised for an FCM answer."""
    response = error.http_response
    status = response.status_code if response is not None else None
    details = _error_details(response)
    fcm_code = next((d.get("errorCode") for d in details if d.get("@type") == _FCM_ERROR_TYPE), None)
    reason = fcm_code or error.code

    def result(outcome: Outcome, retry_after: float | None = None) -> SendResult:
        return SendResult(outcome, reason=str(reason), status=status, retry_after=retry_after)

    # Order matters: the FCM-specific types subclass the generic ones (SenderIdMismatch is a PermissionDenied).
    if isinstance(error, messaging.UnregisteredError | messaging.SenderIdMismatchError):
        return result(Outcome.INVALID_TOKEN)
    if isinstance(error, messaging.ThirdPartyAuthError):
        return result(Outcome.AUTH_ERROR)
    if isinstance(error, exceptions.InvalidArgumentError):
        token_problem = _is_token_problem(str(error), details)
        return result(Outcome.INVALID_TOKEN if token_problem else Outcome.REJECTED)
    if isinstance(error, exceptions.UnauthenticatedError | exceptions.PermissionDeniedError):
        return result(Outcome.AUTH_ERROR)
    retryable = (
        exceptions.ResourceExhaustedError,  # includes messaging.QuotaExceededError
        exceptions.UnavailableError,
        exceptions.InternalError,
        exceptions.DeadlineExceededError,
    )
    if isinstance(error, retryable) or (status is not None and (status >= 500 or status == 408)):
        return result(Outcome.RETRYABLE, _retry_after(response))
    return result(Outcome.REJECTED)


def _is_token_problem(message: str, details: list[dict[str, Any]]) -> bool:
    """Whether an INVALID_ARGUMENT is about the registration token rather than the payload.

    FCM uses INVALID_ARGUMENT for both. For a malformed or foreign token it says so: the message is
    "The registration token is not a valid FCM registration token" and, when present, a BadRequest
    field violation names ``message.token``. Payload errors name other fields ("Invalid value at
    'message.data[0].value'", "Android message is too big", ...). Only a token problem may deactivate
    the device; anything unclear stays REJECTED, which fails that delivery but keeps the token.
    """
    for detail in details:
        violations = detail.get("fieldViolations")
        if detail.get("@type") == _BAD_REQUEST_TYPE and isinstance(violations, list):
            fields = [str(v.get("field", "")) for v in violations if isinstance(v, dict)]
            if fields:
                return all(f == "message.token" for f in fields)
    return "registration token" in message.lower()


def _error_details(response: Any) -> list[dict[str, Any]]:
    if response is None:
        return []
    try:
        details = response.json().get("error", {}).get("details", [])
    except (ValueError, AttributeError, RecursionError):  # not JSON (or not UTF-8), not objects, too deep
        return []
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _retry_after(response: Any) -> float | None:
    return parse_retry_after(response.headers.get("retry-after") if response is not None else None)
