# -*- test-case-name: tests.test_webhooks -*-
"""
Webhooks: batched, signed, retried delivery of channel and presence events
to each app's HTTP endpoints (pusher-protocol.md section 7,
sockudo-reference.md sections 2.4 and 5.8).

The pieces, in the order an event goes through them:

  1. L{IWebhookEvents} is the sink the connection code reports transitions
     to. Its methods return at once: nothing on the client path waits for a
     webhook. L{WebhookEvents} keeps only events some target of the app
     asked for (C{event_types} and the channel filter).
  2. C{channel_vacated} and C{member_removed} are held for
     L{WebhookSettings.leave_delay} seconds (Pusher holds them about 3 s).
     If the channel is occupied again, or the user joins again, within that
     time, both the held event and the C{channel_occupied}/C{member_added}
     that flipped the state back are dropped: a page reload produces no
     webhook at all. The held state lives behind L{IPendingLeaves} so that a
     cluster adapter can share it between nodes.
  3. Events are batched per (app, URL) for C{webhooks.batching.duration} and
     each batch becomes one job, with the body (C{{"time_ms", "events"}})
     built at that moment, on an L{sockudo_tw.queues.IJobQueue}.
  4. L{WebhookSender} consumes the queue: it looks the app up again (the
     secret is never stored in the queue), signs the body and POSTs it with
     treq. Connection errors, timeouts, 5xx and 429 are retried with
     exponential back-off and jitter for up to
     L{WebhookSettings.retry_max_duration}; other responses are final.

Cluster note: each transition must be reported to the sink on exactly one
node, by whoever learns that the cluster-wide count crossed 0/1 (the cluster
adapter), and the adapter must share L{IPendingLeaves} through Redis so that
a vacate on one node is cancelled by a re-occupation on another.
"""

from __future__ import annotations

import json
import random
import re
import uuid
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any, Protocol

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from zope.interface import Interface, implementer

from sockudo_tw.appstores import IAppStore
from sockudo_tw.config import ConfigError, ServerConfig
from sockudo_tw.hooks import IPusherEvents, NoPusherEvents
from sockudo_tw.pusher.app import App, WebhookTarget
from sockudo_tw.pusher.channels import ChannelKind, channel_type
from sockudo_tw.pusher.signing import webhook_signature
from sockudo_tw.queues import (
    IJobQueue,
    MemoryJobQueue,
    RedisCommands,
    RedisJobQueue,
    validate_queue_driver,
)
from sockudo_tw.redisurl import RedisUrl, parse_redis_url

__all__ = [
    "CACHE_MISS",
    "CHANNEL_OCCUPIED",
    "CHANNEL_VACATED",
    "CLIENT_EVENT",
    "EVENT_NAMES",
    "MEMBER_ADDED",
    "MEMBER_REMOVED",
    "SUBSCRIPTION_COUNT",
    "HTTPPoster",
    "IPendingLeaves",
    "IWebhookEvents",
    "IWebhookMetrics",
    "MemoryPendingLeaves",
    "NullWebhookEvents",
    "NullWebhookMetrics",
    "RedisPendingLeaves",
    "UnsupportedWebhookTargetError",
    "WebhookEvents",
    "WebhookParts",
    "WebhookSender",
    "WebhookService",
    "WebhookSettings",
    "build_webhooks",
    "target_wants",
    "validate_webhook_targets",
]

CHANNEL_OCCUPIED = "channel_occupied"
CHANNEL_VACATED = "channel_vacated"
MEMBER_ADDED = "member_added"
MEMBER_REMOVED = "member_removed"
CLIENT_EVENT = "client_event"
CACHE_MISS = "cache_miss"
SUBSCRIPTION_COUNT = "subscription_count"
EVENT_NAMES = (
    CHANNEL_OCCUPIED,
    CHANNEL_VACATED,
    MEMBER_ADDED,
    MEMBER_REMOVED,
    CLIENT_EVENT,
    CACHE_MISS,
    SUBSCRIPTION_COUNT,
)

# Above this many subscribers, subscription_count goes out at most every
# SUBSCRIPTION_COUNT_INTERVAL seconds (pusher-protocol.md section 7).
SUBSCRIPTION_COUNT_BUSY = 100
SUBSCRIPTION_COUNT_INTERVAL = 5.0

# Headers we set ourselves; a target's configured headers cannot replace them.
_OWN_HEADERS = frozenset({"content-type", "x-pusher-key", "x-pusher-signature", "content-length"})


