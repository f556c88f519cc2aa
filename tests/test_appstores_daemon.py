"""
The database app stores end to end (issue 16 point 5): for MariaDB
(C{app_manager.driver: mysql}), PostgreSQL (C{pgsql}) and DynamoDB
(C{dynamodb}, against moto), a real C{twistd -n sockudo} daemon reads its
apps from the database while pusher-js clients connect and the Python
C{pusher} SDK triggers.

Each store passes the same two scenarios:

  - an app inserted into the daemon's freshly created table connects and
    receives what the SDK triggers; a lower C{max_connections} written to
    the database refuses the next connection with 4004 once the cache's
    TTL has passed, and C{enabled = false} refuses new ones with 4003;
  - with the daemon reaching the database through a L{tests.tcp_proxy}
    that the test cuts: the app already in use still connects and
    triggers, an app the daemon has not seen is refused (4102 for a
    connection, 503 for a trigger), C{/up} carries C{X-App-Store:
    unreachable}; once the proxy forwards again, the refused client gets in
    by itself (pusher-js backs off and retries after 4102) and an app
    inserted after the outage works.

Every test has its own database (MariaDB, PostgreSQL) or table (DynamoDB),
dropped in its cleanup; the daemon creates the table, and the test inserts
the first app as soon as the table exists (C{/up} answers 200 only once
there is an app). The cache TTL is 1 s, the least C{app_manager.cache.ttl}
allows, so the waits for a change to show are short.
"""

from __future__ import annotations

import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

import attrs
import pusher
import pusher.errors
from twisted.internet import task, threads
from twisted.trial.unittest import TestCase

from tests.interop_harness import (
    APP_ID,
    APP_KEY,
    APP_SECRET,
    DEFAULT_WAIT,
    Interop,
    match,
    unavailable,
)
from tests.tcp_proxy import TcpProxy, start_proxy

#: The daemon's C{app_manager.cache.ttl}, in seconds (the least it accepts).
TTL = 1

#: How long after a change in the database the test looks for its effect:
#: every cached answer read before the change has expired by then.
AFTER_TTL = TTL + 0.6

#: Bound on waiting for the daemon to create its table, and for C{/up}
#: to show or drop the outage.
TABLE_WAIT = 25.0
UP_WAIT = 15.0


@attrs.frozen
class AppRow:
    """
    One app as the test writes it into the database: the columns every
    store has, under Sockudo's names. Ids are numeric: the Python SDK
    accepts no other.
    """

    id: str
    key: str
    secret: str
    max_connections: int = 0
    enable_client_messages: bool = True
    enabled: bool = True
    max_client_events_per_second: int = 100

    def fields(self) -> dict[str, str | int | bool]:
        """
        Column name to value, in a stable order.
        """
        return attrs.asdict(self)


#: The app a test starts with: the harness's defaults, so that
#: L{Interop.connect}, the Node SDK and L{Interop.python_sdk} use it as is.
FIRST = AppRow(APP_ID, APP_KEY, APP_SECRET)
#: An app in the database that the daemon has not looked up before the outage.
SECOND = AppRow("223344", "db-key-second", "db-secret-second")
#: An app inserted after the outage.
THIRD = AppRow("334455", "db-key-third", "db-secret-third")

#: The columns L{AppTable.update} may set (names go into SQL text).
UPDATABLE = frozenset({"max_connections", "enabled", "enable_client_messages"})


class AppTable:
    """
    The test's side of one database: create and drop its own database or
    table, wait for the daemon to create the apps table, write apps. Every
    method blocks: call it in a thread.

    @ivar service: the database's name in messages (C{"MariaDB"}).
    @ivar port: the loopback port the database itself listens on (a
        L{TcpProxy} forwards there).
    """

    service = ""
    port = 0

    def create(self) -> None:
        """
        Create the test's own database (or nothing, for a table the daemon
        creates).
        """
        raise NotImplementedError

    def drop(self) -> None:
        """
        Drop what L{create} or the daemon made.
        """
        raise NotImplementedError

    def daemon_config(self, port: int) -> dict[str, Any]:
        """
        The daemon's top-level C{app_manager} and C{database} keys for this
        store, reaching the database at 127.0.0.1:C{port}.
        """
        raise NotImplementedError

    def table_ready(self) -> bool:
        """
        Whether the daemon has created the apps table.
        """
        raise NotImplementedError

    def insert(self, app: AppRow) -> None:
        """
        Add C{app}.
        """
        raise NotImplementedError

    def update(self, app_id: str, **fields: int | bool) -> None:
        """
        Set some columns (of L{UPDATABLE}) of the app C{app_id}.
        """
        raise NotImplementedError

    def insert_when_ready(self, app: AppRow, stop: threading.Event) -> None:
        """
        Wait (polling every 0.1 s, at most L{TABLE_WAIT} s, or until C{stop}
        is set) for the daemon to create the table, then insert C{app}.

        @raise AssertionError: the table did not appear in time.
        """
        deadline = time.monotonic() + TABLE_WAIT
        while not self.table_ready():
            if stop.is_set():
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the daemon did not create its {self.service} table within {TABLE_WAIT} s"
                )
            time.sleep(0.1)
        self.insert(app)


