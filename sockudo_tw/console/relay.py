# -*- test-case-name: tests.test_console -*-
"""
The console's tail cluster-wide, through the Redis adapter's server.

Each node with a console viewer keeps its id in the sorted set
C{<prefix>console_viewers}, scored with an expiry it renews every
C{interval} seconds (so a node that dies stops counting within C{ttl}).
Every node reads that set at the same pace: while it names another node,
this node's records are also PUBLISHed on C{<prefix>console}, one message
per reactor turn (at most C{max_batch} records; more are counted as
skipped), and the nodes with viewers hand what they receive to their
viewers. While nobody watches anywhere, nothing is published: each node
pays one small sorted-set read per C{interval}.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from sockudo_tw.console.feed import ConsoleFeed, Record

__all__ = ["ConsoleRelay", "RelayLink"]


class RelayLink(Protocol):
    """
    The part of L{sockudo_tw.adapters._redis_link.RedisLink} the relay uses:
    a command connection and PUBLISH on the link's own channel.
    """

    def publish(self, payload: bytes) -> bool: ...

    def command(self, *args: bytes | str | int, timeout: float = 5.0) -> Deferred[Any]: ...

    def startService(self) -> None: ...

    def stopService(self) -> Deferred[None] | None: ...


class ConsoleRelay(Service):
    """
    Relays console records between nodes while some node has a viewer.

    @ivar link: the Redis connection; set after construction (the link
        calls L{received} with each message, so it is built after this).
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        feed: ConsoleFeed,
        prefix: str,
        node_id: str,
        interval: float = 2.0,
        ttl: float = 6.0,
        max_batch: int = 500,
    ) -> None:
        self._clock = clock
        self._feed = feed
        self.key = f"{prefix}console_viewers"
        self.node_id = node_id
        self.interval = interval
        self.ttl = ttl
        self.max_batch = max_batch
        self.link: RelayLink | None = None
        self._batch: list[Record] = []
        self._skipped = 0
        self._send_call: IDelayedCall | None = None
        self._registered = False
        self._failing = False
        self._poller = LoopingCall(self.poll)
        self._poller.clock = clock
        feed.relay = self.queue
        feed.watchers_changed.append(self._viewers_changed)

    def _viewers_changed(self, has_viewers: bool) -> None:
        """
        Tell the other nodes at once when this node's first viewer comes
        or its last one goes.
        """
        self.poll()

    def startService(self) -> None:
        """
        Connect, then poll the viewers' set every C{interval} seconds.
        """
        super().startService()  # type: ignore[no-untyped-call]
        assert self.link is not None
        self.link.startService()
        self._poller.start(self.interval, now=False)

    def stopService(self) -> Deferred[None]:
        """
        Stop polling, leave the viewers' set, close the connection.
        """
        super().stopService()  # type: ignore[no-untyped-call]
        if self._poller.running:
            self._poller.stop()
        self._feed.set_remote(False)
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        assert self.link is not None
        if self._registered:
            try:
                await self.link.command("ZREM", self.key, self.node_id)
            except Exception:
                pass
            self._registered = False
        stopped = self.link.stopService()
        if stopped is not None:
            await stopped

    def poll(self) -> Deferred[None]:
        """
        Say whether this node has viewers, and learn whether others do.
        """
        return Deferred.fromCoroutine(self._poll())

    async def _poll(self) -> None:
        link = self.link
        if link is None or not self.running:
            return
        now_ms = int(self._clock.seconds() * 1000)
        ttl_ms = int(self.ttl * 1000)
        try:
            if self._feed.viewers:
                await link.command("ZADD", self.key, now_ms + ttl_ms, self.node_id)
                await link.command("PEXPIRE", self.key, ttl_ms)
                self._registered = True
            elif self._registered:
                await link.command("ZREM", self.key, self.node_id)
                self._registered = False
            members = await link.command("ZRANGEBYSCORE", self.key, now_ms, "+inf")
        except Exception as e:
            self._down(str(e) or type(e).__name__)
            return
        if self._failing:
            self._failing = False
            self._log.info("console relay: Redis answers again")
        others = [m for m in members or () if _text(m) != self.node_id]
        self._feed.set_remote(bool(others))

    def _down(self, error: str) -> None:
        if not self._failing:
            self._failing = True
            self._log.warn(
                "console relay: Redis does not answer ({error}); showing this node only",
                error=error,
            )
        self._feed.set_remote(False)

    def queue(self, record: Record) -> None:
        """
        Send C{record} to the other nodes with this turn's others.
        """
        if len(self._batch) >= self.max_batch:
            self._skipped += 1
            return
        self._batch.append(record)
        if self._send_call is None:
            self._send_call = self._clock.callLater(0, self._send)

    def _send(self) -> None:
        self._send_call = None
        batch, self._batch = self._batch, []
        skipped, self._skipped = self._skipped, 0
        if self.link is None or not batch:
            return
        message = {"node": self.node_id, "records": batch, "skipped": skipped}
        self.link.publish(json.dumps(message, separators=(",", ":")).encode())

    def received(self, payload: bytes) -> None:
        """
        A batch from a node: hand its records to this node's viewers.
        """
        if not self._feed.viewers:
            return
        try:
            message = json.loads(payload)
            node = str(message["node"])
            records = message["records"]
        except (ValueError, KeyError, TypeError):
            return
        if node == self.node_id or not isinstance(records, list):
            return
        for record in records:
            if isinstance(record, dict):
                record["node"] = node
                self._feed.receive(record)


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
