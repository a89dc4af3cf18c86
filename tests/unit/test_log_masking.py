"""A device token in pushsvc's logs is masked exactly once, showing the real token's length and never the token,
whether the caller masked it (as the providers and dispatch do) or left it to the logging processor."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator

import orjson
import pytest
import structlog

from pushsvc.logs import configure_logging, get_logger, mask_token

TOKEN = "f3" * 32  # an APNs device token: 64 hex digits
MASKED = f"{TOKEN[:6]}…(64)"


@pytest.fixture
def log_output(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """What pushsvc's configured logging writes (configure_logging binds the sys.stdout of the moment)."""
    output = io.StringIO()
    monkeypatch.setattr(sys, "stdout", output)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("info")
    yield output
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def logged_lines(output: str) -> list[dict]:
    return [orjson.loads(line) for line in output.splitlines() if line.strip()]


def test_a_token_is_masked_once_with_its_real_length(log_output: io.StringIO) -> None:
    log = get_logger("pushsvc.test")
    log.warning("masked_by_the_caller", token=mask_token(TOKEN))  # e.g. dispatch/sender.py, providers/apns.py
    log.warning("masked_by_the_processor", token=TOKEN, device_token=TOKEN)
    log.warning("masked_elsewhere_in_the_event", device=mask_token(TOKEN))  # a key the processor does not know
    output = log_output.getvalue()
    lines = logged_lines(output)
    assert [line["event"] for line in lines] == ["masked_by_the_caller", "masked_by_the_processor",
                                                  "masked_elsewhere_in_the_event"]
    assert lines[0]["token"] == MASKED
    assert lines[1]["token"] == MASKED and lines[1]["device_token"] == MASKED
    assert lines[2]["device"] == MASKED
    assert TOKEN not in output
    assert "(11)" not in output  # the length of a masked string: the symptom of masking twice


def test_mask_token_is_idempotent() -> None:
    assert mask_token(mask_token(TOKEN)) == MASKED
    assert mask_token(None) == "" and mask_token("") == ""
