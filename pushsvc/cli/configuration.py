"""The settings a command runs with: --config, else $PUSHSVC_CONFIG, with PUSHSVC_* overrides; a missing or
broken configuration ends the command with one line (several problems: one line each) and exit code 2."""

from __future__ import annotations

import os
import sys

from pushsvc.config import ENV_PREFIX, ConfigError, Settings, load_settings

CONFIG_VARIABLE = "PUSHSVC_CONFIG"


def _config_path(given: str | None) -> str | None:
    # An empty PUSHSVC_CONFIG (a template that left it blank) means unset, not the current directory.
    return given or os.environ.get(CONFIG_VARIABLE) or None


def _has_env_settings() -> bool:
    """Whether the environment sets any setting (PUSHSVC_A__B=value; empty values set nothing)."""
    return any(name.startswith(ENV_PREFIX) and name != CONFIG_VARIABLE and value for name, value in os.environ.items())


def load(path: str | None) -> Settings:
    """The settings from `path` (--config) or $PUSHSVC_CONFIG and the environment; SystemExit(2) if unusable."""
    path = _config_path(path)
    if path is None and not _has_env_settings():
        # Without a file or a single PUSHSVC_* setting the first problem found would be "kafka: required",
        # which tells nothing of what is missing.
        print(f"pushsvc: no configuration: pass --config or set {CONFIG_VARIABLE}", file=sys.stderr)
        raise SystemExit(2)
    try:
        return load_settings(path)
    except ConfigError as exc:
        # The form docs/runbook.md tells on-call to look for; several problems: all of them, one line each.
        if len(exc.problems) == 1:
            print(f"pushsvc: configuration error: {exc.problems[0]}", file=sys.stderr)
        else:
            print(f"pushsvc: {len(exc.problems)} configuration error(s):", file=sys.stderr)
            for problem in exc.problems:
                print(f"  {problem}", file=sys.stderr)
        raise SystemExit(2) from None


def setting_source(key: str, config: str | None) -> str:
    """Where setting `key` came from, for a message that says what to check: the environment variable that
    overrides it, else the config file."""
    variable = ENV_PREFIX + key.upper().replace(".", "__")
    if os.environ.get(variable):
        return f"{key} from {variable}"
    path = _config_path(config)
    return f"{key} in {path}" if path else key
