"""Liveness, readiness (Kafka and MongoDB reachable) and the Prometheus scrape endpoint."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pushsvc.api.context import CONSUMER_STATE, READINESS
from pushsvc.logs import get_logger
from pushsvc.metrics import REGISTRY

log = get_logger(__name__)

READINESS_TIMEOUT_SECONDS = 2.0

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(_: web.Request) -> web.Response:
    """The process is alive and its event loop answers."""
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Every dependency answered within the timeout; otherwise 503 naming the ones that did not.

    Unauthenticated (probes call it): it says which dependency is down and nothing more. The exception
    (host names, driver messages) goes to the log only.
    """
    checks = request.app[READINESS]
    names = list(checks)
    results = await asyncio.gather(
        *(asyncio.wait_for(checks[name](), READINESS_TIMEOUT_SECONDS) for name in names),
        return_exceptions=True,
    )
    report = {}
    for name, result in zip(names, results, strict=True):
        report[name] = "ok" if not isinstance(result, BaseException) else "down"
        if isinstance(result, BaseException):
            log.warning("readiness_check_failed", check=name, error=f"{type(result).__name__}: {result}"[:300])
    ready = all(value == "ok" for value in report.values())
    body = {"status": "ready" if ready else "not_ready", "checks": report, "consumer": request.app[CONSUMER_STATE]()}
    return web.json_response(body, status=200 if ready else 503)


@routes.get("/metrics")
async def metrics_endpoint(_: web.Request) -> web.Response:
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})
