# -*- test-case-name: tests.test_triggerchannel -*-
"""
A lean HTTP/1.1 front for the API's hot path, C{POST /apps/{id}/events}.

Server SDKs publish over keep-alive connections, one small signed JSON
request after another. Parsing each of them with twisted.web (its line
parser, C{Request} and C{Headers} objects, chunked response writing) cost
more CPU than the trigger handler itself. L{TriggerChannel} is the protocol
on every listener: it serves plain, complete trigger requests itself with
the same handler (L{sockudo_tw.api.PusherApi.trigger}) and hands the
connection to the C{Site}'s twisted.web channel for good at the first
request that is anything else: a WebSocket upgrade, another route, chunked
bodies, C{Expect}, HTTP/1.0, bare line ends, heads over 8 KiB or
C{http_api.max_headers} fields, bodies over 256 KiB or the body limit.
Anything unusual therefore gets twisted.web's answer (its channel,
L{sockudo_tw.web.BoundedChannel}, refuses what is over a bound with 400,
413 or 431), and answers to triggers are the same either way but for
framing (this path sends C{Content-Length}, not chunks). Both paths apply
the header, body and idle timeouts of L{sockudo_tw.config.HttpLimits}.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from typing import Any, ClassVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocolNegotiationFactory,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web.http import datetimeToString
from twisted.web.server import Site
from zope.interface import implementer

from sockudo_tw.config import HttpLimits
from sockudo_tw.directwrite import write_now
from sockudo_tw.web import BARE_EOL as _BARE_EOL
from sockudo_tw.web import REASONS, BoundedChannel, SockudoSite, error_response

__all__ = [
    "MAX_BODY",
    "MAX_HEAD",
    "TriggerChannel",
    "TriggerChannelFactory",
    "TriggerHead",
    "TriggerRequest",
    "parse_trigger",
]

MAX_HEAD = 8192
"""
Bytes of request line and headers this path reads; a longer head goes to
twisted.web, which applies C{http_api.max_header_bytes}.
"""

MAX_BODY = 256 * 1024
"""
The largest body served here; bigger ones go to twisted.web, which applies
C{http_api.request_limit_in_mb}.
"""

NEED_MORE = object()
"""
L{parse_trigger}'s answer when the buffer holds the start of a trigger
request that is not complete yet.
"""

_HEADER_LINES = re.compile(rb"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\r\n]*\r\n)*")
"""
Header lines as RFC 9112 spells them: a token, a colon, a value. No space
before the colon, no obsolete line folding and no bare CR or LF, which
twisted.web may treat differently; such requests are declined.
"""

_DECLINED = (b"\ntransfer-encoding:", b"\nexpect:", b"\nupgrade:")
_PREFIX = b"POST /apps/"


class TriggerHead:
    """
    One trigger request, as parsed by L{parse_trigger} (a plain slotted
    class: built once per request, where attrs' frozen classes cost a
    measurable share).

    @ivar uri: the request target (path and query), as sent.
    @ivar app_id: the C{{id}} path segment, decoded.
    @ivar headers: the header lines as sent, each after a C{\\r\\n}.
    @ivar body: the body, exactly C{Content-Length} bytes (empty until the
        whole request is there).
    @ivar keep_alive: whether the connection stays open after the answer.
    @ivar start: where the body starts in the buffer.
    @ivar size: bytes of the buffer this request uses.
    """

    __slots__ = ("_lower", "app_id", "body", "headers", "keep_alive", "size", "start", "uri")

    def __init__(
        self,
        uri: bytes,
        app_id: str,
        headers: bytes,
        lower: bytes,
        keep_alive: bool,
        start: int,
        size: int,
    ) -> None:
        self.uri = uri
        self.app_id = app_id
        self.headers = headers
        self._lower = lower
        self.keep_alive = keep_alive
        self.start = start
        self.size = size
        self.body = b""

    def header(self, name: bytes) -> bytes | None:
        """
        The last value of header C{name} (any case), as sent, or L{None}.
        """
        at = self._lower.rfind(b"\n" + name.lower() + b":")
        if at < 0:
            return None
        start = at + len(name) + 2
        return self.headers[start : self.headers.index(b"\r", start)].strip(b" \t")


def _keep_alive(lower: bytes) -> bool:
    """
    Whether no C{Connection} header of the lower-cased C{lower} header lines
    has the C{close} option (RFC 9110 section 7.6.1: every such header, each
    a comma-separated list).
    """
    at = lower.find(b"\nconnection:")
    while at >= 0:
        end = lower.index(b"\r", at)
        for option in lower[at + 12 : end].split(b","):
            if option.strip(b" \t") == b"close":
                return False
        at = lower.find(b"\nconnection:", end)
    return True


def _parse_head(
    buffer: bytes | bytearray, end: int, max_body: int, max_headers: int
) -> TriggerHead | None:
    """
    The trigger head ending (before its blank line) at C{end} of C{buffer},
    or L{None} if this path does not serve it.
    """
    line_end = buffer.index(b"\r\n")
    request_line = bytes(buffer[:line_end]).split(b" ")
    if len(request_line) != 3 or request_line[2] != b"HTTP/1.1":
        return None
    uri = request_line[1]
    path = uri.partition(b"?")[0]
    segments = path.split(b"/")
    # b"/apps/{id}/events" splits into ["", "apps", id, "events"]; a "%" may
    # hide a "/" or spell a segment differently, so twisted.web decides.
    if len(segments) != 4 or segments[3] != b"events" or not segments[2] or b"%" in path:
        return None
    try:
        app_id = segments[2].decode("utf-8")
    except UnicodeDecodeError:
        return None
    block = bytes(buffer[line_end + 2 : end + 2])
    if _HEADER_LINES.fullmatch(block) is None or block.count(b"\n") > max_headers:
        return None
    headers = b"\r\n" + block
    lower = headers.lower()
    for declined in _DECLINED:
        if declined in lower:
            return None
    at = lower.find(b"\ncontent-length:")
    if at < 0 or lower.find(b"\ncontent-length:", at + 1) >= 0:
        return None
    value = lower[at + 16 : lower.index(b"\r", at + 16)].strip(b" \t")
    if not value.isdigit() or len(value) > 18:
        return None  # twisted.web's channel answers 400 or 413
    length = int(value)
    if length > max_body:
        return None
    start = end + 4
    return TriggerHead(uri, app_id, headers, lower, _keep_alive(lower), start, start + length)


def parse_trigger(
    buffer: bytes | bytearray, max_body: int = MAX_BODY, max_headers: int = 100
) -> TriggerHead | object | None:
    """
    Parse the request at the start of C{buffer} if it is a plain trigger.

    @param max_body: the largest body served; a larger one is declined.
    @param max_headers: the most header fields served; more are declined.
    @return: a L{TriggerHead} with its body when a whole trigger request is
        there, L{NEED_MORE} when what is there could still become one, and
        L{None} for anything this path does not serve (twisted.web must
        take it).
    """
    if not buffer.startswith(_PREFIX):
        return NEED_MORE if _PREFIX.startswith(buffer) else None
    end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD)
    if end < 0:
        return None if len(buffer) >= MAX_HEAD else NEED_MORE
    head = _parse_head(buffer, end, max_body, max_headers)
    if head is None:
        return None
    if len(buffer) < head.size:
        return NEED_MORE
    head.body = bytes(buffer[head.start : head.size])
    return head


class TriggerRequest:
    """
    The part of twisted.web's C{IRequest} the trigger handler uses, with the
    answer collected for L{TriggerChannel} to write in one piece.

    @ivar code: the response status.
    @ivar response_headers: response headers in the order set.
    @ivar finished: set once the answer is complete.
    @ivar sentLength: body bytes of the answer (twisted.web's name, read by
        the API metrics).
    """

    method = b"POST"
    args: ClassVar[dict[bytes, list[bytes]]] = {}

    def __init__(self, head: TriggerHead) -> None:
        self.uri = head.uri
        self.path = head.uri.partition(b"?")[0]
        self.content = io.BytesIO(head.body)
        self._head = head
        self.code = 200
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.finished = False
        self._disconnected = False
        self.sentLength = 0
        self._on_finish: Callable[[TriggerRequest], None] | None = None
        self._finish_waiters: list[Deferred[None]] = []

    def getHeader(self, name: bytes) -> bytes | None:  # noqa: N802 (IRequest's name)
        """
        A request header's last value, or L{None}.
        """
        return self._head.header(name)

    def setHeader(self, name: bytes, value: bytes) -> None:  # noqa: N802 (IRequest's name)
        """
        Set a response header, replacing an earlier value.
        """
        lower = name.lower()
        self.response_headers = [h for h in self.response_headers if h[0].lower() != lower]
        self.response_headers.append((name, value))

    def setResponseCode(self, code: int) -> None:  # noqa: N802 (IRequest's name)
        """
        Set the response status.
        """
        self.code = code

    def write(self, data: bytes) -> None:
        """
        Add to the response body.
        """
        if self.finished:
            raise RuntimeError("TriggerRequest.write called after finish")
        self.body.append(data)
        self.sentLength += len(data)

    def finish(self) -> None:
        """
        Complete the answer; the channel writes it.
        """
        if self.finished:
            raise RuntimeError("TriggerRequest.finish called twice")
        self.finished = True
        if self._on_finish is not None and not self._disconnected:
            self._on_finish(self)
        self._fire(None)

    def notifyFinish(self) -> Deferred[None]:  # noqa: N802 (IRequest's name)
        """
        A Deferred fired when the answer is complete, failed if the client
        goes first.
        """
        if self.finished:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._finish_waiters.append(d)
        return d

    def connection_lost(self, reason: Failure) -> None:
        """
        The client went before the answer was complete.
        """
        self._disconnected = True
        self._fire(reason)

    def _fire(self, result: Failure | None) -> None:
        waiters, self._finish_waiters = self._finish_waiters, []
        for d in waiters:
            if result is None:
                d.callback(None)
            else:
                d.errback(result)


Handler = Callable[[TriggerRequest, str], Any]
"""
Serves one trigger: given the request and the app id, writes the answer
(possibly later) and finishes it, as L{sockudo_tw.api.PusherApi.render_trigger}.
"""

Recorder = Callable[[Any, float, int], None]
"""
Counts one served call for metrics: the request, when it started, and the
body size received.
"""


@implementer(IProtocolNegotiationFactory)
class TriggerChannelFactory(Factory):
    """
    The factory for every API/WebSocket listener: builds L{TriggerChannel}s
    that fall back on C{site}'s channels.

    @param site: the C{Site} serving everything but plain triggers.
    @param handler: serves a trigger (L{sockudo_tw.api.PusherApi.render_trigger}).
    @param clock: for the timeouts and response dates.
    @param recorder: counts served triggers for metrics, if any.
    @param limits: the bounds of the HTTP edge (the C{Site}'s by default).
    """

    noisy = False

    def __init__(
        self,
        site: Site,
        handler: Handler,
        clock: IReactorTime,
        recorder: Recorder | None = None,
        limits: HttpLimits | None = None,
    ) -> None:
        self.site = site
        self.handler = handler
        self.clock = clock
        self.recorder = recorder
        if limits is None:
            limits = site.limits if isinstance(site, SockudoSite) else HttpLimits()
        self.limits = limits
        self.max_body = min(MAX_BODY, limits.body_limit)
        self.max_head = min(MAX_HEAD, limits.max_header_bytes)
        self._date_second = -1
        self._date = b""

    def doStart(self) -> None:  # noqa: N802 (Factory's name)
        """
        Start the C{Site} along with this factory.
        """
        super().doStart()  # type: ignore[no-untyped-call]
        self.site.doStart()  # type: ignore[no-untyped-call]

    def doStop(self) -> None:  # noqa: N802 (Factory's name)
        """
        Stop the C{Site} along with this factory.
        """
        self.site.doStop()  # type: ignore[no-untyped-call]
        super().doStop()  # type: ignore[no-untyped-call]

    def buildProtocol(self, addr: IAddress | None) -> TriggerChannel:
        """
        A channel for one connection from C{addr}.
        """
        return TriggerChannel(self, addr)

    def acceptableProtocols(self) -> list[bytes]:  # noqa: N802 (Twisted's name)
        """
        The protocols offered over TLS ALPN: HTTP/1.1 only (h2 is not
        served). Without an answer here Twisted's TLS refuses every client
        that offers ALPN, as browsers do.
        """
        return [b"http/1.1"]

    def logPrefix(self) -> str:  # noqa: N802 (Twisted's name)
        """
        The name in the listener's start and stop lines.
        """
        return "sockudo-tw HTTP"

    def date(self) -> bytes:
        """
        The C{Date} header value for now, formatted once a second.
        """
        second = int(self.clock.seconds())
        if second != self._date_second:
            self._date_second = second
            self._date = datetimeToString(second)  # type: ignore[no-untyped-call]
        return self._date


class TriggerChannel(Protocol):
    """
    One HTTP connection: plain triggers are served here, and the first
    other request hands the connection to the C{Site}'s own channel.

    Bounds (L{HttpLimits}): a head must be complete within
    C{header_timeout_seconds} of its first byte (or of the connection), a
    body within C{body_timeout_seconds} of its head, else 408 and close; a
    connection idle C{idle_timeout_seconds} between requests is closed. One
    timer per connection, looked at when it fires (no timer is reset per
    request), and moved earlier only when a request arrives in pieces.
    Received bytes go to a C{bytearray} and the end of a head is searched
    only in what is new, so any split of a request costs linear time.
    """

    _log = Logger()

    def __init__(self, factory: TriggerChannelFactory, addr: IAddress | None) -> None:
        self._factory = factory
        self._addr = addr
        self._buffer: bytes | bytearray = b""
        self._scanned = 0
        self._pending: TriggerHead | None = None
        self._waiting: TriggerRequest | None = None
        self._paused = False
        self._closing = False
        self._timer: IDelayedCall | None = None
        self._last_active = 0.0
        self._head_started: float | None = None
        self._head_done: float | None = None

    def connectionMade(self) -> None:
        """
        Answer small writes at once, and start the first head's timeout.
        """
        transport: Any = self.transport
        if ITCPTransport.providedBy(transport):
            transport.setTcpNoDelay(True)
        now = self._factory.clock.seconds()
        self._last_active = now
        self._head_started = now  # the first head is due from the connect
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        """
        Serve whole trigger requests; hand anything else to twisted.web.
        """
        if self._closing:
            return  # the client asked to close; nothing more is served
        buffer = self._buffer
        if not buffer:
            self._buffer = data  # the usual case: parsed without a copy
        elif isinstance(buffer, bytearray):
            buffer += data
        else:
            self._buffer = buffer + data  # becomes a bytearray below
        self._serve()
        self._partial()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Stop the timer and tell a request still being answered (its handler
        then stops waiting, as it does under twisted.web).
        """
        self._stop_timer()
        self._buffer = b""
        self._pending = None
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.connection_lost(reason)

    # -- serving --------------------------------------------------------------

    def _serve(self) -> None:
        """
        Serve the buffered requests in order until one is incomplete, is
        still being answered, or is not for this path.
        """
        factory = self._factory
        while self._buffer and self._waiting is None and not self._closing:
            buffer = self._buffer
            head = self._pending
            if head is None:
                if not buffer.startswith(_PREFIX):
                    if not _PREFIX.startswith(buffer):
                        self._hand_over()
                    return
                # Only what is new can hold the end of the head.
                end = buffer.find(b"\r\n\r\n", max(self._scanned - 3, 0), factory.max_head)
                if end < 0:
                    # A head too long, or with a bare line end (which would
                    # never end it here): twisted.web's channel refuses it.
                    bare = _BARE_EOL.search(buffer, max(self._scanned - 1, 0))
                    if len(buffer) >= factory.max_head or bare is not None:
                        self._hand_over()
                    else:
                        self._scanned = len(buffer)
                    return
                head = _parse_head(buffer, end, factory.max_body, factory.limits.max_headers)
                if head is None:
                    self._hand_over()
                    return
                self._pending = head
            if len(buffer) < head.size:
                if self._head_done is None:
                    self._head_done = factory.clock.seconds()
                return
            head.body = bytes(buffer[head.start : head.size])
            if len(buffer) == head.size:
                self._buffer = b""
            elif isinstance(buffer, bytearray):
                del buffer[: head.size]  # amortised O(1) at the front
            else:
                self._buffer = bytearray(memoryview(buffer)[head.size :])
            self._pending = None
            self._scanned = 0
            self._head_done = None
            self._head_started = None
            self._handle(head)

    def _partial(self) -> None:
        """
        After serving: a request still coming is kept in a C{bytearray} (so
        the rest appends in linear time) and its head's deadline starts now
        if it has not, which may move the timer earlier.
        """
        buffer = self._buffer
        if not buffer or self._waiting is not None or self._closing:
            return
        if not isinstance(buffer, bytearray):
            self._buffer = bytearray(buffer)
        if self._head_started is None:
            self._head_started = self._factory.clock.seconds()
        self._arm()

    def _handle(self, head: TriggerHead) -> None:
        """
        Run the trigger handler for one request.
        """
        request = TriggerRequest(head)
        request._on_finish = self._answer
        if not head.keep_alive:
            self._closing = True
        self._waiting = request
        started = self._factory.clock.seconds()
        recorder = self._factory.recorder
        if recorder is not None:
            finished = request.notifyFinish()
            finished.addBoth(lambda _: recorder(request, started, len(head.body)))
        try:
            self._factory.handler(request, head.app_id)
        except Exception:
            self._log.failure("Serving a trigger failed")
            self._waiting = None
            self._closing = True
            transport: Any = self.transport
            transport.abortConnection()
            return
        if self._waiting is request:
            # Answered later (a remote app store): read nothing meanwhile, so
            # answers keep the order of requests.
            self._paused = True
            IPushProducer(self.transport).pauseProducing()

    def _answer(self, request: TriggerRequest) -> None:
        """
        Write a finished request's answer, then go on with the next one.
        """
        self._waiting = None
        self._last_active = self._factory.clock.seconds()
        body = b"".join(request.body)
        reason = REASONS.get(request.code, b"Unknown Status")
        lines = [b"HTTP/1.1 %d %s" % (request.code, reason)]
        for name, value in request.response_headers:
            lines.append(name + b": " + value)
        lines.append(b"Content-Length: %d" % (len(body),))
        lines.append(b"Date: " + self._factory.date())
        if self._closing:
            lines.append(b"Connection: close")
        lines.append(b"\r\n")
        transport: Any = self.transport
        write_now(transport, b"\r\n".join(lines) + body)
        if self._closing:
            transport.loseConnection()
            return
        if self._paused:
            # The answer came later: read again and serve what is buffered.
            self._paused = False
            IPushProducer(transport).resumeProducing()
            self._serve()
            self._partial()

    def _hand_over(self) -> None:
        """
        Give the connection and what is buffered to a twisted.web channel
        from the C{Site}; this channel is done. The head's timeout goes on
        from when this request started.
        """
        self._stop_timer()
        channel = self._factory.site.buildProtocol(self._addr)  # type: ignore[no-untyped-call]
        assert channel is not None
        if isinstance(channel, BoundedChannel):
            channel.head_started = self._head_started
        transport: Any = self.transport
        if isinstance(transport, ProtocolWrapper):
            transport.wrappedProtocol = channel  # TLS
        else:
            transport.protocol = channel
        channel.makeConnection(transport)
        buffered, self._buffer = bytes(self._buffer), b""
        self._pending = None
        channel.dataReceived(buffered)

    # -- timeouts -------------------------------------------------------------

    def _due(self) -> tuple[float, str] | None:
        """
        When this connection must be closed if nothing changes, and why:
        C{"headers"} or C{"body"} (408) or C{"idle"}; L{None} while a
        request is being answered.
        """
        if self._waiting is not None:
            return None
        limits = self._factory.limits
        if self._head_done is not None:
            return self._head_done + limits.body_timeout_seconds, "body"
        if self._head_started is not None:
            return self._head_started + limits.header_timeout_seconds, "headers"
        return self._last_active + limits.idle_timeout_seconds, "idle"

    def _arm(self) -> None:
        """
        Make sure L{_check_timeout} runs by the current deadline.
        """
        due = self._due()
        if due is None:
            return
        clock = self._factory.clock
        delay = max(due[0] - clock.seconds(), 0.0)
        timer = self._timer
        if timer is not None and timer.active():
            if timer.getTime() > due[0]:
                timer.reset(delay)
            return
        self._timer = clock.callLater(delay, self._check_timeout)

    def _check_timeout(self) -> None:
        """
        Close a connection past its deadline (408 first for a late head or
        body); otherwise look again when it could be.
        """
        self._timer = None
        due = self._due()
        clock = self._factory.clock
        if due is None:
            # Being answered: look again after the idle timeout at the latest.
            self._timer = clock.callLater(
                self._factory.limits.idle_timeout_seconds, self._check_timeout
            )
            return
        deadline, why = due
        if clock.seconds() < deadline:
            self._timer = clock.callLater(deadline - clock.seconds(), self._check_timeout)
            return
        transport: Any = self.transport
        self._closing = True
        if why != "idle" and self._buffer:
            limits = self._factory.limits
            seconds = (
                limits.header_timeout_seconds if why == "headers" else limits.body_timeout_seconds
            )
            transport.write(
                error_response(408, f"Request {why} not received within {seconds} seconds")
            )
        transport.loseConnection()

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
