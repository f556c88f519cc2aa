"""
Tests for L{sockudo_tw.workers}: how child workers are started with the
parent's listening sockets, restarted and stopped.
"""

from __future__ import annotations

import json
import os
import resource
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
from twisted.internet.interfaces import IReadDescriptor, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from sockudo_tw.listening import AcceptCeiling, descriptor_ceiling
from sockudo_tw.workers import (
    DOWN_GRACE,
    WorkerBeacon,
    WorkerPool,
    WorkerRole,
    WorkersView,
    child_arguments,
    inherited_listen_descriptions,
    metrics_socket,
)


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
        self.forgotten: list[str] = []
        pool = WorkerPool(
            clock,
            count,
            listeners,
            ["--config", "/c.json"],
            environ={"REDIS_URL": "redis://127.0.0.1:6379/0"},
            grace_period=5.0,
            spawn=spawner,
            forget_node=self.forgotten.append,
            runtime_dir=self.mktemp(),
        )
        # As the root service does: listeners bind before the pool starts.
        for listener in listeners:
            listener.privilegedStartService()
        return pool, spawner, clock, ports

    def test_children_inherit_the_sockets(self) -> None:
        """
        N-1 children start, each with the parent's listening descriptors at
        3, 4, ... and the systemd-style variables naming them; the
        environment is passed on, plus the child's place in the group.
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
        self.assertEqual(env["REDIS_URL"], "redis://127.0.0.1:6379/0")
        self.assertIn("systemd:domain=UNIX:name=l1", child.args)
        role = WorkerRole.from_environ(env)
        assert role is not None
        self.assertEqual(
            (role.number, role.count, role.runtime_dir, role.parent_pid),
            (1, 3, pool.runtime_dir, os.getpid()),
        )
        self.assertEqual(role.node_id, pool.node_ids[1])
        other = WorkerRole.from_environ(spawner.processes[1].kwargs["env"])
        assert other is not None
        self.assertNotEqual(other.node_id, role.node_id)
        assert pool.runtime_dir is not None
        self.assertEqual(
            pool.metrics_sockets(),
            [metrics_socket(pool.runtime_dir, 1), metrics_socket(pool.runtime_dir, 2)],
        )

    def test_role_environment(self) -> None:
        """
        A process without the variables is no worker; incomplete or
        malformed ones are refused.
        """
        self.assertIsNone(WorkerRole.from_environ({}))
        self.assertRaises(ValueError, WorkerRole.from_environ, {"SOCKUDO_WORKER": "1"})
        env = {
            "SOCKUDO_WORKER": "x",
            "SOCKUDO_WORKER_COUNT": "2",
            "SOCKUDO_WORKER_DIR": "/d",
            "SOCKUDO_WORKER_NODE_ID": "n",
            "SOCKUDO_WORKER_PARENT": "1",
        }
        self.assertRaises(ValueError, WorkerRole.from_environ, env)

    def test_runtime_directory(self) -> None:
        """
        Without a given directory the pool uses systemd's
        C{RUNTIME_DIRECTORY}, else makes a private one and removes it when
        it stops.
        """

        def run(environ: dict[str, str]) -> str:
            spawner = Spawner()
            pool = WorkerPool(Clock(), 2, [], [], environ=environ, spawn=spawner)
            pool.startService()
            made = pool.runtime_dir
            assert made is not None
            self.assertTrue(os.path.isdir(made))
            d = pool.stopService()
            for process in spawner.processes:
                process.exit(Failure(ProcessDone(0)))
            self.successResultOf(d)
            return made

        given = self.mktemp()
        os.mkdir(given)
        self.assertEqual(run({"RUNTIME_DIRECTORY": given}), given)
        self.assertTrue(os.path.isdir(given))
        made = run({})
        self.assertFalse(os.path.exists(made))
        self.assertTrue(os.path.basename(made).startswith("sockudo-workers-"))

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
        first = pool.node_ids[1]
        spawner.processes[0].exit(Failure(ProcessTerminated(signal=9)))
        # Its clients' cluster state is removed at once, under its node id.
        self.assertEqual(self.forgotten, [first])
        self.assertEqual(len(spawner.processes), 1)
        clock.advance(0.5)
        self.assertEqual(len(spawner.processes), 2)
        self.assertNotEqual(pool.node_ids[1], first)
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
            free_port,
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
                # Long enough that a member leaving within seconds of a
                # SIGKILL shows the supervisor's immediate cleanup.
                "cluster_health": {"node_timeout_ms": 60000, "heartbeat_interval_ms": 5000},
            },
            "metrics": {"enabled": True, "host": "127.0.0.1", "port": free_port()},
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
                    presence={"user_id": f"u-{client}", "user_info": {}},
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
        await self.check_group(server, node, parent, child, config["metrics"]["port"])
        await server.stop()
        await self.poll(lambda: not _alive(child), "the worker to stop with the daemon")

    async def check_group(
        self, server: Any, node: Any, parent: int, child: int, metrics_port: int
    ) -> None:
        """
        One view of both workers: presence and the HTTP API's queries are
        exact whichever process answers, the metrics port sums both
        processes, C{/up} counts the workers, and a worker killed with
        SIGKILL has its presence member removed at once (long before
        C{node_timeout}) and is restarted.
        """
        from tests.interop_harness import match

        for client in ("on-child", "on-parent"):
            node.send(
                op="subscribe",
                client=client,
                channel="presence-workers",
                bind=[],
            )
            await node.wait_for(
                match(
                    "event",
                    client,
                    channel="presence-workers",
                    event="pusher:subscription_succeeded",
                ),
                f"{client} joined presence-workers",
            )
        # Several API calls land on both processes: every answer is whole.
        for _ in range(6):
            users = await node.call_sdk("get", {"path": "/channels/presence-workers/users"})
            self.assertEqual(
                sorted(u["id"] for u in users["body"]["users"]),
                ["u-on-child", "u-on-parent"],
                users,
            )
            info = await node.call_sdk(
                "get", {"path": "/channels/workers", "params": {"info": "subscription_count"}}
            )
            self.assertEqual(info["body"]["subscription_count"], 2, info)
        scraped = await _raw_get(metrics_port, "/metrics")
        samples = {
            line.split(b" ")[0]: float(line.split(b" ")[1])
            for line in scraped.split(b"\r\n\r\n", 1)[1].splitlines()
            if line and not line.startswith(b"#")
        }
        connected = [v for k, v in samples.items() if k.startswith(b"sockudo_connected{")]
        self.assertEqual(sum(connected), 2, scraped)
        self.assertEqual(samples[b"sockudo_workers_reporting"], 2, scraped)
        self.assertEqual(samples[b"sockudo_workers_configured"], 2, scraped)
        head = await _raw_get(server.port, "/up")
        self.assertIn(b"\r\nx-workers: 2/2\r\n", head.lower())
        os.kill(child, signal.SIGKILL)
        await node.wait_for(
            match("event", "on-parent", channel="presence-workers", event="pusher:member_removed"),
            "the killed worker's member to leave at once",
            within=5,
        )
        restarted = await self.poll(
            lambda: [c for c in _children(parent) if c != child], "the worker to be restarted"
        )
        self.addCleanup(lambda: _alive(restarted[0]) and os.kill(restarted[0], signal.SIGKILL))
        await self.poll(
            lambda: _group_up(server.port), "/up to count both workers again", within=20
        )


async def _raw_get(port: int, path: str) -> bytes:
    """
    The whole answer (status line and headers included) to one GET.
    """
    from twisted.internet.threads import deferToThread

    def get() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return data

    result: bytes = await deferToThread(get)
    return result


def _group_up(port: int) -> bool:
    """
    Whether C{/up} answered 200 with both workers running (blocking, short).
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"GET /up HTTP/1.0\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError:
        return False
    return data.startswith(b"HTTP/1.0 200") and b"\r\nx-workers: 2/2\r\n" in data.lower()


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


