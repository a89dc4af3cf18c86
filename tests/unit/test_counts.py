"""store/counts.py: the counters a finish writes and an outcome event shows, against their plain definitions."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from pushsvc.store.counts import (
    COUNT_KEYS,
    PLATFORM_SEPARATOR,
    VARIANT_SEPARATOR,
    added_counts,
    counted_by_platform,
    full_counts,
    split_counts,
)

OUTCOMES = st.sampled_from([*COUNT_KEYS, "legacy_counter"])  # a key this version does not know, too
KEYS = (
    OUTCOMES
    | st.builds(lambda o, p: f"{o}{PLATFORM_SEPARATOR}{p}", OUTCOMES, st.sampled_from(["ios", "android", "web"]))
    | st.builds(lambda o, v: f"{o}{VARIANT_SEPARATOR}{v}", OUTCOMES, st.sampled_from(["a", "b", "control"]))
)
# Counts are never negative as written; a hand-edited document may hold anything, zeros and negatives included.
COUNTS = st.dictionaries(KEYS, st.integers(-3, 10**6), max_size=12)


@given(COUNTS, COUNTS)
def test_added_counts_is_the_sum_of_two_counters_made_full(saved: dict[str, int], more: dict[str, int]) -> None:
    expected = full_counts(Counter(saved) + Counter(more))
    added = added_counts(saved, more)
    assert added == expected
    assert list(added) == list(expected)  # the order the finish writes and the outcome event shows


def split_by_partition(counts: dict[str, int]) -> tuple[dict, dict, dict]:
    """The split as first written: every key cut at the platform separator, then at the variant one."""
    plain: dict[str, int] = {}
    by_platform: dict[str, dict[str, int]] = {}
    by_variant: dict[str, dict[str, int]] = {}
    for key, value in counts.items():
        outcome, separator, platform = key.partition(PLATFORM_SEPARATOR)
        if separator:
            by_platform.setdefault(platform, {})[outcome] = value
            continue
        outcome, separator, variant = key.partition(VARIANT_SEPARATOR)
        if separator:
            by_variant.setdefault(variant, {})[outcome] = value
        else:
            plain[key] = value
    return plain, by_platform, by_variant


@given(COUNTS | st.dictionaries(st.text(max_size=8), st.integers(), max_size=8))
def test_split_counts_takes_keys_apart_at_their_separators(counts: dict[str, int]) -> None:
    """As the full counts (every COUNT_KEYS counter, unknown plain keys left out) cut at their separators."""
    split = split_counts(counts)
    assert (split.plain, split.by_platform, split.by_variant) == split_by_partition(full_counts(counts))


@given(COUNTS | st.dictionaries(st.text(max_size=8), st.integers(), max_size=8))
def test_full_counts_is_every_counter_and_the_separated_ones(counts: dict[str, int]) -> None:
    separated = {k: v for k, v in counts.items() if PLATFORM_SEPARATOR in k or VARIANT_SEPARATOR in k}
    assert full_counts(counts) == {**{key: counts.get(key, 0) for key in COUNT_KEYS}, **separated}


@given(COUNTS | st.dictionaries(st.text(max_size=8), st.integers(), max_size=8))
def test_counted_by_platform_is_any_key_with_the_platform_separator(counts: dict[str, int]) -> None:
    assert counted_by_platform(counts) == any(PLATFORM_SEPARATOR in key for key in counts)
