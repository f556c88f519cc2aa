"""
Pieces shared by the benchmark drivers that start their own C{twistd
sockudo} daemons (C{bench/cluster_fanout.py}, C{bench/many_connections.py}):
free loopback ports, the benchmark config, waiting for a daemon to answer,
and the Redis side (reachability, deleting a run's keys).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH_CONFIG = REPO / "bench" / "sockudo-bench.json"


def free_port() -> int:
    """
    A TCP port free on 127.0.0.1 right now (bind port 0, read it, close).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def bench_config() -> dict[str, Any]:
    """
    C{bench/sockudo-bench.json} as a dict, without its C{_comment}, for a
    driver to adjust and write to its own temporary file.
    """
    config: dict[str, Any] = json.loads(BENCH_CONFIG.read_text())
    config.pop("_comment", None)
    return config


def redis_config(prefix: str, url: str) -> dict[str, Any]:
    """
    The C{adapter} section joining nodes (or workers) through Redis at
    C{url}, with every key and channel under C{prefix}.
    """
    return {"driver": "redis", "redis": {"prefix": prefix, "redis_pub_options": {"url": url}}}


def is_up(port: int) -> bool:
    """
    Whether C{GET /up} on 127.0.0.1:C{port} answers 200 within a second.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET /up HTTP/1.0\r\n\r\n")
            return b" 200 " in s.recv(100)
    except OSError:
        return False


def wait_until_up(port: int, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    """
    Wait until the daemon C{proc} answers C{/up} on C{port}; raise
    C{SystemExit} naming C{log} if it exits first or C{timeout} s pass.
    """
    deadline = time.monotonic() + timeout
    while not is_up(port):
        if proc.poll() is not None:
            raise SystemExit(f"the daemon on {port} exited during start-up; see {log}")
        if time.monotonic() > deadline:
            raise SystemExit(f"the daemon on {port} did not answer /up in {timeout:.0f} s: {log}")
        time.sleep(0.1)


def redis_problem(url: str) -> str | None:
    """
    Why Redis at C{url} cannot be used (a sentence), or C{None} when it
    answers PING.
    """
    try:
        import redis
    except ImportError:
        return "the Python package redis is not installed (pip install redis)"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2).ping()
    except Exception as e:
        return f"Redis does not answer at {url} ({e})"
    return None


def delete_redis_keys(url: str, prefix: str) -> int:
    """
    Delete every key under C{prefix} in Redis at C{url}; returns how many.
    """
    import redis

    client = redis.Redis.from_url(url)
    deleted = 0
    for key in client.scan_iter(match=prefix + "*", count=1000):
        deleted += int(client.delete(key))
    return deleted
