"""Where the Web Push adapter may connect: endpoints come from whoever registers a device (SSRF).

Where pushsvc may connect (SSRF)
    Endpoints come from whoever registers a device. A host name is resolved by ``GuardedResolver``, which
    refuses the whole answer when any address is loopback, private, link-local or otherwise internal
    (subscriptions.address_refused): the check applies to exactly the addresses connected to, so a name
    that changes its answer later (DNS rebinding) gains nothing. An address literal never reaches a
    resolver, so it is checked, as aiohttp reads it, before the request. Hosts in ``allowed_hosts`` are
    exempt. An endpoint whose URL itself names an internal address is INVALID_TOKEN ("EndpointNotAllowed",
    the device deactivated: no real push service is reached so); one whose name resolves inside is REJECTED
    ("EndpointResolvesInside", the device kept: what a name resolves to is the network's doing, and may be
    true of a whole push service's subscriptions at once, which must not all be deactivated for good).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Collection
from typing import TYPE_CHECKING

from aiohttp.abc import AbstractResolver
from yarl import URL

from pushsvc.subscriptions import address_refused

if TYPE_CHECKING:
    from aiohttp.abc import ResolveResult

class EndpointRefused(OSError):
    """A push endpoint's host resolved to an address pushsvc must not connect to."""


class GuardedResolver(AbstractResolver):
    """Resolves with `inner`, then refuses the whole answer if any address is internal (unless the host is
    allowed). A mixed answer is refused rather than filtered: a push service never resolves to an internal
    address, so one that does is misconfigured or hostile."""

    def __init__(self, allowed_hosts: Collection[str], inner: AbstractResolver) -> None:
        self._allowed_hosts = allowed_hosts
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            problem = address_refused(result["host"], host, self._allowed_hosts)
            if problem is not None:
                raise EndpointRefused(f"{host}: {problem}")
        return results

    async def close(self) -> None:
        await self._inner.close()


def literal_problem(url: URL, allowed_hosts: Collection[str]) -> str | None:
    """The SSRF rule for an address-literal host, read as aiohttp reads it (aiohttp connects to a literal
    without asking the resolver). Complements subscriptions.endpoint_problem, which reads the URL with
    urlsplit: two parsers, so that a URL they disagree on is still checked as it is used."""
    host = url.raw_host or ""
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return None
    return address_refused(host, host, allowed_hosts)