class BeaconTests(SynchronousTestCase):
    """
    Beacons in the runtime directory, and C{/up}'s view of them.
    """

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.mkdir(self.dir)
        self.clock = Clock()
        self.clock.advance(1000)
        self.held = 0

    def beacon(self, number: int, **kwargs: Any) -> WorkerBeacon:
        return WorkerBeacon(self.clock, lambda: self.dir, number, lambda: self.held, **kwargs)

    def test_group_status(self) -> None:
        """
        Workers with fresh beacons run, each beacon says what it holds; a
        missing one makes the group unhealthy only after L{DOWN_GRACE}.
        """
        view = WorkersView(self.clock, lambda: self.dir, 3)
        zero, one = self.beacon(0), self.beacon(1)
        self.held = 5
        zero.startService()
        self.held = 7
        one.startService()
        status = view.status()
        self.assertEqual((status.running, status.expected), (2, 3))
        held = [
            json.loads(Path(self.dir, f"worker-{n}.json").read_text())["connections"]
            for n in (0, 1)
        ]
        self.assertEqual(held, [5, 7])
        self.assertTrue(status.healthy)
        self.clock.advance(DOWN_GRACE - 1)
        self.assertTrue(view.status().healthy)
        self.clock.advance(1)
        self.assertFalse(view.status().healthy)
        self.beacon(2).startService()
        status = view.status()
        self.assertEqual(status.running, 3)
        self.assertTrue(status.healthy)

    def test_stale_beacon(self) -> None:
        """
        A worker that stopped beating (crashed, or stuck) stops counting
        after three beats and fails the group once it has been gone for
        the grace period.
        """
        view = WorkersView(self.clock, lambda: self.dir, 1)
        beacon = self.beacon(0)
        beacon.beat()
        self.clock.advance(6)
        self.assertEqual(view.status().running, 1)
        self.clock.advance(0.5)
        self.assertEqual(view.status().running, 0)
        self.assertTrue(view.status().healthy)
        self.clock.advance(DOWN_GRACE)
        self.assertFalse(view.status().healthy)

    def test_clean_stop_removes_beacon(self) -> None:
        """
        A worker that stops takes its beacon away.
        """
        beacon = self.beacon(0)
        beacon.startService()
        self.assertEqual(os.listdir(self.dir), ["worker-0.json"])
        beacon.stopService()
        self.assertEqual(os.listdir(self.dir), [])

    def test_orphan_stops(self) -> None:
        """
        A child whose parent is gone (its parent pid changed) stops the
        daemon and beats no more.
        """
        parents = [42]
        stopped: list[bool] = []
        beacon = self.beacon(
            1, parent_pid=42, orphaned=lambda: stopped.append(True), getppid=lambda: parents[0]
        )
        beacon.startService()
        self.assertEqual(stopped, [])
        parents[0] = 1
        self.clock.advance(2)
        self.assertEqual(stopped, [True])
        self.clock.advance(10)
        self.assertEqual(stopped, [True])


