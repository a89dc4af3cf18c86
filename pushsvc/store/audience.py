"""Which devices a request reaches, as MongoDB filters, and where a read of an audience stands.

`kind_filter` and `audience_filter` build the queries (the kinds a route takes, the app, active and not opted
out, registered by a time); `takes` is the last word on each document read; the audience cursor is the keyset
position of a read in token order (or the `_id` order of the version before).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from pushsvc.model import PushRequest, Target
from pushsvc.store.device_documents import kind_of
from pushsvc.token_kinds import KIND_NAMES, receives


def kind_filter(route: str, exact: bool = True) -> dict[str, Any]:
    """The clause keeping the devices whose token kind takes this route; `takes` has the last word.

    Exact, it names the kinds that take it: `{"kind": {"$in": [...kinds, null]}}` (null: a document without
    `kind`, judged by `takes` on its platform's default). Not exact (`exact=False`: reads on nx-27017 only,
    chosen by the store from `Database.scans_for_in`), it leaves out one kind with `$ne` instead: there `$in`
    and `$nin` made the queries it answers by
    scanning 20-30% slower (100k devices, benchmarks/kind_filter_cost.py: 100 users 174 -> 210 ms, a segment
    179 -> 228 ms), while `$ne` costs nothing (164-180, 161-165 ms). The kind left out is the most numerous
    one that does not take the route (EXCLUSION_ORDER: an alert leaves out VoIP tokens, a VoIP push regular
    APNs tokens, as before there were more kinds); the few devices of the rarer kinds the query lets through
    (Live Activity tokens for an alert, web subscriptions for a VoIP push) are dropped by `takes` after the
    read. On MongoDB the results mean the same once `takes` has checked each document read, which the
    exclusion also lets through in two cases:
    - a document without `kind` (a device registered before kinds; backfill_kinds records it once, but a
      replica predating kinds may still write one during a rolling upgrade): it takes the route if its
      platform's default kind does (an old iOS device is a regular APNs token: alerts, not VoIP);
    - a kind this version does not know (written by a newer one): not sent.
    """
    if exact:
        return {"kind": {"$in": [*(name for name in KIND_NAMES if receives(name, route)), None]}}
    excluded = [name for name in EXCLUSION_ORDER if not receives(name, route)]
    return {"kind": {"$ne": excluded[0]}} if excluded else {}


# The token kinds by how many devices an app usually holds of each, most first (kind_filter). Every kind is in it.
EXCLUSION_ORDER = ("apns", "fcm", "apns_voip", "webpush", "hms", "apns_pushtostart", "apns_liveactivity")
assert set(EXCLUSION_ORDER) == set(KIND_NAMES)


def takes(doc: dict, request: PushRequest) -> bool:
    """Whether this device receives the request: its token kind takes the request's route (a document without
    `kind` by its platform's default), and a Live Activity update/end naming an activity is for its activity."""
    return request.takes(kind_of(doc), doc.get("activity_id"))


# Where an audience read stands: None at the start, {"token": last token returned} after a page (keyset
# pages in token order, find_chunk), or the hex _id text a run saved before token order.
AudienceCursor = dict[str, str] | str | None


# The start of a read in token order. Saved (rather than None) with a first chunk's answered devices, so no
# replica takes that for the start of a read in `_id` order, the order of the previous version.
AUDIENCE_START: dict[str, str] = {"token": ""}
# Before every ObjectId: the start of a read in `_id` order.
_ID_ORDER_START = "0" * 24


def resume_point(saved: AudienceCursor, answered: Collection[str]) -> AudienceCursor:
    """Where a run of a users/segment audience starts: the saved cursor; with none, the start in token order,
    unless devices of that first chunk were answered already (`chunk_done`) with no cursor saved, which only
    the previous version wrote (it read in `_id` order, so that chunk is the first one by `_id`)."""
    if saved is not None:
        return saved
    return _ID_ORDER_START if answered else AUDIENCE_START


def audience_cursor_after(last: dict, cursor: AudienceCursor) -> AudienceCursor:
    """The cursor that continues after device `last`, in the order of `cursor`."""
    return str(last["_id"]) if isinstance(cursor, str) else {"token": str(last["token"])}


def between(after: object, upto: object) -> dict[str, object]:
    """The range clause of a page: after `after` (falsy: from the start), up to and including `upto` (None: to
    the end); empty when neither bounds it."""
    bounds: dict[str, object] = {}
    if after:
        bounds["$gt"] = after
    if upto is not None:
        bounds["$lte"] = upto
    return bounds


def by_token(doc: dict) -> str:
    """The order audiences are read in (find_chunk)."""
    return str(doc["token"])


def audience_filter(
    app: str,
    target: Target,
    category: str | None,
    timezones: Sequence[str | None] | None,
    route: str,
    *,
    exact: bool = True,
    activity_id: str | None = None,
) -> dict:
    """MongoDB filter for the active devices a users/segment target reaches (tokens are looked up directly);
    `exact` and `activity_id` as for `active_devices_filter`.

    One flat document (the same meaning as an ``$and`` of the clauses): nx-27017 translates it to one SQL
    query on its indexes, while the ``$and`` form is evaluated document by document (~70x slower there).
    Equalities are spelled ``{"$eq": v}`` (the same meaning as a bare value in MongoDB): nx-27017 then emits
    a plain ``json_extract(...) = ?`` its (app, user_id) expression index can serve; for a bare value it adds
    an array-containment OR that forces a scan of the whole collection.
    """
    query = active_devices_filter(app, category, timezones, route, exact=exact, activity_id=activity_id)
    if target.users:
        users = list(target.users)
        query["user_id"] = {"$eq": users[0]} if len(users) == 1 else {"$in": users}
    elif target.segment is not None:
        tags: dict[str, Any] = {}
        if target.segment.tags_any:
            tags["$in"] = list(target.segment.tags_any)
        if target.segment.tags_all:
            tags["$all"] = list(target.segment.tags_all)
        if tags:
            query["tags"] = tags
    return query


def active_devices_filter(
    app: str,
    category: str | None,
    timezones: Sequence[str | None] | None,
    route: str,
    *,
    exact: bool = True,
    activity_id: str | None = None,
) -> dict:
    """The clauses every audience shares: the app's active devices whose token kind takes the route (see
    kind_filter for `exact`), of the Live Activity `activity_id` when one is named, minus opt-outs, within the
    wave's zones."""
    query: dict[str, Any] = {"app": {"$eq": app}, "active": True, **kind_filter(route, exact)}
    if activity_id is not None:
        query["activity_id"] = {"$eq": activity_id}
    if category:
        query["opt_out"] = {"$nin": [category]}
    if timezones is not None:
        query["timezone"] = {"$in": list(timezones)}
    return query


def registered_no_later_than(at: float | None) -> list[dict[str, Any]]:
    """Filters meaning "registered at or before `at`, or before registrations were recorded", one update each.

    In MongoDB this is one `{"$or": [{"registered_at": {"$lte": at}}, {"registered_at": null}]}` (null matches
    a missing field). nx-27017 evaluates `$or` and `$nor` document by document (~1 s per token at 100k devices;
    it has no `$not`) but serves each part from its (app, token) index (0.4 ms): the parts go as two updates.
    They are disjoint, so at most one of them applies to a device.
    """
    if at is None:
        return [{}]
    return [{"registered_at": {"$lte": at}}, {"registered_at": {"$eq": None}}]
