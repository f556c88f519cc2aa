"""
The SQL app sources (L{sockudo_tw.appstores.sql}, C{mysql}, C{postgres}).

Unit tests check the SQL each dialect writes, the table name check, the
conversion of rows to apps and the configuration of the drivers, without a
database. Integration tests run the sources against the machine's MariaDB
(127.0.0.1:3306, root) and PostgreSQL (127.0.0.1:5432, postgres): each test
creates a database of its own and drops it in its cleanup; outages are
played with L{tests.tcp_proxy}. Without a database they fail under
C{CI=true} and skip elsewhere.
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet import reactor as _reactor
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.task import LoopingCall
from twisted.internet.testing import MemoryReactor
from twisted.internet.threads import deferToThread
from twisted.logger import Logger, capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from sockudo_tw.appstores import IAppSource
from sockudo_tw.appstores import mysql as mysql_store
from sockudo_tw.appstores import postgres as postgres_store
from sockudo_tw.appstores.sql import (
    APP_COLUMNS,
    COLUMNS,
    SqlAppSource,
    SqlDialect,
    apps_from_rows,
    check_table_name,
    missing_columns,
)
from sockudo_tw.compat import adbapi as compat_adbapi
from sockudo_tw.config import ServerConfig
from sockudo_tw.config.schema import ConfigError, SqlDatabaseConfig
from sockudo_tw.pusher.app import App, WebhookTarget
from tests.interop_harness import unavailable
from tests.tcp_proxy import start_proxy

reactor: Any = _reactor

MYSQL = mysql_store.MYSQL
POSTGRES = postgres_store.POSTGRES

BAD_TABLE_NAMES = [
    "app`s",
    'app"s',
    "app's",
    "apps; DROP TABLE users",
    "sockudo.applications",
    "apps -- x",
    "",
    "1apps",
    "a" * 64,
    "apps\x00",
]

SET_ORIGINS = (
    "UPDATE applications SET allowed_origins = '[\"https://app.example.com\"]' WHERE id = 'app-1'"
)

SOCKUDO_OLDER_COLUMNS = [
    c for c in APP_COLUMNS if c not in ("allowed_origins", "enable_subscription_count")
] + ["created_at", "updated_at"]


class DialectTests(SynchronousTestCase):
    """
    The SQL text each dialect writes.
    """

    def test_mysql_create_table(self) -> None:
        """
        MySQL's table quotes every name with backquotes (C{key} is reserved),
        has every column with Sockudo's types, and is created only if
        missing.
        """
        sql = MYSQL.create_table("applications")
        self.assertTrue(sql.startswith("CREATE TABLE IF NOT EXISTS `applications` ("))
        for column in COLUMNS:
            self.assertIn(f"`{column.name}` ", sql)
        self.assertIn("`id` VARCHAR(255) NOT NULL PRIMARY KEY", sql)
        self.assertIn("`key` VARCHAR(255) NOT NULL UNIQUE", sql)
        self.assertIn("`max_connections` INT UNSIGNED NOT NULL DEFAULT 0", sql)
        self.assertIn("`enabled` BOOLEAN NOT NULL DEFAULT TRUE", sql)
        self.assertIn("`webhooks` JSON,", sql)
        self.assertIn("`allowed_origins` JSON,", sql)
        self.assertIn("`updated_at` TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE", sql)
        self.assertNotIn('"', sql)

    def test_postgres_create_table(self) -> None:
        """
        PostgreSQL's table uses double quotes, INTEGER and JSONB, and no
        C{ON UPDATE} (which PostgreSQL lacks).
        """
        sql = POSTGRES.create_table("applications")
        self.assertTrue(sql.startswith('CREATE TABLE IF NOT EXISTS "applications" ('))
        self.assertIn('"key" VARCHAR(255) NOT NULL UNIQUE', sql)
        self.assertIn('"max_connections" INTEGER NOT NULL DEFAULT 0', sql)
        self.assertIn('"webhooks" JSONB,', sql)
        self.assertIn('"allowed_origins" JSONB,', sql)
        self.assertNotIn("ON UPDATE", sql)
        self.assertNotIn("`", sql)

    def test_postgres_folds_table_names(self) -> None:
        """
        PostgreSQL folds a table name to lower case, as it does unquoted
        names, so C{Applications} is the table Sockudo's unquoted SQL means.
        """
        self.assertEqual(POSTGRES.table("Applications"), "applications")
        self.assertIn('"applications"', POSTGRES.create_table("Applications"))
        self.assertEqual(MYSQL.table("Applications"), "Applications")

    def test_add_column(self) -> None:
        """
        A missing column is added with its type and constraint;
        PostgreSQL's statement tolerates a column added meanwhile.
        """
        column = next(c for c in COLUMNS if c.name == "allowed_origins")
        self.assertEqual(
            MYSQL.add_column("applications", column),
            "ALTER TABLE `applications` ADD COLUMN `allowed_origins` JSON",
        )
        self.assertEqual(
            POSTGRES.add_column("applications", column),
            'ALTER TABLE "applications" ADD COLUMN IF NOT EXISTS "allowed_origins" JSONB',
        )

    def test_select(self) -> None:
        """
        Lookups select the app columns by one parameter; the list of all
        apps is ordered by id.
        """
        sql = MYSQL.select("applications", "key")
        self.assertTrue(sql.startswith("SELECT `id`, `key`, `secret`, "))
        self.assertTrue(sql.endswith(" FROM `applications` WHERE `key` = %s"))
        self.assertNotIn("created_at", sql)
        self.assertTrue(POSTGRES.select("applications", None).endswith(' ORDER BY "id"'))

    def test_list_columns(self) -> None:
        """
        The columns are listed from C{information_schema} for the
        connection's database (MySQL) or schema (PostgreSQL).
        """
        self.assertIn("table_schema = DATABASE()", MYSQL.list_columns())
        self.assertIn("table_schema = current_schema()", POSTGRES.list_columns())
        self.assertTrue(MYSQL.list_columns().endswith("table_name = %s"))

    def test_quote(self) -> None:
        """
        A quote character inside a name is doubled.
        """
        self.assertEqual(MYSQL.quote("a`b"), "`a``b`")
        self.assertEqual(POSTGRES.quote('a"b'), '"a""b"')


class TableNameTests(SynchronousTestCase):
    """
    The table name from the config never reaches SQL unchecked.
    """

    def test_good_names(self) -> None:
        """
        Letters, digits and C{_} pass.
        """
        for name in ("applications", "Apps_2", "_x", "a" * 63):
            self.assertEqual(check_table_name(name, "database.mysql.table_name"), name)

    def test_bad_names(self) -> None:
        """
        Quotes, backquotes, dots, spaces, an empty name, a leading digit
        and a name too long are refused, naming the key.
        """
        for name in BAD_TABLE_NAMES:
            e = self.assertRaises(ConfigError, check_table_name, name, "database.mysql.table_name")
            self.assertIn("database.mysql.table_name", str(e))

    def test_source_refuses(self) -> None:
        """
        A source is not built (no pool, no thread) on a bad table name.
        """
        memory = MemoryReactor()
        for dialect, path in ((MYSQL, "database.mysql"), (POSTGRES, "database.postgres")):
            config = SqlDatabaseConfig(table_name="app`s; DROP TABLE x")
            e = self.assertRaises(ConfigError, SqlAppSource, dialect, config, memory, path)
            self.assertIn(f"{path}.table_name", str(e))
        self.assertEqual(memory.whenRunningHooks, [])


class SourceTests(SynchronousTestCase):
    """
    What a source says about itself, and its driver configuration.
    """

    def test_description(self) -> None:
        """
        The description names the database, host, port, database name and
        table, never the password; the source provides L{IAppSource}.
        """
        memory = MemoryReactor()
        config = SqlDatabaseConfig(
            host="db.internal", port=3307, password="hunter2", database="tenants"
        )
        source = SqlAppSource(MYSQL, config, memory, "database.mysql")
        self.assertTrue(verifyObject(IAppSource, source))
        self.assertEqual(
            source.description, "MySQL table 'applications' at db.internal:3307/tenants"
        )
        self.assertNotIn("hunter2", source.description)
        ipv6 = SqlAppSource(POSTGRES, SqlDatabaseConfig(host="::1", port=5432), memory, "p")
        self.assertEqual(ipv6.description, "PostgreSQL table 'applications' at [::1]:5432/sockudo")
        self.successResultOf(source.close())
        self.successResultOf(ipv6.close())

    def test_close_before_running(self) -> None:
        """
        A source closed before the reactor runs starts no thread and
        leaves no start-up hook behind.
        """
        memory = MemoryReactor()
        source = SqlAppSource(MYSQL, SqlDatabaseConfig(), memory, "database.mysql")
        self.assertEqual(len(memory.whenRunningHooks), 1)
        self.successResultOf(source.close())
        self.successResultOf(source.close())

    def test_mysql_arguments(self) -> None:
        """
        PyMySQL gets the credentials, utf8mb4 and bounded timeouts; a host
        starting with C{/} is a Unix socket.
        """
        config = SqlDatabaseConfig(host="db", port=3307, username="u", password="p", database="d")
        arguments = MYSQL.connect_arguments(config)
        self.assertEqual(
            {k: arguments[k] for k in ("host", "port", "user", "password", "database", "charset")},
            {
                "host": "db",
                "port": 3307,
                "user": "u",
                "password": "p",
                "database": "d",
                "charset": "utf8mb4",
            },
        )
        self.assertEqual(arguments["connect_timeout"], mysql_store.CONNECT_TIMEOUT)
        self.assertEqual(arguments["read_timeout"], mysql_store.IO_TIMEOUT)
        self.assertEqual(arguments["write_timeout"], mysql_store.IO_TIMEOUT)
        socket = MYSQL.connect_arguments(SqlDatabaseConfig(host="/run/mysqld/mysqld.sock"))
        self.assertEqual(socket["unix_socket"], "/run/mysqld/mysqld.sock")
        self.assertNotIn("host", socket)

    def test_postgres_arguments(self) -> None:
        """
        psycopg gets libpq's names, a connect timeout, keepalives and a TCP
        user timeout; an empty password is left to libpq's own sources.
        """
        config = SqlDatabaseConfig(host="pg", port=5432, username="postgres", password="")
        arguments = POSTGRES.connect_arguments(config)
        self.assertEqual(arguments["dbname"], "sockudo")
        self.assertEqual(arguments["user"], "postgres")
        self.assertNotIn("password", arguments)
        self.assertEqual(arguments["connect_timeout"], postgres_store.CONNECT_TIMEOUT)
        self.assertEqual(arguments["tcp_user_timeout"], postgres_store.IO_TIMEOUT * 1000)
        self.assertEqual(arguments["keepalives"], 1)
        self.assertEqual(
            POSTGRES.connect_arguments(config.__class__(password="x"))["password"], "x"
        )

    def test_missing_driver(self) -> None:
        """
        Without the driver library, building the source is a clear error
        naming the pip extra.
        """
        for module, store, extra in (
            ("pymysql", mysql_store, "mysql"),
            ("psycopg", postgres_store, "postgres"),
        ):
            self.patch(sys, "modules", {**sys.modules, module: None})
            e = self.assertRaises(
                ConfigError, store.source_from_config, ServerConfig(), MemoryReactor()
            )
            self.assertIn(f"pip install 'sockudo-tw[{extra}]'", str(e))


class MissingColumnsTests(SynchronousTestCase):
    """
    Which columns L{SqlAppSource.prepare} adds to an existing table.
    """

    def test_older_sockudo_table(self) -> None:
        """
        A table of Sockudo's older columns gets C{allowed_origins} and
        C{enable_subscription_count}, nothing else.
        """
        lacking, unknown = missing_columns(SOCKUDO_OLDER_COLUMNS, "applications")
        self.assertEqual(
            [c.name for c in lacking], ["enable_subscription_count", "allowed_origins"]
        )
        self.assertEqual(unknown, [])

    def test_complete(self) -> None:
        """
        A complete table needs nothing; names are compared case-blind, as
        both databases do; columns we do not know are reported.
        """
        names = [c.name.upper() for c in COLUMNS] + ["notes"]
        self.assertEqual(missing_columns(names, "applications"), ([], ["notes"]))

    def test_not_an_apps_table(self) -> None:
        """
        A table without C{id}, C{key} or C{secret} is not altered.
        """
        e = self.assertRaises(ValueError, missing_columns, ["id", "name"], "users")
        self.assertIn("key, secret", str(e))


def _columns_and_row(**values: Any) -> tuple[list[str], tuple[Any, ...]]:
    names = list(APP_COLUMNS)
    row = tuple(values.get(name) for name in names)
    return names, row


class RowTests(SynchronousTestCase):
    """
    Rows to apps (L{apps_from_rows}).
    """

    log = Logger()

    def test_row(self) -> None:
        """
        JSON text columns are decoded, 0/1 are booleans, NULL limits take
        the defaults.
        """
        names, row = _columns_and_row(
            id="app-1",
            key="key-1",
            secret="secret-1",
            max_connections=100,
            enable_client_messages=1,
            enabled=0,
            max_client_events_per_second=20,
            enable_user_authentication=1,
            webhooks=json.dumps(
                [{"url": "https://hooks.example/p", "event_types": ["channel_occupied"]}]
            ),
            allowed_origins='["https://app.example.com"]',
        )
        with capturedLogs() as events:
            (app,) = apps_from_rows(names, [row], "applications", self.log)
        self.assertEqual(events, [])
        defaults = App("", "", "")
        self.assertEqual(app.id, "app-1")
        self.assertEqual(app.max_connections, 100)
        self.assertIs(app.enable_client_messages, True)
        self.assertIs(app.enabled, False)
        self.assertIs(app.enable_user_authentication, True)
        self.assertEqual(
            app.max_presence_members_per_channel, defaults.max_presence_members_per_channel
        )
        self.assertEqual(app.max_event_payload_in_kb, defaults.max_event_payload_in_kb)
        self.assertEqual(
            app.webhooks,
            (WebhookTarget(url="https://hooks.example/p", event_types=("channel_occupied",)),),
        )
        self.assertEqual(app.allowed_origins, ("https://app.example.com",))

    def test_invalid_row(self) -> None:
        """
        An invalid row is left out and logged once, with the table and the
        app id as fields; the valid rows around it are kept.
        """
        good = _columns_and_row(id="a", key="ka", secret="s")[1]
        names, bad = _columns_and_row(id="b", key="kb", secret="", webhooks="{not json")
        with capturedLogs() as events:
            apps = apps_from_rows(names, [good, bad], "applications", self.log)
        self.assertEqual([a.id for a in apps], ["a"])
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["table"], "applications")
        self.assertEqual(events[0]["app_id"], "b")
        self.assertIn("applications row id='b'", events[0]["error"])

    def test_exact_match(self) -> None:
        """
        A row found by a case-blind collation for another key is not the
        app asked for.
        """
        names, row = _columns_and_row(id="a", key="Key-A", secret="s")
        self.assertEqual(apps_from_rows(names, [row], "t", self.log, ("key", "key-a")), [])
        self.assertEqual(apps_from_rows(names, [row], "t", self.log, ("key", "Key-A ")), [])
        (app,) = apps_from_rows(names, [row], "t", self.log, ("key", "Key-A"))
        self.assertEqual(app.key, "Key-A")


# -- integration ---------------------------------------------------------------


class _Recorder:
    """
    Wraps a DB-API module, connection or cursor and records the thread of
    every call made on it (and on the connections and cursors it makes).
    """

    def __init__(self, target: Any, threads: set[int], before_select: str | None = None) -> None:
        self._target = target
        self._threads = threads
        self._before_select = before_select

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            self._threads.add(threading.get_ident())
            if (
                name == "execute"
                and self._before_select is not None
                and str(args[0]).startswith(("SELECT `id`, ", 'SELECT "id", '))
            ):
                value(self._before_select)
                self._target.fetchall()
            result = value(*args, **kwargs)
            if name in ("connect", "cursor"):
                return _Recorder(result, self._threads, self._before_select)
            return result

        return call


class _SqlStoreTests:
    """
    The integration tests both databases pass (mixed into a L{TestCase}).
    """

    dialect: SqlDialect
    config_path: str
    service: str
    port: int
    sleep_sql: str

    # hooks the databases implement (blocking, run in a thread)
    def _admin(self, database: str | None) -> Any:
        raise NotImplementedError

    def _create_database(self, name: str) -> None:
        raise NotImplementedError

    def _drop_database(self, name: str) -> None:
        raise NotImplementedError

    _username: str
    older_table: str
    insert_apps: str
    insert_invalid: str
    extra_column: str

    # -- fixtures ---------------------------------------------------------------

    def _sql(self, sql: str, params: tuple[Any, ...] = ()) -> Deferred[list[tuple[Any, ...]]]:
        """
        Run C{sql} in the test's database on a connection of its own (in
        a thread), and return its rows.
        """
        database = self.database

        def run() -> list[tuple[Any, ...]]:
            connection = self._admin(database)
            try:
                cursor = connection.cursor()
                cursor.execute(sql, params)
                rows = list(cursor.fetchall()) if cursor.description else []
                connection.commit()
                return rows
            finally:
                connection.close()

        return deferToThread(run)

    async def _setup_database(self) -> None:
        case: Any = self
        name = f"sockudo_t_{secrets.token_hex(6)}"
        try:
            await deferToThread(self._create_database, name)
        except Exception as e:
            unavailable(case, f"{self.service} at 127.0.0.1:{self.port} is needed ({e})")
        self.database = name
        case.addCleanup(deferToThread, self._drop_database, name)

    def _source(
        self,
        port: int | None = None,
        dbapi: object | None = None,
        table: str = "applications",
        query_timeout: float = 30.0,
    ) -> SqlAppSource:
        config = SqlDatabaseConfig(
            host="127.0.0.1",
            port=port or self.port,
            username=self._username,
            password="",
            database=self.database,
            table_name=table,
            pool_min=1,
            pool_max=3,
        )
        source = SqlAppSource(self.dialect, config, reactor, self.config_path, dbapi, query_timeout)
        case: Any = self
        case.addCleanup(source.close)
        return source

    async def _table_columns(self, table: str = "applications") -> list[str]:
        rows = await self._sql(self.dialect.list_columns(), (table,))
        return sorted(str(r[0]) for r in rows)

    # -- tests ----------------------------------------------------------------------

    async def test_prepare_creates_table(self) -> None:
        """
        On an empty database, L{SqlAppSource.prepare} creates the table with
        every column; a second prepare, and another source's, change nothing.
        """
        case: Any = self
        await self._setup_database()
        source = self._source()
        with capturedLogs() as events:
            await source.prepare()
        case.assertEqual(events, [])
        expected = sorted(c.name for c in COLUMNS)
        case.assertEqual(await self._table_columns(), expected)
        await source.prepare()
        await self._source().prepare()
        case.assertEqual(await self._table_columns(), expected)
        await self._sql(
            f"INSERT INTO applications (id, {self.dialect.quote('key')}, secret)"
            " VALUES ('minimal', 'minimal-key', 'minimal-secret')"
        )
        app = await source.fetch_by_key("minimal-key")
        case.assertEqual(app, App("minimal", "minimal-key", "minimal-secret"))

    async def test_prepare_completes_older_table(self) -> None:
        """
        A table of Sockudo's older columns gets the missing ones, keeps its
        rows, and a column we do not know is left alone and logged.
        """
        case: Any = self
        await self._setup_database()
        await self._sql(self.older_table)
        await self._sql(self.insert_apps)
        await self._sql(self.extra_column)
        source = self._source()
        with capturedLogs() as events:
            await source.prepare()
        case.assertEqual(await self._table_columns(), sorted([c.name for c in COLUMNS] + ["notes"]))
        messages = [e["log_format"] for e in events]
        case.assertIn("Added the columns {columns} to {store}", messages)
        added = next(e for e in events if "columns" in e and "Added" in e["log_format"])
        case.assertEqual(added["columns"], "enable_subscription_count, allowed_origins")
        unknown = next(e for e in events if "does not use" in e["log_format"])
        case.assertEqual(unknown["columns"], "notes")
        app = await source.fetch_by_id("app-1")
        case.assertEqual(app.key, "key-1")
        case.assertEqual(app.allowed_origins, ())
        await source.prepare()
        case.assertEqual(len(await source.fetch_all()), 2)

    async def test_fetch(self) -> None:
        """
        Apps are found by id, by key and all together, with JSON webhooks
        and allowed origins, NULL limits as defaults and stored booleans;
        an unknown id or key is L{None}, and so is a key differing only in
        case or trailing spaces.
        """
        case: Any = self
        await self._setup_database()
        source = self._source()
        await source.prepare()
        await self._sql(self.insert_apps)
        await self._sql(SET_ORIGINS)
        app = await source.fetch_by_id("app-1")
        defaults = App("", "", "")
        case.assertEqual(app.key, "key-1")
        case.assertEqual(app.secret, "secret-1")
        case.assertEqual(app.max_connections, 100)
        case.assertIs(app.enable_client_messages, True)
        case.assertIs(app.enabled, True)
        case.assertIs(app.enable_subscription_count, False)
        case.assertEqual(app.max_presence_members_per_channel, 50)
        case.assertEqual(app.max_event_payload_in_kb, defaults.max_event_payload_in_kb)
        case.assertEqual(
            app.webhooks,
            (
                WebhookTarget(
                    url="https://hooks.example/p",
                    event_types=("channel_occupied", "channel_vacated"),
                ),
            ),
        )
        case.assertEqual(app.allowed_origins, ("https://app.example.com",))
        case.assertEqual(await source.fetch_by_key("key-1"), app)
        other = await source.fetch_by_key("key-2")
        case.assertIs(other.enabled, False)
        case.assertEqual(other.webhooks, ())
        case.assertEqual(other.allowed_origins, ())
        case.assertEqual([a.id for a in await source.fetch_all()], ["app-1", "app-2"])
        case.assertIsNone(await source.fetch_by_id("nope"))
        case.assertIsNone(await source.fetch_by_key("KEY-1"))
        case.assertIsNone(await source.fetch_by_key("key-1 "))

    async def test_invalid_row(self) -> None:
        """
        A row that is not a valid app is absent from every fetch, and each
        fetch logs it once.
        """
        case: Any = self
        await self._setup_database()
        source = self._source()
        await source.prepare()
        await self._sql(self.insert_apps)
        await self._sql(self.insert_invalid)
        with capturedLogs() as events:
            case.assertIsNone(await source.fetch_by_id("bad"))
        case.assertEqual(len(events), 1)
        case.assertEqual(events[0]["app_id"], "bad")
        case.assertEqual(events[0]["table"], "applications")
        with capturedLogs() as events:
            case.assertEqual([a.id for a in await source.fetch_all()], ["app-1", "app-2"])
        case.assertEqual([e["app_id"] for e in events], ["bad"])

    async def test_other_table(self) -> None:
        """
        C{table_name} chooses the table.
        """
        case: Any = self
        await self._setup_database()
        source = self._source(table="tenant_apps")
        await source.prepare()
        case.assertEqual(await self._table_columns("tenant_apps"), sorted(c.name for c in COLUMNS))
        case.assertEqual(await self._table_columns("applications"), [])
        case.assertEqual(await source.fetch_all(), [])

    async def test_source_from_config(self) -> None:
        """
        The module's C{source_from_config} reads its C{database.*} section.
        """
        case: Any = self
        await self._setup_database()
        section = SqlDatabaseConfig(
            host="127.0.0.1",
            port=self.port,
            username=self._username,
            database=self.database,
            table_name="from_config",
            pool_min=0,
            pool_max=2,
        )
        store = mysql_store if self.dialect is MYSQL else postgres_store
        field = "database_mysql" if self.dialect is MYSQL else "database_postgres"
        source = store.source_from_config(ServerConfig(**{field: section}), reactor)
        case.addCleanup(source.close)
        await source.prepare()
        case.assertIn("from_config", source.description)
        case.assertEqual(await self._table_columns("from_config"), sorted(c.name for c in COLUMNS))

    async def test_outage(self) -> None:
        """
        When the database goes away (the proxy in front of it cuts every
        connection and refuses new ones) a fetch fails quickly, with an
        error, on a pooled connection and on a new one alike; when it comes
        back, the next fetch succeeds, the stale pooled connections being
        replaced without an error. Nothing is logged as an error.
        """
        case: Any = self
        await self._setup_database()
        proxy = start_proxy(case, self.port)
        source = self._source(port=proxy.port)
        await source.prepare()
        await self._sql(self.insert_apps)
        await gatherResults([source.fetch_by_id("app-1") for _ in range(3)])
        case.assertGreater(proxy.connections, 0)
        # A restart between two lookups: the pool's connections are stale.
        proxy.cut()
        proxy.restore()
        apps = await gatherResults([source.fetch_by_id("app-1") for _ in range(3)])
        case.assertEqual([a.key for a in apps], ["key-1"] * 3)
        # An outage seen by lookups.
        proxy.cut()
        for attempt in range(4):
            started = reactor.seconds()
            try:
                await source.fetch_by_id("app-1").addTimeout(10, reactor)
            except Exception as e:
                case.assertNotIsInstance(e, (TimeoutError, CancelledError))
            else:
                case.fail(f"attempt {attempt}: a fetch succeeded during the outage")
            case.assertLess(reactor.seconds() - started, 3, f"attempt {attempt}")
        proxy.restore()
        case.assertEqual((await source.fetch_by_key("key-2")).id, "app-2")
        case.assertEqual(len(await source.fetch_all()), 2)
        case.assertEqual(case.flushLoggedErrors(), [])

    async def _eventually(self, fetch: Callable[[], Deferred[Any]], failures: int) -> Any:
        """
        The result of C{fetch()}, called until it succeeds, at most
        C{failures} failing calls (each quick: not a timeout) allowed.
        """
        case: Any = self
        for attempt in range(failures + 1):
            started = reactor.seconds()
            try:
                return await fetch().addTimeout(10, reactor)
            except Exception as e:
                case.assertNotIsInstance(e, (TimeoutError, CancelledError))
                case.assertLess(reactor.seconds() - started, 3, f"attempt {attempt}")
        case.fail(f"still failing after {failures + 1} attempts")

    async def test_outage_public_fallback(self) -> None:
        """
        With the guard of L{sockudo_tw.compat.adbapi} forced off, the source
        runs on adbapi's public API (a plain pool with C{cp_reconnect},
        C{runInteraction}): fetches work; after a restart between lookups
        each stale pooled connection (at most C{pool_max}) fails one fetch,
        and then fetches answer; during an outage fetches fail quickly;
        after it they answer again. adbapi logs the broken connections as
        errors: the fallback is noisier, not wrong.
        """
        case: Any = self
        case.patch(compat_adbapi, "QUIET_CONNECTIONS", False)
        await self._setup_database()
        proxy = start_proxy(case, self.port)
        source = self._source(port=proxy.port)
        case.assertIs(type(source._pool), adbapi.ConnectionPool)
        case.assertIs(source._pool.connectionFactory, adbapi.Connection)
        await source.prepare()
        await self._sql(self.insert_apps)
        apps = await gatherResults([source.fetch_by_id("app-1") for _ in range(3)])
        case.assertEqual([a.key for a in apps], ["key-1"] * 3)
        case.assertGreater(proxy.connections, 0)
        # A restart between two lookups: the pool's connections are stale.
        proxy.cut()
        proxy.restore()
        app = await self._eventually(lambda: source.fetch_by_id("app-1"), failures=3)
        case.assertEqual(app.key, "key-1")
        # An outage seen by lookups.
        proxy.cut()
        for attempt in range(4):
            started = reactor.seconds()
            try:
                await source.fetch_by_id("app-1").addTimeout(10, reactor)
            except Exception as e:
                case.assertNotIsInstance(e, (TimeoutError, CancelledError))
            else:
                case.fail(f"attempt {attempt}: a fetch succeeded during the outage")
            case.assertLess(reactor.seconds() - started, 3, f"attempt {attempt}")
        proxy.restore()
        other = await self._eventually(lambda: source.fetch_by_key("key-2"), failures=3)
        case.assertEqual(other.id, "app-2")
        everything = await self._eventually(source.fetch_all, failures=3)
        case.assertEqual(len(everything), 2)
        case.flushLoggedErrors()

    async def test_frozen_database(self) -> None:
        """
        A database that keeps its connections but stops answering (the
        proxy holds every byte) fails a fetch after the query timeout, not
        never; once it answers again, so do the fetches.
        """
        case: Any = self
        await self._setup_database()
        proxy = start_proxy(case, self.port)
        source = self._source(port=proxy.port, query_timeout=1.0)
        await source.prepare()
        await self._sql(self.insert_apps)
        case.assertEqual((await source.fetch_by_id("app-1")).key, "key-1")
        proxy.freeze()
        started = reactor.seconds()
        with case.assertRaises(DeferredTimeoutError):
            await source.fetch_by_id("app-1")
        case.assertLess(reactor.seconds() - started, 3)
        proxy.restore()
        case.assertEqual((await source.fetch_by_key("key-2")).id, "app-2")

    async def test_not_on_reactor_thread(self) -> None:
        """
        Every call into the driver (connect, cursor, execute, fetch,
        commit, close) happens off the reactor thread, and a slow query
        (half a second of sleep in the database before each app query)
        leaves the reactor free: a 20 ms looping call keeps ticking.
        """
        case: Any = self
        await self._setup_database()
        threads: set[int] = set()
        module = __import__(self.dialect.module_name)
        dbapi = _Recorder(module, threads, self.sleep_sql)
        source = self._source(dbapi=dbapi)
        await source.prepare()
        await self._sql(self.insert_apps)
        ticks: list[float] = []
        loop = LoopingCall(lambda: ticks.append(time.monotonic()))
        loop.clock = reactor
        loop.start(0.02)
        started = time.monotonic()
        try:
            app = await source.fetch_by_id("app-1")
            apps = await source.fetch_all()
        finally:
            loop.stop()
        elapsed = time.monotonic() - started
        case.assertEqual(app.key, "key-1")
        case.assertEqual(len(apps), 2)
        case.assertGreaterEqual(elapsed, 1.0)
        # about 50 ticks in one second; a blocked reactor would make 1 or 2
        case.assertGreater(len(ticks), 20)
        await source.close()
        case.assertTrue(threads)
        case.assertNotIn(threading.get_ident(), threads)


def _mysql_admin(database: str | None) -> Any:
    import pymysql

    return pymysql.connect(
        host="127.0.0.1",
        port=3306,
        user="root",
        password="",
        database=database,
        connect_timeout=5,
        autocommit=False,
    )


class MySqlStoreTests(_SqlStoreTests, TestCase):
    """
    The MySQL source against the machine's MariaDB.
    """

    dialect = MYSQL
    config_path = "database.mysql"
    service = "MariaDB"
    port = 3306
    _username = "root"
    sleep_sql = "SELECT SLEEP(0.5)"

    older_table = """
        CREATE TABLE applications (
            id VARCHAR(255) PRIMARY KEY,
            `key` VARCHAR(255) UNIQUE NOT NULL,
            secret VARCHAR(255) NOT NULL,
            max_connections INT UNSIGNED NOT NULL,
            enable_client_messages BOOLEAN NOT NULL DEFAULT FALSE,
            enabled BOOLEAN NOT NULL DEFAULT TRUE,
            max_backend_events_per_second INT UNSIGNED NULL,
            max_client_events_per_second INT UNSIGNED NOT NULL,
            max_read_requests_per_second INT UNSIGNED NULL,
            max_presence_members_per_channel INT UNSIGNED NULL,
            max_presence_member_size_in_kb INT UNSIGNED NULL,
            max_channel_name_length INT UNSIGNED NULL,
            max_event_channels_at_once INT UNSIGNED NULL,
            max_event_name_length INT UNSIGNED NULL,
            max_event_payload_in_kb INT UNSIGNED NULL,
            max_event_batch_size INT UNSIGNED NULL,
            enable_user_authentication BOOLEAN NULL,
            enable_watchlist_events BOOLEAN NULL,
            webhooks JSON NULL,
            created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
            updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP
        )
    """
    extra_column = "ALTER TABLE applications ADD COLUMN notes TEXT NULL"
    insert_apps = """
        INSERT INTO applications (id, `key`, secret, max_connections,
            enable_client_messages, enabled, max_client_events_per_second,
            max_presence_members_per_channel, max_event_payload_in_kb, webhooks)
        VALUES
        ('app-1', 'key-1', 'secret-1', 100, 1, 1, 10, 50, NULL,
         '[{"url": "https://hooks.example/p",
            "event_types": ["channel_occupied", "channel_vacated"]}]'),
        ('app-2', 'key-2', 'secret-2', 0, 0, 0, 0, NULL, NULL, NULL)
    """
    insert_invalid = """
        INSERT INTO applications (id, `key`, secret, max_connections,
            max_client_events_per_second, webhooks)
        VALUES ('bad', 'key-bad', 'secret', 1, 1, '{"url": 5}')
    """

    def _admin(self, database: str | None) -> Any:
        return _mysql_admin(database)

    def _create_database(self, name: str) -> None:
        connection = _mysql_admin(None)
        try:
            connection.cursor().execute(f"CREATE DATABASE `{name}`")
        finally:
            connection.close()

    def _drop_database(self, name: str) -> None:
        connection = _mysql_admin(None)
        try:
            connection.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            connection.close()


def _postgres_admin(database: str | None) -> Any:
    import psycopg

    return psycopg.connect(
        host="127.0.0.1",
        port=5432,
        user="postgres",
        dbname=database or "postgres",
        connect_timeout=5,
    )


class PostgresStoreTests(_SqlStoreTests, TestCase):
    """
    The PostgreSQL source against the machine's PostgreSQL.
    """

    dialect = POSTGRES
    config_path = "database.postgres"
    service = "PostgreSQL"
    port = 5432
    _username = "postgres"
    sleep_sql = "SELECT pg_sleep(0.5)"

    older_table = """
        CREATE TABLE applications (
            id VARCHAR(255) PRIMARY KEY,
            key VARCHAR(255) UNIQUE NOT NULL,
            secret VARCHAR(255) NOT NULL,
            max_connections INTEGER NOT NULL,
            enable_client_messages BOOLEAN NOT NULL DEFAULT FALSE,
            enabled BOOLEAN NOT NULL DEFAULT TRUE,
            max_backend_events_per_second INTEGER,
            max_client_events_per_second INTEGER NOT NULL,
            max_read_requests_per_second INTEGER,
            max_presence_members_per_channel INTEGER,
            max_presence_member_size_in_kb INTEGER,
            max_channel_name_length INTEGER,
            max_event_channels_at_once INTEGER,
            max_event_name_length INTEGER,
            max_event_payload_in_kb INTEGER,
            max_event_batch_size INTEGER,
            enable_user_authentication BOOLEAN,
            enable_watchlist_events BOOLEAN,
            webhooks JSONB,
            created_at TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,
            updated_at TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP
        )
    """
    extra_column = "ALTER TABLE applications ADD COLUMN notes TEXT"
    insert_apps = """
        INSERT INTO applications (id, key, secret, max_connections,
            enable_client_messages, enabled, max_client_events_per_second,
            max_presence_members_per_channel, max_event_payload_in_kb, webhooks)
        VALUES
        ('app-1', 'key-1', 'secret-1', 100, TRUE, TRUE, 10, 50, NULL,
         '[{"url": "https://hooks.example/p",
            "event_types": ["channel_occupied", "channel_vacated"]}]'),
        ('app-2', 'key-2', 'secret-2', 0, FALSE, FALSE, 0, NULL, NULL, NULL)
    """
    insert_invalid = """
        INSERT INTO applications (id, key, secret, max_connections,
            max_client_events_per_second, webhooks)
        VALUES ('bad', 'key-bad', 'secret', 1, 1, '{"url": 5}')
    """

    def _admin(self, database: str | None) -> Any:
        return _postgres_admin(database)

    def _create_database(self, name: str) -> None:
        connection = _postgres_admin(None)
        connection.autocommit = True
        try:
            connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()

    def _drop_database(self, name: str) -> None:
        connection = _postgres_admin(None)
        connection.autocommit = True
        try:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            connection.close()
