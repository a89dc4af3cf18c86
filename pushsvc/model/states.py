"""Where a notification is in its life, and how one delivery attempt ended."""

from __future__ import annotations

import enum


class NotificationState(enum.StrEnum):
    ACCEPTED = "accepted"
    SCHEDULED = "scheduled"
    DISPATCHING = "dispatching"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Outcome(enum.StrEnum):
    """Final classification of one delivery attempt (see providers/base.py)."""

    DELIVERED = "delivered"
    INVALID_TOKEN = "invalid_token"
    REJECTED = "rejected"
    RETRYABLE = "retryable"
    AUTH_ERROR = "auth_error"
