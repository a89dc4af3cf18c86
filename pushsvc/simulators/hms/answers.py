"""How the Huawei Push Kit peer answers: its result codes, its JSON answer, and the scripts tests set."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from pushsvc.simulators.http_server import Reply

# Result code -> (HTTP status, msg) as the peer answers it. The adapter classifies by the code; the statuses
# follow Huawei's result-code table (200 for the 8000xxxx successes, 400 parameter errors, 401 OAuth, 403 no
# permission, 500 internal error).
RESULTS: dict[str, tuple[int, str]] = {
    "80000000": (200, "Success"),
    "80100000": (200, "Some tokens are successfully sent"),
    "80100001": (400, "Some request parameters are incorrect"),
    "80100003": (400, "Incorrect message structure"),
    "80100004": (400, "The message expiration time is earlier than the current time"),
    "80100013": (400, "The collapse_key message field is invalid"),
    "80100016": (400, "The message contains sensitive information"),
    "80200001": (401, "Oauth authentication error"),
    "80200003": (401, "Oauth token expired"),
    "80300002": (403, "The current app does not have the permission to send messages"),
    "80300007": (400, "All the tokens are invalid"),
    "80300008": (400, "The message body size exceeds the default value"),
    "80300010": (400, "The number of tokens in the message body exceeds the default value"),
    "80300011": (403, "You are not authorized to send high-priority notification messages"),
    "81000001": (500, "System internal error"),
}


@dataclass
class Script:
    code: str | None = None
    status: int | None = None
    msg: str | None = None
    retry_after: str | None = None
    delay: float = 0.0
    action: str | None = None  # "hang" | "close"
    times: int | None = None  # how many more requests it answers (rules.py); None: every one


def to_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def answer(status: int, code: str, msg: str, headers: list[tuple[str, str]] | None = None) -> Reply:
    body = {"code": code, "msg": msg, "requestId": f"{int(time.time() * 1000)}{secrets.randbelow(10**6):06d}"}
    return Reply(status, to_json(body), [("content-type", "application/json;charset=UTF-8"), *(headers or [])])


def refuse(code: str, detail: str | None = None) -> Reply:
    status, msg = RESULTS[code]
    return answer(status, code, f"{msg}: {detail}" if detail else msg)


def scripted(script: Script, token: str) -> Reply:
    """The answer a device token's script gives (after the bearer check, instead of the JSON check)."""
    headers = [("retry-after", script.retry_after)] if script.retry_after is not None else []
    if script.code is None:  # a plain HTTP answer, as a proxy or HMS's flow control gives it
        status = script.status or 503
        return Reply(status, (script.msg or "").encode(), [("content-type", "text/plain"), *headers])
    status, msg = RESULTS.get(script.code, (400, script.code))
    if script.code == "80100000" and script.msg is None:
        msg = json.dumps({"success": 0, "failure": 1, "illegal_tokens": [token]})
    return answer(script.status or status, script.code, script.msg or msg, headers)


def make_script(
    code: str | None,
    status: int | None,
    msg: str | None,
    retry_after: float | str | None,
    delay: float | None,
    action: str | None,
    times: int | None,
) -> Script:
    if action not in (None, "hang", "close"):
        raise ValueError("action must be 'hang' or 'close'")
    return Script(code, status, msg, None if retry_after is None else str(retry_after), delay or 0.0, action, times)


def code_of(reply: Reply) -> str | None:
    try:
        code = json.loads(reply.body).get("code")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, str) else None
