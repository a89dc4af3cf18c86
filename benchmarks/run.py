"""End-to-end benchmark: real broker, real MongoDB-protocol server, nginx as the TLS HTTP/2 APNs/FCM peer.

`make bench` (or `python benchmarks/run.py`) starts Tansu, nx-27017 and nginx, seeds devices, runs
`pushsvc serve` as a subprocess (so its own CPU time can be read from /proc/PID/stat), publishes requests to
Kafka exactly as a producing service does and prints, per phase:

* deliveries/s per provider (from nginx's access log timestamps, i.e. the provider side) and end to end
  (delivered / time from publish to the notification's finish),
* pushsvc CPU microseconds per delivery (utime+stime of the pushsvc process only),
* latency from publish to provider ack: per request (publish -> the outcome event's finished_at, which is
  after the last ack of that request) and per APNs delivery (publish -> nginx's answer, by device token).

Phases: APNs peak, FCM peak (one segment request each), a 100k-device mixed segment campaign, then a steady
stream of small segment requests (--per-request devices each) at half of the campaign's peak rate, then
transactional traffic (`users` requests of 1-3 devices): its peak (--txn-peak-requests published at once),
then a steady stream at half of that request rate (the latency target; or --txn-rate requests/s).
--phases picks phases; with --peak-rate the latency phase runs without the campaign. Results are printed as
a table and written to benchmarks/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform as platform_mod
import random
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import yaml  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402

from pushsvc.dev.servers import create_topics, free_port, nx27017, tansu, wait_for_port  # noqa: E402
from pushsvc.simulators.tls import make_test_pki  # noqa: E402

APP = "bench"
CAPPED_CATEGORY = "bench-marketing"
BENCH_CAPS = {"limits": [{"max": 1000, "window_hours": 24}, {"max": 1000, "window_hours": 168}],
              "categories": [CAPPED_CATEGORY]}
CLK_TCK = os.sysconf("SC_CLK_TCK")

NGINX_CONF = """
worker_processes 1;
error_log {work}/error.log warn;
pid {work}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    log_format bench '$msec $request_uri $status';
    client_body_temp_path {work}/body; proxy_temp_path {work}/proxy; fastcgi_temp_path {work}/fcgi;
    uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_buffer_size 16k;
    server {{
        listen {port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        access_log {work}/access.log bench buffer=1m flush=1s;
        location /3/device/ {{
            add_header apns-id $http_apns_id always;
            return 200 '';
        }}
        location /v1/projects/ {{
            default_type application/json;
            return 200 '{{"name":"projects/p/messages/1"}}';
        }}
        location = /token {{
            default_type application/json;
            return 200 '{{"access_token":"ya29.bench-token","expires_in":3600,"token_type":"Bearer"}}';
        }}
    }}
}}
"""


def rss_mb(pid: int) -> float:
    """Resident memory of a process (VmRSS), in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def sample_rss(pid: int, samples: list[tuple[float, float]], every: float = 1.0) -> None:
    """Append (seconds since start, RSS MB) of `pid` every `every` seconds until cancelled."""
    start = time.monotonic()
    while True:
        samples.append((time.monotonic() - start, rss_mb(pid)))
        await asyncio.sleep(every)


def rss_summary(samples: list[tuple[float, float]]) -> dict:
    """RSS at start, peak and end, and its range from the second minute on (the issue's flatness check)."""
    if not samples:
        return {}
    later = [mb for t, mb in samples if t >= 60] or [samples[-1][1]]
    return {"start_mb": round(samples[0][1], 1), "max_mb": round(max(mb for _, mb in samples), 1),
            "end_mb": round(samples[-1][1], 1), "from_second_minute_min_mb": round(min(later), 1),
            "from_second_minute_max_mb": round(max(later), 1),
            "every_10s_mb": [round(mb) for t, mb in samples if int(t) % 10 == 0]}


def replicas_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15 of stat)


