"""
Tests for L{sockudo_tw.workers}: how child workers are started with the
parent's listening sockets, restarted and stopped.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from sockudo_tw.workers import WorkerPool, child_arguments, inherited_listen_descriptions


class FakePort:
    """
    A bound listening port with a real descriptor.
    """

    def __init__(self, case: SynchronousTestCase, host: Any) -> None:
        self.sock = socket.socket()
        case.addCleanup(self.sock.close)
        self.host = host

    def getHost(self) -> Any:  # noqa: N802
        return self.host

    def fileno(self) -> int:
        return self.sock.fileno()


class FakeListener:
    """
    Stands in for a C{StreamServerEndpointService} whose port is bound.
    """

    def __init__(self, port: FakePort) -> None:
        self._waitingForPort: Deferred[FakePort] = succeed(port)


class FakeProcess:
    """
    A spawned child: records signals.
    """

    def __init__(self, protocol: Any, args: list[str], kwargs: dict[str, Any]) -> None:
        self.protocol = protocol
        self.args = args
        self.kwargs = kwargs
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:  # noqa: N802
        self.signals.append(name)

    def exit(self, reason: Failure) -> None:
        self.protocol.processEnded(reason)


class Spawner:
    """
    Records C{spawnProcess} calls.
    """

    def __init__(self) -> None:
        self.processes: list[FakeProcess] = []

    def __call__(self, protocol: Any, executable: str, args: list[str], **kwargs: Any) -> Any:
        process = FakeProcess(protocol, args, kwargs)
        self.processes.append(process)
        return process


class ChildArgumentsTests(SynchronousTestCase):
    """
    The command line of a child worker.
    """

    def test_listen_and_workers_replaced(self) -> None:
        """
        The parent's C{--listen} and C{--workers} options are replaced by
        the inherited sockets and C{--workers 1}; the rest is kept.
        """
        argv = child_arguments(
            ["--config", "/etc/s.json", "--listen", "tcp:1", "-l", "tcp:2", "--workers=4"],
            ["INET", "UNIX"],
            1,
        )
        self.assertEqual(argv[:3], [sys.executable, "-m", "sockudo_tw._worker_main"])
        rest = argv[argv.index("sockudo") + 1 :]
        self.assertEqual(
            rest,
            [
                "--config",
                "/etc/s.json",
                "--listen",
                "systemd:domain=INET:name=l0",
                "--listen",
                "systemd:domain=UNIX:name=l1",
                "--workers",
                "1",
            ],
        )
        self.assertIn("--nodaemon", argv)

    def test_descriptions(self) -> None:
        """
        Each inherited socket is named by its position.
        """
        self.assertEqual(inherited_listen_descriptions(["INET6"]), ["systemd:domain=INET6:name=l0"])


class WorkerPoolTests(SynchronousTestCase):
    """
    Starting, supervising and stopping the children.
    """

    def pool(self, count: int = 3) -> tuple[WorkerPool, Spawner, Clock, list[FakePort]]:
        clock = Clock()
        spawner = Spawner()
        ports = [
            FakePort(self, IPv4Address("TCP", "127.0.0.1", 6001)),
            FakePort(self, UNIXAddress(b"/run/s.sock")),
        ]
        pool = WorkerPool(
            clock,
            count,
            [FakeListener(p) for p in ports],
            ["--config", "/c.json"],
            environ={"REDIS_URL": "redis://127.0.0.1:6379/0"},
            grace_period=5.0,
            spawn=spawner,
        )
        return pool, spawner, clock, ports

    def test_children_inherit_the_sockets(self) -> None:
        """
        N-1 children start, each with the parent's listening descriptors at
        3, 4, ... and the systemd-style variables naming them; the
        environment is passed on and metrics are off in children.
        """
        pool, spawner, _clock, ports = self.pool(count=3)
        pool.startService()
        self.assertEqual(len(spawner.processes), 2)
        child = spawner.processes[0]
        fds = child.kwargs["childFDs"]
        self.assertEqual(fds[3], ports[0].fileno())
        self.assertEqual(fds[4], ports[1].fileno())
        env = child.kwargs["env"]
        self.assertEqual(env["LISTEN_FDS"], "2")
        self.assertEqual(env["LISTEN_FDNAMES"], "l0:l1")
        self.assertEqual(env["METRICS_ENABLED"], "false")
        self.assertEqual(env["REDIS_URL"], "redis://127.0.0.1:6379/0")
        self.assertIn("systemd:domain=UNIX:name=l1", child.args)

    def test_crashed_child_restarts(self) -> None:
        """
        A child that dies is started again after a delay, with backoff.
        """
        pool, spawner, clock, _ = self.pool(count=2)
        pool.startService()
        spawner.processes[0].exit(Failure(ProcessTerminated(signal=9)))
        self.assertEqual(len(spawner.processes), 1)
        clock.advance(0.5)
        self.assertEqual(len(spawner.processes), 2)
        spawner.processes[1].exit(Failure(ProcessTerminated(exitCode=1)))
        clock.advance(0.5)
        self.assertEqual(len(spawner.processes), 2)
        clock.advance(0.5)
        self.assertEqual(len(spawner.processes), 3)
        self.assertEqual(pool.restarts, 2)

    def test_stop_terminates_then_kills(self) -> None:
        """
        Stopping sends SIGTERM, then SIGKILL to a child still running after
        the grace period; the stop finishes when every child has exited and
        nothing is restarted.
        """
        pool, spawner, clock, _ = self.pool(count=3)
        pool.startService()
        d = pool.stopService()
        self.assertEqual([p.signals for p in spawner.processes], [["TERM"], ["TERM"]])
        spawner.processes[0].exit(Failure(ProcessDone(0)))
        self.assertNoResult(d)
        clock.advance(5.0)
        self.assertEqual(spawner.processes[1].signals, ["TERM", "KILL"])
        spawner.processes[1].exit(Failure(ProcessTerminated(signal=9)))
        self.successResultOf(d)
        clock.advance(60)
        self.assertEqual(len(spawner.processes), 2)