class FakeFDSet:
    """
    Records which descriptors are read.
    """

    def __init__(self) -> None:
        self.readers: set[object] = set()

    def addReader(self, reader: object) -> None:  # noqa: N802
        self.readers.add(reader)

    def removeReader(self, reader: object) -> None:  # noqa: N802
        self.readers.discard(reader)


@implementer(IReadDescriptor)
class FakeListeningPort:
    connected = 1


class AcceptCeilingTests(SynchronousTestCase):
    """
    Pausing the listeners at the open-file limit.
    """

    def test_ceiling_from_limit(self) -> None:
        """
        The reserve is 1/16 of the limit, between 64 and 1,024.
        """
        self.assertEqual(descriptor_ceiling(20000), 20000 - 1024)
        self.assertEqual(descriptor_ceiling(4096), 4096 - 256)
        self.assertEqual(descriptor_ceiling(1024), 1024 - 64)
        self.assertIsNone(descriptor_ceiling(resource.RLIM_INFINITY))

    def test_pause_and_resume(self) -> None:
        """
        At the ceiling every watched port leaves the read set; 1 % below
        it they are read again.
        """
        reactor = FakeFDSet()
        ports = [FakeListeningPort(), FakeListeningPort()]
        for port in ports:
            reactor.addReader(port)
        ceiling = AcceptCeiling(reactor, 1000)  # type: ignore[arg-type]
        ceiling.watch(ports[0])  # type: ignore[arg-type]
        ceiling.update(999)
        self.assertEqual(len(reactor.readers), 2)
        ceiling.update(1000)
        self.assertTrue(ceiling.paused)
        self.assertEqual(reactor.readers, {ports[1]})
        ceiling.watch(ports[1])  # type: ignore[arg-type]
        self.assertEqual(reactor.readers, set())
        ceiling.update(991)
        self.assertEqual(reactor.readers, set())
        ceiling.update(990)
        self.assertFalse(ceiling.paused)
        self.assertEqual(reactor.readers, set(ports))

    def test_unlimited(self) -> None:
        """
        Without a limit nothing is ever paused.
        """
        reactor = FakeFDSet()
        ceiling = AcceptCeiling(reactor, None)  # type: ignore[arg-type]
        port = FakeListeningPort()
        reactor.addReader(port)
        ceiling.watch(port)  # type: ignore[arg-type]
        ceiling.update(10**6)
        self.assertEqual(reactor.readers, {port})
