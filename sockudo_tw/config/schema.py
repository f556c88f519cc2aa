# -*- test-case-name: tests.test_config -*-
"""
The configuration's shape: the frozen typed objects L{parse_config} builds,
the driver names each key accepts, and L{ConfigError}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import attrs

from sockudo_tw.pusher.app import App


class ConfigError(Exception):
    """
    The configuration is invalid; the message names the key path (or the
    environment variable) and what was expected.
    """


ADAPTER_DRIVERS = ("local", "redis", "redis-cluster", "nats")
APP_MANAGER_DRIVERS = {
    "memory": "memory",
    "mysql": "mysql",
    "pgsql": "pgsql",
    "postgres": "pgsql",
    "postgresql": "pgsql",
    "dynamodb": "dynamodb",
    "scylladb": "scylladb",
    "scylla": "scylladb",
}
CACHE_DRIVERS = ("memory", "redis", "redis-cluster", "none")
QUEUE_DRIVERS = ("memory", "redis", "redis-cluster", "sqs", "none")
METRICS_DRIVERS = ("prometheus",)
LOG_FORMATS = ("human", "json")

# Sockudo's default app limits when it is built from SOCKUDO_DEFAULT_APP_*
# (section 4.3). We keep App's own defaults (Pusher's limits) instead, and
# only read the variables that are set.
DEFAULT_APP_NUMBERS = (
    "max_connections",
    "max_client_events_per_second",
    "max_read_requests_per_second",
    "max_backend_events_per_second",
    "max_presence_members_per_channel",
    "max_presence_member_size_in_kb",
    "max_channel_name_length",
    "max_event_channels_at_once",
    "max_event_name_length",
    "max_event_payload_in_kb",
    "max_event_batch_size",
)
DEFAULT_APP_FLAGS = ("enable_user_authentication", "enable_watchlist_events")

# The global limit sections: (section, key, the App field they default).
GLOBAL_APP_LIMITS = (
    ("channel_limits", "max_name_length", "max_channel_name_length"),
    ("event_limits", "max_channels_at_once", "max_event_channels_at_once"),
    ("event_limits", "max_name_length", "max_event_name_length"),
    ("event_limits", "max_payload_in_kb", "max_event_payload_in_kb"),
    ("event_limits", "max_batch_size", "max_event_batch_size"),
    ("presence", "max_members_per_channel", "max_presence_members_per_channel"),
    ("presence", "max_member_size_in_kb", "max_presence_member_size_in_kb"),
)


# What sockudo-tw does with a key (the "treatment" of L{Key}).
HONOURED = "honoured"
"""Read and acted on (some values may still be refused; the note says which)."""
WARNED = "warned"
"""Read and ignored; setting it (or the value in the note) logs a warning at start."""
REFUSED = "refused"
"""Any value but the default stops the start with a L{ConfigError}."""
ACCEPTED = "accepted"
"""The settings of a driver that is not selected (or not implemented, and
refused when selected): read only by that driver, so accepted silently."""


@attrs.frozen
class Key:
    """
    One config key: its dotted path, the default the parser uses when the
    file and the environment leave it unset, what sockudo-tw does with it,
    and a note (the text of its warning for L{WARNED} keys).

    A path may name a whole section (C{database.mysql}) accepted as a block.
    """

    path: str
    default: Any
    treatment: str
    note: str = ""


#: Every key the parser reads, warns about or refuses, in parsing order: the
#: one place for defaults and treatments. L{known_keys} and README's "Main
#: keys" table check derive from it, the parser takes its defaults and
#: warning texts from it, and a test checks that the parser reads exactly
#: these keys and that L{ServerConfig}'s defaults agree with them.
KEYS: tuple[Key, ...] = (
    Key("adapter.redis.redis_pub_options.url", None, HONOURED),
    Key(
        "adapter.redis.redis_sub_options",
        None,
        WARNED,
        "ignored (as in Sockudo); the adapter uses redis_pub_options.url for both",
    ),
    Key(
        "adapter.redis.cluster_mode",
        False,
        REFUSED,
        'true is refused: for Redis Cluster use adapter.driver "redis-cluster"',
    ),
    Key(
        "adapter.driver",
        "local",
        HONOURED,
        "a driver the adapter registry does not have is refused",
    ),
    Key(
        "adapter.buffer_multiplier_per_cpu",
        64,
        WARNED,
        "ignored; fan-out runs in the reactor thread",
    ),
    Key("adapter.redis.prefix", "sockudo_adapter:", HONOURED),
    Key("adapter.redis.requests_timeout", 5000, HONOURED),
    Key("adapter.cluster.nodes", (), HONOURED),
    Key("adapter.cluster.prefix", "sockudo", HONOURED),
    Key("adapter.cluster.request_timeout_ms", 5000, HONOURED),
    Key("adapter.nats.servers", ("nats://localhost:4222",), HONOURED),
    Key("adapter.nats.prefix", "sockudo", HONOURED),
    Key("adapter.nats.request_timeout_ms", 5000, HONOURED),
    Key("adapter.nats.connection_timeout_ms", 5000, HONOURED),
    Key("adapter.nats.username", None, HONOURED),
    Key("adapter.nats.password", None, HONOURED),
    Key("adapter.nats.token", None, HONOURED),
    Key(
        "adapter.nats.nodes_number",
        None,
        WARNED,
        "ignored; the nats adapter counts the nodes from their heartbeats",
    ),
    Key("adapter.cluster_health.enabled", True, HONOURED),
    Key("adapter.cluster_health.heartbeat_interval_ms", 10000, HONOURED),
    Key("adapter.cluster_health.node_timeout_ms", 30000, HONOURED),
    Key("adapter.cluster_health.cleanup_interval_ms", 10000, HONOURED),
    Key(
        "adapter.cluster.use_connection_manager",
        None,
        WARNED,
        "ignored; the redis-cluster adapter keeps one connection per master it uses",
    ),
    Key("channel_limits.max_name_length", None, HONOURED),
    Key("event_limits.max_channels_at_once", None, HONOURED),
    Key("event_limits.max_name_length", None, HONOURED),
    Key("event_limits.max_payload_in_kb", None, HONOURED),
    Key("event_limits.max_batch_size", None, HONOURED),
    Key("presence.max_members_per_channel", None, HONOURED),
    Key("presence.max_member_size_in_kb", None, HONOURED),
    Key("channel_limits.cache_ttl", 1800, HONOURED),
    Key("app_manager.array.apps", None, HONOURED),
    Key(
        "app_manager.driver",
        "memory",
        HONOURED,
        '"scylladb" is refused (not implemented)',
    ),
    Key(
        "app_manager.cache.enabled",
        True,
        HONOURED,
        "false is ignored with a warning: the database drivers always cache apps, so that"
        " connections and triggers never wait on the database for a known app; with"
        " memory, ignored with a warning",
    ),
    Key(
        "app_manager.cache.ttl",
        300,
        HONOURED,
        "seconds the database drivers use an app read from the database; with memory,"
        " ignored with a warning",
    ),
    Key(
        "cache.driver",
        "memory",
        HONOURED,
        '"redis" and "redis-cluster" are refused (not implemented); "none" is warned about',
    ),
    Key("cache.redis.prefix", "sockudo_cache:", HONOURED),
    Key("cache.redis.url_override", None, HONOURED),
    Key(
        "cache.memory.ttl",
        300,
        WARNED,
        "ignored; cache-channel entries live channel_limits.cache_ttl seconds",
    ),
    Key(
        "cache.memory.cleanup_interval",
        60,
        WARNED,
        "ignored; expired entries are dropped when read or on the next write",
    ),
    Key(
        "cache.memory.max_capacity",
        10000,
        WARNED,
        "ignored; the cache holds one entry per cache channel in use",
    ),
    Key(
        "cache.redis.cluster_mode",
        False,
        REFUSED,
        "true is refused: Redis Cluster is not supported",
    ),
    Key("queue.driver", "memory", HONOURED, "a driver the queue registry does not have is refused"),
    Key("queue.redis.concurrency", 5, HONOURED),
    Key("queue.redis.prefix", "sockudo_queue:", HONOURED),
    Key("queue.redis.url_override", None, HONOURED),
    Key("queue.redis_cluster.nodes", ("redis://127.0.0.1:6379",), ACCEPTED),
    Key("queue.redis_cluster.concurrency", 5, ACCEPTED),
    Key("queue.redis_cluster.prefix", "sockudo_queue:", ACCEPTED),
    Key(
        "queue.redis.cluster_mode",
        False,
        REFUSED,
        "true is refused: Redis Cluster is not supported",
    ),
    Key("queue.redis_cluster.request_timeout_ms", None, ACCEPTED),
    Key("queue.sqs.region", "us-east-1", HONOURED),
    Key("queue.sqs.queue_url_prefix", None, HONOURED),
    Key("queue.sqs.visibility_timeout", 30, HONOURED),
    Key("queue.sqs.endpoint_url", None, HONOURED),
    Key("queue.sqs.max_messages", 10, HONOURED),
    Key("queue.sqs.wait_time_seconds", 5, HONOURED),
    Key("queue.sqs.concurrency", 5, HONOURED),
    Key("queue.sqs.fifo", False, HONOURED),
    Key("queue.sqs.message_group_id", "default", HONOURED),
    Key("rate_limiter.enabled", False, HONOURED),
    Key(
        "rate_limiter.driver",
        "memory",
        HONOURED,
        '"redis-cluster" is refused when enabled; "none" is warned about',
    ),
    Key("rate_limiter.api_rate_limit.max_requests", 100, HONOURED),
    Key("rate_limiter.api_rate_limit.window_seconds", 60, HONOURED),
    Key("rate_limiter.api_rate_limit.identifier", "api", HONOURED),
    Key("rate_limiter.api_rate_limit.trust_hops", 0, HONOURED),
    Key("rate_limiter.websocket_rate_limit.max_requests", 20, HONOURED),
    Key("rate_limiter.websocket_rate_limit.window_seconds", 60, HONOURED),
    Key("rate_limiter.websocket_rate_limit.identifier", "websocket_connect", HONOURED),
    Key("rate_limiter.websocket_rate_limit.trust_hops", 0, HONOURED),
    Key("rate_limiter.redis.prefix", "sockudo_rl:", HONOURED),
    Key("rate_limiter.redis.url_override", None, HONOURED),
    Key(
        "rate_limiter.redis.cluster_mode",
        False,
        REFUSED,
        "true is refused: Redis Cluster is not supported",
    ),
    Key("metrics.enabled", True, HONOURED),
    Key("metrics.driver", "prometheus", HONOURED),
    Key("metrics.host", "0.0.0.0", HONOURED),
    Key("metrics.port", 9601, HONOURED),
    Key("metrics.prometheus.prefix", "sockudo_", HONOURED),
    Key("ssl.enabled", False, HONOURED),
    Key("ssl.cert_path", "", HONOURED),
    Key("ssl.key_path", "", HONOURED),
    Key("ssl.redirect_http", False, HONOURED),
    Key("ssl.http_port", 80, HONOURED),
    Key(
        "ssl.passphrase", None, WARNED, "ignored (as in Sockudo); the key file must be unencrypted"
    ),
    Key(
        "ssl.ca_path",
        None,
        WARNED,
        "ignored (as in Sockudo); append the intermediate certificates to cert_path",
    ),
    Key("cors.credentials", True, HONOURED),
    Key("cors.origin", ("*",), HONOURED),
    Key("cors.methods", ("GET", "POST", "OPTIONS"), HONOURED),
    Key(
        "cors.allowed_headers",
        ("Authorization", "Content-Type", "X-Requested-With", "Accept"),
        HONOURED,
    ),
    Key("unix_socket.permission_mode", 0o660, HONOURED),
    Key("unix_socket.enabled", False, HONOURED),
    Key("unix_socket.path", "/var/run/sockudo/sockudo.sock", HONOURED),
    Key("webhooks.batching.enabled", True, HONOURED),
    Key("webhooks.batching.duration", 50, HONOURED),
    Key("database.redis.host", "127.0.0.1", HONOURED),
    Key("database.redis.port", 6379, HONOURED),
    Key("database.redis.db", 0, HONOURED),
    Key("database.redis.username", None, HONOURED),
    Key("database.redis.password", None, HONOURED),
    Key(
        "database.redis.key_prefix",
        "sockudo:",
        WARNED,
        "ignored; each Redis user has its own prefix key"
        " (adapter.redis.prefix, queue.redis.prefix)",
    ),
    Key(
        "database.redis.sentinels",
        None,
        WARNED,
        "ignored (as in Sockudo); database.redis.host is used directly",
    ),
    Key(
        "database.redis.sentinel_password",
        None,
        WARNED,
        "ignored (as in Sockudo): Sentinel is not used",
    ),
    Key("database.redis.name", None, WARNED, "ignored (as in Sockudo): Sentinel is not used"),
    Key("database.redis.cluster_nodes", None, HONOURED),
    Key("database.mysql.host", "127.0.0.1", HONOURED),
    Key("database.mysql.port", 3306, HONOURED),
    Key("database.mysql.username", "root", HONOURED),
    Key("database.mysql.password", "", HONOURED),
    Key("database.mysql.database", "sockudo", HONOURED),
    Key("database.mysql.table_name", "applications", HONOURED),
    Key("database.mysql.pool_min", None, HONOURED),
    Key("database.mysql.pool_max", None, HONOURED),
    Key("database.mysql.connection_pool_size", None, HONOURED),
    Key("database.postgres.host", "127.0.0.1", HONOURED),
    Key("database.postgres.port", 5432, HONOURED),
    Key("database.postgres.username", "postgres", HONOURED),
    Key("database.postgres.password", "", HONOURED),
    Key("database.postgres.database", "sockudo", HONOURED),
    Key("database.postgres.table_name", "applications", HONOURED),
    Key("database.postgres.pool_min", None, HONOURED),
    Key("database.postgres.pool_max", None, HONOURED),
    Key("database.postgres.connection_pool_size", None, HONOURED),
    Key(
        "database.mysql.cache_ttl",
        None,
        WARNED,
        "ignored (unless it matches what the app store does); app_manager.cache.ttl sets how"
        " long apps are cached",
    ),
    Key(
        "database.mysql.cache_cleanup_interval",
        None,
        WARNED,
        "ignored (unless it matches what the app store does); app_manager.cache.ttl sets how"
        " long apps are cached",
    ),
    Key(
        "database.mysql.cache_max_capacity",
        None,
        WARNED,
        "ignored (unless it matches what the app store does); app_manager.cache.ttl sets how"
        " long apps are cached",
    ),
    Key(
        "database.postgres.cache_ttl",
        None,
        WARNED,
        "ignored (unless it matches what the app store does); app_manager.cache.ttl sets how"
        " long apps are cached",
    ),
    Key(
        "database.postgres.cache_cleanup_interval",
        None,
        WARNED,
        "ignored (unless it matches what the app store does); app_manager.cache.ttl sets how"
        " long apps are cached",
    ),
    Key(
        "database.postgres.cache_max_capacity",
        None,
        WARNED,
        "ignored (unless it matches what the app store does); app_manager.cache.ttl sets how"
        " long apps are cached",
    ),
    Key("database.dynamodb.region", "us-east-1", HONOURED),
    Key("database.dynamodb.table_name", "sockudo-applications", HONOURED),
    Key("database.dynamodb.endpoint_url", None, HONOURED),
    Key("database.dynamodb.aws_access_key_id", None, HONOURED),
    Key("database.dynamodb.aws_secret_access_key", None, HONOURED),
    Key("database.dynamodb.aws_profile_name", None, HONOURED),
    Key("database.scylladb", None, ACCEPTED),
    Key("logging.output_format", "human", HONOURED),
    Key("logging.colors_enabled", True, WARNED, "true is ignored; log lines are never coloured"),
    Key(
        "logging.include_target",
        True,
        WARNED,
        "false is ignored; log lines always name their source",
    ),
    Key("websocket_limits.max_subscriptions", 1000, HONOURED),
    Key("websocket_limits.messages_per_second", 100, HONOURED),
    Key("websocket_limits.message_burst", 1100, HONOURED),
    Key("http_api.request_limit_in_mb", 10, HONOURED),
    Key("http_api.max_header_bytes", 16384, HONOURED),
    Key("http_api.max_headers", 100, HONOURED),
    Key("http_api.header_timeout_seconds", 10, HONOURED),
    Key("http_api.body_timeout_seconds", 30, HONOURED),
    Key("http_api.idle_timeout_seconds", 60, HONOURED),
    Key("http_api.usage_enabled", True, HONOURED),
    Key("console.enabled", False, HONOURED),
    Key("console.host", "127.0.0.1", HONOURED),
    Key("console.port", 9602, HONOURED),
    Key("console.username", "", HONOURED),
    Key("console.password", "", HONOURED),
    Key("instance.process_id", None, WARNED, "ignored; nothing in sockudo-tw uses a process id"),
    Key("debug", False, HONOURED),
    Key("host", "0.0.0.0", HONOURED),
    Key("port", 6001, HONOURED),
    Key("mode", "production", WARNED, "ignored; sockudo-tw has no development or production mode"),
    Key("shutdown_grace_period", 10, HONOURED),
    Key("user_authentication_timeout", 3600, HONOURED),
    Key("activity_timeout", 120, HONOURED),
    Key("websocket_max_payload_kb", 64, HONOURED),
    Key("workers", 1, HONOURED),
    Key(
        "path_prefix",
        None,
        REFUSED,
        'anything but "" or "/" is refused: routes are served at the root',
    ),
    Key(
        "cluster_health",
        None,
        WARNED,
        "the top-level copy is unused (as in Sockudo); set adapter.cluster_health instead",
    ),
    Key("cleanup", None, WARNED, "ignored; a disconnect is cleaned up at once"),
    Key("database_pooling.enabled", True, HONOURED, "false: one connection per SQL pool"),
    Key("database_pooling.min", 2, HONOURED),
    Key("database_pooling.max", 10, HONOURED),
)

KEY_TABLE: Mapping[str, Key] = {key.path: key for key in KEYS}


def known_keys() -> frozenset[str]:
    """
    Every config key path the parser reads, warns about or refuses (whole
    sections, such as C{database.mysql}, where they are accepted as a
    block); app fields (README "Apps") are not included.
    """
    return frozenset(KEY_TABLE)


@attrs.frozen
class ClusterHealthConfig:
    """
    Node heartbeats of the horizontal adapters (C{adapter.cluster_health}).
    """

    enabled: bool = True
    heartbeat_interval_ms: int = 10000
    node_timeout_ms: int = 30000
    cleanup_interval_ms: int = 10000


@attrs.frozen
class NatsConfig:
    """
    C{adapter.nats}: servers and credentials of the NATS adapter.
    """

    servers: tuple[str, ...] = ("nats://localhost:4222",)
    prefix: str = "sockudo"
    request_timeout_ms: int = 5000
    connection_timeout_ms: int = 5000
    username: str | None = None
    password: str | None = None
    token: str | None = None
    nodes_number: int | None = None


@attrs.frozen
class AdapterConfig:
    """
    C{adapter}: the fan-out backend.

    @ivar redis_url: C{adapter.redis.redis_pub_options.url} (or
        C{REDIS_URL}); L{None} means "build it from C{database.redis}".
    @ivar cluster_nodes: C{adapter.cluster.nodes} (C{REDIS_CLUSTER_NODES}).
    """

    driver: str = "local"
    buffer_multiplier_per_cpu: int = 64
    redis_prefix: str = "sockudo_adapter:"
    redis_requests_timeout_ms: int = 5000
    redis_url: str | None = None
    cluster_nodes: tuple[str, ...] = ()
    cluster_prefix: str = "sockudo"
    cluster_request_timeout_ms: int = 5000
    nats: NatsConfig = NatsConfig()
    cluster_health: ClusterHealthConfig = ClusterHealthConfig()


@attrs.frozen
class AppManagerConfig:
    """
    C{app_manager}: where apps come from, and the apps of the memory driver.
    """

    driver: str = "memory"
    apps: tuple[App, ...] = ()
    cache_enabled: bool = True
    cache_ttl: int = 300


@attrs.frozen
class CacheConfig:
    """
    C{cache}: the store behind cache channels (and other cached lookups).
    """

    driver: str = "memory"
    redis_prefix: str = "sockudo_cache:"
    redis_url_override: str | None = None
    memory_ttl: int = 300
    memory_cleanup_interval: int = 60
    memory_max_capacity: int = 10000


@attrs.frozen
class SqsConfig:
    """
    C{queue.sqs}: the SQS webhook queue (Sockudo's keys and defaults).

    @ivar queue_url_prefix: the queue URL is this plus C{webhooks} (plus
        C{.fifo}); unset, the queue is looked up by name or created.
    @ivar endpoint_url: another SQS endpoint (moto, LocalStack).
    """

    region: str = "us-east-1"
    queue_url_prefix: str | None = None
    visibility_timeout: int = 30
    endpoint_url: str | None = None
    max_messages: int = 10
    wait_time_seconds: int = 5
    concurrency: int = 5
    fifo: bool = False
    message_group_id: str = "default"


@attrs.frozen
class QueueConfig:
    """
    C{queue}: the webhook job queue.
    """

    driver: str = "memory"
    redis_concurrency: int = 5
    redis_prefix: str = "sockudo_queue:"
    redis_url_override: str | None = None
    redis_cluster_nodes: tuple[str, ...] = ("redis://127.0.0.1:6379",)
    redis_cluster_concurrency: int = 5
    redis_cluster_prefix: str = "sockudo_queue:"
    sqs: SqsConfig = SqsConfig()


@attrs.frozen
class RateLimit:
    """
    One rate limit: C{max_requests} per C{window_seconds}, keyed by client
    address seen through C{trust_hops} proxies.
    """

    max_requests: int
    window_seconds: int
    identifier: str
    trust_hops: int = 0


@attrs.frozen
class RateLimiterConfig:
    """
    C{rate_limiter}: limits on the HTTP API and on WebSocket connects.

    Off unless configured (Sockudo's code turns it on, its shipped config turns
    it off): a per-IP limit of 100 requests a minute would silently throttle
    an app server publishing from one address, or every client behind nginx.
    """

    enabled: bool = False
    driver: str = "memory"
    api_rate_limit: RateLimit = RateLimit(100, 60, "api")
    websocket_rate_limit: RateLimit = RateLimit(20, 60, "websocket_connect")
    redis_prefix: str = "sockudo_rl:"
    redis_url_override: str | None = None


@attrs.frozen
class MetricsConfig:
    """
    C{metrics}: the Prometheus endpoint, on its own plain-HTTP listener.
    """

    enabled: bool = True
    driver: str = "prometheus"
    host: str = "0.0.0.0"
    port: int = 9601
    prefix: str = "sockudo_"


@attrs.frozen
class ConsoleConfig:
    """
    C{console} (ours, not Sockudo's): the live debug console, an operator
    page on its own listener, off by default and always behind HTTP Basic
    authentication with C{username} and C{password} (a config that enables
    it without both is refused).
    """

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9602
    username: str = ""
    password: str = attrs.field(default="", repr=False)


@attrs.frozen
class SslConfig:
    """
    C{ssl}: TLS on the main listener.
    """

    enabled: bool = False
    cert_path: str = ""
    key_path: str = ""
    redirect_http: bool = False
    http_port: int = 80


@attrs.frozen
class HttpLimits:
    """
    C{http_api}: the bounds of the HTTP edge, on both the trigger fast path
    and twisted.web (a request over one is refused, a stalled one closed).

    @ivar request_limit_in_mb: the largest request body (Sockudo's key);
        a larger C{Content-Length}, or a chunked body passing it, gets 413.
    @ivar max_header_bytes: the request line and headers together; more
        gets 431.
    @ivar max_headers: header fields per request; more gets 431.
    @ivar header_timeout_seconds: from connect (or a request's first byte)
        until its head is complete; then 408 and close.
    @ivar body_timeout_seconds: from the end of the head until the body is
        complete; then 408 and close.
    @ivar idle_timeout_seconds: a keep-alive connection between requests.
    @ivar usage_enabled: whether C{GET /usage} (the host's memory) is
        served (Sockudo's key).
    """

    request_limit_in_mb: int = 10
    max_header_bytes: int = 16384
    max_headers: int = 100
    header_timeout_seconds: int = 10
    body_timeout_seconds: int = 30
    idle_timeout_seconds: int = 60
    usage_enabled: bool = True

    @property
    def body_limit(self) -> int:
        """
        C{request_limit_in_mb} in bytes.
        """
        return self.request_limit_in_mb * 1024 * 1024


@attrs.frozen
class CorsConfig:
    """
    C{cors}: CORS headers of the HTTP API.
    """

    credentials: bool = True
    origin: tuple[str, ...] = ("*",)
    methods: tuple[str, ...] = ("GET", "POST", "OPTIONS")
    allowed_headers: tuple[str, ...] = (
        "Authorization",
        "Content-Type",
        "X-Requested-With",
        "Accept",
    )


@attrs.frozen
class UnixSocketConfig:
    """
    C{unix_socket}: listen on a Unix socket instead of TCP.

    @ivar permission_mode: the file mode as an integer (C{0o660}).
    """

    enabled: bool = False
    path: str = "/var/run/sockudo/sockudo.sock"
    permission_mode: int = 0o660


@attrs.frozen
class WebhooksConfig:
    """
    C{webhooks.batching}: buffer webhook events for C{batching_duration_ms}.
    """

    batching_enabled: bool = True
    batching_duration_ms: int = 50


@attrs.frozen
class DatabaseRedisConfig:
    """
    C{database.redis}: the Redis server the Redis drivers use by default.
    """

    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = None
    key_prefix: str = "sockudo:"

    @property
    def url(self) -> str:
        """
        A C{redis://} URL for this server, with credentials (percent-encoded)
        and db (unlike Sockudo, which drops them).
        """
        user = quote(self.username or "", safe="")
        auth = ""
        if self.password is not None:
            auth = f"{user}:{quote(self.password, safe='')}@"
        elif self.username is not None:
            auth = f"{user}@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{auth}{host}:{self.port}/{self.db}"


@attrs.frozen
class SqlDatabaseConfig:
    """
    C{database.mysql} or C{database.postgres}: where a SQL app store finds
    its table. C{pool_min}/C{pool_max} bound the connection pool
    (C{database_pooling} and C{DATABASE_CONNECTION_POOL_SIZE} set them too).
    """

    host: str = "127.0.0.1"
    port: int = 3306
    username: str = "root"
    password: str = ""
    database: str = "sockudo"
    table_name: str = "applications"
    pool_min: int = 2
    pool_max: int = 10


@attrs.frozen
class DynamoDbConfig:
    """
    C{database.dynamodb}: the DynamoDB app store's table (hash key C{id},
    global secondary index C{KeyIndex} on C{key}).

    @ivar endpoint_url: another DynamoDB endpoint (moto, DynamoDB Local).
    """

    region: str = "us-east-1"
    table_name: str = "sockudo-applications"
    endpoint_url: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_profile_name: str | None = None


@attrs.frozen
class LoggingConfig:
    """
    How logs are written: C{human} text lines or C{json} lines.
    """

    output_format: str = "human"
    colors_enabled: bool = True
    include_target: bool = True


@attrs.frozen
class WebSocketLimitsConfig:
    """
    C{websocket_limits} (ours, not Sockudo's): bounds on each WebSocket
    connection (README.rst, "Limits"); 0 turns one off.

    @ivar max_subscriptions: channels one connection may subscribe to.
    @ivar messages_per_second: sustained rate of inbound messages (every
        kind, pings included) per connection.
    @ivar message_burst: inbound messages accepted at once after a quiet
        spell; above C{max_subscriptions}, since pusher-js re-subscribes
        every channel at once when it reconnects.
    """

    max_subscriptions: int = 1000
    messages_per_second: int = 100
    message_burst: int = 1100


@attrs.frozen
class ServerConfig:
    """
    The whole parsed configuration.

    @ivar warnings: human-readable notes about keys we ignored, to be logged
        at startup.
    @ivar channel_cache_ttl: seconds a cache channel's last event is kept
        (C{channel_limits.cache_ttl}; Pusher's 30 minutes by default).
    @ivar app_limit_defaults: the C{max_*} app fields the global
        C{channel_limits}/C{event_limits}/C{presence} sections set, as
        (field, value) pairs; apps that leave a field unset took these.
    """

    debug: bool = False
    host: str = "0.0.0.0"
    port: int = 6001
    mode: str = "production"
    shutdown_grace_period: int = 10
    user_authentication_timeout: int = 3600
    activity_timeout: int = 120
    websocket_max_payload_kb: int = 64
    instance_process_id: str | None = None
    http_api_request_limit_in_mb: int = 10
    http_limits: HttpLimits = HttpLimits()
    adapter: AdapterConfig = AdapterConfig()
    app_manager: AppManagerConfig = AppManagerConfig()
    cache: CacheConfig = CacheConfig()
    queue: QueueConfig = QueueConfig()
    rate_limiter: RateLimiterConfig = RateLimiterConfig()
    metrics: MetricsConfig = MetricsConfig()
    console: ConsoleConfig = ConsoleConfig()
    ssl: SslConfig = SslConfig()
    cors: CorsConfig = CorsConfig()
    unix_socket: UnixSocketConfig = UnixSocketConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    database_redis: DatabaseRedisConfig = DatabaseRedisConfig()
    database_mysql: SqlDatabaseConfig = SqlDatabaseConfig()
    database_postgres: SqlDatabaseConfig = SqlDatabaseConfig(port=5432, username="postgres")
    database_dynamodb: DynamoDbConfig = DynamoDbConfig()
    logging: LoggingConfig = LoggingConfig()
    websocket_limits: WebSocketLimitsConfig = WebSocketLimitsConfig()
    workers: int = 1
    channel_cache_ttl: int = 1800
    app_limit_defaults: tuple[tuple[str, int], ...] = ()
    warnings: tuple[str, ...] = ()
