"""
Unit tests for the Redis cluster adapter and its link, against the
protocol-level fake Redis in L{tests.fake_redis} (real Lua through
fakeredis), on a L{MemoryReactorClock}: deterministic, no sockets.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from sockudo_tw.adapters import IAdapter, ILocalSocket
from sockudo_tw.adapters._redis_link import RedisUnavailableError
from sockudo_tw.adapters.local import LocalAdapter
from sockudo_tw.adapters.redis import (
    RedisAdapter,
    RedisNodeOptions,
    RedisServer,
    parse_redis_url,
)
from sockudo_tw.hooks import NoPusherEvents
from sockudo_tw.pusher import events
from sockudo_tw.pusher.presence import PresenceMember
from tests.fake_redis import FakeRedisServer, encode_reply, parse_requests


@implementer(ILocalSocket)
class FakeSocket:
    """
    A client connection that records what it is sent.
    """

    def __init__(self, socket_id: str) -> None:
        self.socket_id = socket_id
        self.frames: list[bytes] = []
        self.closed: list[tuple[int, str]] = []

    def send_frame(self, frame: bytes) -> None:
        self.frames.append(frame)

    def send_wire(self, wire: bytes) -> None:
        self.frames.append(wire)

    def close(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))


class RecordingEvents(NoPusherEvents):
    """
    An observer that records the cluster transitions it is told about.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def channel_occupied(self, app_id: str, channel: str) -> None:
        self.calls.append(("occupied", app_id, channel))

    def channel_vacated(self, app_id: str, channel: str) -> None:
        self.calls.append(("vacated", app_id, channel))

    def member_removed(self, app_id: str, channel: str, user_id: str) -> None:
        self.calls.append(("member_removed", app_id, channel, user_id))


