"""
The Redis adapter's Lua scripts run directly (EVAL) against the real Redis
on 127.0.0.1:6379, on a fresh key prefix: the transitions they decide, the
exactly-once purge, and the resync diff. (The unit tests run the same
scripts in fakeredis; this checks real Redis agrees.) Without Redis these
fail under C{CI=true} and skip otherwise.
"""

from __future__ import annotations

import uuid
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from sockudo_tw.adapters.redis import APPLY, HEARTBEAT, JOIN
from tests.test_redis_cluster import delete_keys, require_redis

US = "\x1f"


def tr(reply: list[Any]) -> list[tuple[str, ...]]:
    """
    The transitions of an APPLY reply as tuples of text.
    """
    return [tuple(x.decode() for x in t) for t in reply[1:]]


class ScriptTests(SynchronousTestCase):
    """
    Each script's decisions on a real Redis.
    """

    def setUp(self) -> None:
        require_redis(self)
        import redis

        self.redis = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=5)
        self.addCleanup(self.redis.close)
        self.prefix = f"sockudo_test_{uuid.uuid4().hex[:10]}:"
        self.addCleanup(delete_keys, 6379, self.prefix)

    def apply(self, node: str, mode: str, *entries: Any) -> list[Any]:
        result: list[Any] = self.redis.eval(APPLY.source, 0, self.prefix, node, mode, *entries)
        return result

    def register(self, *nodes: str, ttl: int = 10000) -> None:
        """
        Register nodes with an empty state (a sync), as a starting node does.
        """
        for node in nodes:
            self.assertEqual(self.apply(node, "s", ttl), [3])

    def test_unregistered_node_refused(self) -> None:
        """
        Changes from a node Redis does not know (it lost its data, or
        purged the node) are refused with status 3 and change nothing.
        """
        s = f"s{US}app{US}ch"
        self.assertEqual(self.apply("A", "d", s, 1, ""), [3])
        joined = self.redis.eval(
            JOIN.source, 0, self.prefix, "A", "app", "presence-x", "u", "{}", 0
        )
        self.assertEqual(joined, [3])
        self.assertEqual(self.redis.keys(self.prefix + "*"), [])
        self.assertEqual(self.redis.eval(HEARTBEAT.source, 0, self.prefix, "A", 1000), [0, [], 0])
        self.assertEqual(self.redis.keys(self.prefix + "*"), [])

    def test_occupancy_and_members(self) -> None:
        """
        Occupied on the first socket anywhere, vacated on the last; member
        added/removed per user across nodes.
        """
        s = f"s{US}app{US}ch"
        p = f"p{US}app{US}presence-x{US}u1"
        self.register("A", "B")
        self.assertEqual(tr(self.apply("A", "d", s, 1, "")), [("o", "app", "ch")])
        self.assertEqual(tr(self.apply("B", "d", s, 1, "")), [])
        self.assertEqual(tr(self.apply("A", "d", s, -1, "")), [])
        self.assertEqual(tr(self.apply("B", "d", s, -1, "")), [("v", "app", "ch")])
        self.assertEqual(
            tr(self.apply("A", "d", p, 1, '{"a":1}')), [("a", "app", "presence-x", "u1", '{"a":1}')]
        )
        self.assertEqual(tr(self.apply("B", "d", p, 1, '{"b":2}')), [])
        self.assertEqual(tr(self.apply("A", "d", p, -1, "")), [])
        self.assertEqual(tr(self.apply("B", "d", p, -1, "")), [("r", "app", "presence-x", "u1")])
        self.assertEqual(self.redis.keys(self.prefix + "*"), [self.prefix.encode() + b"nodes"])

    def test_unregistered_leave_ignored(self) -> None:
        """
        A node cannot take away what it never added (no negative counts).
        """
        s = f"s{US}app{US}ch"
        self.register("A", "B")
        self.apply("A", "d", s, 1, "")
        self.assertEqual(tr(self.apply("B", "d", s, -1, "")), [])
        self.assertEqual(self.redis.hget(self.prefix + "a:app:ch", "ch"), b"1")

    def test_join_cap_and_members(self) -> None:
        """
        JOIN refuses a new user over the cap, admits a known user, and
        returns the member list.
        """

        def join(node: str, user: str, cap: int) -> list[Any]:
            result: list[Any] = self.redis.eval(
                JOIN.source, 0, self.prefix, node, "app", "presence-x", user, "{}", cap
            )
            return result

        self.register("A", "B")
        first = join("A", "u1", 1)
        self.assertEqual(first[0], 1)
        self.assertEqual(
            [tuple(x.decode() for x in t) for t in first[1]],
            [("o", "app", "presence-x"), ("a", "app", "presence-x", "u1", "{}")],
        )
        self.assertEqual(join("B", "u2", 1), [0])
        again = join("B", "u1", 1)
        self.assertEqual((again[0], again[1], again[2]), (1, [], [b"u1", b"{}"]))

    def test_purge_once_after_deadline(self) -> None:
        """
        A node past its deadline is purged by exactly one caller, and its
        resync afterwards says it had been purged.
        """
        p = f"p{US}app{US}presence-x{US}u1"
        ttl = 10000
        self.register("dead", ttl=ttl)
        reply = self.redis.eval(HEARTBEAT.source, 0, self.prefix, "dead", ttl)
        self.assertEqual(reply, [1, [], 1])
        self.apply("dead", "d", p, 1, "{}")
        self.assertEqual(self.apply("dead", "p"), [0])
        # The deadline passes (as if "dead" stopped beating): no real-time wait.
        self.redis.zadd(self.prefix + "nodes", {"dead": 0}, xx=True)
        self.register("alive")
        alive = self.redis.eval(HEARTBEAT.source, 0, self.prefix, "alive", 10000)
        self.assertEqual(alive, [1, [b"dead"], 2])
        self.assertEqual(tr(self.apply("dead", "p")), [("r", "app", "presence-x", "u1")])
        self.assertEqual(self.apply("dead", "p"), [0])
        self.assertEqual(self.apply("dead", "d", p, -1, ""), [3])
        resync = self.apply("dead", "s", 10000, p, 1, "{}")
        self.assertEqual(resync[0], 2)
        self.assertEqual(tr(resync), [("a", "app", "presence-x", "u1", "{}")])

    def test_sync_is_a_diff(self) -> None:
        """
        A sync writes exactly the given state (adding and removing) and a
        second identical sync changes nothing.
        """
        old = f"s{US}app{US}old"
        new = f"s{US}app{US}new"
        self.register("A")
        self.apply("A", "d", old, 2, "")
        synced = self.apply("A", "s", 10000, new, 3, "")
        self.assertEqual(synced[0], 1)
        self.assertEqual(sorted(tr(synced)), [("o", "app", "new"), ("v", "app", "old")])
        self.assertEqual(tr(self.apply("A", "s", 10000, new, 3, "")), [])
        self.assertEqual(self.redis.hgetall(self.prefix + "a:app:ch"), {b"new": b"3"})
