"""A stored notification as the dispatch side reads it: `NotificationRecord`, built once from the document
(`from_document`) by whatever reads it (a claim, intake's direct dispatch, the settle of a split campaign, the
outcome sweep) and passed down typed, so no runner digs in a dict or parses the stored request again.

The request is parsed here, once. A stored request the contract parser refuses (an incompatible upgrade, a
parser bug) does not make the read fail: it becomes an `UnreadableRequest` saying why, and the fan-out runner
fails that notification with it while the rest of the claim runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from pushsvc.model import PushRequest, parse_request
from pushsvc.model.variants import Split, split_of
from pushsvc.store.notifications import STALLED_RUNS, request_id_of
from pushsvc.tracing import TRACE_FIELD, TraceContext

# Longest reason an unreadable request is failed with (the error stored on the notification).
UNREADABLE_DETAIL_CHARS = 300

# A range's slice of the audience, (after, upto]: tokens after `after` (None: from the start) up to and including
# `upto` (None: to the end); store/ranges.py.
Bounds = tuple[str | None, str | None]


@dataclass(frozen=True)
class UnreadableRequest:
    """A stored request that no longer parses: `detail` names the error ("RequestError: ..."); `part` is what
    could not be read: the request, or the document around it (a field of another shape than this version
    writes: a hand fix, a migration, another version's writer during a rolling upgrade)."""

    detail: str
    part: str = "request"

    @property
    def reason(self) -> str:
        """What the notification is failed with."""
        return f"stored {self.part} unreadable: {self.detail}"


# Not frozen: a frozen dataclass sets each field through object.__setattr__, ~3 µs for these 31, paid once per
# notification (intake builds one for every one-device push it dispatches directly), ~1% of such a push. Slots
# keep any other attribute out; nothing assigns to a record's fields once it is built.
@dataclass(slots=True)
class NotificationRecord:
    """A notification document as read, typed; read only, once built. Fields a read left out (the outcome sweep
    and the settle read only who a notification is and how it ended) take the value a missing field means in a
    stored one."""

    id: str  # `_id`: `<app>:<request id>` (a range: `<parent>#range-NNN`)
    app: str
    request_id: str  # the producer's id (store.notifications.request_id_of)
    state: str
    request: PushRequest | UnreadableRequest
    lane: str | None = None
    kind: str | None = None  # None: a request; "campaign", "range"
    due_at: float = 0.0  # epoch seconds (every stored notification has one; only the runners read it)
    dry_run: bool = False
    # Progress, as saved by the last run (store/leases.py).
    counts: Mapping[str, int] = field(default_factory=dict)
    progress_seq: int = 0
    stalled_runs: int = 0
    cursor: Any = None  # where the next chunk starts (store/audience.py `resume_point`)
    chunk_done: frozenset[str] = frozenset()  # devices of the chunk at `cursor` answered already
    # Waves: the zones of the local-time or quiet-hours wave under way (None: none chosen), those done; for a
    # best-time campaign the names of its waves (scheduling/best_time.py: `start`, `h14`).
    wave_zones: tuple[str, ...] | None = None
    zones_done: frozenset[str] = frozenset()
    # When the last wave done ended (scheduling clock; None: no wave ended yet): the next wave's lateness counts
    # from then at the earliest, so a wave that ran past the next one's time does not expire it.
    wave_ended_at: float | None = None
    # A local-time campaign's zones whose time had passed at its creation: no wave goes to them.
    zones_passed: frozenset[str] = frozenset()
    # The wave (or the whole notification) under way began later than its TTL allows: its devices are
    # counted expired, not sent (scheduling/due.py ttl_lapsed); kept so a resumed run goes on the same way.
    ttl_lapsed: bool = False
    # How it is to be sent (a campaign's settings; a range's share of its parent's throttle).
    throttle_per_second: float | None = None
    # A campaign's A/B variants and control group (model/variants.py); None: everyone gets the request's message.
    split: Split | None = None
    # As stored ({"start": "HH:MM", "end": "HH:MM"}): parsed by the runner that uses it (scheduling/due.py),
    # so a bad value fails that run alone, never the read of a whole claim.
    quiet_hours: Mapping[str, str] | None = None
    # A best-time campaign's `schedule.best_time` as stored ({"window_hours": W}); read by the fan-out runner.
    best_time: Mapping[str, Any] | None = None
    audience_estimate: float | None = None  # a campaign's audience, counted at its creation
    # A split campaign (store/ranges.py): the cuts it saved (None: not cut) and how many ranges it has.
    boundaries: tuple[str, ...] | None = None
    ranges: int = 0
    # A range: its campaign and its slice of the audience, (after, upto].
    parent: str | None = None
    bounds: Bounds = (None, None)
    # How it ended (final states).
    error: str | None = None
    finished_at: float = 0.0
    # The trace its spans join (pushsvc/tracing.py): its intake span's context, stored at intake; None for one
    # recorded without (before tracing existed), whose spans then begin traces of their own.
    trace: TraceContext | None = None

    @classmethod
    def from_document(cls, doc: Mapping[str, Any], request: PushRequest | None = None) -> NotificationRecord:
        """The record of `doc`, its request parsed unless given (`request`: intake's, just validated and
        stamped: the same request the stored text holds). Never raises for a claimed document: one whose fields
        this version cannot read becomes a record whose request is unreadable, which the fan-out runner fails
        alone, instead of an exception that would fail the whole claim with it, again at every lease expiry."""
        try:
            return cls._read(doc, request)
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"[:UNREADABLE_DETAIL_CHARS]
            return cls(
                id=str(doc["_id"]), app=str(doc.get("app")), request_id=str(doc.get("request_id") or doc["_id"]),
                state=str(doc.get("state")), request=UnreadableRequest(detail, part="document"),
                # Which runner it reached and how its end is told (a range settles its campaign instead).
                lane=_text(doc.get("lane")), kind=_text(doc.get("kind")), parent=_text(doc.get("parent")),
                trace=TraceContext.of_mapping(doc.get(TRACE_FIELD)),
            )

    @classmethod
    def _read(cls, doc: Mapping[str, Any], request: PushRequest | None) -> NotificationRecord:
        wave_zones = doc.get("wave_zones")
        boundaries = doc.get("boundaries")
        bounds = doc.get("bounds") or (None, None)
        parsed = request if request is not None else read_request(doc)
        request_id = request_id_of(doc)
        split = None
        if isinstance(parsed, PushRequest):
            # Assigned by the campaign's request id: the same for each of its ranges.
            split = split_of(request_id, doc.get("variants"), doc.get("control_percent"), parsed.options)
        return cls(
            id=doc["_id"],
            app=doc["app"],
            request_id=request_id,
            state=doc["state"],
            request=parsed,
            split=split,
            lane=doc.get("lane"),
            kind=doc.get("kind"),
            due_at=float(doc.get("due_at") or 0.0),
            dry_run=bool(doc.get("dry_run")),
            counts={key: int(value) for key, value in (doc.get("counts") or {}).items()},
            progress_seq=int(doc.get("progress_seq") or 0),
            stalled_runs=int(doc.get(STALLED_RUNS) or 0),
            cursor=doc.get("cursor"),
            chunk_done=frozenset(doc.get("chunk_done") or ()),
            wave_zones=None if wave_zones is None else tuple(wave_zones),
            zones_done=frozenset(doc.get("zones_done") or ()),
            wave_ended_at=doc.get("wave_ended_at"),
            zones_passed=frozenset(doc.get("zones_passed") or ()),
            ttl_lapsed=bool(doc.get("ttl_lapsed")),
            throttle_per_second=doc.get("throttle_per_second"),
            quiet_hours=doc.get("quiet_hours"),
            best_time=doc.get("best_time"),
            audience_estimate=doc.get("audience_estimate"),
            boundaries=None if boundaries is None else tuple(boundaries),
            ranges=int(doc.get("ranges") or 0),
            parent=doc.get("parent"),
            bounds=(bounds[0], bounds[1]),
            error=doc.get("error"),
            finished_at=float(doc.get("finished_at") or 0.0),
            trace=TraceContext.of_mapping(doc.get(TRACE_FIELD)),
        )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def read_request(doc: Mapping[str, Any]) -> PushRequest | UnreadableRequest:
    """The stored request, parsed with the contract it was validated with at ingest; never raises.

    Whatever fails (the text, the contract, a field missing: a read that left the request out, whose record
    nobody sends) is this one notification's problem, so it is kept as the reason rather than raised.
    """
    try:
        return parse_request(orjson.loads(doc["request"]))
    except Exception as exc:
        return UnreadableRequest(f"{type(exc).__name__}: {exc}"[:UNREADABLE_DETAIL_CHARS])