def machine() -> dict:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform_mod.processor(),
    )
    mem_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal")))
    return {"nproc": os.cpu_count(), "cpu_model": model, "memory_gib": round(mem_kb / 2**20, 1),
            "python": platform_mod.python_version()}


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def scrape(url: str) -> dict[tuple[str, str], float]:
    """Cumulative histogram buckets (metric, le) -> count, summed over the other labels (outcome=delivered)."""
    out: dict[tuple[str, str], float] = {}
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        if "_bucket{" not in line or ('outcome="' in line and 'outcome="delivered"' not in line):
            continue
        name, _, rest = line.partition("{")
        labels, _, value = rest.rpartition("} ")
        le = labels.split('le="', 1)[1].split('"', 1)[0]
        out[(name, le)] = out.get((name, le), 0.0) + float(value)
    return out


def histogram_quantiles(before: dict, after: dict, metric: str) -> dict[str, float | None]:
    """p50/p99 in ms from the bucket deltas, interpolated linearly inside a bucket."""
    buckets = sorted(((float("inf") if le == "+Inf" else float(le)), after.get((m, le), 0) - before.get((m, le), 0))
                     for (m, le) in after if m == f"{metric}_bucket")
    total = buckets[-1][1] if buckets else 0
    result: dict[str, float | None] = {}
    for q in (0.5, 0.99):
        value = None
        if total:
            rank, lower, below = q * total, 0.0, 0.0
            for upper, count in buckets:
                if count >= rank:
                    value = upper if upper == float("inf") else lower + (upper - lower) * (rank - below) / max(
                        1e-9, count - below)
                    break
                lower, below = upper, count
        result[f"p{int(q * 100)}"] = ms(value)
    return result


def ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 1)


# ------------------------------------------------------------------------------------------------ setup


def write_credentials(work: Path, nginx_port: int) -> tuple[Path, Path]:
    apns_key = work / "apns-key.p8"
    apns_key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    sa = work / "service-account.json"
    sa.write_text(json.dumps({
        "type": "service_account", "project_id": "bench-project", "private_key_id": secrets.token_hex(20),
        "private_key": pem, "client_email": "bench@bench-project.iam.gserviceaccount.com", "client_id": "1",
        "token_uri": f"https://127.0.0.1:{nginx_port}/token",
    }))
    return apns_key, sa


def seed_devices(mongo_uri: str, total: int, peak: int, group: int = 100) -> None:
    """`total` devices, half iOS, half Android; the first `peak` of each platform also tagged <platform>-peak;
    consecutive runs of `group` devices share a tag g<n> (the small requests of the latency phase)."""
    from pymongo import MongoClient

    client = MongoClient(mongo_uri)
    coll = client["pushsvc"]["devices"]
    coll.drop()
    now = time.time()
    batch: list[dict] = []
    for i in range(total):
        ios = i % 2 == 0
        plat = "ios" if ios else "android"
        n = i // 2
        token = f"{i:064x}" if ios else f"fcm{i:08d}:APA91b" + "x" * 140
        tags = ["all", plat, f"g{i // group}"] + ([f"{plat}-peak"] if n < peak else [])
        # The documents the API writes (kind, registered_at), so pushsvc's one-time backfill of kind on
        # devices from before kinds (7 s at 100k on nx-27017) does not weigh on the run.
        batch.append({"app": APP, "token": token, "platform": plat, "kind": "apns" if ios else "fcm",
                      "user_id": f"u{i}", "tags": tags,
                      "locale": "en-US", "timezone": "UTC", "app_version": "1.0", "opt_out": [],
                      "active": True, "deactivated_reason": None, "deactivated_at": None,
                      "created_at": now, "updated_at": now, "registered_at": now})
        if len(batch) == 5000:
            coll.insert_many(batch, ordered=False)
            batch = []
    if batch:
        coll.insert_many(batch, ordered=False)
    client.close()


def device_token(i: int) -> str:
    return f"{i:064x}" if i % 2 == 0 else f"fcm{i:08d}:APA91b" + "x" * 140


# ------------------------------------------------------------------------------------------------ phases