@attrs.frozen
class WebhookSettings:
    """
    Tunables of webhook delivery.

    @ivar batching_enabled: C{webhooks.batching.enabled}; when off, each
        event is its own request.
    @ivar batching_duration: C{webhooks.batching.duration}, in seconds.
    @ivar max_batch_events: a batch is sent early once it holds this many.
    @ivar leave_delay: seconds C{channel_vacated}/C{member_removed} are
        held; 0 sends them at once.
    @ivar request_timeout: seconds one HTTP attempt may take.
    @ivar retry_initial_delay: back-off before the second attempt.
    @ivar retry_max_delay: the largest back-off between two attempts.
    @ivar retry_max_duration: no attempt starts later than this many seconds
        after the first one (Pusher retries for about 5 minutes).
    @ivar concurrency: HTTP requests in flight at once on this node
        (C{queue.redis.concurrency}); waiting for a retry takes no slot.
    """

    batching_enabled: bool = True
    batching_duration: float = 0.05
    max_batch_events: int = 100
    leave_delay: float = 3.0
    request_timeout: float = 10.0
    retry_initial_delay: float = 1.0
    retry_max_delay: float = 60.0
    retry_max_duration: float = 300.0
    concurrency: int = 20


class UnsupportedWebhookTargetError(ValueError):
    """
    An app's C{webhooks} entry that sockudo-tw cannot deliver to.
    """


@lru_cache(maxsize=256)
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def target_wants(target: WebhookTarget, name: str, channel: str) -> bool:
    """
    Whether C{target} receives event C{name} about C{channel}: it lists the
    event type and the channel passes its prefix, suffix and pattern
    filters (a pattern matches anywhere, as Rust's C{Regex::is_match}).
    """
    if target.url is None or name not in target.event_types:
        return False
    if target.channel_prefix is not None and not channel.startswith(target.channel_prefix):
        return False
    if target.channel_suffix is not None and not channel.endswith(target.channel_suffix):
        return False
    if target.channel_pattern is not None:
        return _pattern(target.channel_pattern).search(channel) is not None
    return True


def validate_webhook_targets(apps: Iterable[App]) -> None:
    """
    Refuse, at config load, webhook targets sockudo-tw cannot deliver to:
    Lambda targets (not implemented yet), targets without an http(s) URL and
    channel patterns that are not valid regular expressions.

    @raise UnsupportedWebhookTargetError: naming the app and the entry.
    """
    for app in apps:
        for i, target in enumerate(app.webhooks):
            where = f"app {app.id!r} webhooks[{i}]"
            if target.lambda_function is not None or target.lambda_config is not None:
                raise UnsupportedWebhookTargetError(
                    f"{where}: lambda webhook targets are not supported by sockudo-tw yet; "
                    "use an HTTP url"
                )
            if target.url is None or not target.url.startswith(("http://", "https://")):
                raise UnsupportedWebhookTargetError(
                    f"{where}: expected an http:// or https:// url, got {target.url!r}"
                )
            if target.channel_pattern is not None:
                try:
                    _pattern(target.channel_pattern)
                except re.error as e:
                    raise UnsupportedWebhookTargetError(
                        f"{where}: filter.channel_pattern {target.channel_pattern!r} "
                        f"is not a valid regular expression: {e}"
                    ) from None


class IWebhookEvents(Interface):
    """
    The webhook sink: the connection code reports transitions here. Every
    method returns at once and never raises. The signatures are those of
    L{sockudo_tw.hooks.IPusherEvents}, so a sink can be that observer.
    """

    def channel_occupied(app_id: str, channel: str) -> None:
        """
        The channel's subscriber count went from 0 to 1.
        """

    def channel_vacated(app_id: str, channel: str) -> None:
        """
        The channel's subscriber count went from 1 to 0.
        """

    def member_added(app_id: str, channel: str, user_id: str) -> None:
        """
        A user's first connection joined a presence channel.
        """

    def member_removed(app_id: str, channel: str, user_id: str) -> None:
        """
        A user's last connection left a presence channel.
        """

    def client_event(
        app_id: str,
        channel: str,
        event: str,
        data: str | None,
        socket_id: str,
        user_id: str | None,
    ) -> None:
        """
        A client event was accepted and relayed; C{data} is the string as
        relayed, C{user_id} is given on presence channels only.
        """

    def cache_miss(app_id: str, channel: str) -> None:
        """
        A subscription to a cache channel found no cached event.
        """

    def subscription_count(app_id: str, channel: str, count: int) -> None:
        """
        A subscribe or unsubscribe changed a (non-presence) channel's count.
        """


