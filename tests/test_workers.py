"""
Tests for L{sockudo_tw.workers}: how child workers are started with the
parent's listening sockets, restarted and stopped.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import attrs
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet import task
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

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


@implementer(IStreamServerEndpoint)
class FakeEndpoint:
    """
    A server endpoint whose C{listen} gives a ready port.
    """

    def __init__(self, port: FakePort) -> None:
        self.port = port

    def listen(self, factory: object) -> Deferred[FakePort]:
        return succeed(self.port)


def fake_listener(port: FakePort) -> StreamServerEndpointService:
    """
    A real C{StreamServerEndpointService} on an endpoint giving C{port}.
    """
    return StreamServerEndpointService(FakeEndpoint(port), Factory())


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
        listeners = [fake_listener(p) for p in ports]
        pool = WorkerPool(
            clock,
            count,
            listeners,
            ["--config", "/c.json"],
            environ={"REDIS_URL": "redis://127.0.0.1:6379/0"},
            grace_period=5.0,
            spawn=spawner,
        )
        # As the root service does: listeners bind before the pool starts.
        for listener in listeners:
            listener.privilegedStartService()
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

    def test_port_learnt_through_public_endpoint(self) -> None:
        """
        The pool learns each listener's port through its public C{endpoint}
        (no Twisted internals), whether the listener binds before or after
        the pool starts; the listener still gets its own port.
        """
        port = FakePort(self, IPv4Address("TCP", "127.0.0.1", 6001))
        listener = fake_listener(port)
        spawner = Spawner()
        pool = WorkerPool(Clock(), 2, [listener], [], environ={}, spawn=spawner)
        pool.startService()
        self.assertEqual(spawner.processes, [])
        listener.privilegedStartService()
        self.assertEqual(len(spawner.processes), 1)
        self.assertEqual(spawner.processes[0].kwargs["childFDs"][3], port.fileno())
        self.assertIs(self.successResultOf(listener.endpoint.listen(Factory())), port)

    def test_listener_without_endpoint_refused(self) -> None:
        """
        A listener that is not an endpoint service is refused by name.
        """
        with self.assertRaises(ValueError) as raised:
            WorkerPool(Clock(), 2, [Service()], [], environ={})
        self.assertIn("no listening port to share", str(raised.exception))

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


def _children(pid: int) -> list[int]:
    """
    The live child processes of C{pid} that run a worker, from /proc.
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[1]) == pid and b"sockudo_tw._worker_main" in cmdline:
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class WorkersIntegrationTests(TestCase):
    """
    A real daemon with C{workers: 2} on the Redis adapter: two processes
    accept on one port and serve one Pusher service.
    """

    timeout = 120

    async def poll(self, check: Any, what: str, within: float = 15.0) -> Any:
        from twisted.internet import reactor

        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            await task.deferLater(reactor, 0.1)
        self.fail(f"timed out waiting for {what}")

    async def test_two_processes_one_service(self) -> None:
        """
        The child accepts connections on the parent's port (shown by pausing
        one process at a time), events reach clients of both processes, and
        stopping the daemon stops the child.
        """
        from tests.interop_harness import (
            NodeDriver,
            ServerProcess,
            app_config,
            http_get,
            match,
            require_node,
        )
        from tests.test_redis_cluster import delete_keys, require_redis

        require_redis(self)
        require_node(self)
        prefix = f"sockudo_test_{uuid.uuid4().hex[:10]}:"
        self.addCleanup(delete_keys, 6379, prefix)
        config = {
            "workers": 2,
            "adapter": {
                "driver": "redis",
                "redis": {
                    "prefix": prefix,
                    "redis_pub_options": {"url": "redis://127.0.0.1:6379/0"},
                },
            },
        }
        server = await ServerProcess.start(self, [app_config()], config)
        parent = server._transport.pid
        children = await self.poll(lambda: _children(parent), "the worker process to start")
        child = children[0]
        self.addCleanup(lambda: _alive(child) and os.kill(child, signal.SIGKILL))
        node = await NodeDriver.start(self, server.log_tail)
        await node.init_sdk(
            {
                "appId": "123456",
                "key": "interop-key",
                "secret": "interop-secret",
                "host": "127.0.0.1",
                "port": str(server.port),
                "useTLS": False,
            }
        )

        async def connect_while_paused(paused: int, client: str) -> None:
            os.kill(paused, signal.SIGSTOP)
            try:
                node.send(
                    op="connect",
                    client=client,
                    key="interop-key",
                    host="127.0.0.1",
                    port=server.port,
                    auth="sdk",
                    presence=None,
                    user=None,
                    options={},
                )
                await node.wait_for(
                    lambda o: o["type"] == "connected" and o["client"] == client,
                    f"{client} to be accepted while pid {paused} is paused",
                    within=20,
                )
            finally:
                os.kill(paused, signal.SIGCONT)

        # Wait until the child serves: its /up answers 200 (Redis joined)
        # while the parent is paused.
        from twisted.internet import reactor

        deadline = time.monotonic() + 20
        status: int | None = None
        while status != 200 and time.monotonic() < deadline:
            os.kill(parent, signal.SIGSTOP)
            try:
                status, _ = await http_get("127.0.0.1", server.port, "/up")
            finally:
                os.kill(parent, signal.SIGCONT)
            await task.deferLater(reactor, 0.2)
        self.assertEqual(status, 200, server.log_tail())
        await connect_while_paused(parent, "on-child")
        await connect_while_paused(child, "on-parent")
        for client in ("on-child", "on-parent"):
            node.send(op="subscribe", client=client, channel="workers", bind=[])
            await node.wait_for(
                match("event", client, channel="workers", event="pusher:subscription_succeeded"),
                f"{client} subscribed",
            )
        for i in range(4):
            result = await node.call_sdk("trigger", "workers", "hello", {"i": i})
            self.assertEqual(result["status"], 200, result)
        for client in ("on-child", "on-parent"):
            await node.wait_count(
                match("event", client, channel="workers", event="hello"), 4, f"{client} events"
            )
        await server.stop()
        await self.poll(lambda: not _alive(child), "the worker to stop with the daemon")


