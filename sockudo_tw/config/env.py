# -*- test-case-name: tests.test_config -*-
"""
The environment: Sockudo's variables (sockudo-reference.md section 4.3)
laid over the file's tree, the default app built from
C{SOCKUDO_DEFAULT_APP_*}, and the variables that are only warned about.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sockudo_tw.config.reader import FALSE_WORDS, TRUE_WORDS
from sockudo_tw.config.schema import DEFAULT_APP_FLAGS, DEFAULT_APP_NUMBERS, ConfigError
from sockudo_tw.pusher.app import App, valid_app_id

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
    *(
        (f"DATABASE_{db.upper()}_{name.upper()}", ("database", db, name), kind)
        for db in ("mysql", "postgres")
        for name, kind in (
            ("host", "str"),
            ("port", "int"),
            ("username", "str"),
            ("password", "str"),
            ("database", "str"),
            ("table_name", "str"),
            ("pool_min", "int"),
            ("pool_max", "int"),
        )
    ),
    ("DATABASE_CONNECTION_POOL_SIZE", ("database", "mysql", "connection_pool_size"), "int"),
    ("DATABASE_CONNECTION_POOL_SIZE", ("database", "postgres", "connection_pool_size"), "int"),
    ("DATABASE_POOLING_ENABLED", ("database_pooling", "enabled"), "bool"),
    ("DATABASE_POOL_MIN", ("database_pooling", "min"), "int"),
    ("DATABASE_POOL_MAX", ("database_pooling", "max"), "int"),
    ("DATABASE_DYNAMODB_REGION", ("database", "dynamodb", "region"), "str"),
    ("DATABASE_DYNAMODB_TABLE_NAME", ("database", "dynamodb", "table_name"), "str"),
    ("DATABASE_DYNAMODB_ENDPOINT_URL", ("database", "dynamodb", "endpoint_url"), "str"),
    ("AWS_ACCESS_KEY_ID", ("database", "dynamodb", "aws_access_key_id"), "str"),
    ("AWS_SECRET_ACCESS_KEY", ("database", "dynamodb", "aws_secret_access_key"), "str"),
    ("QUEUE_SQS_REGION", ("queue", "sqs", "region"), "str"),
    ("QUEUE_SQS_QUEUE_URL_PREFIX", ("queue", "sqs", "queue_url_prefix"), "str"),
    ("QUEUE_SQS_VISIBILITY_TIMEOUT", ("queue", "sqs", "visibility_timeout"), "int"),
    ("QUEUE_SQS_MAX_MESSAGES", ("queue", "sqs", "max_messages"), "int"),
    ("QUEUE_SQS_WAIT_TIME_SECONDS", ("queue", "sqs", "wait_time_seconds"), "int"),
    ("QUEUE_SQS_CONCURRENCY", ("queue", "sqs", "concurrency"), "int"),
    ("QUEUE_SQS_FIFO", ("queue", "sqs", "fifo"), "bool"),
    ("QUEUE_SQS_MESSAGE_GROUP_ID", ("queue", "sqs", "message_group_id"), "str"),
    ("QUEUE_SQS_ENDPOINT_URL", ("queue", "sqs", "endpoint_url"), "str"),
    ("HTTP_API_USAGE_ENABLED", ("http_api", "usage_enabled"), "bool"),
    ("REDIS_CLUSTER_NODES", ("adapter", "cluster", "nodes"), "list"),
    ("NATS_SERVERS", ("adapter", "nats", "servers"), "list"),
    ("NATS_USERNAME", ("adapter", "nats", "username"), "str"),
    ("NATS_PASSWORD", ("adapter", "nats", "password"), "str"),
    ("NATS_TOKEN", ("adapter", "nats", "token"), "str"),
    ("NATS_CONNECTION_TIMEOUT_MS", ("adapter", "nats", "connection_timeout_ms"), "int"),
    ("NATS_REQUEST_TIMEOUT_MS", ("adapter", "nats", "request_timeout_ms"), "int"),
    ("NATS_NODES_NUMBER", ("adapter", "nats", "nodes_number"), "int"),
    ("SOCKUDO_CONSOLE_ENABLED", ("console", "enabled"), "bool"),
    ("SOCKUDO_CONSOLE_HOST", ("console", "host"), "str"),
    ("SOCKUDO_CONSOLE_PORT", ("console", "port"), "int"),
    ("SOCKUDO_CONSOLE_USERNAME", ("console", "username"), "str"),
    ("SOCKUDO_CONSOLE_PASSWORD", ("console", "password"), "str"),
)

# Sockudo's variables for drivers sockudo-tw does not implement (all refused
# when selected): set, they are ignored with a warning naming them.
_ENV_OF_UNIMPLEMENTED: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        'queue.driver "redis-cluster"',
        ("REDIS_CLUSTER_QUEUE_CONCURRENCY", "REDIS_CLUSTER_QUEUE_PREFIX"),
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


def env_warnings(env: Mapping[str, str]) -> list[str]:
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
    names.update(f"SOCKUDO_DEFAULT_APP_{name.upper()}" for name in DEFAULT_APP_NUMBERS)
    names.update(f"SOCKUDO_DEFAULT_APP_{name.upper()}" for name in DEFAULT_APP_FLAGS)
    names.update(
        f"SOCKUDO_DEFAULT_APP_{part}"
        for part in ("ID", "KEY", "SECRET", "ENABLED", "ALLOWED_ORIGINS", "ENABLE_CLIENT_MESSAGES")
    )
    names.add("SOCKUDO_ENABLE_CLIENT_MESSAGES")
    return frozenset(names)


def env_bool(env: Mapping[str, str], name: str) -> bool | None:
    """
    The boolean environment variable C{name} (true/1/yes/on, false/0/no/off),
    or L{None} when unset or empty.
    """
    value = env.get(name, "").strip().lower()
    if not value:
        return None
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
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


def copy_tree(value: Any) -> Any:
    """
    A deep copy of a JSON tree (so env overrides never touch the caller's).
    """
    if isinstance(value, Mapping):
        return {k: copy_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_tree(v) for v in value]
    return value


def default_app(env: Mapping[str, str], limits: Mapping[str, int] | None = None) -> App:
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
    for name in DEFAULT_APP_NUMBERS:
        value = _env_value(env, f"SOCKUDO_DEFAULT_APP_{name.upper()}", "int")
        if value is not None:
            fields[name] = value
    for name in DEFAULT_APP_FLAGS:
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


def apply_env(tree: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """
    Write every set variable of the table (and C{DEBUG}/C{DEBUG_MODE}) into
    C{tree} at its key path.

    @return: key path to the variable that set it, so that an error or a
        warning about the key can name the variable instead.
    """
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
    return sources
