# -*- test-case-name: tests.test_webhooks -*-
"""
Webhook events on their way to the job queue: batched per (app, URL) for
C{webhooks.batching.duration}, each batch becoming one job whose body
(C{{"time_ms", "events"}}) is built at that moment, on an
L{sockudo_tw.queues.IJobQueue} (the drivers live in L{sockudo_tw.queues}).

L{WebhookJob} is the job's one format: written here, read by the sender.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from sockudo_tw.queues import IJobQueue
from sockudo_tw.webhooks.settings import WebhookSettings

__all__ = ["Event", "WebhookBatcher", "WebhookJob"]

Event = dict[str, Any]

# Events of which a batch keeps one per channel (the latest).
_ONE_PER_CHANNEL = ("cache_miss", "subscription_count")


@attrs.frozen
class WebhookJob:
    """
    One webhook request waiting in the queue: never the app secret, which
    the sender looks up when it signs.

    @ivar events: how many events the body holds (for the metrics).
    @ivar body: the request body, as sent.
    """

    app_id: str
    url: str
    events: int
    body: str
    id: str = attrs.Factory(lambda: uuid.uuid4().hex)

    def encode(self) -> str:
        """
        The job as queued (JSON text).
        """
        return json.dumps(
            {
                "id": self.id,
                "app_id": self.app_id,
                "url": self.url,
                "events": self.events,
                "body": self.body,
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, job: str) -> WebhookJob:
        """
        Read a queued job.

        @raise ValueError: for a job that is not one of ours.
        """
        try:
            parsed = json.loads(job)
            return cls(
                app_id=str(parsed["app_id"]),
                url=str(parsed["url"]),
                events=int(parsed.get("events", 1)),
                body=str(parsed["body"]),
                id=str(parsed.get("id", "")),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"malformed webhook job: {e}") from None


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
        if name in _ONE_PER_CHANNEL:
            slot = (name, event["channel"])
            where = self.positions.get(slot)
            if where is not None:
                self.events[where] = event
                return
            self.positions[slot] = len(self.events)
        self.events.append(event)


class WebhookBatcher:
    """
    Batches events per (app, URL) and queues each batch as one job.
    """

    def __init__(self, queue: IJobQueue, clock: IReactorTime, settings: WebhookSettings) -> None:
        self._queue = queue
        self._clock = clock
        self._settings = settings
        self._batches: dict[tuple[str, str], _Batch] = {}
        self.closing = False

    def add(self, app_id: str, url: str, event: Event) -> None:
        """
        Add C{event} to the (app, URL) batch; with batching off, or once
        closing, queue it alone at once.
        """
        settings = self._settings
        if not settings.batching_enabled or self.closing:
            self._queue_job(app_id, url, [event])
            return
        key = (app_id, url)
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
        self._queue.enqueue(WebhookJob(app_id, url, len(events), body).encode())

    def flush_all(self) -> None:
        """
        Queue every batch now (shutdown).
        """
        for key in list(self._batches):
            self._flush(key)