class WorkersSettingTests(SynchronousTestCase):
    """
    The C{workers} setting: config key, C{--workers}, and the service tree.
    """

    def test_config_key(self) -> None:
        """
        C{workers} is read from the file; 1 by default.
        """
        from sockudo_tw.config import parse_config

        self.assertEqual(parse_config(None, {}).workers, 1)
        config = parse_config({"workers": 3, "adapter": {"driver": "redis"}}, {})
        self.assertEqual(config.workers, 3)

    def test_needs_redis(self) -> None:
        """
        More than one worker without the Redis adapter is a configuration
        error naming the key; fewer than one is refused.
        """
        from sockudo_tw.config import ConfigError, parse_config

        with self.assertRaises(ConfigError) as local:
            parse_config({"workers": 2}, {})
        self.assertIn("workers", str(local.exception))
        self.assertIn("redis", str(local.exception))
        with self.assertRaises(ConfigError):
            parse_config({"workers": 0}, {})

    def test_cli_overrides(self) -> None:
        """
        C{--workers N} overrides the file, with the same checks.
        """
        from twisted.python import usage

        from sockudo_tw.tap import Options

        options = Options()
        options.environ = {"ADAPTER_DRIVER": "redis"}
        options.parseOptions(["--workers", "4"])
        assert options.server_config is not None
        self.assertEqual(options.server_config.workers, 4)
        for bad in (["--workers", "2"], ["--workers", "two"]):
            refused = Options()
            refused.environ = {}
            with self.assertRaises(usage.UsageError):
                refused.parseOptions(bad)

    def test_service_shares_main_listeners_only(self) -> None:
        """
        With workers > 1 the root service gets a worker pool that shares
        the main listener, not the metrics one; with 1 there is none.
        """
        from twisted.internet.testing import MemoryReactorClock

        from sockudo_tw.config import parse_config
        from sockudo_tw.service import make_service

        # The local adapter keeps this test free of Redis connections (the
        # workers check is the config's, tested above).
        config = attrs.evolve(parse_config({"metrics": {"enabled": True}}, {}), workers=2)
        root = make_service(config, MemoryReactorClock(), worker_args=["--config", "/c.json"])
        pools = [s for s in root.listeners if isinstance(s, WorkerPool)]
        self.assertEqual(len(pools), 1)
        self.assertEqual(len(pools[0].listeners), 1)
        self.assertEqual(pools[0].twistd_args, ["--config", "/c.json"])
        single = make_service(parse_config(None, {}), MemoryReactorClock())
        self.assertEqual([s for s in single.listeners if isinstance(s, WorkerPool)], [])


class AdoptedUnixSocketModeTests(SynchronousTestCase):
    """
    A worker that adopts the parent's Unix socket sets the configured file
    mode again: Twisted's adoption chmods the socket file to 0666.
    """

    def test_mode_restored(self) -> None:
        from sockudo_tw.service import _keep_unix_mode

        path = os.path.join(self.mktemp(), "s.sock")
        os.makedirs(os.path.dirname(path))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        sock.bind(path)
        os.chmod(path, 0o666)
        _keep_unix_mode(FakePort(self, UNIXAddress(path.encode())), path, 0o660)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o660)

    def test_other_listeners_untouched(self) -> None:
        from sockudo_tw.service import _keep_unix_mode

        path = os.path.join(self.mktemp(), "s.sock")
        os.makedirs(os.path.dirname(path))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        sock.bind(path)
        os.chmod(path, 0o666)
        _keep_unix_mode(FakePort(self, IPv4Address("TCP", "127.0.0.1", 6001)), path, 0o660)
        _keep_unix_mode(FakePort(self, UNIXAddress(path.encode() + b"x")), path, 0o660)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o666)
