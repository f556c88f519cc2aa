"""
Smoke run of the load tool (C{bench/run.js}) against a real C{twistd -n
sockudo} on loopback.

Every scenario runs for about a second with small numbers. The test
fails only on errors or lost messages, never on timing: its job is to catch a
server (or tool) change that breaks delivery under load, not to measure.
Outside CI a missing C{node} or C{bench/node_modules} makes it skip with a
message naming the missing piece; with C{CI=true} that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.interop_harness import daemon_argv, listening_socket, unavailable

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO_ROOT / "bench"
SERVER_START_TIMEOUT = 30.0
BENCH_TIMEOUT = 180.0


def _missing() -> list[str]:
    """
    Name what this machine lacks to run the load tool.
    """
    missing = []
    if shutil.which("node") is None:
        missing.append("the `node` executable (Node.js >= 18)")
    if not (BENCH_DIR / "node_modules" / "ws").is_dir():
        missing.append("bench/node_modules (run `npm ci --prefix bench`)")
    return missing


def _is_up(port: int) -> bool:
    """
    Whether C{GET /up} on 127.0.0.1:C{port} answers 200 within a second
    (the request waits in the listening socket's backlog until the daemon
    accepts it, so no sleep is needed between attempts).
    """
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/up", timeout=1.0) as answer:
            return bool(answer.status == 200)
    except (OSError, urllib.error.URLError):
        return False


class BenchSmokeTests(SynchronousTestCase):
    """
    The load tool's five scenarios against a real daemon, without loss.
    """

    def setUp(self) -> None:
        """
        Skip (or fail in CI) without Node and the tool's dependencies, then
        start C{twistd -n sockudo} on a loopback socket bound to port 0
        (handed over as systemd does, see L{listening_socket}) with the tool's
        config (C{bench/sockudo-bench.json}: app-id / app-key / app-secret,
        rate limiting off, since a limiter refuses load by design).
        """
        missing = _missing()
        if missing:
            unavailable(self, "bench smoke test needs " + " and ".join(missing))
        sock = listening_socket()
        self.addCleanup(sock.close)
        self.port: int = sock.getsockname()[1]
        self.workdir = Path(tempfile.mkdtemp(prefix="sockudo-bench-"))
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.server_log = self.workdir / "server.log"
        env = dict(os.environ)
        for name in ("PORT", "HOST"):
            env.pop(name, None)  # Sockudo's overrides of the listener
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        )
        env["SOCKUDO_TEST_LISTEN_FD"] = str(sock.fileno())
        with self.server_log.open("wb") as log:
            self.server = subprocess.Popen(
                daemon_argv(BENCH_DIR / "sockudo-bench.json"),
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(sock.fileno(),),
            )
        self.addCleanup(self._stop_server)
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while not _is_up(self.port):
            if self.server.poll() is not None:
                self.fail(f"twistd sockudo exited during start-up:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                self.fail(f"twistd sockudo did not answer /up within {SERVER_START_TIMEOUT} s")

    def _stop_server(self) -> None:
        """
        SIGTERM the daemon, SIGKILL it if it has not exited after 10 s.
        """
        if self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(10)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait(5)

    def _log_tail(self, lines: int = 40) -> str:
        """
        The end of the daemon's log, for failure messages.
        """
        text = self.server_log.read_text("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    def test_all_scenarios_without_errors_or_loss(self) -> None:
        """
        C{node bench/run.js --scenario all} with small numbers exits 0, and
        its JSON shows every connection subscribed, every trigger accepted,
        every event delivered and every presence member announced.
        """
        out = self.workdir / "result.json"
        argv = [
            "node",
            str(BENCH_DIR / "run.js"),
            "--scenario",
            "all",
            "--port",
            str(self.port),
            "--server-pid",
            str(self.server.pid),
            "--server-name",
            "smoke",
            "--workers",
            "1",
            "--concurrency",
            "20",
            "--connections",
            "50",
            "--subscribers",
            "20",
            "--clients",
            "20",
            "--members",
            "10",
            "--rate",
            "20",
            "--duration",
            "1",
            "--http-connections",
            "4",
            "--inflight",
            "4",
            "--hold",
            "0.5",
            "--settle-time",
            "0.2",
            "--drain",
            "20",
            "--max-time",
            str(int(BENCH_TIMEOUT) - 10),
            "--out",
            str(out),
        ]
        run = subprocess.run(
            argv,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=BENCH_TIMEOUT,
            check=False,
        )
        report = f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}\nserver:\n{self._log_tail()}"
        self.assertTrue(out.exists(), f"no JSON results written\n{report}")
        doc: dict[str, Any] = json.loads(out.read_text("utf-8"))
        results = doc["results"]
        self.assertEqual(
            sorted(results), ["channels", "connect", "fanout", "http", "presence"], report
        )
        for name, result in results.items():
            self.assertEqual(result["errors"], 0, f"{name} had errors\n{report}")
        self.assertEqual(results["connect"]["connections"]["subscribed"], 50, report)
        for name in ("fanout", "channels"):
            delivery = results[name]["delivery"]
            self.assertGreater(delivery["expected"], 0, f"{name} published nothing\n{report}")
            self.assertEqual(delivery["received"], delivery["expected"], report)
        self.assertGreater(results["http"]["http"]["ok"], 0, report)
        presence = results["presence"]["presence"]
        self.assertEqual(presence["joined"], 10, report)
        self.assertEqual(presence["member_added_received"], 45, report)
        self.assertEqual(run.returncode, 0, report)

    def test_connect_broadcast_verify_terminate(self) -> None:
        """
        The connect scenario with C{--broadcast --verify --terminate} over
        two source addresses (explicit local ports) exits 0: every client
        receives the bench-all event and its channel's event once, the HTTP
        API counts what the tool holds, and SIGTERM closes every client with
        4200 before the daemon exits.
        """
        out = self.workdir / "connect.json"
        argv = [
            "node",
            str(BENCH_DIR / "run.js"),
            "--scenario=connect",
            f"--port={self.port}",
            f"--server-pid={self.server.pid}",
            "--workers=2",
            "--concurrency=20",
            "--connections=200",
            "--channels=10",
            "--source-ips=2",
            "--hold=0.5",
            "--broadcast",
            "--verify",
            "--terminate",
            "--terminate-timeout=30",
            f"--max-time={int(BENCH_TIMEOUT) - 10}",
            f"--out={out}",
        ]
        run = subprocess.run(
            argv,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=BENCH_TIMEOUT,
            check=False,
        )
        report = f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}\nserver:\n{self._log_tail()}"
        self.assertTrue(out.exists(), f"no JSON results written\n{report}")
        connect: dict[str, Any] = json.loads(out.read_text("utf-8"))["results"]["connect"]
        self.assertEqual(connect["connections"]["subscribed"], 200, report)
        for phase, channels in (("all", 1), ("channels", 10)):
            delivery = connect["broadcast"][phase]
            self.assertEqual(delivery["channels"], channels, report)
            self.assertEqual(
                (delivery["received"], delivery["lost"], delivery["duplicates"]),
                (200, 0, 0),
                report,
            )
        self.assertTrue(connect["verify"]["ok"], report)
        terminate = connect["terminate"]
        self.assertEqual(terminate["close_codes"], {"4200": 200}, report)
        self.assertIsNotNone(terminate["server_exit_ms"], report)
        self.assertEqual(connect["errors"], 0, report)
        self.assertEqual(run.returncode, 0, report)
