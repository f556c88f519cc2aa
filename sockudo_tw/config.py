# -*- test-case-name: tests.test_config -*-
"""
Configuration: Sockudo's C{config.json} structure plus its environment
variables, parsed once into frozen typed objects.

Load order (sockudo-reference.md section 4.1): embedded defaults, then the
file given with C{--config} (missing keys keep their defaults), then the
environment (section 4.3). Every problem raises L{ConfigError} naming the
key path or the environment variable and what was expected, so the daemon
fails before any port is bound. Keys we do not implement are collected in
L{ServerConfig.warnings} and logged, never fatal, so a user's Sockudo file
loads unchanged.

Deliberate differences from Sockudo:
  - a malformed number or boolean in the environment is an error naming the
    variable (Sockudo ignores it with a warning);
  - an unknown driver name is an error (Sockudo silently keeps the old one);
  - C{CLUSTER_HEALTH_*} apply to C{adapter.cluster_health}, the copy the
    adapters read (Sockudo writes an unused top-level copy);
  - optional app limits (C{max_*}) accept JSON numbers as well as strings,
    and a null or absent one takes L{App}'s default (Pusher's limit);
  - the queue driver defaults to C{memory} so the embedded defaults need no
    Redis.

C{permission_mode} rule: the value is octal digits when it is a string, or a
number whose decimal digits are all 0-7 and which is at most 777 (so C{"755"}
and C{755} both mean C{0o755}); any other number up to C{0o777} (511) is the
mode itself (so C{493} means C{0o755}).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from sockudo_tw.pusher.app import App, WebhookTarget

__all__ = [
    "AdapterConfig",
    "AppManagerConfig",
    "CacheConfig",
    "ClusterHealthConfig",
    "ConfigError",
    "CorsConfig",
    "DatabaseRedisConfig",
    "LoggingConfig",
    "MetricsConfig",
    "NatsConfig",
    "QueueConfig",
    "RateLimit",
    "RateLimiterConfig",
    "ServerConfig",
    "SslConfig",
    "UnixSocketConfig",
    "WebhooksConfig",
    "check_workers",
    "load_config",
    "parse_config",
    "parse_permission_mode",
]


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
_DEFAULT_APP_NUMBERS = (
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
_DEFAULT_APP_FLAGS = ("enable_user_authentication", "enable_watchlist_events")


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
        A C{redis://} URL for this server, with credentials and db (unlike
        Sockudo, which drops them).
        """
        auth = ""
        if self.password is not None:
            auth = f"{self.username or ''}:{self.password}@"
        elif self.username is not None:
            auth = f"{self.username}@"
        return f"redis://{auth}{self.host}:{self.port}/{self.db}"


@attrs.frozen
class LoggingConfig:
    """
    How logs are written: C{human} text lines or C{json} lines.
    """

    output_format: str = "human"
    colors_enabled: bool = True
    include_target: bool = True


