"""Checks of single JSON values that every part of the contract shares: objects with known keys, strings,
string lists, Unicode, and the dotted path an error names."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from pushsvc.model.errors import RequestError

MAX_ID_LENGTH = 128  # a request id, an activity id
MAX_FIELD_NAME_IN_ERRORS = 64  # an unknown key of a megabyte is named by its start
# JSON numbers: JSON has no NaN/Infinity, and integers must round-trip through orjson (signed or unsigned
# 64 bits), which encodes the stored request and the FCM message.
MIN_DATA_INT = -(2**63)
MAX_DATA_INT = 2**64 - 1
NOT_UNICODE = "not valid Unicode (lone surrogate)"


def field_name(key: Any) -> str:
    """A top-level input key as the `field` of an error: an empty key names the body, a huge one is cut short."""
    key = str(key)
    if not key:
        return "body"
    return key if len(key) <= MAX_FIELD_NAME_IN_ERRORS else key[:MAX_FIELD_NAME_IN_ERRORS] + "..."


def require_mapping(obj: Any, path: str) -> Mapping[str, Any]:
    if type(obj) is dict:  # what JSON decodes to: no abstract-class check (~0.3 us, several per request)
        return obj
    if obj is None:
        raise RequestError(path, "required")
    if not isinstance(obj, Mapping):
        raise RequestError(path, f"must be an object, got {json_type(obj)}")
    return obj


def reject_unknown(obj: Mapping[str, Any], path: str, allowed: Collection[str]) -> None:
    for key in obj:
        if key not in allowed:
            raise RequestError(child_path(path, key), f"unknown field (allowed: {', '.join(sorted(allowed))})")


def child_path(path: str, key: Any) -> str:
    """The dotted path of `key` under `path`; an empty key names its parent, a huge one is cut short."""
    key = str(key)
    if not key:
        return path or "request"
    if len(key) > MAX_FIELD_NAME_IN_ERRORS:
        key = key[:MAX_FIELD_NAME_IN_ERRORS] + "..."
    return f"{path}.{key}" if path else key


def required_string(value: Any, path: str, max_length: int | None) -> str:
    if value is None:
        raise RequestError(path, "required non-empty string")
    if not isinstance(value, str):
        raise RequestError(path, f"must be a string, got {json_type(value)}")
    if not value.strip():
        raise RequestError(path, "must not be empty or blank")
    if max_length is not None and len(value) > max_length:
        raise RequestError(path, f"longer than {max_length} characters")
    if not encodable(value):
        raise RequestError(path, NOT_UNICODE)
    return value


def optional_string(value: Any, path: str, max_length: int | None) -> str | None:
    return None if value is None else required_string(value, path, max_length)


def encodable(value: str) -> bool:
    """False for a str with lone surrogates: JSON bytes cannot carry one, but a Python caller can, and neither
    the providers' UTF-8 payloads nor MongoDB's BSON can encode it."""
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def string_list(
    value: Any, path: str, max_items: int, max_length: int, allow_empty: bool = False
) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise RequestError(path, f"must be a list, got {json_type(value)}")
    if not value and not allow_empty:
        raise RequestError(path, "must not be empty")
    if len(value) > max_items:
        raise RequestError(path, f"at most {max_items} items")
    items = tuple(required_string(v, f"{path}[{i}]", max_length) for i, v in enumerate(value))
    return tuple(dict.fromkeys(items))  # drop duplicates, keep order: one device is sent one copy


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "number",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)
