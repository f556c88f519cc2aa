"""
Cross-node fan-out over a cluster adapter: N C{twistd sockudo} nodes on
loopback joined by Redis (C{--adapter redis}), a Redis Cluster
(C{--adapter redis-cluster}, seeds in C{--cluster-nodes}) or NATS
(C{--adapter nats}, C{--nats-server}), C{--subscribers} WebSocket clients
spread round-robin over the nodes on one channel (or only over the nodes
that do not publish, with C{--subscribers-on others}), and signed REST
triggers sent open-loop at C{--rate}/s to one node (or round-robin with
C{--publish-to all}). Prints deliveries/s, loss, and end-to-end latency
p50/p99/max (trigger sent -> frame parsed by a client), measured with
CLOCK_MONOTONIC, which every process of the machine shares.

Usage (Redis on 127.0.0.1:6379; run from the repository root):

    python bench/cluster_fanout.py --nodes 3 --subscribers 1000 --rate 50 --duration 10

The clients are Node C{ws} clients (C{bench/cluster_fanout_clients.js},
C{npm ci --prefix bench} once) in C{--client-procs} processes. Everything runs on loopback and
stops by itself (bounded connection, load and drain phases). The nodes use a
fresh key prefix and their keys are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.daemons import (  # noqa: E402
    bench_config,
    delete_redis_keys,
    free_port,
    redis_config,
    wait_until_up,
)
from sockudo_tw.pusher.signing import sign_api_query  # noqa: E402

APP_ID, APP_KEY, APP_SECRET = "app-id", "app-key", "app-secret"
CHANNEL = "bench-cluster"
EVENT = "bench-event"


def node_config(port: int, prefix: str, args: argparse.Namespace) -> dict[str, Any]:
    config = bench_config()
    config["port"] = port
    if args.adapter == "redis":
        config["adapter"] = redis_config(prefix, args.redis_url)
    elif args.adapter == "redis-cluster":
        config["adapter"] = {
            "driver": "redis-cluster",
            "cluster": {"nodes": args.cluster_nodes.split(","), "prefix": prefix.rstrip(":")},
        }
    else:
        config["adapter"] = {
            "driver": "nats",
            "nats": {"servers": [args.nats_server], "prefix": prefix.rstrip(":")},
        }
    return config


def start_nodes(
    count: int, prefix: str, args: argparse.Namespace, workdir: Path
) -> list[tuple[int, Any]]:
    nodes = []
    reactor = ["--reactor", args.reactor] if args.reactor else []
    for i in range(count):
        port = free_port()
        path = workdir / f"node{i}.json"
        path.write_text(json.dumps(node_config(port, prefix, args)))
        log = open(workdir / f"node{i}.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "twisted", *reactor, "sockudo", "--config", str(path)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        nodes.append((port, proc))
    for i, (port, proc) in enumerate(nodes):
        wait_until_up(port, proc, 30, workdir / f"node{i}.log")
    return nodes


# -- publisher ----------------------------------------------------------------


async def trigger(port: int, request: bytes, failures: list[bytes]) -> None:
    """
    One signed trigger over its own HTTP/1.0 connection.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    response = await reader.read()
    writer.close()
    if not response.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
        failures.append(response[:200])