@attrs.frozen
class ServerConfig:
    """
    The whole parsed configuration.

    @ivar warnings: human-readable notes about keys we ignored, to be logged
        at startup.
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
    adapter: AdapterConfig = AdapterConfig()
    app_manager: AppManagerConfig = AppManagerConfig()
    cache: CacheConfig = CacheConfig()
    queue: QueueConfig = QueueConfig()
    rate_limiter: RateLimiterConfig = RateLimiterConfig()
    metrics: MetricsConfig = MetricsConfig()
    ssl: SslConfig = SslConfig()
    cors: CorsConfig = CorsConfig()
    unix_socket: UnixSocketConfig = UnixSocketConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    database_redis: DatabaseRedisConfig = DatabaseRedisConfig()
    logging: LoggingConfig = LoggingConfig()
    workers: int = 1
    warnings: tuple[str, ...] = ()


def _describe(value: object) -> str:
    """
    A short rendering of a bad value for an error message.
    """
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _as_int(value: object, path: str, minimum: int, maximum: int | None) -> int:
    """
    A JSON number or numeric string as an integer in [minimum, maximum].
    """
    what = f"an integer >= {minimum}" if minimum != 0 else "a non-negative integer"
    if maximum is not None:
        what = f"an integer from {minimum} to {maximum}"
    result: int | None = None
    if isinstance(value, bool):
        result = None
    elif isinstance(value, int):
        result = value
    elif isinstance(value, float) and value.is_integer():
        result = int(value)
    elif isinstance(value, str) and value.strip().lstrip("+").isdigit():
        result = int(value.strip())
    elif isinstance(value, str) and value.strip().startswith("-") and value.strip()[1:].isdigit():
        result = int(value.strip())
    if result is None or result < minimum or (maximum is not None and result > maximum):
        raise ConfigError(f"{path}: expected {what} or numeric string, got {_describe(value)}")
    return result


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _as_bool(value: object, path: str) -> bool:
    """
    A JSON boolean (or, leniently, one of Sockudo's boolean words).
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(f"{path}: expected true or false, got {_describe(value)}")


def parse_permission_mode(value: object, path: str) -> int:
    """
    A Unix file mode from a string of octal digits (C{"755"}), a number
    written with octal digits (C{755}) or the mode as a plain number
    (C{493}); see the module docstring for the rule.
    """
    expected = 'octal digits up to "777" (e.g. "660") or a mode number up to 511'
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("0o"):
            text = text[2:]
        if text and all(c in "01234567" for c in text) and int(text, 8) <= 0o777:
            return int(text, 8)
        raise ConfigError(f"{path}: expected {expected}, got {_describe(value)}")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        digits = str(value)
        if all(c in "01234567" for c in digits) and value <= 777:
            return int(digits, 8)
        if value <= 0o777:
            return value
    raise ConfigError(f"{path}: expected {expected}, got {_describe(value)}")


class _Section:
    """
    A JSON object being read with the keys it has handed out remembered, so
    that everything else can be reported as ignored.
    """

    def __init__(self, data: Mapping[str, Any], path: str, warnings: list[str]) -> None:
        self._data = data
        self._path = path
        self._warnings = warnings
        self._read: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def _get(self, key: str) -> Any:
        self._read.add(key)
        return self._data.get(key)

    def section(self, key: str) -> _Section:
        """
        A nested object; absent or null reads as empty.
        """
        value = self._get(key)
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{self._key(key)}: expected an object, got {_describe(value)}")
        return _Section(value, self._key(key), self._warnings)

    def ignore(self, *keys: str) -> None:
        """
        Mark keys as known and deliberately unused (no warning).
        """
        self._read.update(keys)

    def integer(self, key: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
        """
        An integer key (number or numeric string).
        """
        value = self._get(key)
        if value is None:
            return default
        return _as_int(value, self._key(key), minimum, maximum)

    def optional_integer(self, key: str) -> int | None:
        """
        An integer key where null or absence means "not set".
        """
        value = self._get(key)
        if value is None:
            return None
        return _as_int(value, self._key(key), 0, None)

    def boolean(self, key: str, default: bool) -> bool:
        """
        A boolean key.
        """
        value = self._get(key)
        if value is None:
            return default
        return _as_bool(value, self._key(key))

    def string(self, key: str, default: str) -> str:
        """
        A string key.
        """
        value = self._optional_string(key)
        return default if value is None else value

    def _optional_string(self, key: str) -> str | None:
        value = self._get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ConfigError(f"{self._key(key)}: expected a string, got {_describe(value)}")
        return value

    def optional_string(self, key: str) -> str | None:
        """
        A string key where null or absence means "not set".
        """
        return self._optional_string(key)

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        """
        A list of strings.
        """
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(
                f"{self._key(key)}: expected a list of strings, got {_describe(value)}"
            )
        return tuple(value)

    def choice(self, key: str, default: str, choices: Mapping[str, str] | Sequence[str]) -> str:
        """
        A driver-like name, case-insensitive, mapped through C{choices}.
        """
        value = self._optional_string(key)
        if value is None:
            return default
        table = choices if isinstance(choices, Mapping) else {c: c for c in choices}
        name = value.strip().lower()
        if name not in table:
            raise ConfigError(
                f"{self._key(key)}: expected one of {', '.join(sorted(set(table)))},"
                f" got {_describe(value)}"
            )
        return table[name]

    def raw(self, key: str) -> Any:
        """
        The value as it is, for keys with their own parser.
        """
        return self._get(key)

    def finish(self) -> None:
        """
        Record a warning for every key nobody read (C{_comment*} keys are
        annotations and are skipped).
        """
        for key in self._data:
            if key not in self._read and not key.startswith("_comment"):
                self._warnings.append(f"{self._key(key)}: not implemented, ignored")


def _parse_webhook(value: object, path: str, warnings: list[str]) -> WebhookTarget:
    """
    One entry of an app's C{webhooks} list (sockudo-reference.md 5.8).
    """
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: expected an object, got {_describe(value)}")
    s = _Section(value, path, warnings)
    url = s.optional_string("url")
    lambda_function = s.optional_string("lambda_function")
    lam = s.raw("lambda")
    lambda_config: dict[str, str] | None = None
    if lam is not None:
        if not isinstance(lam, Mapping) or not all(isinstance(v, str) for v in lam.values()):
            raise ConfigError(f"{path}.lambda: expected an object of strings, got {_describe(lam)}")
        lambda_config = dict(lam)
    if url is None and lambda_function is None and lambda_config is None:
        raise ConfigError(f"{path}: expected a url, lambda_function or lambda")
    event_types = s.strings("event_types", ())
    headers_raw = s.raw("headers")
    headers: dict[str, str] = {}
    if headers_raw is not None:
        # Sockudo's JSON nests them: {"headers": {"headers": {...}}}; accept both.
        if isinstance(headers_raw, Mapping) and isinstance(headers_raw.get("headers"), Mapping):
            headers_raw = headers_raw["headers"]
        if not isinstance(headers_raw, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers_raw.items()
        ):
            raise ConfigError(
                f"{path}.headers: expected an object of strings, got {_describe(headers_raw)}"
            )
        headers = dict(headers_raw)
    flt = s.section("filter")
    target = WebhookTarget(
        url=url,
        event_types=event_types,
        headers=headers,
        lambda_function=lambda_function,
        lambda_config=lambda_config,
        channel_prefix=flt.optional_string("channel_prefix"),
        channel_suffix=flt.optional_string("channel_suffix"),
        channel_pattern=flt.optional_string("channel_pattern"),
    )
    flt.finish()
    s.finish()
    return target


def _parse_app(value: object, path: str, warnings: list[str]) -> App:
    """
    One app object (sockudo-reference.md 4.4). Numbers may be numeric
    strings; a null or absent limit takes L{App}'s default.
    """
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: expected an app object, got {_describe(value)}")
    s = _Section(value, path, warnings)
    fields: dict[str, Any] = {}
    for name in ("id", "key", "secret"):
        raw = s.raw(name)
        if isinstance(raw, int) and not isinstance(raw, bool) and name == "id":
            raw = str(raw)
        if not isinstance(raw, str) or not raw:
            raise ConfigError(f"{path}.{name}: expected a non-empty string, got {_describe(raw)}")
        fields[name] = raw
    defaults = App("", "", "")
    for attribute in attrs.fields(App):
        name = attribute.name
        if name in fields or name in ("webhooks", "allowed_origins"):
            continue
        default = getattr(defaults, name)
        if isinstance(default, bool):
            fields[name] = s.boolean(name, default)
        elif isinstance(default, int):
            fields[name] = s.integer(name, default)
    fields["allowed_origins"] = s.strings("allowed_origins", ())
    hooks = s.raw("webhooks")
    if hooks is None:
        hooks = []
    if not isinstance(hooks, list):
        raise ConfigError(f"{path}.webhooks: expected a list, got {_describe(hooks)}")
    fields["webhooks"] = tuple(
        _parse_webhook(h, f"{path}.webhooks[{i}]", warnings) for i, h in enumerate(hooks)
    )
    s.finish()
    return App(**fields)


def _parse_file_tree(data: Mapping[str, Any], warnings: list[str]) -> ServerConfig:
    """
    Build L{ServerConfig} from a (merged) Sockudo-shaped JSON object.
    """
    top = _Section(data, "", warnings)
    port_range = {"minimum": 1, "maximum": 65535}

    adapter = top.section("adapter")
    redis = adapter.section("redis")
    pub = redis.section("redis_pub_options")
    redis_url = pub.optional_string("url")
    pub.finish()
    redis.ignore("redis_sub_options", "cluster_mode")
    cluster = adapter.section("cluster")
    nats = adapter.section("nats")
    health = adapter.section("cluster_health")
    adapter_config = AdapterConfig(
        driver=adapter.choice("driver", "local", ADAPTER_DRIVERS),
        buffer_multiplier_per_cpu=adapter.integer("buffer_multiplier_per_cpu", 64, minimum=1),
        redis_prefix=redis.string("prefix", "sockudo_adapter:"),
        redis_requests_timeout_ms=redis.integer("requests_timeout", 5000, minimum=1),
        redis_url=redis_url,
        cluster_nodes=cluster.strings("nodes", ()),
        cluster_prefix=cluster.string("prefix", "sockudo"),
        cluster_request_timeout_ms=cluster.integer("request_timeout_ms", 5000, minimum=1),
        nats=NatsConfig(
            servers=nats.strings("servers", ("nats://localhost:4222",)),
            prefix=nats.string("prefix", "sockudo"),
            request_timeout_ms=nats.integer("request_timeout_ms", 5000, minimum=1),
            connection_timeout_ms=nats.integer("connection_timeout_ms", 5000, minimum=1),
            username=nats.optional_string("username"),
            password=nats.optional_string("password"),
            token=nats.optional_string("token"),
            nodes_number=nats.optional_integer("nodes_number"),
        ),
        cluster_health=ClusterHealthConfig(
            enabled=health.boolean("enabled", True),
            heartbeat_interval_ms=health.integer("heartbeat_interval_ms", 10000, minimum=1),
            node_timeout_ms=health.integer("node_timeout_ms", 30000, minimum=1),
            cleanup_interval_ms=health.integer("cleanup_interval_ms", 10000, minimum=1),
        ),
    )
    cluster.ignore("use_connection_manager")
    for s in (redis, cluster, nats, health, adapter):
        s.finish()
    ch = adapter_config.cluster_health
    if ch.heartbeat_interval_ms * 3 > ch.node_timeout_ms:
        raise ConfigError(
            "adapter.cluster_health.heartbeat_interval_ms: expected at most a third of"
            f" node_timeout_ms ({ch.node_timeout_ms}), got {ch.heartbeat_interval_ms}"
        )
    if ch.cleanup_interval_ms > ch.node_timeout_ms:
        raise ConfigError(
            "adapter.cluster_health.cleanup_interval_ms: expected at most node_timeout_ms"
            f" ({ch.node_timeout_ms}), got {ch.cleanup_interval_ms}"
        )

    manager = top.section("app_manager")
    array = manager.section("array")
    apps_raw = array.raw("apps")
    if apps_raw is None:
        apps_raw = []
    if not isinstance(apps_raw, list):
        raise ConfigError(f"app_manager.array.apps: expected a list, got {_describe(apps_raw)}")
    apps = tuple(
        _parse_app(a, f"app_manager.array.apps[{i}]", warnings) for i, a in enumerate(apps_raw)
    )
    seen: set[str] = set()
    for i, app in enumerate(apps):
        if app.id in seen:
            raise ConfigError(f"app_manager.array.apps[{i}].id: duplicate app id {app.id!r}")
        seen.add(app.id)
    manager_cache = manager.section("cache")
    manager_config = AppManagerConfig(
        driver=manager.choice("driver", "memory", APP_MANAGER_DRIVERS),
        apps=apps,
        cache_enabled=manager_cache.boolean("enabled", True),
        cache_ttl=manager_cache.integer("ttl", 300),
    )
    for s in (array, manager_cache, manager):
        s.finish()

    cache = top.section("cache")
    cache_redis = cache.section("redis")
    cache_memory = cache.section("memory")
    cache_config = CacheConfig(
        driver=cache.choice("driver", "memory", CACHE_DRIVERS),
        redis_prefix=cache_redis.string("prefix", "sockudo_cache:"),
        redis_url_override=cache_redis.optional_string("url_override"),
        memory_ttl=cache_memory.integer("ttl", 300),
        memory_cleanup_interval=cache_memory.integer("cleanup_interval", 60),
        memory_max_capacity=cache_memory.integer("max_capacity", 10000),
    )
    cache_redis.ignore("cluster_mode")
    for s in (cache_redis, cache_memory, cache):
        s.finish()

    queue = top.section("queue")
    queue_redis = queue.section("redis")
    queue_cluster = queue.section("redis_cluster")
    queue_config = QueueConfig(
        driver=queue.choice("driver", "memory", QUEUE_DRIVERS),
        redis_concurrency=queue_redis.integer("concurrency", 5, minimum=1),
        redis_prefix=queue_redis.string("prefix", "sockudo_queue:"),
        redis_url_override=queue_redis.optional_string("url_override"),
        redis_cluster_nodes=queue_cluster.strings("nodes", ("redis://127.0.0.1:6379",)),
        redis_cluster_concurrency=queue_cluster.integer("concurrency", 5, minimum=1),
        redis_cluster_prefix=queue_cluster.string("prefix", "sockudo_queue:"),
    )
    queue_redis.ignore("cluster_mode")
    queue_cluster.ignore("request_timeout_ms")
    for s in (queue_redis, queue_cluster, queue):
        s.finish()

    limiter = top.section("rate_limiter")

    def rate_limit(key: str, default: RateLimit) -> RateLimit:
        s = limiter.section(key)
        result = RateLimit(
            max_requests=s.integer("max_requests", default.max_requests),
            window_seconds=s.integer("window_seconds", default.window_seconds, minimum=1),
            identifier=s.string("identifier", default.identifier),
            trust_hops=s.integer("trust_hops", default.trust_hops),
        )
        s.finish()
        return result

    limiter_redis = limiter.section("redis")
    limiter_defaults = RateLimiterConfig()
    limiter_config = RateLimiterConfig(
        enabled=limiter.boolean("enabled", limiter_defaults.enabled),
        driver=limiter.choice("driver", "memory", CACHE_DRIVERS),
        api_rate_limit=rate_limit("api_rate_limit", limiter_defaults.api_rate_limit),
        websocket_rate_limit=rate_limit(
            "websocket_rate_limit", limiter_defaults.websocket_rate_limit
        ),
        redis_prefix=limiter_redis.string("prefix", "sockudo_rl:"),
        redis_url_override=limiter_redis.optional_string("url_override"),
    )
    limiter_redis.ignore("cluster_mode")
    for s in (limiter_redis, limiter):
        s.finish()

    metrics = top.section("metrics")
    prometheus = metrics.section("prometheus")
    metrics_config = MetricsConfig(
        enabled=metrics.boolean("enabled", True),
        driver=metrics.choice("driver", "prometheus", METRICS_DRIVERS),
        host=metrics.string("host", "0.0.0.0"),
        port=metrics.integer("port", 9601, **port_range),
        prefix=prometheus.string("prefix", "sockudo_"),
    )
    for s in (prometheus, metrics):
        s.finish()

    ssl = top.section("ssl")
    ssl_config = SslConfig(
        enabled=ssl.boolean("enabled", False),
        cert_path=ssl.string("cert_path", ""),
        key_path=ssl.string("key_path", ""),
        redirect_http=ssl.boolean("redirect_http", False),
        http_port=ssl.integer("http_port", 80, **port_range),
    )
    for unused in ("passphrase", "ca_path"):
        if ssl.raw(unused) is None:
            ssl.ignore(unused)
    ssl.finish()
    if ssl_config.enabled:
        for key in ("cert_path", "key_path"):
            _check_readable(getattr(ssl_config, key), f"ssl.{key}")

    cors = top.section("cors")
    cors_default = CorsConfig()
    cors_config = CorsConfig(
        credentials=cors.boolean("credentials", True),
        origin=cors.strings("origin", cors_default.origin),
        methods=cors.strings("methods", cors_default.methods),
        allowed_headers=cors.strings("allowed_headers", cors_default.allowed_headers),
    )
    cors.finish()

    unix = top.section("unix_socket")
    mode_raw = unix.raw("permission_mode")
    unix_config = UnixSocketConfig(
        enabled=unix.boolean("enabled", False),
        path=unix.string("path", "/var/run/sockudo/sockudo.sock"),
        permission_mode=(
            0o660
            if mode_raw is None
            else parse_permission_mode(mode_raw, "unix_socket.permission_mode")
        ),
    )
    unix.finish()
    if unix_config.enabled:
        p = unix_config.path
        if not p.startswith("/") or "/../" in p + "/" or p.endswith("/"):
            raise ConfigError(
                f"unix_socket.path: expected an absolute socket path without '..', got {p!r}"
            )

    webhooks = top.section("webhooks")
    batching = webhooks.section("batching")
    webhooks_config = WebhooksConfig(
        batching_enabled=batching.boolean("enabled", True),
        batching_duration_ms=batching.integer("duration", 50, minimum=1),
    )
    for s in (batching, webhooks):
        s.finish()

    database = top.section("database")
    dredis = database.section("redis")
    database_redis = DatabaseRedisConfig(
        host=dredis.string("host", "127.0.0.1"),
        port=dredis.integer("port", 6379, **port_range),
        db=dredis.integer("db", 0),
        username=dredis.optional_string("username"),
        password=dredis.optional_string("password"),
        key_prefix=dredis.string("key_prefix", "sockudo:"),
    )
    dredis.finish()
    database.finish()

    logging = top.section("logging")
    logging_config = LoggingConfig(
        output_format=logging.choice("output_format", "human", LOG_FORMATS),
        colors_enabled=logging.boolean("colors_enabled", True),
        include_target=logging.boolean("include_target", True),
    )
    logging.finish()

    http_api = top.section("http_api")
    request_limit = http_api.integer("request_limit_in_mb", 10, minimum=1)
    http_api.finish()
    instance = top.section("instance")
    process_id = instance.optional_string("process_id")
    instance.finish()

    config = ServerConfig(
        debug=top.boolean("debug", False),
        host=top.string("host", "0.0.0.0"),
        port=top.integer("port", 6001, **port_range),
        mode=top.string("mode", "production"),
        shutdown_grace_period=top.integer("shutdown_grace_period", 10),
        user_authentication_timeout=top.integer("user_authentication_timeout", 3600, minimum=1),
        activity_timeout=top.integer("activity_timeout", 120, minimum=1),
        websocket_max_payload_kb=top.integer("websocket_max_payload_kb", 64, minimum=1),
        instance_process_id=process_id,
        http_api_request_limit_in_mb=request_limit,
        adapter=adapter_config,
        app_manager=manager_config,
        cache=cache_config,
        queue=queue_config,
        rate_limiter=limiter_config,
        metrics=metrics_config,
        ssl=ssl_config,
        cors=cors_config,
        unix_socket=unix_config,
        webhooks=webhooks_config,
        database_redis=database_redis,
        logging=logging_config,
        workers=top.integer("workers", 1, minimum=1),
    )
    check_workers(config)
    # path_prefix is unused in Sockudo too; the top-level cluster_health is
    # Sockudo's unused copy (see CLUSTER_HEALTH_* below).
    if top.raw("path_prefix") in (None, "/"):
        top.ignore("path_prefix")
    top.finish()
    return config


def check_workers(config: ServerConfig) -> None:
    """
    C{workers} above 1 runs processes joined through the Redis adapter and
    sharing plain sockets (see L{sockudo_tw.workers}).

    @raise ConfigError: for a combination that cannot work.
    """
    if config.workers > 1 and config.adapter.driver != "redis":
        raise ConfigError(
            f"workers: {config.workers} processes must share their state through"
            f' adapter.driver "redis", got {config.adapter.driver!r}'
        )
    if config.workers > 1 and config.ssl.enabled:
        raise ConfigError(
            "workers: more than 1 process cannot share TLS listeners (ssl.enabled);"
            " terminate TLS in front of the workers"
        )


def _check_readable(path: str, key: str) -> None:
    """
    Fail unless C{path} names a readable file (TLS cert or key).
    """
    if not path:
        raise ConfigError(f"{key}: expected a PEM file path when ssl.enabled is true, got ''")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {path!r}: {e.strerror}") from None


# Environment variables (sockudo-reference.md 4.3): name -> (key path, kind).
_ENV: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("ENVIRONMENT", ("mode",), "str"),
    ("HOST", ("host",), "str"),
    ("PORT", ("port",), "int"),
    ("ACTIVITY_TIMEOUT", ("activity_timeout",), "int"),
    ("SHUTDOWN_GRACE_PERIOD", ("shutdown_grace_period",), "int"),
    ("USER_AUTHENTICATION_TIMEOUT", ("user_authentication_timeout",), "int"),
    ("WEBSOCKET_MAX_PAYLOAD_KB", ("websocket_max_payload_kb",), "int"),
    ("INSTANCE_PROCESS_ID", ("instance", "process_id"), "str"),
    ("ADAPTER_DRIVER", ("adapter", "driver"), "str"),
    ("ADAPTER_BUFFER_MULTIPLIER_PER_CPU", ("adapter", "buffer_multiplier_per_cpu"), "int"),
    ("CACHE_DRIVER", ("cache", "driver"), "str"),
    ("QUEUE_DRIVER", ("queue", "driver"), "str"),
    ("APP_MANAGER_DRIVER", ("app_manager", "driver"), "str"),
    ("RATE_LIMITER_DRIVER", ("rate_limiter", "driver"), "str"),
    ("DATABASE_REDIS_HOST", ("database", "redis", "host"), "str"),
    ("DATABASE_REDIS_PORT", ("database", "redis", "port"), "int"),
    ("DATABASE_REDIS_PASSWORD", ("database", "redis", "password"), "str"),
    ("DATABASE_REDIS_DB", ("database", "redis", "db"), "int"),
    ("DATABASE_REDIS_KEY_PREFIX", ("database", "redis", "key_prefix"), "str"),
    ("REDIS_URL", ("adapter", "redis", "redis_pub_options", "url"), "str"),
    ("REDIS_URL", ("cache", "redis", "url_override"), "str"),
    ("REDIS_URL", ("queue", "redis", "url_override"), "str"),
    ("REDIS_URL", ("rate_limiter", "redis", "url_override"), "str"),
    ("REDIS_CLUSTER_NODES", ("adapter", "cluster", "nodes"), "list"),
    ("REDIS_CLUSTER_NODES", ("queue", "redis_cluster", "nodes"), "list"),
    ("REDIS_CLUSTER_QUEUE_CONCURRENCY", ("queue", "redis_cluster", "concurrency"), "int"),
    ("REDIS_CLUSTER_QUEUE_PREFIX", ("queue", "redis_cluster", "prefix"), "str"),
    ("APP_MANAGER_CACHE_ENABLED", ("app_manager", "cache", "enabled"), "bool"),
    ("APP_MANAGER_CACHE_TTL", ("app_manager", "cache", "ttl"), "int"),
    ("CACHE_TTL_SECONDS", ("app_manager", "cache", "ttl"), "int"),
    ("CACHE_TTL_SECONDS", ("cache", "memory", "ttl"), "int"),
    ("CACHE_CLEANUP_INTERVAL", ("cache", "memory", "cleanup_interval"), "int"),
    ("CACHE_MAX_CAPACITY", ("cache", "memory", "max_capacity"), "int"),
    ("SSL_ENABLED", ("ssl", "enabled"), "bool"),
    ("SSL_CERT_PATH", ("ssl", "cert_path"), "str"),
    ("SSL_KEY_PATH", ("ssl", "key_path"), "str"),
    ("SSL_REDIRECT_HTTP", ("ssl", "redirect_http"), "bool"),
    ("SSL_HTTP_PORT", ("ssl", "http_port"), "int"),
    ("UNIX_SOCKET_ENABLED", ("unix_socket", "enabled"), "bool"),
    ("UNIX_SOCKET_PATH", ("unix_socket", "path"), "str"),
    ("UNIX_SOCKET_PERMISSION_MODE", ("unix_socket", "permission_mode"), "str"),
    ("METRICS_DRIVER", ("metrics", "driver"), "str"),
    ("METRICS_ENABLED", ("metrics", "enabled"), "bool"),
    ("METRICS_HOST", ("metrics", "host"), "str"),
    ("METRICS_PORT", ("metrics", "port"), "int"),
    ("METRICS_PROMETHEUS_PREFIX", ("metrics", "prometheus", "prefix"), "str"),
    ("RATE_LIMITER_ENABLED", ("rate_limiter", "enabled"), "bool"),
    ("RATE_LIMITER_API_MAX_REQUESTS", ("rate_limiter", "api_rate_limit", "max_requests"), "int"),
    (
        "RATE_LIMITER_API_WINDOW_SECONDS",
        ("rate_limiter", "api_rate_limit", "window_seconds"),
        "int",
    ),
    ("RATE_LIMITER_API_TRUST_HOPS", ("rate_limiter", "api_rate_limit", "trust_hops"), "int"),
    (
        "RATE_LIMITER_WS_MAX_REQUESTS",
        ("rate_limiter", "websocket_rate_limit", "max_requests"),
        "int",
    ),
    (
        "RATE_LIMITER_WS_WINDOW_SECONDS",
        ("rate_limiter", "websocket_rate_limit", "window_seconds"),
        "int",
    ),
    ("RATE_LIMITER_REDIS_PREFIX", ("rate_limiter", "redis", "prefix"), "str"),
    ("QUEUE_REDIS_CONCURRENCY", ("queue", "redis", "concurrency"), "int"),
    ("QUEUE_REDIS_PREFIX", ("queue", "redis", "prefix"), "str"),
    ("WEBHOOK_BATCHING_ENABLED", ("webhooks", "batching", "enabled"), "bool"),
    ("WEBHOOK_BATCHING_DURATION", ("webhooks", "batching", "duration"), "int"),
    ("NATS_SERVERS", ("adapter", "nats", "servers"), "list"),
    ("NATS_USERNAME", ("adapter", "nats", "username"), "str"),
    ("NATS_PASSWORD", ("adapter", "nats", "password"), "str"),
    ("NATS_TOKEN", ("adapter", "nats", "token"), "str"),
    ("NATS_CONNECTION_TIMEOUT_MS", ("adapter", "nats", "connection_timeout_ms"), "int"),
    ("NATS_REQUEST_TIMEOUT_MS", ("adapter", "nats", "request_timeout_ms"), "int"),
    ("NATS_NODES_NUMBER", ("adapter", "nats", "nodes_number"), "int"),
    ("CORS_ORIGINS", ("cors", "origin"), "list"),
    ("CORS_METHODS", ("cors", "methods"), "list"),
    ("CORS_HEADERS", ("cors", "allowed_headers"), "list"),
    ("CORS_CREDENTIALS", ("cors", "credentials"), "bool"),
    ("CLUSTER_HEALTH_ENABLED", ("adapter", "cluster_health", "enabled"), "bool"),
    (
        "CLUSTER_HEALTH_HEARTBEAT_INTERVAL",
        ("adapter", "cluster_health", "heartbeat_interval_ms"),
        "int",
    ),
    ("CLUSTER_HEALTH_NODE_TIMEOUT", ("adapter", "cluster_health", "node_timeout_ms"), "int"),
    (
        "CLUSTER_HEALTH_CLEANUP_INTERVAL",
        ("adapter", "cluster_health", "cleanup_interval_ms"),
        "int",
    ),
    ("LOG_OUTPUT_FORMAT", ("logging", "output_format"), "str"),
    ("LOG_COLORS_ENABLED", ("logging", "colors_enabled"), "bool"),
    ("LOG_INCLUDE_TARGET", ("logging", "include_target"), "bool"),
)


def env_bool(env: Mapping[str, str], name: str) -> bool | None:
    """
    The boolean environment variable C{name} (true/1/yes/on, false/0/no/off),
    or L{None} when unset or empty.
    """
    value = env.get(name, "").strip().lower()
    if not value:
        return None
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}: expected true/1/yes/on or false/0/no/off, got {value!r}")


