"""Expected failures of a command, and how long the CLI waits before a dependency has failed.

A CliFailure ends a command with one line on stderr ("pushsvc <command>: <line>") and exit code 2. The line
for Kafka or MongoDB names the address, where it was set, what happened and what to check, with every
credential masked; the reason table below maps a client's error text to those last two.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import unquote

if TYPE_CHECKING:
    from pymongo.errors import PyMongoError

    from pushsvc.config import KafkaSettings, MongoSettings

# The longest the CLI waits on Kafka or MongoDB for one connection or one request. The clients' defaults suit a
# long-running service that rides out a restart of its dependencies (aiokafka: 40 s per request; PyMongo: 30 s
# of server selection); a person at a terminal wants "it is down" within seconds. MongoDB's server selection
# and connect timeouts are capped at this (the config may set less); a bulk write of a large import batch keeps
# mongodb.socket_timeout_ms, as it may legitimately take longer once connected.
CLI_NETWORK_TIMEOUT_MS = 5000
# The most one Kafka command (send, topics create) may take in all: a few requests, and several bootstrap
# servers are tried one after the other.
CLI_KAFKA_DEADLINE_SECONDS = 15.0


class CliFailure(Exception):
    """An expected failure of a command: main() prints its one line after "pushsvc <command>: " and exits 2."""


# What a client's error says happened -> (what the one line says, what to check); the first match wins. The
# texts are those of asyncio, socket and ssl errors (aiokafka passes them on) and of PyMongo's server
# selection. "{service}": "the broker" or "MongoDB"; "{tls}": the settings of its TLS; "{seconds}": the wait.
_NETWORK_REASONS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("Errno 111", "refused", "Connect call failed"), "connection refused", "is {service} running?"),
    (("Name or service not known", "nodename nor servname", "name resolution", "getaddrinfo", "No address"),
     "host name not found", "is the host name right?"),
    (("Errno 101", "Network is unreachable", "Errno 113", "No route to host"), "no route to the host",
     "is the address right?"),
    (("Authentication failed", "SASL", "auth failed"), "authentication failed", "check the user name and password"),
    (("CERTIFICATE_VERIFY_FAILED", "certificate verify failed"), "the server's TLS certificate is not trusted",
     "check {tls}"),
    (("SSL", "TLS", "wrong version number"), "TLS handshake failed", "does {service} speak TLS there? check {tls}"),
    (("timed out", "TimeoutError", "Timeout"), "no answer within {seconds:g} s",
     "is the address right and {service} healthy?"),
)


def _network_reason(text: str, service: str, tls: str, seconds: float) -> str:
    """"<what happened>; <what to check>" for a client's error text; the text itself (on one line) if unknown."""
    for needles, reason, hint in _NETWORK_REASONS:
        if any(needle in text for needle in needles):
            return f"{reason}; {hint}".format(service=service, tls=tls, seconds=seconds)
    return _one_line(text)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def _scrub(text: str, secrets_: list[str | None]) -> str:
    """`text` with every secret (as given and URL-decoded) replaced by ***: error texts may quote a URI.
    Whatever the secret's length: a message garbled by a one-letter password is better than one that shows it."""
    for secret in secrets_:
        for form in {secret, unquote(secret)} if secret else ():
            text = text.replace(form, "***")
    return text


