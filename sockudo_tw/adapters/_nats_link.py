# -*- test-case-name: tests.test_nats_adapter -*-
"""
The NATS adapter's one connection: nats-py, bridged to the Twisted reactor.

Two modes, chosen by the reactor the daemon runs on:

  - On Twisted's asyncio reactor (C{twistd -r asyncio}) the client runs
    on the reactor's own loop: no thread, no hand-over. Measured better
    (1 publishing and 2 receiving nodes, 200 subscribers): it kept up with
    120,000 deliveries/s in every run, and its receiving nodes used about
    a fifth less CPU at 60,000/s.
  - On any other reactor (the default epoll one) the client runs on its
    own asyncio loop in a thread. Crossing threads costs one wake-up per
    batch, not per message: each side queues on a deque and schedules a
    drain only when none is pending. Up to 60,000 deliveries/s it matched
    the asyncio reactor; at 120,000/s it fell behind in half the runs (the
    two threads contend for the interpreter lock).

Publishes while the connection is down are dropped and counted (as the
Redis adapter does): the adapter's sequence numbers notice the gap and
resynchronise once the connection is back, and no stale broadcast is
replayed to clients after an outage.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from sockudo_tw.compat.twisted import asyncio_loop_of

__all__ = ["NatsLink", "NatsLinkOptions", "missing_nats_py"]

MessageHandler = Callable[[str, bytes], None]
"""
Called on the reactor thread with each message's subject and payload.
"""


def missing_nats_py() -> str | None:
    """
    The start-up error to show when nats-py is not installed, else L{None}.
    """
    try:
        import nats  # noqa: F401
    except ImportError:
        return "adapter.driver \"nats\" needs the nats-py client: pip install 'sockudo-tw[nats]'"
    return None


@attrs.frozen
class NatsLinkOptions:
    """
    How to reach NATS (C{adapter.nats}).

    @ivar connect_timeout: seconds allowed for one connection attempt.
    @ivar reconnect_wait: seconds between attempts while NATS is away.
    @ivar ping_interval: seconds between client PINGs; two unanswered
        ones drop the connection, so a stalled server is noticed within
        about three intervals (before peers are declared dead).
    """

    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    username: str | None = None
    password: str | None = None
    token: str | None = None
    connect_timeout: float = 5.0
    reconnect_wait: float = 1.0
    ping_interval: float = 10.0
    name: str = "sockudo-tw"


class NatsLink:
    """
    A NATS connection that reconnects forever, subscribed to fixed
    subjects, used from the reactor thread.

    @ivar up: whether the connection is established (reactor's view).
    @ivar dropped: publishes dropped because the connection was down or
        the payload too large.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        options: NatsLinkOptions,
        subjects: Sequence[str],
        on_message: MessageHandler,
        on_state: Callable[[bool], None] = lambda up: None,
    ) -> None:
        self._reactor = reactor
        self._options = options
        self._subjects = tuple(subjects)
        self._on_message = on_message
        self._on_state = on_state
        self.up = False
        self.dropped = 0
        self.reconnects = 0
        self._outbox: collections.deque[tuple[str, bytes]] = collections.deque()
        self._inbox: collections.deque[tuple[str, bytes]] = collections.deque()
        # Hand-over flags: set by the side that queues and schedules a
        # drain, cleared by the drain before it empties the queue, so an
        # item queued while a drain runs is never stranded.
        self._outbox_scheduled = False
        self._inbox_scheduled = False
        self._flushing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._nc: Any = None
        self._stopping = False
        self._stopped: Deferred[None] = Deferred()
        self._main: asyncio.Task[None] | None = None
        # On Twisted's asyncio reactor the client runs on the reactor's own
        # loop: no thread, no hand-over.
        self._shared_loop = asyncio_loop_of(reactor)

    # -- reactor side --------------------------------------------------------

    def start(self) -> None:
        """
        Start the loop thread, which connects and keeps reconnecting.
        """
        if self._shared_loop is not None:
            self.log.info("NATS client on the reactor's asyncio loop")
            self._loop = self._shared_loop
            self._main = self._loop.create_task(self._connect_forever())
            return
        self.log.info("NATS client on its own asyncio loop thread")
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._run, args=(loop,), name="sockudo-nats", daemon=True
        )
        self._thread.start()

    def stop(self) -> Deferred[None]:
        """
        Flush what was published, close the connection, end the thread.
        """
        if self._loop is None or self._stopping:
            return self._stopped
        self._stopping = True
        if self._shared_loop is not None:
            self._begin_stop()
        else:
            self._loop.call_soon_threadsafe(self._begin_stop)
        return self._stopped

    def publish(self, subject: str, payload: bytes) -> None:
        """
        Queue a message; dropped (and counted) while the link is down.
        """
        if not self.up or self._loop is None:
            self.dropped += 1
            return
        self._outbox.append((subject, payload))
        if not self._outbox_scheduled:
            self._outbox_scheduled = True
            if self._shared_loop is not None:
                self._loop.call_soon(self._schedule_flush)
                return
            try:
                self._loop.call_soon_threadsafe(self._schedule_flush)
            except RuntimeError:
                self.dropped += 1

    def _deliver_inbox(self) -> None:
        self._inbox_scheduled = False
        inbox = self._inbox
        while inbox:
            subject, payload = inbox.popleft()
            try:
                self._on_message(subject, payload)
            except Exception:
                self.log.failure("NATS message handler failed on {subject}", subject=subject)

    def _set_up(self, up: bool) -> None:
        if up == self.up:
            return
        self.up = up
        if up:
            self.log.info("NATS connection up")
        else:
            self.log.warn("NATS connection lost")
        self._on_state(up)

    # -- loop thread ---------------------------------------------------------

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        self._main = loop.create_task(self._connect_forever())
        try:
            loop.run_forever()
        finally:
            loop.close()
            self._reactor.callFromThread(self._stopped.callback, None)  # thread mode only

    def _begin_stop(self) -> None:
        assert self._loop is not None
        self._loop.create_task(self._close())

    async def _close(self) -> None:
        if self._main is not None and not self._main.done():
            self._main.cancel()
            try:
                await self._main
            except BaseException:  # the cancellation, or a failed attempt
                pass
        nc = self._nc
        if nc is not None:
            try:
                for _ in range(100):
                    if not self._flushing:
                        break
                    await asyncio.sleep(0.01)
                await self._flush_outbox()
                await asyncio.wait_for(nc.close(), 2.0)
            except Exception:
                pass
        self._to_reactor(self._set_up, False)
        if self._shared_loop is not None:
            self._stopped.callback(None)
            return
        assert self._loop is not None
        self._loop.stop()

    async def _connect_forever(self) -> None:
        import nats
        from nats.errors import NoServersError

        options = self._options

        async def disconnected() -> None:
            self._to_reactor(self._set_up, False)

        async def reconnected() -> None:
            self.reconnects += 1
            self._to_reactor(self._set_up, True)

        async def error(e: Exception) -> None:
            self._to_reactor(self._log_error, repr(e))

        while not self._stopping:
            try:
                nc = await nats.connect(
                    servers=list(options.servers),
                    user=options.username,
                    password=options.password,
                    token=options.token,
                    connect_timeout=options.connect_timeout,
                    reconnect_time_wait=options.reconnect_wait,
                    max_reconnect_attempts=-1,
                    ping_interval=options.ping_interval,
                    max_outstanding_pings=2,
                    allow_reconnect=True,
                    no_echo=True,
                    name=options.name,
                    disconnected_cb=disconnected,
                    reconnected_cb=reconnected,
                    error_cb=error,
                )
            except (TimeoutError, OSError, NoServersError, Exception) as e:
                self._to_reactor(self._log_error, f"connect failed: {e!r}")
                await asyncio.sleep(options.reconnect_wait)
                continue
            self._nc = nc
            for subject in self._subjects:
                await nc.subscribe(subject, cb=self._received)
            self._to_reactor(self._set_up, True)
            return

    def _to_reactor(self, f: Callable[..., None], *args: Any) -> None:
        """
        Run C{f} on the reactor thread (at once when that is this thread).
        """
        if self._shared_loop is not None:
            self._shared_loop.call_soon(f, *args)
        else:
            self._reactor.callFromThread(f, *args)

    def _log_error(self, text: str) -> None:
        self.log.warn("NATS: {error}", error=text)

    async def _received(self, msg: Any) -> None:
        self._inbox.append((msg.subject, msg.data))
        if not self._inbox_scheduled:
            self._inbox_scheduled = True
            self._to_reactor(self._deliver_inbox)

    def _schedule_flush(self) -> None:
        self._outbox_scheduled = False
        if self._flushing:
            # The running flush loops until the queue is empty: one flush
            # at a time keeps the publishes in order.
            return
        assert self._loop is not None
        self._loop.create_task(self._flush_outbox())

    async def _flush_outbox(self) -> None:
        if self._flushing:
            return
        self._flushing = True
        try:
            await self._publish_queued()
        finally:
            self._flushing = False

    async def _publish_queued(self) -> None:
        from nats.errors import MaxPayloadError

        nc = self._nc
        outbox = self._outbox
        while outbox:
            subject, payload = outbox.popleft()
            if nc is None or not nc.is_connected:
                self.dropped += 1
                continue
            try:
                await nc.publish(subject, payload)
            except MaxPayloadError:
                self.dropped += 1
                self._to_reactor(
                    self._log_error, f"message of {len(payload)} bytes over max_payload dropped"
                )
            except Exception as e:
                self.dropped += 1
                self._to_reactor(self._log_error, f"publish failed: {e!r}")