def _env_value(env: Mapping[str, str], name: str, kind: str) -> Any:
    """
    The typed value of one environment variable, or L{None} if unset.
    """
    if kind == "bool":
        return env_bool(env, name)
    raw = env.get(name)
    if raw is None or (kind != "str" and not raw.strip()):
        return None
    if kind == "int":
        text = raw.strip()
        if not text.isdigit():
            raise ConfigError(f"{name}: expected a non-negative integer, got {raw!r}")
        return int(text)
    if kind == "list":
        return [part.strip() for part in raw.split(",") if part.strip()]
    return raw


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """
    Write C{value} at C{path} in a nested dict, replacing non-objects.
    """
    node = tree
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


def _copy_tree(value: Any) -> Any:
    """
    A deep copy of a JSON tree (so env overrides never touch the caller's).
    """
    if isinstance(value, Mapping):
        return {k: _copy_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_tree(v) for v in value]
    return value


def _default_app(env: Mapping[str, str]) -> App:
    """
    The app described by C{SOCKUDO_DEFAULT_APP_*}, with L{App}'s defaults for
    everything unset.
    """
    fields: dict[str, Any] = {
        "id": env.get("SOCKUDO_DEFAULT_APP_ID") or "app-id",
        "key": env.get("SOCKUDO_DEFAULT_APP_KEY") or "app-key",
        "secret": env.get("SOCKUDO_DEFAULT_APP_SECRET") or "app-secret",
    }
    for name in _DEFAULT_APP_NUMBERS:
        value = _env_value(env, f"SOCKUDO_DEFAULT_APP_{name.upper()}", "int")
        if value is not None:
            fields[name] = value
    for name in _DEFAULT_APP_FLAGS:
        value = env_bool(env, f"SOCKUDO_DEFAULT_APP_{name.upper()}")
        if value is not None:
            fields[name] = value
    for var in ("SOCKUDO_ENABLE_CLIENT_MESSAGES", "SOCKUDO_DEFAULT_APP_ENABLE_CLIENT_MESSAGES"):
        flag = env_bool(env, var)
        if flag is not None:
            fields["enable_client_messages"] = flag
    enabled = env_bool(env, "SOCKUDO_DEFAULT_APP_ENABLED")
    if enabled is not None:
        fields["enabled"] = enabled
    origins = _env_value(env, "SOCKUDO_DEFAULT_APP_ALLOWED_ORIGINS", "list")
    if origins is not None:
        fields["allowed_origins"] = tuple(origins)
    return App(**fields)


