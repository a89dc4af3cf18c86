"""Cutting an audience into ranges: the midpoint of two tokens always lies between them, and any cuts
partition the token space (each token in exactly one range)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pushsvc.dispatch.ranges import density_estimate, levels_for, midpoint
from pushsvc.store.ranges import ranges_of

tokens = st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=0x2FF), min_size=0, max_size=80)
hex_tokens = st.integers(min_value=0, max_value=2**256 - 1).map(lambda n: f"{n:064x}")


@given(tokens, tokens)
def test_a_midpoint_lies_between_the_two_tokens(a: str, b: str) -> None:
    first, last = sorted((a, b))
    cut = midpoint(first, last)
    if cut is not None:
        assert first <= cut < last
    if first == last:
        assert cut is None


@given(hex_tokens, hex_tokens)
def test_distinct_hex_tokens_far_apart_are_always_cut(a: str, b: str) -> None:
    first, last = sorted((a, b))
    if int(last, 16) - int(first, 16) > 2**200:  # differ within the first 14 hex digits
        cut = midpoint(first, last)
        assert cut is not None and first <= cut < last


def test_the_cut_of_sequential_tokens_is_between_them_not_at_an_end() -> None:
    first, last = "fcm00000000:APA91b", "fcm00999999:APA91b"
    cut = midpoint(first, last)
    assert cut is not None and "fcm0040" <= cut <= "fcm0060"


@given(st.lists(tokens, max_size=20), st.lists(tokens, max_size=50))
def test_cuts_partition_the_token_space(cuts: list[str], probes: list[str]) -> None:
    slices = ranges_of(sorted(set(cuts)))
    for token in probes:
        holding = [
            (after, upto) for after, upto in slices
            if (after is None or token > after) and (upto is None or token <= upto)
        ]
        assert len(holding) == 1


def test_levels_give_at_most_the_parts_asked_for() -> None:
    assert [levels_for(n) for n in (0, 1, 2, 3, 8, 9, 64, 100)] == [0, 0, 1, 1, 3, 3, 6, 6]


def test_the_density_estimate_of_random_tokens_is_close() -> None:
    import random

    rng = random.Random(7)
    audience = sorted(f"{rng.getrandbits(256):064x}" for _ in range(100_000))
    estimate = density_estimate(audience[:1000], audience[-1])
    assert 80_000 <= estimate <= 120_000, estimate


def test_sequential_tokens_estimate_close_too() -> None:
    audience = [f"{i:064x}" for i in range(5000)]
    assert 4_500 <= density_estimate(audience[:1000], audience[-1]) <= 5_500


def test_a_sample_spanning_nothing_measurable_estimates_as_unbounded() -> None:
    # Tokens differing only past the characters compared: the caller checks with one page (estimate_audience).
    audience = ["x" * 20 + f"{i:08d}" + "y" for i in range(1000)]
    assert density_estimate(audience, "z") == float("inf")