class SqlTable(AppTable):
    """
    An L{AppTable} in a database of its own on a SQL server, table
    C{applications}.
    """

    driver = ""
    section = ""
    username = ""
    quote_char = '"'

    def __init__(self) -> None:
        self.database = f"sockudo_e2e_{secrets.token_hex(5)}"

    def connect(self, database: str | None) -> Any:
        """
        A DB-API connection as the admin user, to C{database} or to the
        server's default one.
        """
        raise NotImplementedError

    def _quote(self, name: str) -> str:
        """
        A column name quoted for this server (C{key} is reserved in MySQL).
        """
        return self.quote_char + name + self.quote_char

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """
        Run C{sql} in the test's database on a connection of its own,
        commit, and return the rows.
        """
        connection = self.connect(self.database)
        try:
            cursor = connection.cursor()
            cursor.execute(sql, params)
            rows = list(cursor.fetchall()) if cursor.description else []
            connection.commit()
            return rows
        finally:
            connection.close()

    def daemon_config(self, port: int) -> dict[str, Any]:
        return {
            "app_manager": {"driver": self.driver, "cache": {"ttl": TTL}},
            "database": {
                self.section: {
                    "host": "127.0.0.1",
                    "port": port,
                    "username": self.username,
                    "password": "",
                    "database": self.database,
                    "table_name": "applications",
                    "pool_min": 1,
                    "pool_max": 4,
                }
            },
        }

    def table_ready(self) -> bool:
        rows = self._execute(
            "SELECT COUNT(*) FROM information_schema.tables"
            " WHERE table_name = 'applications' AND table_schema = " + self._schema()
        )
        return bool(rows and rows[0][0])

    def _schema(self) -> str:
        """
        The SQL expression naming the schema the connection works in.
        """
        raise NotImplementedError

    def insert(self, app: AppRow) -> None:
        fields = app.fields()
        columns = ", ".join(self._quote(name) for name in fields)
        marks = ", ".join(["%s"] * len(fields))
        self._execute(
            f"INSERT INTO applications ({columns}) VALUES ({marks})", tuple(fields.values())
        )

    def update(self, app_id: str, **fields: int | bool) -> None:
        assert set(fields) <= UPDATABLE, fields
        assignments = ", ".join(f"{self._quote(name)} = %s" for name in fields)
        self._execute(
            f"UPDATE applications SET {assignments} WHERE id = %s", (*fields.values(), app_id)
        )


class MariaDbTable(SqlTable):
    """
    The machine's MariaDB (root, no password), one database per test.
    """

    service = "MariaDB"
    port = 3306
    driver = "mysql"
    section = "mysql"
    username = "root"
    quote_char = "`"

    def connect(self, database: str | None) -> Any:
        import pymysql

        return pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.username,
            password="",
            database=database,
            connect_timeout=5,
        )

    def _schema(self) -> str:
        return "DATABASE()"

    def create(self) -> None:
        connection = self.connect(None)
        try:
            connection.cursor().execute(f"CREATE DATABASE `{self.database}`")
        finally:
            connection.close()

    def drop(self) -> None:
        connection = self.connect(None)
        try:
            connection.cursor().execute(f"DROP DATABASE IF EXISTS `{self.database}`")
        finally:
            connection.close()


class PostgresTable(SqlTable):
    """
    The machine's PostgreSQL (postgres, trust auth), one database per test.
    """

    service = "PostgreSQL"
    port = 5432
    driver = "pgsql"
    section = "postgres"
    username = "postgres"

    def connect(self, database: str | None) -> Any:
        import psycopg

        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.username,
            dbname=database or "postgres",
            connect_timeout=5,
        )

    def _schema(self) -> str:
        return "current_schema()"

    def _admin(self, sql: str) -> None:
        """
        Run C{sql} outside a transaction (C{CREATE DATABASE} needs that).
        """
        connection = self.connect(None)
        connection.autocommit = True
        try:
            connection.execute(sql)
        finally:
            connection.close()

    def create(self) -> None:
        self._admin(f'CREATE DATABASE "{self.database}"')

    def drop(self) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