def parse_config(
    data: Mapping[str, Any] | None,
    env: Mapping[str, str],
) -> ServerConfig:
    """
    Build the configuration from a parsed config file (L{None} for the
    embedded defaults) and the environment C{env}.

    Without a file, the default app (C{SOCKUDO_DEFAULT_APP_*}, defaulting to
    C{app-id}/C{app-key}/C{app-secret}) is always present. With a file, it
    is added only when one of C{SOCKUDO_DEFAULT_APP_ID/KEY/SECRET} is set, so
    a production file never gains well-known credentials by accident.

    @raise ConfigError: for any invalid value.
    """
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"(top level): expected a JSON object, got {_describe(data)}")
    tree: dict[str, Any] = _copy_tree(data) if data is not None else {}
    sources: dict[str, str] = {}
    for name, path, kind in _ENV:
        value = _env_value(env, name, kind)
        if value is not None:
            _set_path(tree, path, value)
            sources[".".join(path)] = name
    debug = env_bool(env, "DEBUG")
    debug_mode = env_bool(env, "DEBUG_MODE")
    if debug is not None or debug_mode is not None:
        tree["debug"] = bool(debug) if debug is not None else bool(debug_mode)
    warnings: list[str] = []
    if "cluster_health" in tree:
        tree.pop("cluster_health")
        warnings.append(
            "cluster_health: the top-level copy is unused (as in Sockudo);"
            " set adapter.cluster_health instead"
        )
    try:
        config = _parse_file_tree(tree, warnings)
    except ConfigError as e:
        key = str(e).split(":", 1)[0]
        if key in sources:
            raise ConfigError(f"{sources[key]} (sets {e})") from None
        raise
    default_requested = any(
        env.get(f"SOCKUDO_DEFAULT_APP_{part}") for part in ("ID", "KEY", "SECRET")
    )
    apps = config.app_manager.apps
    if data is None or default_requested:
        default = _default_app(env)
        apps = (*(a for a in apps if a.id != default.id), default)
        for other in apps[:-1]:
            if other.key == default.key:
                raise ConfigError(
                    f"SOCKUDO_DEFAULT_APP_KEY: key {default.key!r} is already used by app"
                    f" {other.id!r}"
                )
    return attrs.evolve(
        config,
        app_manager=attrs.evolve(config.app_manager, apps=apps),
        warnings=tuple(warnings),
    )


def load_config(path: str | None, env: Mapping[str, str]) -> ServerConfig:
    """
    Read and parse the JSON file at C{path} (or the embedded defaults when
    L{None}), then apply C{env}.

    @raise ConfigError: if the file cannot be read, is not JSON, or holds
        invalid values.
    """
    if path is None:
        return parse_config(None, env)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: config file is not UTF-8: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    return parse_config(data, env)
