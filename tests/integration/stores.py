"""The stores of the `notifications` collection on one database, wired as the service wires them (app.py), for
tests that call the store directly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pushsvc.model import parse_request
from pushsvc.scheduling.lanes import lane_for
from pushsvc.store.claims import ClaimStore
from pushsvc.store.database import Database
from pushsvc.store.events import EventStore
from pushsvc.store.leases import LeaseStore
from pushsvc.store.notifications import NotificationStore, new_document

if TYPE_CHECKING:
    from pushsvc.service import PushService


@dataclass(frozen=True)
class Stores:
    notifications: NotificationStore
    claims: ClaimStore
    leases: LeaseStore
    events: EventStore

    @classmethod
    def on(cls, database: Database) -> Stores:
        return cls(NotificationStore(database), ClaimStore(database), LeaseStore(database), EventStore(database))

    @classmethod
    def of(cls, service: PushService) -> Stores:
        """The running service's own stores."""
        return cls(service.notifications, service.claims, service.leases, EventStore(service.database))

    @property
    def collection(self) -> Any:
        """The raw collection, for what a test sets up or checks beneath the stores."""
        return self.notifications.database.notifications


def document(raw: dict, source: str, due_at: float, now: float) -> dict:
    """The notification `raw` (a valid request) becomes, in the lane intake would record it in."""
    request = parse_request(raw)
    return new_document(request, raw, source, due_at, now, lane=lane_for(request))
