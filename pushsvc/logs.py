"""structlog setup: one JSON object per line on stdout, with secrets masked before rendering."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

# Keys whose values are secrets or device tokens wherever they appear in an event.
_SECRET_KEYS = frozenset(
    {"token", "device_token", "api_key", "authorization", "password", "private_key", "secret"}
)
# A bearer credential or JWT inside free text (exception messages from HTTP libraries can carry them).
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+")


class MaskedToken(str):
    """A device token already masked by `mask_token`. Callers mask before logging (so a line never depends on
    the logging setup to hide a token), and `_mask_secrets` masks every `token` key again as a safety net:
    this type is how the processor tells the two apart, so a token is masked once and the length shown is
    the real token's, not that of its masked form ("abcdef…(64)" rather than "abcdef…(11)")."""

    __slots__ = ()


def mask_token(token: str | None) -> MaskedToken:
    """Enough of a device token to correlate log lines, never enough to use it."""
    if not token:
        return MaskedToken("")
    if isinstance(token, MaskedToken):
        return token
    return MaskedToken(f"{token[:6]}…({len(token)})")


def _mask_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        if isinstance(value, MaskedToken):
            continue
        if key in _SECRET_KEYS and isinstance(value, str):
            event[key] = mask_token(value) if "token" in key else "***"
        elif isinstance(value, str) and ("earer" in value or "eyJ" in value):
            event[key] = _JWT.sub("***", _BEARER.sub(r"\1***", value))
    return event


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default or str).decode()


def configure_logging(level: str = "info") -> None:
    """JSON logs for production; also routes the stdlib loggers of aiokafka, aioapns, etc. through structlog."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            _mask_secrets,
            structlog.processors.JSONRenderer(serializer=_orjson_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _mask_secrets,
                structlog.processors.JSONRenderer(serializer=_orjson_dumps),
            ],
            foreign_pre_chain=[
                *shared,
                structlog.stdlib.add_logger_name,
                structlog.processors.format_exc_info,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Library chatter (aiokafka rebalances, aioapns per-error lines) is useful at warning and above.
    root.setLevel(max(numeric, logging.WARNING))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
