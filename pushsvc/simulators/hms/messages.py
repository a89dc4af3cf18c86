"""Push Kit's ``/v1/{app_id}/messages:send``: the bearer token's check, then a script for the device token or
the JSON checks (checks.py); every request is recorded whatever the answer."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pushsvc.logs import mask_token
from pushsvc.simulators.hms.answers import Script, answer, code_of, refuse, scripted
from pushsvc.simulators.hms.checks import check_request
from pushsvc.simulators.hms.oauth import TokenEndpoint
from pushsvc.simulators.http_server import Reply
from pushsvc.simulators.rules import take_rule

if TYPE_CHECKING:
    from pushsvc.simulators.hms.peer import HmsPeer


@dataclass
class RecordedRequest:
    """One messages:send request as the peer received it."""

    app_id: str
    headers: dict[str, str]  # lower-case names, pseudo-headers excluded
    body: Any  # decoded JSON (None if the body was not JSON)
    time: float  # on the peer's clock
    http_version: str  # "h2" or "http/1.1"
    bearer: str  # the access token presented ("" if none)
    auth: str  # "valid", "expired", "unknown" (never issued, revoked, or for another app) or "missing"
    status: int | None = None  # what the peer answered (None: hung or closed)
    code: str | None = None

    @property
    def token(self) -> str | None:
        """The first device token of message.token."""
        try:
            tokens = self.body["message"]["token"]
            return tokens[0] if isinstance(tokens, list) and tokens else None
        except (TypeError, KeyError):
            return None

    @property
    def message(self) -> dict[str, Any]:
        return self.body["message"]


class MessagesEndpoint:
    """The send requests received and the scripts per device token."""

    def __init__(self, peer: HmsPeer, tokens: TokenEndpoint) -> None:
        self.peer = peer
        self.tokens = tokens
        self.requests: list[RecordedRequest] = []
        self.scripts: dict[str, Script] = {}

    async def handle(self, app_id: str, headers: dict[str, str], body: bytes, version: str) -> Reply:
        peer = self.peer
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = None
        auth = headers.get("authorization", "")
        bearer = auth[7:] if auth[:7].lower() == "bearer " else ""
        record = RecordedRequest(
            app_id, dict(headers), payload, peer.clock(), version, bearer, self.tokens.auth(bearer)
        )
        self.requests.append(record)
        reply = await self._reply(app_id, record)
        if reply.action is None:
            record.status = reply.status
            record.code = code_of(reply)
        if peer.log_messages:
            self._log(record, body)
        return reply

    async def _reply(self, app_id: str, record: RecordedRequest) -> Reply:
        peer = self.peer
        if not peer.accept_any_auth or record.auth != "unknown":
            if record.auth == "expired":
                return refuse("80200003")
            if record.auth != "valid" or app_id != peer.app_id:
                # A token of another app (or an app id that is not ours) is refused like a bad token.
                return refuse("80200001")
        token = record.token
        script = take_rule(self.scripts.get(token or ""), None)
        if script is not None:
            if script.delay:
                await asyncio.sleep(script.delay)
            if script.action:
                return Reply(0, action=script.action)
            return scripted(script, token or "")
        return check_request(record.body) or answer(200, "80000000", "Success")

    def _log(self, record: RecordedRequest, raw: bytes) -> None:
        message: Any
        if isinstance(record.body, dict) and isinstance(record.body.get("message"), dict):
            message = {k: v for k, v in record.body["message"].items() if k != "token"}
        else:
            message = raw[:500].decode("utf-8", "replace")
        self.peer.log_line({"endpoint": "messages:send", "app_id": record.app_id, "token": mask_token(record.token),
                            "auth": record.auth, "status": record.status, "code": record.code,
                            "protocol": record.http_version, "message": message})
