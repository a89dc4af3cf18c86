"""`pushsvc devices import`: devices from a CSV or JSONL file, each row validated like POST /v1/devices and
the valid ones upserted in batches straight into MongoDB. A row that cannot be read or is not a valid device
costs that row only (one stderr line each, exit 1); MongoDB down or refusing is one line and exit 2."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from pushsvc.cli.configuration import load, setting_source
from pushsvc.cli.failures import CLI_NETWORK_TIMEOUT_MS, CliFailure, mongo_failure
from pushsvc.config import MongoSettings, Settings

if TYPE_CHECKING:
    from pushsvc.device_contract import Device
    from pushsvc.store.devices import DeviceStore

CSV_LIST_SEPARATOR = ";"
CSV_LIST_FIELDS = ("tags", "opt_out")
# A web device's subscription in CSV: three flat columns (JSONL carries the `subscription` object as it is).
CSV_SUBSCRIPTION_COLUMNS = {"endpoint": ("endpoint",), "p256dh": ("keys", "p256dh"), "auth": ("keys", "auth")}
PROGRESS_EVERY_ROWS = 100


@dataclass(frozen=True)
class UnreadableRow:
    """A row of the import file that could not be read (not JSON, not CSV, not UTF-8): reported, not imported."""

    field: str
    reason: str


def read_device_rows(path: str, fmt: str | None) -> Iterator[tuple[int, Any]]:
    """(line number, record) per row; a row that cannot be read is an UnreadableRow, never skipped or fatal.

    Bytes that are not UTF-8 cost their row only: the file is decoded with surrogateescape and a row holding
    any is reported (MongoDB could not store it either). JSONL lines go through orjson: strict JSON (no NaN,
    no lone surrogate escapes) with bounded nesting, where json.loads raised RecursionError on deep input.
    A CSV line the csv module cannot read (e.g. a field over its size limit) is an unreadable row too.
    """
    fmt = fmt or ("csv" if path.lower().endswith(".csv") else "jsonl")
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as file:
        yield from _jsonl_rows(file) if fmt == "jsonl" else _csv_rows(file)


def _jsonl_rows(file: IO[str]) -> Iterator[tuple[int, Any]]:
    import orjson

    for number, line in enumerate(file, start=1):
        if not line.strip():
            continue
        if not _is_utf8(line):
            yield number, UnreadableRow("line", "not valid UTF-8")
            continue
        try:
            yield number, orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield number, UnreadableRow("line", f"not valid JSON: {exc}")


def _csv_rows(file: IO[str]) -> Iterator[tuple[int, Any]]:
    import csv

    reader = csv.DictReader(file)
    failed_at = -1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if reader.line_num == failed_at:  # no progress: the reader is stuck, the rest is unreadable
                yield reader.line_num, UnreadableRow("line", f"not readable as CSV from here on: {exc}")
                return
            failed_at = reader.line_num
            yield reader.line_num, UnreadableRow("line", f"not readable as CSV: {exc}")
            continue
        if None in row:
            yield reader.line_num, UnreadableRow("line", "more cells than header columns")
        elif not all(_is_utf8(key) and (value is None or _is_utf8(value)) for key, value in row.items()):
            yield reader.line_num, UnreadableRow("line", "not valid UTF-8")
        else:
            yield reader.line_num, _csv_record(row)


def _csv_record(row: dict[str, str]) -> dict[str, Any]:
    """A CSV row as the record POST /v1/devices takes: empty cells left out, lists split, subscription nested."""
    record: dict[str, Any] = {}
    for key, value in row.items():
        if not value:
            continue
        if key in CSV_LIST_FIELDS:
            record[key] = [v.strip() for v in value.split(CSV_LIST_SEPARATOR) if v.strip()]
        elif key in CSV_SUBSCRIPTION_COLUMNS:
            *parents, name = CSV_SUBSCRIPTION_COLUMNS[key]
            place = record.setdefault("subscription", {})
            for parent in parents:
                place = place.setdefault(parent, {})
            place[name] = value
        else:
            record[key] = value
    return record


def _is_utf8(text: str) -> bool:
    """False for text holding lone surrogates (undecodable bytes under surrogateescape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _on_terminal() -> bool:
    """Whether stderr is a terminal: only one shows a progress bar. Piped (a job's log, a test), carriage
    returns are noise, and a failure must stay the one line on stderr."""
    return sys.stderr.isatty()


def _progress(done: int, total: int, rows: int, errors: int) -> None:
    """A progress bar on stderr (stdout carries the JSON summary)."""
    if not _on_terminal():
        return
    width = 30
    share = min(1.0, done / total) if total else 1.0
    bar = "#" * int(share * width)
    print(f"\r[{bar:<{width}}] {share:6.1%}  {rows} rows  {errors} errors", end="", file=sys.stderr, flush=True)


class RowFailure(NamedTuple):
    """A row of the import file that was not imported, and why."""

    line: int
    field: str
    reason: str


@dataclass
class ImportSummary:
    """What `devices import` did so far: the JSON summary at the end, and what a failure midway reports."""

    rows: int = 0
    imported: int = 0
    inserted: int = 0
    updated: int = 0
    failures: list[RowFailure] = field(default_factory=list)

    def as_json(self) -> dict[str, int]:
        return {"rows": self.rows, "imported": self.imported, "inserted": self.inserted, "updated": self.updated,
                "errors": len(self.failures)}


def cmd_devices_import(args: argparse.Namespace) -> int:
    """Validate each row like POST /v1/devices and upsert in batches straight into MongoDB."""
    import json

    from pymongo.errors import PyMongoError

    settings = load(args.config)
    if not os.path.isfile(args.file):
        raise CliFailure(f"no such file: {args.file}")
    with open(args.file, "rb") as counting:
        total_lines = sum(1 for _ in counting)
    mongo = _cli_mongo(settings.mongodb)
    summary = ImportSummary()
    try:
        asyncio.run(_import_devices(settings, mongo, args, total_lines, summary))
    except PyMongoError as exc:
        failure = mongo_failure(exc, mongo, setting_source("mongodb.uri", args.config))
        if summary.imported:  # stored before the failure; each row is an upsert by token, so a rerun is safe
            failure += f" ({summary.imported} devices were imported before it; importing again is safe)"
        raise CliFailure(failure) from exc
    for row in summary.failures:
        print(f"line {row.line}: {row.field}: {row.reason}", file=sys.stderr)
    print(json.dumps(summary.as_json()))
    return 1 if summary.failures else 0


def _cli_mongo(mongo: MongoSettings) -> MongoSettings:
    """`mongo` with its waits for a server capped at CLI_NETWORK_TIMEOUT_MS (the config may set less)."""
    return dataclasses.replace(
        mongo,
        server_selection_timeout_ms=min(mongo.server_selection_timeout_ms, CLI_NETWORK_TIMEOUT_MS),
        connect_timeout_ms=min(mongo.connect_timeout_ms, CLI_NETWORK_TIMEOUT_MS),
    )


async def _import_devices(settings: Settings, mongo: MongoSettings, args: argparse.Namespace, total_lines: int,
                          summary: ImportSummary) -> None:
    """Connect, then import the file's rows into MongoDB, counting into `summary`."""
    from pushsvc.scheduling.clock import ServerClock
    from pushsvc.store.database import Database
    from pushsvc.store.devices import DeviceStore

    database = Database.connect(mongo)
    try:
        # registered_at on the database's clock, like registrations through the API of any replica.
        clock = ServerClock(database.server_time)
        await clock.sync()
        store = DeviceStore(database, clock.now)
        await database.ensure_indexes()
        await _import_rows(store, settings, args, total_lines, summary)
    finally:
        await database.close()


async def _import_rows(store: DeviceStore, settings: Settings, args: argparse.Namespace, total_lines: int,
                       summary: ImportSummary) -> None:
    """Every row validated; the valid ones upserted `args.batch_size` at a time."""
    from pushsvc.config import web_allowed_hosts

    known_apps, web_hosts = frozenset(settings.apps), web_allowed_hosts(settings)
    batch: list[Device] = []
    try:
        for number, row in read_device_rows(args.file, args.format):
            summary.rows += 1
            device = _validate_row(number, row, known_apps, web_hosts)
            if isinstance(device, RowFailure):
                summary.failures.append(device)
            else:
                batch.append(device)
            if len(batch) >= args.batch_size:
                await _upsert(store, batch, summary)
            if summary.rows % PROGRESS_EVERY_ROWS == 0:
                _progress(number, total_lines, summary.rows, len(summary.failures))
        await _upsert(store, batch, summary)
    except BaseException:
        if summary.rows >= PROGRESS_EVERY_ROWS and _on_terminal():
            print(file=sys.stderr)  # ends the progress bar: the failure's message gets a line of its own
        raise
    _progress(total_lines, total_lines, summary.rows, len(summary.failures))
    if _on_terminal():
        print(file=sys.stderr)


def _validate_row(number: int, row: Any, known_apps: frozenset[str],
                  web_hosts: dict[str, frozenset[str]]) -> Device | RowFailure:
    # The registration contract itself, shared with POST /v1/devices (not the HTTP handler module).
    from pushsvc.device_contract import parse_device
    from pushsvc.model import RequestError

    if isinstance(row, UnreadableRow):
        return RowFailure(number, row.field, row.reason)
    try:
        return parse_device(row, known_apps, web_hosts)
    except RequestError as exc:
        return RowFailure(number, exc.field, exc.reason)


async def _upsert(store: DeviceStore, batch: list[Device], summary: ImportSummary) -> None:
    """One bulk write of the batch (emptied after)."""
    if batch:
        inserted, updated = await store.upsert_many(batch)
        summary.inserted += inserted
        summary.updated += updated
        summary.imported += len(batch)
        batch.clear()
