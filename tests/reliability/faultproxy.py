"""A fault-injecting TCP proxy for reliability tests: put it between pushsvc and MongoDB or the broker.

    async with FaultProxy("127.0.0.1", mongo_port, name="mongo") as proxy:   # forwards transparently
        uri = f"mongodb://{proxy.address}"
        proxy.reset()                        # RST on every current connection (both sides)
        proxy.drop(target="one")             # FIN on one connection chosen at random
        proxy.delay(0.2, direction="down", duration=3.0)   # +200 ms per chunk server -> client, for 3 s
        proxy.blackhole(duration=2.0)        # connections stay open, nothing flows, new ones hang
        proxy.refuse(duration=1.0)           # new connections are reset as soon as accepted
        proxy.heal()                         # end every lasting fault now
        proxy.trap(lambda b: b"lease_until" in b, when="reply")  # the next such request is applied but
                                             # its reply lost: RST when the server starts answering
        proxy.stats, proxy.log               # counters; what was injected when

    plan = FaultPlan.generate(seed=7, count=3, kinds=("reset",), window=(2.0, 7.0))
    runner = plan.start(proxy)               # injects at the planned times (seconds from now)
    ...
    await plan.finish()                      # waits for the last fault and heals; plan.report() for failures

Faults act on both sides of a proxied connection, as a broken network path would: `reset` aborts the
client and the upstream socket with SO_LINGER 0 (each peer sees a RST), `drop` closes both cleanly (FIN).
Data keeps its order; `delay` adds latency to each chunk without limiting throughput (chunks are queued
with the time they were read). A blackholed connection keeps reading until its queue is full (then TCP
flow control stops the sender) and delivers what it holds once healed; a connection accepted during a
blackhole connects upstream only when healed.

Kafka clients connect to the addresses the broker advertises, so a proxy in front of Tansu only sees the
traffic if the broker advertises the proxy's port: `proxied_tansu()` starts a dedicated broker that does.
`proxied_nx27017()` starts a dedicated MongoDB wire server behind a proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from pushsvc.dev.servers import ServerProcess, free_port, nx27017, tansu

Kind = Literal["drop", "reset", "delay", "blackhole", "refuse"]
KINDS: tuple[Kind, ...] = ("drop", "reset", "delay", "blackhole", "refuse")
Target = Literal["all", "one"]
Direction = Literal["up", "down", "both"]  # up: client -> server, down: server -> client

_CHUNK = 64 * 1024
# Chunks a direction holds while delayed or blackholed before it stops reading (TCP then pushes back).
_QUEUE_CHUNKS = 256
T = TypeVar("T")


@dataclass
class ProxyStats:
    accepted: int = 0  # connections accepted (refused ones included)
    refused: int = 0  # connections reset at once because `refuse` was on
    closed: int = 0  # proxied connections that ended, for any reason
    bytes_up: int = 0  # client -> server, forwarded
    bytes_down: int = 0  # server -> client, forwarded
    faults: Counter[str] = field(default_factory=Counter)  # injections per kind

    def summary(self) -> str:
        faults = ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items())) or "none"
        return (
            f"accepted={self.accepted} refused={self.refused} closed={self.closed} "
            f"bytes_up={self.bytes_up} bytes_down={self.bytes_down} faults: {faults}"
        )


@dataclass(frozen=True)
class Injection:
    """One fault as applied: when (seconds since the proxy started, or in a plan's log since the plan
    started), what, and how many connections it hit."""

    at: float
    proxy: str
    kind: str
    target: str
    connections: int
    detail: str = ""

    def __str__(self) -> str:
        extra = f" {self.detail}" if self.detail else ""
        return f"{self.at:7.3f}s {self.proxy}: {self.kind} {self.target}{extra} -> {self.connections} connection(s)"


def _rst(writer: asyncio.StreamWriter) -> None:
    """Abort with SO_LINGER 0: the kernel discards what is unsent and answers with a RST, not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    """One proxied connection: the client side, the upstream side (once connected) and two pumps."""

    def __init__(self, proxy: FaultProxy, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.proxy = proxy
        self.number = number
        self.client = (reader, writer)
        self.upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.flowing = asyncio.Event()
        if not proxy._new_blackholed:
            self.flowing.set()
        self.delay: dict[str, float] = dict(proxy._new_delay)
        self.tasks: list[asyncio.Task] = []
        self.closed = asyncio.Event()
        self.lose_next_reply = False  # a `when="reply"` trap sprang on this connection's last request

    def writers(self) -> list[asyncio.StreamWriter]:
        return [self.client[1]] + ([self.upstream[1]] if self.upstream else [])

    async def run(self) -> None:
        # A connection accepted during a blackhole hangs here until healed (or closed by a fault).
        await self.flowing.wait()
        if self.closed.is_set():
            return
        try:
            reader, writer = await asyncio.open_connection(self.proxy.upstream_host, self.proxy.upstream_port)
        except OSError:  # upstream down: the client sees its connection reset
            self.close(reset=True)
            return
        if self.closed.is_set():
            writer.transport.abort()
            return
        self.upstream = (reader, writer)
        up = self._direction(self.client[0], writer, "up")
        down = self._direction(reader, self.client[1], "down")
        self.tasks = [asyncio.create_task(c) for c in (*up, *down)]
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.close(reset=False)  # both directions ended with an EOF (a fault or a failure closed it already)

    def _direction(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, name: str
    ) -> tuple[Coroutine[Any, Any, None], Coroutine[Any, Any, None]]:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_QUEUE_CHUNKS)
        queued = 0  # chunks read but not yet written: while any, new chunks queue behind them (order)

        def count(data: bytes) -> None:
            if name == "up":
                self.proxy.stats.bytes_up += len(data)
            else:
                self.proxy.stats.bytes_down += len(data)

        async def read() -> None:
            nonlocal queued
            while True:
                try:
                    data = await source.read(_CHUNK)
                    if data and self._trapped(name, data):
                        return
                    if data and not queued and self.flowing.is_set() and not self.delay[name]:
                        # No fault on this direction: forward at once (the queue hop costs ~100 us a chunk).
                        sink.write(data)
                        count(data)
                        await sink.drain()
                        continue
                except OSError:  # a peer reset: pass the reset on to the other side
                    self.close(reset=True)
                    return
                queued += 1
                await queue.put((time.monotonic(), data))
                if not data:
                    return

        async def write() -> None:
            nonlocal queued
            while True:
                read_at, data = await queue.get()
                await self.flowing.wait()
                wait = read_at + self.delay[name] - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                    await self.flowing.wait()  # a blackhole may have begun while this chunk was delayed
                try:
                    if not data:
                        if sink.can_write_eof():
                            sink.write_eof()  # half-close: the peer may still answer
                        return
                    sink.write(data)
                    count(data)
                    await sink.drain()
                except OSError:
                    self.close(reset=True)
                    return
                finally:
                    queued -= 1

        return (read(), write())

    def _trapped(self, direction: str, data: bytes) -> bool:
        """Apply a trap to this chunk; True when it reset the connection instead of forwarding."""
        if direction == "down":
            if not self.lose_next_reply:
                return False
        else:
            trap = self.proxy._spring(data)
            if trap is None:
                return False
            if trap.when == "reply":
                self.lose_next_reply = True  # forwarded: the server applies it; its answer never arrives
                return False
            if trap.when == "hang":
                self.flowing.clear()  # held with everything after it: a half-open connection, for good
                return False
        self.close(reset=True)
        return True

    def close(self, reset: bool) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self.flowing.set()  # lets a hanging run() return
        for writer in self.writers():
            if reset:
                _rst(writer)
            else:
                with contextlib.suppress(OSError, RuntimeError):
                    writer.close()
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self.proxy._links.discard(self)
        self.proxy.stats.closed += 1


