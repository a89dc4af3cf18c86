"""Where to cut an audience into ranges: boundaries found by bisecting the tokens it actually holds.

Token order is the order audiences are read in (store/devices.py), so a range is a slice of it, read with the
same keyset pages. Boundaries must come cheap whatever the audience's size: no count, no scan. Each interval
is probed for its first and last token (one index probe each) and cut at the midpoint of those two strings;
the two halves are cut again, level by level. Cutting between the tokens that exist (not over the whole
string space) adapts to how tokens look: random APNs hex and FCM tokens spread evenly, and sequential test
tokens ("fcm00000001", ...) too, since each level looks at where the tokens of an interval actually are.
Balance is by token space, not by count: a range may hold more devices than another, which costs only
balance (more ranges than replicas absorb it), never correctness: any sorted boundaries partition the audience.
"""

from __future__ import annotations

import asyncio
import bisect
import math
from collections.abc import Callable, Sequence

from pushsvc.dispatch.progress import announce_finished, campaign_progress, progress_ratio
from pushsvc.logs import get_logger
from pushsvc.model import PushRequest
from pushsvc.outcomes import Announcer
from pushsvc.scheduling.clock import ServerClock
from pushsvc.store.campaigns import KIND as CAMPAIGN_KIND
from pushsvc.store.devices import SMALL_LOOKUP, DeviceStore
from pushsvc.store.ranges import RANGE_KIND, SETTLE_CHECK_SECONDS, RangeStore
from pushsvc.store.records import NotificationRecord

log = get_logger(__name__)

# Characters a midpoint is built from: printable ASCII (tokens are printable ASCII in practice; a token with
# other characters still sorts correctly, a midpoint next to it is checked and dropped if out of order).
_LOW, _HIGH = 0x20, 0x7E
_BASE = _HIGH - _LOW + 1
# Characters after the common prefix a midpoint looks at.
_WIDTH = 8
# Tokens read to estimate the size of an audience nobody counted (`estimate_audience`): one page.
SAMPLE_TOKENS = 1000
# A range throttled below this many deliveries a second gains nothing from another replica: a throttled
# campaign is cut into at most rate / RANGE_MIN_RATE ranges.
RANGE_MIN_RATE = 1000


def _common_prefix(a: str, b: str) -> int:
    length = 0
    while length < min(len(a), len(b)) and a[length] == b[length]:
        length += 1
    return length


def _number(text: str, prefix: int) -> int:
    """The _WIDTH characters of `text` after `prefix` as a base-95 number (order-preserving for printable
    ASCII; other characters are clamped, which only costs precision)."""
    value = 0
    for char in text[prefix : prefix + _WIDTH].ljust(_WIDTH, chr(_LOW)):
        value = value * _BASE + (min(max(ord(char), _LOW), _HIGH) - _LOW)
    return value


def midpoint(first: str, last: str) -> str | None:
    """A string m with first <= m < last (code point order, which is MongoDB's binary UTF-8 order), about
    halfway between them; None when there is none worth cutting at (first == last, or adjacent)."""
    if first >= last:
        return None
    prefix = _common_prefix(first, last)
    middle = (_number(first, prefix) + _number(last, prefix)) // 2
    chars = []
    for _ in range(_WIDTH):
        middle, digit = divmod(middle, _BASE)
        chars.append(chr(digit + _LOW))
    cut = (first[:prefix] + "".join(reversed(chars))).rstrip(chr(_LOW))
    return cut if first <= cut < last else None


def density_estimate(sample: Sequence[str], last: str) -> float:
    """How many tokens lie between sample[0] and `last`, if they are spread the way the first ones are:
    len(sample) times the whole span over the sample's span.

    Spans are measured on the characters the tokens use (seen in the sample: hex tokens use 16, FCM's about
    64), each character counted by its rank among them, so an alphabet's gaps in ASCII (between '9' and 'a')
    do not count as room. Infinite when the sample spans nothing measurable.
    """
    alphabet = sorted(set("".join(sample)) | set(last))
    prefix = _common_prefix(sample[0], last)
    base = len(alphabet) + 1  # rank 0: past the end of a shorter token

    def number(text: str) -> int:
        value = 0
        for index in range(prefix, prefix + _WIDTH):
            rank = bisect.bisect_left(alphabet, text[index]) + 1 if index < len(text) else 0
            value = value * base + rank
        return value

    covered = number(sample[-1]) - number(sample[0])
    whole = number(last) - number(sample[0])
    return len(sample) * whole / covered if covered > 0 else math.inf


def may_cut(record: NotificationRecord, request: PushRequest, range_devices: int) -> bool:
    """Whether a notification not cut yet may be cut into ranges (with `range_devices` 0, none is): a users
    or segment audience (a few users are one chunk, read whole) that is not a range itself and has not begun
    whole (a run that has begun whole goes on whole)."""
    target = request.target
    few_users = bool(target.users) and len(target.users) <= SMALL_LOOKUP
    if not range_devices or record.kind == RANGE_KIND or target.tokens or few_users:
        return False
    began = record.cursor is not None or record.chunk_done or record.zones_done
    return not (began or record.wave_zones is not None or record.progress_seq)


