# -*- test-case-name: tests.test_webhooks -*-
"""
Webhooks: batched, signed, retried delivery of channel and presence events
to each app's HTTP endpoints (pusher-protocol.md section 7,
sockudo-reference.md sections 2.4 and 5.8).

The pieces, in the order an event goes through them:

  1. L{IWebhookEvents} (L{sockudo_tw.hooks.IPusherEvents}) is the sink the
     connection code reports transitions to (C{events.py}). Its methods
     return at once: nothing on the client path waits for a webhook.
     L{WebhookEvents} keeps only events some target of the app asked for
     (C{event_types} and the channel filter).
  2. C{channel_vacated} and C{member_removed} are held for
     L{WebhookSettings.leave_delay} seconds (Pusher holds them about 3 s).
     If the channel is occupied again, or the user joins again, within that
     time, both the held event and the C{channel_occupied}/C{member_added}
     that flipped the state back are dropped: a page reload produces no
     webhook at all. The held state lives behind L{IPendingLeaves} so that a
     cluster adapter can share it between nodes.
  3. Events are batched per (app, URL) for C{webhooks.batching.duration} and
     each batch becomes one job, with the body (C{{"time_ms", "events"}})
     built at that moment, on an L{sockudo_tw.queues.IJobQueue}
     (C{queue.py}; the queue drivers are in L{sockudo_tw.queues}).
  4. L{WebhookSender} (C{sender.py}) consumes the queue: it looks the app up again (the
     secret is never stored in the queue), signs the body and POSTs it with
     treq. Connection errors, timeouts, 5xx and 429 are retried with
     exponential back-off and jitter for up to
     L{WebhookSettings.retry_max_duration}; other responses are final.

Cluster note: each transition must be reported to the sink on exactly one
node, by whoever learns that the cluster-wide count crossed 0/1 (the cluster
adapter), and the adapter must share L{IPendingLeaves} through Redis so that
a vacate on one node is cancelled by a re-occupation on another.

L{WebhookService} runs delivery; the composition root
(L{sockudo_tw.service}) builds and wires these parts from the config.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from sockudo_tw.queues import IJobQueue
from sockudo_tw.webhooks.events import (
    CACHE_MISS,
    CHANNEL_OCCUPIED,
    CHANNEL_VACATED,
    CLIENT_EVENT,
    EVENT_NAMES,
    MEMBER_ADDED,
    MEMBER_REMOVED,
    SUBSCRIPTION_COUNT,
    IPendingLeaves,
    IWebhookEvents,
    MemoryPendingLeaves,
    NullWebhookEvents,
    RedisPendingLeaves,
    UnsupportedWebhookTargetError,
    WebhookEvents,
    target_wants,
    validate_webhook_targets,
)
from sockudo_tw.webhooks.queue import WebhookBatcher, WebhookJob
from sockudo_tw.webhooks.sender import (
    HTTPPoster,
    IWebhookMetrics,
    NullWebhookMetrics,
    WebhookSender,
)
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
    "HTTPPoster",
    "IPendingLeaves",
    "IWebhookEvents",
    "IWebhookMetrics",
    "MemoryPendingLeaves",
    "NullWebhookEvents",
    "NullWebhookMetrics",
    "RedisPendingLeaves",
    "UnsupportedWebhookTargetError",
    "WebhookBatcher",
    "WebhookEvents",
    "WebhookJob",
    "WebhookSender",
    "WebhookService",
    "WebhookSettings",
    "target_wants",
    "validate_webhook_targets",
]


class WebhookService(Service):
    """
    Runs webhook delivery: starts the queue's consumer, and on shutdown
    queues what the sink holds, stops retrying and stops the queue (a memory
    queue gets a short grace to drain; a Redis queue hands jobs back).
    Stopping twice waits for the first stop.
    """

    _log = Logger()

    def __init__(
        self,
        events: WebhookEvents,
        sender: WebhookSender,
        queue: IJobQueue,
        ready: Callable[[], Deferred[None]] | None = None,
    ) -> None:
        """
        @param ready: fires once the queue's backend can take commands (a
            Redis queue's first connection); the consumer starts then, so
            a normal start logs no failed heartbeat.
        """
        self.events = events
        self.sender = sender
        self.queue = queue
        self._ready = ready
        self._stopped: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._stopped = None
        if self._ready is None:
            self.queue.start(self.sender.deliver)
            return

        def start(_: object) -> None:
            if self.running:
                self.queue.start(self.sender.deliver)

        self._ready().addCallback(start)

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
