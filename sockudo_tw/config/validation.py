# -*- test-case-name: tests.test_config -*-
"""
Cross-field checks and refusals: the rules that look at more than one
value, at the file system, or at what sockudo-tw does not implement.

Each raises L{ConfigError} naming the key and saying why, so that the
daemon stops before any port is bound rather than run in a way the
operator did not ask for (no silent fallbacks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sockudo_tw.config.reader import Section
from sockudo_tw.config.schema import (
    ClusterHealthConfig,
    ConfigError,
    ServerConfig,
    WebSocketLimitsConfig,
)
from sockudo_tw.pusher.app import App
from sockudo_tw.redisurl import parse_redis_url

# Drivers Sockudo has that sockudo-tw does not implement yet, and why
# running without them would be wrong (so they are refused, never replaced).
UNIMPLEMENTED_APP_MANAGER = (
    "apps would not be loaded and every client and request would be refused;"
    ' use "memory" with app_manager.array.apps (or SOCKUDO_DEFAULT_APP_*)'
)
UNIMPLEMENTED_CACHE = (
    'cache channels would only remember events published through this node; use "redis"'
    ' (one Redis server shared by the nodes) or "memory"'
)
UNIMPLEMENTED_RATE_LIMITER = (
    "each node would count only its own requests, multiplying the limit;"
    ' use "redis" (one Redis server or primary for every node), "memory"'
    " (per-node limits) or set rate_limiter.enabled to false"
)
CLUSTER_MODE = "Redis Cluster is not supported; use a single Redis server or primary"


def refuse_unimplemented(key: str, driver: str, reason: str) -> None:
    """
    Refuse driver C{driver}, selected at C{key}, that sockudo-tw does not
    implement; C{reason} says what running without it would break.
    """
    raise ConfigError(
        f"{key}: {driver!r} is refused: sockudo-tw does not implement it yet,"
        f" and without it {reason}"
    )


def check_registered(validate: Callable[[str], None], driver: str) -> None:
    """
    Ask a driver registry's C{validate} about C{driver}; its C{ValueError}
    (which names the key) becomes a L{ConfigError}.
    """
    try:
        validate(driver)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_redis_url(url: str | None, key: str) -> None:
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


def refuse_cluster_mode(section: Section) -> None:
    """
    C{cluster_mode: true} is refused wherever it appears.
    """
    if section.boolean("cluster_mode", False):
        raise ConfigError(f"{section.path_of('cluster_mode')}: true is refused: {CLUSTER_MODE}")


def check_cluster_health(driver: str, health: ClusterHealthConfig) -> None:
    """
    The Redis adapter needs heartbeats, and their intervals must fit in
    the node timeout.
    """
    if driver in ("redis", "redis-cluster", "nats") and not health.enabled:
        raise ConfigError(
            f"adapter.cluster_health.enabled: false is refused with adapter.driver {driver!r}:"
            " heartbeats are how a dead node's connections and presence members are removed"
        )
    if health.heartbeat_interval_ms * 3 > health.node_timeout_ms:
        raise ConfigError(
            "adapter.cluster_health.heartbeat_interval_ms: expected at most a third of"
            f" node_timeout_ms ({health.node_timeout_ms}), got {health.heartbeat_interval_ms}"
        )
    if health.cleanup_interval_ms > health.node_timeout_ms:
        raise ConfigError(
            "adapter.cluster_health.cleanup_interval_ms: expected at most node_timeout_ms"
            f" ({health.node_timeout_ms}), got {health.cleanup_interval_ms}"
        )


def check_unique_app_ids(apps: Sequence[App], path: str) -> None:
    """
    No two apps of the list at C{path} share an id.
    """
    seen: set[str] = set()
    for i, app in enumerate(apps):
        if app.id in seen:
            raise ConfigError(f"{path}[{i}].id: duplicate app id {app.id!r}")
        seen.add(app.id)


def check_readable(path: str, key: str) -> None:
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


def check_unix_socket_path(path: str) -> None:
    """
    An enabled Unix socket needs an absolute path without C{..}.
    """
    if not path.startswith("/") or "/../" in path + "/" or path.endswith("/"):
        raise ConfigError(
            f"unix_socket.path: expected an absolute socket path without '..', got {path!r}"
        )


def check_websocket_limits(limits: WebSocketLimitsConfig) -> None:
    """
    With a message rate limit, the burst must let a reconnecting client
    re-subscribe every channel at once.
    """
    if limits.messages_per_second and limits.message_burst <= limits.max_subscriptions:
        raise ConfigError(
            "websocket_limits.message_burst: must be above websocket_limits.max_subscriptions "
            f"({limits.message_burst} <= {limits.max_subscriptions}): "
            "pusher-js re-subscribes every channel at once when it reconnects"
        )


def refuse_path_prefix(path_prefix: str | None) -> None:
    """
    Routes are served at the root; a prefix would move them silently.
    """
    if path_prefix not in (None, "", "/"):
        raise ConfigError(
            f"path_prefix: {path_prefix!r} is refused: routes are served at the root"
            " (/app/{key}, /apps/{id}/...); strip the prefix in the reverse proxy instead"
        )


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