def parts_for(estimate: float, range_devices: int, max_ranges: int, rate: float | None) -> int:
    """How many ranges an audience of about `estimate` devices is cut into: one per `range_devices`, at most
    `max_ranges`, and, throttled at `rate` a second, at most one per RANGE_MIN_RATE (1: run it whole)."""
    # An unbounded estimate (tokens the sample could not measure) takes the most ranges allowed.
    wanted = float(estimate) / range_devices
    parts = min(max_ranges, math.ceil(wanted)) if math.isfinite(wanted) else max_ranges
    if rate:
        # Each range is throttled at rate/parts; one replica serves a slower campaign whole.
        parts = min(parts, int(rate // RANGE_MIN_RATE))
    return parts


def levels_for(parts: int) -> int:
    """Bisection levels giving at most `parts` ranges (2**levels: rounded down, so a throttled campaign's
    ranges each keep at least its share and max_ranges holds whatever it is set to)."""
    return parts.bit_length() - 1 if parts > 1 else 0


async def estimate_audience(devices: DeviceStore, query: dict, range_devices: int) -> float:
    """The size of an audience nobody counted (a request from Kafka), without counting it.

    The first SAMPLE_TOKENS tokens and the last one (two index reads), then `density_estimate`; exact when the
    audience is smaller than the sample. Random tokens make the estimate close; clustered ones (sequential
    test tokens) make it err, most often upwards, so an estimate above `range_devices` is checked by reading
    that many tokens plus one (one reply of tokens only: ~50 ms on MongoDB, ~2 s on nx-27017 at 50,000): an
    audience that fits one range is never cut. An error beyond that costs only how many ranges are cut (at
    most dispatch.max_ranges), never correctness.
    """
    sample = await devices.edge_tokens(query, None, None, SAMPLE_TOKENS)
    if len(sample) < SAMPLE_TOKENS:
        return float(len(sample))
    last = await devices.edge_tokens(query, None, None, 1, last=True)
    estimate = density_estimate(sample, last[0]) if last else float(len(sample))
    if estimate <= range_devices:
        return estimate
    page = await devices.edge_tokens(query, None, None, range_devices + 1)
    return float(len(page)) if len(page) <= range_devices else max(estimate, range_devices + 1.0)


async def boundaries(devices: DeviceStore, query: dict, parts: int) -> list[str]:
    """Sorted, distinct tokens cutting the devices of `query` into 2**levels_for(parts) ranges (fewer where an
    interval holds one token or none). Each level probes its intervals concurrently."""
    intervals: list[tuple[str | None, str | None]] = [(None, None)]
    cuts: list[str] = []
    for _ in range(levels_for(parts)):
        edges = await asyncio.gather(
            *(
                asyncio.gather(
                    devices.edge_tokens(query, after, upto, 1),
                    devices.edge_tokens(query, after, upto, 1, last=True),
                )
                for after, upto in intervals
            )
        )
        following: list[tuple[str | None, str | None]] = []
        for (after, upto), (first, last) in zip(intervals, edges, strict=True):
            cut = midpoint(first[0], last[0]) if first and last else None
            if cut is None:
                continue  # one token or none: not worth cutting again
            cuts.append(cut)
            following += [(after, cut), (cut, upto)]
        if not following:
            break
        intervals = following
    return sorted(set(cuts))


class RangeSettler:
    """Ends split parents: their final counts and state from their ranges, written once, then announced."""

    def __init__(
        self, ranges: RangeStore, announcer: Announcer, lease_clock: ServerClock, clock: Callable[[], float]
    ) -> None:
        self._ranges = ranges
        self._announcer = announcer
        self._lease_clock = lease_clock  # who still holds a range is judged on the database's clock
        self._clock = clock

    async def settle(self, parent_id: str) -> bool:
        """Settle the parent if all its ranges are over; True if this call wrote its end (and announced it)."""
        expired_by = self._lease_clock.now() - self._lease_clock.error()
        parent = await self._ranges.settle(parent_id, expired_by, self._clock())
        if parent is None:
            return False
        await announce_finished(
            self._announcer, parent, parent.state, parent.counts, parent.error, parent.finished_at,
            ranges=parent.ranges,
        )
        return True

    async def check_due(self, limit: int = 100) -> int:
        """The backstop (run by the outcome sweep): settle split parents whose check is due, or look again
        later; keeps their progress gauge current meanwhile. Returns how many were settled."""
        settled = 0
        now = self._clock()
        for doc in await self._ranges.unsettled(now, limit):
            parent = NotificationRecord.from_document(doc)
            # Ranges moved with their parent even if the write doing it failed (or an older replica paused
            # or cancelled the parent alone).
            await self._ranges.follow(parent.id)
            if await self.settle(parent.id):
                settled += 1
                continue
            await self._ranges.check_later(parent.id, now + SETTLE_CHECK_SECONDS)
            if parent.kind == CAMPAIGN_KIND:
                # The sum so far is of the document, as the API shows it (`live_counts`).
                campaign_progress(parent).set(progress_ratio(await self._ranges.live_counts(doc)))
        return settled
