"""
Cluster-wide watchlists on the Redis adapter.

Unit tests run several nodes against the protocol-level fake Redis of
L{tests.fake_redis} (the adapter's real Lua through fakeredis) on one
L{MemoryReactorClock}. L{ScriptWatchTests} runs the APPLY script's
sign-in mode on the real Redis. The integration test starts three
C{twistd sockudo} daemons on the shared Redis with pusher-js clients (the
interop driver) signed in on different nodes, and SIGKILLs one of them.
Without Redis (or Node) those fail under C{CI=true} and skip otherwise.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from twisted.trial.unittest import SynchronousTestCase, TestCase

from sockudo_tw.adapters.redis import APPLY, RedisAdapter
from sockudo_tw.pusher import events
from sockudo_tw.registry import Registry
from tests.test_redis_adapter import Cluster, FakeSocket, connect
from tests.test_redis_cluster import Cluster as DaemonCluster
from tests.test_redis_cluster import delete_keys, require_redis

US = "\x1f"


def online(*user_ids: str) -> bytes:
    """
    The watchlist frame telling a watcher these users came online.
    """
    return events.watchlist_events([("online", list(user_ids))])


def offline(*user_ids: str) -> bytes:
    """
    The watchlist frame telling a watcher these users went offline.
    """
    return events.watchlist_events([("offline", list(user_ids))])


def watch_publishes(cluster: Cluster) -> list[bytes]:
    """
    The watch events published on the bus so far.
    """
    return [
        entry[2]
        for entry in cluster.server.log
        if entry[0] == "PUBLISH" and len(entry) > 2 and entry[2][:1] == b"W"
    ]


def kill(cluster: Cluster, node: RedisAdapter) -> None:
    """
    Stop a node without a goodbye (as SIGKILL would): no more heartbeats,
    connections cut.
    """
    node._beat.stop()
    node.link._pinger.stop()
    node.link.commands.service.stopService()
    node.link.subscriber.service.stopService()
    cluster.flush()


def sign_in(
    cluster: Cluster,
    node: RedisAdapter,
    socket_id: str,
    user_id: str,
    watchlist: tuple[str, ...] = (),
) -> tuple[FakeSocket, Any]:
    """
    Connect a socket to C{node}, sign it in, and return it with the outcome.
    """
    socket = connect(node, socket_id)
    outcome = cluster.result(node.sign_in("app", socket_id, user_id, watchlist))
    return socket, outcome


class RegistryWatchTests(SynchronousTestCase):
    """
    What the local registry tells a cluster adapter about watchlists.
    """

    def test_watchers_and_user_of(self) -> None:
        """
        C{watchers} lists the sockets watching a user by socket id (a copy);
        C{user_of} says who a socket is signed in as.
        """
        registry: Registry[str] = Registry()
        registry.add_socket("app", "1.1", "one")
        registry.add_socket("app", "1.2", "two")
        self.assertIsNone(registry.user_of("1.1"))
        registry.sign_in("app", "1.1", "u1", ("x", "y"))
        self.assertEqual(registry.user_of("1.1"), "u1")
        self.assertIsNone(registry.user_of("nobody"))
        watchers = registry.watchers("app", "x")
        self.assertEqual(watchers, {"1.1": "one"})
        watchers.clear()
        self.assertEqual(registry.watchers("app", "x"), {"1.1": "one"})
        self.assertEqual(registry.watchers("other-app", "x"), {})

    def test_removal_names_user_and_watchlist(self) -> None:
        """
        A removal carries the socket's user and watchlist, which a cluster
        adapter takes out of the cluster's counts.
        """
        registry: Registry[str] = Registry()
        registry.add_socket("app", "1.1", "one")
        registry.sign_in("app", "1.1", "u1", ("x",))
        removal = registry.remove_socket("1.1")
        assert removal is not None
        self.assertEqual((removal.user_id, removal.watchlist), ("u1", ("x",)))
        self.assertEqual(registry.watchers("app", "x"), {})


class WatchlistAcrossNodesTests(SynchronousTestCase):
    """
    Online and offline are cluster-wide facts: a user's first socket
    anywhere and its last socket anywhere.
    """

    def test_online_and_offline_across_nodes(self) -> None:
        """
        A watcher on node A hears C{online} when the watched user signs in
        on node B, nothing when a second socket of that user signs in on
        node C or when one of the two leaves, and C{offline} when the last
        one leaves.
        """
        cluster = Cluster(self)
        a, b, c = cluster.node("A"), cluster.node("B"), cluster.node("C")
        watcher, outcome = sign_in(cluster, a, "1.1", "w", ("x",))
        self.assertEqual((outcome.online, outcome.offline), ((), ("x",)))
        _, first = sign_in(cluster, b, "2.1", "x")
        self.assertTrue(first.came_online)
        self.assertEqual(watcher.frames, [online("x")])
        _, second = sign_in(cluster, c, "3.1", "x")
        self.assertFalse(second.came_online)
        cluster.result(b.remove_socket("app", "2.1"))
        self.assertEqual(watcher.frames, [online("x")])
        cluster.result(c.remove_socket("app", "3.1"))
        self.assertEqual(watcher.frames, [online("x"), offline("x")])

    def test_initial_state_reflects_every_node(self) -> None:
        """
        At sign-in the watched ids online on any node are reported online,
        the others offline, in watchlist order (duplicates once).
        """
        cluster = Cluster(self)
        a, b, c = cluster.node("A"), cluster.node("B"), cluster.node("C")
        sign_in(cluster, b, "2.1", "on-b")
        sign_in(cluster, c, "3.1", "on-c")
        sign_in(cluster, a, "1.2", "on-a")
        _, outcome = sign_in(
            cluster, a, "1.1", "w", ("nobody", "on-c", "on-a", "on-b", "on-c", "w")
        )
        self.assertEqual(outcome.online, ("on-c", "on-a", "on-b", "w"))
        self.assertEqual(outcome.offline, ("nobody",))

    def test_watchers_on_every_node(self) -> None:
        """
        Watchers on several nodes (the signing node included) each hear the
        transition once; the signing socket is not told about itself.
        """
        cluster = Cluster(self)
        a, b = cluster.node("A"), cluster.node("B")
        wa, _ = sign_in(cluster, a, "1.1", "wa", ("x",))
        wb, _ = sign_in(cluster, b, "2.1", "wb", ("x",))
        me, outcome = sign_in(cluster, b, "2.2", "x", ("x",))
        self.assertEqual(outcome.online, ("x",))
        self.assertEqual(wa.frames, [online("x")])
        self.assertEqual(wb.frames, [online("x")])
        self.assertEqual(me.frames, [])
        cluster.result(b.remove_socket("app", "2.2"))
        self.assertEqual(wa.frames, [online("x"), offline("x")])
        self.assertEqual(wb.frames, [online("x"), offline("x")])

    def test_no_publish_when_nobody_watches(self) -> None:
        """
        While no socket of the app has a watchlist, users coming and going
        publish nothing on the bus; once someone watches, they do.
        """
        cluster = Cluster(self)
        a, b = cluster.node("A"), cluster.node("B")
        sign_in(cluster, a, "1.1", "x")
        cluster.result(a.remove_socket("app", "1.1"))
        self.assertEqual(watch_publishes(cluster), [])
        sign_in(cluster, b, "2.1", "w", ("y",))
        sign_in(cluster, a, "1.2", "y")
        self.assertEqual(len(watch_publishes(cluster)), 1)
        cluster.result(b.remove_socket("app", "2.1"))
        cluster.result(a.remove_socket("app", "1.2"))
        self.assertEqual(len(watch_publishes(cluster)), 1)

    def test_user_id_with_separator(self) -> None:
        """
        A user id containing the field separator is counted whole.
        """
        cluster = Cluster(self)
        a, b = cluster.node("A"), cluster.node("B")
        odd = "a\x1fb\x1fc"
        watcher, _ = sign_in(cluster, a, "1.1", "w", (odd,))
        sign_in(cluster, b, "2.1", odd)
        self.assertEqual(watcher.frames, [online(odd)])
        self.assertIn(odd.encode(), cluster.keys()[b"t:a:app:u"])
        cluster.result(b.remove_socket("app", "2.1"))
        self.assertEqual(watcher.frames, [online(odd), offline(odd)])

    def test_signing_in_twice_is_refused(self) -> None:
        """
        A socket signs in once: a second sign-in changes no count.
        """
        cluster = Cluster(self)
        a = cluster.node("A")
        sign_in(cluster, a, "1.1", "x")
        again = cluster.result(a.sign_in("app", "1.1", "x", ("y",)))
        self.assertFalse(again.came_online)
        self.assertEqual(cluster.keys()[b"t:a:app:u"], {b"x": b"1"})
        self.assertNotIn(b"t:watching", cluster.keys())
        unknown = cluster.result(a.sign_in("app", "9.9", "z", ()))
        self.assertFalse(unknown.came_online)
        self.assertEqual(cluster.keys()[b"t:a:app:u"], {b"x": b"1"})

    def test_counts_leave_no_keys(self) -> None:
        """
        Once every signed-in socket is gone, no user or watcher count is
        left in Redis.
        """
        cluster = Cluster(self)
        a, b = cluster.node("A"), cluster.node("B")
        sign_in(cluster, a, "1.1", "w", ("x", "y"))
        sign_in(cluster, b, "2.1", "x", ("w",))
        cluster.result(a.remove_socket("app", "1.1"))
        cluster.result(b.remove_socket("app", "2.1"))
        keys = cluster.keys()
        self.assertNotIn(b"t:a:app:u", keys)
        self.assertNotIn(b"t:watching", keys)
        self.assertEqual(keys.get(b"t:n:A", {}), {})


class OrderingTests(SynchronousTestCase):
    """
    Watch events published by different nodes may arrive out of order, and
    may race a watcher's own sign-in answer: their numbers sort them out.
    """

    def bus(self, node: RedisAdapter, user: str, state: bytes, seq: int) -> None:
        """
        Hand C{node} a watch event as if another node had published it.
        """
        node._on_message(b"\x1f".join([b"Wother", b"app", state, b"%d" % seq, user.encode()]))

    def test_stale_event_dropped(self) -> None:
        """
        An event numbered before the last one a node delivered is stale (a
        slower node published it) and is dropped.
        """
        cluster = Cluster(self)
        a = cluster.node("A")
        watcher, _ = sign_in(cluster, a, "1.1", "w", ("x",))
        self.bus(a, "x", b"n", 10)
        self.bus(a, "x", b"f", 9)
        self.bus(a, "x", b"f", 11)
        self.assertEqual(watcher.frames, [online("x"), offline("x")])

    def test_no_repeat(self) -> None:
        """
        An event that matches what the watcher was told (a re-announcement
        after a fault) is not repeated.
        """
        cluster = Cluster(self)
        a = cluster.node("A")
        watcher, _ = sign_in(cluster, a, "1.1", "w", ("x",))
        self.bus(a, "x", b"f", 10)
        self.bus(a, "x", b"n", 11)
        self.bus(a, "x", b"n", 12)
        self.assertEqual(watcher.frames, [online("x")])

    def test_stale_for_one_watcher_only(self) -> None:
        """
        A late event is stale for a watcher whose initial state already
        reflects it, but news to a watcher told before it.
        """
        cluster = Cluster(self)
        a, b = cluster.node("A"), cluster.node("B")
        old, _ = sign_in(cluster, b, "2.1", "old", ("x",))
        sign_in(cluster, a, "1.1", "x")
        self.assertEqual(old.frames, [online("x")])
        # An event numbered n is decided in Redis; its publish is slow.
        n = cluster.result(a.link.command("INCR", "t:a:app:wseq"))
        new, outcome = sign_in(cluster, b, "2.2", "new", ("x",))
        self.assertEqual(outcome.online, ("x",))
        self.bus(b, "x", b"f", n)
        self.assertEqual(old.frames, [online("x"), offline("x")])
        self.assertEqual(new.frames, [])
        # (The new watcher's own sign-in was numbered too: "new" came
        # online, and "old" watches.)
        top = int(cluster.keys()[b"t:a:app:wseq"])
        self.bus(b, "x", b"n", top + 1)
        self.bus(b, "x", b"f", top + 2)
        self.assertEqual(old.frames, [online("x"), offline("x"), online("x"), offline("x")])
        self.assertEqual(new.frames, [offline("x")])

    def test_events_during_sign_in(self) -> None:
        """
        Events that reach a watcher while its sign-in waits for Redis are
        folded into its initial state when numbered after the answer, and
        dropped when the answer already reflects them; none is sent before
        the initial state.
        """
        cluster = Cluster(self)
        a, b = cluster.node("A"), cluster.node("B")
        sign_in(cluster, b, "2.0", "other-watcher", ("x",))
        sign_in(cluster, b, "2.1", "x")
        sign_in(cluster, b, "2.2", "y")
        watcher = connect(a, "1.1")
        pending = a.sign_in("app", "1.1", "w", ("x", "y"))
        # Before Redis answers: x went offline after the answer (a huge
        # number), y's event is older than the answer.
        self.bus(a, "x", b"f", 10**18)
        self.bus(a, "y", b"f", 1)
        outcome = cluster.result(pending)
        self.assertEqual((outcome.online, outcome.offline), (("y",), ("x",)))
        self.assertEqual(watcher.frames, [])


class DeadNodeWatchTests(SynchronousTestCase):
    """
    A node that dies takes its users offline within the dead-node bound.
    """

    def test_sigkilled_node_users_go_offline(self) -> None:
        """
        Within node_timeout of a node's death, watchers on every survivor
        hear C{offline} once for each user whose last socket was there, and
        nothing for a user still online elsewhere.
        """
        cluster = Cluster(self)
        a, b, c = cluster.node("A"), cluster.node("B"), cluster.node("C")
        wa, _ = sign_in(cluster, a, "1.1", "wa", ("gone", "both"))
        wb, _ = sign_in(cluster, b, "2.1", "wb", ("gone",))
        sign_in(cluster, c, "3.1", "gone")
        sign_in(cluster, c, "3.2", "both")
        sign_in(cluster, b, "2.2", "both")
        self.assertEqual(wa.frames, [online("gone"), online("both")])
        wa.frames.clear()
        wb.frames.clear()
        kill(cluster, c)
        cluster.advance(cluster.options.node_timeout)
        self.assertEqual(wa.frames, [offline("gone")])
        self.assertEqual(wb.frames, [offline("gone")])
        self.assertEqual(cluster.keys()[b"t:a:app:u"], {b"wa": b"1", b"wb": b"1", b"both": b"1"})

    def test_dead_watcher_stops_counting(self) -> None:
        """
        The purge of a dead node takes its watchers out of the app's count:
        with nobody left watching, transitions are not published.
        """
        cluster = Cluster(self)
        a, c = cluster.node("A"), cluster.node("C")
        sign_in(cluster, c, "3.1", "w", ("x",))
        kill(cluster, c)
        cluster.advance(cluster.options.node_timeout)
        self.assertNotIn(b"t:watching", cluster.keys())
        before = len(watch_publishes(cluster))
        sign_in(cluster, a, "1.1", "x")
        self.assertEqual(len(watch_publishes(cluster)), before)

    def test_graceful_stop(self) -> None:
        """
        A node that stops cleanly tells the other nodes' watchers at once.
        """
        cluster = Cluster(self)
        a, b = cluster.node("A"), cluster.node("B")
        watcher, _ = sign_in(cluster, a, "1.1", "w", ("x",))
        sign_in(cluster, b, "2.1", "x")
        b.stopService()
        cluster.flush()
        self.assertEqual(watcher.frames, [online("x"), offline("x")])


class OutageWatchTests(SynchronousTestCase):
    """
    Without Redis, a node decides from its own state and tells the cluster
    what it missed once Redis is back.
    """

    def test_local_decision_then_announced(self) -> None:
        """
        A user signing in on a node cut off from Redis is reported online to
        that node's watchers at once, and to the other nodes' watchers once
        the node has resynced; its leaving, likewise.
        """
        cluster = Cluster(self)
        a, b = cluster.node("A"), cluster.node("B")
        local_watcher, _ = sign_in(cluster, a, "1.1", "wa", ("x",))
        remote_watcher, _ = sign_in(cluster, b, "2.1", "wb", ("x",))
        cluster.server.accepting = False
        for pump in cluster.server.pumps[:2]:
            pump.serverIO.loseConnection()
        cluster.flush()
        self.assertFalse(a.link.is_up)
        _, outcome = sign_in(cluster, a, "1.2", "x", ("wb",))
        # Decided from A's state alone: wb is on B, which A cannot see.
        self.assertEqual((outcome.came_online, outcome.offline), (True, ("wb",)))
        self.assertEqual(local_watcher.frames, [online("x")])
        self.assertEqual(remote_watcher.frames, [])
        cluster.server.accepting = True
        cluster.advance(12)
        self.assertTrue(a.link.is_up)
        self.assertEqual(remote_watcher.frames, [online("x")])
        cluster.result(a.remove_socket("app", "1.2"))
        self.assertEqual(remote_watcher.frames, [online("x"), offline("x")])
        self.assertEqual(local_watcher.frames, [online("x"), offline("x")])


class ReconcileWatchTests(SynchronousTestCase):
    """
    After a fault, each node corrects what its watchers were told.
    """

    def test_missed_offline_is_reconciled(self) -> None:
        """
        A node whose bus connection was down while a watched user went
        offline elsewhere tells its watcher once it is back.
        """
        cluster = Cluster(self)
        a, b = cluster.node("A"), cluster.node("B")
        watcher, _ = sign_in(cluster, b, "2.1", "w", ("x", "y"))
        sign_in(cluster, a, "1.1", "x")
        self.assertEqual(watcher.frames, [online("x")])
        subscriber = b.link.subscriber.protocol
        for pump in cluster.server.pumps:
            if pump.clientIO is subscriber.transport:
                pump.serverIO.loseConnection()
        cluster.flush()
        self.assertFalse(b.link.subscriber.up)
        cluster.result(a.remove_socket("app", "1.1"))
        sign_in(cluster, a, "1.2", "y")
        self.assertEqual(watcher.frames, [online("x")])
        cluster.advance(3)
        self.assertTrue(b.link.is_up)
        self.assertEqual(
            watcher.frames,
            [online("x"), events.watchlist_events([("online", ["y"]), ("offline", ["x"])])],
        )

    def test_redis_data_lost(self) -> None:
        """
        After Redis loses its data, every node writes its users back and
        watchers end up told the truth, including one who signed in (from
        its own node's state) before the node noticed.
        """
        cluster = Cluster(self)
        a, b = cluster.node("A"), cluster.node("B")
        early, _ = sign_in(cluster, b, "2.1", "w", ("x", "gone"))
        sign_in(cluster, a, "1.1", "x")
        sign_in(cluster, a, "1.2", "gone")
        cluster.result(a.link.command("FLUSHALL"))
        late, outcome = sign_in(cluster, b, "2.2", "w2", ("x",))
        self.assertEqual(outcome.offline, ("x",))
        cluster.result(a.remove_socket("app", "1.2"))
        cluster.advance(2.5)
        self.assertEqual(cluster.keys()[b"t:a:app:u"], {b"w": b"1", b"w2": b"1", b"x": b"1"})

        def state(frames: list[bytes], start: dict[str, bool]) -> dict[str, bool]:
            out = dict(start)
            for frame in frames:
                for event in json.loads(json.loads(frame)["data"])["events"]:
                    out.update(dict.fromkeys(event["user_ids"], event["name"] == "online"))
            return out

        self.assertEqual(state(early.frames, {}), {"x": True, "gone": False})
        self.assertEqual(state(late.frames, {"x": False}), {"x": True})


class ScriptWatchTests(SynchronousTestCase):
    """
    The sign-in mode and user transitions of the APPLY script on the real
    Redis (127.0.0.1:6379), on a fresh key prefix: real Redis's Lua agrees
    with fakeredis, and the watch-event numbers start at the Redis time.
    """

    def setUp(self) -> None:
        require_redis(self)
        import redis

        self.redis = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=5)
        self.addCleanup(self.redis.close)
        self.prefix = f"sockudo_test_{uuid.uuid4().hex[:10]}:"
        self.addCleanup(delete_keys, 6379, self.prefix)
        for node in ("A", "B"):
            self.assertEqual(self.apply(node, "s", 10000), [3])

    def apply(self, node: str, mode: str, *args: Any) -> list[Any]:
        result: list[Any] = self.redis.eval(APPLY.source, 0, self.prefix, node, mode, *args)
        return result

    def test_sign_in_and_out(self) -> None:
        """
        The first socket of a user anywhere is an online transition, the
        last an offline one; both numbered (from the Redis time, in
        microseconds, increasing) once someone in the app watches, 0
        before; the sign-in answers the watched ids' state and the number.
        """
        self.assertEqual(
            self.apply("A", "i", "app", "x"), [1, [[b"n", b"app", b"", b"x", b"0"]], [], b"0"]
        )
        status, transitions, flags, seq = self.apply("B", "i", "app", "w", "x", "y")
        self.assertEqual((status, flags, seq), (1, [1, 0], b"0"))
        self.assertEqual(transitions, [[b"n", b"app", b"", b"w", b"0"]])
        ux = f"u{US}app{US}x"
        reply = self.apply("A", "i", "app", "y")
        number = int(reply[1][0][4])
        self.assertGreater(number, (time.time() - 60) * 1_000_000)
        self.assertEqual(int(reply[3]), number)
        self.assertEqual(self.apply("A", "d", ux, 1, ""), [1])
        offline = self.apply("A", "d", ux, -2, "")
        self.assertEqual(offline[1][:4], [b"f", b"app", b"", b"x"])
        self.assertEqual(int(offline[1][4]), number + 1)

    def test_purge_takes_users_offline(self) -> None:
        """
        A dead node's purge takes its users offline (numbered) and its
        watchers out of the count.
        """
        self.apply("B", "i", "app", "w", "x")
        self.apply("A", "i", "app", "x")
        gone = self.apply("B", "x")[1:]
        self.assertEqual([t[:4] for t in gone], [[b"f", b"app", b"", b"w"]])
        self.assertIsNone(self.redis.hget(self.prefix + "watching", "app"))
        self.assertEqual(self.apply("C", "s", 10000), [3])
        self.assertEqual(self.apply("C", "i", "app", "w2", "x")[2], [1])
        out = self.apply("A", "x")
        self.assertEqual(out[1][:4], [b"f", b"app", b"", b"x"])
        self.assertGreater(int(out[1][4]), 0)


def _watch_event(cluster: DaemonCluster, client: str, name: str, user_id: str) -> Any:
    """
    A predicate: C{client}'s pusher-js C{user.watchlist} emitted C{name}
    with C{user_id} among its ids.
    """

    def matches(o: dict[str, Any]) -> bool:
        return (
            o["type"] == "watchlist_event"
            and o.get("client") == client
            and o["event"] == name
            and user_id in o["data"]["user_ids"]
        )

    return matches


class WatchlistDaemonTests(TestCase):
    """
    Three daemons on a real Redis, pusher-js clients signed in on different
    nodes.
    """

    timeout = 120

    def setUp(self) -> None:
        require_redis(self)

    async def signin(self, c: DaemonCluster, client: str) -> None:
        c.node.send(op="signin", client=client)
        await c.node.wait_for(
            lambda o: (
                o["type"] == "message"
                and o.get("client") == client
                and o["event"] == "pusher:signin_success"
            ),
            f"{client} signed in",
        )

    async def test_watchlist_across_nodes_and_sigkill(self) -> None:
        """
        The initial state lists users online on other nodes; a watcher on
        node 0 hears C{online} when the watched user signs in on node 1 and
        C{offline} only when its last connection (node 1 or node 2) goes;
        when node 2, holding the last connection of another watched user,
        is SIGKILLed, the watcher hears C{offline} within the node timeout.
        """
        c = await DaemonCluster.start(self, node_timeout_ms=3000, heartbeat_interval_ms=500)
        await c.connect("early", 2, user={"id": "early"})
        await self.signin(c, "early")
        await c.connect("watcher", 0, user={"id": "w", "watchlist": ["early", "x", "nobody"]})
        await self.signin(c, "watcher")
        first = await c.node.wait_for(
            lambda o: (
                o["type"] == "watchlist_event"
                and o.get("client") == "watcher"
                and o["event"] == "offline"
            ),
            "the watcher's initial state",
        )
        initial = {
            o["event"]: o["data"]["user_ids"]
            for o in c.node.matching(
                lambda o: o["type"] == "watchlist_event" and o.get("client") == "watcher"
            )
        }
        self.assertEqual(initial, {"online": ["early"], "offline": ["x", "nobody"]}, first)

        await c.connect("x1", 1, user={"id": "x"})
        await self.signin(c, "x1")
        await c.node.wait_for(_watch_event(c, "watcher", "online", "x"), "x online")
        await c.connect("x2", 2, user={"id": "x"})
        await self.signin(c, "x2")
        c.node.send(op="disconnect", client="x1")
        await c.settle(1.0)
        # Only the initial state's offline so far: x is still on node 2.
        self.assertEqual(len(c.node.matching(_watch_event(c, "watcher", "offline", "x"))), 1)
        self.assertEqual(len(c.node.matching(_watch_event(c, "watcher", "online", "x"))), 1)

        c.servers[2]._transport.signalProcess("KILL")
        killed_at = time.monotonic()

        def both_offline() -> bool:
            # x was in the initial state's offline list too; early was not.
            return all(
                len(c.node.matching(_watch_event(c, "watcher", "offline", user))) == count
                for user, count in (("x", 2), ("early", 1))
            )

        await c.until(_truth(both_offline), "x and early offline after the SIGKILL")
        elapsed = time.monotonic() - killed_at
        self.assertLess(elapsed, 3.0 + 1.5, f"took {elapsed:.1f}s")
        await c.settle(1.0)
        offline_events = [
            o["data"]["user_ids"]
            for o in c.node.matching(
                lambda o: (
                    o["type"] == "watchlist_event"
                    and o.get("client") == "watcher"
                    and o["event"] == "offline"
                )
            )
        ]
        # The initial state's offline, then one for each of x and early
        # (one event each, or one listing both).
        self.assertEqual(
            sorted(u for ids in offline_events[1:] for u in ids), ["early", "x"], offline_events
        )


def _truth(check: Any) -> Any:
    """
    Turn a synchronous check into the async one L{DaemonCluster.until}
    polls.
    """

    async def checked() -> bool:
        return bool(check())

    return checked