@implementer(IWebhookEvents, IPusherEvents)
class NullWebhookEvents(NoPusherEvents):
    """
    The sink when webhooks are disabled (C{queue.driver: none}): every
    method does nothing.
    """


class IWebhookMetrics(Interface):
    """
    Counters of webhook delivery (the metrics module attaches here).
    """

    def delivered(app_id: str, events: int, attempts: int) -> None:
        """
        A request got a 2xx answer after C{attempts} attempts.
        """

    def attempt_failed(app_id: str, reason: str) -> None:
        """
        One attempt failed (C{reason}: C{timeout}, C{connection}, or the
        status code).
        """

    def dropped(app_id: str, events: int, reason: str) -> None:
        """
        A request was given up (C{reason}: C{retries_exhausted}, the status
        code of a final answer, C{no_target}, C{malformed}).
        """


@implementer(IWebhookMetrics)
class NullWebhookMetrics:
    """
    Counts nothing.
    """

    def delivered(self, app_id: str, events: int, attempts: int) -> None:
        pass

    def attempt_failed(self, app_id: str, reason: str) -> None:
        pass

    def dropped(self, app_id: str, events: int, reason: str) -> None:
        pass


class IPendingLeaves(Interface):
    """
    Held C{channel_vacated}/C{member_removed} events, by key. In a cluster
    this must be shared (e.g. Redis C{SET key PX} / C{DEL key} returning 1),
    so that whichever node sees the state flip back cancels the held event.
    """

    def hold(key: str) -> Deferred[None]:
        """
        Mark C{key} as held.
        """

    def cancel(key: str) -> Deferred[bool]:
        """
        Unmark C{key}; C{True} if it was held (the flip-back event is then
        suppressed too).
        """

    def claim(key: str) -> Deferred[bool]:
        """
        The delay is over: unmark C{key}; C{True} if it was still held (the
        held event is then sent).
        """


@implementer(IPendingLeaves)
class MemoryPendingLeaves:
    """
    Held leaves of this node only (single node, or tests).
    """

    def __init__(self) -> None:
        self._held: set[str] = set()

    def hold(self, key: str) -> Deferred[None]:
        self._held.add(key)
        return succeed(None)

    def cancel(self, key: str) -> Deferred[bool]:
        held = key in self._held
        self._held.discard(key)
        return succeed(held)

    def claim(self, key: str) -> Deferred[bool]:
        return self.cancel(key)


@implementer(IPendingLeaves)
class RedisPendingLeaves:
    """
    Held leaves shared by every node through Redis: C{hold} is C{SET key
    PX}, C{cancel} and C{claim} are C{DEL key} (1 means it was held), so
    exactly one node wins either way. For the cluster adapter to plug into
    L{WebhookEvents}.
    """

    def __init__(self, redis: RedisCommands, prefix: str, ttl: float = 30.0) -> None:
        """
        @param prefix: key prefix, e.g. C{"<adapter prefix>:webhook_hold:"}.
        @param ttl: seconds a hold lives in Redis; longer than the leave
            delay, so a hold is never lost before its timer claims it.
        """
        self._redis = redis
        self._prefix = prefix
        self._ttl_ms = str(int(ttl * 1000))

    def hold(self, key: str) -> Deferred[None]:
        d = self._redis.execute_command("SET", self._prefix + key, "1", "PX", self._ttl_ms)
        return d.addCallback(lambda _: None)

    def cancel(self, key: str) -> Deferred[bool]:
        d = self._redis.execute_command("DEL", self._prefix + key)
        return d.addCallback(lambda deleted: int(deleted) == 1)

    def claim(self, key: str) -> Deferred[bool]:
        return self.cancel(key)


Event = dict[str, Any]


@attrs.define
class _Batch:
    """
    Events waiting to go to one (app, URL). C{cache_miss} is de-duplicated
    and C{subscription_count} keeps only the latest count per channel.
    """

    events: list[Event] = attrs.Factory(list)
    positions: dict[tuple[str, str], int] = attrs.Factory(dict)
    timer: IDelayedCall | None = None

    def add(self, event: Event) -> None:
        name = event["name"]
        if name in (CACHE_MISS, SUBSCRIPTION_COUNT):
            slot = (name, event["channel"])
            where = self.positions.get(slot)
            if where is not None:
                self.events[where] = event
                return
            self.positions[slot] = len(self.events)
        self.events.append(event)


