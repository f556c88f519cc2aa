# -*- test-case-name: tests.test_service -*-
"""
The composition root: the only module that knows every concrete class.

L{make_service} turns a L{ServerConfig} into a L{SockudoService}: app
store, cache, adapter, WebSocket and API resources under one C{Site}, one
listener per strports description, and an ordered graceful shutdown.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import attrs
from klein import Klein
from prometheus_client import CollectorRegistry
from twisted.application import strports
from twisted.application.service import IService, MultiService, Service
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred, DeferredList, TimeoutError, succeed
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IReactorTime
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import Site
from zope.interface import implementer

from sockudo_tw.adapters import IAdapter, build_adapter
from sockudo_tw.appstores import IAppStore, build_app_store
from sockudo_tw.appstores.caching import CachedAppStore
from sockudo_tw.caches import IChannelCache, build_cache
from sockudo_tw.config import ConfigError, RateLimit, ServerConfig
from sockudo_tw.console import build_console
from sockudo_tw.hooks import IPusherEvents
from sockudo_tw.listening import AcceptCeiling, descriptor_ceiling, reporting_endpoint
from sockudo_tw.logs import StartupSummary
from sockudo_tw.metrics import (
    GLOBAL_APP,
    MeteredRateLimiter,
    MeteredResource,
    MetricsObserver,
    PusherMetrics,
    WebhookMetrics,
    channels_by_type,
    metrics_site,
    open_connections,
)
from sockudo_tw.queues import IJobQueue, RedisCommands
from sockudo_tw.ratelimit import IRateLimiter, build_rate_limiter
from sockudo_tw.redisurl import RedisUrl, parse_redis_url
from sockudo_tw.registry import Registry
from sockudo_tw.triggerchannel import Recorder, TriggerChannelFactory
from sockudo_tw.web import (
    HealthResource,
    Lifecycle,
    RedirectToHttps,
    RootResource,
    make_site,
)
from sockudo_tw.webhooks import (
    HTTPPoster,
    IPendingLeaves,
    IWebhookMetrics,
    MemoryPendingLeaves,
    NullWebhookEvents,
    RedisPendingLeaves,
    WebhookEvents,
    WebhookSender,
    WebhookService,
    WebhookSettings,
    validate_webhook_targets,
)
from sockudo_tw.workers import (
    WorkerBeacon,
    WorkerPool,
    WorkerRole,
    WorkersView,
    metrics_socket,
)

if TYPE_CHECKING:
    from sockudo_tw.adapters._redis_link import RedisLink
    from sockudo_tw.api import PusherApi

__all__ = [
    "CloseConnections",
    "SockudoService",
    "WebSocketPart",
    "WebhookParts",
    "build_webhooks",
    "config_listeners",
    "escape_strport",
    "make_service",
    "prepare_unix_socket",
]

CloseConnections = Callable[[int, str], Deferred[None]]
"""
Close every local client with a WebSocket close code and reason; fires
when the close frames are on their way.
"""

Step = Callable[[], Deferred[None]]

_log = Logger(namespace="sockudo_tw.service")

SHUTDOWN_CODE = 4200
SHUTDOWN_REASON = "Server shutting down"


def escape_strport(value: str) -> str:
    """
    Escape C{value} for use inside a strports description (C{:}, C{=} and
    backslash are special there).
    """
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def config_listeners(config: ServerConfig) -> list[str]:
    """
    The strports descriptions of the main listener(s) the config asks for.

    A Unix socket replaces TCP (Sockudo's rule); TLS turns C{tcp:} into
    C{ssl:}. The C{ssl.redirect_http} and metrics listeners are separate
    (see L{make_service}).
    """
    if config.unix_socket.enabled:
        mode = format(config.unix_socket.permission_mode, "o")
        return [f"unix:{escape_strport(config.unix_socket.path)}:mode={mode}:lockfile=1"]
    interface = escape_strport(config.host)
    if config.ssl.enabled:
        cert = escape_strport(config.ssl.cert_path)
        description = (
            f"ssl:{config.port}:interface={interface}"
            f":privateKey={escape_strport(config.ssl.key_path)}:certKey={cert}"
        )
        # strports' certKey loads only the first certificate of the file; a
        # chain file (leaf, then intermediates, as Let's Encrypt's
        # fullchain.pem) also goes to extraCertChain so clients get the
        # intermediates (the leaf is then sent twice, which clients ignore).
        with open(config.ssl.cert_path, "rb") as pem:
            if pem.read().count(b"-----BEGIN CERTIFICATE-----") > 1:
                description += f":extraCertChain={cert}"
        return [description]
    return [f"tcp:{config.port}:interface={interface}"]


@attrs.frozen
class WebSocketPart:
    """
    What the WebSocket side hands the composition root.

    @ivar resource: mounted at C{/app/}.
    @ivar close_connections: the client-closing step of the shutdown.
    @ivar connections: open, accepted connections per app id (read by
        the metrics at scrape time).
    @ivar accept_ceiling: pauses the listeners while the process holds as
        many connections as its open-file limit allows.
    """

    resource: IResource
    close_connections: CloseConnections
    connections: Callable[[], Mapping[str, int]] = dict
    accept_ceiling: AcceptCeiling | None = None


def _websocket_resource(
    config: ServerConfig,
    reactor: Any,
    app_store: IAppStore,
    adapter: IAdapter | None,
    cache: IChannelCache,
    observer: IPusherEvents | None = None,
    metrics: PusherMetrics | None = None,
    limiter: IRateLimiter | None = None,
) -> WebSocketPart:
    """
    Build the C{/app/} WebSocket resource: the Pusher protocol
    (L{sockudo_tw.websocket.PusherFactory}), behind the
    C{rate_limiter.websocket_rate_limit} IP limiter on upgrades when the
    limiter is enabled.
    """
    from sockudo_tw.adapters.local import LocalAdapter
    from sockudo_tw.websocket import PusherFactory

    factory = PusherFactory(
        reactor=reactor,
        app_store=app_store,
        adapter=adapter if adapter is not None else LocalAdapter(),
        cache=cache,
        activity_timeout=config.activity_timeout,
        user_authentication_timeout=config.user_authentication_timeout,
        max_payload_kb=config.websocket_max_payload_kb,
        observer=observer,
        max_subscriptions=config.websocket_limits.max_subscriptions,
        messages_per_second=config.websocket_limits.messages_per_second,
        message_burst=config.websocket_limits.message_burst,
    )
    factory.accept_ceiling = AcceptCeiling(reactor, descriptor_ceiling())
    resource: IResource = factory.websocket_resource()
    if config.rate_limiter.enabled:
        resource = _ip_limited(
            resource,
            limiter if limiter is not None else build_rate_limiter(config, reactor),
            config.rate_limiter.websocket_rate_limit,
            metrics,
            "websocket_upgrade",
        )
    return WebSocketPart(
        resource,
        factory.close_connections,
        lambda: open_connections(factory.protocols),
        factory.accept_ceiling,
    )


def _api_resource(
    config: ServerConfig,
    reactor: Any,
    app_store: IAppStore,
    adapter: IAdapter | None,
    cache: IChannelCache,
    metrics: PusherMetrics | None = None,
    limiter: IRateLimiter | None = None,
) -> tuple[IResource, PusherApi | None]:
    """
    Build the REST API resource: L{sockudo_tw.api.PusherApi} behind the
    C{rate_limiter.api_rate_limit} IP limiter (memory backend) when the
    limiter is enabled, its checks counted in C{metrics} if given. Without
    an adapter there is nothing to deliver through, so it answers 404 until
    the adapter is wired.

    @return: the resource, and the API when triggers may also be served
        without the resource (no IP limiter stands in front of it).
    """
    from sockudo_tw.api import PusherApi

    if adapter is None:
        stub: IResource = Klein().resource()
        return stub, None
    limiter = limiter if limiter is not None else build_rate_limiter(config, reactor)
    api = PusherApi(
        clock=reactor,
        app_store=app_store,
        adapter=adapter,
        cache=cache,
        rate_limiter=limiter,
        request_limit_in_mb=config.http_api_request_limit_in_mb,
        cors_origins=config.cors.origin,
        cors_methods=config.cors.methods,
        cors_headers=config.cors.allowed_headers,
        cors_credentials=config.cors.credentials,
    )
    resource = api.resource()
    if not config.rate_limiter.enabled:
        return resource, api
    limited = _ip_limited(
        resource,
        limiter,
        config.rate_limiter.api_rate_limit,
        metrics,
        "http_api",
    )
    return limited, None


def _ip_limited(
    resource: IResource,
    ip_limiter: IRateLimiter,
    rule: RateLimit,
    metrics: PusherMetrics | None,
    request_context: str,
) -> IResource:
    """
    Wrap C{resource} in a per-client-IP limiter (C{rate_limiter.driver})
    for C{rule}, its checks counted under Sockudo's C{api_rate_limit}
    limiter type.
    """
    from sockudo_tw.ratelimit import RateLimitedResource, RateLimitRule

    if metrics is not None:
        ip_limiter = MeteredRateLimiter(
            ip_limiter, metrics.app(GLOBAL_APP), "api_rate_limit", request_context
        )
    return RateLimitedResource(
        resource,
        ip_limiter,
        RateLimitRule(rule.max_requests, rule.window_seconds, rule.identifier, rule.trust_hops),
    )


@implementer(IPusherEvents)
class _Observers:
    """
    Tells several observers (metrics, webhooks) about every event, in order.
    """

    def __init__(self, *observers: IPusherEvents) -> None:
        self._observers = observers

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name not in IPusherEvents:
            raise AttributeError(name)
        methods = [getattr(observer, name) for observer in self._observers]

        def each(*args: Any) -> None:
            for method in methods:
                method(*args)

        setattr(self, name, each)
        return each


@attrs.frozen
class WebhookParts:
    """
    Webhook delivery as the composition root wires it.

    @ivar events: the sink to report transitions to (a L{NullWebhookEvents}
        when C{queue.driver} is C{none}); it is a full L{IPusherEvents}.
    @ivar service: start with the daemon; stop it after clients are closed
        (it sends held leaves at once), before L{close}.
    @ivar close: closes the Redis connections and the HTTP pool, last.
    """

    events: IPusherEvents
    service: WebhookService | None
    close: Callable[[], Deferred[None]]


class _RedisConnections:
    """
    The webhooks' Redis connections: one L{RedisLink} per server (the Redis
    adapter's client stack), shared by the queue and the held leaves when
    their URLs name the same server.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self.links: dict[RedisUrl, RedisLink] = {}

    def __call__(self, url: str) -> RedisLink:
        from sockudo_tw.adapters._redis_link import RedisLink

        address = parse_redis_url(url)
        link = self.links.get(address)
        if link is None:
            link = self.links[address] = RedisLink(
                self._reactor,
                address.endpoint(self._reactor, timeout=5),
                # Subscribed to, never published on: these links carry
                # commands only.
                b"sockudo-tw#webhooks",
                _no_message,
                password=address.password,
                username=address.username,
                db=address.db,
            )
        return link

    def start(self, wait: bool) -> Deferred[None]:
        """
        Start every link; if C{wait}, fire once each can take commands
        (the Redis queue's consumer starts then), else at once.
        """
        waiting: list[Deferred[None]] = []
        for link in self.links.values():
            up: Deferred[None] = Deferred()
            link.observe_command_ready(partial(_fire_once, up))
            waiting.append(up)
            link.startService()
        if not wait:
            return succeed(None)
        return DeferredList(waiting).addCallback(lambda _: None)

    async def close(self) -> None:
        for link in self.links.values():
            if link.running:
                await link.stopService()


def _fire_once(d: Deferred[None]) -> None:
    if not d.called:
        d.callback(None)


def _no_message(payload: bytes) -> None:
    """
    Nothing is published on the webhooks' links.
    """


def _webhook_backends(
    config: ServerConfig,
    reactor: Any,
    redis: _RedisConnections,
    cluster_redis: RedisCommands | None,
) -> tuple[IJobQueue, IPendingLeaves, int]:
    """
    The queue C{queue.driver} names, the held leaves (shared through the
    adapter's Redis with C{adapter.driver: redis}, so that a reload that
    lands on another node sends nothing either: on the adapter's own
    connection when given) and the delivery concurrency.
    """
    from sockudo_tw.queues import build_queue

    queue = build_queue(config, reactor, redis)
    concurrency = config.queue.redis_concurrency if config.queue.driver == "redis" else 20
    pending: IPendingLeaves = MemoryPendingLeaves()
    if config.adapter.driver == "redis":
        prefix = f"{config.adapter.redis_prefix}webhook_hold:"
        if cluster_redis is None:
            cluster_redis = redis(config.adapter.redis_url or config.database_redis.url)
        pending = RedisPendingLeaves(cluster_redis, prefix)
    return queue, pending, concurrency


def build_webhooks(
    config: ServerConfig,
    reactor: Any,
    apps: IAppStore,
    metrics: IWebhookMetrics | None = None,
    cluster_redis: RedisCommands | None = None,
    watch_posts: Callable[[HTTPPoster], HTTPPoster] | None = None,
) -> WebhookParts:
    """
    Build the sink, sender and queue from C{queue.*} and
    C{webhooks.batching.*} (L{sockudo_tw.webhooks}).

    @param cluster_redis: the Redis adapter's connection, which then also
        keeps the held leaves (else a connection of the webhooks' own).
    @param watch_posts: wraps the sender's HTTP client (the debug console
        watches webhook requests through it).

    @raise ConfigError: for a queue driver, Redis URL or webhook target
        sockudo-tw refuses (C{redis-cluster}, an incomplete Lambda target,
        Lambda or SQS without boto3), so the daemon never starts while
        silently dropping webhooks.
    """
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    from sockudo_tw.queues import validate_queue_driver

    try:
        validate_queue_driver(config.queue.driver)
        validate_webhook_targets(config.app_manager.apps)
        parse_redis_url(config.queue.redis_url_override or config.database_redis.url)
        parse_redis_url(config.adapter.redis_url or config.database_redis.url)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if config.queue.driver == "none":
        return WebhookParts(NullWebhookEvents(), None, lambda: succeed(None))
    redis = _RedisConnections(reactor)
    queue, pending, concurrency = _webhook_backends(config, reactor, redis, cluster_redis)
    settings = WebhookSettings(
        batching_enabled=config.webhooks.batching_enabled,
        batching_duration=config.webhooks.batching_duration_ms / 1000,
        concurrency=concurrency,
    )
    pool = HTTPConnectionPool(reactor)
    pool.maxPersistentPerHost = concurrency
    http: HTTPPoster = HTTPClient(Agent(reactor, pool=pool))
    if watch_posts is not None:
        http = watch_posts(http)
    sender = WebhookSender(apps, http, reactor, settings, metrics)
    events = WebhookEvents(apps, queue, reactor, settings, pending)

    async def close() -> None:
        for closer in (pool.closeCachedConnections, redis.close, sender.close):
            try:
                await closer()
            except Exception:
                _log.failure("closing webhook delivery failed")

    wait = config.queue.driver == "redis"
    service = WebhookService(
        events, sender, queue, (lambda: redis.start(wait)) if redis.links else None
    )
    return WebhookParts(events, service, lambda: Deferred.fromCoroutine(close()))


class SockudoService(MultiService):
    """
    The root service. Its C{stopService} shuts down in order, bounded by the
    grace period: flag draining (C{/up} answers 503), stop listening, close
    clients with 4200, run the flush steps, run the backend-closing steps,
    then stop the remaining child services.

    @ivar drain_steps: called once the listeners are closed, before the
        clients are (the adapter stops keeping the cluster up to date
        socket by socket).
    @ivar flush_steps: called in order after clients are closed (pending
        webhooks and other queued work).
    @ivar close_steps: called in order last (Redis connections and other
        backends).
    @ivar prepare_steps: called once before any listener binds.
    @ivar startup: logged once every child has started (listener URLs, app
        count, adapter; a warning when there is no app).
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        grace_period: float,
        close_connections: CloseConnections,
        lifecycle: Lifecycle | None = None,
        log_observer: ILogObserver | None = None,
        warnings: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self._clock = clock
        self.grace_period = grace_period
        self.close_connections = close_connections
        self.lifecycle = lifecycle if lifecycle is not None else Lifecycle()
        self.drain_steps: list[Callable[[], None]] = []
        self.flush_steps: list[Step] = []
        self.close_steps: list[Step] = []
        self.listeners: list[IService] = []
        self.prepare_steps: list[Callable[[], None]] = []
        self._log_observer = log_observer
        self._warnings = tuple(warnings)
        self.startup: StartupSummary | None = None

    def privilegedStartService(self) -> None:
        """
        Prepare (socket directories, stale socket files), then let children
        bind, possibly as root before twistd drops privileges.
        """
        self._prepare()
        super().privilegedStartService()

    def _prepare(self) -> None:
        """
        Run the preparation steps once.
        """
        steps, self.prepare_steps = self.prepare_steps, []
        for step in steps:
            step()

    def add_listener(self, listener: IService) -> None:
        """
        Add a listening service; these stop first at shutdown. Its endpoint
        is wrapped to learn the port it binds (L{listening_port}), if it has
        one (the worker pool has none).
        """
        with contextlib.suppress(ValueError):
            reporting_endpoint(listener)
        self.listeners.append(listener)
        listener.setServiceParent(self)

    def listening_port(self, index: int = 0) -> Deferred[IListeningPort]:
        """
        The port listener C{index} bound (or will bind), e.g. to learn the
        number a C{tcp:0} listener got.
        """
        return reporting_endpoint(self.listeners[index]).port()

    def setServiceParent(self, parent: Any) -> None:  # noqa: N802
        """
        Join C{parent}; under twistd (an C{Application}) install our log
        observer there, which twistd then uses instead of its own.
        """
        super().setServiceParent(parent)
        if self._log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self._log_observer)

    def startService(self) -> None:
        """
        Log ignored config keys, start every child, then log what is served.
        """
        for warning in self._warnings:
            self._log.warn("Config: {note}", note=warning)
        self._prepare()
        super().startService()
        if self.startup is not None:
            self.startup.log(self._log)

    def stopService(self) -> Deferred[None]:
        """
        The ordered graceful shutdown; see the class docstring.
        """
        self.lifecycle.draining = True
        self._log.info("Shutting down (grace period {grace}s)", grace=self.grace_period)
        d = Deferred.fromCoroutine(self._drain())
        d.addTimeout(self.grace_period, self._clock)

        def failed(failure: Failure) -> None:
            if failure.check(TimeoutError):
                self._log.warn(
                    "Shutdown steps did not finish within {grace}s; stopping anyway",
                    grace=self.grace_period,
                )
            else:
                self._log.failure("Shutdown step failed", failure)

        d.addErrback(failed)
        d.addCallback(lambda _: self._stop_rest())
        return d

    async def _drain(self) -> None:
        """
        The steps that may take time, in order.
        """
        await self._stop_listeners()
        for begin in self.drain_steps:
            begin()
        await self.close_connections(SHUTDOWN_CODE, SHUTDOWN_REASON)
        for step in self.flush_steps:
            await step()
        for step in self.close_steps:
            await step()

    async def _stop_listeners(self) -> None:
        """
        Stop accepting new connections on every listener at once.
        """
        stopping = []
        for listener in self.listeners:
            if listener.running:
                result = listener.stopService()
                if isinstance(result, Deferred):
                    stopping.append(result)
        if stopping:
            await DeferredList(stopping, consumeErrors=True)

    def _stop_rest(self) -> Deferred[None]:
        """
        Stop every child that is still running (the listeners too, if a
        timeout cut the drain short), then mark this service stopped.
        """
        Service.stopService(self)
        stopping = []
        for child in reversed(list(self)):
            if child.running:
                result = child.stopService()
                if isinstance(result, Deferred):
                    stopping.append(result)
        done: Deferred[Any] = DeferredList(stopping, consumeErrors=True)
        return done.addCallback(lambda _: None)


def prepare_unix_socket(path: str) -> None:
    """
    Get C{path} ready for a Unix listener, as Sockudo does: create its
    directory (mode 0755) and remove a socket file nobody is listening on
    any more (left by a crash). A live socket is left alone, so a second
    instance fails to bind instead of stealing it.
    """
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        _log.info("Removing stale socket file {path}", path=path)
        os.unlink(path)
    except OSError:
        return
    finally:
        probe.close()


def _watch_metrics(
    metrics: PusherMetrics, connections: Any, adapter: IAdapter, webhooks: WebhookParts
) -> None:
    """
    Give C{metrics} the gauges it reads at scrape time: connections, this
    node's channels, cluster links and the memory queue's depth.
    """
    metrics.watch(connections=connections)
    # The local adapter's registry, or a cluster adapter's local one.
    node_index = getattr(getattr(adapter, "local", adapter), "registry", None)
    if isinstance(node_index, Registry):
        index = node_index
        metrics.watch(active_channels=lambda: channels_by_type(index))
    cluster_links = getattr(adapter, "cluster_links", None)
    if callable(cluster_links):
        metrics.watch(cluster_links=cluster_links)
    # The memory queue knows its depth; the Redis queue would need a round
    # trip, which a scrape must not wait for.
    queue_depth = getattr(getattr(webhooks.service, "queue", None), "depth", None)
    if callable(queue_depth):
        metrics.watch(webhook_queue_depth=queue_depth)


def _extra_listeners(
    config: ServerConfig,
    reactor: Any,
    listen: Sequence[str],
    metrics: PusherMetrics | None,
    metrics_resource: IResource | None,
    worker: WorkerRole | None = None,
    pool: WorkerPool | None = None,
) -> list[tuple[str, str, str, IProtocolFactory]]:
    """
    The listeners beside the main ones, as (what, strports description, URL
    path, factory): the HTTP-to-HTTPS redirect and the metrics listener.

    A child worker serves its metrics on its Unix socket in the group's
    runtime directory; the parent of a pool serves every worker's, summed,
    on the metrics port.
    """
    extra: list[tuple[str, str, str, IProtocolFactory]] = []
    if not listen and config.ssl.enabled and config.ssl.redirect_http:
        redirect = make_site(RedirectToHttps(config.port), limits=config.http_limits, clock=reactor)
        at = f"tcp:{config.ssl.http_port}:interface={escape_strport(config.host)}"
        extra.append(("redirect to HTTPS", at, "", redirect))
    if config.metrics.enabled:
        registry = metrics.registry if metrics else CollectorRegistry()
        served: IProtocolFactory
        if metrics_resource is not None:
            served = Site(metrics_resource)
        elif pool is not None:
            from sockudo_tw.metrics.workers import workers_metrics_site

            served = workers_metrics_site(
                registry, reactor, pool.metrics_sockets, prefix=config.metrics.prefix
            )
        else:
            served = metrics_site(registry)
        if worker is not None:
            path = metrics_socket(worker.runtime_dir, worker.number)
            at = f"unix:{escape_strport(path)}:mode=600"
            extra.append(("worker metrics", at, "", served))
        else:
            at = f"tcp:{config.metrics.port}:interface={escape_strport(config.metrics.host)}"
            extra.append(("Prometheus metrics", at, "/metrics", served))
    return extra


def _front(
    config: ServerConfig,
    reactor: Any,
    app_store: IAppStore,
    adapter: IAdapter,
    cache: IChannelCache,
    metrics: PusherMetrics | None,
    websocket: WebSocketPart,
    health: IResource,
    limiter: IRateLimiter | None = None,
) -> IProtocolFactory:
    """
    The factory every main listener serves: the C{Site} (WebSocket, API,
    health), behind the fast trigger front unless the access log is on.
    """
    api, trigger_api = _api_resource(config, reactor, app_store, adapter, cache, metrics, limiter)
    count_call: Recorder | None = None
    if metrics is not None:
        metered = MeteredResource(api, metrics, reactor, app_store)
        api = metered
        count_call = metered.count_call
        # Sockudo counts /up as an API call too.
        health = MeteredResource(health, metrics, reactor, app_store)
    site = make_site(
        RootResource(
            websocket.resource,
            api,
            health,
            cors=config.cors,
            usage_enabled=config.http_limits.usage_enabled,
        ),
        access_log=config.debug,
        limits=config.http_limits,
        clock=reactor,
    )
    # Plain triggers skip twisted.web's request parsing (triggerchannel.py);
    # the access log, when on, wants every request through the Site.
    if trigger_api is not None and not config.debug:
        return TriggerChannelFactory(site, trigger_api.serve, reactor, count_call)
    return site


def _add_backends(
    root: SockudoService, webhooks: WebhookParts, adapter: IAdapter, *others: object
) -> None:
    """
    Give the webhook sender, a cluster adapter and any other backend that
    is a service (the Redis cache, the Redis rate limiter) their places in
    the start and the ordered shutdown.
    """
    if webhooks.service is not None:
        # Deliver webhooks from before the first client until after the last.
        root.prepare_steps.append(webhooks.service.startService)
        root.flush_steps.append(webhooks.service.stopService)
    root.close_steps.append(webhooks.close)
    if IService.providedBy(adapter):
        # A cluster adapter connects at start and leaves the cluster last.
        IService(adapter).setServiceParent(root)
    for backend in others:
        if IService.providedBy(backend):
            IService(backend).setServiceParent(root)


def _keep_unix_mode(port: IListeningPort, path: str, mode: int) -> None:
    """
    Give the Unix socket file at C{path} the configured C{mode} again, if
    C{port} listens on it.
    """
    address = port.getHost()
    if isinstance(address, UNIXAddress) and os.path.abspath(
        os.fsdecode(address.name or b"")
    ) == os.path.abspath(path):
        os.chmod(path, mode)


def _add_app_store(
    root: SockudoService, reactor: Any, app_store: IAppStore, metrics: PusherMetrics | None
) -> None:
    """
    A database app store prepares its table once the reactor runs,
    reports whether it answers in the metrics, and closes last.
    """
    if not isinstance(app_store, CachedAppStore):
        return
    store = app_store
    root.prepare_steps.append(lambda: reactor.callWhenRunning(store.start))
    root.close_steps.append(store.stop)
    if metrics is not None:
        metrics.watch(app_store_up=lambda: store.reachable)


def _add_beacon(
    root: SockudoService,
    reactor: Any,
    websocket: WebSocketPart,
    runtime_dir: Callable[[], str | None],
    worker: WorkerRole | None,
) -> None:
    """
    Write this worker's beacon into the group's runtime directory (see
    L{sockudo_tw.workers}); a child stops the daemon when its parent dies.
    """
    ceiling = websocket.accept_ceiling

    def held() -> int:
        return ceiling.count if ceiling is not None else 0

    beacon = WorkerBeacon(
        reactor,
        runtime_dir,
        worker.number if worker is not None else 0,
        held,
        parent_pid=worker.parent_pid if worker is not None else None,
        orphaned=reactor.stop if worker is not None else None,
    )
    beacon.setServiceParent(root)


def make_service(
    config: ServerConfig,
    reactor: Any,
    listen: Sequence[str] = (),
    log_observer: ILogObserver | None = None,
    metrics_resource: IResource | None = None,
    worker_args: Sequence[str] = (),
    worker: WorkerRole | None = None,
) -> SockudoService:
    """
    Compose the daemon from C{config}.

    @param reactor: used for listening and every timer.
    @param listen: strports descriptions that replace the config's
        listeners (C{--listen}).
    @param log_observer: installed into twistd's application, if given.
    @param metrics_resource: served on its own listener at
        C{metrics.host:metrics.port} when C{metrics.enabled} instead of
        the daemon's own metrics (L{None}: a fresh L{PusherMetrics}).
    @param worker_args: the plugin options a worker process is started
        with when C{config.workers} > 1 (L{sockudo_tw.workers}).
    @param worker: this process's place in a worker group when its parent
        started it (L{WorkerRole.from_environ}).
    """
    log = Logger(namespace="sockudo_tw.service")
    warnings = list(config.warnings)
    # Drivers sockudo-tw does not implement are refused by the config.
    app_store = build_app_store(config, reactor)
    cache = build_cache(config, reactor)
    metrics: PusherMetrics | None = None
    observer: IPusherEvents | None = None
    if config.metrics.enabled and metrics_resource is None:
        metrics = PusherMetrics(
            CollectorRegistry(), port=config.metrics.port, prefix=config.metrics.prefix
        )
        observer = MetricsObserver(metrics)
    adapter_parts = build_adapter(config, reactor, worker.node_id if worker else None)
    adapter, adapter_health = adapter_parts.adapter, adapter_parts.health
    # The debug console's hooks are identities when console.enabled is off.
    # One limiter for every rule (their keys start with the rule's
    # identifier); the Redis one is a service, connected while we run.
    limiter = build_rate_limiter(config, reactor)
    console = build_console(config, reactor, app_store, adapter, cache, limiter)
    webhooks = build_webhooks(
        config,
        reactor,
        app_store,
        WebhookMetrics(metrics) if metrics is not None else None,
        cluster_redis=adapter_parts.redis,
        watch_posts=console.watch_posts,
    )
    observer = webhooks.events if observer is None else _Observers(observer, webhooks.events)
    observer = console.observe(observer)
    adapter_parts.observe(observer)
    websocket = _websocket_resource(
        config, reactor, app_store, adapter, cache, observer, metrics, limiter
    )
    if metrics is not None:
        _watch_metrics(metrics, websocket.connections, adapter, webhooks)
    lifecycle = Lifecycle()
    pool: WorkerPool | None = None

    def runtime_dir() -> str | None:
        """
        The group's runtime directory: given to a child, made by the pool.
        """
        if worker is not None:
            return worker.runtime_dir
        return pool.runtime_dir if pool is not None else None

    group: WorkersView | None = None
    if worker is not None or config.workers > 1:
        count = worker.count if worker is not None else config.workers
        group = WorkersView(reactor, runtime_dir, count)
    health: IResource = HealthResource(app_store, adapter_health, lifecycle, reactor, workers=group)
    api_adapter = console.watch_api(adapter)
    listening = _front(
        config, reactor, app_store, api_adapter, cache, metrics, websocket, health, limiter
    )

    root = SockudoService(
        reactor,
        config.shutdown_grace_period,
        websocket.close_connections,
        lifecycle,
        log_observer,
        warnings,
    )
    _add_backends(root, webhooks, adapter, cache, limiter)
    if adapter_parts.drain is not None:
        root.drain_steps.append(adapter_parts.drain)
    for console_service in console.services:
        console_service.setServiceParent(root)
    _add_app_store(root, reactor, app_store, metrics)
    descriptions = list(listen) or config_listeners(config)
    if not listen and config.unix_socket.enabled:
        path = config.unix_socket.path
        root.prepare_steps.append(lambda: prepare_unix_socket(path))
    for description in descriptions:
        root.add_listener(strports.service(description, listening, reactor=reactor))
    ceiling = websocket.accept_ceiling
    if ceiling is not None:
        for index in range(len(root.listeners)):
            root.listening_port(index).addCallback(ceiling.watch).addErrback(
                lambda _: None  # a listener that failed is logged already
            )
    if config.unix_socket.enabled and listen:
        # A worker adopts the parent's Unix socket, and Twisted's adoption
        # chmods the socket file to 0666: set the configured mode again.
        for index in range(len(root.listeners)):
            root.listening_port(index).addCallback(
                _keep_unix_mode, config.unix_socket.path, config.unix_socket.permission_mode
            ).addErrback(lambda _: None)  # a listener that failed is logged already
    if config.workers > 1:
        # Only these main listeners are shared (not metrics, not the redirect).
        pool = WorkerPool(
            reactor,
            config.workers,
            list(root.listeners),
            worker_args,
            grace_period=config.shutdown_grace_period,
            forget_node=adapter_parts.forget_node,
        )
        root.add_listener(pool)
    if pool is not None or worker is not None:
        _add_beacon(root, reactor, websocket, runtime_dir, worker)
    announced = [("Pusher WebSocket and HTTP API", d, "") for d in descriptions]
    for what, at, path, factory in [
        *_extra_listeners(config, reactor, listen, metrics, metrics_resource, worker, pool),
        *console.listeners,
    ]:
        root.add_listener(strports.service(at, factory, reactor=reactor))
        announced.append((what, at, path))
    root.startup = StartupSummary(
        announced,
        len(config.app_manager.apps),
        config.adapter.driver,
        app_store.source.description if isinstance(app_store, CachedAppStore) else None,
    )
    log.debug("Listening on {descriptions}", descriptions=descriptions)
    return root
