"""Wiring and lifecycle: start every component in order, stop them in reverse, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiokafka import AIOKafkaProducer

from pushsvc import __version__, metrics, tracing
from pushsvc.api.auth import ApiKeyAuth
from pushsvc.api.server import build_http_app
from pushsvc.config import Settings, configured_providers, web_allowed_hosts
from pushsvc.dispatch.batch import BatchRunner
from pushsvc.dispatch.chunks import ChunkWorker
from pushsvc.dispatch.fanout import NotificationRunner
from pushsvc.dispatch.preview import preview_payloads
from pushsvc.dispatch.ranges import RangeSettler
from pushsvc.dispatch.sender import DeliverySender
from pushsvc.ingest.intake import Intake
from pushsvc.ingest.kafka import KafkaIngest, producer_request_limit
from pushsvc.kafka_options import client_options
from pushsvc.logs import get_logger
from pushsvc.outcomes import ACKNOWLEDGED_FLUSH_SECONDS, Announcer, OutcomePublisher, OutcomeSweeper
from pushsvc.partitioner import KeyPartitioner
from pushsvc.providers.base import Provider
from pushsvc.providers.registry import build_providers
from pushsvc.scheduling.clock import ServerClock
from pushsvc.scheduling.scheduler import Scheduler
from pushsvc.store.campaigns import CampaignStore
from pushsvc.store.caps import FrequencyCaps
from pushsvc.store.claims import ClaimStore
from pushsvc.store.database import Database
from pushsvc.store.devices import DeviceStore
from pushsvc.store.events import EventStore
from pushsvc.store.leases import LeaseStore
from pushsvc.store.notifications import NotificationStore
from pushsvc.store.open_hours import OpenHours
from pushsvc.store.quotas import QuotaStore
from pushsvc.store.ranges import SETTLE_CHECK_SECONDS, RangeStore
from pushsvc.store.receipts import ReceiptStore

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider  # imported only when tracing is on (tracing.configure)

log = get_logger(__name__)

STARTUP_RETRY_SECONDS = 60.0
# The outcome sweep's round: events a finish could not publish go out this long after their grace at most.
OUTCOME_SWEEP_SECONDS = 5.0
SETTLE_CHECK_ROUNDS = max(1, round(SETTLE_CHECK_SECONDS / OUTCOME_SWEEP_SECONDS))
# Each connection close at shutdown gets this long, so the whole stop stays inside the grace period.
CLOSE_TIMEOUT_SECONDS = 3.0
# The collector's thresholds while serving (Python's default: 700, 10, 10). A young collection comes after every
# 700 net new objects; at a provider's peak a thousand deliveries are in flight, each holding a task, futures and
# dicts for its round trip, so they survive young collections, are promoted, die old, and the old generation's
# full collections come every second. At the single-device peak (benchmarks/run.py) that was ~12% of pushsvc's
# CPU; with these ~1%, and RSS 1-3 MB higher (docs/performance.md).
GC_THRESHOLDS = (100_000, 50, 100)


def swallowed_cancel() -> bool:
    """True when this task was asked to stop but the request never reached it as a CancelledError: a
    library caught it (seen with a MongoDB operation cancelled mid-flight, which PyMongo completed or turned
    into another error). A cancel is delivered once, so a periodic loop must check before it goes on."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def pause(seconds: float) -> None:
    """asyncio.sleep for periodic loops, which ends the loop if a stop was swallowed meanwhile."""
    if swallowed_cancel():
        raise asyncio.CancelledError
    await asyncio.sleep(seconds)


async def wait_cancelled(tasks: Iterable[asyncio.Task[Any]], timeout: float) -> None:
    """Wait up to `timeout` for cancelled tasks to end. One that does not (a library swallowing the
    cancellation, a wait nothing wakes) must not keep a stopping replica alive past its grace period: it is
    named in the log with where it waits, and left behind."""
    _, stuck = await asyncio.wait(set(tasks), timeout=timeout) if tasks else (set(), set())
    for task in stuck:
        frames = [f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}" for frame in task.get_stack()]
        log.warning("stop_task_stuck", task=task.get_name(), waiting_in=frames[-3:])