@attrs.define
class _CountThrottle:
    """
    A busy channel's C{subscription_count}: the latest count not yet sent.
    """

    app: App
    timer: IDelayedCall
    latest: int | None = None


def _leave_key(app_id: str, channel: str, user_id: str | None = None) -> str:
    if user_id is None:
        return f"vacated\x00{app_id}\x00{channel}"
    return f"removed\x00{app_id}\x00{channel}\x00{user_id}"


@implementer(IWebhookEvents, IPusherEvents)
class WebhookEvents(NoPusherEvents):
    """
    The webhook sink: filters, holds leaves, batches, and queues jobs. It is
    also a complete L{IPusherEvents} observer (ignoring what is not a
    webhook), so the WebSocket side can report to it directly.
    """

    _log = Logger()

    def __init__(
        self,
        apps: IAppStore,
        queue: IJobQueue,
        clock: IReactorTime,
        settings: WebhookSettings | None = None,
        pending: IPendingLeaves | None = None,
    ) -> None:
        """
        @param apps: where the app of each reported event is looked up (its
            C{webhooks} decide what is sent).
        @param pending: held leaves; the default keeps them on this node.
        """
        self._apps = apps
        self._queue = queue
        self._clock = clock
        self._settings = settings or WebhookSettings()
        self.pending: IPendingLeaves = pending or MemoryPendingLeaves()
        self._batches: dict[tuple[str, str], _Batch] = {}
        self._leave_timers: dict[str, tuple[IDelayedCall, App, Event]] = {}
        self._throttles: dict[tuple[str, str], _CountThrottle] = {}
        self._closing = False

    # The sink interface: look the app up, then act on its webhook targets.

    def channel_occupied(self, app_id: str, channel: str) -> None:
        self._with_app(app_id, self._occupied, channel)

    def channel_vacated(self, app_id: str, channel: str) -> None:
        self._with_app(app_id, self._vacated, channel)

    def member_added(self, app_id: str, channel: str, user_id: str) -> None:
        self._with_app(app_id, self._member_added, channel, user_id)

    def member_removed(self, app_id: str, channel: str, user_id: str) -> None:
        self._with_app(app_id, self._member_removed, channel, user_id)

    def client_event(
        self,
        app_id: str,
        channel: str,
        event: str,
        data: str | None,
        socket_id: str,
        user_id: str | None,
    ) -> None:
        self._with_app(app_id, self._client_event, channel, event, data, socket_id, user_id)

    def cache_miss(self, app_id: str, channel: str) -> None:
        self._with_app(app_id, self._cache_miss, channel)

    def subscription_count(self, app_id: str, channel: str, count: int) -> None:
        if channel_type(channel).kind is not ChannelKind.PRESENCE:
            self._with_app(app_id, self._subscription_count, channel, count)

    def _with_app(self, app_id: str, handle: Callable[..., None], *args: Any) -> None:
        """
        Call C{handle(app, *args)} once the app is known (at once with the
        memory store), unless the app has no webhooks.
        """
        d = self._apps.find_by_id(app_id)
        d.addCallback(lambda app: handle(app, *args) if app is not None and app.webhooks else None)
        self._guard(d)

    def _occupied(self, app: App, channel: str) -> None:
        if self._wanted(app, channel, CHANNEL_OCCUPIED, CHANNEL_VACATED):
            event = {"name": CHANNEL_OCCUPIED, "channel": channel}
            self._rejoin(_leave_key(app.id, channel), app, event)

    def _vacated(self, app: App, channel: str) -> None:
        if self._wanted(app, channel, CHANNEL_OCCUPIED, CHANNEL_VACATED):
            event = {"name": CHANNEL_VACATED, "channel": channel}
            self._leave(_leave_key(app.id, channel), app, event)

    def _member_added(self, app: App, channel: str, user_id: str) -> None:
        if self._wanted(app, channel, MEMBER_ADDED, MEMBER_REMOVED):
            event = {"name": MEMBER_ADDED, "channel": channel, "user_id": user_id}
            self._rejoin(_leave_key(app.id, channel, user_id), app, event)

    def _member_removed(self, app: App, channel: str, user_id: str) -> None:
        if self._wanted(app, channel, MEMBER_ADDED, MEMBER_REMOVED):
            event = {"name": MEMBER_REMOVED, "channel": channel, "user_id": user_id}
            self._leave(_leave_key(app.id, channel, user_id), app, event)

    def _client_event(
        self,
        app: App,
        channel: str,
        event: str,
        data: str | None,
        socket_id: str,
        user_id: str | None,
    ) -> None:
        if not self._wanted(app, channel, CLIENT_EVENT):
            return
        body: Event = {"name": CLIENT_EVENT, "channel": channel, "event": event}
        if data is not None:
            body["data"] = data
        body["socket_id"] = socket_id
        if user_id is not None:
            body["user_id"] = user_id
        self._emit(app, body)

    def _cache_miss(self, app: App, channel: str) -> None:
        if self._wanted(app, channel, CACHE_MISS):
            self._emit(app, {"name": CACHE_MISS, "channel": channel})

    def _subscription_count(self, app: App, channel: str, count: int) -> None:
        if not self._wanted(app, channel, SUBSCRIPTION_COUNT):
            return
        key = (app.id, channel)
        throttle = self._throttles.get(key)
        if throttle is not None:
            throttle.app = app
            throttle.latest = count
            return
        self._send_count(app, channel, count)

    # Leaves held and cancelled.

    def _wanted(self, app: App, channel: str, *names: str) -> bool:
        return any(target_wants(t, n, channel) for t in app.webhooks for n in names)

    def _leave(self, key: str, app: App, event: Event) -> None:
        if self._settings.leave_delay <= 0 or self._closing:
            self._emit(app, event)
            return
        previous = self._leave_timers.pop(key, None)
        if previous is not None and previous[0].active():
            previous[0].cancel()
        self._guard(self.pending.hold(key))
        timer = self._clock.callLater(self._settings.leave_delay, self._leave_due, key)
        self._leave_timers[key] = (timer, app, event)

    def _leave_due(self, key: str) -> None:
        _, app, event = self._leave_timers.pop(key)
        self._release(key, app, event)

    def _release(self, key: str, app: App, event: Event) -> Deferred[None]:
        d = self.pending.claim(key)
        d.addCallback(lambda held: self._emit(app, event) if held else None)
        return self._guard(d)

    def _rejoin(self, key: str, app: App, event: Event) -> None:
        if self._settings.leave_delay <= 0:
            self._emit(app, event)
            return
        local = self._leave_timers.pop(key, None)
        if local is not None and local[0].active():
            local[0].cancel()
        d = self.pending.cancel(key)
        d.addCallback(lambda held: None if held else self._emit(app, event))
        self._guard(d)

    def _guard(self, d: Deferred[Any]) -> Deferred[None]:
        def failed(failure: Failure) -> None:
            self._log.failure("webhook leave bookkeeping failed", failure)

        return d.addCallbacks(lambda _: None, failed)

    # Busy channels' subscription_count.

    def _send_count(self, app: App, channel: str, count: int) -> None:
        self._emit(
            app, {"name": SUBSCRIPTION_COUNT, "channel": channel, "subscription_count": count}
        )
        if count > SUBSCRIPTION_COUNT_BUSY:
            key = (app.id, channel)
            timer = self._clock.callLater(SUBSCRIPTION_COUNT_INTERVAL, self._count_due, key)
            self._throttles[key] = _CountThrottle(app=app, timer=timer)

    def _count_due(self, key: tuple[str, str]) -> None:
        throttle = self._throttles.pop(key)
        if throttle.latest is not None:
            self._send_count(throttle.app, key[1], throttle.latest)

    # Batches and jobs.

    def _emit(self, app: App, event: Event) -> None:
        urls: set[str] = set()
        for target in app.webhooks:
            if target.url is not None and target.url not in urls:
                if target_wants(target, event["name"], event["channel"]):
                    urls.add(target.url)
                    self._add(app, target.url, event)

    def _add(self, app: App, url: str, event: Event) -> None:
        settings = self._settings
        if not settings.batching_enabled or self._closing:
            self._queue_job(app.id, url, [event])
            return
        key = (app.id, url)
        batch = self._batches.get(key)
        if batch is None:
            batch = self._batches[key] = _Batch()
        batch.add(event)
        if len(batch.events) >= settings.max_batch_events:
            self._flush(key)
        elif batch.timer is None:
            batch.timer = self._clock.callLater(settings.batching_duration, self._flush, key)

    def _flush(self, key: tuple[str, str]) -> None:
        batch = self._batches.pop(key)
        if batch.timer is not None and batch.timer.active():
            batch.timer.cancel()
        self._queue_job(key[0], key[1], batch.events)

    def _queue_job(self, app_id: str, url: str, events: list[Event]) -> None:
        time_ms = int(self._clock.seconds() * 1000)
        body = json.dumps({"time_ms": time_ms, "events": events}, separators=(",", ":"))
        job = {
            "id": uuid.uuid4().hex,
            "app_id": app_id,
            "url": url,
            "events": len(events),
            "body": body,
        }
        self._queue.enqueue(json.dumps(job, separators=(",", ":")))

    def close(self) -> Deferred[None]:
        """
        Shutdown: send held leaves and throttled counts now and queue every
        batch, so nothing waits in memory. Events reported afterwards (late
        transitions of closing sockets) are queued at once, unheld.
        """
        return Deferred.fromCoroutine(self._close())

    async def _close(self) -> None:
        for key in list(self._throttles):
            throttle = self._throttles[key]
            throttle.timer.cancel()
            self._count_due(key)
            stale = self._throttles.pop(key, None)
            if stale is not None:
                stale.timer.cancel()
        for leave_key, (timer, app, event) in list(self._leave_timers.items()):
            timer.cancel()
            del self._leave_timers[leave_key]
            await self._release(leave_key, app, event)
        for batch_key in list(self._batches):
            self._flush(batch_key)
        self._closing = True


