"""
One contract, every adapter: the same tests run against L{LocalAdapter} and
against L{RedisAdapter} on the protocol-level fake Redis, so the WebSocket
glue and the HTTP API can rely on one behaviour whichever is configured.

Where the adapters may legitimately differ, the contract says what is
promised: a channel's occupancy is decided exactly once, either in the
subscribe outcome or through the observer (the Redis adapter reports public
channels' occupancy when Redis answers, so subscribe need not wait).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from sockudo_tw.adapters import IAdapter
from sockudo_tw.adapters.local import LocalAdapter
from sockudo_tw.pusher.presence import PresenceMember
from tests.test_redis_adapter import Cluster, FakeSocket, RecordingEvents


class _AdapterContract:
    """
    The tests; a subclass provides L{make} and L{settle}.
    """

    adapter: Any
    events: RecordingEvents

    def make(self) -> None:
        raise NotImplementedError()

    def settle(self) -> None:
        """
        Let the backend answer (nothing to do for the local adapter).
        """

    def result(self, d: Deferred[Any]) -> Any:
        self.settle()
        return self.successResultOf(d)  # type: ignore[attr-defined]

    def connect(self, socket_id: str, app_id: str = "app") -> FakeSocket:
        socket = FakeSocket(socket_id)
        self.adapter.add_socket(app_id, socket)
        return socket

    def test_provides(self) -> None:
        """
        The adapter provides L{IAdapter}.
        """
        self.make()
        self.assertTrue(verifyObject(IAdapter, self.adapter))  # type: ignore[attr-defined]

    def test_occupancy_decided_once(self) -> None:
        """
        First subscriber: occupied once; last one leaving: vacated once.
        """
        self.make()
        self.connect("1.1")
        self.connect("1.2")
        decided = 0
        for sid in ("1.1", "1.2"):
            decided += self.result(self.adapter.subscribe("app", "ch", sid, None, 0)).occupied
        vacated = 0
        for sid in ("1.1", "1.2"):
            vacated += self.result(self.adapter.unsubscribe("app", "ch", sid)).vacated
        self.settle()
        decided += self.events.calls.count(("occupied", "app", "ch"))
        vacated += self.events.calls.count(("vacated", "app", "ch"))
        self.assertEqual((decided, vacated), (1, 1))  # type: ignore[attr-defined]

    def test_presence_transitions(self) -> None:
        """
        member_added for a user's first socket only, member_removed for the
        last; the outcome carries the member list.
        """
        self.make()
        for sid in ("1.1", "1.2", "1.3"):
            self.connect(sid)
        first = self.result(
            self.adapter.subscribe("app", "presence-a", "1.1", PresenceMember("u", {"n": 1}), 0)
        )
        again = self.result(
            self.adapter.subscribe("app", "presence-a", "1.2", PresenceMember("u", {"n": 1}), 0)
        )
        other = self.result(
            self.adapter.subscribe("app", "presence-a", "1.3", PresenceMember("v", {}), 0)
        )
        self.assertEqual(  # type: ignore[attr-defined]
            (first.member_added, again.member_added, other.member_added), (True, False, True)
        )
        self.assertEqual(other.members, {"u": {"n": 1}, "v": {}})  # type: ignore[attr-defined]
        left = self.result(self.adapter.unsubscribe("app", "presence-a", "1.1"))
        self.assertIsNone(left.member_removed)  # type: ignore[attr-defined]
        removal = self.result(self.adapter.remove_socket("app", "1.2"))
        self.assertEqual(  # type: ignore[attr-defined]
            [o.member_removed for o in removal.unsubscribed], ["u"]
        )

    def test_presence_limit(self) -> None:
        """
        A new user is refused once the channel has max_members users.
        """
        self.make()
        self.connect("1.1")
        self.connect("1.2")
        self.result(self.adapter.subscribe("app", "presence-a", "1.1", PresenceMember("u", {}), 1))
        refused = self.result(
            self.adapter.subscribe("app", "presence-a", "1.2", PresenceMember("v", {}), 1)
        )
        self.assertFalse(refused.accepted)  # type: ignore[attr-defined]

    def test_queries(self) -> None:
        """
        channels, counts, members and connections reflect subscriptions.
        """
        self.make()
        for sid in ("1.1", "1.2"):
            self.connect(sid)
            self.result(self.adapter.subscribe("app", "ch", sid, None, 0))
        self.result(self.adapter.subscribe("app", "presence-a", "1.1", PresenceMember("u", 1), 0))
        self.connect("9.9", app_id="other")
        check = self.assertEqual  # type: ignore[attr-defined]
        check(self.result(self.adapter.channels("app")), {"ch": 2, "presence-a": 1})
        check(self.result(self.adapter.channel_subscription_count("app", "ch")), 2)
        check(self.result(self.adapter.channel_subscription_count("app", "nope")), 0)
        check(self.result(self.adapter.presence_members("app", "presence-a")), {"u": 1})
        check(self.result(self.adapter.app_connection_count("app")), 2)
        check(self.result(self.adapter.app_connection_count("other")), 1)
        self.result(self.adapter.remove_socket("app", "1.1"))
        check(self.result(self.adapter.channels("app")), {"ch": 1})
        check(self.result(self.adapter.app_connection_count("app")), 1)

    def test_broadcast_and_terminate(self) -> None:
        """
        A broadcast reaches every subscriber but the excluded one, once;
        terminate closes the user's sockets.
        """
        self.make()
        a, b = self.connect("1.1"), self.connect("1.2")
        for sid in ("1.1", "1.2"):
            self.result(self.adapter.subscribe("app", "ch", sid, None, 0))
        self.adapter.broadcast("app", "ch", b"{}", "1.2")
        self.settle()
        self.assertEqual((a.frames, b.frames), ([b"{}"], []))  # type: ignore[attr-defined]
        self.result(self.adapter.sign_in("app", "1.1", "user", ()))
        self.adapter.terminate_user_connections("app", "user")
        self.settle()
        self.assertEqual(len(a.closed), 1)  # type: ignore[attr-defined]
        self.assertEqual(b.closed, [])  # type: ignore[attr-defined]


class LocalAdapterContractTests(_AdapterContract, SynchronousTestCase):
    """
    The contract on the local adapter.
    """

    def make(self) -> None:
        self.events = RecordingEvents()
        self.adapter = LocalAdapter(self.events, framer=lambda frame: frame)


class RedisAdapterContractTests(_AdapterContract, SynchronousTestCase):
    """
    The contract on one Redis adapter node over the fake Redis.
    """

    def make(self) -> None:
        self.cluster = Cluster(self)
        self.adapter = self.cluster.node("A")
        self.events = self.cluster.events["A"]

    def settle(self) -> None:
        self.cluster.flush()


class RedisUnreachableAdapterContractTests(_AdapterContract, SynchronousTestCase):
    """
    The contract on a Redis adapter node whose Redis refuses connections:
    every operation answers from this node's state, none fails.
    """

    def make(self) -> None:
        self.cluster = Cluster(self)
        self.cluster.server.accepting = False
        self.adapter = self.cluster.node("A")
        self.events = self.cluster.events["A"]
        self.assertEqual(self.adapter.link.state, "down")

    def settle(self) -> None:
        self.cluster.flush()


class RedisStalledAdapterContractTests(_AdapterContract, SynchronousTestCase):
    """
    The contract on a Redis adapter node whose Redis accepted its
    connections, then stopped answering (SIGSTOP): operations that wait
    for Redis answer from this node's state after the request timeout, and
    keep doing so once the keepalive has dropped the connections.
    """

    def make(self) -> None:
        self.cluster = Cluster(self)
        self.adapter = self.cluster.node("A")
        self.events = self.cluster.events["A"]
        self.cluster.server.on_command = lambda protocol, name, args: False

    def settle(self) -> None:
        self.cluster.advance(self.cluster.options.requests_timeout + 0.5)
