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
bodies, C{Expect}, HTTP/1.0, oversized heads or bodies. Anything unusual
therefore gets twisted.web's answer, and answers to triggers are the same
either way but for framing (this path sends C{Content-Length}, not chunks).
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
    IPushProducer,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, datetimeToString
from twisted.web.server import Site

from sockudo_tw.directwrite import write_now

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
twisted.web, which has its own limits and error answers.
"""

MAX_BODY = 256 * 1024
"""
The largest body served here; bigger ones go to twisted.web, which spools
them to a file and applies C{http_api.request_limit_in_mb}.
"""

NEED_MORE = object()
"""
L{parse_trigger}'s answer when the buffer holds the start of a trigger
request that is not complete yet.
"""

_HEADER_LINES = re.compile(rb"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\r\n]*\r\n)*")
"""
Header lines as RFC 9112 spells them: a token, a colon, a value. No space
before the colon and no obsolete line folding, which twisted.web may treat
differently; such requests are declined.
"""

_DECLINED = (b"\ntransfer-encoding:", b"\nexpect:", b"\nupgrade:")
_PREFIX = b"POST /apps/"


class TriggerHead:
    """
    One complete trigger request, as parsed by L{parse_trigger} (a plain
    slotted class: built once per request, where attrs' frozen classes
    cost a measurable share).

    @ivar uri: the request target (path and query), as sent.
    @ivar app_id: the C{{id}} path segment, decoded.
    @ivar headers: the header lines, lower-cased, each after a C{\\r\\n}.
    @ivar body: the body, exactly C{Content-Length} bytes.
    @ivar keep_alive: whether the connection stays open after the answer.
    @ivar size: bytes of the buffer this request used.
    """

    __slots__ = ("app_id", "body", "headers", "keep_alive", "size", "uri")

    def __init__(
        self, uri: bytes, app_id: str, headers: bytes, body: bytes, keep_alive: bool, size: int
    ) -> None:
        self.uri = uri
        self.app_id = app_id
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.size = size

    def header(self, name: bytes) -> bytes | None:
        """
        The last value of header C{name}, or L{None}.
        """
        at = self.headers.rfind(b"\n" + name.lower() + b":")
        if at < 0:
            return None
        start = at + len(name) + 2
        return self.headers[start : self.headers.index(b"\r", start)].strip(b" \t")


def parse_trigger(buffer: bytes, max_body: int = MAX_BODY) -> TriggerHead | object | None:
    """
    Parse the request at the start of C{buffer} if it is a plain trigger.

    @return: a L{TriggerHead} when a whole trigger request is there,
        L{NEED_MORE} when what is there could still become one, and L{None}
        for anything this path does not serve (twisted.web must take it).
    """
    if not buffer.startswith(_PREFIX):
        return NEED_MORE if _PREFIX.startswith(buffer) else None
    end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD)
    if end < 0:
        return None if len(buffer) >= MAX_HEAD else NEED_MORE
    line_end = buffer.index(b"\r\n")
    request_line = buffer[:line_end].split(b" ")
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
    block = buffer[line_end + 2 : end + 2]
    if _HEADER_LINES.fullmatch(block) is None:
        return None
    headers = b"\r\n" + block.lower()
    for declined in _DECLINED:
        if declined in headers:
            return None
    at = headers.find(b"\ncontent-length:")
    if at < 0 or headers.find(b"\ncontent-length:", at + 1) >= 0:
        return None
    value = headers[at + 16 : headers.index(b"\r", at + 16)].strip(b" \t")
    if not value.isdigit():
        return None
    length = int(value)
    if length > max_body:
        return None
    start = end + 4
    if len(buffer) < start + length:
        return NEED_MORE
    at = headers.rfind(b"\nconnection:")
    keep_alive = at < 0 or b"close" not in headers[at : headers.index(b"\r", at)]
    return TriggerHead(
        uri, app_id, headers, buffer[start : start + length], keep_alive, start + length
    )


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


class TriggerChannelFactory(Factory):
    """
    The factory for every API/WebSocket listener: builds L{TriggerChannel}s
    that fall back on C{site}'s channels.

    @param site: the C{Site} serving everything but plain triggers.
    @param handler: serves a trigger (L{sockudo_tw.api.PusherApi.render_trigger}).
    @param clock: for the idle timeout and response dates.
    @param recorder: counts served triggers for metrics, if any.
    @param idle_timeout: seconds a keep-alive connection may sit between
        requests before it is closed (the C{Site}'s timeout by default).
    """

    noisy = False

    def __init__(
        self,
        site: Site,
        handler: Handler,
        clock: IReactorTime,
        recorder: Recorder | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        self.site = site
        self.handler = handler
        self.clock = clock
        self.recorder = recorder
        timeout = site.timeOut if idle_timeout is None else idle_timeout
        self.idle_timeout: float | None = timeout
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
    """

    _log = Logger()

    def __init__(self, factory: TriggerChannelFactory, addr: IAddress | None) -> None:
        self._factory = factory
        self._addr = addr
        self._buffer = b""
        self._waiting: TriggerRequest | None = None
        self._paused = False
        self._closing = False
        self._idle_call: IDelayedCall | None = None
        self._last_active = 0.0

    def connectionMade(self) -> None:
        """
        Answer small writes at once, and start the idle timeout.
        """
        transport: Any = self.transport
        if ITCPTransport.providedBy(transport):
            transport.setTcpNoDelay(True)
        timeout = self._factory.idle_timeout
        if timeout:
            self._last_active = self._factory.clock.seconds()
            self._idle_call = self._factory.clock.callLater(timeout, self._check_idle)

    def dataReceived(self, data: bytes) -> None:
        """
        Serve whole trigger requests; hand anything else to twisted.web.
        """
        if self._closing:
            return  # the client asked to close; nothing more is served
        self._buffer = self._buffer + data if self._buffer else data
        if self._idle_call is not None:
            self._last_active = self._factory.clock.seconds()
        self._serve()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Stop the timer and tell a request still being answered (its handler
        then stops waiting, as it does under twisted.web).
        """
        self._stop_timer()
        self._buffer = b""
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.connection_lost(reason)

    # -- serving --------------------------------------------------------------

    def _serve(self) -> None:
        """
        Serve the buffered requests in order until one is incomplete, is
        still being answered, or is not for this path.
        """
        while self._buffer and self._waiting is None and not self._closing:
            head = parse_trigger(self._buffer)
            if head is NEED_MORE:
                return
            if not isinstance(head, TriggerHead):
                self._hand_over()
                return
            self._buffer = self._buffer[head.size :]
            self._handle(head)

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
        body = b"".join(request.body)
        reason = RESPONSES.get(request.code, b"Unknown Status")
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

    def _hand_over(self) -> None:
        """
        Give the connection and what is buffered to a twisted.web channel
        from the C{Site}; this channel is done.
        """
        self._stop_timer()
        channel = self._factory.site.buildProtocol(self._addr)  # type: ignore[no-untyped-call]
        assert channel is not None
        transport: Any = self.transport
        if isinstance(transport, ProtocolWrapper):
            transport.wrappedProtocol = channel  # TLS
        else:
            transport.protocol = channel
        channel.makeConnection(transport)
        buffered, self._buffer = self._buffer, b""
        channel.dataReceived(buffered)

    # -- idle timeout ---------------------------------------------------------

    def _check_idle(self) -> None:
        """
        Close a connection idle for the whole timeout; otherwise look again
        when it could be. (No timer is reset per request.)
        """
        self._idle_call = None
        timeout = self._factory.idle_timeout
        assert timeout
        idle = self._factory.clock.seconds() - self._last_active
        if idle >= timeout and self._waiting is None:
            transport: Any = self.transport
            transport.loseConnection()
            return
        self._idle_call = self._factory.clock.callLater(max(timeout - idle, 1.0), self._check_idle)

    def _stop_timer(self) -> None:
        call, self._idle_call = self._idle_call, None
        if call is not None and call.active():
            call.cancel()
