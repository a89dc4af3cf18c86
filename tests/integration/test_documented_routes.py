"""Every HTTP route the README and the runbook name exists in the running service's router.

Before: the runbook told on-call to cancel a notification via a route that did not exist. A document naming a
route the service does not serve (or with another method) now fails the suite.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.integration.stack import Stack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", ROOT / "docs" / "runbook.md"]
# A path: /v1/ and what follows up to its end (a query, a quote, a backtick, a space, a bracket); "`/v1`" alone
# (the version prefix) is no route.
PATH = r"/v1/[^\s`'\"?\[\])|,]+"
# "POST /v1/notifications/{id}/cancel": a method and its path.
WITH_METHOD = re.compile(rf"\b(GET|POST|PUT|PATCH|DELETE) ({PATH})")
# `/v1/...` in backticks, and URLs in examples (curl http://host:8080/v1/...): any method.
BACKTICKED = re.compile(rf"`({PATH})")
IN_URL = re.compile(rf"https?://[^/\s`'\"]+({PATH})")
# "`POST /v1/campaigns/{id}/pause`, `/resume`, `/cancel`": the same route with its last segment replaced.
SIBLINGS = re.compile(rf"\b(GET|POST|PUT|PATCH|DELETE) ({PATH})`((?:,\s*`/[\w-]+`)+)")


def documented(text: str) -> set[tuple[str | None, str]]:
    """(method or None for any, path) of every route `text` names."""
    found: set[tuple[str | None, str]] = {(m, p) for m, p in WITH_METHOD.findall(text)}
    for method, path, siblings in SIBLINGS.findall(text):
        parent = path.rsplit("/", 1)[0]
        found |= {(method, parent + last) for last in re.findall(r"`(/[\w-]+)`", siblings)}
    named = {p for _, p in found}
    found |= {(None, p) for p in BACKTICKED.findall(text) + IN_URL.findall(text) if p not in named}
    return found


def segments(path: str) -> list[str]:
    return path.rstrip("/").split("/")


def serves(route: str, path: str) -> bool:
    """Does the router path `route` (`/v1/notifications/{notification_id}`) take the documented `path`
    (`/v1/notifications/{id}`, `/v1/notifications/campaign:<id>`, `/v1/notifications/hello-1`)?"""
    want, have = segments(route), segments(path)
    return len(want) == len(have) and all(
        w == h or (w.startswith("{") and w.endswith("}") and h != "") for w, h in zip(want, have, strict=True)
    )


def test_the_extraction_finds_what_the_documents_spell() -> None:
    text = ("- `POST /v1/campaigns/{id}/pause`, `/resume` and `GET /v1/notifications/{id}?app=`, "
            "`/v1/notifications/campaign:<id>?app=` or curl http://127.0.0.1:8080/v1/devices\n"
            "`DELETE /v1/users/{id}[?app=]`")
    assert documented(text) == {
        ("POST", "/v1/campaigns/{id}/pause"), ("POST", "/v1/campaigns/{id}/resume"), ("GET", "/v1/notifications/{id}"),
        (None, "/v1/notifications/campaign:<id>"), (None, "/v1/devices"), ("DELETE", "/v1/users/{id}"),
    }
    assert serves("/v1/notifications/{notification_id}/cancel", "/v1/notifications/{id}/cancel")
    assert not serves("/v1/notifications/{notification_id}", "/v1/notifications/{id}/cancel")
    assert not serves("/v1/campaigns/{campaign_id}/pause", "/v1/campaigns/{id}/stop")


async def test_every_route_the_readme_and_runbook_name_is_served(stack: Stack) -> None:
    await stack.start()
    routes: list[tuple[str, str]] = []
    for route in stack.services[0].http_app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if path:
            routes.append((route.method, path))
    missing = []
    checked = 0
    for document in DOCUMENTS:
        for method, path in sorted(documented(document.read_text()), key=str):
            checked += 1
            if not any(serves(route, path) and method in (None, served) for served, route in routes):
                missing.append(f"{document.relative_to(ROOT)}: {method or 'any method'} {path}")
    assert checked >= 10, "the documents name routes: the extraction found almost none"
    assert missing == [], "documented routes the service does not serve:\n" + "\n".join(missing)
