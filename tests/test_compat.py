"""
Tests for L{sockudo_tw.compat}: every guarded use of another project's
internals recognises the installed version (an upgrade turns these red), and
every fallback on public API behaves right with its guard forced off.
"""

from __future__ import annotations

import socket
import sqlite3
from typing import Any

import txredisapi
from twisted.application.internet import ClientService
from twisted.copyright import version as twisted_version
from twisted.enterprise import adbapi
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.tcp import Connection
from twisted.internet.testing import MemoryReactor, MemoryReactorClock
from twisted.logger import Logger, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http import Request
from twisted.web.test.requesthelper import DummyChannel

from sockudo_tw.compat import adbapi as compat_adbapi
from sockudo_tw.compat import twisted as compat_twisted
from sockudo_tw.compat import txredisapi as compat_txredisapi
from sockudo_tw.directwrite import idle_socket, write_now


class GuardTests(SynchronousTestCase):
    """
    The guards recognise what is installed. When one of these fails after
    an upgrade, re-check the module named in the message against the new
    release, then widen its C{KNOWN_RANGE}, C{CHECKED_ON} and the bound in
    setup.cfg's C{install_requires}.
    """

    def test_twisted(self) -> None:
        """
        The installed Twisted is in the checked range and has each internal
        L{sockudo_tw.compat.twisted} reads.
        """
        installed = twisted_version
        where = f"Twisted {installed}: re-check sockudo_tw/compat/twisted.py"
        self.assertTrue(compat_twisted.RECOGNISED, f"{where} (outside KNOWN_RANGE)")
        self.assertTrue(compat_twisted.WRITE_BUFFERS, f"{where} (FileDescriptor buffers)")
        self.assertTrue(compat_twisted.CLIENT_SERVICE_LOG, f"{where} (ClientService._log)")
        self.assertTrue(compat_twisted.REQUEST_DISCONNECTED, f"{where} (Request._disconnected)")
        self.assertTrue(compat_twisted.ASYNCIO_LOOP, f"{where} (asyncio reactor's loop)")

    def test_twisted_adbapi(self) -> None:
        """
        The installed Twisted's adbapi keeps the connection internals
        L{sockudo_tw.compat.adbapi} reads and replaces.
        """
        where = f"Twisted {twisted_version}: re-check sockudo_tw/compat/adbapi.py"
        self.assertTrue(compat_adbapi.RECOGNISED, f"{where} (outside KNOWN_RANGE)")
        self.assertTrue(
            compat_adbapi.QUIET_CONNECTIONS,
            f"{where} (Connection._connection/_pool, ConnectionPool.connectionFactory)",
        )

    def test_txredisapi(self) -> None:
        """
        The installed txredisapi is in the checked range and keeps the
        protocol/factory contract the Redis link uses.
        """
        installed = txredisapi.__version__
        self.assertTrue(
            compat_txredisapi.RECOGNISED,
            f"txredisapi {installed}: re-check sockudo_tw/compat/txredisapi.py",
        )

    def test_version_ranges(self) -> None:
        """
        The version checks accept the checked release and refuse the next
        major (minor for txredisapi) and garbage.
        """
        known = compat_twisted._version_known
        self.assertTrue(known(compat_twisted.CHECKED_ON))
        self.assertFalse(known("27.0.0"))
        self.assertFalse(known("24.3.0"))
        self.assertFalse(known("dev"))
        redis_known = compat_txredisapi._version_known
        self.assertTrue(redis_known(compat_txredisapi.CHECKED_ON))
        self.assertFalse(redis_known("1.7.0"))
        self.assertFalse(redis_known("dev"))


class DirectWriteTests(SynchronousTestCase):
    """
    L{write_now} with Twisted's write buffers readable (guard on) and not
    (guard off: every write goes through C{transport.write}).
    """

    def connection(self) -> tuple[Connection, socket.socket, MemoryReactorClock]:
        reactor = MemoryReactorClock()
        ours, peer = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(peer.close)
        ours.setblocking(False)
        peer.settimeout(1.0)
        connection = Connection(ours, Protocol(), reactor)
        connection.connected = 1
        return connection, peer, reactor

    def test_guard_on_sends_at_once(self) -> None:
        """
        An idle socket is written to directly: the bytes arrive without the
        descriptor ever being registered for writing.
        """
        connection, peer, reactor = self.connection()
        self.assertTrue(idle_socket(connection))
        write_now(connection, b"hello")
        self.assertEqual(reactor.getWriters(), [])
        self.assertEqual(peer.recv(100), b"hello")

    def test_guard_off_writes_through_twisted(self) -> None:
        """
        With the guard off, no socket counts as idle; bytes go through
        Twisted's buffer, in order, and arrive once the reactor writes.
        """
        self.patch(compat_twisted, "WRITE_BUFFERS", False)
        connection, peer, reactor = self.connection()
        self.assertFalse(compat_twisted.write_buffer_empty(connection))
        self.assertFalse(idle_socket(connection))
        write_now(connection, b"one ")
        write_now(connection, b"two")
        self.assertIn(connection, reactor.getWriters())
        connection.doWrite()
        self.assertEqual(peer.recv(100), b"one two")

    def test_guard_on_does_not_overtake(self) -> None:
        """
        With bytes held in Twisted's buffer, a later write queues behind
        them rather than overtaking.
        """
        connection, peer, _reactor = self.connection()
        connection.write(b"first ")
        self.assertFalse(compat_twisted.write_buffer_empty(connection))
        write_now(connection, b"second")
        connection.doWrite()
        self.assertEqual(peer.recv(100), b"first second")


