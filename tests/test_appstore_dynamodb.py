"""
Tests for L{sockudo_tw.appstores.dynamodb}: the DynamoDB app source against
a moto server (L{tests.moto_harness}) on loopback, with real boto3 calls in
the source's thread pool and the real reactor delivering the results.

Outages go through a loopback relay in front of moto that the test switches
between forwarding, resetting connections and swallowing requests, so the
same source sees DynamoDB go away and come back on the same endpoint.

Every test also checks, in its cleanup, that boto3 made its calls (and the
client was built) off the reactor thread: a botocore C{before-call} hook
records the thread of every call.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import attrs
from botocore.exceptions import BotoCoreError
from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.logger import LogEvent, Logger
from twisted.protocols.portforward import ProxyFactory
from twisted.trial.reporter import TestResult
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from sockudo_tw.appstores import IAppSource
from sockudo_tw.appstores.dynamodb import (
    KEY_INDEX,
    ClientTimeouts,
    DynamoDbAppSource,
    build_client,
    source_from_config,
)
from sockudo_tw.config import ServerConfig
from sockudo_tw.config.schema import ConfigError, DynamoDbConfig
from sockudo_tw.pusher.app import App, WebhookTarget
from tests.moto_harness import AWS_TEST_ENV, MOTO_REGION, start_moto, use_aws_test_env

#: Short timeouts: every failing call in these tests fails within seconds.
FAST = ClientTimeouts(connect=1.0, read=1.0, attempts=2, table_wait=10.0)

#: An outage must fail a lookup within this many seconds.
OUTAGE_BOUND = 10.0

FULL_ITEM: dict[str, Any] = {
    "id": {"S": "app-full"},
    "key": {"S": "key-full"},
    "secret": {"S": "secret-full"},
    "enabled": {"BOOL": True},
    "max_connections": {"N": "250"},
    "enable_client_messages": {"BOOL": True},
    "max_client_events_per_second": {"N": "20"},
    "max_backend_events_per_second": {"N": "0"},
    "max_presence_members_per_channel": {"N": "50"},
    "max_event_payload_in_kb": {"N": "32"},
    "enable_user_authentication": {"BOOL": False},
    "webhooks": {
        "S": json.dumps(
            [
                {
                    "url": "https://hooks.example/pusher",
                    "event_types": ["channel_occupied", "channel_vacated"],
                    "headers": {"X-Token": "t"},
                }
            ]
        )
    },
    "allowed_origins": {"L": [{"S": "https://a.example"}, {"S": "*.b.example"}]},
    "created_at": {"S": "2026-01-01T00:00:00Z"},
}

FULL_APP = App(
    id="app-full",
    key="key-full",
    secret="secret-full",
    enabled=True,
    max_connections=250,
    enable_client_messages=True,
    max_client_events_per_second=20,
    max_backend_events_per_second=0,
    max_presence_members_per_channel=50,
    max_event_payload_in_kb=32,
    enable_user_authentication=False,
    webhooks=(
        WebhookTarget(
            url="https://hooks.example/pusher",
            event_types=("channel_occupied", "channel_vacated"),
            headers={"X-Token": "t"},
        ),
    ),
    allowed_origins=("https://a.example", "*.b.example"),
)


def minimal_item(app_id: str, key: str) -> dict[str, Any]:
    """
    An item with only the attributes an app cannot do without.
    """
    return {"id": {"S": app_id}, "key": {"S": key}, "secret": {"S": "s-" + app_id}}


class _Swallow(protocol.Protocol):
    """
    Accepts a connection and never answers (a hung DynamoDB).
    """


class _Reset(protocol.Protocol):
    """
    Resets every connection at once (DynamoDB gone).
    """

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.abortConnection()  # type: ignore[attr-defined]


class SwitchableRelay(ProxyFactory):
    """
    A loopback TCP relay to moto that a test turns off and on again, on a
    port that stays bound throughout (so nothing else can take it).

    @ivar mode: C{"forward"}, C{"reset"} or C{"swallow"}.
    """

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.mode = "forward"
        self.connections: list[protocol.Protocol] = []

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        built: protocol.Protocol
        if self.mode == "forward":
            built = super().buildProtocol(addr)
        elif self.mode == "reset":
            built = _Reset()
        else:
            built = _Swallow()
        self.connections.append(built)
        return built


def start_relay(case: TestCase, endpoint: str) -> tuple[SwitchableRelay, str]:
    """
    A L{SwitchableRelay} to C{endpoint} on a new loopback port, closed (with
    every connection it made) in the test's cleanup.

    @return: the relay and its endpoint URL.
    """
    host, port = endpoint.removeprefix("http://").split(":")
    relay = SwitchableRelay(host, int(port))
    listening: IListeningPort = reactor.listenTCP(0, relay, interface="127.0.0.1")  # type: ignore[attr-defined]

    async def close() -> None:
        await listening.stopListening()
        for p in relay.connections:
            if p.transport is not None:
                p.transport.abortConnection()  # type: ignore[attr-defined]
            peer = getattr(p, "peer", None)
            if peer is not None and peer.transport is not None:
                peer.transport.abortConnection()
        # Aborted connections finish closing on the next reactor turns.
        await deferLater(reactor, 0.05, lambda: None)  # type: ignore[arg-type]

    case.addCleanup(lambda: Deferred.fromCoroutine(close()))
    return relay, f"http://127.0.0.1:{listening.getHost().port}"


class DynamoDbAppSourceTests(TestCase):
    """
    L{DynamoDbAppSource} against moto.
    """

    def setUp(self) -> None:
        self.endpoint = start_moto(self)
        use_aws_test_env(self)
        self.table = f"sockudo-apps-test-{uuid.uuid4().hex[:12]}"
        self.admin = build_client(
            DynamoDbConfig(region=MOTO_REGION, table_name=self.table, endpoint_url=self.endpoint),
            FAST,
            connections=2,
        )
        self.addCleanup(self.admin.close)
        self.addCleanup(self._drop_table)
        self.reactor_thread = threading.get_ident()
        self.call_threads: list[tuple[str, int]] = []
        self.events: list[LogEvent] = []
        self.patch(DynamoDbAppSource, "_log", Logger(observer=self.events.append))
        self.addCleanup(self._check_threads)

    def _drop_table(self) -> None:
        try:
            self.admin.delete_table(TableName=self.table)
        except self.admin.exceptions.ResourceNotFoundException:
            pass

    def _check_threads(self) -> None:
        on_reactor = [name for name, ident in self.call_threads if ident == self.reactor_thread]
        self.assertEqual(on_reactor, [], "boto3 calls made on the reactor thread")

    def source(self, endpoint: str | None = None) -> DynamoDbAppSource:
        """
        A source on this test's table whose client records the thread of
        every call, closed in cleanup.
        """
        config = DynamoDbConfig(
            region=MOTO_REGION, table_name=self.table, endpoint_url=endpoint or self.endpoint
        )

        def client() -> Any:
            self.call_threads.append(("build_client", threading.get_ident()))
            built = build_client(config, FAST, connections=4)

            def record(event_name: str, **kwargs: Any) -> None:
                self.call_threads.append((event_name, threading.get_ident()))

            built.meta.events.register("before-call", record)
            return built

        source = DynamoDbAppSource(config, reactor, timeouts=FAST, client_factory=client)
        self.addCleanup(source.close)
        return source

    def put(self, *items: dict[str, Any]) -> None:
        """
        Write items straight to the table (the way an operator would).
        """
        for item in items:
            self.admin.put_item(TableName=self.table, Item=item)

    async def prepared(self, endpoint: str | None = None) -> DynamoDbAppSource:
        source = self.source(endpoint)
        await source.prepare()
        return source

    def logged(self, fragment: str) -> list[str]:
        """
        The texts of the log events that mention C{fragment}.
        """
        from twisted.logger import formatEvent

        texts = [formatEvent(e) for e in self.events]
        return [t for t in texts if fragment in t]

    # prepare

    async def test_provides_interface(self) -> None:
        """
        The source provides L{IAppSource} and names its table and endpoint,
        not its keys.
        """
        source = self.source()
        verifyObject(IAppSource, source)
        self.assertIn(self.table, source.description)
        self.assertIn(self.endpoint, source.description)

    async def test_prepare_creates_table_and_index(self) -> None:
        """
        C{prepare} creates Sockudo's table: hash key C{id} (S), the
        C{KeyIndex} GSI on C{key} (S) with projection ALL, 5/5 provisioned.
        """
        await self.prepared()
        table = self.admin.describe_table(TableName=self.table)["Table"]
        self.assertEqual(table["TableStatus"], "ACTIVE")
        self.assertEqual(table["KeySchema"], [{"AttributeName": "id", "KeyType": "HASH"}])
        types = {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]}
        self.assertEqual(types, {"id": "S", "key": "S"})
        throughput = table["ProvisionedThroughput"]
        self.assertEqual(
            (throughput["ReadCapacityUnits"], throughput["WriteCapacityUnits"]), (5, 5)
        )
        [index] = table["GlobalSecondaryIndexes"]
        self.assertEqual(index["IndexName"], KEY_INDEX)
        self.assertEqual(index["KeySchema"], [{"AttributeName": "key", "KeyType": "HASH"}])
        self.assertEqual(index["Projection"], {"ProjectionType": "ALL"})
        index_throughput = index["ProvisionedThroughput"]
        self.assertEqual(
            (index_throughput["ReadCapacityUnits"], index_throughput["WriteCapacityUnits"]),
            (5, 5),
        )
        self.assertTrue(self.logged("Created"))

    async def test_prepare_existing_table(self) -> None:
        """
        C{prepare} on a table that exists (made by Sockudo or by another
        node) changes nothing and loses nothing.
        """
        await self.prepared()
        self.put(FULL_ITEM)
        before = self.admin.describe_table(TableName=self.table)["Table"]
        again = await self.prepared()
        after = self.admin.describe_table(TableName=self.table)["Table"]
        self.assertEqual(after["GlobalSecondaryIndexes"], before["GlobalSecondaryIndexes"])
        self.assertEqual(after["KeySchema"], before["KeySchema"])
        self.assertEqual(await again.fetch_by_id("app-full"), FULL_APP)
        self.assertEqual(len(self.logged("Created")), 1)

    async def test_prepare_adds_missing_key_index(self) -> None:
        """
        A table with the right hash key but no C{KeyIndex} gets the index
        (with a warning), and lookups by key work.
        """
        self.admin.create_table(
            TableName=self.table,
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        self.put(minimal_item("app-1", "key-1"))
        source = await self.prepared()
        table = self.admin.describe_table(TableName=self.table)["Table"]
        self.assertEqual([i["IndexName"] for i in table["GlobalSecondaryIndexes"]], [KEY_INDEX])
        self.assertTrue(self.logged("has no index KeyIndex"))
        app = await source.fetch_by_key("key-1")
        self.assertEqual(app, App(id="app-1", key="key-1", secret="s-app-1"))

    async def test_prepare_refuses_other_hash_key(self) -> None:
        """
        A table keyed on something other than C{id} cannot hold Sockudo's
        apps: C{prepare} fails with a L{ConfigError} naming the key schema.
        """
        self.admin.create_table(
            TableName=self.table,
            AttributeDefinitions=[{"AttributeName": "app_id", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "app_id", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        source = self.source()
        with self.assertRaises(ConfigError) as caught:
            await source.prepare()
        self.assertIn("app_id", str(caught.exception))

    # Lookups

    async def test_fetch_by_id_full_item(self) -> None:
        """
        Every attribute type of Sockudo's items becomes the app: numbers (N,
        as Decimal), booleans, C{webhooks} as a JSON string, and
        C{allowed_origins} as a list; bookkeeping attributes are ignored.
        """
        source = await self.prepared()
        self.put(FULL_ITEM)
        self.assertEqual(await source.fetch_by_id("app-full"), FULL_APP)

    async def test_fetch_by_id_minimal_item(self) -> None:
        """
        Missing optional attributes take the app defaults.
        """
        source = await self.prepared()
        self.put(minimal_item("app-min", "key-min"))
        self.assertEqual(
            await source.fetch_by_id("app-min"),
            App(id="app-min", key="key-min", secret="s-app-min"),
        )

    async def test_fetch_by_id_native_json_attributes(self) -> None:
        """
        C{webhooks} written as a native list of maps and C{allowed_origins}
        as a JSON string (as other tools may) mean the same app; a NULL
        attribute is "not set".
        """
        source = await self.prepared()
        item = minimal_item("app-native", "key-native")
        item["webhooks"] = {
            "L": [
                {
                    "M": {
                        "url": {"S": "https://hooks.example/x"},
                        "event_types": {"L": [{"S": "member_added"}]},
                    }
                }
            ]
        }
        item["allowed_origins"] = {"S": '["https://c.example"]'}
        item["max_connections"] = {"NULL": True}
        self.put(item)
        app = await source.fetch_by_id("app-native")
        assert app is not None
        self.assertEqual(
            app.webhooks,
            (WebhookTarget(url="https://hooks.example/x", event_types=("member_added",)),),
        )
        self.assertEqual(app.allowed_origins, ("https://c.example",))
        self.assertEqual(app.max_connections, attrs.fields(App).max_connections.default)

    async def test_fetch_by_id_absent(self) -> None:
        """
        An id with no item is L{None}.
        """
        source = await self.prepared()
        self.assertIsNone(await source.fetch_by_id("nope"))

    async def test_fetch_by_key(self) -> None:
        """
        A key is looked up through C{KeyIndex}; an unknown key is L{None}.
        """
        source = await self.prepared()
        self.put(FULL_ITEM, minimal_item("app-2", "key-2"))
        self.assertEqual(await source.fetch_by_key("key-full"), FULL_APP)
        self.assertEqual(
            await source.fetch_by_key("key-2"), App(id="app-2", key="key-2", secret="s-app-2")
        )
        self.assertIsNone(await source.fetch_by_key("unknown"))
        queries = [name for name, _ in self.call_threads if name.endswith(".Query")]
        self.assertEqual(len(queries), 3)

    async def test_fetch_by_key_shared_by_two_apps(self) -> None:
        """
        Two apps with one key (a GSI does not prevent it) make the key
        unusable, with an error naming both, rather than a guess.
        """
        source = await self.prepared()
        self.put(minimal_item("app-a", "shared"), minimal_item("app-b", "shared"))
        self.assertIsNone(await source.fetch_by_key("shared"))
        [message] = self.logged("apps have the key")
        self.assertIn("app-a", message)
        self.assertIn("app-b", message)

    async def test_fetch_all(self) -> None:
        """
        C{fetch_all} scans every item into apps.
        """
        source = await self.prepared()
        self.put(FULL_ITEM, *(minimal_item(f"app-{i}", f"key-{i}") for i in range(5)))
        apps = await source.fetch_all()
        self.assertEqual(
            sorted(a.id for a in apps), ["app-0", "app-1", "app-2", "app-3", "app-4", "app-full"]
        )
        self.assertIn(FULL_APP, apps)

    async def test_fetch_all_pages(self) -> None:
        """
        A table larger than one Scan page (1 MB) is read to the end.
        """
        source = await self.prepared()
        padding = "x" * 300_000
        for i in range(5):
            item = minimal_item(f"big-{i}", f"big-key-{i}")
            item["notes"] = {"S": padding}
            self.put(item)
        apps = await source.fetch_all()
        self.assertEqual(sorted(a.id for a in apps), [f"big-{i}" for i in range(5)])
        scans = [name for name, _ in self.call_threads if name.endswith(".Scan")]
        self.assertGreater(len(scans), 1)

    async def test_invalid_item_absent_and_logged(self) -> None:
        """
        An item that is not a valid app (a limit that is not a number,
        C{webhooks} that is not JSON, no secret) is absent from every lookup
        and logged with its id; valid items around it still come back.
        """
        source = await self.prepared()
        bad_limit = minimal_item("bad-limit", "bad-limit-key")
        bad_limit["max_connections"] = {"S": "lots"}
        bad_json = minimal_item("bad-json", "bad-json-key")
        bad_json["webhooks"] = {"S": "[{not json"}
        no_secret = {"id": {"S": "no-secret"}, "key": {"S": "no-secret-key"}}
        self.put(bad_limit, bad_json, no_secret, minimal_item("good", "good-key"))
        self.assertIsNone(await source.fetch_by_id("bad-limit"))
        self.assertIsNone(await source.fetch_by_key("bad-json-key"))
        self.assertIsNone(await source.fetch_by_id("no-secret"))
        apps = await source.fetch_all()
        self.assertEqual([a.id for a in apps], ["good"])
        for app_id in ("bad-limit", "bad-json", "no-secret"):
            self.assertTrue(self.logged(f"id={app_id!r}"), app_id)

    async def test_unknown_attribute_warned_once(self) -> None:
        """
        An attribute that is not part of an app is reported, once however
        often the item is read.
        """
        source = await self.prepared()
        item = minimal_item("app-extra", "key-extra")
        item["colour"] = {"S": "blue"}
        self.put(item)
        for _ in range(3):
            self.assertIsNotNone(await source.fetch_by_id("app-extra"))
        self.assertEqual(len(self.logged("colour")), 1)

    # Outages

    async def test_outage_fails_in_bounded_time_then_recovers(self) -> None:
        """
        While DynamoDB resets connections or does not answer, every lookup
        fails within a bound (the client's timeouts and retries); once it is
        back, the same source answers again.
        """
        relay, endpoint = start_relay(self, self.endpoint)
        source = await self.prepared(endpoint)
        self.put(FULL_ITEM)
        self.assertEqual(await source.fetch_by_id("app-full"), FULL_APP)
        lookups: list[tuple[str, Callable[[], Deferred[Any]]]] = [
            ("reset", lambda: source.fetch_by_id("app-full")),
            ("reset", lambda: source.fetch_by_key("key-full")),
            ("reset", source.fetch_all),
            # Each read waits for the read timeout: one lookup is enough.
            ("swallow", lambda: source.fetch_by_id("app-full")),
        ]
        for mode, lookup in lookups:
            relay.mode = mode
            started = time.monotonic()
            with self.assertRaises(BotoCoreError):
                await lookup()
            self.assertLess(time.monotonic() - started, OUTAGE_BOUND, mode)
        relay.mode = "forward"
        self.assertEqual(await source.fetch_by_key("key-full"), FULL_APP)

    async def test_prepare_during_outage_then_lookups(self) -> None:
        """
        C{prepare} fails in bounded time when DynamoDB is down; lookups work
        once it is back, without another C{prepare}.
        """
        relay, endpoint = start_relay(self, self.endpoint)
        relay.mode = "reset"
        source = self.source(endpoint)
        started = time.monotonic()
        with self.assertRaises(BotoCoreError):
            await source.prepare()
        self.assertLess(time.monotonic() - started, OUTAGE_BOUND)
        relay.mode = "forward"
        self.admin.create_table(
            TableName=self.table,
            AttributeDefinitions=[
                {"AttributeName": "id", "AttributeType": "S"},
                {"AttributeName": "key", "AttributeType": "S"},
            ],
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": KEY_INDEX,
                    "KeySchema": [{"AttributeName": "key", "KeyType": "HASH"}],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        self.put(FULL_ITEM)
        self.assertEqual(await source.fetch_by_id("app-full"), FULL_APP)

    # Life cycle

    async def test_close(self) -> None:
        """
        After C{close}, lookups fail at once and the pool's threads are
        gone; closing twice is harmless.
        """
        source = await self.prepared()
        await source.fetch_all()
        await source.close()
        await source.close()
        alive = [t.name for t in threading.enumerate() if "dynamodb-app-source" in t.name]
        alive = [name for name in alive if name.startswith("PoolThread")]
        self.assertEqual(alive, [])
        with self.assertRaises(RuntimeError):
            await source.fetch_by_id("x")
        with self.assertRaises(RuntimeError):
            await source.prepare()

    def test_lookup_before_prepare(self) -> None:
        """
        A lookup before C{prepare} fails with a L{RuntimeError} saying so.
        """
        source = self.source()
        failure = self.failureResultOf(source.fetch_by_id("x"), RuntimeError)
        self.assertIn("prepare", str(failure.value))


class SourceFromConfigTests(TestCase):
    """
    L{source_from_config}.
    """

    def test_builds_source(self) -> None:
        """
        The source is built from C{database.dynamodb}; its description has no
        keys and no user part of the endpoint URL.
        """
        config = ServerConfig(
            database_dynamodb=DynamoDbConfig(
                region="eu-west-1",
                table_name="apps",
                endpoint_url="http://user:pw@127.0.0.1:4566",
                aws_access_key_id="AKIDEXAMPLE",
                aws_secret_access_key="very-secret",
            )
        )
        source = source_from_config(config, reactor)
        self.assertIsInstance(source, DynamoDbAppSource)
        self.assertEqual(
            source.description, "DynamoDB table 'apps' in eu-west-1 at http://127.0.0.1:4566"
        )
        for secret in ("AKIDEXAMPLE", "very-secret", "pw", "user"):
            self.assertNotIn(secret, source.description)

    def test_partial_credentials(self) -> None:
        """
        An access key id without its secret (or the other way round) is
        refused at once, naming both keys.
        """
        for keys in ({"aws_access_key_id": "AKID"}, {"aws_secret_access_key": "s"}):
            config = ServerConfig(database_dynamodb=DynamoDbConfig(**keys))
            with self.assertRaises(ConfigError) as caught:
                source_from_config(config, reactor)
            self.assertIn("aws_secret_access_key", str(caught.exception))

    def test_session_token_from_environment(self) -> None:
        """
        Keys that came from C{AWS_ACCESS_KEY_ID}/C{AWS_SECRET_ACCESS_KEY}
        keep C{AWS_SESSION_TOKEN} (temporary credentials); keys written in
        the config file do not borrow it.
        """
        endpoint = start_moto(self)
        use_aws_test_env(self)
        os.environ["AWS_SESSION_TOKEN"] = "token-from-env"
        self.addCleanup(os.environ.pop, "AWS_SESSION_TOKEN", None)

        def token_sent(config: DynamoDbConfig) -> str | None:
            client = build_client(config, ClientTimeouts(), connections=1)
            self.addCleanup(client.close)
            sent: list[Any] = []
            client.meta.events.register(
                "before-send", lambda request, **_: sent.append(request.headers)
            )
            client.list_tables()
            token = sent[0].get("X-Amz-Security-Token")
            return None if token is None else token.decode()

        from_env = DynamoDbConfig(
            aws_access_key_id="testing", aws_secret_access_key="testing", endpoint_url=endpoint
        )
        self.assertEqual(token_sent(from_env), "token-from-env")
        from_file = DynamoDbConfig(
            aws_access_key_id="AKIDFILE", aws_secret_access_key="x", endpoint_url=endpoint
        )
        self.assertIsNone(token_sent(from_file))

    def test_missing_boto3(self) -> None:
        """
        Without boto3 the error names the pip extra to install.
        """
        saved = sys.modules.get("boto3")

        def restore() -> None:
            if saved is None:
                sys.modules.pop("boto3", None)
            else:
                sys.modules["boto3"] = saved

        self.addCleanup(restore)
        sys.modules["boto3"] = None  # type: ignore[assignment]
        with self.assertRaises(ConfigError) as caught:
            source_from_config(ServerConfig(), reactor)
        self.assertIn("pip install 'sockudo-tw[aws]'", str(caught.exception))


class MotoHarnessTests(TestCase):
    """
    L{tests.moto_harness}: what a test gets and what it leaves behind.
    """

    def test_start_and_cleanup(self) -> None:
        """
        L{start_moto} returns a loopback endpoint that answers; after the
        test's cleanup its port is closed and its threads are gone, and
        L{use_aws_test_env} has restored the environment.
        """
        seen: dict[str, Any] = {}

        class Probe(SynchronousTestCase):
            def test_probe(self) -> None:
                seen["endpoint"] = start_moto(self)
                use_aws_test_env(self)
                seen["env"] = {name: os.environ.get(name) for name in AWS_TEST_ENV}
                with urllib.request.urlopen(seen["endpoint"] + "/moto-api/", timeout=5) as r:
                    seen["status"] = r.status

        threads_before = set(threading.enumerate())
        env_before = {name: os.environ.get(name) for name in AWS_TEST_ENV}
        result = TestResult()
        Probe("test_probe").run(result)
        self.assertTrue(result.wasSuccessful(), result.errors + result.failures)
        self.assertEqual(seen["status"], 200)
        self.assertEqual(seen["env"], dict(AWS_TEST_ENV))
        self.assertEqual({name: os.environ.get(name) for name in AWS_TEST_ENV}, env_before)
        host, port = seen["endpoint"].removeprefix("http://").split(":")
        self.assertEqual(host, "127.0.0.1")
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection((host, int(port)), timeout=5).close()
        # A request thread may still be finishing its closed connection.
        deadline = time.monotonic() + 5
        while set(threading.enumerate()) - threads_before and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual(set(threading.enumerate()) - threads_before, set())
