# -*- test-case-name: tests.test_appstore_sql -*-
"""
Apps in a SQL table (MySQL/MariaDB or PostgreSQL), Sockudo's table: one
row per app, one column per field of the app (sockudo-reference.md 4.4 and
5.4), C{webhooks} and C{allowed_origins} as JSON.

L{SqlAppSource} is the L{IAppSource} for both databases; what differs
between them (identifier quoting, column types, how to list a table's
columns, the driver and its connection arguments) is a L{SqlDialect}
(C{mysql.py}, C{postgres.py}). Every query runs in the threads of a
C{twisted.enterprise.adbapi} connection pool, never on the reactor thread.
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorCore, IReactorThreads, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from sockudo_tw.appstores import IAppSource
from sockudo_tw.appstores.records import InvalidRecord, app_from_record
from sockudo_tw.compat.adbapi import quiet_connection_pool, run_with_fresh_connection
from sockudo_tw.config.schema import ConfigError, SqlDatabaseConfig
from sockudo_tw.pusher.app import App

__all__ = [
    "APP_COLUMNS",
    "COLUMNS",
    "Column",
    "SqlAppSource",
    "SqlDialect",
    "apps_from_rows",
    "check_table_name",
    "missing_columns",
    "require_library",
]


@attrs.frozen
class Column:
    """
    One column of the apps table.

    @ivar kind: C{"text"}, C{"count"} (a non-negative integer), C{"flag"}
        (a boolean), C{"json"} or C{"time"}; the dialect maps it to a type.
    @ivar constraint: what follows the type, in SQL both databases accept
        (C{"NOT NULL DEFAULT 0"}); used when the table is created and when
        the column is added to an existing table.
    @ivar on_update: MySQL sets the column to the current time on every
        update (C{updated_at}).
    """

    name: str
    kind: str
    constraint: str = ""
    on_update: bool = False


COLUMNS: tuple[Column, ...] = (
    Column("id", "text", "NOT NULL PRIMARY KEY"),
    Column("key", "text", "NOT NULL UNIQUE"),
    Column("secret", "text", "NOT NULL"),
    Column("max_connections", "count", "NOT NULL DEFAULT 0"),
    Column("enable_client_messages", "flag", "NOT NULL DEFAULT FALSE"),
    Column("enabled", "flag", "NOT NULL DEFAULT TRUE"),
    Column("max_backend_events_per_second", "count"),
    Column("max_client_events_per_second", "count", "NOT NULL DEFAULT 10"),
    Column("max_read_requests_per_second", "count"),
    Column("max_presence_members_per_channel", "count"),
    Column("max_presence_member_size_in_kb", "count"),
    Column("max_channel_name_length", "count"),
    Column("max_event_channels_at_once", "count"),
    Column("max_event_name_length", "count"),
    Column("max_event_payload_in_kb", "count"),
    Column("max_event_batch_size", "count"),
    Column("enable_user_authentication", "flag"),
    Column("enable_watchlist_events", "flag"),
    Column("enable_subscription_count", "flag"),
    Column("webhooks", "json"),
    Column("allowed_origins", "json"),
    Column("created_at", "time", "NOT NULL DEFAULT CURRENT_TIMESTAMP"),
    Column("updated_at", "time", "NOT NULL DEFAULT CURRENT_TIMESTAMP", on_update=True),
)
"""
The table, in order. Sockudo's columns, plus C{enable_subscription_count}
(an L{App} field Sockudo 2.x lacks; nullable, so Sockudo ignores it). The
columns Sockudo requires in a row (C{max_connections},
C{enable_client_messages}, C{enabled}, C{max_client_events_per_second})
are NOT NULL with a default, so a row inserted with only C{id}, C{key} and
C{secret} is valid for both servers; the other limits are nullable, NULL
meaning the default.
"""

APP_COLUMNS: tuple[str, ...] = tuple(
    c.name for c in COLUMNS if c.name not in ("created_at", "updated_at")
)
"""
The columns read into an L{App}.
"""

_REQUIRED = frozenset({"id", "key", "secret"})

_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def check_table_name(name: str, path: str) -> str:
    """
    C{name} if it is a safe table name: a letter or C{_} then letters,
    digits or C{_}, at most 63 in all (PostgreSQL's limit; MySQL's is 64).
    Names are quoted in every statement as well; this check keeps quotes,
    backticks, dots and spaces out of them altogether.

    @param path: the config key, for the error (C{database.mysql.table_name}).
    @raise ConfigError: the name is not safe.
    """
    if not _TABLE_NAME.fullmatch(name):
        raise ConfigError(
            f"{path}: expected a table name of letters, digits and _ (not starting"
            f" with a digit, at most 63), got {name!r}"
        )
    return name


@attrs.frozen
class SqlDialect:
    """
    What differs between the SQL databases for the apps table.

    @ivar name: the database's name in descriptions (C{"MySQL"}).
    @ivar module_name: the DB-API module C{adbapi} imports (C{"pymysql"}).
    @ivar quote_char: how identifiers are quoted (C{`} or C{"}).
    @ivar placeholder: the driver's parameter marker (C{%s}).
    @ivar types: L{Column.kind} to the SQL type.
    @ivar current_schema: the SQL expression naming the schema (or MySQL
        database) the connection works in, to list columns from
        C{information_schema}.
    @ivar on_update: what makes a column track the time of the last update
        (MySQL), or C{""}.
    @ivar add_if_not_exists: the database has C{ADD COLUMN IF NOT EXISTS}.
    @ivar fold_case: table names are folded to lower case, as the database
        does with unquoted names (PostgreSQL), so that C{Applications} names
        the same table with or without our quotes.
    @ivar connect_arguments: the driver's C{connect()} keyword arguments for
        a database config (host, credentials, timeouts).
    """

    name: str
    module_name: str
    quote_char: str
    placeholder: str
    types: Mapping[str, str]
    current_schema: str
    on_update: str
    add_if_not_exists: bool
    fold_case: bool
    connect_arguments: Callable[[SqlDatabaseConfig], dict[str, Any]]

    def quote(self, identifier: str) -> str:
        """
        C{identifier} quoted (an embedded quote character doubled, though
        L{check_table_name} and our own column names have none).
        """
        q = self.quote_char
        return q + identifier.replace(q, q + q) + q

    def table(self, name: str) -> str:
        """
        The table's name as stored by the database (folded if L{fold_case}).
        """
        return name.lower() if self.fold_case else name

    def column_definition(self, column: Column) -> str:
        """
        C{name TYPE constraint} for C{column}.
        """
        parts = [self.quote(column.name), self.types[column.kind]]
        if column.constraint:
            parts.append(column.constraint)
        if column.on_update and self.on_update:
            parts.append(self.on_update)
        return " ".join(parts)

    def create_table(self, table: str) -> str:
        """
        C{CREATE TABLE IF NOT EXISTS} with every column of L{COLUMNS}.
        """
        columns = ",\n    ".join(self.column_definition(c) for c in COLUMNS)
        return f"CREATE TABLE IF NOT EXISTS {self.quote(self.table(table))} (\n    {columns}\n)"

    def list_columns(self) -> str:
        """
        The query listing the table's columns; its one parameter is the
        table name (L{table}).
        """
        return (
            "SELECT column_name FROM information_schema.columns"
            f" WHERE table_schema = {self.current_schema} AND table_name = {self.placeholder}"
        )

    def add_column(self, table: str, column: Column) -> str:
        """
        C{ALTER TABLE ... ADD COLUMN} for C{column}.
        """
        guard = " IF NOT EXISTS" if self.add_if_not_exists else ""
        return (
            f"ALTER TABLE {self.quote(self.table(table))}"
            f" ADD COLUMN{guard} {self.column_definition(column)}"
        )

    def select(self, table: str, where: str | None) -> str:
        """
        C{SELECT} of L{APP_COLUMNS}, by C{where} (a column, compared with
        the one parameter) or of every row (ordered by id).
        """
        columns = ", ".join(self.quote(c) for c in APP_COLUMNS)
        sql = f"SELECT {columns} FROM {self.quote(self.table(table))}"
        if where is None:
            return sql + f" ORDER BY {self.quote('id')}"
        return sql + f" WHERE {self.quote(where)} = {self.placeholder}"


def missing_columns(existing: Iterable[str], table: str) -> tuple[list[Column], list[str]]:
    """
    The columns of L{COLUMNS} a table with the C{existing} columns lacks,
    and the columns it has that we do not know (Sockudo 5.x's, an
    operator's), which are left alone.

    @raise ValueError: the table lacks C{id}, C{key} or C{secret}: it is not
        an apps table, and is not altered.
    """
    have = {name.lower() for name in existing}
    lacking = sorted(_REQUIRED - have)
    if lacking:
        raise ValueError(
            f"table {table!r} exists but has no column {', '.join(lacking)}: it is not"
            " a table of apps; choose another table_name"
        )
    known = {c.name for c in COLUMNS}
    return [c for c in COLUMNS if c.name not in have], sorted(have - known)


def apps_from_rows(
    names: Sequence[str],
    rows: Iterable[Sequence[Any]],
    table: str,
    log: Logger,
    match: tuple[str, str] | None = None,
) -> list[App]:
    """
    The apps in C{rows} (tuples in the order of the column C{names}). A row
    that is not a valid app is logged (one warning per row) and left out.

    @param match: C{(column, value)} a row must match exactly: MySQL's
        default collations compare case-insensitively and ignore trailing
        spaces, so a lookup of key C{ABC} can find the row of key C{abc};
        such a row is not the app asked for.
    """
    apps = []
    for row in rows:
        record = dict(zip(names, row, strict=True))
        row_id = record.get("id")
        if isinstance(row_id, (bytes, bytearray)):
            row_id = bytes(row_id).decode("utf-8", "replace")
        where = f"{table} row id={row_id!r}"
        warnings: list[str] = []
        try:
            app = app_from_record(record, where, warnings)
        except InvalidRecord as e:
            log.warn(
                "Ignoring an invalid app in the database: {error}",
                error=str(e),
                table=table,
                app_id=row_id,
            )
            continue
        for warning in warnings:
            log.warn("App in the database: {warning}", warning=warning, table=table, app_id=row_id)
        if match is not None and getattr(app, match[0]) != match[1]:
            continue
        apps.append(app)
    return apps


_Rows = tuple[list[str], list[tuple[Any, ...]]]


def _query(cursor: Any, sql: str, params: tuple[Any, ...]) -> _Rows:
    """
    Run C{sql} (in a pool thread) and return the column names and rows.
    """
    cursor.execute(sql, params)
    names = [_text(d[0]) for d in cursor.description]
    return names, list(cursor.fetchall())


def _text(value: object) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8")
    return str(value)


@implementer(IAppSource)
class SqlAppSource:
    """
    L{IAppSource} over a SQL table, through a C{twisted.enterprise.adbapi}
    connection pool of C{pool_min} to C{pool_max} threads, each with its
    own connection. A connection the database dropped is replaced on the
    next query; the driver's timeouts (set by the dialect) bound how long a
    query waits on a database that has gone away.

    The source does not cache: L{sockudo_tw.appstores.caching.CachedAppStore}
    does.
    """

    _log = Logger()

    def __init__(
        self,
        dialect: SqlDialect,
        database: SqlDatabaseConfig,
        reactor: IReactorThreads,
        config_path: str,
        dbapi: object | None = None,
        query_timeout: float = 30.0,
    ) -> None:
        """
        @param reactor: the reactor the pool's results are delivered on; it
            must provide L{IReactorCore} too (the pool starts when it runs
            and stops at its shutdown).
        @param config_path: the config section, for errors
            (C{database.mysql}).
        @param dbapi: a DB-API module to use instead of the dialect's (the
            tests wrap the real one to watch which threads call it).
        @param query_timeout: seconds after which a call fails with
            L{twisted.internet.defer.TimeoutError} whatever the driver is
            doing: the driver's own timeouts (set by the dialect, shorter)
            do not cover a database that accepts data but never answers
            (a frozen server), where a thread may wait on it for longer.
        @raise ConfigError: C{database.table_name} is not a safe name.
        """
        self._dialect = dialect
        self._reactor = reactor
        self.table = dialect.table(
            check_table_name(database.table_name, f"{config_path}.table_name")
        )
        host = f"[{database.host}]" if ":" in database.host else database.host
        self.description = (
            f"{dialect.name} table {self.table!r} at {host}:{database.port}/{database.database}"
        )
        self._pool = quiet_connection_pool(
            dialect.module_name,
            cp_min=database.pool_min,
            cp_max=max(1, database.pool_max),
            cp_reactor=reactor,
            **dialect.connect_arguments(database),
        )
        if dbapi is not None:
            self._pool.dbapi = dbapi
        self._query_timeout = query_timeout
        self._closed = False

    def _in_pool(self, work: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """
        C{work(cursor, *args)} in a pool thread, retried once on a fresh
        connection if it failed on a stale one (L{run_with_fresh_connection}),
        failing after the query timeout.
        """
        d = run_with_fresh_connection(self._pool, work, *args)
        return d.addTimeout(self._query_timeout, cast(IReactorTime, self._reactor))

    def prepare(self) -> Deferred[None]:
        """
        Create the table if it is missing and add the columns it lacks
        (logged by name); columns we do not know are left as they are, and
        logged once.
        """
        d: Deferred[tuple[list[str], list[str]]] = self._in_pool(self._prepare)

        def prepared(result: tuple[list[str], list[str]]) -> None:
            added, unknown = result
            if added:
                self._log.info(
                    "Added the columns {columns} to {store}",
                    columns=", ".join(added),
                    store=self.description,
                )
            if unknown:
                self._log.info(
                    "{store} has columns sockudo-tw does not use (left alone): {columns}",
                    columns=", ".join(unknown),
                    store=self.description,
                )

        return d.addCallback(prepared)

    def _prepare(self, cursor: Any) -> tuple[list[str], list[str]]:
        """
        L{prepare}'s work, in a pool thread.
        """
        dialect = self._dialect
        cursor.execute(dialect.create_table(self.table))
        existing = self._columns(cursor)
        lacking, unknown = missing_columns(existing, self.table)
        for column in lacking:
            try:
                cursor.execute(dialect.add_column(self.table, column))
            except Exception:
                # Another server may have added it at the same moment (MySQL
                # has no ADD COLUMN IF NOT EXISTS): fail only if still missing.
                if dialect.add_if_not_exists or column.name in self._missing_now(cursor):
                    raise
        return [c.name for c in lacking], unknown

    def _columns(self, cursor: Any) -> list[str]:
        cursor.execute(self._dialect.list_columns(), (self.table,))
        return [_text(row[0]) for row in cursor.fetchall()]

    def _missing_now(self, cursor: Any) -> set[str]:
        # After a failed ALTER: which columns are still missing.
        have = {name.lower() for name in self._columns(cursor)}
        return {c.name for c in COLUMNS} - have

    def fetch_by_id(self, app_id: str) -> Deferred[App | None]:
        return self._fetch_one("id", app_id)

    def fetch_by_key(self, key: str) -> Deferred[App | None]:
        return self._fetch_one("key", key)

    def _fetch_one(self, column: str, value: str) -> Deferred[App | None]:
        d: Deferred[_Rows] = self._in_pool(
            _query, self._dialect.select(self.table, column), (value,)
        )

        def found(result: _Rows) -> App | None:
            names, rows = result
            apps = apps_from_rows(names, rows, self.table, self._log, (column, value))
            return apps[0] if apps else None

        return d.addCallback(found)

    def fetch_all(self) -> Deferred[list[App]]:
        d: Deferred[_Rows] = self._in_pool(_query, self._dialect.select(self.table, None), ())

        def found(result: _Rows) -> list[App]:
            names, rows = result
            return apps_from_rows(names, rows, self.table, self._log)

        return d.addCallback(found)

    def close(self) -> Deferred[None]:
        """
        Stop the pool's threads and close their connections, in a thread
        of its own: stopping joins threads that may be waiting on the
        database.
        """
        if self._closed:
            return succeed(None)
        self._closed = True
        pool: Any = self._pool
        core = cast(IReactorCore, self._reactor)
        for trigger in ("startID", "shutdownID"):
            if getattr(pool, trigger) is not None:
                core.removeSystemEventTrigger(getattr(pool, trigger))
                setattr(pool, trigger, None)
        if not pool.running:
            return succeed(None)
        d: Deferred[None] = Deferred()

        def stop() -> None:
            try:
                pool.finalClose()
            except BaseException as e:
                self._reactor.callFromThread(d.errback, e)
            else:
                self._reactor.callFromThread(d.callback, None)

        threading.Thread(target=stop, name="sockudo-tw sql pool close", daemon=True).start()
        return d


def require_library(module: str, driver: str, library: str, extra: str) -> None:
    """
    Stop the start, naming the pip extra, when C{app_manager.driver:
    driver} needs C{module} and it is not installed.

    @raise ConfigError: C{module} cannot be imported.
    """
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(
            f"app_manager.driver: {driver} needs {library} ({e}): pip install 'sockudo-tw[{extra}]'"
        ) from None
