"""The motor client, collection handles and every index the queries rely on."""

from __future__ import annotations

from dataclasses import dataclass

from motor.motor_asyncio import AsyncIOMotorClient, AsyncIOMotorCollection, AsyncIOMotorDatabase
from pymongo import ASCENDING, IndexModel

from pushsvc.config import MongoSettings

# Each index serves a named query in store/; keep the two lists in step.
DEVICE_INDEXES = [
    IndexModel([("app", ASCENDING), ("token", ASCENDING)], unique=True, name="app_token_unique"),
    IndexModel([("app", ASCENDING), ("user_id", ASCENDING)], name="app_user"),  # users target, user listing
    IndexModel([("app", ASCENDING), ("tags", ASCENDING)], name="app_tags"),  # segment target
]
NOTIFICATION_INDEXES = [
    # claim_due: per lane, the oldest due notifications whose lease has expired.
    IndexModel([("lane", ASCENDING), ("state", ASCENDING), ("due_at", ASCENDING)], name="lane_state_due"),
    # backlog: waiting notifications per state, due and future.
    IndexModel([("state", ASCENDING), ("due_at", ASCENDING)], name="state_due"),
    # events_pending: the outcome sweep's small set of unannounced final notifications.
    IndexModel([("event_pending", ASCENDING), ("finished_at", ASCENDING)], name="event_pending"),
]


@dataclass
class Database:
    client: AsyncIOMotorClient
    db: AsyncIOMotorDatabase

    @classmethod
    def connect(cls, settings: MongoSettings, server_selection_timeout_ms: int = 5000) -> Database:
        # tz_aware so any datetime read back is UTC-aware; uuidRepresentation fixed to avoid driver warnings.
        client: AsyncIOMotorClient = AsyncIOMotorClient(
            settings.uri,
            serverSelectionTimeoutMS=server_selection_timeout_ms,
            tz_aware=True,
            uuidRepresentation="standard",
        )
        return cls(client=client, db=client[settings.database])

    @property
    def devices(self) -> AsyncIOMotorCollection:
        return self.db["devices"]

    @property
    def notifications(self) -> AsyncIOMotorCollection:
        return self.db["notifications"]

    async def ensure_indexes(self) -> None:
        await self.devices.create_indexes(DEVICE_INDEXES)
        await self.notifications.create_indexes(NOTIFICATION_INDEXES)

    async def ping(self) -> None:
        await self.client.admin.command("ping")

    def close(self) -> None:
        self.client.close()
