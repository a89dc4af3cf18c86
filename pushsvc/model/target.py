"""`target`: who a request is for — tokens, users, or a segment of tagged devices."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pushsvc.model.errors import RequestError
from pushsvc.model.fields import reject_unknown, require_mapping, string_list

TARGET_KINDS = ("tokens", "users", "segment")  # exactly one of them
SEGMENT_FIELDS = ("tags_any", "tags_all")
MAX_TOKENS_PER_REQUEST = 1000
MAX_TOKEN_LENGTH = 4096
MAX_USERS_PER_REQUEST = 10_000
MAX_USER_ID_LENGTH = 256
MAX_TAGS = 50
MAX_TAG_LENGTH = 128


@dataclass(frozen=True)
class Segment:
    tags_any: tuple[str, ...] = ()
    tags_all: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    tokens: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    segment: Segment | None = None

    @property
    def kind(self) -> str:
        return "tokens" if self.tokens else "users" if self.users else "segment"


def parse_target(obj: Any) -> Target:
    target = require_mapping(obj, "target")
    kinds = [k for k in TARGET_KINDS if k in target]
    reject_unknown(target, "target", TARGET_KINDS)
    if len(kinds) != 1:
        raise RequestError("target", f"must hold exactly one of {', '.join(TARGET_KINDS)}")
    kind = kinds[0]
    if kind == "tokens":
        return Target(
            tokens=string_list(target["tokens"], "target.tokens", MAX_TOKENS_PER_REQUEST, MAX_TOKEN_LENGTH)
        )
    if kind == "users":
        return Target(
            users=string_list(target["users"], "target.users", MAX_USERS_PER_REQUEST, MAX_USER_ID_LENGTH)
        )
    return Target(segment=parse_segment(target["segment"], "target.segment"))


def parse_segment(obj: Any, path: str) -> Segment:
    segment = require_mapping(obj, path)
    reject_unknown(segment, path, SEGMENT_FIELDS)
    tags_any, tags_all = (
        string_list(segment.get(key, []), f"{path}.{key}", MAX_TAGS, MAX_TAG_LENGTH, allow_empty=True)
        for key in SEGMENT_FIELDS
    )
    if not tags_any and not tags_all:
        raise RequestError(path, "needs tags_any or tags_all (an empty segment would target everyone)")
    return Segment(tags_any=tags_any, tags_all=tags_all)
