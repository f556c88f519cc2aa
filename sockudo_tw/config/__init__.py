# -*- test-case-name: tests.test_config -*-
"""
Configuration: Sockudo's C{config.json} structure plus its environment
variables, parsed once into frozen typed objects.

Load order (sockudo-reference.md section 4.1): embedded defaults, then the
file given with C{--config} (JSON, or Sockudo's TOML form when the name ends
in C{.toml}; missing keys keep their defaults), then the environment
(section 4.3). Every problem raises L{ConfigError} naming the key path or
the environment variable and what was expected, so the daemon fails before
any port is bound.

Nothing is ignored silently. Each key is honoured; or, when ignoring it is
harmless, it is named in L{ServerConfig.warnings} (logged at start); or,
when ignoring it would change behaviour or drop a safety property (a driver
sockudo-tw does not implement, C{cluster_mode: true}, a C{path_prefix}),
it is refused with a L{ConfigError} saying why. The settings of a driver
that is not selected are read only by that driver, so they are accepted
silently; environment variables for such a driver are warned about, since
setting one shows an intent. L{known_keys} lists every key the parser
reads; README.rst documents each one (a test compares the two).

Global limits: C{channel_limits.max_name_length}, C{event_limits.*} and
C{presence.*} are the defaults of the matching C{max_*} field of every app
(the default app included) that leaves the field null or absent; a key
absent from the global section leaves L{App}'s default (Pusher's limit).

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
import re
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import attrs

from sockudo_tw.pusher.app import App, WebhookTarget, valid_app_id
from sockudo_tw.redisurl import parse_redis_url

__all__ = [
    "AdapterConfig",
    "AppManagerConfig",
    "CacheConfig",
    "ClusterHealthConfig",
    "ConfigError",
    "CorsConfig",
    "DatabaseRedisConfig",
    "HttpLimits",
    "LoggingConfig",
    "MetricsConfig",
    "NatsConfig",
    "QueueConfig",
    "RateLimit",
    "RateLimiterConfig",
    "ServerConfig",
    "SslConfig",
    "UnixSocketConfig",
    "WebSocketLimitsConfig",
    "WebhooksConfig",
    "check_workers",
    "known_env_vars",
    "known_keys",
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

# The global limit sections: (section, key, the App field they default).
_GLOBAL_APP_LIMITS = (
    ("channel_limits", "max_name_length", "max_channel_name_length"),
    ("event_limits", "max_channels_at_once", "max_event_channels_at_once"),
    ("event_limits", "max_name_length", "max_event_name_length"),
    ("event_limits", "max_payload_in_kb", "max_event_payload_in_kb"),
    ("event_limits", "max_batch_size", "max_event_batch_size"),
    ("presence", "max_members_per_channel", "max_presence_members_per_channel"),
    ("presence", "max_member_size_in_kb", "max_presence_member_size_in_kb"),
)

# Drivers Sockudo has that sockudo-tw does not implement yet, and why
# running without them would be wrong (so they are refused, never replaced).
_UNIMPLEMENTED_APP_MANAGER = (
    "apps would not be loaded and every client and request would be refused;"
    ' use "memory" with app_manager.array.apps (or SOCKUDO_DEFAULT_APP_*)'
)
_UNIMPLEMENTED_CACHE = (
    'cache channels would only remember events published through this node; use "memory"'
)
_UNIMPLEMENTED_RATE_LIMITER = (
    "each node would count only its own requests, multiplying the limit;"
    ' use "memory" (per-node limits) or set rate_limiter.enabled to false'
)
_CLUSTER_MODE = "Redis Cluster is not supported; use a single Redis server or primary"


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
    """

    request_limit_in_mb: int = 10
    max_header_bytes: int = 16384
    max_headers: int = 100
    header_timeout_seconds: int = 10
    body_timeout_seconds: int = 30
    idle_timeout_seconds: int = 60

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
    ssl: SslConfig = SslConfig()
    cors: CorsConfig = CorsConfig()
    unix_socket: UnixSocketConfig = UnixSocketConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    database_redis: DatabaseRedisConfig = DatabaseRedisConfig()
    logging: LoggingConfig = LoggingConfig()
    websocket_limits: WebSocketLimitsConfig = WebSocketLimitsConfig()
    workers: int = 1
    channel_cache_ttl: int = 1800
    app_limit_defaults: tuple[tuple[str, int], ...] = ()
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
    elif isinstance(value, str) and _ASCII_INTEGER.fullmatch(value.strip()):
        result = int(value.strip())
    if result is None or result < minimum or (maximum is not None and result > maximum):
        raise ConfigError(f"{path}: expected {what} or numeric string, got {_describe(value)}")
    return result


