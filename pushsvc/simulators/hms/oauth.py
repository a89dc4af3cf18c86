"""Push Kit's OAuth 2 token endpoint (Account Kit's ``/oauth2/v3/token``): client credentials in, a bearer token
out, living ``token_lifetime`` seconds on the peer's clock; and the check of a bearer token presented later."""

from __future__ import annotations

import asyncio
import base64
import secrets
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pushsvc.logs import mask_token
from pushsvc.simulators.hms.answers import Script, to_json
from pushsvc.simulators.http_server import Reply
from pushsvc.simulators.rules import take_rule

if TYPE_CHECKING:
    from pushsvc.simulators.hms.peer import HmsPeer

TOKEN_PATH = "/oauth2/v3/token"
DEFAULT_TOKEN_LIFETIME = 3600  # Account Kit's expires_in


@dataclass
class TokenRequest:
    """One request to the token endpoint (the client secret itself is not kept)."""

    form: dict[str, str]  # client_secret removed
    secret_matched: bool
    time: float
    status: int | None = None
    granted: str | None = None  # the access token issued, None if refused


@dataclass
class Issued:
    client_id: str
    expires_at: float  # on the peer's clock


class TokenEndpoint:
    """The tokens asked for and issued; the peer's settings (client, clock, lifetime) are read per request."""

    def __init__(self, peer: HmsPeer) -> None:
        self.peer = peer
        self.requests: list[TokenRequest] = []
        self.script: Script | None = None
        self.issued: dict[str, Issued] = {}

    async def handle(self, body: bytes) -> Reply:
        peer = self.peer
        form = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        secret = form.pop("client_secret", None)
        record = TokenRequest(form, secret == peer.client_secret, peer.clock())
        self.requests.append(record)
        reply = await self._reply(form, record)
        record.status = reply.status
        if peer.log_messages:
            peer.log_line({"endpoint": "token", "client_id": form.get("client_id"), "status": reply.status,
                           "granted": mask_token(record.granted)})
        return reply

    def auth(self, bearer: str) -> str:
        """What a bearer token presented to messages:send is: "valid", "expired", "unknown" or "missing"."""
        if not bearer:
            return "missing"
        issued = self.issued.get(bearer)
        if issued is None:
            return "unknown"
        return "valid" if self.peer.clock() < issued.expires_at else "expired"

    async def _reply(self, form: dict[str, str], record: TokenRequest) -> Reply:
        peer = self.peer
        script = take_rule(self.script, None)
        if script is not None:
            if script.delay:
                await asyncio.sleep(script.delay)
            if script.action:
                return Reply(0, action=script.action)
            if script.status:
                headers = [("retry-after", script.retry_after)] if script.retry_after is not None else []
                error = {"error_description": script.msg or f"scripted HTTP {script.status}"}
                return Reply(script.status, to_json(error), [("content-type", "application/json"), *headers])
        if form.get("grant_type") != "client_credentials" or not form.get("client_id"):
            return Reply(400, to_json({"error": 1102, "error_description": "invalid request"}))
        client_ok = form["client_id"] == peer.client_id and record.secret_matched
        if not (client_ok or peer.accept_any_auth):
            # What Account Kit says for a wrong client id or secret.
            return Reply(400, to_json({"error": 1101, "sub_error": 20203, "error_description": "invalid client"}))
        # Base64 like Huawei's tokens ("+", "/" and "=" included), so headers and log masking meet them.
        access_token = base64.b64encode(secrets.token_bytes(48)).decode()
        lifetime = peer.token_lifetime
        self.issued[access_token] = Issued(form["client_id"], peer.clock() + lifetime)
        record.granted = access_token
        answer = {"access_token": access_token, "expires_in": lifetime, "token_type": "Bearer"}
        return Reply(200, to_json(answer), [("content-type", "application/json;charset=UTF-8")])
