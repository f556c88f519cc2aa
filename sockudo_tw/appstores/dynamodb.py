# -*- test-case-name: tests.test_appstore_dynamodb -*-
"""
The DynamoDB app source (C{app_manager.driver: dynamodb}), on Sockudo's
table layout so that a table Sockudo made works unchanged and the other way
round:

  - table C{sockudo-applications} (C{database.dynamodb.table_name}), hash
    key C{id} (S), global secondary index C{KeyIndex} on C{key} (S) with
    projection ALL, 5/5 provisioned read/write capacity when we create it;
  - one item per app, attributes in native types (S, N, BOOL), C{webhooks}
    as a JSON string and C{allowed_origins} as a list of strings.

Every boto3 call (building and closing the client included: they read
files and close sockets) runs in a thread pool the source owns
(L{sockudo_tw.awscalls.BlockingCalls}), started by
L{DynamoDbAppSource.prepare} and stopped by L{DynamoDbAppSource.close};
nothing blocks the reactor thread.
The client has short timeouts and few retries so that an outage fails a
lookup in bounded time. Caching is the job of
L{sockudo_tw.appstores.caching.CachedAppStore}, not of this module.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.logger import Logger, LogLevel
from zope.interface import implementer

from sockudo_tw.appstores import IAppSource
from sockudo_tw.appstores.records import InvalidRecord, app_from_record
from sockudo_tw.awscalls import AwsLibraries, BlockingCalls, load_aws_libraries
from sockudo_tw.config.schema import ConfigError, DynamoDbConfig
from sockudo_tw.pusher.app import App

if TYPE_CHECKING:
    from sockudo_tw.config import ServerConfig

__all__ = [
    "KEY_INDEX",
    "ClientTimeouts",
    "DynamoDbAppSource",
    "build_client",
    "source_from_config",
]

KEY_INDEX = "KeyIndex"
"""
The global secondary index on C{key} that lookups by key query.
"""

_PROVISIONED = {"ReadCapacityUnits": 5, "WriteCapacityUnits": 5}
_FEATURE = "app_manager.driver: dynamodb"
_T = TypeVar("_T")

_Notes = list[tuple[LogLevel, str, dict[str, Any]]]
"""
Log events a pool thread collects for the reactor thread to emit.
"""

#: Distinct warnings about unknown attributes remembered (each is logged once).
_WARNINGS_REMEMBERED = 1000


@attrs.frozen
class ClientTimeouts:
    """
    How long one DynamoDB request may take, so that an outage fails a lookup
    in bounded time (about C{attempts * (connect + read)} plus back-off).

    @ivar connect: seconds to open a connection.
    @ivar read: seconds to wait for a response.
    @ivar attempts: tries of one request in all (the first included).
    @ivar table_wait: seconds L{DynamoDbAppSource.prepare} waits for a new
        table or index to become ACTIVE.
    """

    connect: float = 2.0
    read: float = 5.0
    attempts: int = 3
    table_wait: float = 300.0


def build_client(
    config: DynamoDbConfig,
    timeouts: ClientTimeouts,
    connections: int,
    aws: AwsLibraries | None = None,
) -> Any:
    """
    A boto3 DynamoDB client for C{config}: its region and endpoint, explicit
    keys or profile when set (else the standard AWS credential chain), with
    C{timeouts} and a connection pool of C{connections}. Blocking (it reads
    configuration files): call it in a thread pool.

    @param aws: boto3, loaded here when not given.
    @raise sockudo_tw.awscalls.MissingAwsLibraryError: without boto3.
    """
    if aws is None:
        aws = load_aws_libraries(_FEATURE)
    session_token = None
    if config.aws_access_key_id and config.aws_access_key_id == os.environ.get("AWS_ACCESS_KEY_ID"):
        # The keys came from the environment (the config maps
        # AWS_ACCESS_KEY_ID into database.dynamodb): temporary credentials
        # there need their session token too.
        session_token = os.environ.get("AWS_SESSION_TOKEN") or None
    session = aws.boto3.session.Session(
        aws_access_key_id=config.aws_access_key_id,
        aws_secret_access_key=config.aws_secret_access_key,
        aws_session_token=session_token,
        profile_name=config.aws_profile_name,
        region_name=config.region,
    )
    return session.client(
        "dynamodb",
        endpoint_url=config.endpoint_url,
        config=aws.config(
            connect_timeout=timeouts.connect,
            read_timeout=timeouts.read,
            retries={"max_attempts": timeouts.attempts, "mode": "standard"},
            max_pool_connections=connections,
        ),
    )


def _describe(config: DynamoDbConfig) -> str:
    """
    How logs name the table: region and endpoint, never keys or the user
    part of an endpoint URL.
    """
    where = f"DynamoDB table {config.table_name!r} in {config.region}"
    if config.endpoint_url:
        parts = urlsplit(config.endpoint_url)
        host = parts.hostname or ""
        if parts.port is not None:
            host += f":{parts.port}"
        where += f" at {parts.scheme}://{host}{parts.path}" if parts.scheme else " at " + host
    return where


@implementer(IAppSource)
class DynamoDbAppSource:
    """
    L{IAppSource} over one DynamoDB table (module docstring).

    @ivar description: the table, region and endpoint, for logs.
    """

    _log = Logger()

    def __init__(
        self,
        config: DynamoDbConfig,
        reactor: IReactorTime,
        *,
        timeouts: ClientTimeouts = ClientTimeouts(),
        threads: int = 4,
        client_factory: Callable[[], Any] | None = None,
        stop_timeout: float = 10.0,
    ) -> None:
        """
        @param config: C{database.dynamodb}.
        @param reactor: where results are delivered (from the pool threads);
            it must also provide L{IReactorFromThreads}.
        @param timeouts: the client's timeouts and retries.
        @param threads: the most boto3 calls in flight at once.
        @param client_factory: builds the boto3 client (in a pool thread);
            L{build_client} from C{config} by default. Tests pass one that
            hooks the client's events.
        @param stop_timeout: seconds L{close} waits for calls in flight
            (which the timeouts bound) before leaving them to end on their
            own.
        @raise ConfigError: only one of the access key id and the secret
            is set.
        @raise sockudo_tw.awscalls.MissingAwsLibraryError: without boto3.
        """
        if bool(config.aws_access_key_id) != bool(config.aws_secret_access_key):
            raise ConfigError(
                "database.dynamodb: aws_access_key_id and aws_secret_access_key "
                "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) go together: set both or neither"
            )
        self._aws = aws = load_aws_libraries(_FEATURE)
        self._deserializer = importlib.import_module("boto3.dynamodb.types").TypeDeserializer()
        self._config = config
        self._timeouts = timeouts
        self._client_factory = client_factory or (
            lambda: build_client(config, timeouts, connections=threads, aws=aws)
        )
        self._calls = BlockingCalls(reactor, "dynamodb-app-source", threads)
        self._stop_timeout = stop_timeout
        self._client: Any = None
        self._client_closed = False
        self._client_lock = threading.Lock()
        self._warned: set[str] = set()
        self._closed = False
        self._closing: Deferred[None] | None = None
        self.description = _describe(config)

    # IAppSource

    def prepare(self) -> Deferred[None]:
        """
        Start the thread pool, build the client and create the table (with
        its index) if it is missing, waiting until it is ACTIVE; on a table
        that lacks C{KeyIndex} the index is added.
        """
        if self._closed:
            return fail(RuntimeError(f"{self.description}: prepare() after close()"))
        try:
            self._calls.start()
        except TypeError as e:  # a reactor that cannot take calls from threads
            return fail(e)
        return self._run(self._prepare_in_thread)

    def fetch_by_id(self, app_id: str) -> Deferred[App | None]:
        """
        GetItem by the hash key, strongly consistent.
        """
        return self._run(self._fetch_by_id_in_thread, app_id)

    def fetch_by_key(self, key: str) -> Deferred[App | None]:
        """
        Query C{KeyIndex} for the key (eventually consistent, as every GSI).
        """
        return self._run(self._fetch_by_key_in_thread, key)

    def fetch_all(self) -> Deferred[list[App]]:
        """
        Scan the whole table, page by page; invalid items are left out.
        """
        return self._run(self._fetch_all_in_thread)

    def close(self) -> Deferred[None]:
        """
        Refuse new calls, close the client's connections (the pool's last
        call) and stop the thread pool, waiting at most C{stop_timeout}
        seconds for calls in flight; the reactor thread never waits. Every
        call returns its own Deferred, fired once the pool has stopped.
        """
        if self._closing is None:
            self._closed = True
            self._closing = Deferred.fromCoroutine(self._stop())
        waiter: Deferred[None] = Deferred()

        def fire(result: object) -> object:
            waiter.callback(None)
            return result

        self._closing.addBoth(fire)
        return waiter

    async def _stop(self) -> None:
        if self._calls.running:
            closed = self._calls.run(self._close_client_in_thread)
            closed.addErrback(
                lambda f: self._log.warn(
                    "{source}: closing the client failed: {error}",
                    source=self.description,
                    error=f.getErrorMessage(),
                )
            )
        await self._calls.stop(self._stop_timeout)

    # In the pool

    def _run(self, f: Callable[..., _T], *args: Any) -> Deferred[_T]:
        """
        C{f(notes, *args)} in the pool, its result or exception in a
        Deferred; what it noted in C{notes} is logged on the reactor thread.
        """
        if self._closed:
            return fail(RuntimeError(f"{self.description} is closed"))
        if not self._calls.running:
            return fail(RuntimeError(f"{self.description}: prepare() was not called"))
        notes: _Notes = []

        def emit(result: _T) -> _T:
            for level, text, fields in notes:
                self._emit(level, text, fields)
            return result

        return self._calls.run(f, notes, *args).addBoth(emit)

    def _emit(self, level: LogLevel, text: str, fields: Mapping[str, Any]) -> None:
        """
        Log one noted event; a warning about unknown attributes only the
        first time it is seen.
        """
        once = fields.get("once")
        if once is not None:
            if once in self._warned:
                return
            if len(self._warned) >= _WARNINGS_REMEMBERED:
                self._warned.clear()
            self._warned.add(once)
        self._log.emit(level, text, **fields)

    def _client_in_thread(self) -> Any:
        """
        The client, built on first use (so that a failed L{prepare} can be
        followed by working lookups once DynamoDB answers).

        @raise RuntimeError: the client was closed (a call queued before
            L{close} that a pool thread reached afterwards).
        """
        with self._client_lock:
            if self._client_closed:
                raise RuntimeError(f"{self.description} is closed")
            if self._client is None:
                self._client = self._client_factory()
            return self._client

    def _close_client_in_thread(self) -> None:
        """
        Close the client's connections, and refuse to build another.
        """
        with self._client_lock:
            self._client_closed = True
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _prepare_in_thread(self, notes: _Notes) -> None:
        client = self._client_in_thread()
        table = self._config.table_name
        try:
            described = client.describe_table(TableName=table)["Table"]
        except self._aws.exceptions.ClientError as e:
            if _error_code(e) != "ResourceNotFoundException":
                raise
            described = self._create_table(client, notes)
        self._check_key_schema(described)
        indexes = {i["IndexName"]: i for i in described.get("GlobalSecondaryIndexes", [])}
        if KEY_INDEX not in indexes:
            self._add_key_index(client, described, notes)
        elif indexes[KEY_INDEX].get("IndexStatus", "ACTIVE") != "ACTIVE":
            self._wait_until_active(client)
        notes.append((LogLevel.info, "App source ready: {source}", {"source": self.description}))

    def _create_table(self, client: Any, notes: _Notes) -> dict[str, Any]:
        table = self._config.table_name
        try:
            client.create_table(
                TableName=table,
                AttributeDefinitions=[
                    {"AttributeName": "id", "AttributeType": "S"},
                    {"AttributeName": "key", "AttributeType": "S"},
                ],
                KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                GlobalSecondaryIndexes=[_key_index(provisioned=True)],
                ProvisionedThroughput=_PROVISIONED,
            )
        except self._aws.exceptions.ClientError as e:
            # Another node created it at the same moment.
            if _error_code(e) != "ResourceInUseException":
                raise
        else:
            notes.append((LogLevel.info, "Created {source}", {"source": self.description}))
        return self._wait_until_active(client)

    def _add_key_index(self, client: Any, described: Mapping[str, Any], notes: _Notes) -> None:
        """
        Add C{KeyIndex} to a table that lacks it (lookups by key need it),
        with the table's billing mode, and wait until it is ACTIVE.
        """
        on_demand = described.get("BillingModeSummary", {}).get("BillingMode") == "PAY_PER_REQUEST"
        notes.append(
            (
                LogLevel.warn,
                "{source} has no index {index} on key: adding it",
                {"source": self.description, "index": KEY_INDEX},
            )
        )
        client.update_table(
            TableName=self._config.table_name,
            AttributeDefinitions=[{"AttributeName": "key", "AttributeType": "S"}],
            GlobalSecondaryIndexUpdates=[{"Create": _key_index(provisioned=not on_demand)}],
        )
        self._wait_until_active(client)

    def _wait_until_active(self, client: Any) -> dict[str, Any]:
        """
        Poll DescribeTable until the table and all its indexes are ACTIVE,
        for at most C{timeouts.table_wait} seconds (this is in a pool thread).
        """
        deadline = time.monotonic() + self._timeouts.table_wait
        delay = 0.1
        while True:
            described: dict[str, Any] = client.describe_table(TableName=self._config.table_name)[
                "Table"
            ]
            statuses = [described.get("TableStatus")] + [
                i.get("IndexStatus") for i in described.get("GlobalSecondaryIndexes", [])
            ]
            if all(s == "ACTIVE" for s in statuses):
                return described
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.description} is not ACTIVE after "
                    f"{self._timeouts.table_wait} s (statuses: {statuses})"
                )
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _check_key_schema(self, described: Mapping[str, Any]) -> None:
        """
        Refuse a table whose hash key is not C{id} of type S: no app could be
        found in it.
        """
        keys = [(k["AttributeName"], k["KeyType"]) for k in described.get("KeySchema", [])]
        types = {
            a["AttributeName"]: a["AttributeType"]
            for a in described.get("AttributeDefinitions", [])
        }
        if keys != [("id", "HASH")] or types.get("id") != "S":
            raise ConfigError(
                f"{self.description}: expected the hash key 'id' (S) alone, "
                f"found key schema {keys} with types {types}"
            )

    def _fetch_by_id_in_thread(self, notes: _Notes, app_id: str) -> App | None:
        response = self._client_in_thread().get_item(
            TableName=self._config.table_name,
            Key={"id": {"S": app_id}},
            ConsistentRead=True,
        )
        item = response.get("Item")
        return None if item is None else self._app(item, notes)

    def _fetch_by_key_in_thread(self, notes: _Notes, key: str) -> App | None:
        pages = (
            self._client_in_thread()
            .get_paginator("query")
            .paginate(
                TableName=self._config.table_name,
                IndexName=KEY_INDEX,
                KeyConditionExpression="#key = :key",
                ExpressionAttributeNames={"#key": "key"},
                ExpressionAttributeValues={":key": {"S": key}},
            )
        )
        apps = [app for app in self._apps(pages, notes) if app.key == key]
        if len(apps) > 1:
            # A GSI does not enforce uniqueness; picking one of several
            # apps (and secrets) for a key would be a guess.
            notes.append(
                (
                    LogLevel.error,
                    "{source}: {count} apps have the key {key!r} (ids {ids}): refusing it",
                    {
                        "source": self.description,
                        "count": len(apps),
                        "key": key,
                        "ids": sorted(a.id for a in apps),
                    },
                )
            )
            return None
        return apps[0] if apps else None

    def _fetch_all_in_thread(self, notes: _Notes) -> list[App]:
        pages = (
            self._client_in_thread()
            .get_paginator("scan")
            .paginate(TableName=self._config.table_name)
        )
        return list(self._apps(pages, notes))

    # Items to apps

    def _apps(self, pages: Iterable[Mapping[str, Any]], notes: _Notes) -> Iterable[App]:
        for page in pages:
            for item in page.get("Items", []):
                app = self._app(item, notes)
                if app is not None:
                    yield app

    def _app(self, item: Mapping[str, Any], notes: _Notes) -> App | None:
        """
        The app in a raw item (attribute values in DynamoDB's typed JSON), or
        L{None}, logged, when it is not a valid app.
        """
        record = {name: self._deserializer.deserialize(value) for name, value in item.items()}
        where = f"{self.description} item id={record.get('id')!r}"
        warnings: list[str] = []
        try:
            app = app_from_record(record, where, warnings)
        except InvalidRecord as e:
            notes.append(
                (
                    LogLevel.warn,
                    "Ignoring an invalid app: {error}",
                    {"source": self.description, "error": str(e)},
                )
            )
            return None
        for warning in warnings:
            notes.append(
                (
                    LogLevel.warn,
                    "{warning}",
                    {"source": self.description, "warning": warning, "once": warning},
                )
            )
        return app


def _key_index(provisioned: bool) -> dict[str, Any]:
    index: dict[str, Any] = {
        "IndexName": KEY_INDEX,
        "KeySchema": [{"AttributeName": "key", "KeyType": "HASH"}],
        "Projection": {"ProjectionType": "ALL"},
    }
    if provisioned:
        index["ProvisionedThroughput"] = _PROVISIONED
    return index


def _error_code(error: Exception) -> str:
    response: Any = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def source_from_config(config: ServerConfig, reactor: object) -> IAppSource:
    """
    The DynamoDB source C{database.dynamodb} describes.

    @param reactor: the reactor; it must provide L{IReactorTime} and
        L{IReactorFromThreads}.
    @raise ConfigError: boto3 is not installed
        (L{sockudo_tw.awscalls.MissingAwsLibraryError}, naming the pip
        extra), or the keys are incomplete.
    """
    IReactorFromThreads(reactor)  # refused now rather than at prepare()
    return DynamoDbAppSource(config.database_dynamodb, IReactorTime(reactor))
