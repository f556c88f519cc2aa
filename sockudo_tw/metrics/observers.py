# -*- test-case-name: tests.test_metrics -*-
"""
The observers that count: the WebSocket glue's and adapter's events
(L{MetricsObserver}), webhook deliveries (L{WebhookMetrics}) and rate
limit checks (L{MeteredRateLimiter}).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from zope.interface import implementer

from sockudo_tw.hooks import IPusherEvents, NoPusherEvents
from sockudo_tw.metrics.collector import PusherMetrics
from sockudo_tw.metrics.counts import UNKNOWN_APP, AppMetrics, channel_type_label
from sockudo_tw.pusher.channels import channel_type
from sockudo_tw.pusher.errors import PusherErrorCode
from sockudo_tw.ratelimit import IRateLimiter, RateLimitResult
from sockudo_tw.webhooks import IWebhookMetrics

_REJECTION_ERROR_TYPES: dict[int, str] = {
    PusherErrorCode.APP_NOT_FOUND: "app_not_found",
    PusherErrorCode.APP_DISABLED: "app_disabled",
    PusherErrorCode.UNAUTHORIZED: "origin_not_allowed",
}


@implementer(IPusherEvents)
class MetricsObserver(NoPusherEvents):
    """
    The WebSocket glue's observer, counting into a L{PusherMetrics}.

    Only counters: C{connected} and C{active_channels} are read from the
    registry at scrape time, so a missed event cannot make them drift.
    """

    def __init__(self, metrics: PusherMetrics) -> None:
        self._app = metrics.app

    def connection_opened(self, app_id: str, socket_id: str) -> None:
        """
        Count an accepted connection.
        """
        self._app(app_id).connection_opened()

    def connection_closed(self, app_id: str, socket_id: str) -> None:
        """
        Count the end of an accepted connection.
        """
        self._app(app_id).connection_closed()

    def connection_rejected(self, app_id: str | None, code: int) -> None:
        """
        Count a refused connection under Sockudo's C{error_type}: unknown
        key, disabled app and origin have their own; anything else (over
        quota included) is C{socket_handling_failed}, as in Sockudo. An
        unknown key is counted under L{UNKNOWN_APP}.
        """
        error_type = _REJECTION_ERROR_TYPES.get(code, "socket_handling_failed")
        self._app(UNKNOWN_APP if app_id is None else app_id).connection_error(error_type)

    def subscribed(self, app_id: str, channel: str, socket_id: str) -> None:
        """
        Count a subscription by channel type.
        """
        self._app(app_id).subscribed(channel_type_label(channel_type(channel)))

    def unsubscribed(self, app_id: str, channel: str, socket_id: str) -> None:
        """
        Count an unsubscription by channel type.
        """
        self._app(app_id).unsubscribed(channel_type_label(channel_type(channel)))

    def message_received(self, app_id: str, size: int) -> None:
        """
        Count one inbound message and its bytes.
        """
        self._app(app_id).message_received(size)

    def message_sent(self, app_id: str, size: int) -> None:
        """
        Count one frame sent to one client.
        """
        self._app(app_id).messages_sent(size)

    def broadcast_timed(self, app_id: str, channel: str, recipients: int, seconds: float) -> None:
        """
        Observe how long the local fan-out of one broadcast took, which is
        also Sockudo's C{broadcast_latency_ms}: the adapter fans out as soon
        as the publish is accepted, so this is publish to delivered on this
        node (for events from other nodes it leaves out the Redis hop).
        """
        ms = seconds * 1000.0
        app = self._app(app_id)
        app.broadcast_fanout_duration.observe(ms)
        app.broadcast_latency_observed(channel_type_label(channel_type(channel)), recipients, ms)

    def slow_consumer_closed(self, app_id: str, socket_id: str) -> None:
        """
        Count a connection closed for a full outbound buffer.
        """
        self._app(app_id).outbound_buffer_closed()

    def broadcast_delivered(self, app_id: str, channel: str, size: int, recipients: int) -> None:
        """
        Count a broadcast as C{recipients} messages of C{size} bytes, and
        its fan-out size.
        """
        app = self._app(app_id)
        app.messages_sent(size, recipients)
        app.broadcast(channel_type_label(channel_type(channel)), recipients)


@implementer(IWebhookMetrics)
class WebhookMetrics:
    """
    Webhook delivery counts for L{sockudo_tw.webhooks.WebhookSender}:
    C{webhooks_sent_total} per request delivered, C{webhooks_failed_total}
    per request given up, C{webhook_retries_total} per failed attempt (each
    is retried with back-off unless the request is then given up).
    """

    def __init__(self, metrics: PusherMetrics) -> None:
        self._app = metrics.app

    def delivered(self, app_id: str, events: int, attempts: int) -> None:
        """
        Count a delivered request.
        """
        self._app(app_id or UNKNOWN_APP).webhook_sent()

    def attempt_failed(self, app_id: str, reason: str) -> None:
        """
        Count a failed attempt.
        """
        self._app(app_id or UNKNOWN_APP).webhook_retried()

    def dropped(self, app_id: str, events: int, reason: str) -> None:
        """
        Count a request given up on.
        """
        self._app(app_id or UNKNOWN_APP).webhook_failed()


@implementer(IRateLimiter)
class MeteredRateLimiter:
    """
    A rate limiter counting Sockudo's C{rate_limit_checks_total} and
    C{rate_limit_triggered_total} for one C{limiter_type} and
    C{request_context} (e.g. C{api_rate_limit}/C{http_api} under app id
    C{global}, as Sockudo labels its IP limiter).
    """

    def __init__(
        self,
        limiter: IRateLimiter,
        counts: AppMetrics,
        limiter_type: str,
        request_context: str,
    ) -> None:
        self._limiter = limiter
        self._counts = counts
        self._limiter_type = limiter_type
        self._request_context = request_context

    def hit(
        self, key: str, max_requests: int, window_seconds: float, cost: int = 1
    ) -> Deferred[RateLimitResult]:
        """
        Ask the wrapped limiter, then count the check and its outcome.
        """

        def count(result: RateLimitResult) -> RateLimitResult:
            self._counts.rate_limit_check(
                self._limiter_type, self._request_context, not result.allowed
            )
            return result

        d: Deferred[RateLimitResult] = self._limiter.hit(key, max_requests, window_seconds, cost)
        return d.addCallback(count)
