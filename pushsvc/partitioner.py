"""Which partition of a topic a keyed record goes to: Kafka's default (murmur2 of the key, as the Java client's
and aiokafka's DefaultPartitioner), computed in fewer Python operations.

aiokafka's murmur2 reads the key a byte at a time and masks after every step: ~5 µs for a notification's key,
paid once per outcome event (their key is the notification's), ~1.5% of a one-device push's CPU at the peak.
This one reads the key's 32-bit words in one struct call and masks only where a product can pass 32 bits. The
hash is the same for every key (tests/unit/test_partitioner.py holds it to aiokafka's), so an event still lands
on the partition every other Kafka client picks for its key.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence

_SEED = 0x9747B28C
_M = 0x5BD1E995  # the mixing constant of MurmurHash2
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """MurmurHash2 (32 bits, Kafka's seed) of `data`, as org.apache.kafka.common.utils.Utils.murmur2, unsigned."""
    length = len(data)
    h = _SEED ^ length
    words = length >> 2
    if words:
        for k in struct.unpack_from(f"<{words}I", data):
            k = (k * _M) & _MASK
            k = ((k ^ (k >> 24)) * _M) & _MASK
            h = ((h * _M) & _MASK) ^ k
    tail = length & 3
    if tail:
        end = length - tail
        if tail == 3:
            h ^= data[end + 2] << 16
        if tail >= 2:
            h ^= data[end + 1] << 8
        h = ((h ^ data[end]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


class KeyPartitioner:
    """An AIOKafkaProducer `partitioner`: a keyed record to the partition of its key's hash among all of the
    topic's partitions (so a key keeps its partition while one is unavailable, as in Kafka's clients); an
    unkeyed one to a random available partition."""

    def __call__(self, key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]) -> int:
        if key is None:
            return random.choice(available or all_partitions)
        return all_partitions[(murmur2(key) & 0x7FFFFFFF) % len(all_partitions)]
