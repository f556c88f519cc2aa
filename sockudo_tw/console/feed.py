# -*- test-case-name: tests.test_console -*-
"""
The console's live feed: what happened (L{ConsoleFeed.publish}) handed to
each viewer whose filters want it, through a bounded queue per viewer.

Nobody pays while nobody watches: L{ConsoleFeed.watching} is the one flag
every observer checks before building a record. A viewer that reads too
slowly (its connection pushed back: L{Viewer.pauseProducing}) skips events
instead of making the server buffer them: its queue keeps the newest
C{limit} records and counts the rest, and a viewer paused longer than
C{max_paused} seconds is dropped.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

__all__ = [
    "MAX_DATA",
    "ConsoleFeed",
    "Record",
    "Viewer",
    "ViewerFilter",
    "encode_record",
]

Record = dict[str, Any]
"""
One line of the tail: C{kind} (C{api}, C{client_event}, C{subscribed},
C{unsubscribed}, C{connection_opened}, C{connection_closed},
C{channel_occupied}, C{channel_vacated}, C{member_added},
C{member_removed}, C{webhook}), C{t} (milliseconds since the epoch),
C{app} (the app id, or L{None} with C{key} set), and what the kind has:
C{channel}, C{event}, C{data}, C{socket_id}, C{user_id}, C{status},
C{ms}, C{url}.
"""

MAX_DATA = 2048
"""Characters of an event's data shown in the tail; the rest is cut."""


def encode_record(record: Record) -> bytes:
    """
    One Server-Sent Events message carrying C{record} as JSON.
    """
    return b"data: " + json.dumps(record, separators=(",", ":")).encode() + b"\n\n"


class ViewerFilter:
    """
    What one viewer asked to see: one app (by id, or by key for records
    that only know the key), and optionally channels and event names
    containing the given text.
    """

    __slots__ = ("app_id", "app_key", "channel", "event")

    def __init__(
        self, app_id: str, app_key: str | None, channel: str = "", event: str = ""
    ) -> None:
        self.app_id = app_id
        self.app_key = app_key
        self.channel = channel
        self.event = event

    def wants(self, record: Record) -> bool:
        """
        Whether C{record} passes: its app is this viewer's, and its channel
        and event name contain the filter texts (a record without a
        channel or event fails a filter that is set).
        """
        app = record.get("app")
        if app is not None:
            if app != self.app_id:
                return False
        elif self.app_key is None or record.get("key") != self.app_key:
            return False
        if self.channel and self.channel not in (record.get("channel") or ""):
            return False
        return not self.event or self.event in (record.get("event") or "")


@implementer(IPushProducer)
class Viewer:
    """
    One open feed: a bounded queue of encoded records and the connection
    they are written to. It is the connection's push producer, so the
    transport tells it when its buffer is full (L{pauseProducing}) and when
    it drained (L{resumeProducing}); meanwhile records queue, the oldest
    are skipped past C{limit}, and the skip count is sent on resumption.

    @ivar skipped: records dropped since the last write.
    @ivar paused_since: when the transport paused it, or L{None}.
    """

    def __init__(
        self,
        selection: ViewerFilter,
        write: Callable[[bytes], None],
        close: Callable[[], None],
        clock: IReactorTime,
        limit: int = 500,
    ) -> None:
        self.selection = selection
        self._write = write
        self._close = close
        self._clock = clock
        self.limit = limit
        self.pending: deque[bytes] = deque()
        self.skipped = 0
        self.paused_since: float | None = None
        self.closed = False

    def queue(self, encoded: bytes) -> None:
        """
        Add one encoded record, dropping the oldest when full.
        """
        if len(self.pending) >= self.limit:
            self.pending.popleft()
            self.skipped += 1
        self.pending.append(encoded)

    def flush(self) -> None:
        """
        Write what is queued, unless the transport asked to pause.
        """
        if self.closed or self.paused_since is not None:
            return
        chunks: list[bytes] = []
        if self.skipped:
            chunks.append(b"event: skipped\ndata: " + str(self.skipped).encode() + b"\n\n")
            self.skipped = 0
        chunks.extend(self.pending)
        self.pending.clear()
        if chunks:
            self._write(b"".join(chunks))

    def ping(self) -> None:
        """
        A comment line that keeps proxies from closing an idle stream.
        """
        if not self.closed and self.paused_since is None:
            self._write(b": ping\n\n")

    def drop(self) -> None:
        """
        End the feed (the page reconnects when it can keep up again).
        """
        if not self.closed:
            self.closed = True
            self.pending.clear()
            self._close()

    def pauseProducing(self) -> None:
        """
        The transport's buffer is full: stop writing, start skipping.
        """
        if self.paused_since is None:
            self.paused_since = self._clock.seconds()

    def resumeProducing(self) -> None:
        """
        The transport drained: write what was kept and how much was skipped.
        """
        self.paused_since = None
        self.flush()

    def stopProducing(self) -> None:
        """
        The connection is gone.
        """
        self.closed = True
        self.pending.clear()


