"""The CLI's manners: a dependency that is down, a missing or broken configuration, each is one line on stderr
saying what failed and what to check, exit code 2, within seconds; and every option's default in the help.

The commands run as the real `pushsvc` executable against a port nothing listens on (Kafka, MongoDB) or a
socket that accepts and never answers, so they fail the way they would in a terminal.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pushsvc.cli import build_parser, configuration, main
from pushsvc.cli.failures import CLI_NETWORK_TIMEOUT_MS
from tests.unit.credential_files import apns_key

# Interpreter start and imports on a busy shared machine, on top of what the command itself may wait.
STARTUP_SLACK_SECONDS = 8.0
# A client that failed fast (connection refused): nothing to wait for but the interpreter.
FAST_BOUND = STARTUP_SLACK_SECONDS
# A client that waited for its bound (MongoDB server selection, a silent broker): the CLI's bound, not the
# clients' defaults (30 s or 40 s).
WAITED_BOUND = CLI_NETWORK_TIMEOUT_MS / 1000 + STARTUP_SLACK_SECONDS
MONGO_PASSWORD = "hunter2-not-for-logs"


def closed_port() -> int:
    """A port nothing listens on: bound once to learn a free one, then released (and never listened on)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel completes them from the backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def write_config(tmp_path: Path, kafka_port: int, mongo_port: int) -> Path:
    config = {
        "kafka": {"bootstrap_servers": f"127.0.0.1:{kafka_port}"},
        "mongodb": {"uri": f"mongodb://pushsvc:{MONGO_PASSWORD}@127.0.0.1:{mongo_port}/?authSource=admin"},
        "apps": {"demo": {"apns": {"topic": "com.example.demo", "key_file": str(apns_key(tmp_path / "key.p8")),
                                   "key_id": "KEYID12345", "team_id": "TEAMID1234"}}},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path, closed_port(), closed_port())


def pushsvc_command() -> list[str]:
    """The installed `pushsvc` script beside this interpreter (what a user runs); `-m pushsvc.cli` without one."""
    script = shutil.which("pushsvc", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "pushsvc.cli"]


