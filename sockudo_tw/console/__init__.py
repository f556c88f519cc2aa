# -*- test-case-name: tests.test_console -*-
"""
The live debug console (ours, not Sockudo's): an operator page on its own
listener (C{console.host:console.port}, 127.0.0.1:9602 by default), off
unless C{console.enabled}, always behind HTTP Basic authentication with
C{console.username}/C{console.password} (a config enabling it without both
is refused), over TLS when C{ssl.enabled} (the main listener's files).

Per app it shows the open connections and occupied channels, a live tail
(API publishes, client events, subscribes and unsubscribes, connections
opened and closed, occupied/vacated, members, webhook requests with status
and latency) filtered by channel and event name, and a form that triggers
an event through the HTTP API's own path.

L{build_console} gives the composition root a L{ConsoleParts} whose hooks
are identities when the console is off; when it is on and nobody watches,
each hook costs one flag test (L{ConsoleFeed.watching}).

Cluster-wide: counts are the adapter's (cluster-wide with the Redis
adapter); with C{adapter.driver: redis} the tail also shows the other
nodes' records, relayed through the adapter's Redis server only while some
node has a viewer (L{ConsoleRelay}). With C{workers} > 1 the console is
refused (each worker would bind the console port).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.application.service import IService
from twisted.internet.interfaces import IProtocolFactory

from sockudo_tw.adapters import IAdapter
from sockudo_tw.appstores import IAppStore
from sockudo_tw.caches import IChannelCache
from sockudo_tw.config.schema import ConfigError, ServerConfig
from sockudo_tw.console.feed import ConsoleFeed, Record, Viewer, ViewerFilter
from sockudo_tw.console.relay import ConsoleRelay
from sockudo_tw.console.site import (
    BasicAuthGuard,
    ConsoleSite,
    ConsoleTrigger,
    console_root,
    page_html,
)
from sockudo_tw.console.watch import (
    ApiTriggerWatch,
    ConsoleObserver,
    ConsoleTee,
    WebhookPostWatch,
)
from sockudo_tw.hooks import IPusherEvents
from sockudo_tw.webhooks import HTTPPoster

__all__ = [
    "ApiTriggerWatch",
    "BasicAuthGuard",
    "ConsoleFeed",
    "ConsoleObserver",
    "ConsoleParts",
    "ConsoleRelay",
    "ConsoleSite",
    "ConsoleTee",
    "ConsoleTrigger",
    "Record",
    "Viewer",
    "ViewerFilter",
    "WebhookPostWatch",
    "build_console",
    "console_listener",
    "console_root",
    "page_html",
]

Listener = tuple[str, str, str, IProtocolFactory]


def _same(value: Any) -> Any:
    return value


@attrs.frozen
class ConsoleParts:
    """
    The console as the composition root wires it; every hook is the
    identity when the console is off.

    @ivar observe: wraps the daemon's L{IPusherEvents} observer.
    @ivar watch_api: wraps the adapter the HTTP API publishes through.
    @ivar watch_posts: wraps the webhook sender's HTTP client (L{None}:
        leave it alone).
    @ivar listeners: (what, strports description, URL path, factory) of the
        console's listener, if on.
    @ivar feed: the viewers and their queues, if on.
    @ivar services: to start and stop with the daemon (the cluster relay
        with C{adapter.driver: redis}).
    """

    observe: Callable[[IPusherEvents], IPusherEvents] = _same
    watch_api: Callable[[IAdapter], IAdapter] = _same
    watch_posts: Callable[[HTTPPoster], HTTPPoster] | None = None
    listeners: Sequence[Listener] = ()
    feed: ConsoleFeed | None = None
    services: Sequence[IService] = ()


def console_listener(config: ServerConfig) -> str:
    """
    The console's strports description: TLS with the main listener's
    files when C{ssl.enabled}, else plain TCP.
    """
    from sockudo_tw.service import escape_strport

    interface = escape_strport(config.console.host)
    if config.ssl.enabled:
        return (
            f"ssl:{config.console.port}:interface={interface}"
            f":privateKey={escape_strport(config.ssl.key_path)}"
            f":certKey={escape_strport(config.ssl.cert_path)}"
        )
    return f"tcp:{config.console.port}:interface={interface}"


def build_console(
    config: ServerConfig,
    reactor: Any,
    app_store: IAppStore,
    adapter: IAdapter,
    cache: IChannelCache,
    rate_limiter: Any = None,
) -> ConsoleParts:
    """
    The console C{config.console} asks for (nothing when it is off).

    @param adapter: the daemon's adapter (counts, and the console's
        triggers, which go through an HTTP API of their own on it).
    @param rate_limiter: the daemon's limiter, so the console's triggers
        count against the same limits (a Redis one included); by default
        one of the console's own.

    @raise ConfigError: with C{workers} > 1, or without credentials.
    """
    settings = config.console
    if not settings.enabled:
        return ConsoleParts()
    if not settings.username or not settings.password:
        raise ConfigError("console.enabled: true needs console.username and console.password")
    if config.workers > 1:
        raise ConfigError(
            "console.enabled: not available with workers > 1 yet (every worker would bind"
            " console.port); run the console on a single-process node"
        )
    from sockudo_tw.api import PusherApi
    from sockudo_tw.ratelimit import build_rate_limiter

    feed = ConsoleFeed(reactor)
    observer = ConsoleObserver(feed)
    api = PusherApi(
        clock=reactor,
        app_store=app_store,
        adapter=ApiTriggerWatch(adapter, feed),
        cache=cache,
        rate_limiter=rate_limiter
        if rate_limiter is not None
        else build_rate_limiter(config, reactor),
        request_limit_in_mb=config.http_api_request_limit_in_mb,
    )
    root = console_root(
        feed,
        app_store,
        adapter,
        ConsoleTrigger(api, app_store, reactor),
        [app.id for app in config.app_manager.apps],
        settings.username,
        settings.password,
    )
    site = ConsoleSite(root, timeout=60)  # type: ignore[no-untyped-call]
    site.displayTracebacks = False
    site.noisy = False
    listener: Listener = ("Debug console", console_listener(config), "/", site)
    services: list[IService] = []
    if config.adapter.driver == "redis":
        services.append(_cluster_relay(config, reactor, feed))
    return ConsoleParts(
        observe=lambda inner: ConsoleTee(inner, observer),
        watch_api=lambda inner: ApiTriggerWatch(inner, feed),
        watch_posts=lambda http: WebhookPostWatch(http, feed, reactor),
        listeners=(listener,),
        feed=feed,
        services=services,
    )


def _cluster_relay(config: ServerConfig, reactor: Any, feed: ConsoleFeed) -> ConsoleRelay:
    """
    The relay of console records between the nodes of a Redis cluster, on
    a connection of its own to the adapter's Redis server.
    """
    from sockudo_tw.adapters._redis_link import RedisLink
    from sockudo_tw.redisurl import parse_redis_url

    address = parse_redis_url(config.adapter.redis_url or config.database_redis.url)
    prefix = config.adapter.redis_prefix
    relay = ConsoleRelay(reactor, feed, prefix, uuid.uuid4().hex[:12])
    relay.link = RedisLink(
        reactor,
        address.endpoint(reactor, timeout=5),
        f"{prefix}console".encode(),
        relay.received,
        password=address.password,
        username=address.username,
        db=address.db,
    )
    return relay
