"""The receipts contract (`POST /v1/receipts`): what an app's mobile backend reports about a push once the
device has it ("received") or the user opened it ("opened").

Outside input: `parse_receipts` never raises anything but `RequestError` naming the field
(`receipts[3].event`), like the request contract. A batch is validated whole (a malformed item fails the
batch, nothing is recorded: it is a bug in the caller, and the retry after the fix is idempotent anyway); what
happens to each valid item (recorded, a repeat, an unknown notification or device) is answered per item.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pushsvc.model import RequestError
from pushsvc.model.fields import (
    MAX_ID_LENGTH,
    json_type,
    reject_unknown,
    require_mapping,
    required_string,
)
from pushsvc.model.target import MAX_TOKEN_LENGTH, MAX_USER_ID_LENGTH

BATCH_FIELDS = ("app", "receipts")
RECEIPT_FIELDS = ("notification_id", "token", "user_id", "event", "at")
# Who the receipt is about: exactly one of them.
DEVICE_FIELDS = ("token", "user_id")
RECEIVED = "received"
OPENED = "opened"
EVENTS = (RECEIVED, OPENED)
# A mobile backend batches what its devices report; larger batches are split by the caller.
MAX_RECEIPTS = 500
# Device clocks drift: `at` may be this far in the future, or this far before the notification was created,
# before it is refused.
CLOCK_SKEW_SECONDS = 300.0
MAX_AT_LENGTH = 64


@dataclass(frozen=True)
class Receipt:
    """One valid item of a batch, at its position in it."""

    index: int
    notification_id: str  # the request id, as the push payload carried it (unique within the app)
    token: str | None
    user_id: str | None
    event: str
    at: float  # epoch seconds, UTC

    @property
    def field(self) -> str:
        """The item's path in the batch, for errors."""
        return f"receipts[{self.index}]"


@dataclass(frozen=True)
class ReceiptBatch:
    app: str
    receipts: tuple[Receipt, ...]


def parse_receipts(body: Any, known_apps: Collection[str], now: float) -> ReceiptBatch:
    """A batch of receipts, or RequestError naming the first bad field. `now` is the service's clock: an `at`
    more than CLOCK_SKEW_SECONDS ahead of it is refused."""
    batch = require_mapping(body, "body")
    reject_unknown(batch, "", BATCH_FIELDS)
    app = required_string(batch.get("app"), "app", 64)
    if app not in known_apps:
        raise RequestError("app", f"unknown app {app[:128]!r}")
    items = batch.get("receipts")
    if items is None:
        raise RequestError("receipts", "required")
    if not isinstance(items, list):
        raise RequestError("receipts", f"must be a list, got {json_type(items)}")
    if not items:
        raise RequestError("receipts", "must not be empty")
    if len(items) > MAX_RECEIPTS:
        raise RequestError("receipts", f"at most {MAX_RECEIPTS} items (split the batch)")
    return ReceiptBatch(app, tuple(_receipt(item, i, now) for i, item in enumerate(items)))


def _receipt(item: Any, index: int, now: float) -> Receipt:
    path = f"receipts[{index}]"
    fields = require_mapping(item, path)
    reject_unknown(fields, path, RECEIPT_FIELDS)
    notification_id = required_string(fields.get("notification_id"), f"{path}.notification_id", MAX_ID_LENGTH)
    named = [name for name in DEVICE_FIELDS if fields.get(name) is not None]
    if len(named) != 1:
        # Both named would make the idempotency key ambiguous (which one is the device?).
        raise RequestError(f"{path}.token", "exactly one of token or user_id is required")
    token = user_id = None
    if named[0] == "token":
        token = required_string(fields["token"], f"{path}.token", MAX_TOKEN_LENGTH)
    else:
        user_id = required_string(fields["user_id"], f"{path}.user_id", MAX_USER_ID_LENGTH)
    event = fields.get("event")
    if event not in EVENTS:
        shown = event if isinstance(event, str) else json_type(event)
        raise RequestError(f"{path}.event", f"must be one of {', '.join(EVENTS)}, got {str(shown)[:40]!r}")
    at = parse_at(fields.get("at"), f"{path}.at")
    if at > now + CLOCK_SKEW_SECONDS:
        raise RequestError(f"{path}.at", f"in the future (more than {CLOCK_SKEW_SECONDS:.0f} s ahead)")
    return Receipt(index, notification_id, token, user_id, str(event), at)


def parse_at(value: Any, path: str) -> float:
    """An ISO 8601 time with an offset, as epoch seconds."""
    if value is None:
        raise RequestError(path, "required: ISO 8601 with an offset, e.g. 2026-12-04T21:30:00Z")
    if not isinstance(value, str):
        raise RequestError(path, f"must be an ISO 8601 string, got {json_type(value)}")
    if len(value) > MAX_AT_LENGTH:
        raise RequestError(path, f"longer than {MAX_AT_LENGTH} characters")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise RequestError(path, f"not ISO 8601: {value[:64]!r}") from exc
    if parsed.tzinfo is None:
        raise RequestError(path, "needs a timezone offset (e.g. 'Z')")
    # Before 2000 is no push of ours; and converting year-1 times with an offset would overflow.
    if not 2000 <= parsed.year < 2100:
        raise RequestError(path, "must be between 2000 and 2100")
    return parsed.astimezone(UTC).timestamp()


def check_not_before(receipt: Receipt, created_at: float) -> None:
    """A receipt cannot predate its notification (beyond clock skew): 400 naming its `at`."""
    if receipt.at < created_at - CLOCK_SKEW_SECONDS:
        raise RequestError(f"{receipt.field}.at", "before the notification was created")