def kafka_failure(exc: BaseException, logged: list[BaseException], kafka: KafkaSettings, source: str) -> str:
    """The one line for a Kafka command that failed with `exc`; `logged`: the errors aiokafka logged meanwhile."""
    from aiokafka.errors import KafkaConnectionError

    # "Unable to bootstrap" says no more than that: why the last server failed is in what aiokafka logged.
    cause = logged[-1] if isinstance(exc, KafkaConnectionError) and logged else exc
    deadline = cause is exc and type(exc) is TimeoutError  # asyncio.timeout's, not a client's own
    seconds = CLI_KAFKA_DEADLINE_SECONDS if deadline else CLI_NETWORK_TIMEOUT_MS / 1000
    tls = "kafka.security_protocol and kafka.ssl_ca_file"
    reason = _network_reason(f"{type(cause).__name__}: {cause}", "the broker", tls, seconds)
    where = f"Kafka at {kafka.bootstrap_servers} ({source})"
    if isinstance(exc, KafkaConnectionError | OSError):
        return _scrub(f"cannot reach {where}: {reason}", [kafka.sasl_password])
    return _scrub(f"{where} did not complete the request: {reason}", [kafka.sasl_password])


def _mongo_address(uri: str) -> str:
    """The URI's scheme and hosts, for messages: the user and password masked, the path and options (which may
    carry credentials too, e.g. authMechanismProperties) left out."""
    scheme, separator, rest = uri.partition("://")
    if not separator:
        return "(a mongodb.uri that is not a URI)"
    _, at, hosts = _mongo_netloc(rest).rpartition("@")
    return f"{scheme}://{'***@' if at else ''}{hosts}"


def _mongo_password(uri: str) -> str | None:
    userinfo, _, _ = _mongo_netloc(uri.partition("://")[2]).rpartition("@")
    return userinfo.partition(":")[2] or None


def _mongo_netloc(rest: str) -> str:
    """[user:password@]host[:port][,host...] of a URI without its scheme (urlsplit refuses several hosts)."""
    return re.split(r"[/?]", rest, maxsplit=1)[0]


def mongo_failure(exc: PyMongoError, mongo: MongoSettings, source: str) -> str:
    """The one line for a command whose MongoDB work failed with `exc`."""
    from pymongo.errors import ConfigurationError, ConnectionFailure, OperationFailure, ServerSelectionTimeoutError

    where = f"MongoDB at {_mongo_address(mongo.uri)} ({source})"
    text = _scrub(str(exc), [mongo.uri, _mongo_password(mongo.uri)])
    if isinstance(exc, ConfigurationError):  # the URI itself, before any connection (InvalidURI, SRV lookup)
        return f"cannot use {source}: {_one_line(text)}"
    if isinstance(exc, OperationFailure):
        if exc.code == 18:  # AuthenticationFailed
            return f"{where} refused the login: authentication failed; check the user name and password"
        # The code and its name only: the server's message quotes the document it refused (a duplicate key
        # names the full device token), and a bulk write's details hold every failed operation.
        return f"{where} refused the operation: {_operation_error(exc)}"
    # Server selection says "<host>: <error> (configured timeouts: ...), Timeout: 5.0s, Topology Description: ..."
    reached = text.split(", Timeout: ")[0]
    reached = re.sub(r" \(configured timeouts: [^)]*\)", "", reached)
    tls = "the tls options of mongodb.uri"
    if isinstance(exc, ServerSelectionTimeoutError):
        reason = _network_reason(reached, "MongoDB", tls, mongo.server_selection_timeout_ms / 1000)
        return f"cannot reach {where}: {reason}"
    if isinstance(exc, ConnectionFailure):  # once connected: a read that outlasted mongodb.socket_timeout_ms
        reason = _network_reason(reached, "MongoDB", tls, mongo.socket_timeout_ms / 1000)
        return f"lost the connection to {where}: {reason}"
    return f"{where} failed: {type(exc).__name__}: {_one_line(text)}"


def _operation_error(exc: PyMongoError) -> str:
    """"code N (Name)" of an operation MongoDB refused; for a bulk write, of its first failed write."""
    details = getattr(exc, "details", None) or {}
    first = (details.get("writeErrors") or [{}])[0] if isinstance(details, dict) else {}
    code = first.get("code", getattr(exc, "code", None))
    name = first.get("codeName") or (details.get("codeName") if isinstance(details, dict) else None)
    return f"code {code}" + (f" ({name})" if name else "")