class Cluster:
    """
    Nodes sharing one fake Redis and one memory reactor.
    """

    def __init__(self, case: SynchronousTestCase, **options: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.server = FakeRedisServer(self.reactor, password=options.pop("server_password", None))
        self.server.patch_time(case.patch)
        self.options = RedisNodeOptions(
            prefix="t:",
            heartbeat_interval=1.0,
            node_timeout=4.0,
            requests_timeout=2.0,
            ping_interval=5.0,
            ping_timeout=2.0,
            **options,
        )
        self.nodes: list[RedisAdapter] = []
        self.events: dict[str, RecordingEvents] = {}
        case.addCleanup(self.stop)

    def node(self, node_id: str, start: bool = True) -> RedisAdapter:
        events = RecordingEvents()
        self.events[node_id] = events
        adapter = RedisAdapter(
            self.reactor,
            TCP4ClientEndpoint(self.reactor, "127.0.0.1", 6379),
            self.options,
            local=LocalAdapter(events, framer=lambda frame: frame),
            node_id=node_id,
        )
        self.nodes.append(adapter)
        if start:
            adapter.startService()
            self.flush()
        return adapter

    def flush(self) -> None:
        self.server.flush(self.reactor)

    def advance(self, seconds: float, step: float = 0.1) -> None:
        for _ in range(round(seconds / step)):
            self.reactor.advance(step)
            self.flush()

    def result(self, d: Deferred[Any]) -> Any:
        self.flush()
        box: list[Any] = []
        d.addBoth(box.append)
        assert box, "no result"
        if hasattr(box[0], "raiseException"):
            box[0].raiseException()
        return box[0]

    def stop(self) -> None:
        for node in self.nodes:
            if node.running:
                node.stopService()
        self.flush()

    def keys(self) -> dict[bytes, Any]:
        import fakeredis

        r = fakeredis.FakeStrictRedis(server=self.server.data)
        out: dict[bytes, Any] = {}
        for key in r.keys("t:*"):
            kind = r.type(key)
            if kind == b"hash":
                out[key] = r.hgetall(key)
            elif kind == b"zset":
                out[key] = r.zrange(key, 0, -1)
            else:
                out[key] = r.get(key)
        return out


def believed(frames: list[bytes], members: set[str]) -> set[str]:
    """
    The member list a client holds after C{frames}, starting from
    C{members}, as pusher-js keeps it (member events are idempotent).
    """
    out = set(members)
    for frame in frames:
        message = json.loads(frame)
        if message["event"] == "pusher_internal:member_added":
            out.add(json.loads(message["data"])["user_id"])
        elif message["event"] == "pusher_internal:member_removed":
            out.discard(json.loads(message["data"])["user_id"])
    return out


def connect(node: RedisAdapter, socket_id: str, app_id: str = "app") -> FakeSocket:
    socket = FakeSocket(socket_id)
    node.add_socket(app_id, socket)
    return socket


class FakeRedisTests(SynchronousTestCase):
    """
    The fake server's RESP handling, which every other test relies on.
    """

    def test_parse_byte_by_byte(self) -> None:
        """
        A command delivered one byte at a time is parsed once, complete.
        """
        wire = b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$5\r\nhe\r\nl\r\n"
        buffer = bytearray()
        parsed: list[list[bytes]] = []
        for i in range(len(wire)):
            buffer.extend(wire[i : i + 1])
            parsed += parse_requests(buffer)
        self.assertEqual(parsed, [[b"PUBLISH", b"ch", b"he\r\nl"]])
        self.assertEqual(buffer, b"")

    def test_encode_reply(self) -> None:
        """
        Replies are RESP2: bulk strings, integers, nil, nested arrays.
        """
        self.assertEqual(
            encode_reply([b"a", 1, None, [b""]]), b"*4\r\n$1\r\na\r\n:1\r\n$-1\r\n*1\r\n$0\r\n\r\n"
        )


class LinkTests(SynchronousTestCase):
    """
    The two connections: setup, outage, keepalive, bounded buffering.
    """

    def test_connects_both_sides(self) -> None:
        """
        A started node loads its scripts, subscribes to the bus and reports
        itself up.
        """
        cluster = Cluster(self)
        node = cluster.node("A")
        self.assertTrue(node.link.is_up)
        self.assertEqual(node.link.state, "up")
        names = [entry[0] for entry in cluster.server.log]
        self.assertEqual(names.count("SCRIPT"), 3)
        self.assertIn(["SUBSCRIBE", b"t:#bus"], cluster.server.log)
        self.assertTrue(cluster.result(node.health()))

    def test_password(self) -> None:
        """
        With a password, both connections AUTH before anything else.
        """
        cluster = Cluster(self, server_password="s3cret", password="s3cret")
        node = cluster.node("A")
        self.assertTrue(node.link.is_up)
        auths = [entry for entry in cluster.server.log if entry[0] == "AUTH"]
        self.assertEqual(len(auths), 2)

    def test_wrong_password_keeps_retrying(self) -> None:
        """
        A refused AUTH leaves the link down, logged once, still retrying.
        """
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        cluster = Cluster(self, server_password="right", password="wrong")
        node = cluster.node("A")
        self.assertFalse(node.link.is_up)
        cluster.advance(30)
        self.assertFalse(node.link.is_up)
        attempts = [entry for entry in cluster.server.log if entry[0] == "AUTH"]
        self.assertGreater(len(attempts), 4)
        refused = [e for e in logged if "refused" in e.get("log_format", "")]
        self.assertEqual(len(refused), 2)

    def test_outage_logged_once_and_recovers(self) -> None:
        """
        Redis going away is logged once per connection however long it
        lasts and however many messages are sent; publishes are dropped and
        counted, never queued; both connections come back with backoff.
        """
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        cluster = Cluster(self)
        node = cluster.node("A")
        states: list[bool] = []
        node.link.observe_state(states.append)
        cluster.server.accepting = False
        cluster.server.drop_connections()
        cluster.flush()
        self.assertEqual(states, [False])
        self.assertEqual(node.link.state, "down")
        for _ in range(1000):
            node.broadcast("app", "ch", b"{}", None)
        self.assertEqual(node.link.dropped, 1000)
        cluster.advance(60)
        warnings = [e for e in logged if e["log_level"] is LogLevel.warn]
        self.assertEqual(len(warnings), 2, [e["log_format"] for e in warnings])
        self.assertFalse(cluster.result(node.health()))
        cluster.server.accepting = True
        cluster.advance(12)
        self.assertTrue(node.link.is_up)
        self.assertEqual(states, [False, True])
        self.assertEqual(node.link.outages, 1)
        restored = [e for e in logged if "restored" in e.get("log_format", "")]
        self.assertEqual(len(restored), 2)

    def test_unanswered_ping_reconnects(self) -> None:
        """
        A connection whose PING goes unanswered (a hung server, a dead
        peer behind a silent network) is aborted and dialled again.
        """
        cluster = Cluster(self)
        node = cluster.node("A")

        cluster.server.on_command = lambda protocol, name, args: False
        first = node.link.commands.protocol
        cluster.advance(5 + 2 + 0.5)
        self.assertEqual(node.link.state, "down")
        cluster.advance(10)
        self.assertEqual(node.link.state, "down")
        cluster.server.on_command = None
        cluster.advance(15)
        self.assertTrue(node.link.is_up)
        self.assertIsNot(node.link.commands.protocol, first)

    def test_pending_commands_are_bounded(self) -> None:
        """
        While Redis accepts but does not answer, at most C{max_pending}
        commands wait; later publishes are dropped, and commands fail fast.
        """
        cluster = Cluster(self)
        node = cluster.node("A")
        node.link.max_pending = 10
        cluster.server.on_command = lambda protocol, name, args: False
        for _ in range(25):
            node.link.publish(b"x")
        cluster.flush()
        self.assertEqual(node.link.published, 10)
        self.assertEqual(node.link.dropped, 15)
        self.failureResultOf(node.link.command("PING"), RedisUnavailableError)

    def test_script_cache_lost(self) -> None:
        """
        After SCRIPT FLUSH (or a Redis restart behind a proxy) EVALSHA's
        NOSCRIPT falls back to EVAL and the operation still succeeds.
        """
        cluster = Cluster(self)
        node = cluster.node("A")
        cluster.result(node.link.command("SCRIPT", "FLUSH"))
        connect(node, "1.1")
        outcome = cluster.result(
            node.subscribe("app", "presence-x", "1.1", PresenceMember("u1", {}), 0)
        )
        self.assertTrue(outcome.member_added)
        self.assertIn("EVAL", [entry[0] for entry in cluster.server.log])


class DeliveryTests(SynchronousTestCase):
    """
    Broadcasts and terminations across nodes.
    """

    def test_provides_interface(self) -> None:
        """
        L{RedisAdapter} provides L{IAdapter}.
        """
        cluster = Cluster(self)
        self.assertTrue(verifyObject(IAdapter, cluster.node("A")))

    def test_broadcast_reaches_every_node_once(self) -> None:
        """
        An event published on one node reaches subscribers on every node
        exactly once, with one PUBLISH, and the excluded socket gets nothing
        whichever node it is on.
        """
        cluster = Cluster(self)
        a, b, c = cluster.node("A"), cluster.node("B"), cluster.node("C")
        sockets = [connect(n, f"{i}.1") for i, n in enumerate((a, b, c))]
        excluded = connect(b, "9.9")
        for node, socket in zip((a, b, c, b), (*sockets, excluded), strict=True):
            cluster.result(node.subscribe("app", "ch", socket.socket_id, None, 0))
        before = len(cluster.server.log)
        a.broadcast("app", "ch", b'{"n":1}', "9.9")
        a.broadcast("app", "ch", b'{"n":2}', None)
        cluster.flush()
        publishes = [e for e in cluster.server.log[before:] if e[0] == "PUBLISH"]
        self.assertEqual(len(publishes), 2)
        for socket in sockets:
            self.assertEqual(socket.frames, [b'{"n":1}', b'{"n":2}'])
        self.assertEqual(excluded.frames, [b'{"n":2}'])

    def test_terminate_reaches_every_node(self) -> None:
        """
        terminate_user_connections closes the user's sockets on all nodes.
        """
        cluster = Cluster(self)
        a, b = cluster.node("A"), cluster.node("B")
        sa, sb = connect(a, "1.1"), connect(b, "2.2")
        cluster.result(a.sign_in("app", "1.1", "u1", ()))
        cluster.result(b.sign_in("app", "2.2", "u1", ()))
        b.terminate_user_connections("app", "u1")
        cluster.flush()
        self.assertEqual(len(sa.closed), 1)
        self.assertEqual(len(sb.closed), 1)

    def test_unknown_message_ignored(self) -> None:
        """
        A malformed bus message is logged and does not break the link.
        """
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        cluster = Cluster(self)
        a, b = cluster.node("A"), cluster.node("B")
        cluster.server.publish(b"t:#bus", b"Zgarbage")
        cluster.server.publish(b"t:#bus", b"Bmissing-fields")
        cluster.flush()
        self.assertTrue(b.link.is_up)
        self.assertTrue(a.link.is_up)
        self.assertTrue(any(e["log_level"] is LogLevel.warn for e in logged))
        self.flushLoggedErrors(ValueError)


class OneTruthTests(SynchronousTestCase):
    """
    Cluster-wide decisions and queries.
    """

    def test_presence_same_user_two_nodes(self) -> None:
        """
        member_added only for a user's first socket anywhere, member_removed
        only for the last one anywhere; the member list is cluster-wide.
        """
        cluster = Cluster(self)
        a, b = cluster.node("A"), cluster.node("B")
        connect(a, "1.1")
        connect(b, "2.2")
        connect(b, "2.3")
        first = cluster.result(
            a.subscribe("app", "presence-x", "1.1", PresenceMember("u1", {"name": "A"}), 0)
        )
        second = cluster.result(
            b.subscribe("app", "presence-x", "2.2", PresenceMember("u1", {"name": "B"}), 0)
        )
        other = cluster.result(b.subscribe("app", "presence-x", "2.3", PresenceMember("u2", {}), 0))
        self.assertEqual((first.member_added, first.occupied), (True, True))
        self.assertEqual((second.member_added, second.occupied), (False, False))
        self.assertTrue(other.member_added)
        self.assertEqual(other.members, {"u1": {"name": "A"}, "u2": {}})
        left = cluster.result(a.unsubscribe("app", "presence-x", "1.1"))
        self.assertIsNone(left.member_removed)
        self.assertFalse(left.vacated)
        removal = cluster.result(b.remove_socket("app", "2.2"))
        self.assertEqual([o.member_removed for o in removal.unsubscribed], ["u1"])
        self.assertEqual(cluster.result(a.presence_members("app", "presence-x")), {"u2": {}})
        last = cluster.result(b.unsubscribe("app", "presence-x", "2.3"))
        self.assertEqual((last.member_removed, last.vacated), ("u2", True))

    def test_occupancy_decided_once(self) -> None:
        """
        A public channel is occupied and vacated once for the cluster; the
        caller does not wait and the observer hears the decision.
        """
        cluster = Cluster(self)
        a, b = cluster.node("A"), cluster.node("B")
        connect(a, "1.1")
        connect(b, "2.2")
        self.assertFalse(cluster.result(a.subscribe("app", "ch", "1.1", None, 0)).occupied)
        cluster.result(b.subscribe("app", "ch", "2.2", None, 0))
        self.assertFalse(cluster.result(a.unsubscribe("app", "ch", "1.1")).vacated)
        cluster.result(b.remove_socket("app", "2.2"))
        cluster.flush()
        self.assertEqual(cluster.events["A"].calls, [("occupied", "app", "ch")])
        self.assertEqual(cluster.events["B"].calls, [("vacated", "app", "ch")])

    def test_subscribe_does_not_wait_for_public_channels(self) -> None:
        """
        A public subscribe answers before Redis does; a presence subscribe
        waits for the cluster's member list.
        """
        cluster = Cluster(self)
        a = cluster.node("A")
        connect(a, "1.1")
        self.assertTrue(self.successResultOf(a.subscribe("app", "ch", "1.1", None, 0)).accepted)
        pending = a.subscribe("app", "presence-x", "1.1", PresenceMember("u", {}), 0)
        self.assertNoResult(pending)
        cluster.flush()
        self.assertTrue(self.successResultOf(pending).member_added)

    def test_rest_queries_aggregate(self) -> None:
        """
        channels, counts, members and connections answer for the cluster.
        """
        cluster = Cluster(self)
        a, b = cluster.node("A"), cluster.node("B")
        for node, sid in ((a, "1.1"), (a, "1.2"), (b, "2.1")):
            connect(node, sid)
            cluster.result(node.subscribe("app", "ch", sid, None, 0))
        cluster.result(b.subscribe("app", "presence-p", "2.1", PresenceMember("7", [1]), 0))
        connect(b, "3.3", app_id="other")
        self.assertEqual(cluster.result(a.channels("app")), {"ch": 3, "presence-p": 1})
        self.assertEqual(cluster.result(a.channel_subscription_count("app", "ch")), 3)
        self.assertEqual(cluster.result(a.channel_subscription_count("app", "none")), 0)
        self.assertEqual(cluster.result(a.presence_members("app", "presence-p")), {"7": [1]})
        self.assertEqual(cluster.result(a.app_connection_count("app")), 3)
        self.assertEqual(cluster.result(a.app_connection_count("other")), 1)

    def test_presence_limit_is_cluster_wide(self) -> None:
        """
        max_members counts the users of every node; the refused socket is
        left out of the local state too.
        """
        cluster = Cluster(self)
        a, b = cluster.node("A"), cluster.node("B")
        connect(a, "1.1")
        connect(b, "2.2")
        connect(b, "2.3")
        cluster.result(a.subscribe("app", "presence-x", "1.1", PresenceMember("u1", {}), 1))
        refused = cluster.result(
            b.subscribe("app", "presence-x", "2.2", PresenceMember("u2", {}), 1)
        )
        self.assertFalse(refused.accepted)
        same_user = cluster.result(
            b.subscribe("app", "presence-x", "2.3", PresenceMember("u1", {}), 1)
        )
        self.assertTrue(same_user.accepted)
        self.assertEqual(cluster.result(b.channel_subscription_count("app", "presence-x")), 2)
        self.assertEqual(b.local.registry.socket_channels("2.2"), [])


class DeadNodeTests(SynchronousTestCase):
    """
    A node that stops heartbeating (SIGKILL) is cleaned up by a survivor.
    """

    def kill(self, cluster: Cluster, node: RedisAdapter) -> None:
        """
        Stop a node without saying goodbye: no more heartbeats, connections
        cut.
        """
        node._beat.stop()
        node.link._pinger.stop()
        node.link.commands.service.stopService()
        node.link.subscriber.service.stopService()
        cluster.flush()

    def test_survivor_removes_ghosts(self) -> None:
        """
        Within node_timeout the dead node's members are removed: exactly
        one survivor reports member_removed and channel_vacated, and every
        survivor's clients get the member_removed frame; counts heal.
        """
        cluster = Cluster(self)
        a, b, c = cluster.node("A"), cluster.node("B"), cluster.node("C")
        watcher_a, watcher_b = connect(a, "1.1"), connect(b, "2.1")
        for node, socket, user in ((a, watcher_a, "ua"), (b, watcher_b, "ub")):
            cluster.result(
                node.subscribe("app", "presence-x", socket.socket_id, PresenceMember(user, {}), 0)
            )
        connect(c, "3.1")
        connect(c, "3.2")
        cluster.result(c.subscribe("app", "presence-x", "3.1", PresenceMember("uc", {}), 0))
        cluster.result(c.subscribe("app", "lonely", "3.2", None, 0))
        watcher_a.frames.clear()
        watcher_b.frames.clear()
        self.kill(cluster, c)
        cluster.advance(4.0)
        removed = events.member_removed("presence-x", "uc")
        self.assertEqual(watcher_a.frames, [removed])
        self.assertEqual(watcher_b.frames, [removed])
        reports = cluster.events["A"].calls + cluster.events["B"].calls
        self.assertEqual(
            sorted(reports),
            [("member_removed", "app", "presence-x", "uc"), ("vacated", "app", "lonely")],
        )
        self.assertEqual(a.purged_nodes + b.purged_nodes, 1)
        self.assertEqual(cluster.result(a.channels("app")), {"presence-x": 2})
        self.assertEqual(cluster.result(a.app_connection_count("app")), 2)
        self.assertNotIn(b"t:n:C", cluster.keys())

    def test_stalled_node_comes_back(self) -> None:
        """
        A node declared dead while it was only stalled (its members were
        announced as gone) re-registers at its next heartbeat and its
        members are announced again to the other nodes.
        """
        cluster = Cluster(self)
        a, c = cluster.node("A"), cluster.node("C")
        watcher = connect(a, "1.1")
        cluster.result(a.subscribe("app", "presence-x", "1.1", PresenceMember("ua", {}), 0))
        connect(c, "3.1")
        cluster.result(c.subscribe("app", "presence-x", "3.1", PresenceMember("uc", {"k": 1}), 0))
        watcher.frames.clear()
        c._beat.stop()
        cluster.advance(4.0)
        self.assertEqual(watcher.frames, [events.member_removed("presence-x", "uc")])
        c._beat.start(c.options.period, now=True)
        cluster.flush()
        self.assertEqual(watcher.frames[1:], [events.member_added("presence-x", "uc", {"k": 1})])
        self.assertEqual(
            cluster.result(a.presence_members("app", "presence-x")), {"ua": {}, "uc": {"k": 1}}
        )

    def test_forget_known_dead_node(self) -> None:
        """
        A node its supervisor saw exit is removed at once, before its
        deadline: the survivors' clients get member_removed, the
        occupancy is reported once, and forgetting it again (or a live
        node's own id) does nothing.
        """
        cluster = Cluster(self)
        a, c = cluster.node("A"), cluster.node("C")
        watcher = connect(a, "1.1")
        cluster.result(a.subscribe("app", "presence-x", "1.1", PresenceMember("ua", {}), 0))
        connect(c, "3.1")
        cluster.result(c.subscribe("app", "presence-x", "3.1", PresenceMember("uc", {}), 0))
        watcher.frames.clear()
        self.kill(cluster, c)
        self.assertTrue(cluster.result(a.forget_node(c.node_id)))
        cluster.flush()
        self.assertEqual(watcher.frames, [events.member_removed("presence-x", "uc")])
        self.assertEqual(cluster.events["A"].calls, [("member_removed", "app", "presence-x", "uc")])
        self.assertEqual(cluster.result(a.presence_members("app", "presence-x")), {"ua": {}})
        self.assertFalse(cluster.result(a.forget_node(c.node_id)))
        self.assertFalse(cluster.result(a.forget_node(a.node_id)))
        cluster.advance(40)
        self.assertEqual(a.purged_nodes, 1)

    def test_not_purged_while_alive(self) -> None:
        """
        Live nodes heartbeat faster than their deadline: no purge ever.
        """
        cluster = Cluster(self)
        a, b = cluster.node("A"), cluster.node("B")
        connect(a, "1.1")
        cluster.result(a.subscribe("app", "presence-x", "1.1", PresenceMember("u", {}), 0))
        cluster.advance(30)
        self.assertEqual(a.purged_nodes + b.purged_nodes, 0)
        self.assertEqual(cluster.result(b.presence_members("app", "presence-x")), {"u": {}})

    def test_drained_sockets_leave_with_the_node(self) -> None:
        """
        Once the node drains, a closing socket runs no script: the other
        nodes keep seeing its member until the node's leave, which removes
        everything at once and reports each change exactly once.
        """
        cluster = Cluster(self)
        a, b = cluster.node("A"), cluster.node("B")
        watcher = connect(a, "1.1")
        cluster.result(a.subscribe("app", "presence-x", "1.1", PresenceMember("ua", {}), 0))
        connect(b, "2.1")
        connect(b, "2.2")
        cluster.result(b.subscribe("app", "presence-x", "2.1", PresenceMember("ub", {}), 0))
        cluster.result(b.subscribe("app", "lonely", "2.2", None, 0))
        watcher.frames.clear()
        for recorded in cluster.events.values():
            recorded.calls.clear()
        b.drain()
        for socket_id in ("2.1", "2.2"):
            removal = cluster.result(b.remove_socket("app", socket_id))
            self.assertEqual(
                [(o.vacated, o.member_removed) for o in removal.unsubscribed], [(False, None)]
            )
        self.assertEqual(
            cluster.result(a.presence_members("app", "presence-x")), {"ua": {}, "ub": {}}
        )
        self.assertEqual(watcher.frames, [])
        b.stopService()
        cluster.flush()
        self.assertEqual(watcher.frames, [events.member_removed("presence-x", "ub")])
        self.assertEqual(cluster.result(a.presence_members("app", "presence-x")), {"ua": {}})
        self.assertEqual(cluster.result(a.channels("app")), {"presence-x": 1})
        reports = cluster.events["A"].calls + cluster.events["B"].calls
        self.assertEqual(
            sorted(reports),
            [("member_removed", "app", "presence-x", "ub"), ("vacated", "app", "lonely")],
        )

    def test_graceful_stop_leaves_no_state(self) -> None:
        """
        A node that stops cleanly removes its contribution at once and the
        other nodes' clients see its members leave.
        """
        cluster = Cluster(self)
        a, b = cluster.node("A"), cluster.node("B")
        watcher = connect(a, "1.1")
        cluster.result(a.subscribe("app", "presence-x", "1.1", PresenceMember("ua", {}), 0))
        connect(b, "2.1")
        cluster.result(b.subscribe("app", "presence-x", "2.1", PresenceMember("ub", {}), 0))
        watcher.frames.clear()
        b.stopService()
        cluster.flush()
        self.assertEqual(len(watcher.frames), 1)
        self.assertIn(b"member_removed", watcher.frames[0])
        self.assertEqual(cluster.result(a.presence_members("app", "presence-x")), {"ua": {}})
        self.assertNotIn(b"t:n:B", cluster.keys())


class OutageTests(SynchronousTestCase):
    """
    Redis going away and coming back.
    """

    def test_local_service_continues(self) -> None:
        """
        While Redis is down local broadcasts, subscriptions and queries keep
        working from local state.
        """
        cluster = Cluster(self)
        a = cluster.node("A")
        cluster.server.accepting = False
        cluster.server.drop_connections()
        cluster.flush()
        socket = connect(a, "1.1")
        outcome = cluster.result(
            a.subscribe("app", "presence-x", "1.1", PresenceMember("u", {"x": 1}), 0)
        )
        self.assertTrue(outcome.member_added)
        a.broadcast("app", "presence-x", b"{}", None)
        self.assertEqual(socket.frames, [b"{}"])
        self.assertEqual(cluster.result(a.presence_members("app", "presence-x")), {"u": {"x": 1}})
        self.assertEqual(cluster.result(a.app_connection_count("app")), 1)
        self.assertGreater(a.local_answers, 0)

    def test_resync_after_outage(self) -> None:
        """
        Changes made during the outage reach Redis when it returns, and the
        other nodes' clients get the member events they missed.
        """
        cluster = Cluster(self)
        a, b = cluster.node("A"), cluster.node("B")
        watcher = connect(b, "2.1")
        cluster.result(b.subscribe("app", "presence-x", "2.1", PresenceMember("ub", {}), 0))
        connect(a, "1.1")
        cluster.result(a.subscribe("app", "presence-x", "1.1", PresenceMember("gone", {}), 0))
        watcher.frames.clear()
        # Only A loses Redis: drop its connections and refuse it for a while.
        cluster.server.accepting = False
        for pump in cluster.server.pumps[:2]:
            pump.serverIO.loseConnection()
        cluster.flush()
        self.assertFalse(a.link.is_up)
        self.assertTrue(b.link.is_up)
        cluster.result(a.remove_socket("app", "1.1"))
        connect(a, "1.2")
        cluster.result(a.subscribe("app", "presence-x", "1.2", PresenceMember("new", {"v": 2}), 0))
        self.assertEqual(
            cluster.result(b.presence_members("app", "presence-x")), {"ub": {}, "gone": {}}
        )
        cluster.server.accepting = True
        cluster.advance(12)
        self.assertTrue(a.link.is_up)
        self.assertEqual(
            cluster.result(b.presence_members("app", "presence-x")), {"ub": {}, "new": {"v": 2}}
        )
        kinds = sorted(f.split(b'"event":"', 1)[1].split(b'"', 1)[0] for f in watcher.frames)
        self.assertEqual(
            kinds, [b"pusher_internal:member_added", b"pusher_internal:member_removed"]
        )
        self.assertEqual(cluster.result(b.app_connection_count("app")), 2)

    def test_redis_data_lost(self) -> None:
        """
        If Redis loses its data (FLUSHALL, a restart), changes made before
        a node notices are refused, not applied to a state that is gone:
        they are decided locally, the node writes its whole state back at
        once, and within two heartbeats every node's clients hold the true
        member list: the member who left meanwhile is removed, the client
        who joined meanwhile (with a list of this node's members only)
        learns about the other node's members, and every node re-announces
        its members to the others.
        """
        cluster = Cluster(self)
        a, b = cluster.node("A"), cluster.node("B")
        connect(a, "1.1")
        connect(a, "1.2")
        watcher = connect(b, "2.1")
        cluster.result(a.subscribe("app", "ch", "1.1", None, 0))
        cluster.result(a.subscribe("app", "presence-x", "1.1", PresenceMember("ua", {}), 0))
        cluster.result(a.subscribe("app", "presence-x", "1.2", PresenceMember("leaver", {}), 0))
        cluster.result(b.subscribe("app", "presence-x", "2.1", PresenceMember("ub", {}), 0))
        watcher.frames.clear()
        cluster.result(a.link.command("FLUSHALL"))
        self.assertEqual(cluster.result(a.channels("app")), {})

        late = connect(b, "2.2")
        joined = cluster.result(
            b.subscribe("app", "presence-x", "2.2", PresenceMember("late", {"n": 1}), 0)
        )
        self.assertTrue(joined.accepted)
        self.assertEqual(set(joined.members or {}), {"ub", "late"})
        removal = cluster.result(a.remove_socket("app", "1.2"))
        self.assertEqual([o.member_removed for o in removal.unsubscribed], ["leaver"])
        # What the WebSocket glue does with these local decisions:
        b.broadcast("app", "presence-x", events.member_added("presence-x", "late", {"n": 1}), "2.2")
        a.broadcast("app", "presence-x", events.member_removed("presence-x", "leaver"), None)

        cluster.advance(2.5)
        self.assertEqual(cluster.result(a.channels("app")), {"ch": 1, "presence-x": 3})
        truth = {"ua": {}, "ub": {}, "late": {"n": 1}}
        for node in (a, b):
            self.assertEqual(cluster.result(node.presence_members("app", "presence-x")), truth)
        self.assertEqual(cluster.result(a.app_connection_count("app")), 3)
        self.assertIn(events.member_added("presence-x", "ua", {}), late.frames)
        self.assertNotIn(events.member_added("presence-x", "leaver", {}), late.frames)
        self.assertIn(events.member_removed("presence-x", "leaver"), watcher.frames)
        self.assertEqual(believed(watcher.frames, {"ua", "ub", "leaver"}), set(truth))
        self.assertEqual(believed(late.frames, {"ub", "late"}), set(truth))
        self.assertEqual((a.reconciles, b.reconciles), (1, 1))

    def test_lost_member_removed_is_reconciled(self) -> None:
        """
        A node whose bus connection was down while a member left elsewhere
        (the member_removed never reached it) removes that ghost from its
        clients' lists once it is back.
        """
        cluster = Cluster(self)
        a, b = cluster.node("A"), cluster.node("B")
        watcher = connect(b, "2.1")
        connect(a, "1.1")
        cluster.result(a.subscribe("app", "presence-x", "1.1", PresenceMember("gone", {}), 0))
        cluster.result(b.subscribe("app", "presence-x", "2.1", PresenceMember("ub", {}), 0))
        watcher.frames.clear()
        subscriber = b.link.subscriber.protocol
        for pump in cluster.server.pumps:
            if pump.clientIO is subscriber.transport:
                pump.serverIO.loseConnection()
        cluster.flush()
        self.assertFalse(b.link.subscriber.up)
        removal = cluster.result(a.remove_socket("app", "1.1"))
        self.assertEqual([o.member_removed for o in removal.unsubscribed], ["gone"])
        a.broadcast("app", "presence-x", events.member_removed("presence-x", "gone"), None)
        cluster.flush()
        self.assertEqual(watcher.frames, [])
        cluster.advance(3)
        self.assertTrue(b.link.is_up)
        self.assertEqual(watcher.frames, [events.member_removed("presence-x", "gone")])

    def test_redis_stall_past_node_timeout(self) -> None:
        """
        Redis stops answering for longer than the node timeout, then
        resumes with its data: every deadline has passed, but the nodes,
        all back within the reconnect grace, purge nobody, so no client is
        told that a live member left; the member who joined meanwhile is
        announced.
        """
        cluster = Cluster(self)
        a, b = cluster.node("A"), cluster.node("B")
        watcher_a, watcher_b = connect(a, "1.1"), connect(b, "2.1")
        cluster.result(a.subscribe("app", "presence-x", "1.1", PresenceMember("ua", {}), 0))
        cluster.result(b.subscribe("app", "presence-x", "2.1", PresenceMember("ub", {}), 0))
        watcher_a.frames.clear()
        watcher_b.frames.clear()
        cluster.server.on_command = lambda protocol, name, args: False
        connect(b, "2.2")
        pending = b.subscribe("app", "presence-x", "2.2", PresenceMember("late", {}), 0)
        cluster.advance(cluster.options.node_timeout * 2)
        self.assertTrue(self.successResultOf(pending).accepted)
        self.assertEqual(b.link.state, "down")
        cluster.server.on_command = None
        cluster.advance(5)
        self.assertTrue(a.link.is_up and b.link.is_up)
        self.assertEqual(a.purged_nodes + b.purged_nodes, 0)
        truth = {"ua": {}, "ub": {}, "late": {}}
        self.assertEqual(cluster.result(a.presence_members("app", "presence-x")), truth)
        self.assertNotIn(b"member_removed", b"".join(watcher_a.frames + watcher_b.frames))
        self.assertEqual(believed(watcher_a.frames, {"ua", "ub"}), set(truth))

    def test_resync_announcements_wait_for_listeners(self) -> None:
        """
        After a Redis restart, member events found by a node's resync are
        held until the other nodes are subscribed again, so they are not
        published to nobody.
        """
        cluster = Cluster(self)
        a, b = cluster.node("A"), cluster.node("B")
        watcher = connect(b, "2.1")
        cluster.result(b.subscribe("app", "presence-x", "2.1", PresenceMember("ub", {}), 0))
        cluster.server.accepting = False
        cluster.server.drop_connections()
        cluster.flush()
        connect(a, "1.1")
        cluster.result(a.subscribe("app", "presence-x", "1.1", PresenceMember("late", {}), 0))
        watcher.frames.clear()
        deaf = [True]

        def no_subscribe(protocol: object, name: str, args: list[bytes]) -> object:
            if name == "SUBSCRIBE" and deaf[0]:
                return False
            return True

        cluster.server.on_command = no_subscribe
        cluster.server.accepting = True
        cluster.advance(2.5)
        self.assertTrue(a.link.commands.up)
        self.assertFalse(b.link.subscriber.up)
        self.assertEqual(watcher.frames, [])
        deaf[0] = False
        cluster.advance(5)
        self.assertTrue(b.link.is_up)
        self.assertEqual(watcher.frames, [events.member_added("presence-x", "late", {})])


class ShutdownLogTests(SynchronousTestCase):
    """
    Stopping a node is not an outage.
    """

    def test_stop_logs_no_outage(self) -> None:
        """
        A clean stop closes both connections without an outage warning.
        """
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        cluster = Cluster(self)
        node = cluster.node("A")
        node.stopService()
        cluster.flush()
        self.assertFalse(node.link.commands.up)
        self.assertEqual([e for e in logged if e["log_level"] is LogLevel.warn], [])


class BusMessageTests(SynchronousTestCase):
    """
    The broadcast message on the bus.
    """

    def test_odd_except_socket_id(self) -> None:
        """
        An except_socket_id holding the bus separator cannot corrupt the
        message: the frame arrives intact on the other node.
        """
        cluster = Cluster(self)
        a, b = cluster.node("A"), cluster.node("B")
        socket = connect(b, "2.1")
        cluster.result(b.subscribe("app", "ch", "2.1", None, 0))
        a.broadcast("app", "ch", b'{"x":1}', "1.1\x1fjunk")
        cluster.flush()
        self.assertEqual(socket.frames, [b'{"x":1}'])


class RedisUrlTests(SynchronousTestCase):
    """
    Reading the adapter's Redis URL.
    """

    def test_full_url(self) -> None:
        """
        Credentials (percent-decoded), port, database and TLS are read.
        """
        server = parse_redis_url("rediss://user:p%40ss@redis.internal:6380/2")
        self.assertEqual(server, RedisServer("redis.internal", 6380, 2, "user", "p@ss", tls=True))

    def test_defaults(self) -> None:
        """
        A bare URL means port 6379, no database selection, no TLS.
        """
        self.assertEqual(parse_redis_url("redis://127.0.0.1"), RedisServer("127.0.0.1"))

    def test_refused(self) -> None:
        """
        Another scheme and a non-numeric database are refused clearly
        (more cases in L{tests.test_redisurl}).
        """
        for url in ("http://h:6379", "redis://h/db0"):
            with self.assertRaises(ValueError) as caught:
                parse_redis_url(url)
            self.assertIn(url, str(caught.exception))


class FromConfigTests(SynchronousTestCase):
    """
    Building the adapter from the daemon's configuration.
    """

    def test_options(self) -> None:
        """
        Prefix, timeouts and heartbeats come from C{adapter}; the URL from
        C{REDIS_URL} (or C{adapter.redis.redis_pub_options.url}).
        """
        from sockudo_tw.adapters.redis import redis_adapter_from_config
        from sockudo_tw.config import parse_config

        config = parse_config(
            {
                "adapter": {
                    "driver": "redis",
                    "redis": {"prefix": "p:", "requests_timeout": 1500},
                    "cluster_health": {
                        "heartbeat_interval_ms": 1000,
                        "node_timeout_ms": 6000,
                        "cleanup_interval_ms": 1000,
                    },
                }
            },
            {"REDIS_URL": "redis://:secret@127.0.0.1:6390/3"},
        )
        adapter = redis_adapter_from_config(config, MemoryReactorClock())
        options = adapter.options
        self.assertEqual(
            (options.prefix, options.requests_timeout, options.password, options.db),
            ("p:", 1.5, "secret", 3),
        )
        self.assertEqual((options.period, options.ttl_ms), (1.0, 5000))
        self.assertEqual(adapter.link.channel, b"p:#bus")