class ConsoleFeed:
    """
    The viewers of this node and the records handed to them.

    @ivar watching: C{True} while a viewer is connected here, or (with a
        cluster relay) on another node; every producer of records checks
        it first and does nothing otherwise.
    @ivar relay: hands records to the other nodes while L{remote} (set by
        L{sockudo_tw.console.relay.ConsoleRelay}).
    @ivar watchers_changed: called with C{True} when this node's first
        viewer arrives and C{False} when its last one leaves.
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        max_viewers: int = 16,
        limit: int = 500,
        max_paused: float = 30.0,
        heartbeat: float = 15.0,
    ) -> None:
        """
        @param max_viewers: viewers beyond this many are refused.
        @param limit: records queued per viewer before the oldest are
            skipped.
        @param max_paused: seconds a viewer may stay paused before it is
            dropped.
        @param heartbeat: seconds between keep-alive comments.
        """
        self._clock = clock
        self.max_viewers = max_viewers
        self.limit = limit
        self.max_paused = max_paused
        self.heartbeat = heartbeat
        self.viewers: list[Viewer] = []
        self.watching = False
        self.remote = False
        self.relay: Callable[[Record], None] | None = None
        self._flush_call: IDelayedCall | None = None
        self._beat_call: IDelayedCall | None = None
        self.watchers_changed: list[Callable[[bool], None]] = []
        self._had_viewers = False

    def add(
        self, selection: ViewerFilter, write: Callable[[bytes], None], close: Callable[[], None]
    ) -> Viewer | None:
        """
        A new viewer, or L{None} when C{max_viewers} are already watching.
        """
        if len(self.viewers) >= self.max_viewers:
            return None
        viewer = Viewer(selection, write, close, self._clock, self.limit)
        self.viewers.append(viewer)
        self._set_watching()
        return viewer

    def remove(self, viewer: Viewer) -> None:
        """
        Forget a viewer whose connection ended.
        """
        viewer.closed = True
        if viewer in self.viewers:
            self.viewers.remove(viewer)
        self._set_watching()

    def set_remote(self, remote: bool) -> None:
        """
        Whether a viewer on another node wants this node's records (the
        cluster relay says so); records are then also handed to L{relay}.
        """
        self.remote = remote
        self._set_watching()

    def _set_watching(self) -> None:
        watching = bool(self.viewers) or (self.remote and self.relay is not None)
        if watching and self._beat_call is None:
            self._beat_call = self._clock.callLater(self.heartbeat, self._beat)
        if not watching and self._beat_call is not None:
            if self._beat_call.active():
                self._beat_call.cancel()
            self._beat_call = None
        if watching != self.watching:
            self.watching = watching
        local = bool(self.viewers)
        if local != self._had_viewers:
            self._had_viewers = local
            for changed in self.watchers_changed:
                changed(local)

    def publish(self, record: Record) -> None:
        """
        Queue C{record} for every viewer whose filter wants it (encoded
        once); the writes happen together at the end of the reactor turn.
        Call it only while L{watching}.
        """
        self.receive(record)
        if self.remote and self.relay is not None:
            self.relay(record)

    def receive(self, record: Record) -> None:
        """
        Queue C{record} for this node's viewers only (a record another node
        relayed, or this node's own).
        """
        encoded: bytes | None = None
        for viewer in self.viewers:
            if viewer.selection.wants(record):
                if encoded is None:
                    encoded = encode_record(record)
                viewer.queue(encoded)
        if encoded is not None and self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self._flush)

    def now_ms(self) -> int:
        """
        The clock's time in milliseconds, for a record's C{t}.
        """
        return int(self._clock.seconds() * 1000)

    def _flush(self) -> None:
        self._flush_call = None
        for viewer in list(self.viewers):
            viewer.flush()

    def _beat(self) -> None:
        """
        Keep streams alive and drop viewers paused too long.
        """
        self._beat_call = None
        now = self._clock.seconds()
        for viewer in list(self.viewers):
            if viewer.paused_since is not None and now - viewer.paused_since > self.max_paused:
                self._log.info(
                    "console: dropped a viewer of app {app} that read nothing for {seconds}s",
                    app=viewer.selection.app_id,
                    seconds=self.max_paused,
                )
                viewer.drop()
                self.remove(viewer)
            else:
                viewer.ping()
        self._set_watching()