#: The fake credentials the test and the daemon both give moto.
_MOTO_KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


class DynamoDbTable(AppTable):
    """
    A table of its own in a moto server of the test's own (which the
    daemon creates, with Sockudo's layout).
    """

    service = "DynamoDB (moto)"

    def __init__(self, endpoint: str) -> None:
        import boto3

        self.port = int(endpoint.rsplit(":", 1)[1])
        self.table = f"sockudo-e2e-{secrets.token_hex(5)}"
        self._client = boto3.client(
            "dynamodb", endpoint_url=endpoint, region_name="us-east-1", **_MOTO_KEYS
        )

    def create(self) -> None:
        pass  # the daemon creates the table

    def drop(self) -> None:
        try:
            self._client.delete_table(TableName=self.table)
        except self._client.exceptions.ResourceNotFoundException:
            pass

    def daemon_config(self, port: int) -> dict[str, Any]:
        return {
            "app_manager": {"driver": "dynamodb", "cache": {"ttl": TTL}},
            "database": {
                "dynamodb": {
                    "region": "us-east-1",
                    "table_name": self.table,
                    "endpoint_url": f"http://127.0.0.1:{port}",
                    **_MOTO_KEYS,
                }
            },
        }

    def table_ready(self) -> bool:
        try:
            table = self._client.describe_table(TableName=self.table)["Table"]
        except self._client.exceptions.ResourceNotFoundException:
            return False
        indexes = table.get("GlobalSecondaryIndexes", [])
        return table["TableStatus"] == "ACTIVE" and all(
            index.get("IndexStatus", "ACTIVE") == "ACTIVE" for index in indexes
        )

    @staticmethod
    def _value(value: str | int | bool) -> dict[str, Any]:
        """
        C{value} as a typed DynamoDB attribute value.
        """
        if isinstance(value, bool):
            return {"BOOL": value}
        if isinstance(value, int):
            return {"N": str(value)}
        return {"S": value}

    def insert(self, app: AppRow) -> None:
        item = {name: self._value(value) for name, value in app.fields().items()}
        self._client.put_item(TableName=self.table, Item=item)

    def update(self, app_id: str, **fields: int | bool) -> None:
        assert set(fields) <= UPDATABLE, fields
        names = {f"#f{n}": name for n, name in enumerate(fields)}
        values = {f":v{n}": self._value(value) for n, value in enumerate(fields.values())}
        self._client.update_item(
            TableName=self.table,
            Key={"id": {"S": app_id}},
            UpdateExpression="SET " + ", ".join(f"#f{n} = :v{n}" for n in range(len(fields))),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )


def refusal_code(observation: Mapping[str, Any]) -> int | None:
    """
    The Pusher error code of a driver C{conn_error} observation (pusher-js
    nests it in C{data.code}, inside a C{WebSocketError} during the
    handshake).
    """
    error = observation.get("error")
    for _ in range(3):
        if not isinstance(error, Mapping):
            return None
        data = error.get("data")
        if isinstance(data, Mapping) and isinstance(data.get("code"), int):
            code: int = data["code"]
            return code
        error = error.get("error")
    return None


def get_up(port: int) -> tuple[int, dict[str, str]]:
    """
    C{GET /up} of the daemon (blocking: call it in a thread): its status and
    headers (names in lower case).
    """
    request = urllib.request.Request(f"http://127.0.0.1:{port}/up")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}


