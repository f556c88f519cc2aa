"""
The Redis adapter under Redis faults: a fault never escapes into the
protocol, and presence converges once Redis is back.

Unit tests run the real WebSocket glue on the protocol-level fake Redis
(L{tests.fake_redis}). Integration tests run two C{twistd sockudo} daemons
on a private C{redis-server} they stop (SIGSTOP), kill (SIGKILL), restart
empty and FLUSHALL, with pusher-js clients (the interop driver) whose
presence lists and C{GET /apps/{id}/channels/{ch}/users} on every node must
converge. Without redis-server or Node they fail under C{CI=true} and skip
otherwise.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sockudo_tw.adapters.local import LocalAdapter
from sockudo_tw.adapters.redis import RedisAdapter
from sockudo_tw.appstores import MemoryAppStore
from sockudo_tw.caches import MemoryChannelCache
from sockudo_tw.pusher.app import App
from sockudo_tw.websocket import PusherFactory
from tests.interop_harness import match, require_node
from tests.test_redis_adapter import Cluster
from tests.test_redis_cluster import Cluster as DaemonCluster
from tests.test_redis_cluster import PrivateRedis
from tests.test_websocket import sub
from tests.wsclient import KEY, SECRET, WSClient

CHANNEL = "presence-faults"


class GlueNode:
    """
    One node: the real WebSocket glue on a L{RedisAdapter} on the fake Redis.
    """

    def __init__(self, cluster: Cluster, node_id: str) -> None:
        self.cluster = cluster
        self.adapter = RedisAdapter(
            cluster.reactor,
            TCP4ClientEndpoint(cluster.reactor, "127.0.0.1", 6379),
            cluster.options,
            local=LocalAdapter(),
            node_id=node_id,
        )
        cluster.nodes.append(self.adapter)
        self.adapter.startService()
        cluster.flush()
        self.factory = PusherFactory(
            reactor=cluster.reactor,
            app_store=MemoryAppStore([App(id="app", key=KEY, secret=SECRET)]),
            adapter=self.adapter,
            cache=MemoryChannelCache(cluster.reactor),
        )

    def connect(self) -> WSClient:
        client = WSClient(self.factory, f"/app/{KEY}?protocol=7")
        self.cluster.reactor.advance(0)
        client.pump()
        return client


def join(client: WSClient, user_id: str) -> list[Any]:
    """
    Subscribe C{client} to the presence channel as C{user_id}.
    """
    return sub(client, CHANNEL, json.dumps({"user_id": user_id}))


def events_named(client: WSClient, name: str) -> list[Any]:
    """
    The frames C{client} got with this event name (after the end of the
    reactor turn, when corked writes leave).
    """
    client.factory.reactor.advance(0)
    client.pump()
    return [f for f in client.frames if f.get("event") == name]


class GlueFaultTests(SynchronousTestCase):
    """
    The command connection dies while a subscribe or a disconnect waits for
    Redis: txredisapi fails the pending replies and raises on any new
    command from inside their callbacks; the protocol still completes.
    """

    def hang_scripts(self, cluster: Cluster) -> None:
        """
        Redis accepts scripts but never answers them (a stalled server).
        """

        def hung(protocol: object, name: str, args: list[bytes]) -> object:
            return name not in ("EVALSHA", "EVAL")

        cluster.server.on_command = hung

    def test_subscribe_completes_when_redis_dies_mid_join(self) -> None:
        """
        A presence subscribe waiting on a stalled Redis gets
        subscription_succeeded (from local state) when the connection is
        aborted, and the other local member hears member_added.
        """
        cluster = Cluster(self)
        node = GlueNode(cluster, "A")
        watcher, joiner = node.connect(), node.connect()
        join(watcher, "w")
        cluster.flush()
        self.assertEqual(len(events_named(watcher, "pusher_internal:subscription_succeeded")), 1)
        self.hang_scripts(cluster)
        join(joiner, "j")
        cluster.flush()
        self.assertEqual(events_named(joiner, "pusher_internal:subscription_succeeded"), [])
        cluster.server.accepting = False
        cluster.server.drop_connections()
        cluster.flush()
        succeeded = events_named(joiner, "pusher_internal:subscription_succeeded")
        self.assertEqual(len(succeeded), 1)
        self.assertEqual(
            set(json.loads(succeeded[0]["data"])["presence"]["ids"]), {"w", "j"}, succeeded
        )
        self.assertEqual(len(events_named(watcher, "pusher_internal:member_added")), 1)
        self.assertGreater(node.adapter.link.dropped, 0)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_disconnect_completes_when_redis_dies_mid_cleanup(self) -> None:
        """
        A disconnect whose cleanup waits on a stalled Redis still sends
        member_removed to the local subscribers when the connection is
        aborted, and the member is gone from local state.
        """
        cluster = Cluster(self)
        node = GlueNode(cluster, "A")
        watcher, leaver = node.connect(), node.connect()
        join(watcher, "w")
        join(leaver, "l")
        cluster.flush()
        watcher.pump()
        self.hang_scripts(cluster)
        leaver.disconnect()
        cluster.reactor.advance(0)
        cluster.flush()
        self.assertEqual(events_named(watcher, "pusher_internal:member_removed"), [])
        cluster.server.accepting = False
        cluster.server.drop_connections()
        cluster.flush()
        removed = events_named(watcher, "pusher_internal:member_removed")
        self.assertEqual([json.loads(f["data"])["user_id"] for f in removed], ["l"])
        self.assertEqual(set(node.adapter.local.registry.members("app", CHANNEL)), {"w"})
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_link_never_raises_while_closing(self) -> None:
        """
        While txredisapi tears a connection down (it raises
        C{ConnectionError("Not connected")} for any new command), publish
        drops and counts, and a command fails instead of raising.
        """
        from sockudo_tw.adapters._redis_link import RedisUnavailableError

        cluster = Cluster(self)
        adapter = cluster.node("A")
        adapter.link.commands.protocol.connected = 0
        self.assertFalse(adapter.link.publish(b"x"))
        self.assertEqual(adapter.link.dropped, 1)
        self.failureResultOf(adapter.link.command("PING"), RedisUnavailableError)
        adapter.broadcast("app", "ch", b"{}", None)
        self.assertEqual(adapter.link.dropped, 2)


# -- integration: real redis-server, two daemons, pusher-js -----------------

# Small timeouts so a test runs in seconds: heartbeat period 0.5 s, node
# timeout 3 s, cluster requests 2 s (set by the daemon cluster harness).
HEARTBEAT_MS = 500
NODE_TIMEOUT_MS = 3000
# The bound the README states, for these settings: once Redis answers
# again, a node reconnects within its reconnect cap (max(1 s, period)) plus
# 1 s of jitter, then every node reconciles at its next heartbeat (one
# period); after a FLUSHALL (no reconnect) two heartbeat periods. Slack for
# a loaded 2-core machine on top.
PERIOD = min(HEARTBEAT_MS, NODE_TIMEOUT_MS / 4) / 1000
RESTART_BOUND = max(1.0, PERIOD) + 1.0 + PERIOD
FLUSH_BOUND = 2 * PERIOD
SLACK = 2.0


def redis_command(port: int, *args: str) -> bytes:
    """
    Send one command to Redis and return the raw reply.
    """
    wire = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(wire)
        return s.recv(4096)


class ConvergenceTests(TestCase):
    """
    Two nodes, three presence members; a Redis fault during which one
    member joins and one leaves; then every client's list and every node's
    C{GET .../users} must reach the truth within the stated bound.
    """

    timeout = 120

    async def start(self) -> tuple[DaemonCluster, PrivateRedis]:
        require_node(self)
        redis_server = PrivateRedis(self)
        await redis_server.start()
        # Runs after the daemons stop: wait for the process to be reaped.
        self.addCleanup(lambda: Deferred.fromCoroutine(redis_server.kill_and_wait()))
        c = await DaemonCluster.start(
            self,
            nodes=2,
            redis_port=redis_server.port,
            node_timeout_ms=NODE_TIMEOUT_MS,
            heartbeat_interval_ms=HEARTBEAT_MS,
        )
        await self.join(c, "a", 0)
        await self.join(c, "gone", 0)
        await self.join(c, "b", 1)
        await self.until_converged(c, {"a", "gone", "b"}, ["a", "gone", "b"], within=10)
        # A few heartbeats, so each node has counted the other.
        await c.settle(1.0)
        return c, redis_server

    async def join(self, c: DaemonCluster, user: str, index: int) -> None:
        await c.connect(user, index, {"user_id": user, "user_info": {"name": user}})
        await c.subscribe(user, CHANNEL)

    def members(self, c: DaemonCluster, client: str) -> set[str] | None:
        """
        The client's current presence list (pusher-js's, reported after
        every presence event).
        """
        seen = c.node.matching(match("members", client, channel=CHANNEL))
        if not seen:
            return None
        return {m["id"] for m in seen[-1]["members"]}

    async def until_converged(
        self, c: DaemonCluster, truth: set[str], clients: list[str], within: float
    ) -> float:
        """
        Poll until every client's list and every node's users endpoint say
        C{truth}; return how long it took.
        """
        started = time.monotonic()
        deadline = started + within
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            state = {client: self.members(c, client) for client in clients}
            for index in range(len(c.servers)):
                try:
                    users = await c.node.call_sdk(
                        "get", {"path": f"/channels/{CHANNEL}/users"}, sdk=f"n{index}"
                    )
                    state[f"node{index}"] = {u["id"] for u in users["body"]["users"]}
                except Exception as e:
                    state[f"node{index}"] = repr(e)
            if all(value == truth for value in state.values()):
                return time.monotonic() - started
            await c.settle(0.1)
        self.fail(f"no convergence to {sorted(truth)} within {within}s: {state}")

    async def fault_window(self, c: DaemonCluster) -> None:
        """
        While Redis is faulty: a member joins on node 1 (and must get
        subscription_succeeded), a member leaves node 0 (whose other client
        must get member_removed).
        """
        await self.join(c, "c", 1)
        c.node.send(op="disconnect", client="gone")
        await c.node.wait_for(
            match("event", "a", channel=CHANNEL, event="pusher:member_removed"),
            "member_removed sent locally during the fault",
            within=10,
        )

    async def test_stall_past_node_timeout_then_kill(self) -> None:
        """
        Redis stopped (SIGSTOP) for longer than the node timeout, then
        killed and started again empty.
        """
        c, redis_server = await self.start()
        redis_server.process.signalProcess(signal.SIGSTOP)
        stopped = time.monotonic()
        await self.fault_window(c)
        await c.settle(max(0.0, NODE_TIMEOUT_MS / 1000 + 0.5 - (time.monotonic() - stopped)))
        await redis_server.kill_and_wait()
        await redis_server.start()
        took = await self.until_converged(c, {"a", "b", "c"}, ["a", "b", "c"], within=30)
        print(f"\nconverged {took:.2f}s after Redis restarted (stall + kill)")
        self.assertLess(took, RESTART_BOUND + SLACK)

    async def test_restart_empty(self) -> None:
        """
        Redis killed, changes made meanwhile, started again empty.
        """
        c, redis_server = await self.start()
        await redis_server.kill_and_wait()
        await self.fault_window(c)
        await redis_server.start()
        took = await self.until_converged(c, {"a", "b", "c"}, ["a", "b", "c"], within=30)
        print(f"\nconverged {took:.2f}s after Redis restarted empty")
        self.assertLess(took, RESTART_BOUND + SLACK)

    async def test_flushall(self) -> None:
        """
        Redis flushed while up; changes made right after.
        """
        c, redis_server = await self.start()
        self.assertEqual(redis_command(redis_server.port, "FLUSHALL"), b"+OK\r\n")
        flushed = time.monotonic()
        await self.fault_window(c)
        took = await self.until_converged(c, {"a", "b", "c"}, ["a", "b", "c"], within=30)
        since = time.monotonic() - flushed
        print(f"\nconverged {since:.2f}s after FLUSHALL ({took:.2f}s after the changes)")
        self.assertLess(since, FLUSH_BOUND + SLACK)

    async def test_stall_past_node_timeout_then_resume(self) -> None:
        """
        Redis stopped (SIGSTOP) for longer than the node timeout, then
        resumed with its data: every node's deadline has passed, yet no
        node purges another (they all come back within the reconnect
        grace), so no member is announced as gone, and the changes made
        meanwhile converge.
        """
        c, redis_server = await self.start()
        redis_server.process.signalProcess(signal.SIGSTOP)
        stopped = time.monotonic()
        await self.fault_window(c)
        await c.settle(max(0.0, NODE_TIMEOUT_MS / 1000 + 0.5 - (time.monotonic() - stopped)))
        redis_server.process.signalProcess(signal.SIGCONT)
        took = await self.until_converged(c, {"a", "b", "c"}, ["a", "b", "c"], within=30)
        print(f"\nconverged {took:.2f}s after Redis resumed")
        self.assertLess(took, RESTART_BOUND + SLACK)
        await c.settle(2 * PERIOD)
        removed = c.node.matching(
            lambda o: o["type"] == "event" and o["event"] == "pusher:member_removed"
        )
        self.assertEqual({e["data"]["id"] for e in removed}, {"gone"}, removed)

    async def test_flushall_quiet(self) -> None:
        """
        Redis flushed with no change afterwards: nodes notice at their next
        heartbeat and write everything back; the users endpoints, empty
        right after the flush, list every member again.
        """
        c, redis_server = await self.start()
        self.assertEqual(redis_command(redis_server.port, "FLUSHALL"), b"+OK\r\n")
        took = await self.until_converged(
            c, {"a", "gone", "b"}, ["a", "gone", "b"], within=FLUSH_BOUND + SLACK + 5
        )
        print(f"\nconverged {took:.2f}s after a quiet FLUSHALL")
        self.assertLess(took, FLUSH_BOUND + SLACK)