class HTTPPoster(Protocol):
    """
    The part of C{treq.client.HTTPClient} the sender uses (StubTreq or a
    fake in tests).
    """

    def post(self, url: str, /, *, data: bytes, headers: Headers) -> Deferred[Any]: ...


@attrs.frozen
class _Outcome:
    ok: bool
    retry: bool
    reason: str
    retry_after: float | None = None


class WebhookSender:
    """
    Delivers webhook jobs: signs each body with the app's current secret and
    POSTs it, retrying transient failures with back-off.
    """

    _log = Logger()

    def __init__(
        self,
        apps: IAppStore,
        http: HTTPPoster,
        clock: IReactorTime,
        settings: WebhookSettings | None = None,
        metrics: IWebhookMetrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._apps = apps
        self._http = http
        self._clock = clock
        self._settings = settings or WebhookSettings()
        self.metrics: IWebhookMetrics = metrics or NullWebhookMetrics()
        self._random = rng or random.Random()
        self._semaphore = DeferredSemaphore(self._settings.concurrency)
        self._sleeps: set[Deferred[None]] = set()
        self._stopping = False

    def stop(self) -> None:
        """
        Stop retrying: jobs waiting for a retry are abandoned (a durable queue
        redelivers them) and new jobs get a single attempt.
        """
        self._stopping = True
        for sleep in list(self._sleeps):
            sleep.cancel()

    def deliver(self, job: str) -> Deferred[bool]:
        """
        Deliver one job (the L{sockudo_tw.queues.JobHandler}).

        @return: fires C{True} when finished (delivered or given up),
            C{False} when abandoned because the sender is stopping.
        """
        return Deferred.fromCoroutine(self._deliver(job))

    async def _deliver(self, job: str) -> bool:
        try:
            parsed = json.loads(job)
            app_id = str(parsed["app_id"])
            url = str(parsed["url"])
            body = str(parsed["body"]).encode("utf-8")
            events = int(parsed.get("events", 1))
        except (ValueError, KeyError, TypeError):
            self._log.error("malformed webhook job dropped: {job!r}", job=job[:200])
            self.metrics.dropped("", 0, "malformed")
            return True
        started = self._clock.seconds()
        attempts = 0
        while True:
            app = await self._apps.find_by_id(app_id)
            target = None
            if app is not None:
                target = next((t for t in app.webhooks if t.url == url), None)
            if app is None or target is None:
                self._log.warn(
                    "webhook for app {app_id} to {url} dropped: no longer configured",
                    app_id=app_id,
                    url=url,
                )
                self.metrics.dropped(app_id, events, "no_target")
                return True
            outcome = await self._semaphore.run(self._post, app, target, body)
            attempts += 1
            if outcome.ok:
                self.metrics.delivered(app_id, events, attempts)
                return True
            self.metrics.attempt_failed(app_id, outcome.reason)
            if not outcome.retry:
                self._log.warn(
                    "webhook for app {app_id} to {url} refused ({reason}); not retried",
                    app_id=app_id,
                    url=url,
                    reason=outcome.reason,
                )
                self.metrics.dropped(app_id, events, outcome.reason)
                return True
            if self._stopping:
                return False
            delay = self._backoff(attempts, outcome.retry_after)
            if self._clock.seconds() + delay - started > self._settings.retry_max_duration:
                self._log.warn(
                    "webhook for app {app_id} to {url} dropped after {attempts} attempts "
                    "(last: {reason})",
                    app_id=app_id,
                    url=url,
                    attempts=attempts,
                    reason=outcome.reason,
                )
                self.metrics.dropped(app_id, events, "retries_exhausted")
                return True
            sleep = deferLater(self._clock, delay, lambda: None)
            self._sleeps.add(sleep)
            try:
                await sleep
            except CancelledError:
                return False
            finally:
                self._sleeps.discard(sleep)

    def _backoff(self, attempts: int, retry_after: float | None) -> float:
        """
        Exponential back-off with jitter (half fixed, half random), at least
        what a C{Retry-After} header asked for.
        """
        s = self._settings
        ceiling = min(s.retry_max_delay, s.retry_initial_delay * float(2 ** min(attempts - 1, 60)))
        delay = ceiling / 2 + self._random.random() * ceiling / 2
        if retry_after is not None:
            delay = max(delay, min(retry_after, s.retry_max_delay))
        return delay

    def _post(self, app: App, target: WebhookTarget, body: bytes) -> Deferred[_Outcome]:
        return Deferred.fromCoroutine(self._post_async(app, target, body))

    async def _post_async(self, app: App, target: WebhookTarget, body: bytes) -> _Outcome:
        assert target.url is not None
        headers = Headers(
            {
                name: [value]
                for name, value in target.headers.items()
                if name.lower() not in _OWN_HEADERS
            }
        )
        headers.setRawHeaders("Content-Type", ["application/json"])
        headers.setRawHeaders("X-Pusher-Key", [app.key])
        headers.setRawHeaders("X-Pusher-Signature", [webhook_signature(app.secret, body)])
        timeout = self._settings.request_timeout
        try:
            d = self._http.post(target.url, data=body, headers=headers)
            d.addTimeout(timeout, self._clock)
            response = await d
        except (DeferredTimeoutError, CancelledError):
            return _Outcome(ok=False, retry=True, reason="timeout")
        except Exception as e:
            self._log.debug("webhook to {url} failed: {error}", url=target.url, error=e)
            return _Outcome(ok=False, retry=True, reason="connection")
        code = int(response.code)
        try:
            drained = response.content()
            drained.addTimeout(timeout, self._clock)
            await drained
        except Exception:
            pass
        if 200 <= code < 300:
            return _Outcome(ok=True, retry=False, reason=str(code))
        retry = code >= 500 or code == 429
        return _Outcome(ok=False, retry=retry, reason=str(code), retry_after=_retry_after(response))


def _retry_after(response: Any) -> float | None:
    """
    The delay a C{Retry-After: <seconds>} header asks for, if any.
    """
    try:
        values = response.headers.getRawHeaders(b"retry-after") or []
        return max(0.0, float(values[0])) if values else None
    except (AttributeError, ValueError, TypeError):
        return None


class WebhookService(Service):
    """
    Runs webhook delivery: starts the queue's consumer, and on shutdown
    queues what the sink holds, stops retrying and stops the queue (a memory
    queue gets a short grace to drain; a Redis queue hands jobs back).
    Stopping twice waits for the first stop.
    """

    _log = Logger()

    def __init__(self, events: WebhookEvents, sender: WebhookSender, queue: IJobQueue) -> None:
        self.events = events
        self.sender = sender
        self.queue = queue
        self._stopped: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._stopped = None
        self.queue.start(self.sender.deliver)

    def stopService(self) -> Deferred[None]:
        if self._stopped is None:
            super().stopService()  # type: ignore[no-untyped-call]
            self._stopped = Deferred.fromCoroutine(self._stop())
        return Deferred.fromCoroutine(self._wait(self._stopped))

    async def _wait(self, stopped: Deferred[None]) -> None:
        await stopped

    async def _stop(self) -> None:
        try:
            await self.events.close()
            self.sender.stop()
            await self.queue.stop()
        except Exception:
            self._log.failure("stopping webhook delivery failed")


@attrs.frozen
class WebhookParts:
    """
    Webhook delivery as the composition root wires it.

    @ivar events: the sink to report transitions to (a L{NullWebhookEvents}
        when C{queue.driver} is C{none}); it is a full L{IPusherEvents}.
    @ivar service: start with the daemon; stop it after clients are closed
        (it sends held leaves at once), before L{close}.
    @ivar close: closes the Redis connection and the HTTP pool, last.
    """

    events: IPusherEvents
    service: WebhookService | None
    close: Callable[[], Deferred[None]]


def build_webhooks(
    config: ServerConfig,
    reactor: Any,
    apps: IAppStore,
    metrics: IWebhookMetrics | None = None,
) -> WebhookParts:
    """
    Build the sink, sender and queue from C{queue.*} and
    C{webhooks.batching.*}. With C{adapter.driver: redis}, held leaves are
    shared through the adapter's Redis (L{RedisPendingLeaves}) so that a
    reload that lands on another node sends nothing either. A queue worker
    counts as dead, and its jobs are redelivered, after
    C{adapter.cluster_health.node_timeout_ms} (the cluster's notion of a
    dead node).

    @raise ConfigError: for a queue driver or webhook target sockudo-tw
        refuses (C{sqs}, C{redis-cluster}, Lambda targets), so the daemon
        never starts while silently dropping webhooks.
    """
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    try:
        validate_queue_driver(config.queue.driver)
        validate_webhook_targets(config.app_manager.apps)
        queue_url = config.queue.redis_url_override or config.database_redis.url
        adapter_url = config.adapter.redis_url or config.database_redis.url
        queue_address = parse_redis_url(queue_url)
        adapter_address = parse_redis_url(adapter_url)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if config.queue.driver == "none":
        return WebhookParts(NullWebhookEvents(), None, lambda: succeed(None))
    closers: list[Callable[[], Deferred[Any]]] = []
    connections: dict[RedisUrl, Any] = {}

    def redis(address: RedisUrl) -> Any:
        if address not in connections:
            connection = _redis_pool(address)
            connections[address] = connection
            closers.append(connection.disconnect)
        return connections[address]

    concurrency = 20
    queue: IJobQueue
    if config.queue.driver == "redis":
        queue = RedisJobQueue(
            redis(queue_address),
            reactor,
            prefix=config.queue.redis_prefix,
            liveness_ttl=config.adapter.cluster_health.node_timeout_ms / 1000,
        )
        concurrency = config.queue.redis_concurrency
    else:
        queue = MemoryJobQueue(reactor)
    pending: IPendingLeaves = MemoryPendingLeaves()
    if config.adapter.driver == "redis":
        prefix = f"{config.adapter.redis_prefix}webhook_hold:"
        pending = RedisPendingLeaves(redis(adapter_address), prefix)
    settings = WebhookSettings(
        batching_enabled=config.webhooks.batching_enabled,
        batching_duration=config.webhooks.batching_duration_ms / 1000,
        concurrency=concurrency,
    )
    pool = HTTPConnectionPool(reactor)  # type: ignore[no-untyped-call]
    pool.maxPersistentPerHost = concurrency
    closers.insert(0, pool.closeCachedConnections)
    http = HTTPClient(Agent(reactor, pool=pool))  # type: ignore[no-untyped-call]
    sender = WebhookSender(apps, http, reactor, settings, metrics)
    events = WebhookEvents(apps, queue, reactor, settings, pending)

    async def close() -> None:
        for closer in closers:
            try:
                await closer()
            except Exception:
                _build_log.failure("closing webhook delivery failed")

    return WebhookParts(
        events, WebhookService(events, sender, queue), lambda: Deferred.fromCoroutine(close())
    )


_build_log = Logger(namespace="sockudo_tw.webhooks")


def _redis_pool(address: RedisUrl) -> Any:
    """
    A lazy txredisapi pool (2 connections, reconnecting) to C{address}:
    TCP, TLS with the certificate verified, or a Unix socket.
    """
    import txredisapi

    common: dict[str, Any] = {
        "dbid": address.db,
        "poolsize": 2,
        "reconnect": True,
        "password": address.password,
        "username": address.username,
        "convertNumbers": False,
    }
    if address.path is not None:
        return txredisapi.lazyUnixConnectionPool(address.path, **common)
    tls: Any = False
    if address.tls:
        from twisted.internet.ssl import optionsForClientTLS

        tls = optionsForClientTLS(address.host or "")
    return txredisapi.lazyConnectionPool(
        address.host, address.port, ssl_context_factory=tls, **common
    )