class _AppStoreDaemonTests:
    """
    The scenarios every database store passes (mixed into a L{TestCase}
    that provides L{make_table}).
    """

    timeout = 120

    async def make_table(self) -> AppTable:
        """
        The store's L{AppTable}, its database service checked (failing in CI,
        skipping elsewhere when it is missing).
        """
        raise NotImplementedError

    # -- fixtures -----------------------------------------------------------

    @property
    def case(self) -> TestCase:
        """
        This test, typed as the L{TestCase} it is mixed into.
        """
        assert isinstance(self, TestCase)
        return self

    async def start(self, through_proxy: bool) -> tuple[Interop, AppTable, TcpProxy | None]:
        """
        The test's database (or table) and a daemon reading its apps from
        it, directly or through a L{TcpProxy}, with L{FIRST} inserted as
        soon as the daemon has created the table; dropped in cleanup after
        the daemon has stopped.
        """
        case = self.case
        table = await self.make_table()
        try:
            await threads.deferToThread(table.create)
        except Exception as e:
            unavailable(case, f"{table.service} at 127.0.0.1:{table.port} is needed ({e})")
        case.addCleanup(threads.deferToThread, table.drop)
        proxy = start_proxy(case, table.port) if through_proxy else None
        port = proxy.port if proxy is not None else table.port
        stop = threading.Event()
        inserting = threads.deferToThread(table.insert_when_ready, FIRST, stop)
        try:
            fx = await Interop.start(case, config=table.daemon_config(port))
        except BaseException:
            stop.set()
            try:
                await inserting
            except Exception as e:
                raise AssertionError(f"inserting the first app failed: {e!r}") from e
            raise
        await inserting
        return fx, table, proxy

    async def write(self, function: Any, *args: Any, **kwargs: Any) -> None:
        """
        Run a blocking L{AppTable} method in a thread.
        """
        await threads.deferToThread(function, *args, **kwargs)

    async def after_ttl(self) -> None:
        """
        Wait until every answer the daemon cached before now has expired.
        """
        from twisted.internet import reactor

        await task.deferLater(reactor, AFTER_TTL)

    async def refused(self, fx: Interop, client: str, code: int) -> None:
        """
        Assert that C{client}'s first error is the Pusher error C{code} and
        that it never connected.
        """
        outcome = await fx.node.wait_for(
            lambda o: o["type"] in ("conn_error", "connected") and o["client"] == client,
            f"an error for {client!r} (expected code {code})",
        )
        self.case.assertEqual(
            outcome["type"],
            "conn_error",
            f"{client!r} connected instead of being refused with {code}:\n" + fx.node.report(),
        )
        self.case.assertEqual(refusal_code(outcome), code, fx.node.report())
        self.case.assertEqual(fx.node.matching(match("connected", client)), [])

    async def up_until(
        self, fx: Interop, unreachable: bool, within: float = UP_WAIT
    ) -> tuple[int, dict[str, str]]:
        """
        Ask C{GET /up} (every 0.2 s, at most C{within} s) until its
        C{X-App-Store: unreachable} header is there (C{unreachable}) or
        gone; return the status and headers of that answer.
        """
        from twisted.internet import reactor

        deadline = time.monotonic() + within
        answers: list[tuple[int, dict[str, str]]] = []
        while time.monotonic() < deadline:
            status, headers = await fx.in_thread(get_up, fx.server.port)
            answers.append((status, headers))
            if (headers.get("x-app-store") == "unreachable") == unreachable:
                return status, headers
            await task.deferLater(reactor, 0.2)
        last = answers[-3:]
        raise AssertionError(
            f"/up did not {'show' if unreachable else 'drop'} X-App-Store: unreachable within"
            f" {within} s; last answers: {last}\n{fx.server.log_tail()}"
        )

    def log_count(self, fx: Interop, text: str) -> int:
        """
        How many lines of the daemon's log so far contain C{text}.
        """
        log = fx.server.log_tail(lines=100_000)
        return sum(text in line for line in log.splitlines())

    def sdk_for(self, fx: Interop, app: AppRow) -> Any:
        """
        The Python SDK for C{app} on the daemon.
        """
        return pusher.Pusher(
            app_id=app.id,
            key=app.key,
            secret=app.secret,
            ssl=False,
            host="127.0.0.1",
            port=fx.server.port,
            timeout=10,
        )

    async def delivered(self, fx: Interop, app: AppRow, client: str, channel: str) -> None:
        """
        Trigger an event on C{channel} with the Python SDK as C{app} and wait
        for C{client} (subscribed there) to receive it.
        """
        name = f"from-db-{secrets.token_hex(3)}"
        result = await fx.in_thread(self.sdk_for(fx, app).trigger, channel, name, {"app": app.id})
        self.case.assertEqual(result, {})
        event = await fx.event(client, channel, name)
        self.case.assertEqual(event["data"], {"app": app.id})

    # -- scenarios ------------------------------------------------------------

    async def test_app_in_database_connects_triggers_and_follows_changes(self) -> None:
        """
        The app inserted into the database connects with pusher-js and gets
        what the Python SDK triggers; an unknown key is refused with 4001;
        C{max_connections = 1} written to the database refuses a second
        connection with 4004 after the TTL, C{enabled = false} refuses new
        connections with 4003, and the first connection stays up meanwhile.
        """
        case = self.case
        fx, table, _ = await self.start(through_proxy=False)
        await fx.connect("first")
        await fx.subscribe("first", "db-news")
        await self.delivered(fx, FIRST, "first", "db-news")

        await fx.connect("nobody", key="no-such-key-in-db", wait=False)
        await self.refused(fx, "nobody", 4001)

        await self.write(table.update, FIRST.id, max_connections=1)
        await self.after_ttl()
        await fx.connect("over-quota", wait=False)
        await self.refused(fx, "over-quota", 4004)

        await self.write(table.update, FIRST.id, max_connections=0, enabled=False)
        await self.after_ttl()
        await fx.connect("disabled", wait=False)
        await self.refused(fx, "disabled", 4003)
        case.assertEqual(
            fx.node.matching(match("state", "first", previous="connected")),
            [],
            "the first connection was dropped:\n" + fx.node.report(),
        )

    async def test_database_outage_and_return(self) -> None:
        """
        With the database cut off: the app in use still connects and
        triggers, an app the daemon never looked up is refused (4102 for a
        connection, 503 for a trigger), C{/up} says C{X-App-Store:
        unreachable}. Once the database is back, the refused client gets in
        by itself, and an app inserted now connects and triggers.
        """
        case = self.case
        fx, table, proxy = await self.start(through_proxy=True)
        assert proxy is not None
        await fx.connect("known")
        await fx.subscribe("known", "db-outage")
        await self.delivered(fx, FIRST, "known", "db-outage")
        await self.write(table.insert, SECOND)
        outages_before = self.log_count(fx, "is unreachable")

        proxy.cut()
        status, _ = await self.up_until(fx, unreachable=True)
        case.assertEqual(status, 200, "/up failed while the known app is served from memory")
        await self.after_ttl()  # the known app's cached answers are stale now

        await fx.connect("known-again")
        await fx.subscribe("known-again", "db-outage")
        await self.delivered(fx, FIRST, "known-again", "db-outage")

        await fx.connect("unseen", key=SECOND.key, wait=False)
        await self.refused(fx, "unseen", 4102)
        with case.assertRaises(pusher.errors.PusherBadStatus) as refused:
            await fx.in_thread(self.sdk_for(fx, SECOND).trigger, "db-outage", "x", {})
        case.assertTrue(str(refused.exception).startswith("503"), str(refused.exception))

        proxy.restore()
        await fx.node.wait_for(
            match("connected", "unseen"),
            "the client refused with 4102 to get in by itself once the database is back",
            within=DEFAULT_WAIT + 5,
        )
        await fx.subscribe("unseen", "db-back")
        await self.delivered(fx, SECOND, "unseen", "db-back")

        await self.write(table.insert, THIRD)
        await fx.connect("newcomer", key=THIRD.key)
        await fx.subscribe("newcomer", "db-back")
        await self.delivered(fx, THIRD, "newcomer", "db-back")
        await self.up_until(fx, unreachable=False)
        case.assertEqual(
            self.log_count(fx, "is unreachable") - outages_before,
            1,
            "the outage was not logged exactly once:\n" + fx.server.log_tail(),
        )
        case.assertGreater(self.log_count(fx, "is reachable again"), 0, fx.server.log_tail())


class MariaDbDaemonTests(_AppStoreDaemonTests, TestCase):
    """
    C{app_manager.driver: mysql} against the machine's MariaDB.
    """

    async def make_table(self) -> AppTable:
        try:
            import pymysql  # noqa: F401
        except ImportError as e:
            unavailable(self, f"PyMySQL is needed (pip install 'sockudo-tw[mysql]'): {e}")
        return MariaDbTable()


class PostgresDaemonTests(_AppStoreDaemonTests, TestCase):
    """
    C{app_manager.driver: pgsql} against the machine's PostgreSQL.
    """

    async def make_table(self) -> AppTable:
        try:
            import psycopg  # noqa: F401
        except ImportError as e:
            unavailable(self, f"psycopg is needed (pip install 'sockudo-tw[postgres]'): {e}")
        return PostgresTable()


class DynamoDbDaemonTests(_AppStoreDaemonTests, TestCase):
    """
    C{app_manager.driver: dynamodb} against a moto server of the test's own.
    """

    async def make_table(self) -> AppTable:
        from tests.moto_harness import start_moto

        endpoint = start_moto(self)
        return await threads.deferToThread(DynamoDbTable, endpoint)
