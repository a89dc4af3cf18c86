"""`pushsvc dev` checks every port before it starts anything: a busy one is one line, exit code 2, nothing left."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pushsvc.dev.servers import free_ports, port_unavailable
from pushsvc.dev.stack import EXIT_PORT_BUSY, SIMULATORS, DevPorts

# Runs `pushsvc dev` as a child with this process as the child subreaper (Linux prctl), so anything the child
# started and left behind is re-parented here and shows up as our child after it exits; reports and kills those.
_WATCH = r"""
import ctypes, json, os, signal, subprocess, sys, tempfile, time
PR_SET_CHILD_SUBREAPER = 36
ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
# Files, not pipes: a process left behind holding a pipe open would keep us reading until it exits.
with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
    started = time.monotonic()
    child = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=out, stderr=err, text=True)
    try:
        code = child.wait(30)
    except subprocess.TimeoutExpired:
        child.kill()
        code = child.wait()
    elapsed = time.monotonic() - started
    out.seek(0)
    err.seek(0)
    stdout, stderr = out.read(), err.read()
left = []
for entry in os.listdir("/proc"):
    try:
        with open(f"/proc/{entry}/stat") as stat:
            ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid():
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                left.append(cmdline.read().replace(b"\0", b" ").decode())
            os.kill(int(entry), signal.SIGKILL)
    except (OSError, ValueError, IndexError):
        continue
print(json.dumps({"code": code, "stdout": stdout, "stderr": stderr, "elapsed": elapsed, "left": left}))
"""


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something listens on, as another program holding 8080 would."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_port_something_listens_on_is_unavailable(busy_port: int) -> None:
    assert port_unavailable(busy_port) == "in use"
    [free] = free_ports(1)
    assert port_unavailable(free) is None


def test_free_ports_are_distinct_and_skip_the_excluded() -> None:
    [first] = free_ports(1)
    ports = free_ports(20, exclude={first})
    assert len(set(ports)) == 20 and first not in ports


def test_the_problem_names_the_port_what_wanted_it_and_how_to_choose_another(busy_port: int) -> None:
    ports = DevPorts.choose(busy_port)
    assert sorted(ports.simulators) == sorted(SIMULATORS)
    assert busy_port not in (ports.kafka, ports.mongodb, *ports.simulators.values())
    assert ports.problem() == (
        f"pushsvc dev: port {busy_port} for the HTTP API and /metrics is in use; choose another: "
        f"make dev HTTP_PORT={busy_port + 1} (or pushsvc dev --http-port {busy_port + 1})"
    )


def test_a_busy_simulator_port_is_named_too(busy_port: int) -> None:
    [http] = free_ports(1, exclude={busy_port})
    ports = DevPorts(http, *free_ports(2, exclude={busy_port, http}), simulators={"apns": busy_port})
    problem = ports.problem()
    assert problem is not None and f"port {busy_port} for the APNs simulator is in use" in problem


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="watches for left-over processes through /proc")
def test_pushsvc_dev_on_a_busy_http_port_says_so_in_one_line_and_starts_nothing(
    busy_port: int, tmp_path: Path
) -> None:
    work = tmp_path / "dev"
    command = [sys.executable, "-m", "pushsvc.cli", "dev", "--dir", str(work), "--http-port", str(busy_port)]
    started = time.monotonic()
    watch = subprocess.run([sys.executable, "-c", _WATCH, *command], capture_output=True, text=True, timeout=60)
    assert watch.returncode == 0, watch.stderr
    report = json.loads(watch.stdout)
    assert report["code"] == EXIT_PORT_BUSY
    lines = report["stderr"].splitlines()
    assert len(lines) == 1, report["stderr"]
    assert f"port {busy_port} " in lines[0] and f"HTTP_PORT={busy_port + 1}" in lines[0]
    assert "Traceback" not in report["stderr"] and report["stdout"] == ""  # no "stack is up" either
    assert report["elapsed"] < 10, report  # interpreter start and imports; nothing waited for
    assert report["left"] == []
    assert not work.exists()  # nothing written: it stopped before the work directory
    assert time.monotonic() - started < 30
