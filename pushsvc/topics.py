"""`pushsvc topics create`: the three topics pushsvc uses, made idempotently with the service's own Kafka
settings (TLS/SASL included). See docs/topics.md for who creates them and how to size them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from pushsvc.config import KafkaSettings
from pushsvc.kafka_options import client_options

DAY_MS = 86_400_000


@dataclass(frozen=True)
class TopicPlan:
    partitions: int = 12  # the most consumer replicas that can share the requests topic
    replication_factor: int = 3
    dlq_retention_days: int = 14  # long enough to notice, fix the producer and replay
    outcomes_retention_days: int = 7


def planned(settings: KafkaSettings, plan: TopicPlan) -> list[NewTopic]:
    """Requests keyed by `<app>:<id>` over `partitions`; the DLQ and outcomes are smaller streams, kept for
    their retention (topic configs a broker may not honour: Tansu ignores them)."""
    def topic(name: str, partitions: int, retention_days: int | None) -> NewTopic:
        configs = {"retention.ms": str(retention_days * DAY_MS)} if retention_days else {}
        return NewTopic(name, partitions, plan.replication_factor, topic_configs=configs)

    return [
        topic(settings.requests_topic, plan.partitions, None),
        topic(settings.dlq_topic, max(1, plan.partitions // 4), plan.dlq_retention_days),
        topic(settings.outcomes_topic, max(1, plan.partitions // 2), plan.outcomes_retention_days),
    ]


async def create_topics(settings: KafkaSettings, plan: TopicPlan, **client_overrides: Any) -> dict[str, str]:
    """Create what is missing; returns topic -> "created" | "exists". Existing topics are left as they are
    (partitions only ever grow, by hand: more partitions re-key requests of one app and id).

    `client_overrides`: admin client options over the service's own, e.g. the CLI's `request_timeout_ms`
    (aiokafka's default waits 40 s for a broker that never answers)."""
    admin = AIOKafkaAdminClient(**{**client_options(settings), **client_overrides})
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        result: dict[str, str] = {}
        for topic in planned(settings, plan):
            if topic.name in existing:
                result[topic.name] = "exists"
                continue
            try:
                await admin.create_topics([topic])
                result[topic.name] = "created"
            except TopicAlreadyExistsError:  # another replica or job made it meanwhile
                result[topic.name] = "exists"
        return result
    finally:
        await admin.close()
