"""
Tests of the NATS adapter: the bus message codec, the adapter contract and
cluster behaviour on an in-memory bus with a fake clock, and three real
C{twistd sockudo} daemons joined through a real C{nats-server}.

The daemon tests use the machine's NATS on 127.0.0.1:4222 (each test on
its own subject prefix), except the restart test, which starts a private
C{nats-server} on a free port so it can kill it. Without NATS (or Node)
they fail under C{CI=true} and skip otherwise.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from sockudo_tw.adapters import DRIVERS, IAdapter, validate_adapter_driver
from sockudo_tw.adapters._nats_link import NatsLink, NatsLinkOptions
from sockudo_tw.adapters.local import LocalAdapter
from sockudo_tw.adapters.nats import NatsAdapter, NatsNodeOptions, decode, encode
from sockudo_tw.pusher.presence import PresenceMember
from tests.interop_harness import ServerProcess, app_config, free_port, match, unavailable
from tests.test_adapter_contract import _AdapterContract
from tests.test_redis_adapter import FakeSocket, RecordingEvents
from tests.test_redis_cluster import Cluster, _Output

SHARED_NATS = ("127.0.0.1", 4222)


class FakeBus:
    """
    An in-memory NATS: subjects to handlers, messages queued until
    L{flush}, never echoed to their publisher (as with C{no_echo}).
    """

    def __init__(self) -> None:
        self.subscribers: dict[str, list[tuple[FakeLink, Callable[[str, bytes], None]]]] = {}
        self.queue: list[tuple[FakeLink, str, bytes]] = []
        self.lost = 0

    def flush(self) -> None:
        for _ in range(1000):
            if not self.queue:
                return
            queue, self.queue = self.queue, []
            for sender, subject, payload in queue:
                for link, handler in list(self.subscribers.get(subject, ())):
                    if link is not sender and link.up:
                        handler(subject, payload)
        raise AssertionError("the bus did not settle")


class FakeLink:
    """
    One node's connection to a L{FakeBus}.
    """

    def __init__(
        self,
        bus: FakeBus,
        subjects: list[str],
        on_message: Callable[[str, bytes], None],
        on_state: Callable[[bool], None],
    ) -> None:
        self.bus = bus
        self.subjects = subjects
        self.on_message = on_message
        self.on_state = on_state
        self.up = False
        self.published: list[tuple[str, bytes]] = []

    def start(self) -> None:
        for subject in self.subjects:
            self.bus.subscribers.setdefault(subject, []).append((self, self.on_message))
        self.set_up(True)

    def set_up(self, up: bool) -> None:
        self.up = up
        self.on_state(up)

    def stop(self) -> Deferred[None]:
        self.up = False
        return succeed(None)

    def publish(self, subject: str, payload: bytes) -> None:
        if not self.up:
            self.bus.lost += 1
            return
        self.published.append((subject, payload))
        self.bus.queue.append((self, subject, payload))


class Nodes:
    """
    NATS adapter nodes on one fake bus and one fake clock.
    """

    def __init__(self, options: NatsNodeOptions | None = None) -> None:
        self.clock = task.Clock()
        self.bus = FakeBus()
        self.options = options or NatsNodeOptions(
            request_timeout=1.0, heartbeat_interval=1.0, node_timeout=4.0
        )
        self.nodes: dict[str, NatsAdapter] = {}
        self.events: dict[str, RecordingEvents] = {}
        self.links: dict[str, FakeLink] = {}

    def node(self, name: str) -> NatsAdapter:
        events = RecordingEvents()

        def link(subjects: list[str], on_message: Any, on_state: Any) -> FakeLink:
            made = self.links[name] = FakeLink(self.bus, subjects, on_message, on_state)
            return made

        adapter = NatsAdapter(
            self.clock,
            link,
            self.options,
            local=LocalAdapter(events, framer=lambda frame: frame),
            node_id=name,
        )
        adapter.startService()
        self.nodes[name] = adapter
        self.events[name] = events
        self.flush()
        return adapter

    def flush(self) -> None:
        self.bus.flush()

    def advance(self, seconds: float, step: float = 0.25) -> None:
        """
        Move the clock on in steps, letting the bus settle after each.
        """
        while seconds > 0:
            self.clock.advance(min(step, seconds))
            self.flush()
            seconds -= step


class CodecTests(SynchronousTestCase):
    """
    The bus message codec.
    """

    def test_round_trip(self) -> None:
        """
        Fields come back as bytes; the last keeps any 0x1F it contains.
        """
        payload = encode(b"B", "node", "app", "ch", "", b'{"a":"\x1f"}')
        self.assertEqual(decode(payload, 5), (b"B", [b"node", b"app", b"ch", b"", b'{"a":"\x1f"}']))

    def test_too_few_fields(self) -> None:
        """
        A truncated message is refused with L{ValueError}.
        """
        self.assertRaises(ValueError, decode, encode(b"D", "node"), 3)

    def test_unencodable(self) -> None:
        """
        A lone surrogate cannot be put on the bus.
        """
        self.assertRaises(UnicodeError, encode, b"B", "\ud800")

    def test_malformed_ignored(self) -> None:
        """
        A malformed or unknown message is logged, not raised.
        """
        nodes = Nodes()
        a = nodes.node("a")
        a._on_message("x", b"D\x1fnot-a-number")
        a._on_message("x", b"?")
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_driver_registered(self) -> None:
        """
        C{adapter.driver: nats} is accepted by the config check.
        """
        self.assertIn("nats", DRIVERS)
        validate_adapter_driver("nats")


class NatsAdapterContractTests(_AdapterContract, SynchronousTestCase):
    """
    The contract on one NATS adapter node of a two-node fake cluster.
    """

    def make(self) -> None:
        self.nodes = Nodes()
        self.adapter = self.nodes.node("a")
        self.nodes.node("b")
        self.events = self.nodes.events["a"]
        self.nodes.advance(1.0)

    def settle(self) -> None:
        self.nodes.flush()


class NatsAloneContractTests(_AdapterContract, SynchronousTestCase):
    """
    The contract on a NATS adapter node whose connection is down: every
    operation answers from this node's state, none fails.
    """

    def make(self) -> None:
        self.nodes = Nodes()
        self.adapter = self.nodes.node("a")
        self.nodes.links["a"].set_up(False)
        self.events = self.nodes.events["a"]

    def settle(self) -> None:
        self.nodes.flush()


class ClusterTests(SynchronousTestCase):
    """
    Several nodes on the fake bus.
    """

    def setUp(self) -> None:
        self.nodes = Nodes()
        self.a = self.nodes.node("a")
        self.b = self.nodes.node("b")
        self.c = self.nodes.node("c")
        self.nodes.advance(1.0)

    def join(
        self, node: NatsAdapter, sid: str, channel: str, member: PresenceMember | None = None
    ) -> Any:
        node.add_socket("app", FakeSocket(sid))
        return self.query(node.subscribe("app", channel, sid, member, 0))

    def query(self, d: Deferred[Any]) -> Any:
        """
        The result of C{d} once the bus settled (after the request timeout
        when a node cannot answer).
        """
        self.nodes.flush()
        if not d.called:
            self.nodes.advance(self.nodes.options.request_timeout)
        return self.successResultOf(d)

    def test_exact_queries_from_any_node(self) -> None:
        """
        Counts, channels and members are the cluster's, asked on any node.
        """
        self.join(self.a, "1.1", "ch")
        self.join(self.b, "2.1", "ch")
        self.join(self.c, "3.1", "presence-x", PresenceMember("u", {"n": 1}))
        self.join(self.b, "2.2", "presence-x", PresenceMember("v", None))
        for node in (self.a, self.b, self.c):
            self.assertEqual(self.query(node.channels("app")), {"ch": 2, "presence-x": 2})
            self.assertEqual(self.query(node.channel_subscription_count("app", "ch")), 2)
            self.assertEqual(
                self.query(node.presence_members("app", "presence-x")), {"u": {"n": 1}, "v": None}
            )
            self.assertEqual(self.query(node.app_connection_count("app")), 4)

    def test_barrier_waits_for_deltas_in_flight(self) -> None:
        """
        A query waits until the replicas have what each node had done when
        it answered the barrier.
        """
        self.b.add_socket("app", FakeSocket("2.1"))
        # b's delta is still queued: the query's barrier reply comes after.
        d = self.a.app_connection_count("app")
        self.assertNoResult(d)
        self.nodes.flush()
        self.assertEqual(self.successResultOf(d), 1)

    def test_silent_node_answered_from_replica(self) -> None:
        """
        A node that does not answer within the request timeout is answered
        for from its replica, and the answer is counted as stale.
        """
        self.join(self.b, "2.1", "ch")
        self.nodes.links["c"].up = False
        d = self.a.channel_subscription_count("app", "ch")
        self.nodes.flush()
        self.assertNoResult(d)
        self.nodes.clock.advance(1.0)
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(self.a.stale_answers, 1)
        # Not waited for again until it is heard from.
        self.assertEqual(self.query(self.a.channel_subscription_count("app", "ch")), 1)
        self.nodes.links["c"].up = True
        self.nodes.advance(1.0)
        d = self.a.channel_subscription_count("app", "ch")
        self.assertNoResult(d)
        self.nodes.flush()
        self.assertEqual(self.successResultOf(d), 1)

    def test_transitions_cluster_wide(self) -> None:
        """
        occupied/member_added for the first socket anywhere, vacated/
        member_removed for the last.
        """
        first = self.join(self.a, "1.1", "presence-x", PresenceMember("u", {}))
        again = self.join(self.b, "2.1", "presence-x", PresenceMember("u", {}))
        self.assertEqual((first.occupied, first.member_added), (True, True))
        self.assertEqual((again.occupied, again.member_added), (False, False))
        self.assertEqual(again.members, {"u": {}})
        left = self.query(self.a.unsubscribe("app", "presence-x", "1.1"))
        self.assertEqual((left.vacated, left.member_removed), (False, None))
        removal = self.query(self.b.remove_socket("app", "2.1"))
        self.assertEqual(
            [(o.vacated, o.member_removed) for o in removal.unsubscribed], [(True, "u")]
        )

    def test_join_decides_on_what_came_before(self) -> None:
        """
        A join that may be the cluster's first waits for the others'
        replies and holds its own delta back: a join that came before on
        another node counts; concurrent first joins both decide.
        """
        self.a.add_socket("app", FakeSocket("1.1"))
        self.b.add_socket("app", FakeSocket("2.1"))
        self.c.add_socket("app", FakeSocket("3.1"))
        self.nodes.flush()
        first = self.a.subscribe("app", "ch", "1.1", None, 0)
        second = self.b.subscribe("app", "ch", "2.1", None, 0)
        self.assertNoResult(first)
        self.nodes.flush()
        self.assertEqual(
            (self.successResultOf(first).occupied, self.successResultOf(second).occupied),
            (True, True),
        )
        later = self.c.subscribe("app", "ch", "3.1", None, 0)
        self.nodes.flush()
        self.assertFalse(self.successResultOf(later).occupied)
        self.assertEqual(self.query(self.a.channel_subscription_count("app", "ch")), 3)

    def test_snapshot_waits_for_held_deltas(self) -> None:
        """
        A snapshot asked for while a join holds deltas back is sent after
        them, so it matches the delta number it carries.
        """
        self.a.add_socket("app", FakeSocket("1.1"))
        self.nodes.flush()
        d = self.a.subscribe("app", "presence-x", "1.1", PresenceMember("u", {}), 0)
        self.b._ask_snapshot("a", self.b._peers["a"])
        self.nodes.flush()
        self.successResultOf(d)
        self.nodes.advance(2.0)
        self.assertEqual(self.query(self.b.presence_members("app", "presence-x")), {"u": {}})
        self.assertEqual(self.query(self.b.channel_subscription_count("app", "presence-x")), 1)

    def test_max_members_counts_every_node(self) -> None:
        """
        A presence channel's limit counts the users on every node.
        """
        self.join(self.a, "1.1", "presence-x", PresenceMember("u", {}))
        self.b.add_socket("app", FakeSocket("2.1"))
        refused = self.query(
            self.b.subscribe("app", "presence-x", "2.1", PresenceMember("v", {}), 1)
        )
        self.assertFalse(refused.accepted)
        same_user = self.query(
            self.b.subscribe("app", "presence-x", "2.1", PresenceMember("u", {}), 1)
        )
        self.assertTrue(same_user.accepted)

    def test_broadcast_once_per_subscriber(self) -> None:
        """
        A broadcast reaches every node's subscribers once, except the
        excluded socket; terminate reaches every node.
        """
        sockets = {}
        for node, sid in ((self.a, "1.1"), (self.b, "2.1"), (self.c, "3.1")):
            sockets[sid] = FakeSocket(sid)
            node.add_socket("app", sockets[sid])
            node.subscribe("app", "ch", sid, None, 0)
        self.b.broadcast("app", "ch", b"{}", "3.1")
        self.nodes.flush()
        self.assertEqual([len(s.frames) for s in sockets.values()], [1, 1, 0])
        self.successResultOf(self.c.sign_in("app", "3.1", "user", ()))
        self.a.terminate_user_connections("app", "user")
        self.nodes.flush()
        self.assertEqual(len(sockets["3.1"].closed), 1)

    def test_dead_node_purged(self) -> None:
        """
        A node silent for node_timeout is dropped: one survivor sends the
        member_removed and reports it, counts heal on every node.
        """
        self.join(self.a, "1.1", "presence-x", PresenceMember("alive", {}))
        self.join(self.c, "3.1", "presence-x", PresenceMember("ghost", {}))
        self.join(self.c, "3.2", "lonely")
        watcher = FakeSocket("2.1")
        self.b.add_socket("app", watcher)
        self.b.subscribe("app", "presence-x", "2.1", PresenceMember("w", {}), 0)
        self.nodes.flush()
        self.nodes.links["c"].up = False
        self.nodes.advance(6.0)
        removed = [f for f in watcher.frames if b"member_removed" in f]
        self.assertEqual(len(removed), 1, watcher.frames)
        self.assertIn(b"ghost", removed[0])
        calls = self.nodes.events["a"].calls + self.nodes.events["b"].calls
        self.assertEqual(calls.count(("member_removed", "app", "presence-x", "ghost")), 1)
        self.assertEqual(calls.count(("vacated", "app", "lonely")), 1)
        self.assertEqual(
            self.query(self.b.presence_members("app", "presence-x")), {"alive": {}, "w": {}}
        )
        self.assertEqual(self.query(self.a.app_connection_count("app")), 2)

    def test_gap_repaired_by_snapshot(self) -> None:
        """
        Deltas lost while a node was cut off are repaired from a snapshot
        at the next heartbeat.
        """
        self.nodes.links["a"].up = False
        self.join(self.b, "2.1", "ch")
        self.nodes.links["a"].up = True
        self.join(self.b, "2.2", "ch")
        self.nodes.advance(1.5)
        self.assertEqual(self.query(self.a.channel_subscription_count("app", "ch")), 2)
        self.assertGreaterEqual(self.a.snapshots, 1)

    def test_gap_repair_tells_clients(self) -> None:
        """
        Members who joined or left elsewhere while this node could not hear
        are announced to its presence subscribers once the gap is repaired.
        """
        watcher = FakeSocket("1.1")
        self.a.add_socket("app", watcher)
        self.a.subscribe("app", "presence-x", "1.1", PresenceMember("w", {}), 0)
        self.join(self.b, "2.1", "presence-x", PresenceMember("gone", {}))
        self.nodes.links["a"].up = False
        self.join(self.c, "3.1", "presence-x", PresenceMember("late", {"n": 1}))
        self.query(self.b.remove_socket("app", "2.1"))
        self.nodes.links["a"].up = True
        self.nodes.advance(1.5)
        # (The adapter sends only these; the glue broadcasts live joins.)
        told = sorted(
            (json.loads(f)["event"], json.loads(json.loads(f)["data"])["user_id"])
            for f in watcher.frames
        )
        self.assertEqual(
            told,
            [("pusher_internal:member_added", "late"), ("pusher_internal:member_removed", "gone")],
        )

    def test_link_down_no_purge(self) -> None:
        """
        While this node's own connection is down, and for node_timeout
        after it is back, nobody is declared dead.
        """
        self.join(self.b, "2.1", "ch")
        self.nodes.links["a"].set_up(False)
        self.nodes.advance(10.0)
        self.nodes.links["a"].set_up(True)
        self.nodes.advance(2.0)
        self.assertEqual(self.a.purged_nodes, 0)
        self.assertEqual(self.query(self.a.channel_subscription_count("app", "ch")), 1)

    def test_purged_node_taken_back(self) -> None:
        """
        A node purged while only cut off is taken back, from a snapshot,
        at its next heartbeat.
        """
        self.join(self.c, "3.1", "ch")
        self.nodes.links["c"].up = False
        self.nodes.advance(6.0)
        self.assertEqual(self.query(self.a.channel_subscription_count("app", "ch")), 0)
        self.nodes.links["c"].up = True
        self.nodes.advance(1.5)
        self.assertEqual(self.query(self.a.channel_subscription_count("app", "ch")), 1)

    def test_new_node_learns_at_once(self) -> None:
        """
        A node that starts knows the others' state as soon as they hear its
        first heartbeat, not one period later.
        """
        self.join(self.a, "1.1", "presence-x", PresenceMember("u", {}))
        d = self.nodes.node("d")
        self.assertEqual(set(d._peers), {"a", "b", "c"})
        joined = self.join(d, "4.1", "presence-x", PresenceMember("v", {}))
        self.assertEqual(joined.members, {"u": {}, "v": {}})

    def test_leaving_node_dropped_at_once(self) -> None:
        """
        A node that stops says so; the others drop it without waiting.
        """
        self.join(self.c, "3.1", "ch")
        self.c.stopService()
        self.nodes.flush()
        self.assertEqual(self.query(self.a.channel_subscription_count("app", "ch")), 0)
        self.assertEqual(self.a.purged_nodes, 1)

    def watcher(self, node: NatsAdapter, sid: str, watched: tuple[str, ...]) -> Any:
        socket = FakeSocket(sid)
        node.add_socket("app", socket)
        outcome = self.query(node.sign_in("app", sid, f"watcher-{sid}", watched))
        return socket, outcome

    def told(self, socket: FakeSocket) -> list[tuple[str, list[str]]]:
        return [
            (e["name"], e["user_ids"])
            for f in socket.frames
            for e in json.loads(json.loads(f)["data"])["events"]
        ]

    def test_watchlist_across_nodes(self) -> None:
        """
        A watcher hears online when the user's first socket anywhere signs
        in and offline when its last one anywhere leaves, once each.
        """
        w, outcome = self.watcher(self.a, "1.1", ("u",))
        self.assertEqual((outcome.online, outcome.offline), ((), ("u",)))
        for node, sid in ((self.b, "2.1"), (self.c, "3.1")):
            node.add_socket("app", FakeSocket(sid))
            first = self.query(node.sign_in("app", sid, "u", ()))
        self.assertFalse(first.came_online)
        self.nodes.flush()
        self.assertEqual(self.told(w), [("online", ["u"])])
        removal = self.query(self.b.remove_socket("app", "2.1"))
        self.assertIsNone(removal.went_offline)
        self.nodes.flush()
        self.assertEqual(self.told(w), [("online", ["u"])])
        self.query(self.c.remove_socket("app", "3.1"))
        self.nodes.flush()
        self.assertEqual(self.told(w), [("online", ["u"]), ("offline", ["u"])])
        _, late = self.watcher(self.b, "2.9", ("u", "watcher-1.1"))
        self.assertEqual((late.online, late.offline), (("watcher-1.1",), ("u",)))

    def test_watchlist_same_node_and_other(self) -> None:
        """
        A user signed in here and elsewhere: leaving here is not offline.
        """
        w, _ = self.watcher(self.a, "1.1", ("u",))
        self.a.add_socket("app", FakeSocket("1.2"))
        self.query(self.a.sign_in("app", "1.2", "u", ()))
        self.b.add_socket("app", FakeSocket("2.1"))
        self.query(self.b.sign_in("app", "2.1", "u", ()))
        self.nodes.flush()
        self.query(self.a.remove_socket("app", "1.2"))
        self.nodes.flush()
        self.assertEqual(self.told(w), [("online", ["u"])])

    def test_watchlist_dead_node(self) -> None:
        """
        The user's only node dies: every watcher hears offline.
        """
        w, _ = self.watcher(self.a, "1.1", ("u",))
        w2, _ = self.watcher(self.b, "2.1", ("u",))
        self.c.add_socket("app", FakeSocket("3.1"))
        self.query(self.c.sign_in("app", "3.1", "u", ()))
        self.nodes.flush()
        self.nodes.links["c"].up = False
        self.nodes.advance(6.0)
        for watching in (w, w2):
            self.assertEqual(self.told(watching), [("online", ["u"]), ("offline", ["u"])])

    def test_provides(self) -> None:
        """
        The adapter provides L{IAdapter} and reports its link.
        """
        self.assertTrue(verifyObject(IAdapter, self.a))
        self.assertEqual(self.successResultOf(self.a.health()), True)
        self.assertEqual(self.a.cluster_links(), {"nats": True})


# -- real daemons on a real nats-server --------------------------------------


def nats_answers(host: str, port: int) -> bool:
    """
    Whether a NATS server greets with INFO at C{host:port}.
    """
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            return sock.recv(4).startswith(b"INFO")
    except OSError:
        return False


def require_nats(case: TestCase) -> None:
    """
    Fail (CI) or skip (elsewhere) without the shared NATS or nats-py.
    """
    try:
        import nats  # noqa: F401
    except ImportError:
        unavailable(case, "the NATS tests need nats-py (pip install 'sockudo-tw[nats]')")
    if not nats_answers(*SHARED_NATS):
        unavailable(case, "the NATS cluster tests need nats-server on 127.0.0.1:4222")


class PrivateNats:
    """
    A throwaway C{nats-server} on its own port, which a test may kill and
    start again on the same port (never the shared one).
    """

    def __init__(self, case: TestCase) -> None:
        self.case = case
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sockudo-nats-"))
        case.addCleanup(shutil.rmtree, self.dir, True)
        self.process: Any = None
        self.output: _Output | None = None

    async def start(self, *options: str) -> None:
        """
        Start it (with these extra command-line C{options}) and wait until
        it greets.
        """
        from twisted.internet import reactor

        binary = shutil.which("nats-server", path="/usr/sbin:/usr/bin:/usr/local/bin")
        if binary is None:
            unavailable(self.case, "the NATS restart test needs nats-server")
        self.output = _Output()
        argv = [binary, "-a", "127.0.0.1", "-p", str(self.port), *options]
        self.process = reactor.spawnProcess(  # type: ignore[attr-defined]
            self.output, binary, argv, env={}
        )
        self.case.addCleanup(lambda: Deferred.fromCoroutine(self.kill_and_wait()))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if nats_answers("127.0.0.1", self.port):
                return
            await task.deferLater(reactor, 0.05)
        self.case.fail(f"private nats-server did not start: {bytes(self.output.output)!r}")

    async def kill_and_wait(self) -> None:
        """
        SIGKILL it and wait until it is gone.
        """
        from twisted.internet import reactor

        self.kill()
        for _ in range(100):
            if self.output is None or self.output.ended:
                return
            await task.deferLater(reactor, 0.05)

    def signal(self, number: int) -> None:
        """
        Send it a signal (C{SIGSTOP}, C{SIGCONT}).
        """
        self.process.signalProcess(number)

    def kill(self) -> None:
        if self.output is not None and not self.output.ended:
            try:
                self.process.signalProcess("KILL")
            except Exception:
                pass


async def start_cluster(
    case: TestCase,
    nodes: int = 3,
    port: int = SHARED_NATS[1],
    node_timeout_ms: int = 30000,
    heartbeat_interval_ms: int = 10000,
    app: dict[str, Any] | None = None,
    kinds: tuple[type[ServerProcess], ...] = (),
) -> Cluster:
    """
    C{nodes} daemons with C{adapter.driver: nats} on a fresh subject
    prefix, and a Node driver (the Redis cluster tests' L{Cluster}).
    """
    from tests.interop_harness import NodeDriver, require_node

    require_node(case)
    config = {
        "adapter": {
            "driver": "nats",
            "nats": {
                "servers": [f"nats://127.0.0.1:{port}"],
                "prefix": f"sockudo_test_{uuid.uuid4().hex[:10]}",
                "request_timeout_ms": 2000,
                "connection_timeout_ms": 2000,
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
    for i in range(nodes):
        kind = kinds[i] if i < len(kinds) else ServerProcess
        servers.append(await kind.start(case, [app or app_config()], config))

    def describe() -> str:
        return "\n".join(s.log_tail(30) for s in servers)

    node = await NodeDriver.start(case, describe)
    cluster = Cluster(case, servers, node)
    await node.init_sdk(cluster.sdk_options(0))
    for i in range(nodes):
        await node.init_sdk(cluster.sdk_options(i), name=f"n{i}")
    # Let the nodes hear each other's first heartbeats.
    await cluster.settle(0.5)
    return cluster


class AsyncioServerProcess(ServerProcess):
    """
    A daemon on Twisted's asyncio reactor (C{twistd -r asyncio}), where
    the NATS client runs on the reactor's own loop.
    """

    def _spawn(self) -> None:
        from twisted.internet import reactor

        from tests.interop_harness import (
            REPO_ROOT,
            _OutputCollector,
            daemon_argv,
            server_environment,
        )

        env = server_environment()
        env["SOCKUDO_TEST_LISTEN_FD"] = "3"
        argv = daemon_argv(self.config_path)
        argv.insert(argv.index("-n"), "--reactor=asyncio")
        self._collector = _OutputCollector()
        self._transport = reactor.spawnProcess(  # type: ignore[attr-defined]
            self._collector,
            sys.executable,
            argv,
            env=env,
            path=str(REPO_ROOT),
            childFDs={0: "w", 1: "r", 2: "r", 3: self._socket.fileno()},
        )


class DaemonTests(TestCase):
    """
    Three real daemons, one Pusher service over NATS.
    """

    timeout = 120

    def setUp(self) -> None:
        require_nats(self)

    async def test_presence_counts_and_delivery(self) -> None:
        """
        Presence per user across nodes, exact counts and members from any
        node, delivery exactly once per subscriber with exclusion.
        """
        c = await start_cluster(self)
        channel = "presence-nats"
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
        for i in range(3):
            info = await c.rest(
                i,
                "get",
                {
                    "path": f"/channels/{channel}",
                    "params": {"info": "user_count,subscription_count"},
                },
            )
            self.assertEqual(info["body"]["user_count"], 2, info)
            self.assertEqual(info["body"]["subscription_count"], 3, info)
            users = await c.rest(i, "get", {"path": f"/channels/{channel}/users"})
            self.assertEqual(sorted(u["id"] for u in users["body"]["users"]), ["1", "2"])

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
                self.assertEqual([s for o, s in got if o == publisher], [0, 1, 2], got)
        self.assertEqual(c.events("b", channel, "not-for-b"), [])

        c.node.send(op="disconnect", client="a2")
        await c.settle(1.0)
        self.assertEqual(c.events("b", channel, "pusher:member_removed"), [])
        c.node.send(op="disconnect", client="a")
        removed = await c.node.wait_for(
            match("event", "b", channel=channel, event="pusher:member_removed"), "member_removed"
        )
        self.assertEqual(removed["data"]["id"], "1")
        info = await c.rest(
            0, "get", {"path": f"/channels/{channel}", "params": {"info": "user_count"}}
        )
        self.assertEqual(info["body"]["user_count"], 1, info)

    async def test_occupancy_webhooks_once_per_cluster(self) -> None:
        """
        Subscribers joining and leaving on two nodes, one after the other:
        one channel_occupied and one channel_vacated for the cluster.
        """
        from twisted.internet import reactor
        from twisted.web.server import Site

        from tests.test_webhooks_integration import Receiver

        receiver = Receiver()
        port = reactor.listenTCP(0, Site(receiver), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/hook"
        hooks = [{"url": url, "event_types": ["channel_occupied", "channel_vacated"]}]
        c = await start_cluster(self, nodes=2, app=app_config(webhooks=hooks))
        await c.connect("a", 0)
        await c.connect("b", 1)
        await c.subscribe("a", "occ")
        await c.subscribe("b", "occ")
        c.node.send(op="unsubscribe", client="a", channel="occ")
        await c.settle(0.3)
        c.node.send(op="unsubscribe", client="b", channel="occ")

        def names() -> list[str]:
            return [
                e["name"]
                for _, body in receiver.requests
                for e in json.loads(body)["events"]
                if e.get("channel") == "occ"
            ]

        async def vacated() -> bool:
            return "channel_vacated" in names()

        await c.until(vacated, "the channel_vacated webhook", within=10)
        await c.settle(1.0)
        self.assertEqual(sorted(names()), ["channel_occupied", "channel_vacated"])

    async def test_asyncio_reactor_node(self) -> None:
        """
        A node on the asyncio reactor (client on the reactor's loop) and one
        on the default reactor (client in its thread) form one cluster.
        """
        c = await start_cluster(self, nodes=2, kinds=(AsyncioServerProcess, ServerProcess))
        self.assertIn("NATS client on the reactor's asyncio loop", c.servers[0].log_tail(400))
        self.assertIn("NATS client on its own asyncio loop thread", c.servers[1].log_tail(400))
        await c.connect("a", 0, {"user_id": "a", "user_info": {}})
        await c.connect("b", 1, {"user_id": "b", "user_info": {}})
        await c.subscribe("a", "presence-mixed")
        await c.subscribe("b", "presence-mixed")
        for i in range(2):
            await c.rest(i, "trigger", "presence-mixed", "hello", {"from": i})
        for client in ("a", "b"):
            for i in range(2):
                await c.node.wait_for(
                    lambda o, client=client, i=i: (
                        match("event", client, channel="presence-mixed", event="hello")(o)
                        and o["data"]["from"] == i
                    ),
                    f"{client} to get node {i}'s event",
                )
        for i in range(2):
            users = await c.rest(i, "get", {"path": "/channels/presence-mixed/users"})
            self.assertEqual(sorted(u["id"] for u in users["body"]["users"]), ["a", "b"])

    async def test_watchlist_across_nodes(self) -> None:
        """
        A watcher on node 0: its initial state lists users online on other
        nodes; it hears C{online} when a watched user signs in on node 1,
        nothing while the user is still on node 2, and C{offline} when node
        2 is SIGKILLed.
        """
        c = await start_cluster(self, node_timeout_ms=3000, heartbeat_interval_ms=500)

        async def signin(client: str) -> None:
            c.node.send(op="signin", client=client)
            await c.node.wait_for(
                lambda o: (
                    o["type"] == "message"
                    and o.get("client") == client
                    and o["event"] == "pusher:signin_success"
                ),
                f"{client} signed in",
            )

        def watched(event: str, user: str) -> Callable[[dict[str, Any]], bool]:
            return lambda o: (
                o["type"] == "watchlist_event"
                and o.get("client") == "watcher"
                and o["event"] == event
                and user in o["data"]["user_ids"]
            )

        await c.connect("early", 2, user={"id": "early"})
        await signin("early")
        await c.connect("watcher", 0, user={"id": "w", "watchlist": ["early", "x"]})
        await signin("watcher")
        await c.node.wait_for(watched("online", "early"), "early listed online")
        await c.node.wait_for(watched("offline", "x"), "x listed offline")
        await c.connect("x1", 1, user={"id": "x"})
        await signin("x1")
        await c.node.wait_for(watched("online", "x"), "x online")
        await c.connect("x2", 2, user={"id": "x"})
        await signin("x2")
        c.node.send(op="disconnect", client="x1")
        await c.settle(3.0)
        self.assertEqual(len(c.node.matching(watched("offline", "x"))), 1)
        self.assertEqual(len(c.node.matching(watched("online", "x"))), 1)
        c.servers[2]._transport.signalProcess("KILL")
        await c.node.wait_for(watched("offline", "early"), "early offline after SIGKILL")

        async def x_offline() -> bool:
            return len(c.node.matching(watched("offline", "x"))) == 2

        await c.until(x_offline, "x offline after the SIGKILL")

    async def test_sigkill_node_heals(self) -> None:
        """
        A node killed with SIGKILL: within node_timeout plus one period the
        survivors send the member_removed its user never said; counts heal.
        """
        c = await start_cluster(self, node_timeout_ms=3000, heartbeat_interval_ms=500)
        channel = "presence-crash"
        await c.connect("a", 0, {"user_id": "alive", "user_info": {}})
        await c.connect("z", 2, {"user_id": "ghost", "user_info": {}})
        await c.subscribe("a", channel)
        await c.subscribe("z", channel)
        await c.node.wait_for(
            match("event", "a", channel=channel, event="pusher:member_added"), "ghost joins"
        )
        # A node only calls others dead once it has been connected for
        # node_timeout itself.
        await c.settle(3.0)
        c.servers[2]._transport.signalProcess("KILL")
        killed_at = time.monotonic()
        removed = await c.node.wait_for(
            match("event", "a", channel=channel, event="pusher:member_removed"),
            "the dead node's member to be removed",
            within=10,
        )
        elapsed = time.monotonic() - killed_at
        self.assertEqual(removed["data"]["id"], "ghost")
        # The bound: node_timeout plus one heartbeat period (0.75 s here),
        # with slack for delivery on a loaded machine.
        self.assertLess(elapsed, 3.0 + 0.75 + 2.0, f"took {elapsed:.1f}s")
        users = await c.rest(1, "get", {"path": f"/channels/{channel}/users"})
        self.assertEqual([u["id"] for u in users["body"]["users"]], ["alive"])
        await c.settle(1.0)
        self.assertEqual(len(c.events("a", channel, "pusher:member_removed")), 1)

    async def test_nats_restart_converges(self) -> None:
        """
        NATS killed and started again on the same port: nodes reconnect,
        state changed during the outage converges, delivery resumes, and
        no node was declared dead.
        """
        server = PrivateNats(self)
        await server.start()
        c = await start_cluster(
            self, nodes=2, port=server.port, node_timeout_ms=3000, heartbeat_interval_ms=500
        )
        await c.connect("a", 0, {"user_id": "a", "user_info": {}})
        await c.connect("b", 1, {"user_id": "b", "user_info": {}})
        await c.subscribe("a", "presence-o")
        await c.subscribe("b", "presence-o")
        await server.kill_and_wait()
        await c.settle(1.0)
        await c.connect("a2", 0, {"user_id": "late", "user_info": {}})
        await c.subscribe("a2", "presence-o")
        await c.settle(1.0)
        await server.start()

        async def users_converged() -> bool:
            users = await c.rest(1, "get", {"path": "/channels/presence-o/users"})
            return sorted(u["id"] for u in users["body"]["users"]) == ["a", "b", "late"]

        await c.until(users_converged, "node 1 to list the member who joined meanwhile", 20)
        await c.node.wait_for(
            match("event", "b", channel="presence-o", event="pusher:member_added"),
            "node 1's client to hear of the member who joined meanwhile",
        )

        async def delivered() -> bool:
            await c.rest(0, "trigger", "presence-o", "after", {})
            await c.settle(0.3)
            return bool(c.events("b", "presence-o", "after"))

        await c.until(delivered, "cross-node delivery to resume", within=15)
        await c.settle(4.0)
        for s in c.servers:
            self.assertNotIn("dropped from the cluster", s.log_tail(400), s.log_tail())
            self.assertIn("NATS connection lost", s.log_tail(400), s.log_tail())
        info = await c.rest(
            0, "get", {"path": "/channels/presence-o", "params": {"info": "user_count"}}
        )
        self.assertEqual(info["body"]["user_count"], 3, info)


class StallTests(TestCase):
    """
    NATS stalled (SIGSTOP) for longer than node_timeout.
    """

    timeout = 90

    def setUp(self) -> None:
        require_nats(self)

    async def test_stalled_nats(self) -> None:
        """
        The nodes notice the stall through unanswered PINGs before
        node_timeout, so nobody is declared dead; once NATS runs again
        they reconnect and a change made meanwhile converges.
        """
        server = PrivateNats(self)
        await server.start()
        c = await start_cluster(
            self, nodes=2, port=server.port, node_timeout_ms=3000, heartbeat_interval_ms=500
        )
        await c.connect("a", 0, {"user_id": "a", "user_info": {}})
        await c.connect("b", 1, {"user_id": "b", "user_info": {}})
        await c.subscribe("a", "presence-s")
        await c.subscribe("b", "presence-s")
        server.signal(signal.SIGSTOP)
        self.addCleanup(
            lambda: server.output is None or server.output.ended or server.signal(signal.SIGCONT)
        )
        await c.settle(5.0)
        await c.connect("a2", 0, {"user_id": "late", "user_info": {}})
        await c.subscribe("a2", "presence-s")
        server.signal(signal.SIGCONT)

        async def converged() -> bool:
            users = await c.rest(1, "get", {"path": "/channels/presence-s/users"})
            return sorted(u["id"] for u in users["body"]["users"]) == ["a", "b", "late"]

        await c.until(converged, "node 1 to list the member who joined meanwhile", 20)
        await c.settle(4.0)
        for s in c.servers:
            self.assertIn("NATS connection lost", s.log_tail(400), s.log_tail())
            self.assertNotIn("dropped from the cluster", s.log_tail(400), s.log_tail())
        self.assertEqual(c.events("a", "presence-s", "pusher:member_removed"), [])
        self.assertEqual(c.events("b", "presence-s", "pusher:member_removed"), [])


class LinkTests(TestCase):
    """
    L{NatsLink} on real NATS servers: order, credentials, max_payload.
    """

    timeout = 60

    def setUp(self) -> None:
        require_nats(self)

    async def link(
        self, port: int, subjects: list[str], wait_up: bool = True, **options: Any
    ) -> tuple[NatsLink, list[bytes]]:
        from twisted.internet import reactor

        got: list[bytes] = []
        link = NatsLink(
            reactor,
            NatsLinkOptions(servers=(f"nats://127.0.0.1:{port}",), reconnect_wait=0.2, **options),
            subjects,
            lambda subject, payload: got.append(payload),
        )
        link.start()
        self.addCleanup(link.stop)
        if wait_up:
            await until(lambda: link.up, "the link to connect")
        return link, got

    async def test_in_order_between_links(self) -> None:
        """
        Messages from one link reach another in order, none lost; a link
        does not receive its own (no echo).
        """
        subject = f"sockudo_test.{uuid.uuid4().hex}"
        a, a_got = await self.link(SHARED_NATS[1], [subject])
        _, b_got = await self.link(SHARED_NATS[1], [subject])
        for i in range(2000):
            a.publish(subject, str(i).encode())
        await until(lambda: len(b_got) == 2000, "2000 messages")
        self.assertEqual(b_got, [str(i).encode() for i in range(2000)])
        self.assertEqual(a_got, [])

    async def test_credentials(self) -> None:
        """
        A wrong token never connects (and says so); the right one does.
        """
        server = PrivateNats(self)
        await server.start("--auth", "s3cret")
        wrong, _ = await self.link(server.port, ["x"], wait_up=False, token="nope")
        right, _ = await self.link(server.port, ["x"], token="s3cret")
        self.assertTrue(right.up)
        self.assertFalse(wrong.up)

    async def test_user_password(self) -> None:
        """
        Username and password are sent.
        """
        server = PrivateNats(self)
        await server.start("--user", "u", "--pass", "p")
        link, _ = await self.link(server.port, ["x"], username="u", password="p")
        self.assertTrue(link.up)

    async def test_max_payload_dropped(self) -> None:
        """
        A message over the server's max_payload is dropped and counted; the
        link stays usable.
        """
        server = PrivateNats(self)
        conf = server.dir / "nats.conf"
        conf.write_text("max_payload: 4096\n")
        await server.start("-c", str(conf))
        subject = "big"
        a, _ = await self.link(server.port, [subject])
        _, b_got = await self.link(server.port, [subject])
        a.publish(subject, b"x" * 10000)
        a.publish(subject, b"small")
        await until(lambda: b_got == [b"small"], "the small message")
        self.assertEqual(a.dropped, 1)
        self.assertTrue(a.up)


async def until(check: Callable[[], bool], what: str, within: float = 10.0) -> None:
    """
    Poll C{check} until true, failing after C{within} seconds.
    """
    from twisted.internet import reactor

    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.05)


class MissingLibraryTests(SynchronousTestCase):
    """
    Without nats-py the driver stops the start naming the pip extra.
    """

    def test_missing_nats_py(self) -> None:
        import sys

        from sockudo_tw.adapters.nats import nats_adapter_from_config
        from sockudo_tw.config import ConfigError, ServerConfig

        saved = sys.modules.get("nats")
        sys.modules["nats"] = None  # type: ignore[assignment]
        if saved is not None:
            self.addCleanup(sys.modules.__setitem__, "nats", saved)
        else:
            self.addCleanup(sys.modules.pop, "nats", None)
        with self.assertRaises(ConfigError) as e:
            nats_adapter_from_config(ServerConfig(), task.Clock())
        self.assertIn("pip install 'sockudo-tw[nats]'", str(e.exception))

    def test_built_from_config(self) -> None:
        """
        The keys of C{adapter.nats} and C{cluster_health} reach the adapter.
        """
        import attrs

        from sockudo_tw.adapters.nats import nats_adapter_from_config
        from sockudo_tw.config import AdapterConfig, NatsConfig, ServerConfig

        nats_config = NatsConfig(prefix="p", request_timeout_ms=1500)
        config = ServerConfig()
        config = attrs.evolve(
            config, adapter=attrs.evolve(AdapterConfig(driver="nats"), nats=nats_config)
        )
        adapter = nats_adapter_from_config(config, task.Clock())
        self.assertEqual(adapter.options.prefix, "p")
        self.assertEqual(adapter.options.request_timeout, 1.5)
        self.assertEqual(adapter.options.node_timeout, 30.0)
        self.assertEqual(adapter.options.period, 7.5)