class Bench:
    def __init__(self, args: argparse.Namespace, bootstrap: str, pushsvc_pids: list[int], access_log: Path,
                 others: dict[str, int], metrics_url: str) -> None:
        self.metrics_url = metrics_url
        self.args = args
        self.bootstrap = bootstrap
        self.pids = pushsvc_pids  # every replica: CPU is their sum, RSS is sampled per replica
        self.access_log = access_log
        self.others = others
        self.outcomes: dict[str, dict] = {}
        self.arrived: dict[str, asyncio.Event] = {}
        self.producer: AIOKafkaProducer | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.log_offset = 0

    async def start(self) -> None:
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=2)
        await self.producer.start()
        self.consumer = AIOKafkaConsumer("push.outcomes", bootstrap_servers=self.bootstrap,
                                         group_id=f"bench-{secrets.token_hex(4)}", auto_offset_reset="latest",
                                         fetch_max_wait_ms=50)
        await self.consumer.start()
        self._consume_task = asyncio.create_task(self._consume())
        await asyncio.sleep(1.0)

    async def stop(self) -> None:
        self._consume_task.cancel()
        with contextlib.suppress(BaseException):
            await self._consume_task
        assert self.consumer and self.producer
        await self.consumer.stop()
        await self.producer.stop()

    async def _consume(self) -> None:
        assert self.consumer
        while True:
            batches = await self.consumer.getmany(timeout_ms=200, max_records=1000)
            for records in batches.values():
                for record in records:
                    event = json.loads(record.value)
                    self.outcomes[event["id"]] = event
                    if event["id"] in self.arrived:
                        self.arrived[event["id"]].set()

    def _request(self, rid: str, target: dict) -> bytes:
        # With --frequency-caps every request carries the capped category (so each delivery is admitted first).
        category = {"category": CAPPED_CATEGORY} if self.args.frequency_caps else {}
        return json.dumps({"id": rid, "app": APP, "target": target,
                           "message": {"title": "Benchmark", "body": "Hello from the benchmark",
                                       "data": {"k": 1}, "sound": "default", **category}}).encode()

    async def run_phase(self, name: str, requests: list[tuple[str, dict]], rate: float | None,
                        token_request: dict[str, str] | None = None) -> dict:
        """Publish requests (at `rate` requests/s, or all at once), wait for every outcome, measure."""
        assert self.producer
        self._skip_log()
        for rid, _ in requests:
            self.arrived[rid] = asyncio.Event()
        metrics0 = scrape(self.metrics_url)
        cpu0, wall0 = replicas_cpu(self.pids), time.time()
        others0 = {k: cpu_seconds(p) for k, p in self.others.items()}
        rss: list[list[tuple[float, float]]] = [[] for _ in self.pids]
        rss_tasks = [asyncio.create_task(sample_rss(pid, samples)) for pid, samples in zip(self.pids, rss, strict=True)]
        published: dict[str, float] = {}
        start = time.monotonic()
        for i, (rid, target) in enumerate(requests):
            if rate:
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            published[rid] = time.time()
            await self.producer.send("push.requests", self._request(rid, target), key=rid.encode())
        await self.producer.flush()
        publish_end = time.time()
        try:
            await asyncio.wait_for(asyncio.gather(*(self.arrived[r].wait() for r, _ in requests)),
                                   self.args.phase_timeout)
        except TimeoutError:
            print(f"  {name}: timed out waiting for outcomes", file=sys.stderr)
        cpu1, wall1 = replicas_cpu(self.pids), time.time()
        for task in rss_tasks:
            task.cancel()
        others1 = {k: cpu_seconds(p) for k, p in self.others.items()}
        metrics1 = scrape(self.metrics_url)
        await asyncio.sleep(1.3)  # nginx flushes its access log buffer every second
        lines = self._read_log()

        events = [self.outcomes[r] for r, _ in requests if r in self.outcomes]
        delivered = sum(e["counts"].get("delivered", 0) for e in events)
        targeted = sum(e["counts"].get("targeted", 0) for e in events)
        first_pub = min(published.values())
        finished = max((e["finished_at"] for e in events), default=wall1)
        req_lat = [e["finished_at"] - published[e["id"]] for e in events]
        per_provider: dict[str, dict] = {}
        for prov, prefix in (("apns", "/3/device/"), ("fcm", "/v1/projects/")):
            times = [t for t, uri, status in lines if uri.startswith(prefix) and status == "200"]
            if times:
                span = max(times) - min(times)
                per_provider[prov] = {"acks": len(times),
                                      "acks_per_s": round(len(times) / span) if span > 0 else None}
        apns_lat: list[float] = []
        for t, uri, _ in lines:
            if uri.startswith("/3/device/"):
                token = uri[len("/3/device/"):]
                rid = token_request.get(token) if token_request else requests[0][0]
                if rid in published:
                    apns_lat.append(t - published[rid])
        cpu = cpu1 - cpu0
        result = {
            "phase": name,
            "requests": len(requests),
            "targeted": targeted,
            "delivered": delivered,
            "outcomes_received": len(events),
            "publish_seconds": round(publish_end - first_pub, 3),
            "first_ack_after_publish_s": round(min(t for t, _, _ in lines) - first_pub, 3) if lines else None,
            "pushsvc_rss": rss_summary(rss[0]),
            **({"replicas": len(self.pids), "replicas_rss": [rss_summary(r) for r in rss]}
               if len(self.pids) > 1 else {}),
            "seconds": round(finished - first_pub, 3),
            "deliveries_per_s": round(delivered / (finished - first_pub)) if delivered else 0,
            "provider": per_provider,
            "pushsvc_cpu_seconds": round(cpu, 2),
            "pushsvc_cpu_share_of_one_core": round(cpu / max(1e-9, wall1 - wall0), 2),
            "pushsvc_cpu_us_per_delivery": round(cpu * 1e6 / delivered) if delivered else None,
            "other_cpu_seconds": {k: round(others1[k] - others0[k], 2) for k in others0},
            "request_latency_ms": {"p50": ms(pct(req_lat, 0.5)), "p99": ms(pct(req_lat, 0.99)),
                                   "max": ms(max(req_lat, default=None))},
            "apns_delivery_latency_ms": {"p50": ms(pct(apns_lat, 0.5)), "p99": ms(pct(apns_lat, 0.99))},
            # pushsvc's own histograms: request recorded (due) -> ack, and one provider round trip.
            "pushsvc_due_to_ack_ms": histogram_quantiles(metrics0, metrics1, "pushsvc_end_to_end_latency_seconds"),
            "provider_round_trip_ms": histogram_quantiles(
                metrics0, metrics1, "pushsvc_provider_request_duration_seconds"),
        }
        if rate:
            result["offered_requests_per_s"] = round(rate, 1)
        return result

    def _skip_log(self) -> None:
        self.log_offset = self.access_log.stat().st_size if self.access_log.exists() else 0

    def _read_log(self) -> list[tuple[float, str, str]]:
        with self.access_log.open("rb") as f:
            f.seek(self.log_offset)
            data = f.read()
        out = []
        for line in data.decode(errors="replace").splitlines():
            parts = line.split(" ")
            if len(parts) == 3:
                out.append((float(parts[0]), parts[1], parts[2]))
        return out