def run(*argv: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], float]:
    """The command with no PUSHSVC_* settings from this environment (only `env`'s); its result and duration."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("PUSHSVC_")}
    started = time.monotonic()
    result = subprocess.run([*pushsvc_command(), *argv], env={**clean, **(env or {})}, capture_output=True,
                            text=True, timeout=60)
    return result, time.monotonic() - started


def one_line_failure(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of an expected failure (exit 2, no traceback, nothing on stdout)."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == "", result.stdout
    return lines[0]


def test_send_with_the_broker_down(config: Path) -> None:
    port = yaml.safe_load(config.read_text())["kafka"]["bootstrap_servers"]
    result, elapsed = run("send", "--config", str(config), "--app", "demo", "--user", "alice")
    line = one_line_failure(result)
    assert line == (f"pushsvc send: cannot reach Kafka at {port} (kafka.bootstrap_servers in {config}): "
                    "connection refused; is the broker running?")
    assert elapsed < FAST_BOUND


def test_topics_create_with_the_broker_down(config: Path) -> None:
    result, elapsed = run("topics", "create", "--config", str(config))
    line = one_line_failure(result)
    assert line.startswith("pushsvc topics create: cannot reach Kafka at 127.0.0.1:"), line
    assert "connection refused" in line
    assert elapsed < FAST_BOUND


def test_send_to_a_broker_that_never_answers_gives_up_within_the_bound(tmp_path: Path, silent_port: int) -> None:
    config = write_config(tmp_path, silent_port, closed_port())
    result, elapsed = run("send", "--config", str(config), "--app", "demo", "--user", "alice")
    line = one_line_failure(result)
    assert f"cannot reach Kafka at 127.0.0.1:{silent_port}" in line and "no answer within 5 s" in line, line
    assert CLI_NETWORK_TIMEOUT_MS / 1000 <= elapsed < WAITED_BOUND


def test_topics_create_against_a_broker_that_never_answers_gives_up_within_the_bound(tmp_path: Path,
                                                                                      silent_port: int) -> None:
    # The admin client waits the CLI's request timeout too, not aiokafka's 40 s (cut to the 15 s deadline).
    config = write_config(tmp_path, silent_port, closed_port())
    result, elapsed = run("topics", "create", "--config", str(config))
    line = one_line_failure(result)
    assert f"cannot reach Kafka at 127.0.0.1:{silent_port}" in line and "no answer within 5 s" in line, line
    assert CLI_NETWORK_TIMEOUT_MS / 1000 <= elapsed < WAITED_BOUND


def test_devices_import_with_mongodb_down(config: Path, tmp_path: Path) -> None:
    rows = tmp_path / "devices.jsonl"
    rows.write_text('{"app": "demo", "token": "' + "ab" * 32 + '", "platform": "ios"}\n')
    port = yaml.safe_load(config.read_text())["mongodb"]["uri"].split("@")[1].split("/")[0]
    result, elapsed = run("devices", "import", str(rows), "--config", str(config))
    line = one_line_failure(result)
    assert line == (f"pushsvc devices import: cannot reach MongoDB at mongodb://***@{port} (mongodb.uri in {config}): "
                    "connection refused; is MongoDB running?")
    assert MONGO_PASSWORD not in result.stderr
    assert elapsed < WAITED_BOUND  # server selection waits its whole timeout even when refused


def test_the_message_names_the_environment_variable_that_set_the_address(config: Path) -> None:
    port = closed_port()
    result, _ = run("send", "--config", str(config), "--app", "demo", "--user", "alice",
                    env={"PUSHSVC_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"})
    line = one_line_failure(result)
    assert f"Kafka at 127.0.0.1:{port} (kafka.bootstrap_servers from PUSHSVC_KAFKA__BOOTSTRAP_SERVERS)" in line


@pytest.mark.parametrize("argv", [["send", "--app", "demo", "--user", "alice"], ["check-config"],
                                  ["topics", "create"], ["devices", "import", "devices.csv"]])
def test_no_configuration(argv: list[str]) -> None:
    result, _ = run(*argv)
    assert one_line_failure(result) == "pushsvc: no configuration: pass --config or set PUSHSVC_CONFIG"


def test_pushsvc_config_is_honoured(config: Path) -> None:
    result, _ = run("check-config", env={"PUSHSVC_CONFIG": str(config)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: 1 app(s): demo")


def test_a_config_file_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    result, _ = run("send", "--config", str(missing), "--app", "demo", "--user", "alice")
    assert one_line_failure(result) == f"pushsvc: configuration error: config file not found: {missing}"


def test_a_config_file_that_does_not_parse(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("kafka: [1\nmongodb: 2\n")
    result, _ = run("check-config", "--config", str(broken))
    line = one_line_failure(result)
    assert line.startswith(f"pushsvc: configuration error: config file {broken} is not valid YAML: "), line
    assert "(line 2, column 8)" in line


def test_a_validation_error_names_its_key_on_one_line(config: Path) -> None:
    settings = yaml.safe_load(config.read_text())
    del settings["apps"]["demo"]["apns"]["key_id"]
    config.write_text(yaml.safe_dump(settings))
    result, _ = run("check-config", "--config", str(config))
    line = one_line_failure(result)
    assert line.startswith("pushsvc: configuration error: apps.demo.apns.key_id: required"), line


def test_an_unexpected_error_keeps_its_traceback(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Only expected failures are cut to one line: a bug must show where it is.
    def broken(*_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(configuration, "load_settings", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["check-config", "--config", str(config)])


def subcommand_parsers(parser: argparse.ArgumentParser,
                       prefix: str = "") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield f"{prefix}{name}", child
                yield from subcommand_parsers(child, f"{prefix}{name} ")


def test_every_subcommand_help_shows_the_defaults() -> None:
    parsers = dict(subcommand_parsers(build_parser()))
    assert {"send", "topics create", "devices import", "dev", "serve", "check-config", "hash-key"} <= set(parsers)
    for name, parser in parsers.items():
        help_text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
                continue
            assert f"(default: {action.default})" in help_text, (name, action.dest, help_text)


def test_help_from_the_command_line_shows_defaults() -> None:
    result, _ = run("topics", "create", "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "(default: 12)" in text and "(default: 3)" in text and "(default: 14)" in text
    send, _ = run("send", "--help")
    assert "(default: Hello from pushsvc)" in " ".join(send.stdout.split())


def test_an_operation_mongodb_refuses_is_named_by_its_code_never_by_the_document() -> None:
    """A duplicate key's message quotes the key (a full device token) and a bulk write's details every failed
    operation: the one line names the code only, and the URI's password is masked."""
    from pymongo.errors import BulkWriteError, OperationFailure

    from pushsvc.cli.failures import mongo_failure
    from pushsvc.config import MongoSettings

    token = "ab" * 32
    refused = BulkWriteError({"nInserted": 0, "writeErrors": [{
        "index": 0, "code": 11000, "errmsg": f'E11000 duplicate key error dup key: {{ token: "{token}" }}',
        "op": {"app": "demo", "token": token},
    }]})
    mongo = MongoSettings(uri="mongodb://importer:s3cret@db.internal:27017/push")
    line = mongo_failure(refused, mongo, "mongodb.uri in c.yaml")
    where = "MongoDB at mongodb://***@db.internal:27017 (mongodb.uri in c.yaml)"
    assert line == f"{where} refused the operation: code 11000"
    bad = OperationFailure("unknown operator: $oops", 2, {"codeName": "BadValue", "errmsg": "unknown operator"})
    assert mongo_failure(bad, mongo, "x").endswith("refused the operation: code 2 (BadValue)")
