# -*- test-case-name: tests.test_console -*-
"""
Where the console's records come from: the WebSocket side's observer
(L{ConsoleObserver}, joined to the daemon's observer by L{ConsoleTee}),
the HTTP API's publishes (L{ApiTriggerWatch}, around the adapter the API
publishes through) and webhook requests (L{WebhookPostWatch}, around the
sender's HTTP client).

Each checks L{ConsoleFeed.watching} first and does nothing else while
nobody watches. The per-delivery notices (C{message_sent},
C{broadcast_delivered}, ...) are not watched at all: L{ConsoleTee} binds
them straight to the daemon's observer, so they cost nothing more.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from zope.interface import implementer

from sockudo_tw.adapters import IAdapter
from sockudo_tw.console.feed import MAX_DATA, ConsoleFeed, Record
from sockudo_tw.hooks import IPusherEvents, NoPusherEvents
from sockudo_tw.webhooks import HTTPPoster

__all__ = [
    "WATCHED",
    "ApiTriggerWatch",
    "ConsoleObserver",
    "ConsoleTee",
    "WebhookPostWatch",
    "shown_data",
]

WATCHED = (
    "connection_opened",
    "connection_closed",
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "subscribed",
    "unsubscribed",
    "client_event",
)
"""The L{IPusherEvents} notices the console shows."""


def shown_data(data: object) -> str | None:
    """
    An event's data as the tail shows it: text, cut at L{MAX_DATA}.
    """
    if data is None:
        return None
    text = data if isinstance(data, str) else json.dumps(data)
    return text if len(text) <= MAX_DATA else text[:MAX_DATA] + "\u2026"


@implementer(IPusherEvents)
class ConsoleObserver(NoPusherEvents):
    """
    Turns the WebSocket side's notices into records while someone watches.
    """

    def __init__(self, feed: ConsoleFeed) -> None:
        self._feed = feed

    def _record(self, kind: str, app_id: str, **fields: Any) -> None:
        feed = self._feed
        feed.publish({"kind": kind, "t": feed.now_ms(), "app": app_id, **fields})

    def connection_opened(self, app_id: str, socket_id: str) -> None:
        if self._feed.watching:
            self._record("connection_opened", app_id, socket_id=socket_id)

    def connection_closed(self, app_id: str, socket_id: str) -> None:
        if self._feed.watching:
            self._record("connection_closed", app_id, socket_id=socket_id)

    def channel_occupied(self, app_id: str, channel: str) -> None:
        if self._feed.watching:
            self._record("channel_occupied", app_id, channel=channel)

    def channel_vacated(self, app_id: str, channel: str) -> None:
        if self._feed.watching:
            self._record("channel_vacated", app_id, channel=channel)

    def member_added(self, app_id: str, channel: str, user_id: str) -> None:
        if self._feed.watching:
            self._record("member_added", app_id, channel=channel, user_id=user_id)

    def member_removed(self, app_id: str, channel: str, user_id: str) -> None:
        if self._feed.watching:
            self._record("member_removed", app_id, channel=channel, user_id=user_id)

    def subscribed(self, app_id: str, channel: str, socket_id: str) -> None:
        if self._feed.watching:
            self._record("subscribed", app_id, channel=channel, socket_id=socket_id)

    def unsubscribed(self, app_id: str, channel: str, socket_id: str) -> None:
        if self._feed.watching:
            self._record("unsubscribed", app_id, channel=channel, socket_id=socket_id)

    def client_event(
        self,
        app_id: str,
        channel: str,
        event: str,
        data: str | None,
        socket_id: str,
        user_id: str | None,
    ) -> None:
        if self._feed.watching:
            self._record(
                "client_event",
                app_id,
                channel=channel,
                event=event,
                data=shown_data(data),
                socket_id=socket_id,
                user_id=user_id,
            )


def _both(first: Callable[..., None], second: Callable[..., None]) -> Callable[..., None]:
    def each(*args: Any) -> None:
        first(*args)
        second(*args)

    return each


@implementer(IPusherEvents)
class ConsoleTee:
    """
    The daemon's observer with the console's added: the L{WATCHED} notices
    go to both, every other notice is the daemon observer's own bound
    method (no extra call on the per-delivery path).
    """

    def __init__(self, inner: IPusherEvents, console: IPusherEvents) -> None:
        for name in IPusherEvents.names():
            setattr(self, name, getattr(inner, name))
        for name in WATCHED:
            setattr(self, name, _both(getattr(inner, name), getattr(console, name)))

    def __getattr__(self, name: str) -> Any:
        # Never reached (every method is set above); it tells mypy-zope
        # the interface is provided.
        raise AttributeError(name)


@implementer(IAdapter)
class ApiTriggerWatch:
    """
    The adapter as the HTTP API sees it: each publish is recorded (while
    someone watches) and handed on unchanged; every other method is the
    adapter's own.
    """

    def __init__(self, adapter: IAdapter, feed: ConsoleFeed) -> None:
        self._adapter = adapter
        self._feed = feed
        self._broadcast = adapter.broadcast

    def broadcast(
        self, app_id: str, channel: str, frame: bytes, except_socket_id: str | None
    ) -> None:
        """
        Record the published event, then deliver it.
        """
        if self._feed.watching:
            self._record(app_id, channel, frame, except_socket_id)
        self._broadcast(app_id, channel, frame, except_socket_id)

    def _record(
        self, app_id: str, channel: str, frame: bytes, except_socket_id: str | None
    ) -> None:
        try:
            message = json.loads(frame)
        except ValueError:
            message = {}
        record: Record = {
            "kind": "api",
            "t": self._feed.now_ms(),
            "app": app_id,
            "channel": channel,
            "event": message.get("event"),
            "data": shown_data(message.get("data")),
        }
        if except_socket_id is not None:
            record["socket_id"] = except_socket_id
        self._feed.publish(record)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._adapter, name)


class WebhookPostWatch:
    """
    The webhook sender's HTTP client: each request's outcome (status code,
    C{timeout} or C{connection}) and latency are recorded while someone
    watches. Requests carry the app's key, not its id (C{X-Pusher-Key}).
    """

    def __init__(self, http: HTTPPoster, feed: ConsoleFeed, clock: IReactorTime) -> None:
        self._http = http
        self._feed = feed
        self._clock = clock

    def post(self, url: str, /, *, data: bytes, headers: Headers) -> Deferred[Any]:
        """
        POST as the wrapped client does; note how it went.
        """
        d = self._http.post(url, data=data, headers=headers)
        if not self._feed.watching:
            return d
        started = self._clock.seconds()
        keys = headers.getRawHeaders("X-Pusher-Key") or [""]

        def done(response: Any) -> Any:
            self._record(url, data, keys[0], started, str(getattr(response, "code", "?")))
            return response

        def failed(failure: Failure) -> Failure:
            timed_out = failure.check(CancelledError, DeferredTimeoutError)  # type: ignore[no-untyped-call]
            self._record(url, data, keys[0], started, "timeout" if timed_out else "connection")
            return failure

        return d.addCallbacks(done, failed)

    def _record(self, url: str, body: bytes, key: str, started: float, status: str) -> None:
        if not self._feed.watching:
            return
        try:
            events = json.loads(body).get("events", [])
        except (ValueError, AttributeError):
            events = []
        names = sorted({str(e.get("name")) for e in events if isinstance(e, dict)})
        channels = sorted({str(e.get("channel")) for e in events if isinstance(e, dict)})
        self._feed.publish(
            {
                "kind": "webhook",
                "t": self._feed.now_ms(),
                "app": None,
                "key": key,
                "url": url,
                "event": ",".join(names),
                "channel": ",".join(channels),
                "status": status,
                "ms": round((self._clock.seconds() - started) * 1000, 1),
                "data": shown_data(body.decode("utf-8", "replace")),
            }
        )