async def run_phases(args: argparse.Namespace, bench: Bench) -> list[dict]:
    await bench.start()
    results = []
    tag = secrets.token_hex(3)
    try:
        warm_up = [(f"warm-{tag}-{i}", {"users": [f"u{u}" for u in range(i * 50, i * 50 + 50)]}) for i in range(4)]
        warm = await bench.run_phase("warm-up", warm_up, None)
        print(f"  warm-up: delivered {warm['delivered']}", flush=True)
        if "idle" in args.phases:
            # Nothing to do: what the replica costs while it waits (polls, heartbeats, refreshes), over a minute.
            await asyncio.sleep(5)  # the warm-up's tail (outcome sweep, lease releases) out of the window
            cpu0, wall0 = replicas_cpu(bench.pids), time.monotonic()
            await asyncio.sleep(args.idle_seconds)
            share = (replicas_cpu(bench.pids) - cpu0) / (time.monotonic() - wall0)
            r = {"phase": "idle", "seconds": args.idle_seconds, "pushsvc_cpu_share_of_one_core": round(share, 4)}
            results.append(r)
            print(f"  idle: pushsvc used {share * 100:.2f}% of a core over {args.idle_seconds:.0f}s", flush=True)
        for name, seg in (("apns_peak", "ios-peak"), ("fcm_peak", "android-peak")):
            if name.split("_")[0] not in args.phases:
                continue
            r = await bench.run_phase(name, [(f"{name}-{tag}", {"segment": {"tags_any": [seg]}})], None)
            results.append(r)
            print_row(r)
        peak = args.peak_rate
        if "campaign" in args.phases:
            name = f"campaign_{args.devices // 1000}k"
            r = await bench.run_phase(name, [(f"campaign-{tag}", {"segment": {"tags_any": ["all"]}})], None)
            results.append(r)
            print_row(r)
            peak = r["deliveries_per_s"] or peak
        if "latency" in args.phases:
            peak = peak or 1000
            per = args.per_request
            rate = max(1.0, peak * args.latency_load / per)
            n = min(int(rate * args.latency_seconds), args.devices // per)  # each device in one request only
            token_request: dict[str, str] = {}
            reqs = []
            groups = args.devices // per
            for k in range(n):
                group = k % groups
                rid = f"lat-{tag}-{k}"
                for u in range(group * per, group * per + per):
                    token_request[device_token(u)] = rid
                reqs.append((rid, {"segment": {"tags_any": [f"g{group}"]}}))
            r = await bench.run_phase(f"latency_at_{int(args.latency_load * 100)}pct", reqs, rate, token_request)
            r["offered_deliveries_per_s"] = round(rate * per)
            results.append(r)
            print_row(r)
        if "single" in args.phases:
            # One push to one user with one device, per provider: its peak (--single-peak-requests published at
            # once), then a steady stream at --single-rate requests/s (the latency target). Users from
            # --devices/4 upwards, away from the warm-up's and the transactional phase's.
            next_user = {"apns": args.devices // 4, "fcm": args.devices // 4 + 1}  # even: iOS, odd: Android

            def single(provider: str, count: int, prefix: str) -> tuple[list[tuple[str, dict]], dict[str, str]]:
                token_request: dict[str, str] = {}
                reqs = []
                for k in range(count):
                    u = next_user[provider]
                    next_user[provider] = (u + 2) % args.devices
                    rid = f"{prefix}-{tag}-{k}"
                    token_request[device_token(u)] = rid
                    reqs.append((rid, {"users": [f"u{u}"]}))
                return reqs, token_request

            for provider in ("apns", "fcm"):
                reqs, token_request = single(provider, args.single_peak_requests, f"single-{provider}-peak")
                r = await bench.run_phase(f"single_{provider}_peak", reqs, None, token_request)
                results.append(r)
                print_row(r)
            for provider in ("apns", "fcm"):
                count = int(args.single_rate * args.latency_seconds)
                reqs, token_request = single(provider, count, f"single-{provider}")
                r = await bench.run_phase(f"single_{provider}_{args.single_rate:g}rps", reqs, args.single_rate,
                                          token_request)
                results.append(r)
                print_row(r)
        if "txn" in args.phases:
            # Transactional traffic: many small `users` requests (1-3 users, one device each). Its own peak
            # (requests published all at once) first, then a steady stream at --latency-load of that peak.
            rng = random.Random(7)
            next_user = args.devices // 2  # away from the users the warm-up touched

            def transactional(count: int, prefix: str) -> tuple[list[tuple[str, dict]], dict[str, str]]:
                nonlocal next_user
                token_request: dict[str, str] = {}
                reqs = []
                for k in range(count):
                    users = list(range(next_user, next_user + rng.randint(1, 3)))
                    next_user = (users[-1] + 1) % args.devices
                    rid = f"{prefix}-{tag}-{k}"
                    for u in users:
                        token_request[device_token(u)] = rid
                    reqs.append((rid, {"users": [f"u{u}" for u in users]}))
                return reqs, token_request

            rate = args.txn_rate
            if rate is None:
                reqs, token_request = transactional(args.txn_peak_requests, "txnpeak")
                r = await bench.run_phase("transactional_peak", reqs, None, token_request)
                results.append(r)
                print_row(r)
                rate = round(len(reqs) / r["seconds"] * args.latency_load, 1)
            reqs, token_request = transactional(int(rate * args.latency_seconds), "txn")
            r = await bench.run_phase(f"transactional_{rate:g}rps", reqs, rate, token_request)
            r["offered_deliveries_per_s"] = round(rate * r["targeted"] / max(1, len(reqs)))
            results.append(r)
            print_row(r)
    finally:
        await bench.stop()
    return results


def print_row(r: dict) -> None:
    prov = " ".join(f"{k}={v['acks_per_s']}/s" for k, v in r["provider"].items())
    print(f"  {r['phase']:<18} delivered={r['delivered']:>6}/{r['targeted']:<6} e2e={r['deliveries_per_s']:>5}/s "
          f"[{prov}] cpu={r['pushsvc_cpu_us_per_delivery']}us/delivery "
          f"req p50/p99={r['request_latency_ms']['p50']}/{r['request_latency_ms']['p99']}ms "
          f"apns p50/p99={r['apns_delivery_latency_ms']['p50']}/{r['apns_delivery_latency_ms']['p99']}ms "
          f"due->ack p50/p99={r['pushsvc_due_to_ack_ms']['p50']}/{r['pushsvc_due_to_ack_ms']['p99']}ms "
          f"round trip p50/p99={r['provider_round_trip_ms']['p50']}/{r['provider_round_trip_ms']['p99']}ms",
          flush=True)


def print_table(results: list[dict]) -> None:
    head = ["phase", "delivered", "e2e/s", "apns/s", "fcm/s", "cpu us/dlv", "cpu cores",
            "req p50 ms", "req p99 ms", "apns p50 ms", "apns p99 ms"]
    rows = [[r["phase"], r["delivered"], r["deliveries_per_s"],
             r["provider"].get("apns", {}).get("acks_per_s", "-"), r["provider"].get("fcm", {}).get("acks_per_s", "-"),
             r["pushsvc_cpu_us_per_delivery"], r["pushsvc_cpu_share_of_one_core"],
             r["request_latency_ms"]["p50"], r["request_latency_ms"]["p99"],
             r["apns_delivery_latency_ms"]["p50"], r["apns_delivery_latency_ms"]["p99"]]
            for r in results if "delivered" in r]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    for row in [head, *rows]:
        print(" | ".join(str(x).rjust(w) for x, w in zip(row, widths, strict=True)))


# ------------------------------------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100_000, help="campaign size (half iOS, half Android)")
    parser.add_argument("--peak-devices", type=int, default=30_000, help="devices per provider in the peak phases")
    parser.add_argument("--per-request", type=int, default=1000,
                        help="devices per request in the latency phase (a segment of that size, half iOS)")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--latency-load", type=float, default=0.5, help="share of the campaign's peak rate")
    parser.add_argument("--chunk-size", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=1000, help="dispatch.concurrency_per_provider")
    parser.add_argument("--max-connections", type=int, default=10, help="apns/fcm max_connections")
    parser.add_argument("--max-active", type=int, default=64, help="dispatch.max_active_notifications")
    parser.add_argument("--range-devices", type=int, default=None,
                        help="dispatch.range_devices (0: never cut a fan-out into ranges; default: the service's)")
    parser.add_argument("--max-active-ranges", type=int, default=None,
                        help="dispatch.max_active_ranges (default: the service's)")
    parser.add_argument("--replicas", type=int, default=1,
                        help="pushsvc processes sharing the work (CPU summed, RSS per replica)")
    parser.add_argument("--phase-timeout", type=float, default=300.0)
    parser.add_argument("--work", default="/tmp/pushsvc-bench")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results.json"))
    parser.add_argument("--profile", choices=["py-spy", "none"], default="none",
                        help="record py-spy collapsed stacks of pushsvc into WORK/profile.txt")
    parser.add_argument("--frequency-caps", action="store_true",
                        help="configure frequency caps (never reached) and send every request in their category")
    parser.add_argument("--phases", default="idle,apns,fcm,campaign,latency,single,txn",
                        help="which phases to run (comma separated: idle,apns,fcm,campaign,latency,single,txn)")
    parser.add_argument("--peak-rate", type=float, default=None,
                        help="campaign peak deliveries/s for the latency phase when the campaign phase is skipped")
    parser.add_argument("--txn-rate", type=float, default=None,
                        help="requests/s in the transactional phase (users targets of 1-3 devices); "
                             "default: --latency-load of the transactional peak, measured first")
    parser.add_argument("--txn-peak-requests", type=int, default=10_000,
                        help="requests published at once to measure the transactional peak")
    parser.add_argument("--single-peak-requests", type=int, default=10_000,
                        help="single-device requests published at once per provider (the single phase's peak)")
    parser.add_argument("--poll-interval", type=float, default=None,
                        help="dispatch.poll_interval_seconds (default: the service's own)")
    parser.add_argument("--fetch-wait-ms", type=int, default=50,
                        help="kafka.fetch_max_wait_ms (Tansu holds every fetch this long: latency against idle CPU)")
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="length of the idle phase")
    parser.add_argument("--in-queries", choices=["auto", "indexed", "scanned"], default="auto",
                        help="mongodb.in_queries: 'indexed' reads a batch's devices with one $in as on MongoDB (on "
                             "nx-27017 a scan: its CPU rises, pushsvc's is what a MongoDB deployment would see)")
    parser.add_argument("--tracing-ratio", type=float, default=None,
                        help="turn tracing on, sampling new traces at this ratio, exporting over OTLP/HTTP to a "
                             "receiver in its own process (benchmarks/tracing_cost.py); default: tracing off")
    parser.add_argument("--single-rate", type=float, default=350.0,
                        help="requests/s of the single phase's steady stream (one device each)")
    args = parser.parse_args()
    args.peak_devices = min(args.peak_devices, args.devices // 2)

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    pki = make_test_pki(work / "pki")
    started: list = []
    procs: list[subprocess.Popen] = []
    try:
        nginx_port = free_port()
        ngx = work / "nginx"
        ngx.mkdir()
        (ngx / "nginx.conf").write_text(NGINX_CONF.format(work=ngx, port=nginx_port, cert=pki.cert_file,
                                                          key=pki.key_file))
        nginx = subprocess.Popen(["nginx", "-p", str(ngx), "-c", str(ngx / "nginx.conf"), "-g", "daemon off;"],
                                 stdout=subprocess.DEVNULL, stderr=(ngx / "stderr.log").open("wb"),
                                 start_new_session=True)
        procs.append(nginx)
        wait_for_port(nginx_port, 10, nginx)
        broker = tansu(work).start()
        started.append(broker)
        mongo = nx27017(work).start()
        started.append(mongo)
        bootstrap = f"127.0.0.1:{broker.port}"
        asyncio.run(create_topics(bootstrap, {"push.requests": 3, "push.requests.dlq": 1, "push.outcomes": 1}))
        mongo_uri = f"mongodb://127.0.0.1:{mongo.port}"
        t = time.monotonic()
        seed_devices(mongo_uri, args.devices, args.peak_devices, args.per_request)
        print(f"seeded {args.devices} devices in {time.monotonic() - t:.1f}s", flush=True)

        apns_key, sa = write_credentials(work, nginx_port)
        tracing_section = {}
        if args.tracing_ratio is not None:
            receiver_port = free_port()
            receiver = subprocess.Popen([sys.executable, str(REPO_ROOT / "benchmarks" / "tracing_cost.py"),
                                         "--serve-receiver", str(receiver_port)], start_new_session=True)
            procs.append(receiver)
            wait_for_port(receiver_port, 10, receiver)
            tracing_section = {"tracing": {"otlp_endpoint": f"http://127.0.0.1:{receiver_port}",
                                           "sample_ratio": args.tracing_ratio}}
        config = {
            # Tansu holds a fetch for the whole wait, even when data arrives (config.py: Kafka answers at once).
            "kafka": {"bootstrap_servers": bootstrap, "max_poll_records": 500, "fetch_max_wait_ms": args.fetch_wait_ms},
            "mongodb": {"uri": mongo_uri, "database": "pushsvc", "in_queries": args.in_queries},
            "http": {"host": "127.0.0.1", "port": 0},
            "log_level": "warning",
            "dispatch": {"chunk_size": args.chunk_size, "concurrency_per_provider": args.concurrency,
                         "max_active_notifications": args.max_active,
                         **({"poll_interval_seconds": args.poll_interval} if args.poll_interval else {}),
                         **({"range_devices": args.range_devices} if args.range_devices is not None else {}),
                         **({"max_active_ranges": args.max_active_ranges} if args.max_active_ranges else {})},
            "apps": {APP: {
                "apns": {"topic": "com.example.bench", "key_file": str(apns_key), "key_id": "BENCHKEY01",
                         "team_id": "BENCHTEAM1", "endpoint": f"https://127.0.0.1:{nginx_port}",
                         "ca_file": str(pki.ca_file), "max_connections": args.max_connections},
                "fcm": {"service_account_file": str(sa), "endpoint": f"https://127.0.0.1:{nginx_port}",
                        "ca_file": str(pki.ca_file), "max_connections": args.max_connections},
                # A cap no bench device reaches: what is measured is the admission itself.
                **({"frequency_caps": BENCH_CAPS} if args.frequency_caps else {}),
            }},
            **tracing_section,
        }
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "SSL_CERT_FILE": str(pki.bundle_file),
               "REQUESTS_CA_BUNDLE": str(pki.bundle_file)}
        services: list[subprocess.Popen] = []
        http_ports: list[int] = []
        for n in range(args.replicas):
            http_ports.append(free_port())
            config["http"]["port"] = http_ports[-1]
            config["instance_name"] = f"bench-{n}"
            config_file = work / f"config-{n}.yaml"
            config_file.write_text(yaml.safe_dump(config, sort_keys=False))
            services.append(subprocess.Popen(
                [sys.executable, "-m", "pushsvc.cli", "serve", "--config", str(config_file)],
                env=env, cwd=REPO_ROOT, stdout=(work / f"pushsvc-{n}.log").open("wb"), stderr=subprocess.STDOUT,
                start_new_session=True))
            procs.append(services[-1])
        service = services[0]
        for service_n, port in zip(services, http_ports, strict=True):
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                        if resp.status == 200:
                            break
                except Exception:
                    if service_n.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"pushsvc did not become ready; see {work}/pushsvc-*.log") from None
                    time.sleep(0.3)
        http_port = http_ports[0]
        print(f"pushsvc ready ({len(services)} replica(s), pids {[p.pid for p in services]}); indexes built",
              flush=True)
        spy = None
        if args.profile == "py-spy":
            spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--nonblocking", "-p",
                                    str(service.pid), "-f", "raw", "-o", str(work / "profile.txt"), "-r", "100"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(spy)
        others = {"nginx_worker": int(subprocess.check_output(["pgrep", "-P", str(nginx.pid)]).split()[0]),
                  "tansu": broker.process.pid, "nx-27017": mongo.process.pid}
        bench = Bench(args, bootstrap, [p.pid for p in services], ngx / "access.log", others,
                      f"http://127.0.0.1:{http_port}/metrics")
        self_cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        results = asyncio.run(run_phases(args, bench))
        self_cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(30)
        print()
        print_table(results)
        per_delivery = [r["pushsvc_cpu_us_per_delivery"] for r in results if r.get("pushsvc_cpu_us_per_delivery")]
        out = {
            "machine": machine(),
            "settings": {k: getattr(args, k) for k in ("devices", "peak_devices", "per_request", "latency_seconds",
                                                       "latency_load", "chunk_size", "concurrency",
                                                       "max_connections", "max_active", "replicas", "range_devices",
                                                       "max_active_ranges")},
            "load_generator_cpu_seconds": round(self_cpu1.ru_utime + self_cpu1.ru_stime
                                                - self_cpu0.ru_utime - self_cpu0.ru_stime, 2),
            "note": "pushsvc CPU is its own process's utime+stime; the broker, MongoDB server, nginx and this "
                    "load generator share the same cores, so wall throughput is bounded by them too.",
            "phases": results,
            "median_cpu_us_per_delivery": statistics.median(per_delivery) if per_delivery else None,
        }
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
        print(f"\nmachine: {out['machine']}\nwritten to {args.out}")
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
        for s in reversed(started):
            s.stop()


if __name__ == "__main__":
    raise SystemExit(main())