async def publish(
    ports: list[int], rate: float, duration: float, payload: int, event: str = EVENT
) -> int:
    """
    Trigger open-loop at C{rate}/s for C{duration} s; returns how many.
    """
    path = f"/apps/{APP_ID}/events"
    sent = 0
    failures: list[bytes] = []
    pending: list[asyncio.Task[None]] = []
    start = time.monotonic()
    while time.monotonic() - start < duration:
        delay = start + sent / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        head = f"{sent}:{time.monotonic_ns()}:"
        data = head + "x" * max(0, payload - len(head))
        body = json.dumps({"name": event, "channel": CHANNEL, "data": data}).encode()
        query = sign_api_query(APP_KEY, APP_SECRET, "POST", path, [], body, int(time.time()))
        request = (
            f"POST {path}?{urllib.parse.urlencode(query)} HTTP/1.0\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        pending.append(asyncio.create_task(trigger(ports[sent % len(ports)], request, failures)))
        sent += 1
    await asyncio.gather(*pending)
    if failures:
        print(f"{len(failures)} triggers failed, first: {failures[0]!r}", file=sys.stderr)
    return sent - len(failures)


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[index] / 1e6


def node_cpu_ms(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50.0, help="triggers per second")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--payload", type=int, default=100)
    parser.add_argument("--drain", type=float, default=3.0, help="s to wait for late deliveries")
    parser.add_argument("--warmup", type=float, default=2.0, help="untimed seconds of load first")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--publish-to", choices=["first", "all"], default="first")
    parser.add_argument("--subscribers-on", choices=["all", "others"], default="all")
    parser.add_argument("--adapter", choices=["redis", "redis-cluster", "nats"], default="redis")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--cluster-nodes", default="", help="redis-cluster seeds, comma-separated host:port"
    )
    parser.add_argument("--nats-server", default="nats://127.0.0.1:4222")
    parser.add_argument("--reactor", default="", help="twistd --reactor (e.g. asyncio)")
    args = parser.parse_args()
    if args.adapter == "redis-cluster" and not args.cluster_nodes:
        parser.error("--adapter redis-cluster needs --cluster-nodes")

    prefix = f"sockudo_bench_{uuid.uuid4().hex[:8]}:"
    workdir = Path(tempfile.mkdtemp(prefix="cluster-fanout-"))
    nodes = start_nodes(args.nodes, prefix, args, workdir)
    ports = [port for port, _ in nodes]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        share = args.subscribers // args.client_procs
        for i in range(args.client_procs):
            count = share + (args.subscribers % args.client_procs if i == 0 else 0)
            procs.append(
                subprocess.Popen(
                    [
                        "node",
                        "cluster_fanout_clients.js",
                        str(count),
                        ",".join(map(str, ports[1:] if args.subscribers_on == "others" else ports)),
                        str(i * share),
                        CHANNEL,
                    ],
                    cwd=REPO / "bench",
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
            )
        subscribed = sum(json.loads(p.stdout.readline())["n"] for p in procs)  # type: ignore[union-attr]
        print(f"{subscribed}/{args.subscribers} subscribers on {args.nodes} nodes {ports}")
        time.sleep(1.0)
        targets = ports if args.publish_to == "all" else ports[:1]
        # Warm-up at the same rate, with an event the clients do not time.
        asyncio.run(publish(targets, args.rate, args.warmup, args.payload, "bench-warmup"))
        time.sleep(0.5)
        cpu_before = [node_cpu_ms(proc.pid) for _, proc in nodes]
        t0 = time.monotonic()
        t0_ns = time.monotonic_ns()
        triggers = asyncio.run(publish(targets, args.rate, args.duration, args.payload))
        expected = triggers * subscribed
        # Drain: give outstanding deliveries time to arrive.
        time.sleep(args.drain)
        latencies: list[int] = []
        by_port: dict[str, list[int]] = {}
        last_ns = t0_ns
        client_cpu: list[float] = []
        for proc in procs:
            proc.stdin.write(b"report\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
            report = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
            latencies += [int(us * 1000) for us in report["latencies_us"]]
            last_ns = max(last_ns, int(report["last_us"] * 1000))
            client_cpu.append(round(report["cpu_pct"], 1))
            for port, values in report["by_port"].items():
                by_port.setdefault(port, []).extend(int(us * 1000) for us in values)
        elapsed = time.monotonic() - t0
        cpu_after = [node_cpu_ms(proc.pid) for _, proc in nodes]
        latencies.sort()
        delivered = len(latencies)
        print(
            json.dumps(
                {
                    "adapter": args.adapter,
                    "nodes": args.nodes,
                    "subscribers": subscribed,
                    "triggers": triggers,
                    "rate": args.rate,
                    "publish_to": args.publish_to,
                    "delivered": delivered,
                    "expected": expected,
                    "lost": expected - delivered,
                    # Over the time from the first trigger to the last
                    # delivery, so a saturated run is not flattered.
                    "deliveries_per_s": round(delivered / max(1e-9, (last_ns - t0_ns) / 1e9)),
                    "latency_ms": {
                        "p50": round(percentile(latencies, 0.50), 2),
                        "p99": round(percentile(latencies, 0.99), 2),
                        "max": round(latencies[-1] / 1e6, 2) if latencies else None,
                        "mean": round(statistics.fmean(latencies) / 1e6, 2) if latencies else None,
                    },
                    "p50_p99_ms_by_node": {
                        port: [
                            round(percentile(sorted(v), 0.5), 2),
                            round(percentile(sorted(v), 0.99), 2),
                        ]
                        for port, v in by_port.items()
                    },
                    "node_cpu_ms": [
                        round(b - a) for a, b in zip(cpu_before, cpu_after, strict=True)
                    ],
                    "node_cpu_ms_per_1k_deliveries": round(sum(cpu_after) - sum(cpu_before), 1)
                    / max(1, delivered / 1000),
                    # Above ~75 % a client process, not the cluster, limits latency.
                    "client_cpu_pct": client_cpu,
                    "wall_s": round(elapsed, 1),
                },
                indent=1,
            )
        )
    finally:
        for proc in procs:
            proc.kill()
        for _, node in nodes:
            node.send_signal(signal.SIGTERM)
        for _, node in nodes:
            try:
                node.wait(timeout=15)
            except subprocess.TimeoutExpired:
                node.kill()
        try:
            # with redis-cluster or NATS the keys live there: nothing to delete here
            if args.adapter == "redis":
                delete_redis_keys(args.redis_url, prefix)
        except Exception as e:  # the benchmark result matters more than cleanup
            print(f"could not delete {prefix}* keys: {e}", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
