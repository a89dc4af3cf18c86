"""The outcome producer's partitioner picks the partition Kafka's other clients pick for a key: the Java client's
murmur2 (its own test vectors) and aiokafka's DefaultPartitioner, for any key and partition count."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given, settings
from hypothesis import strategies as st

from pushsvc.partitioner import KeyPartitioner, murmur2

# org.apache.kafka.common.utils.UtilsTest.testMurmur2: the Java client's hash (signed 32 bits) of these keys.
JAVA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def _signed(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def test_the_hash_is_the_java_clients() -> None:
    assert {key: _signed(murmur2(key)) for key in JAVA_VECTORS} == JAVA_VECTORS


@settings(max_examples=3000)
@given(st.binary(max_size=300))
def test_the_hash_is_aiokafkas_for_any_key(key: bytes) -> None:
    assert murmur2(key) == aiokafka_murmur2(key)


@settings(max_examples=1000)
@given(
    key=st.binary(max_size=120) | st.text(max_size=60).map(str.encode),
    partitions=st.integers(1, 1000),
    unavailable=st.sets(st.integers(0, 999), max_size=5),
)
def test_a_keyed_record_goes_where_aiokafkas_default_sends_it(
    key: bytes, partitions: int, unavailable: set[int]
) -> None:
    all_partitions = list(range(partitions))
    available = [p for p in all_partitions if p not in unavailable]
    assert KeyPartitioner()(key, all_partitions, available) == DefaultPartitioner()(key, all_partitions, available)


def test_an_unkeyed_record_goes_to_an_available_partition() -> None:
    partitioner = KeyPartitioner()
    assert {partitioner(None, [0, 1, 2, 3], [1, 3]) for _ in range(200)} == {1, 3}
    assert {partitioner(None, [0, 1, 2], []) for _ in range(200)} == {0, 1, 2}  # none available: any