# ASCII digits only: str.isdigit() also accepts "²" (which int() refuses)
# and int() accepts other scripts' digits.
_ASCII_INTEGER = re.compile(r"[+-]?[0-9]+")

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

    def __init__(
        self,
        data: Mapping[str, Any],
        path: str,
        warnings: list[str],
        seen: set[str] | None = None,
    ) -> None:
        self._data = data
        self._path = path
        self._warnings = warnings
        self._read: set[str] = set()
        self._seen = seen

    def _key(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def _get(self, key: str) -> Any:
        self._read.add(key)
        if self._seen is not None:
            self._seen.add(self._key(key))
        return self._data.get(key)

    def section(self, key: str) -> _Section:
        """
        A nested object; absent or null reads as empty.
        """
        self._read.add(key)
        value = self._data.get(key)
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{self._key(key)}: expected an object, got {_describe(value)}")
        return _Section(value, self._key(key), self._warnings, self._seen)

    def ignore(self, *keys: str) -> None:
        """
        Mark keys (or whole sections) as known and deliberately unused (no
        warning): the settings of drivers that are not selected.
        """
        for key in keys:
            self._get(key)

    def present(self, key: str) -> bool:
        """
        Whether the file (or the environment) sets C{key} to a non-null value.
        """
        return self._data.get(key) is not None

    def warn(self, key: str, note: str) -> None:
        """
        Record that C{key} is set and ignored, and why that is harmless.
        """
        self._get(key)
        self._warnings.append(f"{self._key(key)}: {note}")

    def warn_if_present(self, key: str, note: str) -> None:
        """
        L{warn} when the key is set; otherwise only mark it known.
        """
        if self.present(key):
            self.warn(key, note)
        else:
            self._get(key)

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


def _parse_app(
    value: object, path: str, warnings: list[str], limits: Mapping[str, int] | None = None
) -> App:
    """
    One app object (sockudo-reference.md 4.4). Numbers may be numeric
    strings; a null or absent limit takes the global section's value from
    C{limits} (field name to value), else L{App}'s default.
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
    if not valid_app_id(fields["id"]):
        raise ConfigError(
            f"{path}.id: expected 1 to 128 of A-Z a-z 0-9 _ - . : (the API's app id"
            f" rule), got {fields['id']!r}"
        )
    defaults = App("", "", "")
    for attribute in attrs.fields(App):
        name = attribute.name
        if name in fields or name in ("webhooks", "allowed_origins"):
            continue
        default = getattr(defaults, name)
        if limits is not None and name in limits:
            default = limits[name]
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


def _check_redis_url(url: str | None, key: str) -> None:
    """
    Fail now, naming C{key}, if C{url} is not a Redis URL
    L{sockudo_tw.redisurl.parse_redis_url} accepts.
    """
    if url is None:
        return
    try:
        parse_redis_url(url)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None


def _refuse_cluster_mode(section: _Section) -> None:
    """
    C{cluster_mode: true} is refused wherever it appears.
    """
    if section.boolean("cluster_mode", False):
        raise ConfigError(f"{section._key('cluster_mode')}: true is refused: {_CLUSTER_MODE}")


def _parse_file_tree(
    data: Mapping[str, Any], warnings: list[str], read_keys: set[str] | None = None
) -> ServerConfig:
    """
    Build L{ServerConfig} from a (merged) Sockudo-shaped JSON object.

    @param read_keys: if given, every key path the parser asks for is added.
    """
    from sockudo_tw.adapters import validate_adapter_driver
    from sockudo_tw.queues import validate_queue_driver

    top = _Section(data, "", warnings, read_keys)
    port_range = {"minimum": 1, "maximum": 65535}

    adapter = top.section("adapter")
    redis = adapter.section("redis")
    pub = redis.section("redis_pub_options")
    redis_url = pub.optional_string("url")
    _check_redis_url(redis_url, "adapter.redis.redis_pub_options.url")
    pub.finish()
    if redis.raw("redis_sub_options"):
        redis.warn(
            "redis_sub_options",
            "ignored (as in Sockudo); the adapter uses redis_pub_options.url for both",
        )
    _refuse_cluster_mode(redis)
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
    adapter.warn_if_present(
        "buffer_multiplier_per_cpu", "ignored; fan-out runs in the reactor thread"
    )
    for s in (redis, cluster, nats, health, adapter):
        s.finish()
    try:
        validate_adapter_driver(adapter_config.driver)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if adapter_config.driver == "redis" and not adapter_config.cluster_health.enabled:
        raise ConfigError(
            'adapter.cluster_health.enabled: false is refused with adapter.driver "redis":'
            " heartbeats are how a dead node's connections and presence members are removed"
        )
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

    limit_sections = {
        name: top.section(name) for name in ("channel_limits", "event_limits", "presence")
    }
    limit_defaults: dict[str, int] = {}
    for section_name, key, field in _GLOBAL_APP_LIMITS:
        limit = limit_sections[section_name].optional_integer(key)
        if limit is not None:
            limit_defaults[field] = limit
    channel_cache_ttl = limit_sections["channel_limits"].integer("cache_ttl", 1800, minimum=1)
    for s in limit_sections.values():
        s.finish()

    manager = top.section("app_manager")
    array = manager.section("array")
    apps_raw = array.raw("apps")
    if apps_raw is None:
        apps_raw = []
    if not isinstance(apps_raw, list):
        raise ConfigError(f"app_manager.array.apps: expected a list, got {_describe(apps_raw)}")
    apps = tuple(
        _parse_app(a, f"app_manager.array.apps[{i}]", warnings, limit_defaults)
        for i, a in enumerate(apps_raw)
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
    if manager_config.driver != "memory":
        raise ConfigError(
            f"app_manager.driver: {manager_config.driver!r} is refused: sockudo-tw does not"
            f" implement it yet, and without it {_UNIMPLEMENTED_APP_MANAGER}"
        )
    if manager_config.cache_enabled:
        for key in ("enabled", "ttl"):
            manager_cache.warn_if_present(
                key, "ignored; the memory app manager serves apps from memory, nothing to cache"
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
    _refuse_cluster_mode(cache_redis)
    _check_redis_url(cache_config.redis_url_override, "cache.redis.url_override")
    if cache_config.driver in ("redis", "redis-cluster"):
        raise ConfigError(
            f"cache.driver: {cache_config.driver!r} is refused: sockudo-tw does not implement"
            f" it yet, and without it {_UNIMPLEMENTED_CACHE}"
        )
    if cache_config.driver == "none":
        cache.warn("driver", '"none" keeps the memory cache, as Sockudo does')
    cache_memory.warn_if_present(
        "ttl", "ignored; cache-channel entries live channel_limits.cache_ttl seconds"
    )
    cache_memory.warn_if_present(
        "cleanup_interval", "ignored; expired entries are dropped when read or on the next write"
    )
    cache_memory.warn_if_present(
        "max_capacity", "ignored; the cache holds one entry per cache channel in use"
    )
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
    _refuse_cluster_mode(queue_redis)
    _check_redis_url(queue_config.redis_url_override, "queue.redis.url_override")
    queue_cluster.ignore("request_timeout_ms")
    queue.ignore("sqs")
    for s in (queue_redis, queue_cluster, queue):
        s.finish()
    try:
        validate_queue_driver(queue_config.driver)
    except ValueError as e:
        raise ConfigError(str(e)) from None

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
    _refuse_cluster_mode(limiter_redis)
    _check_redis_url(limiter_config.redis_url_override, "rate_limiter.redis.url_override")
    if limiter_config.enabled and limiter_config.driver in ("redis", "redis-cluster"):
        raise ConfigError(
            f"rate_limiter.driver: {limiter_config.driver!r} is refused: sockudo-tw does not"
            f" implement it yet, and without it {_UNIMPLEMENTED_RATE_LIMITER}"
        )
    if limiter_config.enabled and limiter_config.driver == "none":
        limiter.warn("driver", '"none" keeps the memory limiter, as Sockudo does')
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
    ssl.warn_if_present("passphrase", "ignored (as in Sockudo); the key file must be unencrypted")
    ssl.warn_if_present(
        "ca_path",
        "ignored (as in Sockudo); append the intermediate certificates to cert_path",
    )
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
    dredis.warn_if_present(
        "key_prefix",
        "ignored; each Redis user has its own prefix key"
        " (adapter.redis.prefix, queue.redis.prefix)",
    )
    if dredis.raw("sentinels"):
        dredis.warn("sentinels", "ignored (as in Sockudo); database.redis.host is used directly")
    for key in ("sentinel_password", "name"):
        dredis.warn_if_present(key, "ignored (as in Sockudo): Sentinel is not used")
    dredis.ignore("cluster_nodes")
    _check_redis_url(database_redis.url, "database.redis")
    dredis.finish()
    database.ignore("mysql", "postgres", "dynamodb", "scylladb")
    database.finish()

    logging = top.section("logging")
    logging_config = LoggingConfig(
        output_format=logging.choice("output_format", "human", LOG_FORMATS),
        colors_enabled=logging.boolean("colors_enabled", True),
        include_target=logging.boolean("include_target", True),
    )
    if logging_config.colors_enabled and logging.present("colors_enabled"):
        logging.warn("colors_enabled", "true is ignored; log lines are never coloured")
    if not logging_config.include_target:
        logging.warn("include_target", "false is ignored; log lines always name their source")
    logging.finish()

    ws_limits = top.section("websocket_limits")
    ws_limits_config = WebSocketLimitsConfig(
        max_subscriptions=ws_limits.integer("max_subscriptions", 1000),
        messages_per_second=ws_limits.integer("messages_per_second", 100),
        message_burst=ws_limits.integer("message_burst", 1100),
    )
    ws_limits.finish()
    if (
        ws_limits_config.messages_per_second
        and ws_limits_config.message_burst <= ws_limits_config.max_subscriptions
    ):
        raise ConfigError(
            "websocket_limits.message_burst: must be above websocket_limits.max_subscriptions "
            f"({ws_limits_config.message_burst} <= {ws_limits_config.max_subscriptions}): "
            "pusher-js re-subscribes every channel at once when it reconnects"
        )

    http_api = top.section("http_api")
    request_limit = http_api.integer("request_limit_in_mb", 10, minimum=1)
    limits_default = HttpLimits()
    http_limits = HttpLimits(
        request_limit_in_mb=request_limit,
        max_header_bytes=http_api.integer(
            "max_header_bytes", limits_default.max_header_bytes, minimum=1024
        ),
        max_headers=http_api.integer("max_headers", limits_default.max_headers, minimum=8),
        header_timeout_seconds=http_api.integer(
            "header_timeout_seconds", limits_default.header_timeout_seconds, minimum=1
        ),
        body_timeout_seconds=http_api.integer(
            "body_timeout_seconds", limits_default.body_timeout_seconds, minimum=1
        ),
        idle_timeout_seconds=http_api.integer(
            "idle_timeout_seconds", limits_default.idle_timeout_seconds, minimum=1
        ),
    )
    http_api.finish()
    instance = top.section("instance")
    process_id = instance.optional_string("process_id")
    instance.warn_if_present("process_id", "ignored; nothing in sockudo-tw uses a process id")
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
        http_limits=http_limits,
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
        websocket_limits=ws_limits_config,
        workers=top.integer("workers", 1, minimum=1),
        channel_cache_ttl=channel_cache_ttl,
        app_limit_defaults=tuple(sorted(limit_defaults.items())),
    )
    check_workers(config)
    top.warn_if_present("mode", "ignored; sockudo-tw has no development or production mode")
    path_prefix = top.optional_string("path_prefix")
    if path_prefix not in (None, "", "/"):
        raise ConfigError(
            f"path_prefix: {path_prefix!r} is refused: routes are served at the root"
            " (/app/{key}, /apps/{id}/...); strip the prefix in the reverse proxy instead"
        )
    top.warn_if_present(
        "cluster_health",
        "the top-level copy is unused (as in Sockudo); set adapter.cluster_health instead",
    )
    top.warn_if_present("cleanup", "ignored; a disconnect is cleaned up at once")
    top.ignore("database_pooling")
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

# Sockudo's variables for drivers sockudo-tw does not implement (all refused
# when selected): set, they are ignored with a warning naming them.
_ENV_OF_UNIMPLEMENTED: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        'adapter.driver "nats"',
        (
            "NATS_SERVERS",
            "NATS_USERNAME",
            "NATS_PASSWORD",
            "NATS_TOKEN",
            "NATS_CONNECTION_TIMEOUT_MS",
            "NATS_REQUEST_TIMEOUT_MS",
            "NATS_NODES_NUMBER",
        ),
    ),
    (
        'the "redis-cluster" adapter and queue drivers',
        ("REDIS_CLUSTER_NODES", "REDIS_CLUSTER_QUEUE_CONCURRENCY", "REDIS_CLUSTER_QUEUE_PREFIX"),
    ),
    (
        'app_manager.driver "mysql"',
        (
            "DATABASE_MYSQL_HOST",
            "DATABASE_MYSQL_PORT",
            "DATABASE_MYSQL_USERNAME",
            "DATABASE_MYSQL_PASSWORD",
            "DATABASE_MYSQL_DATABASE",
            "DATABASE_MYSQL_TABLE_NAME",
            "DATABASE_MYSQL_POOL_MIN",
            "DATABASE_MYSQL_POOL_MAX",
        ),
    ),
    (
        'app_manager.driver "postgres"',
        (
            "DATABASE_POSTGRES_HOST",
            "DATABASE_POSTGRES_PORT",
            "DATABASE_POSTGRES_USERNAME",
            "DATABASE_POSTGRES_PASSWORD",
            "DATABASE_POSTGRES_DATABASE",
            "DATABASE_POSTGRES_POOL_MIN",
            "DATABASE_POSTGRES_POOL_MAX",
        ),
    ),
    (
        'app_manager.driver "dynamodb"',
        (
            "DATABASE_DYNAMODB_REGION",
            "DATABASE_DYNAMODB_TABLE_NAME",
            "DATABASE_DYNAMODB_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
        ),
    ),
    (
        'the SQL app managers ("mysql", "postgres")',
        (
            "DATABASE_POOLING_ENABLED",
            "DATABASE_POOL_MIN",
            "DATABASE_POOL_MAX",
            "DATABASE_CONNECTION_POOL_SIZE",
        ),
    ),
    (
        'queue.driver "sqs"',
        (
            "QUEUE_SQS_REGION",
            "QUEUE_SQS_VISIBILITY_TIMEOUT",
            "QUEUE_SQS_MAX_MESSAGES",
            "QUEUE_SQS_WAIT_TIME_SECONDS",
            "QUEUE_SQS_CONCURRENCY",
            "QUEUE_SQS_FIFO",
            "QUEUE_SQS_ENDPOINT_URL",
        ),
    ),
)

# Other Sockudo variables sockudo-tw has no use for, and why that is harmless.
_ENV_IGNORED: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "ignored; a disconnect is cleaned up at once",
        (
            "CLEANUP_ASYNC_ENABLED",
            "CLEANUP_FALLBACK_TO_SYNC",
            "CLEANUP_QUEUE_BUFFER_SIZE",
            "CLEANUP_BATCH_SIZE",
            "CLEANUP_BATCH_TIMEOUT_MS",
            "CLEANUP_WORKER_THREADS",
            "CLEANUP_MAX_RETRY_ATTEMPTS",
        ),
    ),
    (
        "ignored; Rust log filters do not apply (see debug and LOG_OUTPUT_FORMAT)",
        ("SOCKUDO_LOG_DEBUG", "SOCKUDO_LOG_PROD", "RUST_LOG"),
    ),
)


def _env_warnings(env: Mapping[str, str]) -> list[str]:
    """
    A warning for each set variable of L{_ENV_OF_UNIMPLEMENTED} and
    L{_ENV_IGNORED}.
    """
    warnings = []
    for driver, names in _ENV_OF_UNIMPLEMENTED:
        for name in names:
            if env.get(name, "").strip():
                warnings.append(
                    f"{name}: ignored; it configures {driver}, which sockudo-tw does not"
                    " implement (selecting it is refused)"
                )
    for note, names in _ENV_IGNORED:
        for name in names:
            if env.get(name, "").strip():
                warnings.append(f"{name}: {note}")
    return warnings


def known_env_vars() -> frozenset[str]:
    """
    Every environment variable the configuration reads or warns about.
    """
    names = {name for name, _, _ in _ENV}
    names.update(("DEBUG", "DEBUG_MODE"))
    for _, group in _ENV_OF_UNIMPLEMENTED + _ENV_IGNORED:
        names.update(group)
    names.update(f"SOCKUDO_DEFAULT_APP_{name.upper()}" for name in _DEFAULT_APP_NUMBERS)
    names.update(f"SOCKUDO_DEFAULT_APP_{name.upper()}" for name in _DEFAULT_APP_FLAGS)
    names.update(
        f"SOCKUDO_DEFAULT_APP_{part}"
        for part in ("ID", "KEY", "SECRET", "ENABLED", "ALLOWED_ORIGINS", "ENABLE_CLIENT_MESSAGES")
    )
    names.add("SOCKUDO_ENABLE_CLIENT_MESSAGES")
    return frozenset(names)


def known_keys() -> frozenset[str]:
    """
    Every config key path the parser reads, warns about or refuses (whole
    sections, such as C{database.mysql}, where they are accepted as a
    block); app fields (README "Apps") are not included.
    """
    seen: set[str] = set()
    _parse_file_tree({}, [], seen)
    return frozenset(seen)


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
        if not (text.isascii() and text.isdigit()):
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


def _default_app(env: Mapping[str, str], limits: Mapping[str, int] | None = None) -> App:
    """
    The app described by C{SOCKUDO_DEFAULT_APP_*}, with the global limits in
    C{limits} and L{App}'s defaults for everything else unset.
    """
    fields: dict[str, Any] = dict(limits or {})
    fields.update(
        id=env.get("SOCKUDO_DEFAULT_APP_ID") or "app-id",
        key=env.get("SOCKUDO_DEFAULT_APP_KEY") or "app-key",
        secret=env.get("SOCKUDO_DEFAULT_APP_SECRET") or "app-secret",
    )
    if not valid_app_id(fields["id"]):
        raise ConfigError(
            "SOCKUDO_DEFAULT_APP_ID: expected 1 to 128 of A-Z a-z 0-9 _ - . : (the API's"
            f" app id rule), got {fields['id']!r}"
        )
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
    try:
        config = _parse_file_tree(tree, warnings)
    except ConfigError as e:
        key = str(e).split(":", 1)[0]
        if key in sources:
            raise ConfigError(f"{sources[key]} (sets {e})") from None
        raise
    for i, warning in enumerate(warnings):
        key = warning.split(":", 1)[0]
        if key in sources:
            warnings[i] = f"{sources[key]} (sets {warning})"
    warnings.extend(_env_warnings(env))
    default_requested = any(
        env.get(f"SOCKUDO_DEFAULT_APP_{part}") for part in ("ID", "KEY", "SECRET")
    )
    apps = config.app_manager.apps
    if data is None or default_requested:
        default = _default_app(env, dict(config.app_limit_defaults))
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
    Read and parse the file at C{path} (or the embedded defaults when
    L{None}), then apply C{env}. A name ending in C{.toml} is read as
    Sockudo's TOML form (the same structure as the JSON); anything else as
    JSON.

    @raise ConfigError: if the file cannot be read, is not JSON (or TOML),
        or holds invalid values.
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
    if path.lower().endswith(".toml"):
        try:
            return parse_config(tomllib.loads(text), env)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    return parse_config(data, env)
