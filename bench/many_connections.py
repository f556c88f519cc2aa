"""
Many concurrent connections on one machine over worker processes: one
command that starts C{twistd -n sockudo --workers N} (workers joined through
Redis, metrics on), holds C{--connections} WebSocket clients with the load
tool (C{bench/run.js --scenario connect --broadcast --verify --terminate}),
and prints one summary: how the connections spread over the server's
processes, RSS and PSS in total and per connection, CPU per connection,
connect rate, one broadcast to every client and one to each of
C{--channels} channels (time to delivery p50/p99/max, lost), the server's
own counts (C{sockudo_connected} on the metrics port, the HTTP API's
subscription count and channel list), and the graceful drain (time until
every client was closed, close codes, time until the daemon exited).

Usage (Redis on 127.0.0.1:6379, C{npm ci --prefix bench} once; run from the
repository root):

    /work/venv/bin/python bench/many_connections.py            # 100k over 6 workers
    python bench/many_connections.py --workers 2 --connections 2000 --channels 20 --hold 2

Exit status: 0 when every connection was held, every delivery arrived, the
server's counts matched and every client was closed with 4200; 1 otherwise;
2 when something needed (Redis, node, descriptors) is missing. Never because
of timing. The run's Redis keys (a fresh prefix) are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
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
    redis_problem,
    wait_until_up,
)

#: How the daemon is started: twistd from this interpreter, as the other
#: bench drivers and the tests do (no console script needed).
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]

#: Descriptors a client process needs besides its WebSockets.
CLIENT_FD_SLACK = 100


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """
    The command line; the defaults are the 100,000-connection run.
    """
    parser = argparse.ArgumentParser(
        description=(
            "Start twistd sockudo --workers N joined through Redis, hold --connections"
            " WebSocket clients, broadcast to all of them and to each channel, check the"
            " server's counts, SIGTERM it, and print one summary (also written as JSON)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--workers", type=int, default=6, help="server worker processes (twistd --workers)")
    add("--connections", type=int, default=100_000, help="WebSocket clients held at once")
    add("--channels", type=int, default=1000, help="bench-conn-* channels the clients spread over")
    add("--hold", type=float, default=60.0, help="s to hold every connection")
    add("--client-processes", type=int, default=8, help="load-tool processes holding the clients")
    add("--source-ips", type=int, default=4, help="client addresses 127.0.0.2..127.0.0.(N+1)")
    add("--concurrency", type=int, default=400, help="handshakes in flight, all clients together")
    add("--connect-timeout", type=float, default=60.0, help="s for one client to subscribe")
    add("--grace", type=int, default=30, help="the daemon's shutdown_grace_period, s")
    add("--payload", type=int, default=100, help="broadcast event data size, bytes")
    add("--redis-url", default="redis://127.0.0.1:6379/0")
    add("--port", type=int, default=0, help="the daemon's port on 127.0.0.1 (0: a free one)")
    add("--metrics-port", type=int, default=0, help="its metrics port (0: a free one)")
    add("--start-timeout", type=float, default=60.0, help="s for the daemon and its workers")
    add("--max-time", type=int, default=1800, help="hard limit of the load tool's run, s")
    add("--out", default="", help="JSON summary (default bench/results/many-<time>.json)")
    add("--keep", action="store_true", help="keep the temporary directory (config, logs)")
    args = parser.parse_args(argv)
    for name in ("workers", "connections", "client_processes", "source_ips", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def children_of(pid: int) -> list[int]:
    """
    The pids whose parent is C{pid} (from C{/proc/*/stat}).
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def socket_count(pid: int) -> int:
    """
    How many socket descriptors C{pid} holds (0 if it is gone).
    """
    count = 0
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return 0
    for fd in fds:
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:
            continue
    return count


def wait_for_workers(pid: int, workers: int, timeout: float) -> list[int]:
    """
    Wait until the daemon runs C{workers - 1} children that each hold the
    shared listener and their two Redis connections (so they take their
    share of the connections from the start); returns the children's pids.
    Bounded by C{timeout}: the run then goes on and the spread shows it.
    """
    deadline = time.monotonic() + timeout
    kids: list[int] = []
    while time.monotonic() < deadline:
        kids = children_of(pid)
        if len(kids) >= workers - 1 and all(socket_count(k) >= 3 for k in kids):
            return kids
        time.sleep(0.2)
    print(
        f"many_connections: only {len(kids)} of {workers - 1} workers ready after {timeout:.0f} s",
        file=sys.stderr,
    )
    return kids


def raise_fd_limit(needed: int) -> str | None:
    """
    Raise this process's soft open-file limit to the hard one (inherited by
    the daemon and the load tool); a sentence if C{needed} does not fit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and needed > hard:
        return (
            f"each client process would need {needed} descriptors but the hard limit"
            f" is {hard}: raise --client-processes"
        )
    return None


def summarise(args: argparse.Namespace, doc: dict[str, Any]) -> dict[str, Any]:
    """
    The figures of one run from the load tool's JSON (C{results.connect}).
    """
    res = doc["results"]["connect"]
    conns = res.get("connections", {})
    server = res.get("server") or {}
    procs = res.get("server_processes") or {}
    held = conns.get("subscribed") or 0

    def per(kb: float | None) -> float | None:
        return round(kb / held, 2) if held and kb else None

    broadcast = res.get("broadcast") or {}
    terminate = res.get("terminate") or {}
    verify = res.get("verify") or {}

    def delivery(phase: dict[str, Any]) -> dict[str, Any]:
        lat = phase.get("latency_ms") or {}
        return {
            "channels": phase.get("channels"),
            "triggers": phase.get("triggers"),
            "expected": phase.get("expected"),
            "received": phase.get("received"),
            "lost": phase.get("lost"),
            "duplicates": phase.get("duplicates"),
            "p50_ms": lat.get("p50"),
            "p99_ms": lat.get("p99"),
            "max_ms": lat.get("max"),
            "time_to_last_delivery_ms": phase.get("time_to_last_delivery_ms"),
        }

    return {
        "workers": args.workers,
        "connections_requested": args.connections,
        "connections_held": held,
        "connections_failed": conns.get("failed"),
        "alive_after_hold": conns.get("alive_after_hold"),
        "connect_s": conns.get("elapsed_s"),
        "connect_rate_per_s": conns.get("rate_per_s"),
        "spread": {
            "per_process": [
                {"pid": p["pid"], "connections": p["connections"], "rss_kb": p["rss_kb"]}
                for p in procs.get("processes", [])
            ],
            "min": procs.get("connections_min"),
            "max": procs.get("connections_max"),
        },
        "rss_total_kb": server.get("rss_held_kb"),
        "rss_total_per_connection_kb": per(server.get("rss_held_kb")),
        "rss_growth_per_connection_kb": server.get("rss_per_connection_kb"),
        "pss_total_kb": server.get("pss_held_kb"),
        "pss_total_per_connection_kb": per(server.get("pss_held_kb")),
        "cpu_ms_per_connection": server.get("cpu_ms_per_connection"),
        "broadcast_all": delivery(broadcast.get("all") or {}),
        "broadcast_channels": delivery(broadcast.get("channels") or {}),
        "checks_ok": bool(verify.get("ok")),
        "checks": verify.get("checks"),
        "drain": {
            "all_closed_ms": terminate.get("all_closed_ms"),
            "close_codes": terminate.get("close_codes"),
            "still_open": terminate.get("still_open"),
            "server_exit_ms": terminate.get("server_exit_ms"),
            "all_processes_exit_ms": terminate.get("all_processes_exit_ms"),
            "grace_period_s": args.grace,
        },
        "loadgen": res.get("loadgen"),
        "errors": res.get("errors", 1),
    }


def print_summary(s: dict[str, Any]) -> None:
    """
    The summary as a few human lines.
    """
    spread = s["spread"]
    each = ", ".join(str(p["connections"]) for p in spread["per_process"])

    def mib(kb: float | None) -> str:
        return f"{kb / 1024:.0f} MiB" if kb else "n/a"

    print(f"workers {s['workers']}: {s['connections_held']}/{s['connections_requested']} held")
    print(f"  connect: {s['connect_s']} s, {s['connect_rate_per_s']}/s")
    print(f"  spread over processes: {each} (min {spread['min']}, max {spread['max']})")
    print(
        f"  RSS {mib(s['rss_total_kb'])} total, {s['rss_total_per_connection_kb']} kB/conn;"
        f" PSS {mib(s['pss_total_kb'])} total, {s['pss_total_per_connection_kb']} kB/conn;"
        f" CPU {s['cpu_ms_per_connection']} ms/conn"
    )
    for key, label in (("broadcast_all", "bench-all"), ("broadcast_channels", "per channel")):
        b = s[key]
        print(
            f"  broadcast {label} ({b['channels']} channels, {b['triggers']} triggers):"
            f" p50/p99/max {b['p50_ms']}/{b['p99_ms']}/{b['max_ms']} ms,"
            f" {b['received']}/{b['expected']} delivered, lost {b['lost']}"
        )
    for check in s["checks"] or []:
        state = "ok" if check["ok"] else "FAILED"
        print(f"  check {check['name']}: {check['got']} (want {check['expected']}) {state}")
    d = s["drain"]
    print(
        f"  SIGTERM: all closed in {d['all_closed_ms']} ms, codes {d['close_codes']},"
        f" {d['still_open']} still open; daemon exited after {d['server_exit_ms']} ms"
        f" (grace period {d['grace_period_s']} s)"
    )


def start_daemon(
    args: argparse.Namespace, workdir: Path, port: int, metrics_port: int, prefix: str
) -> tuple[subprocess.Popen[bytes], Path]:
    """
    Write the run's config and start C{twistd -n sockudo --workers N}.
    """
    config = bench_config()
    config.update(host="127.0.0.1", port=port, shutdown_grace_period=args.grace)
    config["adapter"] = redis_config(prefix, args.redis_url)
    config["metrics"] = {"enabled": True, "host": "127.0.0.1", "port": metrics_port}
    path = workdir / "sockudo.json"
    path.write_text(json.dumps(config, indent=1))
    log = workdir / "server.log"
    env = dict(os.environ)
    for name in ("PORT", "HOST", "WORKERS", "METRICS_ENABLED", "METRICS_PORT"):
        env.pop(name, None)  # Sockudo's environment overrides of the config
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    argv = [
        *TWISTD,
        "-n",
        "--pidfile=",
        "sockudo",
        "--config",
        str(path),
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--workers",
        str(args.workers),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, log


def run_tool(args: argparse.Namespace, port: int, metrics_port: int, pid: int, out: Path) -> int:
    """
    Run the load tool's connect scenario against the daemon; its exit code.
    """
    sys.stdout.flush()
    argv = [
        "node",
        str(REPO / "bench" / "run.js"),
        "--scenario=connect",
        f"--port={port}",
        f"--server-pid={pid}",
        f"--server-name=sockudo-tw-{args.workers}w",
        f"--connections={args.connections}",
        f"--channels={args.channels}",
        f"--hold={args.hold}",
        f"--workers={args.client_processes}",
        f"--source-ips={args.source_ips}",
        f"--concurrency={args.concurrency}",
        f"--connect-timeout={args.connect_timeout}",
        f"--payload={args.payload}",
        "--broadcast",
        "--verify",
        f"--metrics-port={metrics_port}",
        "--terminate",
        f"--terminate-timeout={args.grace + 60}",
        f"--max-time={args.max_time}",
        f"--out={out}",
    ]
    try:
        return subprocess.run(argv, cwd=REPO, timeout=args.max_time + 60, check=False).returncode
    except subprocess.TimeoutExpired:
        print("many_connections: the load tool outlived --max-time", file=sys.stderr)
        return 3


def stop_daemon(proc: subprocess.Popen[bytes], grace: float) -> int | None:
    """
    Wait for the daemon (the load tool sent SIGTERM); SIGTERM it if it still
    runs, SIGKILL it after the grace period. Its exit status, or None when
    it had to be killed.
    """
    try:
        return proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=grace + 15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        return None


def main(argv: list[str] | None = None) -> int:
    """
    One run: start, hold, broadcast, check, drain, summarise, clean up.
    """
    args = parse_args(argv)
    problem = redis_problem(args.redis_url)
    if problem is not None:
        problem += "; the workers need it (start one: redis-server --port 6379 --save '')"
    if problem is None and shutil.which("node") is None:
        problem = "the node executable (Node.js >= 18) is not on PATH"
    if problem is None and not (REPO / "bench" / "node_modules" / "ws").is_dir():
        problem = "bench/node_modules is missing: run `npm ci --prefix bench`"
    if problem is None:
        per_client = math.ceil(args.connections / args.client_processes) + CLIENT_FD_SLACK
        problem = raise_fd_limit(per_client)
    if problem:
        print(f"many_connections: {problem}", file=sys.stderr)
        return 2
    prefix = f"sockudo_bench_{uuid.uuid4().hex[:8]}:"
    workdir = Path(tempfile.mkdtemp(prefix="many-connections-"))
    port = args.port or free_port()
    metrics_port = args.metrics_port or free_port()
    while metrics_port == port:
        metrics_port = free_port()
    stamp = time.strftime("%Y%m%dT%H%M%S")
    out = Path(args.out) if args.out else REPO / "bench" / "results" / f"many-{stamp}.json"
    tool_out = workdir / "run.json"
    failed = True
    proc, log = start_daemon(args, workdir, port, metrics_port, prefix)
    try:
        wait_until_up(port, proc, args.start_timeout, log)
        wait_for_workers(proc.pid, args.workers, args.start_timeout)
        code = run_tool(args, port, metrics_port, proc.pid, tool_out)
        exit_status = stop_daemon(proc, args.grace)
        if not tool_out.exists():
            print(f"many_connections: the load tool wrote no results (exit {code})")
            return 1
        doc = json.loads(tool_out.read_text())
        summary = summarise(args, doc)
        summary["server_exit_status"] = exit_status
        summary["load_tool_exit_status"] = code
        summary["redis_prefix"] = prefix
        summary["tool_results"] = doc
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=1) + "\n")
        print_summary(summary)
        print(f"many_connections: summary written to {out}")
        # twistd ends by re-raising the signal that stopped it: -SIGTERM is a clean exit
        clean_exit = exit_status in (0, -signal.SIGTERM)
        failed = bool(code or summary["errors"] or not summary["checks_ok"] or not clean_exit)
        return 1 if failed else 0
    finally:
        if proc.poll() is None:
            stop_daemon(proc, args.grace)
        try:
            delete_redis_keys(args.redis_url, prefix)
        except Exception as e:  # the result matters more than the cleanup
            print(f"many_connections: could not delete {prefix}* keys: {e}", file=sys.stderr)
        if failed or args.keep:
            print(f"many_connections: config and server log kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
