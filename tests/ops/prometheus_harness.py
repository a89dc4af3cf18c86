"""A throwaway Prometheus server for tests: scrape given targets, evaluate rule files, query the API.

Uses the ``prometheus`` binary (Debian package ``prometheus``) on a free loopback port with a temporary
storage directory; nothing is left running after ``stop()`` (or leaving the ``with`` block)::

    with PrometheusHarness(tmp_path, targets=["127.0.0.1:8080"], rule_files=[alerts]) as prom:
        prom.wait_for('up{job="pushsvc"} == 1')
        rows = prom.query("sum(rate(pushsvc_deliveries_total[1m]))")
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml


class PrometheusError(RuntimeError):
    """Prometheus did not start, or answered an API call with an error."""


def prometheus_binary() -> str | None:
    """Path of the prometheus server binary, or None (env PROMETHEUS_BIN overrides the PATH lookup)."""
    return os.environ.get("PROMETHEUS_BIN") or shutil.which("prometheus")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrometheusHarness:
    """One Prometheus process scraping ``targets`` ("host:port") as job ``job``."""

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[str] = (),
        *,
        job: str = "pushsvc",
        metrics_path: str = "/metrics",
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        rule_files: Sequence[Path] = (),
        scrape_self: bool = False,
        binary: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.workdir = Path(workdir)
        self.targets = list(targets)
        self.job = job
        self.metrics_path = metrics_path
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.rule_files = [Path(p).resolve() for p in rule_files]
        self.scrape_self = scrape_self
        self.binary = binary or prometheus_binary()
        self.startup_timeout = startup_timeout
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path = self.workdir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- lifecycle -----------------------------------------------------------------------------------

    def _write_config(self) -> Path:
        scrape_configs: list[dict[str, Any]] = []
        if self.targets:
            scrape_configs.append(
                {
                    "job_name": self.job,
                    "metrics_path": self.metrics_path,
                    "static_configs": [{"targets": self.targets}],
                }
            )
        if self.scrape_self:
            scrape_configs.append(
                {
                    "job_name": "prometheus",
                    "static_configs": [{"targets": [f"127.0.0.1:{self.port}"]}],
                }
            )
        config = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
            },
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": scrape_configs,
        }
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def start(self) -> PrometheusHarness:
        if self.binary is None:
            raise PrometheusError("prometheus binary not found (apt-get install prometheus)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        last_error = ""
        for _ in range(3):  # a free port can be taken between the probe and the bind: retry
            self.port = free_port()
            config = self._write_config()
            storage = self.workdir / f"data-{self.port}"
            with self._log_path.open("ab") as log:
                self._process = subprocess.Popen(
                    [
                        self.binary,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={storage}",
                        f"--web.listen-address=127.0.0.1:{self.port}",
                        "--storage.tsdb.retention.time=1h",
                        "--log.level=warn",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            try:
                self._wait_ready()
                return self
            except PrometheusError as exc:
                last_error = str(exc)
                self.stop()
                if "address already in use" not in last_error:
                    break
        raise PrometheusError(last_error)

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self._process.returncode}: {self.log_tail()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.1)
        raise PrometheusError(f"prometheus not ready after {self.startup_timeout}s: {self.log_tail()}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def __enter__(self) -> PrometheusHarness:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self._log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # --- HTTP API ------------------------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; returns ``data`` or raises PrometheusError with Prometheus' message."""
        query = urllib.parse.urlencode(params)
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                body = json.loads(exc.read())
            except ValueError:
                raise PrometheusError(f"{url}: HTTP {exc.code}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query; a list of {"metric": {...}, "value": [ts, "v"]} (scalars come back as one row)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = str(at)
        data = self.api("query", **params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def wait_for(
        self,
        expr: str,
        predicate: Callable[[list[dict[str, Any]]], bool] = bool,
        timeout: float = 30.0,
        interval: float = 0.5,
    ) -> list[dict[str, Any]]:
        """Query ``expr`` until ``predicate(result)`` holds (default: any row); the last result."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if predicate(result):
                return result
            if time.monotonic() > deadline:
                raise PrometheusError(f"timed out waiting for {expr!r}; last result {result!r}")
            time.sleep(interval)

    def active_targets(self) -> list[dict[str, Any]]:
        return self.api("targets")["activeTargets"]

    def rule_groups(self) -> list[dict[str, Any]]:
        return self.api("rules")["groups"]
