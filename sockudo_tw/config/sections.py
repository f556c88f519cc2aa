# -*- test-case-name: tests.test_config -*-
"""
The parser of Sockudo's config tree: one function per top-level section,
each reading its keys through a L{Section} (so unread keys are reported),
building its frozen object from L{sockudo_tw.config.schema} and running the
checks of L{sockudo_tw.config.validation} that concern it.

L{parse_tree} calls them in a fixed order; L{sockudo_tw.config.parse}
applies the environment first and adds the default app after.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from sockudo_tw.config.reader import Section, describe, parse_permission_mode
from sockudo_tw.config.schema import (
    ADAPTER_DRIVERS,
    APP_MANAGER_DRIVERS,
    CACHE_DRIVERS,
    GLOBAL_APP_LIMITS,
    KEY_TABLE,
    LOG_FORMATS,
    METRICS_DRIVERS,
    QUEUE_DRIVERS,
    AdapterConfig,
    AppManagerConfig,
    CacheConfig,
    ClusterHealthConfig,
    ConfigError,
    ConsoleConfig,
    CorsConfig,
    DatabaseRedisConfig,
    DynamoDbConfig,
    HttpLimits,
    LoggingConfig,
    MetricsConfig,
    NatsConfig,
    QueueConfig,
    RateLimit,
    RateLimiterConfig,
    ServerConfig,
    SqlDatabaseConfig,
    SqsConfig,
    SslConfig,
    UnixSocketConfig,
    WebhooksConfig,
    WebSocketLimitsConfig,
)
from sockudo_tw.config.validation import (
    UNIMPLEMENTED_APP_MANAGER,
    UNIMPLEMENTED_CACHE,
    UNIMPLEMENTED_RATE_LIMITER,
    check_cluster_health,
    check_readable,
    check_redis_url,
    check_registered,
    check_unique_app_ids,
    check_unix_socket_path,
    check_websocket_limits,
    check_workers,
    refuse_cluster_mode,
    refuse_path_prefix,
    refuse_unimplemented,
)
from sockudo_tw.pusher.app import App, WebhookTarget, valid_app_id

_PORT_RANGE = {"minimum": 1, "maximum": 65535}


def parse_tree(
    data: Mapping[str, Any], warnings: list[str], read_keys: set[str] | None = None
) -> ServerConfig:
    """
    Build L{ServerConfig} from a (merged) Sockudo-shaped JSON object, one
    section at a time, in a fixed order (so warnings come in file order of
    the reference, and the first error found is always the same).

    @param read_keys: if given, every key path the parser asks for is added.
    """
    top = Section(data, "", warnings, read_keys)
    adapter = parse_adapter(top)
    limit_defaults, channel_cache_ttl = parse_global_limits(top)
    app_manager = parse_app_manager(top, warnings, limit_defaults)
    cache = parse_cache(top)
    queue = parse_queue(top)
    rate_limiter = parse_rate_limiter(top)
    metrics = parse_metrics(top)
    ssl = parse_ssl(top)
    cors = parse_cors(top)
    unix_socket = parse_unix_socket(top)
    webhooks = parse_webhooks(top)
    databases = parse_database(top, app_manager.cache_ttl)
    if adapter.driver == "redis-cluster" and not adapter.cluster_nodes:
        # Sockudo's fallback: the seeds under database.redis.
        adapter = attrs.evolve(adapter, cluster_nodes=databases.cluster_nodes)
        if not adapter.cluster_nodes:
            raise ConfigError(
                'adapter.driver "redis-cluster": expected seed nodes in adapter.cluster.nodes'
                " (REDIS_CLUSTER_NODES) or database.redis.cluster_nodes"
            )
    logging = parse_logging(top)
    websocket_limits = parse_websocket_limits(top)
    http_limits = parse_http_api(top)
    console = parse_console(top, ssl.enabled)
    process_id = parse_instance(top)
    config = ServerConfig(
        debug=top.boolean("debug"),
        host=top.string("host"),
        port=top.integer("port", **_PORT_RANGE),
        mode=top.string("mode"),
        shutdown_grace_period=top.integer("shutdown_grace_period"),
        user_authentication_timeout=top.integer("user_authentication_timeout", minimum=1),
        activity_timeout=top.integer("activity_timeout", minimum=1),
        websocket_max_payload_kb=top.integer("websocket_max_payload_kb", minimum=1),
        instance_process_id=process_id,
        http_api_request_limit_in_mb=http_limits.request_limit_in_mb,
        http_limits=http_limits,
        adapter=adapter,
        app_manager=app_manager,
        cache=cache,
        queue=queue,
        rate_limiter=rate_limiter,
        metrics=metrics,
        console=console,
        ssl=ssl,
        cors=cors,
        unix_socket=unix_socket,
        webhooks=webhooks,
        database_redis=databases.redis,
        database_mysql=databases.mysql,
        database_postgres=databases.postgres,
        database_dynamodb=databases.dynamodb,
        logging=logging,
        websocket_limits=websocket_limits,
        workers=top.integer("workers", minimum=1),
        channel_cache_ttl=channel_cache_ttl,
        app_limit_defaults=tuple(sorted(limit_defaults.items())),
    )
    check_workers(config)
    parse_top_level_rest(top)
    return config


def parse_top_level_rest(top: Section) -> None:
    """
    The top-level keys that are warned about or refused, then the check
    that nothing else is set at the top level.
    """
    top.warn_if_present("mode")
    refuse_path_prefix(top.optional_string("path_prefix"))
    top.warn_if_present("cluster_health")
    top.warn_if_present("cleanup")
    top.finish()


def parse_adapter(top: Section) -> AdapterConfig:
    """
    C{adapter}: the fan-out backend and its drivers' settings.
    """
    from sockudo_tw.adapters import validate_adapter_driver

    adapter = top.section("adapter")
    redis = adapter.section("redis")
    pub = redis.section("redis_pub_options")
    redis_url = pub.optional_string("url")
    check_redis_url(redis_url, "adapter.redis.redis_pub_options.url")
    pub.finish()
    if redis.raw("redis_sub_options"):
        redis.warn("redis_sub_options")
    refuse_cluster_mode(redis)
    cluster = adapter.section("cluster")
    nats = adapter.section("nats")
    health = adapter.section("cluster_health")
    config = AdapterConfig(
        driver=adapter.choice("driver", ADAPTER_DRIVERS),
        buffer_multiplier_per_cpu=adapter.integer("buffer_multiplier_per_cpu", minimum=1),
        redis_prefix=redis.string("prefix"),
        redis_requests_timeout_ms=redis.integer("requests_timeout", minimum=1),
        redis_url=redis_url,
        cluster_nodes=cluster.strings("nodes"),
        cluster_prefix=cluster.string("prefix"),
        cluster_request_timeout_ms=cluster.integer("request_timeout_ms", minimum=1),
        nats=_parse_nats(nats),
        cluster_health=_parse_cluster_health(health),
    )
    cluster.warn_if_present("use_connection_manager")
    adapter.warn_if_present("buffer_multiplier_per_cpu")
    for s in (redis, cluster, nats, health, adapter):
        s.finish()
    check_registered(validate_adapter_driver, config.driver)
    check_cluster_health(config.driver, config.cluster_health)
    return config


def _parse_nats(nats: Section) -> NatsConfig:
    """
    C{adapter.nats}: the NATS adapter's servers and credentials.
    """
    nats.warn_if_present("nodes_number")
    return NatsConfig(
        servers=nats.strings("servers"),
        prefix=nats.string("prefix"),
        request_timeout_ms=nats.integer("request_timeout_ms", minimum=1),
        connection_timeout_ms=nats.integer("connection_timeout_ms", minimum=1),
        username=nats.optional_string("username"),
        password=nats.optional_string("password"),
        token=nats.optional_string("token"),
        nodes_number=nats.optional_integer("nodes_number"),
    )


def _parse_cluster_health(health: Section) -> ClusterHealthConfig:
    """
    C{adapter.cluster_health}: node heartbeats.
    """
    return ClusterHealthConfig(
        enabled=health.boolean("enabled"),
        heartbeat_interval_ms=health.integer("heartbeat_interval_ms", minimum=1),
        node_timeout_ms=health.integer("node_timeout_ms", minimum=1),
        cleanup_interval_ms=health.integer("cleanup_interval_ms", minimum=1),
    )


def parse_global_limits(top: Section) -> tuple[dict[str, int], int]:
    """
    C{channel_limits}, C{event_limits} and C{presence}: the defaults of the
    apps' C{max_*} fields (field name to value, for those set), and the
    cache channels' TTL.
    """
    sections = {name: top.section(name) for name in ("channel_limits", "event_limits", "presence")}
    limit_defaults: dict[str, int] = {}
    for section_name, key, field in GLOBAL_APP_LIMITS:
        limit = sections[section_name].optional_integer(key)
        if limit is not None:
            limit_defaults[field] = limit
    channel_cache_ttl = sections["channel_limits"].integer("cache_ttl", minimum=1)
    for s in sections.values():
        s.finish()
    return limit_defaults, channel_cache_ttl


def parse_app_manager(
    top: Section, warnings: list[str], limit_defaults: Mapping[str, int]
) -> AppManagerConfig:
    """
    C{app_manager}: the driver (only C{memory}) and its list of apps.
    """
    manager = top.section("app_manager")
    array = manager.section("array")
    apps_raw = array.raw("apps")
    if apps_raw is None:
        apps_raw = []
    if not isinstance(apps_raw, list):
        raise ConfigError(f"app_manager.array.apps: expected a list, got {describe(apps_raw)}")
    apps = tuple(
        parse_app(a, f"app_manager.array.apps[{i}]", warnings, limit_defaults)
        for i, a in enumerate(apps_raw)
    )
    check_unique_app_ids(apps, "app_manager.array.apps")
    manager_cache = manager.section("cache")
    config = AppManagerConfig(
        driver=manager.choice("driver", APP_MANAGER_DRIVERS),
        apps=apps,
        cache_enabled=manager_cache.boolean("enabled"),
        cache_ttl=manager_cache.integer("ttl"),
    )
    if config.driver == "scylladb":
        refuse_unimplemented("app_manager.driver", config.driver, UNIMPLEMENTED_APP_MANAGER)
    if config.driver == "memory" and config.cache_enabled:
        for key in ("enabled", "ttl"):
            manager_cache.warn_if_present(
                key, "ignored; the memory app manager serves apps from memory, nothing to cache"
            )
    elif config.driver != "memory" and not config.cache_enabled:
        manager_cache.warn(
            "enabled",
            f"false is ignored: the {config.driver} app manager always caches apps (for"
            " app_manager.cache.ttl seconds) so that connections and triggers never wait on"
            " the database for a known app",
        )
    if config.cache_ttl < 1 and config.driver != "memory":
        raise ConfigError("app_manager.cache.ttl: expected at least 1 second")
    for s in (array, manager_cache, manager):
        s.finish()
    return config


def parse_cache(top: Section) -> CacheConfig:
    """
    C{cache}: the store behind cache channels (C{memory} or C{redis}).
    """
    cache = top.section("cache")
    cache_redis = cache.section("redis")
    cache_memory = cache.section("memory")
    config = CacheConfig(
        driver=cache.choice("driver", CACHE_DRIVERS),
        redis_prefix=cache_redis.string("prefix"),
        redis_url_override=cache_redis.optional_string("url_override"),
        memory_ttl=cache_memory.integer("ttl"),
        memory_cleanup_interval=cache_memory.integer("cleanup_interval"),
        memory_max_capacity=cache_memory.integer("max_capacity"),
    )
    refuse_cluster_mode(cache_redis)
    check_redis_url(config.redis_url_override, "cache.redis.url_override")
    if config.driver == "redis-cluster":
        refuse_unimplemented("cache.driver", config.driver, UNIMPLEMENTED_CACHE)
    if config.driver == "none":
        cache.warn("driver", '"none" keeps the memory cache, as Sockudo does')
    cache_memory.warn_if_present("ttl")
    cache_memory.warn_if_present("cleanup_interval")
    cache_memory.warn_if_present("max_capacity")
    for s in (cache_redis, cache_memory, cache):
        s.finish()
    return config


def parse_queue(top: Section) -> QueueConfig:
    """
    C{queue}: the webhook job queue.
    """
    from sockudo_tw.queues import validate_queue_driver

    queue = top.section("queue")
    queue_redis = queue.section("redis")
    queue_cluster = queue.section("redis_cluster")
    config = QueueConfig(
        driver=queue.choice("driver", QUEUE_DRIVERS),
        redis_concurrency=queue_redis.integer("concurrency", minimum=1),
        redis_prefix=queue_redis.string("prefix"),
        redis_url_override=queue_redis.optional_string("url_override"),
        redis_cluster_nodes=queue_cluster.strings("nodes"),
        redis_cluster_concurrency=queue_cluster.integer("concurrency", minimum=1),
        redis_cluster_prefix=queue_cluster.string("prefix"),
        sqs=_parse_sqs(queue.section("sqs")),
    )
    refuse_cluster_mode(queue_redis)
    check_redis_url(config.redis_url_override, "queue.redis.url_override")
    queue_cluster.ignore("request_timeout_ms")
    for s in (queue_redis, queue_cluster, queue):
        s.finish()
    check_registered(validate_queue_driver, config.driver)
    return config


def _parse_sqs(sqs: Section) -> SqsConfig:
    """
    C{queue.sqs}: the SQS webhook queue.
    """
    config = SqsConfig(
        region=sqs.string("region"),
        queue_url_prefix=sqs.optional_string("queue_url_prefix"),
        visibility_timeout=sqs.integer("visibility_timeout", minimum=1, maximum=43200),
        endpoint_url=sqs.optional_string("endpoint_url"),
        max_messages=sqs.integer("max_messages", minimum=1, maximum=10),
        wait_time_seconds=sqs.integer("wait_time_seconds", minimum=0, maximum=20),
        concurrency=sqs.integer("concurrency", minimum=1, maximum=100),
        fifo=sqs.boolean("fifo"),
        message_group_id=sqs.string("message_group_id"),
    )
    sqs.finish()
    return config


def _parse_rate_limit(limiter: Section, key: str) -> RateLimit:
    """
    One limit of C{rate_limiter} (C{api_rate_limit}, C{websocket_rate_limit}).
    """
    s = limiter.section(key)
    result = RateLimit(
        max_requests=s.integer("max_requests"),
        window_seconds=s.integer("window_seconds", minimum=1),
        identifier=s.string("identifier"),
        trust_hops=s.integer("trust_hops"),
    )
    s.finish()
    return result


def parse_rate_limiter(top: Section) -> RateLimiterConfig:
    """
    C{rate_limiter}: limits on the HTTP API and WebSocket connects.
    """
    limiter = top.section("rate_limiter")
    limiter_redis = limiter.section("redis")
    config = RateLimiterConfig(
        enabled=limiter.boolean("enabled"),
        driver=limiter.choice("driver", CACHE_DRIVERS),
        api_rate_limit=_parse_rate_limit(limiter, "api_rate_limit"),
        websocket_rate_limit=_parse_rate_limit(limiter, "websocket_rate_limit"),
        redis_prefix=limiter_redis.string("prefix"),
        redis_url_override=limiter_redis.optional_string("url_override"),
    )
    refuse_cluster_mode(limiter_redis)
    check_redis_url(config.redis_url_override, "rate_limiter.redis.url_override")
    if config.enabled and config.driver == "redis-cluster":
        refuse_unimplemented("rate_limiter.driver", config.driver, UNIMPLEMENTED_RATE_LIMITER)
    if config.enabled and config.driver == "none":
        limiter.warn("driver", '"none" keeps the memory limiter, as Sockudo does')
    for s in (limiter_redis, limiter):
        s.finish()
    return config


def parse_metrics(top: Section) -> MetricsConfig:
    """
    C{metrics}: the Prometheus listener.
    """
    metrics = top.section("metrics")
    prometheus = metrics.section("prometheus")
    config = MetricsConfig(
        enabled=metrics.boolean("enabled"),
        driver=metrics.choice("driver", METRICS_DRIVERS),
        host=metrics.string("host"),
        port=metrics.integer("port", **_PORT_RANGE),
        prefix=prometheus.string("prefix"),
    )
    for s in (prometheus, metrics):
        s.finish()
    return config


def parse_ssl(top: Section) -> SslConfig:
    """
    C{ssl}: TLS on the main listener; an enabled one needs readable files.
    """
    ssl = top.section("ssl")
    config = SslConfig(
        enabled=ssl.boolean("enabled"),
        cert_path=ssl.string("cert_path"),
        key_path=ssl.string("key_path"),
        redirect_http=ssl.boolean("redirect_http"),
        http_port=ssl.integer("http_port", **_PORT_RANGE),
    )
    ssl.warn_if_present("passphrase")
    ssl.warn_if_present("ca_path")
    ssl.finish()
    if config.enabled:
        check_readable(config.cert_path, "ssl.cert_path")
        check_readable(config.key_path, "ssl.key_path")
    return config


def parse_cors(top: Section) -> CorsConfig:
    """
    C{cors}: the HTTP API's CORS headers.
    """
    cors = top.section("cors")
    config = CorsConfig(
        credentials=cors.boolean("credentials"),
        origin=cors.strings("origin"),
        methods=cors.strings("methods"),
        allowed_headers=cors.strings("allowed_headers"),
    )
    cors.finish()
    return config


def parse_unix_socket(top: Section) -> UnixSocketConfig:
    """
    C{unix_socket}: listening on a Unix socket instead of TCP.
    """
    unix = top.section("unix_socket")
    mode_raw = unix.raw("permission_mode")
    config = UnixSocketConfig(
        enabled=unix.boolean("enabled"),
        path=unix.string("path"),
        permission_mode=(
            KEY_TABLE["unix_socket.permission_mode"].default
            if mode_raw is None
            else parse_permission_mode(mode_raw, "unix_socket.permission_mode")
        ),
    )
    unix.finish()
    if config.enabled:
        check_unix_socket_path(config.path)
    return config


def parse_webhooks(top: Section) -> WebhooksConfig:
    """
    C{webhooks.batching}.
    """
    webhooks = top.section("webhooks")
    batching = webhooks.section("batching")
    config = WebhooksConfig(
        batching_enabled=batching.boolean("enabled"),
        batching_duration_ms=batching.integer("duration", minimum=1),
    )
    for s in (batching, webhooks):
        s.finish()
    return config


@attrs.frozen
class Databases:
    """
    The C{database} section and C{database_pooling}, parsed.
    """

    redis: DatabaseRedisConfig
    mysql: SqlDatabaseConfig
    postgres: SqlDatabaseConfig
    dynamodb: DynamoDbConfig
    cluster_nodes: tuple[str, ...] = ()


def parse_database(top: Section, app_cache_ttl: int = 300) -> Databases:
    """
    C{database}: the default Redis server and the app managers' databases
    (C{database_pooling} gives the SQL pools' default bounds).
    """
    database = top.section("database")
    dredis = database.section("redis")
    redis = DatabaseRedisConfig(
        host=dredis.string("host"),
        port=dredis.integer("port", **_PORT_RANGE),
        db=dredis.integer("db"),
        username=dredis.optional_string("username"),
        password=dredis.optional_string("password"),
        key_prefix=dredis.string("key_prefix"),
    )
    dredis.warn_if_present("key_prefix")
    if dredis.raw("sentinels"):
        dredis.warn("sentinels")
    for key in ("sentinel_password", "name"):
        dredis.warn_if_present(key)
    cluster_nodes = _cluster_nodes(dredis.raw("cluster_nodes"))
    check_redis_url(redis.url, "database.redis")
    dredis.finish()
    pooling = top.section("database_pooling")
    pool_bounds = (pooling.integer("min", minimum=1), pooling.integer("max", minimum=1))
    if not pooling.boolean("enabled"):
        pool_bounds = (1, 1)
    pooling.finish()
    mysql = _parse_sql(database.section("mysql"), pool_bounds, app_cache_ttl)
    postgres = _parse_sql(database.section("postgres"), pool_bounds, app_cache_ttl)
    dynamo = database.section("dynamodb")
    dynamodb = DynamoDbConfig(
        region=dynamo.string("region"),
        table_name=dynamo.string("table_name"),
        endpoint_url=dynamo.optional_string("endpoint_url"),
        aws_access_key_id=dynamo.optional_string("aws_access_key_id"),
        aws_secret_access_key=dynamo.optional_string("aws_secret_access_key"),
        aws_profile_name=dynamo.optional_string("aws_profile_name"),
    )
    dynamo.finish()
    database.ignore("scylladb")
    database.finish()
    return Databases(redis, mysql, postgres, dynamodb, cluster_nodes)


def _cluster_nodes(raw: object) -> tuple[str, ...]:
    """
    C{database.redis.cluster_nodes} (Sockudo's fallback seeds of the
    C{redis-cluster} adapter): objects C{{host, port=7000}} (C{host} may be
    a C{redis://} or C{rediss://} URL) or plain C{host:port} strings.
    """
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"database.redis.cluster_nodes: expected a list, got {describe(raw)}")
    nodes = []
    for i, node in enumerate(raw):
        path = f"database.redis.cluster_nodes[{i}]"
        if isinstance(node, str) and node:
            nodes.append(node)
            continue
        if not isinstance(node, Mapping) or not isinstance(node.get("host"), str):
            raise ConfigError(f"{path}: expected {{host, port}}, got {describe(node)}")
        host, port = node["host"], node.get("port", 7000)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError(f"{path}.port: expected a port number, got {describe(port)}")
        nodes.append(f"{host}:{port}" if "://" not in host else f"{host.rstrip('/')}:{port}")
    return tuple(nodes)


def _parse_sql(sql: Section, pool_bounds: tuple[int, int], app_cache_ttl: int) -> SqlDatabaseConfig:
    """
    C{database.mysql} or C{database.postgres}: the pool is bounded by its
    own C{pool_min}/C{pool_max} (C{connection_pool_size} sets the upper
    bound too), else by C{database_pooling}.
    """
    pool_min = sql.optional_integer("pool_min")
    pool_max = sql.optional_integer("pool_max")
    size = sql.optional_integer("connection_pool_size")
    if pool_max is None:
        pool_max = size if size is not None else pool_bounds[1]
    if pool_min is None:
        pool_min = min(pool_bounds[0], pool_max)
    if not 1 <= pool_min <= pool_max:
        raise ConfigError(
            f"{sql.path_of('pool_min')}: expected 1 <= pool_min <= pool_max,"
            f" got {pool_min} and {pool_max}"
        )
    table = sql.string("table_name")
    if not table or not all(c.isalnum() or c == "_" for c in table):
        raise ConfigError(
            f"{sql.path_of('table_name')}: expected letters, digits and _, got {table!r}"
        )
    config = SqlDatabaseConfig(
        host=sql.string("host"),
        port=sql.integer("port", **_PORT_RANGE),
        username=sql.string("username"),
        password=sql.string("password"),
        database=sql.string("database"),
        table_name=table,
        pool_min=pool_min,
        pool_max=pool_max,
    )
    # Sockudo's per-database cache settings: harmless at the values that
    # match what the app store does, warned about otherwise.
    for key, harmless in (
        ("cache_ttl", app_cache_ttl),
        ("cache_cleanup_interval", 60),
        ("cache_max_capacity", 100),
    ):
        value = sql.optional_integer(key)
        if value is not None and value != harmless:
            sql.warn(key)
    sql.finish()
    return config


def parse_logging(top: Section) -> LoggingConfig:
    """
    C{logging}: the log line format.
    """
    logging = top.section("logging")
    config = LoggingConfig(
        output_format=logging.choice("output_format", LOG_FORMATS),
        colors_enabled=logging.boolean("colors_enabled"),
        include_target=logging.boolean("include_target"),
    )
    if config.colors_enabled and logging.present("colors_enabled"):
        logging.warn("colors_enabled")
    if not config.include_target:
        logging.warn("include_target")
    logging.finish()
    return config


def parse_websocket_limits(top: Section) -> WebSocketLimitsConfig:
    """
    C{websocket_limits} (ours): bounds on each WebSocket connection.
    """
    ws_limits = top.section("websocket_limits")
    config = WebSocketLimitsConfig(
        max_subscriptions=ws_limits.integer("max_subscriptions"),
        messages_per_second=ws_limits.integer("messages_per_second"),
        message_burst=ws_limits.integer("message_burst"),
    )
    ws_limits.finish()
    check_websocket_limits(config)
    return config


def parse_http_api(top: Section) -> HttpLimits:
    """
    C{http_api}: the bounds of the HTTP edge.
    """
    http_api = top.section("http_api")
    config = HttpLimits(
        request_limit_in_mb=http_api.integer("request_limit_in_mb", minimum=1),
        max_header_bytes=http_api.integer("max_header_bytes", minimum=1024),
        max_headers=http_api.integer("max_headers", minimum=8),
        header_timeout_seconds=http_api.integer("header_timeout_seconds", minimum=1),
        body_timeout_seconds=http_api.integer("body_timeout_seconds", minimum=1),
        idle_timeout_seconds=http_api.integer("idle_timeout_seconds", minimum=1),
        usage_enabled=http_api.boolean("usage_enabled"),
    )
    http_api.finish()
    return config


def parse_console(top: Section, ssl_enabled: bool) -> ConsoleConfig:
    """
    C{console} (ours): the live debug console's listener and credentials.
    Enabling it without both credentials is refused: the console is never
    served unauthenticated. A listener off loopback without TLS is warned
    about (Basic credentials would cross the network in clear); with
    C{ssl_enabled} the console listener uses the main listener's TLS files.
    """
    console = top.section("console")
    config = ConsoleConfig(
        enabled=console.boolean("enabled"),
        host=console.string("host"),
        port=console.integer("port", **_PORT_RANGE),
        username=console.string("username"),
        password=console.string("password"),
    )
    console.finish()
    if not config.enabled:
        return config
    if not config.username or not config.password:
        raise ConfigError(
            "console.enabled: true needs console.username and console.password"
            " (the console is never served without authentication)"
        )
    if ":" in config.username:
        raise ConfigError("console.username: must not contain ':' (HTTP Basic)")
    if config.host not in ("127.0.0.1", "::1", "localhost") and not ssl_enabled:
        console.warn(
            "host",
            f"{config.host!r} is not loopback and ssl is off: console passwords"
            " cross the network in clear; put TLS in front of it",
        )
    return config


def parse_instance(top: Section) -> str | None:
    """
    C{instance.process_id}: read, and warned about (nothing uses it).
    """
    instance = top.section("instance")
    process_id = instance.optional_string("process_id")
    instance.warn_if_present("process_id")
    instance.finish()
    return process_id


def parse_webhook(value: object, path: str, warnings: list[str]) -> WebhookTarget:
    """
    One entry of an app's C{webhooks} list (sockudo-reference.md 5.8).
    """
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: expected an object, got {describe(value)}")
    s = Section(value, path, warnings)
    url = s.optional_string("url")
    lambda_function = s.optional_string("lambda_function")
    lam = s.raw("lambda")
    lambda_config: dict[str, str] | None = None
    if lam is not None:
        if not isinstance(lam, Mapping) or not all(isinstance(v, str) for v in lam.values()):
            raise ConfigError(f"{path}.lambda: expected an object of strings, got {describe(lam)}")
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
                f"{path}.headers: expected an object of strings, got {describe(headers_raw)}"
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


def parse_app(
    value: object, path: str, warnings: list[str], limits: Mapping[str, int] | None = None
) -> App:
    """
    One app object (sockudo-reference.md 4.4). Numbers may be numeric
    strings; a null or absent limit takes the global section's value from
    C{limits} (field name to value), else L{App}'s default.
    """
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: expected an app object, got {describe(value)}")
    s = Section(value, path, warnings)
    fields: dict[str, Any] = {}
    for name in ("id", "key", "secret"):
        raw = s.raw(name)
        if isinstance(raw, int) and not isinstance(raw, bool) and name == "id":
            raw = str(raw)
        if not isinstance(raw, str) or not raw:
            raise ConfigError(f"{path}.{name}: expected a non-empty string, got {describe(raw)}")
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
        raise ConfigError(f"{path}.webhooks: expected a list, got {describe(hooks)}")
    fields["webhooks"] = tuple(
        parse_webhook(h, f"{path}.webhooks[{i}]", warnings) for i, h in enumerate(hooks)
    )
    s.finish()
    return App(**fields)
