"""
Tests of the Redis Cluster adapter (L{sockudo_tw.adapters.redis_cluster})
and its slot router (L{sockudo_tw.adapters._cluster_router}).

The integration tests run a private 3-master Redis Cluster made from the
machine's C{redis-server} on free ports (L{PrivateRedisCluster}); without
C{redis-server}/C{redis-cli} they fail under C{CI=true} and skip elsewhere.
The adapter contract and the redirection tests drive the adapter on a
private reactor they spin themselves, so the contract's synchronous
C{result()} works against real servers; the daemon tests run three real
C{twistd sockudo} nodes.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.selectreactor import SelectReactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sockudo_tw.adapters import DRIVERS, SUPPORTED_ADAPTER_DRIVERS
from sockudo_tw.adapters._cluster_router import (
    ClusterTopology,
    ClusterUnavailableError,
    command_key,
    crc16,
    key_slot,
    parse_redirect,
)
from sockudo_tw.adapters.local import LocalAdapter
from sockudo_tw.adapters.redis import RedisNodeOptions
from sockudo_tw.adapters.redis_cluster import (
    RedisClusterAdapter,
    cluster_prefix,
    parse_cluster_nodes,
)
from sockudo_tw.pusher.presence import PresenceMember
from tests.interop_harness import (
    NodeDriver,
    ServerProcess,
    app_config,
    match,
    require_node,
    unavailable,
)
from tests.test_adapter_contract import _AdapterContract
from tests.test_redis_adapter import FakeSocket, RecordingEvents
from tests.test_redis_cluster import Cluster, _true_when, require_redis

# -- unit tests ---------------------------------------------------------------


class SlotTests(SynchronousTestCase):
    """
    Hash slots as the Redis Cluster specification defines them.
    """

    def test_crc16_vectors(self) -> None:
        """
        CRC16-XMODEM: the specification's check value for "123456789" is
        0x31C3; the empty input is 0.
        """
        self.assertEqual(crc16(b"123456789"), 0x31C3)
        self.assertEqual(crc16(b""), 0)

    def test_known_slots(self) -> None:
        """
        Slots Redis itself gives (C{CLUSTER KEYSLOT}).
        """
        self.assertEqual(key_slot("foo"), 12182)
        self.assertEqual(key_slot("bar"), 5061)
        self.assertEqual(key_slot("hello"), 866)
        self.assertEqual(key_slot(b"somekey"), 11058)

    def test_hash_tags(self) -> None:
        """
        Only the first non-empty C{{...}} is hashed; C{{}} is no tag.
        """
        self.assertEqual(key_slot("{user1000}.following"), key_slot("{user1000}.followers"))
        self.assertEqual(key_slot("{user1000}.following"), key_slot("user1000"))
        self.assertEqual(key_slot("foo{}{bar}"), crc16(b"foo{}{bar}") % 16384)
        self.assertEqual(key_slot("foo{{bar}}zap"), key_slot("{bar"))
        self.assertEqual(key_slot("foo{bar}{zap}"), key_slot("bar"))

    def test_adapter_keys_share_a_slot(self) -> None:
        """
        The cluster prefix is one hash tag: every adapter key of every app,
        the node registry and the bus name hash to one slot.
        """
        p = cluster_prefix("sockudo")
        self.assertEqual(p, "{sockudo}:")
        self.assertEqual(cluster_prefix("{mine}x:"), "{mine}x:")
        keys = [
            "nodes",
            "n:node1",
            "dead:node1",
            "conns",
            "watching",
            "a:app1:ch",
            "a:app{2}:p:presence-x",
            "a:app1:pi:presence-x",
        ]
        self.assertEqual({key_slot(p + k) for k in keys}, {key_slot("sockudo")})

    def test_redirects(self) -> None:
        """
        C{MOVED}/C{ASK} error texts are parsed; others are not redirects.
        """
        self.assertEqual(
            parse_redirect("MOVED 3999 127.0.0.1:6381"), ("MOVED", 3999, ("127.0.0.1", 6381))
        )
        self.assertEqual(parse_redirect("ASK 1 ::1:7000"), ("ASK", 1, ("::1", 7000)))
        self.assertIsNone(parse_redirect("ERR unknown command"))
        self.assertIsNone(parse_redirect("MOVED x y:z"))

    def test_command_keys(self) -> None:
        """
        Commands are routed by their first key; scripts by their first
        declared key; keyless commands go anywhere.
        """
        self.assertEqual(command_key(("HGETALL", "k")), b"k")
        self.assertEqual(command_key(("EVALSHA", "sha", 1, b"anchor", "arg")), b"anchor")
        self.assertIsNone(command_key(("EVALSHA", "sha", 0, "arg")))
        self.assertIsNone(command_key(("PUBLISH", "chan", "x")))
        self.assertIsNone(command_key(("PUBSUB", "NUMSUB", "chan")))
        self.assertIsNone(command_key(("PING",)))

    def test_nodes_config(self) -> None:
        """
        C{adapter.cluster.nodes} takes URLs or host:port; an empty list is
        refused by name.
        """
        urls = parse_cluster_nodes(["redis://:pw@10.0.0.1:7000", "127.0.0.1:7001"])
        self.assertEqual(
            [(u.host, u.port) for u in urls], [("10.0.0.1", 7000), ("127.0.0.1", 7001)]
        )
        self.assertEqual(urls[0].password, "pw")
        self.assertRaises(ValueError, parse_cluster_nodes, [])
        self.assertIn("redis-cluster", SUPPORTED_ADAPTER_DRIVERS)
        self.assertIn("redis-cluster", DRIVERS)


# -- the private cluster ------------------------------------------------------


def _free_cluster_port() -> int:
    """
    A free port whose cluster bus port (port + 10000) is free too.
    """
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port > 55000:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for redis-server")


class PrivateRedisCluster:
    """
    Three C{redis-server --cluster-enabled yes} masters (no replicas, no
    persistence) on free ports, joined with C{redis-cli --cluster create};
    everything is killed and removed by L{stop}.
    """

    def __init__(self, password: str | None = None) -> None:
        self.password = password
        self.dir = Path(tempfile.mkdtemp(prefix="sockudo-rcluster-"))
        self.ports = [_free_cluster_port() for _ in range(3)]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @staticmethod
    def missing() -> str | None:
        """
        Why the cluster cannot be made here, or L{None}.
        """
        for binary in ("redis-server", "redis-cli"):
            if shutil.which(binary) is None:
                return f"the Redis Cluster tests need {binary} on PATH (Debian redis-server)"
        return None

    def start_server(self, port: int) -> None:
        """
        Start (or restart, keeping its cluster config file) one master.
        """
        self.processes[port] = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                "2000",
                "--appendonly",
                "no",
                "--save",
                "",
                "--dir",
                str(self.dir),
                *(["--requirepass", self.password] if self.password else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def client(self, port: int) -> redis.Redis:
        """
        A blocking client of one master (set-up and checks only).
        """
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, password=self.password)

    def answers(self, port: int) -> bool:
        """
        Whether the master on C{port} answers PING.
        """
        try:
            return bool(self.client(port).ping())
        except redis.RedisError:
            return False

    def state_ok(self) -> bool:
        """
        Whether every master says C{cluster_state:ok}.
        """
        try:
            for port in self.ports:
                info = self.client(port).execute_command("CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                if "cluster_state:ok" not in text:
                    return False
            return True
        except redis.RedisError:
            return False

    def start(self) -> None:
        """
        Start the three masters, create the cluster, wait for
        C{cluster_state:ok} on every node (blocking: test set-up only).
        """
        for port in self.ports:
            self.start_server(port)
        _wait(lambda: all(self.answers(p) for p in self.ports), "redis-server to start")
        subprocess.run(
            ["redis-cli", "--cluster", "create"]
            + [f"127.0.0.1:{p}" for p in self.ports]
            + ["--cluster-replicas", "0", "--cluster-yes"]
            + (["-a", self.password, "--no-auth-warning"] if self.password else []),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
        _wait(self.state_ok, "cluster_state:ok")

    def kill(self, port: int) -> None:
        """
        SIGKILL one master and wait for its end.
        """
        process = self.processes.pop(port, None)
        if process is not None:
            process.kill()
            process.wait(10)

    def stop(self) -> None:
        """
        Kill every master and remove the directory.
        """
        for port in list(self.processes):
            self.kill(port)
        shutil.rmtree(self.dir, ignore_errors=True)

    def master_of(self, slot: int) -> int:
        """
        The port of the master serving C{slot}.
        """
        for entry in self.client(self.ports[0]).execute_command("CLUSTER", "SLOTS"):
            first, last, master = entry[0], entry[1], entry[2]
            if int(first) <= slot <= int(last):
                return int(master[1])
        raise AssertionError(f"slot {slot} unassigned")

    def node_id(self, port: int) -> str:
        """
        The cluster node id of the master on C{port}.
        """
        raw = self.client(port).execute_command("CLUSTER", "MYID")
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def start_migration(self, slot: int, source: int, target: int) -> None:
        """
        Mark C{slot} migrating from C{source} to C{target} and move its keys
        (the slot stays owned by C{source}: keys there answer C{ASK}).
        """
        src, dst = self.client(source), self.client(target)
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(target))
        while True:
            keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
            if not keys:
                break
            src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)

    def finish_migration(self, slot: int, target: int) -> None:
        """
        Give C{slot} to C{target} on every master.
        """
        target_id = self.node_id(target)
        for port in [target] + [p for p in self.ports if p != target]:
            self.client(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def delete_prefix(self, prefix: str) -> None:
        """
        Delete a test's keys from every running master.
        """
        for port in list(self.processes):
            try:
                client = self.client(port)
                for key in client.scan_iter(match=prefix + "*", count=500):
                    client.delete(key)
            except redis.RedisError:
                pass


def _wait(check: Any, what: str, within: float = 20.0) -> None:
    """
    Poll a blocking C{check} until it is true (set-up only).
    """
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def private_cluster(case: SynchronousTestCase, password: str | None = None) -> PrivateRedisCluster:
    """
    A started private cluster, stopped in C{case}'s cleanup.
    """
    missing = PrivateRedisCluster.missing()
    if missing is not None:
        unavailable(case, missing)
    cluster = PrivateRedisCluster(password)
    case.addCleanup(cluster.stop)
    cluster.start()
    return cluster


# -- the adapter on a private reactor -----------------------------------------


class SpunNode:
    """
    A L{RedisClusterAdapter} on its own L{SelectReactor}, which the test
    spins until what it waits for happens (bounded).
    """

    def __init__(
        self,
        case: SynchronousTestCase,
        cluster: PrivateRedisCluster,
        *,
        sharded: bool = True,
        beside: SpunNode | None = None,
        node_id: str = "A",
    ) -> None:
        """
        @param beside: another node whose reactor and prefix this one
            shares (two nodes of one Pusher cluster).
        """
        self.reactor = SelectReactor() if beside is None else beside.reactor
        self.case = case
        self.cluster = cluster
        self.node_id = node_id
        self.name = f"t{uuid.uuid4().hex[:10]}" if beside is None else beside.name
        self.prefix = cluster_prefix(self.name)
        case.addCleanup(cluster.delete_prefix, self.prefix)
        self.events = RecordingEvents()
        reactor = self.reactor

        def endpoint_for(host: str, port: int) -> TCP4ClientEndpoint:
            return TCP4ClientEndpoint(reactor, host, port, timeout=5)

        self.topology = ClusterTopology(
            reactor,
            [("127.0.0.1", p) for p in cluster.ports],
            endpoint_for,
            password=cluster.password,
            timeout=2.0,
        )
        self.adapter = RedisClusterAdapter(
            reactor,
            self.topology,
            RedisNodeOptions(
                prefix=self.name,
                heartbeat_interval=1.0,
                node_timeout=4.0,
                requests_timeout=2.0,
                ping_interval=5.0,
                ping_timeout=2.0,
                password=cluster.password,
            ),
            local=LocalAdapter(self.events, framer=lambda frame: frame),
            node_id=node_id,
            sharded=sharded,
        )
        self.adapter.startService()
        case.addCleanup(self.stop)
        self.spin_until(lambda: self.adapter.link.is_up, "the cluster link")
        self.spin_until(self.registered, "the node to register")

    def registered(self) -> bool:
        """
        Whether Redis lists this node in the registry.
        """
        d = self.adapter.link.command("ZSCORE", self.prefix + "nodes", self.node_id)
        return self.wait(d) is not None

    def spin_until(self, check: Any, what: str, within: float = 10.0) -> None:
        """
        Run the private reactor until C{check()} is true.
        """
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            self.reactor.iterate(0.01)
            if check():
                return
        raise AssertionError(f"timed out waiting for {what}")

    def wait(self, d: Deferred[Any]) -> Any:
        """
        Run the private reactor until C{d} fires; its result (or raise).
        """
        box: list[Any] = []
        d.addBoth(box.append)
        self.spin_until(lambda: bool(box), "a reply")
        if hasattr(box[0], "raiseException"):
            box[0].raiseException()
        return box[0]

    def settle(self) -> None:
        """
        Spin until no reply is outstanding on any connection.
        """
        link = self.adapter.link

        def idle() -> bool:
            links = [link, *link._others.values()]
            return all(
                lk.commands.protocol is None or lk.commands.protocol.replies_awaited == 0
                for lk in links
            )

        for _ in range(3):
            self.reactor.iterate(0.005)
        self.spin_until(idle, "outstanding replies")

    def stop(self) -> None:
        """
        Stop the adapter and close what is left on the private reactor.
        """
        if self.adapter.running:
            self.wait(self.adapter.stopService())
        for _ in range(5):
            self.reactor.iterate(0.01)
        self.reactor.disconnectAll()


class RedisClusterAdapterContractTests(_AdapterContract, SynchronousTestCase):
    """
    The adapter contract against a real 3-master Redis Cluster (sharded pub/sub).
    """

    def make(self) -> None:
        """
        One node on a fresh private cluster.
        """
        self.node = SpunNode(self, private_cluster(self))
        self.adapter = self.node.adapter
        self.events = self.node.events

    def settle(self) -> None:
        """
        Wait until Redis has answered everything sent.
        """
        self.node.settle()

    def result(self, d: Deferred[Any]) -> Any:
        """
        Wait for C{d} on the private reactor.
        """
        return self.node.wait(d)


class ClassicPubSubAdapterContractTests(RedisClusterAdapterContractTests):
    """
    The contract with classic pub/sub (C{PUBLISH}/C{SUBSCRIBE}).
    """

    def make(self) -> None:
        """
        One node with classic pub/sub on a fresh private cluster.
        """
        self.node = SpunNode(self, private_cluster(self), sharded=False)
        self.adapter = self.node.adapter
        self.events = self.node.events


class TwoNodeTests(SynchronousTestCase):
    """
    Two adapters of one Pusher cluster on the Redis Cluster: the bus and
    the shared state, with classic and with sharded pub/sub.
    """

    def check_two_nodes(self, sharded: bool) -> None:
        """
        Two nodes share state and the bus; with C{sharded}, also across a slot move.
        """
        cluster = private_cluster(self)
        a = SpunNode(self, cluster, sharded=sharded)
        b = SpunNode(self, cluster, sharded=sharded, beside=a, node_id="B")
        sa, sb = FakeSocket("1.1"), FakeSocket("2.1")
        a.adapter.add_socket("app", sa)
        b.adapter.add_socket("app", sb)
        a.wait(a.adapter.subscribe("app", "presence-x", "1.1", PresenceMember("ua", {}), 0))
        joined = b.wait(
            b.adapter.subscribe("app", "presence-x", "2.1", PresenceMember("ub", {}), 0)
        )
        self.assertEqual(sorted(joined.members), ["ua", "ub"])
        self.assertTrue(joined.member_added)
        b.adapter.broadcast("app", "presence-x", b"hello", None)
        a.spin_until(lambda: b"hello" in sa.frames, "B's broadcast on A")
        self.assertEqual(sb.frames.count(b"hello"), 1)
        for node in (a, b):
            self.assertEqual(
                node.wait(node.adapter.channel_subscription_count("app", "presence-x")), 2
            )
        numsub = a.wait(a.adapter.link.command("PUBSUB", "NUMSUB", a.adapter.link.channel))
        self.assertEqual(int(numsub[1]), 2)
        if sharded:
            # The home slot moves: the server drops the shard subscriptions,
            # the nodes follow the slot and the bus works again.
            slot = key_slot(a.prefix)
            source = cluster.master_of(slot)
            target = next(p for p in cluster.ports if p != source)
            cluster.start_migration(slot, source, target)
            cluster.finish_migration(slot, target)
            for node in (a, b):
                node.spin_until(
                    lambda node=node: (
                        node.adapter.link.home.address == ("127.0.0.1", target)
                        and node.adapter.link.is_up
                    ),
                    "the link on the new master",
                )
            b.adapter.broadcast("app", "presence-x", b"again", None)
            a.spin_until(lambda: b"again" in sa.frames, "the bus after the move")

    def test_classic_pubsub(self) -> None:
        """
        Classic PUBLISH/SUBSCRIBE.
        """
        self.check_two_nodes(sharded=False)

    def test_sharded_pubsub(self) -> None:
        """
        SPUBLISH/SSUBSCRIBE, and a move of the bus's slot.
        """
        self.check_two_nodes(sharded=True)


class PasswordTests(SynchronousTestCase):
    """
    A cluster that requires a password.
    """

    def test_password(self) -> None:
        """
        The slot map, scripts, the bus and other masters all log in.
        """
        cluster = private_cluster(self, password="s3cret")
        a = SpunNode(self, cluster)
        b = SpunNode(self, cluster, beside=a, node_id="B")
        sa = FakeSocket("1.1")
        a.adapter.add_socket("app", sa)
        a.wait(a.adapter.subscribe("app", "ch", "1.1", None, 0))
        b.adapter.broadcast("app", "ch", b"hello", None)
        a.spin_until(lambda: b"hello" in sa.frames, "B's broadcast on A")
        home = cluster.master_of(key_slot(a.prefix))
        key = next(
            k
            for k in (f"{a.name}-other{{{i}}}" for i in range(100))
            if cluster.master_of(key_slot(k)) != home
        )
        a.wait(a.adapter.link.command("SET", key, "1"))
        self.assertEqual(a.wait(a.adapter.link.command("GET", key)), b"1")
        a.wait(a.adapter.link.command("DEL", key))


class TopologyFailureTests(SynchronousTestCase):
    """
    A slot map that cannot be had says why.
    """

    def refresh(self, seeds: list[tuple[str, int]]) -> Any:
        """
        The outcome of one slot-map refresh from C{seeds}.
        """
        reactor = SelectReactor()
        self.addCleanup(reactor.disconnectAll)
        topology = ClusterTopology(
            reactor,
            seeds,
            lambda host, port: TCP4ClientEndpoint(reactor, host, port, timeout=2),
            timeout=2.0,
        )
        box: list[Any] = []
        topology.refresh().addBoth(box.append)
        deadline = time.monotonic() + 10
        while not box and time.monotonic() < deadline:
            reactor.iterate(0.01)
        self.assertTrue(box, "no outcome")
        self.assertFalse(topology.known)
        return box[0]

    def test_not_a_cluster(self) -> None:
        """
        A plain Redis (the shared one) as a seed: refused, with Redis's
        reason in the error.
        """
        require_redis(self)
        failure = self.refresh([("127.0.0.1", 6379)])
        failure.trap(ClusterUnavailableError)
        self.assertIn("cluster support disabled", str(failure.value))

    def test_nothing_listens(self) -> None:
        """
        No seed answers: the error names each one.
        """
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        failure = self.refresh([("127.0.0.1", port)])
        failure.trap(ClusterUnavailableError)
        self.assertIn(f"127.0.0.1:{port}", str(failure.value))


class RedirectionTests(SynchronousTestCase):
    """
    C{ASK} and C{MOVED} from a slot migrated under a running adapter.
    """

    def test_migrated_home_slot(self) -> None:
        """
        The adapter's slot migrates to another master: while it is being
        migrated, reads of moved keys follow C{ASK}; once it is moved, the
        next command gets C{MOVED}, the slot map is refreshed, the link
        redials the new master and the state (now there) is served again.
        """
        cluster = private_cluster(self)
        node = SpunNode(self, cluster)
        adapter = node.adapter
        node.adapter.add_socket("app", FakeSocket("1.1"))
        outcome = node.wait(
            adapter.subscribe("app", "presence-m", "1.1", PresenceMember("u1", {"n": 1}), 0)
        )
        self.assertEqual(list(outcome.members), ["u1"])
        slot = key_slot(node.prefix)
        source = cluster.master_of(slot)
        target = next(p for p in cluster.ports if p != source)
        self.assertEqual(adapter.link.home.address, ("127.0.0.1", source))

        cluster.start_migration(slot, source, target)
        members = node.wait(adapter.link.command("HGETALL", node.prefix + "a:app:pi:presence-m"))
        self.assertEqual(members, [b"u1", b'{"n":1}'])
        self.assertGreaterEqual(adapter.link.redirects, 1)

        cluster.finish_migration(slot, target)
        node.spin_until(
            lambda: (
                node.wait(adapter.presence_members("app", "presence-m")) == {"u1": {"n": 1}}
                and adapter.link.home.address == ("127.0.0.1", target)
            ),
            "the link to follow the slot",
        )
        node.spin_until(lambda: adapter.link.is_up, "the link on the new master")
        for side in (adapter.link.commands, adapter.link.subscriber):
            self.assertEqual(side.protocol.cluster_address, ("127.0.0.1", target))
        node.adapter.add_socket("app", FakeSocket("1.2"))
        outcome = node.wait(
            adapter.subscribe("app", "presence-m", "1.2", PresenceMember("u2", {}), 0)
        )
        self.assertEqual(sorted(outcome.members), ["u1", "u2"])
        self.assertEqual(node.wait(adapter.channel_subscription_count("app", "presence-m")), 2)

    def test_slot_map_matches_redis(self) -> None:
        """
        The router's slot for random keys is Redis's C{CLUSTER KEYSLOT},
        and the slot map names the master that owns each.
        """
        cluster = private_cluster(self)
        client = cluster.client(cluster.ports[0])
        node = SpunNode(self, cluster)
        for i in range(200):
            key = f"k{i}:{uuid.uuid4().hex[:6]}" + (f"{{tag{i}}}" if i % 3 == 0 else "")
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            self.assertEqual(key_slot(key), slot, key)
            self.assertEqual(node.topology.master_for(slot), ("127.0.0.1", cluster.master_of(slot)))
        # Keys of other slots go to their own master (no redirection).
        before = node.adapter.link.redirects
        for i in range(30):
            key = f"{node.name}-other{{x{i}}}"
            node.wait(node.adapter.link.command("SET", key, str(i)))
            self.assertEqual(node.wait(node.adapter.link.command("GET", key)), str(i).encode())
            node.wait(node.adapter.link.command("DEL", key))
        self.assertEqual(node.adapter.link.redirects, before)
        self.assertGreaterEqual(len(node.adapter.link._others), 1)


# -- three daemons ------------------------------------------------------------


async def start_daemons(
    case: TestCase,
    cluster: PrivateRedisCluster,
    nodes: int = 3,
    heartbeat_interval_ms: int = 500,
    node_timeout_ms: int = 30000,
    app: dict[str, Any] | None = None,
) -> Cluster:
    """
    C{nodes} daemons with C{adapter.driver: redis-cluster} on a fresh
    prefix, driven like L{tests.test_redis_cluster.Cluster}.
    """
    require_node(case)
    prefix = f"sockudo_test_{uuid.uuid4().hex[:10]}"
    config = {
        "adapter": {
            "driver": "redis-cluster",
            "cluster": {
                "nodes": [f"redis://127.0.0.1:{p}" for p in cluster.ports],
                "prefix": prefix,
                "request_timeout_ms": 2000,
            },
            "cluster_health": {
                "enabled": True,
                "heartbeat_interval_ms": heartbeat_interval_ms,
                "node_timeout_ms": node_timeout_ms,
                "cleanup_interval_ms": min(node_timeout_ms, 10000),
            },
        }
    }
    apps = [app if app is not None else app_config()]
    servers = [await ServerProcess.start(case, apps, config) for _ in range(nodes)]

    def describe() -> str:
        return "\n".join(s.log_tail(30) for s in servers)

    node = await NodeDriver.start(case, describe)
    c = Cluster(case, servers, node)
    await node.init_sdk(c.sdk_options(0))
    for i in range(nodes):
        await node.init_sdk(c.sdk_options(i), name=f"n{i}")
    c.prefix = cluster_prefix(prefix)  # type: ignore[attr-defined]
    return c


class DaemonTests(TestCase):
    """
    Three C{twistd sockudo} nodes on the private Redis Cluster.
    """

    timeout = 180

    async def test_presence_and_counts_from_any_node(self) -> None:
        """
        Delivery, presence and counts are exact from every node.
        """
        cluster = private_cluster(self)
        c = await start_daemons(self, cluster)
        channel = "presence-rc"
        await c.connect("a", 0, {"user_id": "1", "user_info": {"name": "Ann"}})
        await c.connect("a2", 1, {"user_id": "1", "user_info": {"name": "Ann"}})
        await c.connect("b", 2, {"user_id": "2", "user_info": {"name": "Bob"}})
        for client in ("a", "a2", "b"):
            await c.subscribe(client, channel)
        await c.settle()
        for i in range(3):
            await c.rest(i, "trigger", channel, "ping", {"from": i})
        for client in ("a", "a2", "b"):
            await c.until(
                lambda client=client: _true_when(
                    [1] if len(c.events(client, channel, "ping")) >= 3 else []
                ),
                f"{client} to get every ping",
            )
        await c.settle()
        for client in ("a", "a2", "b"):
            self.assertEqual(len(c.events(client, channel, "ping")), 3)
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
        # All of the adapter's state is on the master of its hash tag.
        home = cluster.client(cluster.master_of(key_slot(c.prefix)))  # type: ignore[attr-defined]
        self.assertEqual(home.zcard(c.prefix + "nodes"), 3)  # type: ignore[attr-defined]
        c.node.send(op="disconnect", client="a2")
        c.node.send(op="disconnect", client="a")
        removed = await c.node.wait_for(
            lambda o: (
                o["type"] == "event"
                and o.get("client") == "b"
                and o.get("event") == "pusher:member_removed"
            ),
            "member_removed",
        )
        self.assertEqual(removed["data"]["id"], "1")

    async def test_master_restart_converges(self) -> None:
        """
        The master holding the adapter's slot is killed and started again
        empty: the nodes re-register, members who joined meanwhile reach
        the other nodes, and counts from every node converge.
        """
        from twisted.internet import reactor

        cluster = private_cluster(self)
        c = await start_daemons(self, cluster, nodes=2)
        await c.connect("a", 0, {"user_id": "a", "user_info": {}})
        await c.connect("b", 1, {"user_id": "b", "user_info": {}})
        await c.subscribe("a", "presence-o")
        await c.subscribe("b", "presence-o")
        await c.settle(1.5)
        home = cluster.master_of(key_slot(c.prefix))  # type: ignore[attr-defined]
        cluster.kill(home)
        await task.deferLater(reactor, 1.0)
        await c.connect("a2", 0, {"user_id": "late", "user_info": {}})
        await c.subscribe("a2", "presence-o")
        cluster.start_server(home)

        async def cluster_ok() -> bool:
            return cluster.state_ok()

        await c.until(cluster_ok, "the cluster to be ok again", within=30)
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
            within=30,
        )

        async def counts_agree() -> bool:
            for i in range(2):
                users = await c.rest(i, "get", {"path": "/channels/presence-o/users"})
                if sorted(u["id"] for u in users["body"]["users"]) != ["a", "b", "late"]:
                    return False
            return True

        await c.until(counts_agree, "every node to list every member", within=30)

        async def delivered() -> bool:
            await c.rest(0, "trigger", "presence-o", "after", {})
            await c.settle(0.3)
            return bool(c.events("b", "presence-o", "after"))

        await c.until(delivered, "cross-node delivery to resume", within=15)
        for server in c.servers:
            log = server.log_tail(400)
            self.assertIn("Redis command connection lost", log)
            self.assertNotIn("Traceback", log)
            self.assertNotIn("Unhandled", log)

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
        cluster = private_cluster(self)
        c = await start_daemons(self, cluster, nodes=2, app=app_config(webhooks=hooks))
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

    async def test_sigkill_node_heals(self) -> None:
        """
        A daemon killed with SIGKILL: within node_timeout a survivor sends
        the member_removed its user never said, and counts heal.
        """
        cluster = private_cluster(self)
        c = await start_daemons(self, cluster, node_timeout_ms=3000)
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