class FaultProxy:
    """A TCP proxy listening on `listen_host:listen_port` (0: any free port) forwarding to the upstream.

    It runs its own event loop in a thread: like a real network it keeps moving bytes while the code under
    test blocks its loop (a synchronous client, or code that blocks the loop while waiting on the proxy; in
    the test's loop that would deadlock until a socket timeout). Every method may be called from any thread.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        name: str = "proxy",
        seed: int | str | None = None,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.listen_host = listen_host
        self.port = listen_port
        self.name = name
        self.stats = ProxyStats()
        self.log: list[Injection] = []
        self._rng = random.Random(seed)  # picks the connection a `target="one"` fault hits
        self._links: set[_Link] = set()
        self._numbers = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._started = time.monotonic()
        self._refusing = False
        self._new_blackholed = False
        self._new_delay = {"up": 0.0, "down": 0.0}
        self._timers: list[asyncio.TimerHandle] = []
        self._runs: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._traps: list[Trap] = []

    # ------------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> FaultProxy:
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name=f"faultproxy-{self.name}", daemon=True)
        self._thread.start()
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._listen(), loop))
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.listen_host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        self._started = time.monotonic()

    async def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._shutdown(), loop))
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join)
        loop.close()

    async def _shutdown(self) -> None:
        for timer in self._timers:
            timer.cancel()
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.close(reset=False)
        if self._runs:
            await asyncio.gather(*self._runs, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _call(self, function: Callable[..., T], *args: Any) -> T:
        """Run `function` in the proxy's loop (where every connection and timer lives) and return its result."""
        loop = self._loop
        if loop is None:
            raise RuntimeError(f"fault proxy {self.name} is not running")
        if threading.current_thread() is self._thread:
            return function(*args)

        async def call() -> T:
            return function(*args)

        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=10)

    @property
    def address(self) -> str:
        return f"{self.listen_host}:{self.port}"

    @property
    def open_connections(self) -> int:
        """Proxied connections open now (connected upstream or hanging in a blackhole)."""
        return self._call(lambda: len(self._links))

    @property
    def forwarding_connections(self) -> int:
        """Open connections that reached the upstream server."""
        return self._call(lambda: sum(1 for link in self._links if link.upstream is not None))

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        if self._refusing:
            self.stats.refused += 1
            _rst(writer)
            return
        link = _Link(self, next(self._numbers), reader, writer)
        self._links.add(link)
        task = asyncio.current_task()
        assert task is not None
        self._runs.add(task)
        try:
            await link.run()
        finally:
            self._runs.discard(task)

    # ---------------------------------------------------------------------------------------------- faults

    def _pick(self, target: Target, rng: random.Random | None) -> list[_Link]:
        links = sorted(self._links, key=lambda link: link.number)
        if target == "all" or not links:
            return links
        return [(rng or self._rng).choice(links)]

    def _record(self, kind: str, target: str, hit: int, detail: str = "") -> Injection:
        injection = Injection(round(self.elapsed(), 3), self.name, kind, target, hit, detail)
        self.log.append(injection)
        self.stats.faults[kind] += 1
        return injection

    def _later(self, duration: float | None, undo: Callable[[], None]) -> None:
        if duration is not None:
            self._timers.append(asyncio.get_running_loop().call_later(duration, undo))

    def drop(self, target: Target = "all", rng: random.Random | None = None) -> Injection:
        """Close the chosen connections cleanly on both sides (FIN)."""
        return self._call(self._close_links, "drop", target, rng, False)

    def reset(self, target: Target = "all", rng: random.Random | None = None) -> Injection:
        """Abort the chosen connections on both sides with a RST (SO_LINGER 0, then close)."""
        return self._call(self._close_links, "reset", target, rng, True)

    def _close_links(self, kind: str, target: Target, rng: random.Random | None, reset: bool) -> Injection:
        links = self._pick(target, rng)
        for link in links:
            link.close(reset=reset)
        return self._record(kind, target, len(links))

    def delay(
        self,
        seconds: float,
        direction: Direction = "both",
        duration: float | None = None,
        target: Target = "all",
        rng: random.Random | None = None,
    ) -> Injection:
        """Add `seconds` of latency to each chunk in `direction`, for `duration` seconds (None: until heal).

        With target "all" connections opened meanwhile are delayed too.
        """
        return self._call(self._delay, seconds, direction, duration, target, rng)

    def _delay(
        self, seconds: float, direction: Direction, duration: float | None, target: Target, rng: random.Random | None
    ) -> Injection:
        sides = ("up", "down") if direction == "both" else (direction,)
        links = self._pick(target, rng)
        for link in links:
            for side in sides:
                link.delay[side] = seconds
        if target == "all":
            for side in sides:
                self._new_delay[side] = seconds

        def undo() -> None:
            for link in links:
                for side in sides:
                    link.delay[side] = 0.0
            if target == "all":
                for side in sides:
                    self._new_delay[side] = 0.0

        self._later(duration, undo)
        return self._record("delay", target, len(links), f"{seconds * 1000:.0f}ms {direction} for {duration}s")

    def blackhole(
        self, duration: float | None = None, target: Target = "all", rng: random.Random | None = None
    ) -> Injection:
        """Stop forwarding on the chosen connections (they stay open); with target "all" new connections
        are accepted and hang too. Lasts `duration` seconds, or until heal()."""
        return self._call(self._blackhole, duration, target, rng)

    def _blackhole(self, duration: float | None, target: Target, rng: random.Random | None) -> Injection:
        links = self._pick(target, rng)
        for link in links:
            link.flowing.clear()
        if target == "all":
            self._new_blackholed = True

        def undo() -> None:
            for link in links:
                link.flowing.set()
            if target == "all":
                self._new_blackholed = False
                for link in list(self._links):
                    link.flowing.set()

        self._later(duration, undo)
        return self._record("blackhole", target, len(links), f"for {duration}s")

    def refuse(self, duration: float | None = None) -> Injection:
        """Reset every new connection as soon as it is accepted, for `duration` seconds (None: until heal)."""
        return self._call(self._refuse, duration)

    def _refuse(self, duration: float | None) -> Injection:
        self._refusing = True

        def undo() -> None:
            self._refusing = False

        self._later(duration, undo)
        return self._record("refuse", "new", 0, f"for {duration}s")

    def trap(self, matches: Callable[[bytes], bool], when: TrapWhen = "request", times: int = 1) -> Trap:
        """Fail the connection carrying the next `times` client requests whose bytes `matches`.

        when="request": reset before the server sees it (the operation never happened); when="reply": the
        server gets it and the connection is reset as its answer comes back (applied, answer lost: the case
        that makes a retry ambiguous); when="hang": the connection stays open and forwards nothing more, that
        request included (a half-open connection; heal() releases it). A request is matched within the chunk
        read, which holds a whole small command (MongoDB commands are one OP_MSG of a few hundred bytes).
        """
        trap = Trap(matches, when, times)
        self._call(self._traps.append, trap)
        return trap

    def _spring(self, data: bytes) -> Trap | None:
        for trap in self._traps:
            if trap.remaining > 0 and trap.matches(data):
                trap.remaining -= 1
                trap.sprung += 1
                self._record("trap", trap.when, 1, f"request of {len(data)} bytes")
                return trap
        return None

    def heal(self) -> None:
        """End every lasting fault (delay, blackhole, refuse) now."""
        self._call(self._heal)

    def _heal(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._refusing = False
        self._new_blackholed = False
        self._new_delay = {"up": 0.0, "down": 0.0}
        for link in list(self._links):
            link.delay = {"up": 0.0, "down": 0.0}
            link.flowing.set()

    def inject(self, fault: Fault, rng: random.Random | None = None) -> Injection:
        """Apply one planned fault."""
        if fault.kind == "drop":
            return self.drop(fault.target, rng)
        if fault.kind == "reset":
            return self.reset(fault.target, rng)
        if fault.kind == "delay":
            return self.delay(fault.delay, fault.direction, fault.duration, fault.target, rng)
        if fault.kind == "blackhole":
            return self.blackhole(fault.duration, fault.target, rng)
        if fault.kind == "refuse":
            return self.refuse(fault.duration)
        raise ValueError(f"unknown fault kind {fault.kind!r}")


TrapWhen = Literal["request", "reply", "hang"]


@dataclass
class Trap:
    """A fault armed on the content of client requests (see FaultProxy.trap)."""

    matches: Callable[[bytes], bool]
    when: TrapWhen
    remaining: int
    sprung: int = 0


# ------------------------------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class Fault:
    """One planned fault, `at` seconds after the plan starts. `duration` and `delay` apply to the lasting
    kinds (delay, blackhole, refuse); `proxy` names the proxy to hit when a plan drives several."""

    at: float
    kind: Kind
    target: Target = "all"
    duration: float | None = None
    delay: float = 0.0
    direction: Direction = "both"
    proxy: str | None = None

    def __str__(self) -> str:
        where = f"{self.proxy}: " if self.proxy else ""
        text = f"{self.at:.1f}s {where}{self.kind} {self.target}"
        if self.kind == "delay":
            text += f" {self.delay * 1000:.0f}ms {self.direction}"
        if self.kind in ("delay", "blackhole", "refuse"):
            text += f" for {self.duration}s"
        return text


class FaultPlan:
    """A schedule of faults, reproducible from its seed; `log` records what was injected when."""

    def __init__(
        self, faults: Sequence[Fault], seed: int | str | None = None, connection_wait: float = 0.0
    ) -> None:
        self.faults = sorted(faults, key=lambda f: f.at)
        self.seed = seed
        # A reset or drop due while its proxy carries no connection at all (the client between two
        # bursts of work, reconnecting lazily after the previous fault) waits up to this long for one
        # instead of landing on nothing.
        self.connection_wait = connection_wait
        # Which connection a `target="one"` fault hits is drawn from its own seeded stream, so it
        # never shifts the schedule itself.
        self._pick_rng = random.Random(f"{seed}/pick")
        self.log: list[Injection] = []
        self._task: asyncio.Task | None = None
        self._proxies: dict[str, FaultProxy] = {}

    @classmethod
    def generate(
        cls,
        seed: int | str,
        count: int,
        *,
        kinds: Sequence[Kind] = KINDS,
        window: tuple[float, float] = (0.5, 5.0),
        targets: Sequence[Target] = ("all",),
        durations: tuple[float, float] = (0.5, 2.0),
        delays: tuple[float, float] = (0.05, 0.5),
        directions: Sequence[Direction] = ("both", "up", "down"),
        proxies: Sequence[str] = (),
        connection_wait: float = 0.0,
    ) -> FaultPlan:
        """`count` faults of the given kinds at random times within `window` (seconds), all drawn from
        random.Random(seed): the same arguments always give the same plan. Times are rounded to 0.1 s so
        a plan reads (and can be retyped) easily."""
        rng = random.Random(seed)
        faults = []
        for _ in range(count):
            at = round(rng.uniform(*window), 1)
            kind = rng.choice(list(kinds))
            target = rng.choice(list(targets))
            duration = round(rng.uniform(*durations), 1) if kind in ("delay", "blackhole", "refuse") else None
            delay = round(rng.uniform(*delays), 3) if kind == "delay" else 0.0
            direction = rng.choice(list(directions)) if kind == "delay" else "both"
            proxy = rng.choice(list(proxies)) if proxies else None
            faults.append(Fault(at, kind, target, duration, delay, direction, proxy))
        return cls(faults, seed, connection_wait)

    def describe(self) -> str:
        head = f"FaultPlan(seed={self.seed!r}, {len(self.faults)} faults)"
        return "\n".join([head, *(f"  planned  {f}" for f in self.faults)])

    def report(self) -> str:
        """The plan and what was actually injected (print it when a test fails; replay with the seed)."""
        lines = [self.describe(), *(f"  injected {i}" for i in self.log)]
        lines += [f"  {name}: {proxy.stats.summary()}" for name, proxy in self._proxies.items()]
        return "\n".join(lines)

    def start(self, *proxies: FaultProxy) -> asyncio.Task:
        """Run the plan in the background from now; a fault with `proxy` set goes to the proxy of that name,
        one without goes to every proxy given."""
        self._proxies = {p.name: p for p in proxies}
        self._task = asyncio.create_task(self._run(), name=f"fault-plan-{self.seed}")
        return self._task

    async def _run(self) -> None:
        started = time.monotonic()
        for fault in self.faults:
            wait = started + fault.at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            targets = [self._proxies[fault.proxy]] if fault.proxy else list(self._proxies.values())
            for proxy in targets:
                if fault.kind in ("reset", "drop"):
                    await _until_connected(proxy, self.connection_wait)
                injected = proxy.inject(fault, self._pick_rng)
                # The plan's log keeps the plan's clock (the proxy's own log keeps the proxy's).
                self.log.append(dataclasses.replace(injected, at=round(time.monotonic() - started, 3)))

    async def finish(self, heal: bool = True) -> None:
        """Wait until every fault was injected, then (by default) heal the proxies."""
        if self._task is not None:
            await self._task
        if heal:
            for proxy in self._proxies.values():
                proxy.heal()

    async def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for proxy in self._proxies.values():
            proxy.heal()


async def _until_connected(proxy: FaultProxy, timeout: float, poll: float = 0.02) -> None:
    """Return once `proxy` carries a connection, or after `timeout` seconds (polled: the proxy's links live
    in its own thread)."""
    for _ in range(round(timeout / poll)):
        if proxy.open_connections:
            return
        await asyncio.sleep(poll)


# ------------------------------------------------------------------------------------ servers behind proxies


@dataclass
class ProxiedServer:
    """A dedicated server process and the proxy in front of it."""

    server: ServerProcess
    proxy: FaultProxy

    @property
    def address(self) -> str:
        """What clients use: the proxy (for Tansu also the address it advertises)."""
        return self.proxy.address

    @property
    def direct_address(self) -> str:
        """The server itself, bypassing the proxy (a test's own setup and checks)."""
        return f"127.0.0.1:{self.server.port}"


@contextlib.asynccontextmanager
async def _proxied(server: ServerProcess, proxy_port: int, name: str, seed: int | str | None) -> AsyncIterator[
    ProxiedServer
]:
    async with FaultProxy("127.0.0.1", server.port, listen_port=proxy_port, name=name, seed=seed) as proxy:
        await asyncio.to_thread(server.start)
        try:
            yield ProxiedServer(server, proxy)
        finally:
            await asyncio.to_thread(server.stop)


@contextlib.asynccontextmanager
async def proxied_tansu(work_dir: Path, seed: int | str | None = None) -> AsyncIterator[ProxiedServer]:
    """A dedicated Tansu listening on its own port and advertising the proxy's, so every Kafka request
    (bootstrap, metadata, produce, fetch, group calls) goes through the proxy. Bootstrap: `.address`."""
    proxy_port = free_port()
    server = tansu(work_dir, advertised_port=proxy_port)
    async with _proxied(server, proxy_port, "kafka", seed) as proxied:
        yield proxied


@contextlib.asynccontextmanager
async def proxied_nx27017(work_dir: Path, seed: int | str | None = None) -> AsyncIterator[ProxiedServer]:
    """A dedicated nx-27017 behind a proxy: `mongodb://{.address}` for pushsvc, `.direct_address` for checks."""
    server = nx27017(work_dir)
    async with _proxied(server, free_port(), "mongo", seed) as proxied:
        yield proxied
