"""Reading settings: the YAML file, then PUSHSVC_* environment overrides, then conversion and checks."""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any

import yaml

from pushsvc.config.checks import check_semantics
from pushsvc.config.convert import EnvText, build
from pushsvc.config.errors import ENV_PREFIX, ConfigError
from pushsvc.config.settings import Settings


def load_settings(
    path: str | os.PathLike[str] | None, environ: typing.Mapping[str, str] | None = None
) -> Settings:
    """Read ``path`` (YAML), apply ``PUSHSVC_A__B=value`` overrides, validate and return Settings."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_config_file(Path(path))
    _apply_env_overrides(raw, environ)
    settings = build(Settings, raw, "")
    check_semantics(settings)
    return settings


def _read_config_file(file: Path) -> dict[str, Any]:
    """The file's top-level mapping; any problem reading it is one line naming the file (an operator reads it
    in `kubectl logs` or a terminal: PyYAML's own message spans five lines and quotes the text around)."""
    if file.is_dir():
        raise ConfigError(f"config file {file} is a directory, not a file")
    if not file.is_file():
        raise ConfigError(f"config file not found: {file}")
    try:
        loaded = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except OSError as exc:  # present but unreadable: permissions
        raise ConfigError(f"config file {file} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {file} is not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {file} is not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {file} must hold a mapping at top level")
    return loaded


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What PyYAML found wrong and where (1-based line and column), on one line."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        return exc.problem if mark is None else f"{exc.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split("\n")[0].split())  # ReaderError and the like: their first line says it


def _apply_env_overrides(raw: dict[str, Any], environ: typing.Mapping[str, str]) -> None:
    # PUSHSVC_KAFKA__BOOTSTRAP_SERVERS=host:9092 -> raw["kafka"]["bootstrap_servers"]; each value is converted
    # by the type of the setting it lands on (EnvText), once the settings' types are known.
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == "PUSHSVC_CONFIG":
            continue
        keys = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        node = raw
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"environment {name}: {'.'.join(keys)} crosses a non-mapping value")
            node = child
        node[keys[-1]] = EnvText(value, name) if value else None
