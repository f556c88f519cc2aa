# -*- test-case-name: tests.test_compat,tests.test_appstore_sql -*-
"""
The internals of Twisted's C{twisted.enterprise.adbapi} the SQL app sources
rely on, guarded, with a fallback on adbapi's public API (see
L{sockudo_tw.compat} for the rule; this is part of Twisted, so it shares
L{sockudo_tw.compat.twisted}'s C{CHECKED_ON} and C{KNOWN_RANGE}).

L{QUIET_CONNECTIONS}: our subclass of L{adbapi.Connection} reads and
replaces its C{_connection} (the DB-API connection) and C{_pool}, and our
pool subclass sets C{connectionFactory} to it, so that a broken connection
is dropped without adbapi's two logged tracebacks ("Rollback failed"), and a
query that fails on a connection gone stale while idle (the database
restarted, a proxy closed it) is tried once more on a fresh one. The pool's
C{connections} (by thread), C{threadID} and C{good_sql} are read too.

Fallback (flag off): a plain L{adbapi.ConnectionPool} with
C{cp_reconnect=True} and queries through C{runInteraction}. adbapi then
drops a broken connection itself, logging it as an error, and the first
query on each stale pooled connection fails instead of being retried; the
next query on that thread connects afresh.

The code outside this module sees two functions: L{quiet_connection_pool}
and L{run_with_fresh_connection}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.copyright import version as twisted_version
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads

from sockudo_tw.compat import twisted as compat_twisted
from sockudo_tw.compat import version_in_range

__all__ = [
    "CHECKED_ON",
    "QUIET_CONNECTIONS",
    "RECOGNISED",
    "quiet_connection_pool",
    "run_with_fresh_connection",
]

CHECKED_ON = compat_twisted.CHECKED_ON
"""
The Twisted release the uses below were read against and tested on.
"""


class _ProbePool:
    """
    Stands in for a pool when checking what L{adbapi.Connection.__init__}
    keeps: it hands out one marker object as the DB-API connection.
    """

    def __init__(self) -> None:
        self.marker = object()

    def connect(self) -> object:
        return self.marker


class _ProbeReactor:
    """
    Stands in for the reactor when building a pool to check its shape: the
    pool only registers its start-up, which never runs.
    """

    def callWhenRunning(self, *args: object, **kwargs: object) -> None:  # noqa: N802
        return None


def _connection_known(connection_class: type[Any] = adbapi.Connection) -> bool:
    """
    Whether C{connection_class(pool)} keeps the pool in C{_pool} and the
    DB-API connection C{pool.connect()} returned in C{_connection}, and has
    the C{reconnect} and C{rollback} we override.
    """
    try:
        probe = _ProbePool()
        connection = connection_class(probe)
        kept = vars(connection)
        return (
            kept.get("_pool") is probe
            and kept.get("_connection") is probe.marker
            and callable(getattr(connection_class, "reconnect", None))
            and callable(getattr(connection_class, "rollback", None))
        )
    except Exception:
        return False


def _pool_known(pool_class: type[Any] = adbapi.ConnectionPool) -> bool:
    """
    Whether C{pool_class} takes its connections from a class-level
    C{connectionFactory} and a pool has C{connections} (a dict by thread
    id), C{threadID} and C{good_sql} as read by L{_QuietConnection}.
    """
    try:
        if pool_class.__dict__.get("connectionFactory") is not adbapi.Connection:
            return False
        pool = pool_class("sqlite3", cp_min=0, cp_max=1, cp_reactor=_ProbeReactor())
        return (
            isinstance(pool.connections, dict)
            and callable(pool.threadID)
            and isinstance(pool.good_sql, str)
        )
    except Exception:
        return False


RECOGNISED = version_in_range(twisted_version, compat_twisted.KNOWN_RANGE)
"""
Whether the installed Twisted is in L{compat_twisted.KNOWN_RANGE}.
"""

QUIET_CONNECTIONS = RECOGNISED and _connection_known() and _pool_known()
"""
Whether L{quiet_connection_pool} uses L{_QuietConnection} (asserted by the
tests); when off, adbapi's public behaviour is used.
"""


class _QuietConnection(adbapi.Connection):
    """
    A pooled connection (one per pool thread) that knows whether it was
    reused from an earlier query, and that drops itself quietly when it
    turns out to be broken (the database went away), so that the thread
    connects afresh next time. adbapi's own C{cp_reconnect} drops it as
    well but logs each broken connection as an error with a traceback,
    twice.

    @ivar reused: the connection served an earlier query of this thread
        (it may have gone stale since), rather than being opened for this
        one.
    """

    reused = False

    def healthy(self) -> bool:
        """
        After a failed query: roll back and run C{cp_good_sql}; if that
        fails too the connection is broken, and is dropped.
        """
        connection: Any = self._connection
        try:
            connection.rollback()
            cursor = connection.cursor()
            cursor.execute(self._pool.good_sql)
            cursor.fetchall()
            cursor.close()
            connection.commit()
        except Exception:
            self._drop()
            return False
        return True

    def rollback(self) -> None:
        self.healthy()

    def reconnect(self) -> None:
        if self._connection is not None:
            self._drop()
        pool = self._pool
        self.reused = pool.threadID() in pool.connections
        self._connection = pool.connect()

    def _drop(self) -> None:
        """
        Forget this thread's connection and close it, ignoring errors (it
        is broken already).
        """
        pool = self._pool
        connection: Any = self._connection
        tid = pool.threadID()
        if pool.connections.get(tid) is connection:
            del pool.connections[tid]
        try:
            connection.close()
        except Exception:
            pass


class _QuietConnectionPool(adbapi.ConnectionPool):
    """
    adbapi's pool with the connections of L{_QuietConnection}.
    """

    connectionFactory = _QuietConnection  # noqa: N815 (adbapi's name)


def quiet_connection_pool(
    dbapi_name: str,
    *,
    cp_min: int,
    cp_max: int,
    cp_reactor: IReactorThreads,
    **connect_arguments: Any,
) -> adbapi.ConnectionPool:
    """
    A connection pool of C{cp_min} to C{cp_max} threads over the DB-API
    module C{dbapi_name} (C{connect_arguments} go to its C{connect()}),
    reconnecting after a broken connection, without informational logs.

    With L{QUIET_CONNECTIONS}, broken connections are dropped without
    logged errors; otherwise a plain L{adbapi.ConnectionPool} with
    C{cp_reconnect=True}, which logs them.
    """
    pool_class = _QuietConnectionPool if QUIET_CONNECTIONS else adbapi.ConnectionPool
    pool: adbapi.ConnectionPool = pool_class(  # type: ignore[no-untyped-call]
        dbapi_name,
        cp_min=cp_min,
        cp_max=cp_max,
        cp_reconnect=True,
        cp_noisy=False,
        cp_reactor=cp_reactor,
        **connect_arguments,
    )
    return pool


def _with_connection(connection: _QuietConnection, work: Callable[..., Any], *args: Any) -> Any:
    """
    C{work(cursor, *args)}, in a pool thread (the pool commits after it,
    or rolls back). A connection that went stale while idle fails its first
    query: then the query is tried once more on a new connection, so that a
    database that came back answers at once, however many stale connections
    the pool holds.
    """
    reused = connection.reused
    try:
        return _on_cursor(connection.cursor(), work, *args)
    except Exception:
        if not reused or connection.healthy():
            raise
    connection.reconnect()
    return _on_cursor(connection.cursor(), work, *args)


def _on_cursor(cursor: Any, work: Callable[..., Any], *args: Any) -> Any:
    """
    C{work(cursor, *args)}, closing the cursor after it.
    """
    try:
        return work(cursor, *args)
    finally:
        try:
            cursor.close()
        except Exception:
            pass


def _in_transaction(transaction: Any, work: Callable[..., Any], *args: Any) -> Any:
    """
    C{work(transaction, *args)} through C{runInteraction}, which closes the
    transaction's cursor after it.
    """
    return work(transaction, *args)


def run_with_fresh_connection(
    pool: adbapi.ConnectionPool, work: Callable[..., Any], *args: Any
) -> Deferred[Any]:
    """
    C{work(cursor, *args)} in a thread of C{pool} (built by
    L{quiet_connection_pool}), committed after it or rolled back; C{work}
    must not close the cursor, which is closed after it.

    With L{QUIET_CONNECTIONS}, a query that fails on a pooled connection
    gone stale is tried once more on a fresh connection. Otherwise (public
    C{runInteraction}) it fails, and the next query on that thread
    connects afresh.
    """
    if QUIET_CONNECTIONS and isinstance(pool, _QuietConnectionPool):
        d: Deferred[Any] = pool.runWithConnection(  # type: ignore[no-untyped-call]
            _with_connection, work, *args
        )
        return d
    fallback: Deferred[Any] = pool.runInteraction(  # type: ignore[no-untyped-call]
        _in_transaction, work, *args
    )
    return fallback
