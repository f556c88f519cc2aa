"""
Integration tests of the Redis cluster: real C{twistd sockudo} nodes on
loopback ports, joined through a real Redis, with pusher-js clients spread
across them (the interop harness drives them) and REST calls through the
Node C{pusher} SDK aimed at different nodes.

Redis is the shared server on 127.0.0.1:6379 (each test uses its own key
prefix and deletes its keys), except for the outage test, which starts a
private C{redis-server} on a free port so it can kill it. Without Redis
(or Node) these tests fail under C{CI=true} and skip otherwise.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from twisted.internet import protocol, task
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.interop_harness import (
    APP_ID,
    APP_KEY,
    APP_SECRET,
    NodeDriver,
    ServerProcess,
    app_config,
    free_port,
    http_get,
    match,
    require_node,
    unavailable,
)

SHARED_REDIS = ("127.0.0.1", 6379)


def redis_answers(host: str, port: int) -> bool:
    """
    Whether a Redis server answers PING at C{host:port}.
    """
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def require_redis(case: TestCase) -> None:
    """
    Fail (CI) or skip (elsewhere) when the shared Redis is not there.
    """
    if redis_answers(*SHARED_REDIS):
        return
    unavailable(case, "the Redis cluster tests need redis-server on 127.0.0.1:6379")


def delete_keys(port: int, prefix: str) -> None:
    """
    Remove a test's keys (SCAN, not KEYS, so a busy shared Redis is fine).
    """
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
    try:
        for key in client.scan_iter(match=prefix + "*", count=500):
            client.delete(key)
    except redis.RedisError:
        pass
    finally:
        client.close()


class _Output(protocol.ProcessProtocol):
    """
    Collects a child process's output and notices its end.
    """

    def __init__(self) -> None:
        self.output = bytearray()
        self.ended = False

    def outReceived(self, data: bytes) -> None:  # noqa: N802
        self.output += data

    def errReceived(self, data: bytes) -> None:  # noqa: N802
        self.output += data

    def processEnded(self, reason: Failure) -> None:  # type: ignore[override]  # noqa: N802
        self.ended = True


class PrivateRedis:
    """
    A throwaway C{redis-server} on its own port, which a test may kill and
    start again on the same port (never the shared one).
    """

    def __init__(self, case: TestCase) -> None:
        self.case = case
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sockudo-redis-"))
        case.addCleanup(shutil.rmtree, self.dir, True)
        self.process: Any = None
        self.output: _Output | None = None

    async def start(self) -> None:
        """
        Start it and wait until it answers PING.
        """
        from twisted.internet import reactor

        binary = shutil.which("redis-server")
        if binary is None:
            unavailable(self.case, "the Redis outage test needs redis-server on PATH")
        self.output = _Output()
        argv = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
        ]
        self.process = reactor.spawnProcess(  # type: ignore[attr-defined]
            self.output, binary, argv, env={}
        )
        self.case.addCleanup(self.kill)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if redis_answers("127.0.0.1", self.port):
                return
            await task.deferLater(reactor, 0.05)
        self.case.fail(f"private redis-server did not start: {bytes(self.output.output)!r}")

    async def kill_and_wait(self) -> None:
        """
        SIGKILL it (no goodbye to clients) and wait until it is gone.
        """
        from twisted.internet import reactor

        self.kill()
        for _ in range(100):
            if self.output is None or self.output.ended:
                return
            await task.deferLater(reactor, 0.05)

    def kill(self) -> None:
        """
        SIGKILL it if it runs.
        """
        if self.output is not None and not self.output.ended:
            try:
                self.process.signalProcess("KILL")
            except Exception:
                pass


class Cluster:
    """
    N nodes on one Redis, a Node driver for pusher-js clients, and one Node
    SDK per node (C{"n0"}, C{"n1"}, ...) for REST calls.
    """

    def __init__(self, case: TestCase, servers: list[ServerProcess], node: NodeDriver) -> None:
        self.case = case
        self.servers = servers
        self.node = node

    @classmethod
    async def start(
        cls,
        case: TestCase,
        nodes: int = 3,
        redis_port: int = SHARED_REDIS[1],
        node_timeout_ms: int = 30000,
        heartbeat_interval_ms: int = 10000,
    ) -> Cluster:
        """
        Start C{nodes} daemons with the Redis adapter on a fresh key prefix.
        """
        require_node(case)
        prefix = f"sockudo_test_{uuid.uuid4().hex[:10]}:"
        case.addCleanup(delete_keys, redis_port, prefix)
        config = {
            "adapter": {
                "driver": "redis",
                "redis": {
                    "prefix": prefix,
                    "requests_timeout": 2000,
                    "redis_pub_options": {"url": f"redis://127.0.0.1:{redis_port}/0"},
                },
                "cluster_health": {
                    "enabled": True,
                    "heartbeat_interval_ms": heartbeat_interval_ms,
                    "node_timeout_ms": node_timeout_ms,
                    "cleanup_interval_ms": min(node_timeout_ms, 10000),
                },
            }
        }
        servers = []
        for _ in range(nodes):
            servers.append(await ServerProcess.start(case, [app_config()], config))

        def describe() -> str:
            return "\n".join(s.log_tail(30) for s in servers)

        node = await NodeDriver.start(case, describe)
        cluster = cls(case, servers, node)
        await node.init_sdk(cluster.sdk_options(0))
        for i in range(nodes):
            await node.init_sdk(cluster.sdk_options(i), name=f"n{i}")
        return cluster

    def sdk_options(self, index: int) -> dict[str, Any]:
        return {
            "appId": APP_ID,
            "key": APP_KEY,
            "secret": APP_SECRET,
            "host": "127.0.0.1",
            "port": str(self.servers[index].port),
            "useTLS": False,
        }

    async def connect(
        self,
        client: str,
        index: int,
        presence: dict[str, Any] | None = None,
        user: dict[str, Any] | None = None,
    ) -> str:
        """
        Connect a pusher-js client to node C{index}; return its socket id.
        """
        self.node.send(
            op="connect",
            client=client,
            key=APP_KEY,
            host="127.0.0.1",
            port=self.servers[index].port,
            auth="sdk",
            presence=presence,
            user=user,
            options={},
        )
        connected = await self.node.wait_for(
            lambda o: o["type"] == "connected" and o["client"] == client,
            f"{client!r} to connect to node {index}",
        )
        socket_id: str = connected["socket_id"]
        return socket_id

    async def subscribe(self, client: str, channel: str) -> None:
        self.node.send(op="subscribe", client=client, channel=channel, bind=[])
        await self.node.wait_for(
            match("event", client, channel=channel, event="pusher:subscription_succeeded"),
            f"{client!r} subscribed to {channel!r}",
        )

    def events(self, client: str, channel: str, event: str) -> list[dict[str, Any]]:
        return self.node.matching(match("event", client, channel=channel, event=event))

    async def rest(self, index: int, method: str, *args: Any) -> dict[str, Any]:
        result = await self.node.call_sdk(method, *args, sdk=f"n{index}")
        self.case.assertTrue(result.get("ok", True), result)
        return result

    async def settle(self, seconds: float = 0.5) -> None:
        from twisted.internet import reactor

        await task.deferLater(reactor, seconds)

    async def until(self, check: Any, what: str, within: float = 10.0) -> None:
        """
        Poll an async C{check} until it returns true.
        """
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if await check():
                return
            await self.settle(0.1)
        self.case.fail(f"timed out waiting for {what}\n{self.node.report()}")


class ClusterTests(TestCase):
    """
    Three nodes, one Pusher service.
    """

    timeout = 120

    def setUp(self) -> None:
        require_redis(self)

    async def test_delivery_presence_and_rest_across_nodes(self) -> None:
        """
        Events triggered on any node reach every node's subscribers exactly
        once with socket_id exclusion honoured; presence is per user across
        nodes; REST answers for the whole cluster.
        """
        c = await Cluster.start(self)
        channel = "presence-cluster"
        await c.connect("a", 0, {"user_id": "1", "user_info": {"name": "Ann"}})
        await c.connect("a2", 1, {"user_id": "1", "user_info": {"name": "Ann"}})
        socket_b = await c.connect("b", 2, {"user_id": "2", "user_info": {"name": "Bob"}})
        await c.subscribe("a", channel)
        await c.subscribe("a2", channel)
        await c.subscribe("b", channel)
        members = await c.node.wait_for(
            match("members", "b", channel=channel, after="pusher:subscription_succeeded"),
            "b's member list",
        )
        self.assertEqual(members["count"], 2, members)
        await c.settle()
        self.assertEqual(len(c.events("a", channel, "pusher:member_added")), 1)
        self.assertEqual(len(c.events("b", channel, "pusher:member_added")), 0)

        for seq in range(3):
            for i in range(3):
                await c.rest(i, "trigger", channel, "ping", {"from": i, "seq": seq})
        await c.rest(0, "trigger", channel, "not-for-b", {"x": 1}, {"socket_id": socket_b})
        await c.node.wait_for(match("event", "a2", channel=channel, event="not-for-b"), "a2")
        await c.node.wait_for(match("event", "a", channel=channel, event="not-for-b"), "a")
        await c.settle()
        for client in ("a", "a2", "b"):
            got = [(e["data"]["from"], e["data"]["seq"]) for e in c.events(client, channel, "ping")]
            self.assertEqual(len(got), 9, f"{client}: {got}")
            for publisher in range(3):
                # Exactly once each, in order per publisher (no order is
                # promised between different publishers).
                self.assertEqual(
                    [seq for origin, seq in got if origin == publisher], [0, 1, 2], got
                )
        self.assertEqual(c.events("b", channel, "not-for-b"), [])

        info = await c.rest(
            2,
            "get",
            {"path": f"/channels/{channel}", "params": {"info": "user_count,subscription_count"}},
        )
        self.assertEqual(info["body"]["user_count"], 2, info)
        self.assertEqual(info["body"]["subscription_count"], 3, info)
        users = await c.rest(1, "get", {"path": f"/channels/{channel}/users"})
        self.assertEqual(sorted(u["id"] for u in users["body"]["users"]), ["1", "2"])
        listed = await c.rest(0, "get", {"path": "/channels"})
        self.assertIn(channel, listed["body"]["channels"])

        # The user's connection on node 1 leaves: no member_removed while
        # the same user is still on node 0; then node 0's leaves too.
        c.node.send(op="disconnect", client="a2")
        await c.settle(1.0)
        self.assertEqual(c.events("b", channel, "pusher:member_removed"), [])
        c.node.send(op="disconnect", client="a")
        removed = await c.node.wait_for(
            match("event", "b", channel=channel, event="pusher:member_removed"), "member_removed"
        )
        self.assertEqual(removed["data"]["id"], "1")

    async def test_server_to_user_and_terminate_reach_every_node(self) -> None:
        """
        C{sendToUser} and C{terminateUserConnections} sent to one node reach
        the user's connections on the other nodes, and no one else.
        """
        c = await Cluster.start(self)
        for client, index, user in (("u0", 0, "cluster-user"), ("u1", 1, "cluster-user")):
            await c.connect(client, index, user={"id": user})
        await c.connect("other", 2, user={"id": "someone-else"})
        for client, user in (
            ("u0", "cluster-user"),
            ("u1", "cluster-user"),
            ("other", "someone-else"),
        ):
            c.node.send(op="signin", client=client)
            await c.node.wait_for(
                match(
                    "message",
                    client,
                    event="pusher_internal:subscription_succeeded",
                    channel=f"#server-to-user-{user}",
                ),
                f"{client} signed in",
            )
        sent = await c.rest(2, "sendToUser", "cluster-user", "direct", {"hi": True})
        self.assertEqual(sent["status"], 200, sent)
        for client in ("u0", "u1"):
            await c.node.wait_for(match("user_event", client, event="direct"), f"{client} event")
        terminated = await c.rest(2, "terminateUserConnections", "cluster-user")
        self.assertEqual(terminated["status"], 200, terminated)
        for client in ("u0", "u1"):
            await c.node.wait_for(
                match("state", client, previous="connected"), f"{client} to be dropped"
            )
        await c.settle(0.5)
        self.assertEqual(c.node.matching(match("user_event", "other", event="direct")), [])
        self.assertEqual(c.node.matching(match("state", "other", previous="connected")), [])

    async def test_sigkill_node_heals(self) -> None:
        """
        A node killed with SIGKILL: within node_timeout the survivors send
        the member_removed its users never said, and counts heal.
        """
        c = await Cluster.start(self, node_timeout_ms=3000, heartbeat_interval_ms=500)
        channel = "presence-crash"
        await c.connect("a", 0, {"user_id": "alive", "user_info": {}})
        await c.connect("z", 2, {"user_id": "ghost", "user_info": {}})
        await c.subscribe("a", channel)
        await c.subscribe("z", channel)
        await c.node.wait_for(
            match("event", "a", channel=channel, event="pusher:member_added"), "ghost joins"
        )
        c.servers[2]._transport.signalProcess("KILL")
        killed_at = time.monotonic()
        removed = await c.node.wait_for(
            match("event", "a", channel=channel, event="pusher:member_removed"),
            "the dead node's member to be removed",
            within=10,
        )
        elapsed = time.monotonic() - killed_at
        self.assertEqual(removed["data"]["id"], "ghost")
        self.assertLess(elapsed, 3.0 + 1.5, f"took {elapsed:.1f}s")
        users = await c.rest(1, "get", {"path": f"/channels/{channel}/users"})
        self.assertEqual([u["id"] for u in users["body"]["users"]], ["alive"])
        await c.settle(1.0)
        self.assertEqual(len(c.events("a", channel, "pusher:member_removed")), 1)

    async def test_redis_outage_and_return(self) -> None:
        """
        Redis killed: nodes keep serving local clients and report it in
        /up; Redis back on the same port: cluster traffic resumes without a
        restart, and presence changes made meanwhile reach the other node.
        """
        redis_server = PrivateRedis(self)
        await redis_server.start()
        # A short heartbeat: member events held through the outage are
        # re-checked each beat until the other node has resubscribed (its
        # reconnect backoff alone may take 10 s), so the default 7.5 s beat
        # could outlast the wait below. The node timeout stays long, so the
        # announcement waits for the listener instead of giving up on it.
        c = await Cluster.start(
            self, nodes=2, redis_port=redis_server.port, heartbeat_interval_ms=500
        )
        await c.connect("a", 0, {"user_id": "a", "user_info": {}})
        await c.connect("b", 1, {"user_id": "b", "user_info": {}})
        await c.subscribe("a", "presence-o")
        await c.subscribe("b", "presence-o")
        await c.rest(0, "trigger", "presence-o", "before", {})
        await c.node.wait_for(match("event", "b", channel="presence-o", event="before"), "before")
        # Let a few heartbeats pass so each node has counted the other: that
        # count is how many listeners a node waits for before announcing what
        # the others missed once Redis comes back empty.
        await c.settle(1.5)

        await redis_server.kill_and_wait()

        async def node0_degraded() -> bool:
            status, _ = await http_get("127.0.0.1", c.servers[0].port, "/up")
            return status == 503

        await c.until(node0_degraded, "/up to report the Redis outage")
        await c.rest(0, "trigger", "presence-o", "during", {})
        await c.node.wait_for(
            match("event", "a", channel="presence-o", event="during"), "local delivery"
        )
        await c.connect("a2", 0, {"user_id": "late", "user_info": {}})
        await c.subscribe("a2", "presence-o")

        await redis_server.start()

        async def node0_up() -> bool:
            status, _ = await http_get("127.0.0.1", c.servers[0].port, "/up")
            return status == 200

        await c.until(node0_up, "/up to recover", within=20)
        await c.until(
            lambda: _true_when(c.events("b", "presence-o", "pusher:member_added")),
            "node 1's client to learn about the member who joined during the outage",
            within=15,
        )
        # Redis came back empty, so every node re-announces its members:
        # "a" may be announced again (a duplicate pusher-js ignores).
        self.assertIn(
            "late",
            [e["data"]["id"] for e in c.events("b", "presence-o", "pusher:member_added")],
        )
        await c.until(
            lambda: _true_when(
                c.node.matching(
                    lambda o: (
                        o["type"] == "members"
                        and o.get("client") == "b"
                        and {m["id"] for m in o["members"]} == {"a", "b", "late"}
                    )
                )
            ),
            "node 1's client to list every member",
            within=15,
        )

        async def delivered() -> bool:
            await c.rest(0, "trigger", "presence-o", "after", {})
            await c.settle(0.3)
            return bool(c.events("b", "presence-o", "after"))

        await c.until(delivered, "cross-node delivery to resume", within=15)
        self.assertEqual(c.events("b", "presence-o", "during"), [])
        for server in c.servers:
            self.assertEqual(
                server.log_tail(400).count("Redis command connection lost"), 1, server.log_tail()
            )


async def _true_when(items: list[Any]) -> bool:
    """
    Turn a list into an awaitable truth value for L{Cluster.until}.
    """
    return len(items) >= 1
