"""Overhead of tests/reliability/faultproxy.py: small request/response messages, direct vs through the proxy.

An echo server and the load client run in their own processes; only the proxy runs here (in its thread),
so the comparison is the proxy's cost, not three event loops sharing one. Each of `--connections` clients
sends `--messages` messages of `--size` bytes, one at a time, waiting for the echo (like a driver's
request/response), and the run reports messages/s and round-trip percentiles.

    python benchmarks/faultproxy_overhead.py [--connections 8] [--messages 3000] [--size 120]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pushsvc.dev.servers import free_port, wait_for_port
from tests.reliability.faultproxy import FaultProxy

ECHO = """
import asyncio, sys
async def echo(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()
async def main():
    server = await asyncio.start_server(echo, "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()
asyncio.run(main())
"""

CLIENT = """
import asyncio, json, sys, time
port, connections, messages, size = map(int, sys.argv[1:5])
async def one(rtts):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = b"m" * size
    for _ in range(messages):
        started = time.perf_counter()
        writer.write(payload)
        await writer.drain()
        await reader.readexactly(size)
        rtts.append(time.perf_counter() - started)
    writer.close()
async def main():
    rtts = []
    started = time.perf_counter()
    await asyncio.gather(*(one(rtts) for _ in range(connections)))
    elapsed = time.perf_counter() - started
    rtts.sort()
    print(json.dumps({"per_second": len(rtts) / elapsed, "p50_us": rtts[len(rtts) // 2] * 1e6,
                      "p99_us": rtts[int(len(rtts) * 0.99)] * 1e6}))
asyncio.run(main())
"""


def run_client(port: int, connections: int, messages: int, size: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CLIENT, str(port), str(connections), str(messages), str(size)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


async def main(args: argparse.Namespace) -> None:
    port = free_port()
    echo = await asyncio.create_subprocess_exec(sys.executable, "-c", ECHO, str(port))
    try:
        await asyncio.to_thread(wait_for_port, port, 10)
        async with FaultProxy("127.0.0.1", port, name="bench") as proxy:
            for label, target in (("direct", port), ("proxied", proxy.port), ("direct", port), ("proxied", proxy.port)):
                result = await asyncio.to_thread(run_client, target, args.connections, args.messages, args.size)
                print(
                    f"{label:8} {result['per_second']:8.0f} msg/s  "
                    f"rtt p50 {result['p50_us']:6.0f} us  p99 {result['p99_us']:6.0f} us"
                )
            print(f"proxy: {proxy.stats.summary()}")
    finally:
        echo.terminate()
        await echo.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--size", type=int, default=120)
    asyncio.run(main(parser.parse_args()))