class _RefusingEndpoint:
    """
    A client endpoint that counts attempts and refuses each.
    """

    def __init__(self) -> None:
        self.attempts = 0

    def connect(self, factory: object) -> Deferred[Any]:
        self.attempts += 1
        return fail(ConnectionRefusedError())


class QuietClientServiceTests(SynchronousTestCase):
    """
    L{compat_twisted.quiet_client_service}: retry lines to our observer with
    the guard on, to Twisted's log with it off; retries the same either way;
    L{ClientService} itself untouched.
    """

    def run_service(self) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]]]:
        """
        Run a quiet service against a refusing endpoint for three attempts;
        return the attempts, the events our observer got and the retry
        events the global log got.
        """
        ours: list[dict[str, Any]] = []
        seen: list[dict[str, Any]] = []

        def retries(event: dict[str, Any]) -> None:
            if "Scheduling retry" in str(event.get("log_format", "")):
                seen.append(event)

        globalLogPublisher.addObserver(retries)
        self.addCleanup(globalLogPublisher.removeObserver, retries)
        service_class = compat_twisted.quiet_client_service(ours.append)
        clock = MemoryReactorClock()
        endpoint = _RefusingEndpoint()
        service = service_class(endpoint, Factory(), retryPolicy=lambda _: 1.0, clock=clock)
        service.startService()
        clock.advance(1.0)
        clock.advance(1.0)
        service.stopService()
        self.assertIsNot(ClientService.__dict__["_log"].observer, ours.append)
        return endpoint.attempts, ours, seen

    def test_guard_on(self) -> None:
        """
        The retry lines go to the given observer only.
        """
        attempts, ours, seen = self.run_service()
        self.assertEqual(attempts, 3)
        self.assertEqual(len([e for e in ours if "Scheduling retry" in e["log_format"]]), 3)
        self.assertEqual(seen, [])

    def test_guard_off(self) -> None:
        """
        With the guard off the class is a plain subclass: it retries the
        same, and Twisted logs the retries as usual.
        """
        self.patch(compat_twisted, "CLIENT_SERVICE_LOG", False)
        attempts, ours, seen = self.run_service()
        self.assertEqual(attempts, 3)
        self.assertEqual(ours, [])
        self.assertEqual(len(seen), 3)
        self.assertIsInstance(ClientService.__dict__["_log"], Logger)


class RequestGoneTests(SynchronousTestCase):
    """
    L{compat_twisted.request_gone} with and without reading
    C{Request._disconnected}.
    """

    def check(self) -> None:
        live = Request(DummyChannel())
        self.assertFalse(compat_twisted.request_gone(live))
        live.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(compat_twisted.request_gone(live))
        done = Request(DummyChannel())
        done.finish()
        self.assertTrue(compat_twisted.request_gone(done))

    def test_guard_on(self) -> None:
        """
        A live request is not gone; a disconnected or finished one is.
        """
        self.check()

    def test_guard_off(self) -> None:
        """
        The same answers from the public C{channel} attribute; a stand-in
        request without a channel is not taken for gone.
        """
        self.patch(compat_twisted, "REQUEST_DISCONNECTED", False)
        self.check()
        stand_in = _StandIn()
        self.assertFalse(compat_twisted.request_gone(stand_in))


class _StandIn:
    """
    A request double with no channel attribute.
    """

    finished = False


class RepliesAwaitedTests(SynchronousTestCase):
    """
    The Redis link counts outstanding replies itself (public
    C{execute_command}), not from txredisapi's undocumented C{replyQueue}.
    """

    def test_counted_until_answered_or_lost(self) -> None:
        """
        Each command counts until its reply arrives, or until the connection
        is lost and txredisapi fails it.
        """
        from twisted.internet.testing import StringTransport

        from sockudo_tw.adapters._redis_link import _CommandProtocol

        protocol = _CommandProtocol(None, convertNumbers=False)
        protocol.side = _Side()
        protocol.makeConnection(StringTransport())
        protocol.connected = 1
        first = protocol.execute_command("PING")
        second = protocol.execute_command("PUBLISH", "c", b"x")
        self.assertEqual(protocol.replies_awaited, 2)
        protocol.dataReceived(b"+PONG\r\n")
        self.assertEqual(self.successResultOf(first), b"PONG")
        self.assertEqual(protocol.replies_awaited, 1)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(protocol.replies_awaited, 0)
        self.failureResultOf(second, txredisapi.ConnectionError)
        self.assertIs(protocol.unwrapped(), protocol)


