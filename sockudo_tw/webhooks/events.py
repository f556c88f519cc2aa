# -*- test-case-name: tests.test_webhooks -*-
"""
What happened, turned into webhook events: the sink the connection code
reports transitions to (L{WebhookEvents}), each app's target filters, and
the held C{channel_vacated}/C{member_removed} events (L{IPendingLeaves}).

The sink's interface is L{sockudo_tw.hooks.IPusherEvents} itself
(L{IWebhookEvents} is that interface under its webhook name): a sink is a
full observer of the connection code, ignoring what is not a webhook.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from sockudo_tw.appstores import IAppStore
from sockudo_tw.awscalls import load_aws_libraries
from sockudo_tw.hooks import IPusherEvents, NoPusherEvents
from sockudo_tw.pusher.app import App, WebhookTarget
from sockudo_tw.pusher.channels import ChannelKind, channel_type
from sockudo_tw.queues import IJobQueue, RedisCommands
from sockudo_tw.webhooks.lambda_target import lambda_function, target_address
from sockudo_tw.webhooks.queue import Event, WebhookBatcher
from sockudo_tw.webhooks.settings import WebhookSettings

__all__ = [
    "CACHE_MISS",
    "CHANNEL_OCCUPIED",
    "CHANNEL_VACATED",
    "CLIENT_EVENT",
    "EVENT_NAMES",
    "MEMBER_ADDED",
    "MEMBER_REMOVED",
    "SUBSCRIPTION_COUNT",
    "IPendingLeaves",
    "IWebhookEvents",
    "MemoryPendingLeaves",
    "NullWebhookEvents",
    "RedisPendingLeaves",
    "UnsupportedWebhookTargetError",
    "WebhookEvents",
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
    if target_address(target) is None or name not in target.event_types:
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
    targets with neither an http(s) URL nor a complete Lambda function,
    Lambda targets without boto3 installed, and channel patterns that are
    not valid regular expressions.

    @raise UnsupportedWebhookTargetError: naming the app and the entry.
    """
    for app in apps:
        for i, target in enumerate(app.webhooks):
            where = f"app {app.id!r} webhooks[{i}]"
            if target.url is None:
                try:
                    function = lambda_function(target)
                except ValueError as e:
                    raise UnsupportedWebhookTargetError(f"{where}: {e}") from None
                if function is None:
                    raise UnsupportedWebhookTargetError(
                        f"{where}: expected a url, a lambda object or a lambda_function"
                    )
                # A ConfigError naming pip install 'sockudo-tw[aws]'.
                load_aws_libraries(f"{where} (a Lambda webhook target)")
            elif not target.url.startswith(("http://", "https://")):
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


IWebhookEvents = IPusherEvents
"""
The webhook sink's interface: the connection code's observer interface
(L{sockudo_tw.hooks.IPusherEvents}); a sink reports C{channel_occupied},
C{channel_vacated}, C{member_added}, C{member_removed}, C{client_event},
C{cache_miss} and C{subscription_count} as webhooks and ignores the rest.
Every method returns at once and never raises.
"""


@implementer(IPusherEvents)
class NullWebhookEvents(NoPusherEvents):
    """
    The sink when webhooks are disabled (C{queue.driver: none}): every
    method does nothing.
    """


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

    While Redis cannot answer (not connected yet, an outage), nothing is
    held: C{cancel} says "not held" and C{claim} says "held", so every
    event is sent (a reload may then produce its pair of webhooks) rather
    than lost. The outage is logged once.
    """

    _log = Logger()

    def __init__(self, redis: RedisCommands, prefix: str, ttl: float = 30.0) -> None:
        """
        @param prefix: key prefix, e.g. C{"<adapter prefix>:webhook_hold:"}.
        @param ttl: seconds a hold lives in Redis; longer than the leave
            delay, so a hold is never lost before its timer claims it.
        """
        self._redis = redis
        self._prefix = prefix
        self._ttl_ms = str(int(ttl * 1000))
        self._failing = False

    def hold(self, key: str) -> Deferred[None]:
        d = self._redis.execute_command("SET", self._prefix + key, "1", "PX", self._ttl_ms)
        d.addCallback(lambda _: None)
        return d.addCallbacks(self._answered, self._unanswered, errbackArgs=(None,))

    def cancel(self, key: str) -> Deferred[bool]:
        return self._delete(key, when_down=False)

    def claim(self, key: str) -> Deferred[bool]:
        return self._delete(key, when_down=True)

    def _delete(self, key: str, when_down: bool) -> Deferred[bool]:
        d = self._redis.execute_command("DEL", self._prefix + key)
        d.addCallback(lambda deleted: int(deleted) == 1)
        return d.addCallbacks(self._answered, self._unanswered, errbackArgs=(when_down,))

    def _answered(self, result: Any) -> Any:
        if self._failing:
            self._failing = False
            self._log.info("webhook leave holds back in Redis")
        return result

    def _unanswered(self, failure: Failure, instead: Any) -> Any:
        if not self._failing:
            self._failing = True
            self._log.warn(
                "webhook leave holds unavailable, events sent unheld: {error}",
                error=failure.getErrorMessage(),
            )
        return instead


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


@implementer(IPusherEvents)
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
        self._clock = clock
        self._settings = settings or WebhookSettings()
        self.pending: IPendingLeaves = pending or MemoryPendingLeaves()
        self._batcher = WebhookBatcher(queue, clock, self._settings)
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
        body: Event = {"name": CLIENT_EVENT, "channel": channel, "event": event}
        if data is not None:
            body["data"] = data
        body["socket_id"] = socket_id
        if user_id is not None:
            body["user_id"] = user_id
        self._with_app(app_id, self._client_event, body)

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

    def _client_event(self, app: App, body: Event) -> None:
        if self._wanted(app, body["channel"], CLIENT_EVENT):
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
        # One batch per address: a URL, or lambda:<function name>.
        addresses: set[str] = set()
        for target in app.webhooks:
            address = target_address(target)
            if address is not None and address not in addresses:
                if target_wants(target, event["name"], event["channel"]):
                    addresses.add(address)
                    self._batcher.add(app.id, address, event)

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
        self._batcher.flush_all()
        self._closing = self._batcher.closing = True
