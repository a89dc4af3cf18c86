"""Raw YAML/environment values into the settings dataclasses, every problem naming its dotted key."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

import yaml

from pushsvc.config.errors import ConfigError, _Problems


class EnvText(str):
    """A setting's value as an environment variable gave it: converted by the type of the setting it sets
    (`_from_env`), not read as YAML, so `KEY_ID=0123` stays the string "0123" (YAML 1.1 would read the
    octal 83) and `1.10` stays "1.10". `name` is the variable, for errors (which never echo the value:
    it may be a secret)."""

    name: str

    def __new__(cls, value: str, name: str) -> EnvText:
        text = super().__new__(cls, value)
        text.name = name
        return text


def _from_env(tp: Any, text: EnvText, key: str) -> Any:
    """`text` as the type `tp` of setting `key`; anything else (lists, mappings, booleans) is YAML."""
    where = f"{key} (from {text.name})"
    if tp is str or typing.get_origin(tp) is Literal:
        return str(text)
    if tp in (int, float):
        try:
            return tp(text.strip())
        except ValueError:
            raise ConfigError(f"{where}: expected a {tp.__name__}") from None
    try:
        return yaml.safe_load(str(text))
    except yaml.YAMLError:
        raise ConfigError(f"{where}: not valid YAML") from None


def build(cls: Any, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or '<root>'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    problems = _Problems()
    for name in sorted(set(data) - set(fields)):
        problems.found.append(f"{_join(path, name)}: unknown setting (known: {', '.join(sorted(fields))})")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key = _join(path, name)
        with problems.check():
            if name not in data or data[name] is None:
                has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
                if not has_default:
                    raise ConfigError(f"{key}: required")
                continue
            values[name] = _convert(hints[name], data[name], key)
    problems.raise_any()
    return cls(**values)


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(options[0], value, key)
    if isinstance(value, EnvText):
        try:
            return _convert(tp, _from_env(tp, value, key), key)
        except ConfigError as exc:
            # The setting's own checks, without the value (an environment variable may carry a secret).
            cut = [problem.split(", got ")[0] for problem in exc.problems]
            raise ConfigError(*(p if value.name in p else f"{p} (from {value.name})" for p in cut)) from None
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: must be one of {', '.join(map(str, allowed))}, got {value!r}")
        return value
    if origin is dict:
        return _convert_mapping(tp, value, key)
    if origin is list:
        return _convert_list(tp, value, key)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp in (int, float):
        return _convert_number(tp, value, key)
    if tp is str:
        if not isinstance(value, str | int) or isinstance(value, bool) or str(value).strip() == "":
            raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported setting type {tp!r}")  # pragma: no cover - programming error


def _convert_mapping(tp: Any, value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping")
    _, value_type = typing.get_args(tp)
    problems, converted = _Problems(), {}
    for k, v in value.items():
        with problems.check():
            converted[str(k)] = _convert(value_type, v if v is not None else {}, f"{key}.{k}")
    problems.raise_any()
    return converted


def _convert_list(tp: Any, value: Any, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list")
    (item_type,) = typing.get_args(tp)
    problems, items = _Problems(), []
    for i, v in enumerate(value):
        with problems.check():
            items.append(_convert(item_type, v, f"{key}[{i}]"))
    problems.raise_any()
    return items


def _convert_number(tp: Any, value: Any, key: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or (tp is int and not isinstance(value, int)):
        raise ConfigError(f"{key}: expected a {tp.__name__}, got {value!r}")
    if value < 0:
        raise ConfigError(f"{key}: must not be negative, got {value!r}")
    return tp(value)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