class _Side:
    """
    Stands in for the link's side: records the lost protocol.
    """

    def __init__(self) -> None:
        self.gone: list[object] = []

    def lost(self, protocol: object) -> None:
        self.gone.append(protocol)


class _ConnectionKeepingNothing:
    """
    A connection class that keeps neither its pool nor its connection where
    adbapi does.
    """

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.connection = pool.connect()

    def reconnect(self) -> None:
        pass

    def rollback(self) -> None:
        pass


class _PoolOfOtherConnections(adbapi.ConnectionPool):
    """
    A pool whose connections are not adbapi's.
    """

    connectionFactory = _ConnectionKeepingNothing  # noqa: N815 (adbapi's name)


class AdbapiGuardTests(SynchronousTestCase):
    """
    L{compat_adbapi.quiet_connection_pool}: our quiet pool with the guard on,
    adbapi's plain pool with C{cp_reconnect} with it off; the guard refuses
    shapes it does not know. (The SQL app stores run the outage tests with
    the guard forced off too: C{tests.test_appstore_sql}.)
    """

    def pool(self) -> adbapi.ConnectionPool:
        pool = compat_adbapi.quiet_connection_pool(
            "sqlite3", cp_min=0, cp_max=1, cp_reactor=MemoryReactor(), database=":memory:"
        )
        self.assertTrue(pool.reconnect)
        self.assertFalse(pool.noisy)
        self.assertEqual(pool.connkw, {"database": ":memory:"})
        return pool

    def test_guard_on(self) -> None:
        """
        The pool's connections are our subclass of adbapi's.
        """
        pool = self.pool()
        self.assertIsNot(type(pool), adbapi.ConnectionPool)
        self.assertTrue(issubclass(pool.connectionFactory, adbapi.Connection))
        self.assertIsNot(pool.connectionFactory, adbapi.Connection)
        self.assertIs(adbapi.ConnectionPool.connectionFactory, adbapi.Connection)

    def test_guard_off(self) -> None:
        """
        With the guard off the pool is adbapi's own, reconnecting.
        """
        self.patch(compat_adbapi, "QUIET_CONNECTIONS", False)
        pool = self.pool()
        self.assertIs(type(pool), adbapi.ConnectionPool)
        self.assertIs(pool.connectionFactory, adbapi.Connection)

    def test_unknown_shapes(self) -> None:
        """
        A connection class keeping its pool or connection elsewhere, or a
        pool with other connections, is not recognised.
        """
        self.assertTrue(compat_adbapi._connection_known())
        self.assertTrue(compat_adbapi._pool_known())
        self.assertFalse(compat_adbapi._connection_known(_ConnectionKeepingNothing))
        self.assertFalse(compat_adbapi._pool_known(_PoolOfOtherConnections))


def _rows(cursor: Any, sql: str) -> list[Any]:
    cursor.execute(sql)
    return list(cursor.fetchall())


class AdbapiQueryTests(TestCase):
    """
    L{compat_adbapi.run_with_fresh_connection} runs a query in the pool's
    threads, committed, with the guard on and off (SQLite in a file).
    """

    async def run_queries(self) -> None:
        database = self.mktemp()
        pool = compat_adbapi.quiet_connection_pool(
            "sqlite3",
            cp_min=1,
            cp_max=1,
            cp_reactor=_reactor,
            database=database,
            check_same_thread=False,  # the pool closes it from the reactor thread
        )
        self.addCleanup(pool.close)
        run = compat_adbapi.run_with_fresh_connection
        await run(pool, _rows, "CREATE TABLE t (x INTEGER)")
        await run(pool, _rows, "INSERT INTO t VALUES (1)")
        with self.assertRaises(sqlite3.OperationalError):
            await run(pool, _rows, "INSERT INTO nowhere VALUES (1)")
        self.assertEqual(await run(pool, _rows, "SELECT x FROM t"), [(1,)])

    async def test_guard_on(self) -> None:
        """
        Our connection's path answers, and a failed query fails.
        """
        await self.run_queries()
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_guard_off(self) -> None:
        """
        adbapi's public C{runInteraction} answers the same.
        """
        self.patch(compat_adbapi, "QUIET_CONNECTIONS", False)
        await self.run_queries()


class AsyncioLoopTests(SynchronousTestCase):
    """
    L{compat_twisted.asyncio_loop_of}: the loop of Twisted's asyncio
    reactor, so the NATS client can share it; L{None} for other reactors
    and when the guard is off (the client then runs its own loop thread).
    """

    def setUp(self) -> None:
        import asyncio

        from twisted.internet.asyncioreactor import AsyncioSelectorReactor

        self.loop = asyncio.new_event_loop()
        self.addCleanup(self.loop.close)
        self.reactor = AsyncioSelectorReactor(self.loop)

    def test_guard_on(self) -> None:
        self.assertIs(compat_twisted.asyncio_loop_of(self.reactor), self.loop)
        self.assertIsNone(compat_twisted.asyncio_loop_of(object()))

    def test_guard_off(self) -> None:
        self.patch(compat_twisted, "ASYNCIO_LOOP", False)
        self.assertIsNone(compat_twisted.asyncio_loop_of(self.reactor))