async def retry_until(what: str, attempt: Callable[[], Awaitable[None]], deadline_seconds: float) -> None:
    """Dependencies may come up after us (a rollout, a restarted broker): wait for them, but not forever."""
    deadline = time.monotonic() + deadline_seconds
    delay = 0.25
    while True:
        try:
            await attempt()
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} unreachable after {deadline_seconds:.0f}s: {exc}") from exc
            log.warning("dependency_waiting", dependency=what, error=str(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class PushService:
    def __init__(
        self,
        settings: Settings,
        providers: dict[tuple[str, str], Provider] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """`clock` replaces the scheduling clock (due times, local-time waves, quiet hours) for tests; leases
        are always judged on the database's clock."""
        self.settings = settings
        self.owner = f"{settings.instance_name or socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.database = Database.connect(settings.mongodb)
        self.server_clock = ServerClock(self.database.server_time)
        clock = clock or self.server_clock.now
        self.devices = DeviceStore(self.database, self.server_clock.now, clock)
        retention_seconds = settings.retention.notification_days * 86400
        self.notifications = NotificationStore(self.database, clock, retention_seconds=retention_seconds)
        # The lease protocol's writes: taking and keeping leases, and what a run writes under its lease.
        self.claims = ClaimStore(self.database)
        self.leases = LeaseStore(self.database, retention_seconds=retention_seconds)
        events = EventStore(self.database)
        self.campaigns = CampaignStore(self.notifications)
        self.providers = providers if providers is not None else build_providers(settings, self.server_clock.now)
        self.producer = AIOKafkaProducer(
            **client_options(settings.kafka),
            acks="all",
            linger_ms=5,
            max_request_size=producer_request_limit(settings.kafka),
            partitioner=KeyPartitioner(),  # the partitions of aiokafka's default, its hash in half the CPU
        )
        self._build_dispatch(settings, events, clock)
        self.intake = Intake(self.notifications, self.scheduler, clock=clock)
        known_apps = frozenset(settings.apps)
        providers_of = configured_providers(settings)
        self.ingest = KafkaIngest(settings.kafka, self.intake, self.producer, known_apps, providers_of)
        self.http_app = self._build_http_app(settings, known_apps, providers_of, clock)
        self._runner: web.AppRunner | None = None
        self._tracer_provider: TracerProvider | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._stopping = False
        self.port: int | None = None

    def _build_dispatch(self, settings: Settings, events: EventStore, clock: Callable[[], float]) -> None:
        """Sending, announcing, running claimed work and the scheduler that claims it, bottom up."""
        # The database's clock: a send's moment is compared with registrations made through other replicas.
        self.sender = DeliverySender(
            self.providers, settings.dispatch, clock=self.server_clock.now, quota_counter=QuotaStore(self.database)
        )
        self.announcer = Announcer(OutcomePublisher(self.producer, settings.kafka.outcomes_topic), events)
        self.outcome_sweeper = OutcomeSweeper(
            events, self.announcer, settings.dispatch.outcome_sweep_grace_seconds, clock=clock
        )
        caps = {app: config.frequency_caps for app, config in settings.apps.items() if config.frequency_caps}
        chunks = ChunkWorker(
            self.devices, self.sender, settings.dispatch.send_timeout_seconds, settings.dispatch.lease_seconds,
            caps=FrequencyCaps(self.database, caps) if caps else None, opens=OpenHours(self.database),
        )
        self.settler = RangeSettler(RangeStore(self.notifications), self.announcer, self.server_clock, clock)
        self.runner = NotificationRunner(
            self.notifications, self.leases, chunks, self.announcer, settings.dispatch, self.devices, self.settler,
            clock=clock,
        )
        batch_runner = BatchRunner(self.leases, chunks, self.announcer, settings.dispatch, clock=clock)
        self.scheduler = Scheduler(
            self.claims, self.leases, self.runner, batch_runner, settings.dispatch, self.owner, self.server_clock, clock
        )

    def _build_http_app(
        self,
        settings: Settings,
        known_apps: frozenset[str],
        providers_of: Mapping[str, Collection[str]],
        clock: Callable[[], float],
    ) -> web.Application:
        return build_http_app(
            auth=ApiKeyAuth(settings.api_keys, known_apps),
            device_store=self.devices,
            notification_store=self.notifications,
            intake=self.intake,
            known_apps=known_apps,
            web_hosts=web_allowed_hosts(settings),
            app_providers=providers_of,
            readiness={
                "mongodb": self.database.ping,
                "kafka": self._kafka_ready,
                "scheduler": self._scheduler_ready,
            },
            consumer_state=self.ingest.membership,
            kafka_topics=(settings.kafka.requests_topic, settings.kafka.dlq_topic, settings.kafka.outcomes_topic),
            max_body_bytes=settings.http.max_body_bytes,
            store_timeout_seconds=settings.http.store_timeout_ms / 1000,
            campaign_store=self.campaigns,
            clock=clock,
            wake=self.scheduler.wake,
            preview=lambda request: preview_payloads(self.providers, request),
            receipt_store=ReceiptStore(
                self.database, self.devices, retention_seconds=settings.retention.notification_days * 86400
            ),
            receipt_events=OutcomePublisher(self.producer, settings.kafka.outcomes_topic),
        )

    async def _backfill_request_ids(self) -> None:
        changed = await self.notifications.backfill_request_ids(self.server_clock.now())
        if changed:
            log.info("notification_keys_backfilled", notifications=changed)

    async def _backfill_kinds(self) -> None:
        changed = await self.devices.backfill_kinds()
        if changed:
            log.info("device_kinds_backfilled", devices=changed)

    async def _kafka_ready(self) -> None:
        """The broker answers (outcome events and dead letters can go out); group membership is reported
        apart (ingest.membership), since a rejoin must not take a replica whose API and dispatch work out
        of service."""
        if not self._started:
            raise RuntimeError("starting")
        await self.producer.client.fetch_all_metadata()

    async def _scheduler_ready(self) -> None:
        if not self.scheduler.healthy:
            raise RuntimeError("claiming work from MongoDB fails")

    async def start(self) -> None:
        metrics.BUILD_INFO.info({"version": __version__})
        metrics.init_series(self.providers.keys())
        metrics.init_receipt_series(self.settings.apps)
        # Off unless tracing.otlp_endpoint is set: then the SDK is loaded and spans exported from a thread.
        self._tracer_provider = tracing.configure(self.settings.tracing)
        # HTTP first so liveness answers while dependencies are awaited; readiness stays 503 until started.
        self._runner = web.AppRunner(self.http_app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.http.host, self.settings.http.port)
        await site.start()
        server = site._server
        if server is not None and getattr(server, "sockets", None):
            self.port = server.sockets[0].getsockname()[1]
        # The database's clock first: every lease and due time is judged on it (scheduling/clock.py). Read twice:
        # the first round trip also opens the connection, so its reading is the less precise.
        await retry_until("mongodb", self.server_clock.sync, STARTUP_RETRY_SECONDS)
        await retry_until("mongodb", self.server_clock.sync, STARTUP_RETRY_SECONDS)
        await retry_until("mongodb", self.database.identify_server, STARTUP_RETRY_SECONDS)
        await retry_until("mongodb", self.database.ensure_indexes, STARTUP_RETRY_SECONDS)
        await retry_until("mongodb", self.campaigns.ensure_indexes, STARTUP_RETRY_SECONDS)
        await retry_until("mongodb", self._backfill_kinds, STARTUP_RETRY_SECONDS)
        await retry_until("mongodb", self._backfill_request_ids, STARTUP_RETRY_SECONDS)
        await retry_until("kafka producer", self.producer.start, STARTUP_RETRY_SECONDS)
        for provider in self.providers.values():
            await provider.start()
        self._tasks = [
            asyncio.create_task(self._supervise("ingest", self.ingest.run), name="ingest"),
            asyncio.create_task(self._supervise("scheduler", self.scheduler.run), name="scheduler"),
            asyncio.create_task(self._refresh_backlog(), name="backlog"),
            asyncio.create_task(self._sweep_outcomes(), name="outcome-sweep"),
            asyncio.create_task(self._mark_announced(), name="outcome-marks"),
            asyncio.create_task(self.server_clock.keep_synced(), name="server-clock"),
        ]
        self._started = True
        log.info(
            "pushsvc_started",
            owner=self.owner,
            http_port=self.port,
            apps=sorted(self.settings.apps),
            version=__version__,
        )

    async def _supervise(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """A crashed loop is restarted (after a pause) instead of leaving a zombie replica that looks alive."""
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if swallowed_cancel():
                    raise asyncio.CancelledError from exc
                log.error("loop_crashed", loop=name, error=repr(exc))
                await pause(1.0)

    async def _sweep_outcomes(self) -> None:
        rounds = 0
        while True:
            await pause(OUTCOME_SWEEP_SECONDS)
            rounds += 1
            try:
                # Split campaigns whose last range's runner did not settle them (or cancelled with no range
                # running): a backstop, looked at every SETTLE_CHECK_SECONDS, not at every round (idle cost).
                if rounds % SETTLE_CHECK_ROUNDS == 0:
                    await self.settler.check_due()
            except Exception as exc:  # MongoDB down: the next round tries again; the sweep below still runs
                if swallowed_cancel():
                    raise asyncio.CancelledError from exc
                log.warning("settle_check_failed", error=str(exc))
            try:
                await self.outcome_sweeper.sweep_once()
            except Exception as exc:  # MongoDB or broker down: the next round tries again
                if swallowed_cancel():
                    raise asyncio.CancelledError from exc
                log.warning("outcome_sweep_failed", error=str(exc))

    async def _mark_announced(self) -> None:
        """Acknowledged outcome events no finish write marked (Announcer): marked within a second."""
        while True:
            await pause(ACKNOWLEDGED_FLUSH_SECONDS)
            await self.announcer.flush()  # never raises

    async def _refresh_backlog(self) -> None:
        while True:
            try:
                due, future = await self.notifications.backlog(self.server_clock.now())
                metrics.SCHEDULED_BACKLOG.labels("due").set(due)
                metrics.SCHEDULED_BACKLOG.labels("future").set(future)
            except Exception as exc:  # the gauge keeps its last value; the next round tries again
                if swallowed_cancel():
                    raise asyncio.CancelledError from exc
            await pause(self.settings.dispatch.backlog_refresh_seconds)

    async def stop(self) -> None:
        """Graceful, within dispatch.drain_timeout_seconds (plus closing connections):

        1. readiness turns 503 and ingest stops polling; the batch in hand is recorded and committed;
        2. meanwhile the scheduler claims nothing new and in-flight notifications finish their chunks;
           whatever is still running at the deadline is cancelled (its chunk is repeated by the next owner);
        3. leases still held are released so another replica resumes at once, not after lease_seconds;
        4. consumer (leaves the group), producer (flushes outcome events), providers and HTTP close.
        """
        if self._stopping:
            return
        self._stopping = True
        budget = self.settings.dispatch.drain_timeout_seconds
        log.info("pushsvc_stopping", owner=self.owner, drain_timeout_seconds=budget)
        started = time.monotonic()
        self._started = False
        await self.ingest.stop()
        ingest_task = next((t for t in self._tasks if t.get_name() == "ingest"), None)
        await asyncio.gather(self._wait_ingest(ingest_task, budget), self.scheduler.drain(budget))
        for task in self._tasks:
            task.cancel()
        await wait_cancelled(self._tasks, CLOSE_TIMEOUT_SECONDS)
        await self._release_leases()
        # The marks of the last acknowledged outcome events, which no later finish write carried.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.announcer.flush(), CLOSE_TIMEOUT_SECONDS)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ingest.close(), CLOSE_TIMEOUT_SECONDS)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.producer.stop(), CLOSE_TIMEOUT_SECONDS)
        # All providers at once: the shutdown budget must not grow with the number of apps.
        await asyncio.gather(
            *(asyncio.wait_for(provider.close(), CLOSE_TIMEOUT_SECONDS) for provider in self.providers.values()),
            return_exceptions=True,
        )
        if self._runner is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._runner.cleanup(), CLOSE_TIMEOUT_SECONDS)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.database.close(), CLOSE_TIMEOUT_SECONDS)
        if self._tracer_provider is not None:
            # Export the spans still queued (the drain's too), within the shutdown budget like any close: past it
            # the process exits and they are lost (the exporter's thread does not hold the exit).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.to_thread(tracing.shutdown, self._tracer_provider),
                                       CLOSE_TIMEOUT_SECONDS)
        log.info("pushsvc_stopped", owner=self.owner, seconds=round(time.monotonic() - started, 3))

    @staticmethod
    async def _wait_ingest(task: asyncio.Task[None] | None, timeout: float) -> None:
        """The ingest loop ends after recording and committing the batch it holds."""
        if task is None:
            return
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(task), timeout)
        if not task.done():
            log.warning("ingest_stop_timeout", seconds=timeout)

    async def _release_leases(self) -> None:
        """Hand back notifications whose work was cancelled at the drain deadline.

        Their cursor points after the last saved chunk, so the next owner repeats only the chunk that
        was in flight. Without this they would wait for lease_seconds before anyone resumed them.
        """
        try:
            released = await asyncio.wait_for(
                self.claims.release_all(self.owner), CLOSE_TIMEOUT_SECONDS
            )
        except Exception as exc:  # MongoDB unreachable: the leases expire on their own
            log.warning("lease_release_failed", error=repr(exc))
            return
        if released:
            log.warning("leases_released", count=released)


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, then stop gracefully; a second signal exits at once."""
    service = PushService(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.error("shutdown_forced", signal=signal.Signals(signum).name)
            os._exit(1)
        log.info("shutdown_requested", signal=signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        # A signal while dependencies are still awaited must not wait for them (up to a minute).
        starting = asyncio.create_task(service.start())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            if starting.exception() is not None:
                stopping.cancel()
            starting.result()
            # Everything built at startup (modules, clients, settings) lives as long as the process: moved
            # out of the collector's reach, a full collection under load stalls the loop ~10 ms, not ~60 ms.
            gc.collect()
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)
            await stopping
        else:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
    finally:
        await service.stop()
