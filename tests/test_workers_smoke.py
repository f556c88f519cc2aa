"""
Smoke run of the multi-worker path: C{bench/many_connections.py} with small
numbers (2 workers joined through Redis, 2,000 connections over 20 channels,
2 client processes).

The driver starts C{twistd -n sockudo --workers 2} with a fresh Redis key
prefix, holds the connections, broadcasts to all of them and to each
channel, compares the server's own counts (metrics port, HTTP API) with what
it holds, then stops the daemon with SIGTERM. The test fails only on errors,
lost messages, wrong counts or close codes, never on timing. Outside CI a
missing Redis, C{node} or C{bench/node_modules} makes it skip with a message
naming what is missing; with C{CI=true} that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from bench.daemons import redis_problem
from tests.interop_harness import unavailable

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO_ROOT / "bench"
REDIS_URL = "redis://127.0.0.1:6379/0"
RUN_TIMEOUT = 300.0
CONNECTIONS = 2000
CHANNELS = 20


def _missing() -> list[str]:
    """
    Name what this machine lacks for the run.
    """
    missing = []
    if shutil.which("node") is None:
        missing.append("the `node` executable (Node.js >= 18)")
    if not (BENCH_DIR / "node_modules" / "ws").is_dir():
        missing.append("bench/node_modules (run `npm ci --prefix bench`)")
    problem = redis_problem(REDIS_URL)
    if problem is not None:
        missing.append(f"Redis on 127.0.0.1:6379: {problem}")
    return missing


class WorkersSmokeTests(SynchronousTestCase):
    """
    Two workers hold every connection and deliver every broadcast.
    """

    def setUp(self) -> None:
        """
        Skip (or fail in CI) without Redis, Node or the tool's dependencies.
        """
        missing = _missing()
        if missing:
            unavailable(self, "the workers smoke run needs " + " and ".join(missing))
        self.workdir = Path(tempfile.mkdtemp(prefix="sockudo-workers-smoke-"))
        self.addCleanup(shutil.rmtree, self.workdir, True)

    def test_two_workers_without_errors_or_loss(self) -> None:
        """
        The driver exits 0; its JSON shows every connection held, both
        broadcasts delivered to every client with nothing lost or doubled,
        the metrics and HTTP API counts equal to what is held, every client
        closed with 4200 on SIGTERM and the daemon gone.
        """
        out = self.workdir / "summary.json"
        argv = [
            sys.executable,
            str(BENCH_DIR / "many_connections.py"),
            "--workers=2",
            f"--connections={CONNECTIONS}",
            f"--channels={CHANNELS}",
            "--hold=2",
            "--client-processes=2",
            "--concurrency=100",
            "--grace=20",
            f"--max-time={int(RUN_TIMEOUT) - 60}",
            f"--redis-url={REDIS_URL}",
            f"--out={out}",
        ]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        )
        run = subprocess.run(
            argv,
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        report = f"exit {run.returncode}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}"
        self.assertTrue(out.exists(), f"no JSON summary written\n{report}")
        summary: dict[str, Any] = json.loads(out.read_text("utf-8"))
        self.assertEqual(summary["connections_held"], CONNECTIONS, report)
        self.assertEqual(summary["alive_after_hold"], CONNECTIONS, report)
        self.assertEqual(len(summary["spread"]["per_process"]), 2, report)
        for phase, channels in (("broadcast_all", 1), ("broadcast_channels", CHANNELS)):
            delivery = summary[phase]
            self.assertEqual(delivery["channels"], channels, report)
            self.assertEqual(delivery["expected"], CONNECTIONS, report)
            self.assertEqual(delivery["received"], CONNECTIONS, report)
            self.assertEqual(delivery["lost"], 0, report)
            self.assertEqual(delivery["duplicates"], 0, report)
        self.assertTrue(summary["checks_ok"], report)
        self.assertEqual(
            [check["name"].split()[0] for check in summary["checks"]],
            ["metrics", "API", "API"],
            report,
        )
        drain = summary["drain"]
        self.assertEqual(drain["close_codes"], {"4200": CONNECTIONS}, report)
        self.assertEqual(drain["still_open"], 0, report)
        self.assertIsNotNone(drain["server_exit_ms"], report)
        self.assertEqual(summary["errors"], 0, report)
        self.assertEqual(run.returncode, 0, report)
