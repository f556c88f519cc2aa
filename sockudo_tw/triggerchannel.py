# -*- test-case-name: tests.test_triggerchannel -*-
"""
A lean HTTP/1.1 front for the API's hot path, C{POST /apps/{id}/events}.

Server SDKs publish over keep-alive connections, one small signed JSON
request after another. Parsing each of them with twisted.web (its line
parser, C{Request} and C{Headers} objects, chunked response writing) cost
more CPU than the trigger itself. L{TriggerChannel} is the protocol on every
listener: it parses with httptools (llhttp, in C), gives each plain trigger
to L{sockudo_tw.api.PusherApi.serve} (the sans-IO core,
L{sockudo_tw.pusher.httpapi}) and writes the answer. At the first request
that is anything else (a WebSocket upgrade, another route, a chunked body,
C{Expect}, HTTP/1.0, a head over 8 KiB or C{http_api.max_headers} fields, a
body over 256 KiB or the body limit, or whatever llhttp refuses) it hands
the connection, with that request's bytes, to the C{Site}'s twisted.web
channel for good, as twisted.web itself hands an upgraded connection on:
that channel (L{sockudo_tw.web.BoundedChannel}) refuses what is over a bound
with 400, 413 or 431 and gives upgrades to Autobahn. Answers to triggers are
the same either way but for framing (this path sends C{Content-Length}, not
chunks). Both paths apply the header, body and idle timeouts of
L{sockudo_tw.config.HttpLimits}.

Answers on a plain TCP (or UNIX) connection kept open are corked until the
end of the reactor turn, then leave with one C{send()} per connection
(L{TriggerChannelFactory.flush}), as WebSocket frames are. On loopback a
C{send()} runs the client's TCP input and wakes the client: sent back to
back, a turn's answers wake each client process about once, instead of
once per answer between the parsing of the next requests; that saved about
a tenth of the server's CPU per trigger (more on a busy machine), for a
wait of at most the rest of the turn. An answer that closes the
connection, a hand-over to twisted.web and a timeout's answer write what
is corked first; TLS connections are not corked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httptools
from twisted.internet.defer import Deferred
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
from sockudo_tw.directwrite import plain_socket, write_now
from sockudo_tw.pusher.httpapi import HttpRequest, HttpResponse, internal_error, is_trigger_path
from sockudo_tw.web import REASONS, BoundedChannel, SockudoSite, error_response

__all__ = [
    "MAX_BODY",
    "MAX_HEAD",
    "Handler",
    "Recorder",
    "Served",
    "TriggerChannel",
    "TriggerChannelFactory",
    "frame_answer",
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

_STATUS_LINES = {
    status: b"HTTP/1.1 %d %s\r\n" % (status, REASONS[status]) for status in (200, 400, 401, 404)
}
"""
The status lines of the usual answers, built once.
"""

_OK_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nDate: %s\r\n\r\n{}"
)
"""
The answer to a plain successful trigger (what L{frame_answer} builds for
C{200}, C{[_OK_HEADERS]} and C{{}} on a connection kept open), but its date.
"""

_OK_HEADERS = (b"Content-Type", b"application/json")

_DECLINED = frozenset({b"transfer-encoding", b"expect", b"upgrade"})

Handler = Callable[[HttpRequest], "HttpResponse | Deferred[HttpResponse]"]
"""
Answers one trigger, now or later: L{sockudo_tw.api.PusherApi.serve}.
"""


def frame_answer(
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    date: bytes,
    closing: bool = False,
) -> bytes:
    """
    One answer's bytes: the status line, C{headers}, C{Content-Length},
    C{Date} and, when C{closing}, C{Connection: close}; then C{body}.
    """
    head = _STATUS_LINES.get(status)
    if head is None:
        head = b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Unknown"))
    for name, value in headers:
        head += name + b": " + value + b"\r\n"
    head += b"Content-Length: %d\r\nDate: %s\r\n" % (len(body), date)
    if closing:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + body


class Served:
    """
    What the metrics recorder is told of a served trigger: the parts of
    the request it reads (C{path}, C{args}) and C{sentLength}, the body
    bytes answered (twisted.web's names).
    """

    __slots__ = ("args", "code", "path", "sentLength")

    def __init__(self, path: bytes, code: int, sent: int) -> None:
        self.path = path
        self.args: dict[bytes, list[bytes]] = {}
        self.code = code
        self.sentLength = sent


Recorder = Callable[[Any, float, int], None]
"""
Counts one served call for metrics: a L{Served}, when it started, and the
body size received.
"""


class _HandOverError(Exception):
    """
    Raised in a parser callback: this request is twisted.web's.
    """


@implementer(IProtocolNegotiationFactory)
class TriggerChannelFactory(Factory):
    """
    The factory for every API/WebSocket listener: builds L{TriggerChannel}s
    that fall back on C{site}'s channels.

    @param site: the C{Site} serving everything but plain triggers.
    @param handler: answers a trigger (L{sockudo_tw.api.PusherApi.serve}).
    @param clock: for the timeouts and response dates.
    @param recorder: counts served triggers for metrics, if any.
    @param limits: the bounds of the HTTP edge (the C{Site}'s by default).
    """

    noisy = False

    _log = Logger()

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
        self._ok = b""
        self._corked: list[TriggerChannel] = []
        self._flush_call: IDelayedCall | None = None

    def doStart(self) -> None:  # noqa: N802 (Factory's name)
        """
        Start the C{Site} along with this factory.
        """
        super().doStart()  # type: ignore[no-untyped-call]
        self.site.doStart()  # type: ignore[no-untyped-call]

    def doStop(self) -> None:  # noqa: N802 (Factory's name)
        """
        Stop the C{Site} along with this factory, writing what is corked.
        """
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        self.flush()
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
            self._ok = _OK_HEAD % self._date
        return self._date

    def ok_answer(self, now: float) -> bytes:
        """
        The whole answer to a trigger that succeeded without C{info} (200,
        C{{}}) on a connection kept open, at C{now}; built once a second.
        """
        if int(now) != self._date_second:
            self.date()
        return self._ok

    def cork(self, channel: TriggerChannel) -> None:
        """
        Have C{channel}'s corked answers written at the end of this reactor
        turn (L{flush}).
        """
        self._corked.append(channel)
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self._flush_turn)

    def _flush_turn(self) -> None:
        """
        The end of a reactor turn with answers corked: L{flush}.
        """
        self._flush_call = None
        self.flush()

    def flush(self) -> None:
        """
        Write every corked answer, one C{send()} per connection.
        """
        corked, self._corked = self._corked, []
        for channel in corked:
            try:
                channel.flush()
            except Exception:
                self._log.failure("Writing an answer failed")


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

    The bytes of the request being parsed are kept (C{_raw}, appended in
    linear time) so that a hand-over gives twisted.web the request whole;
    answers are written in the order of requests, reading nothing while
    one waits on a remote store.
    """

    _log = Logger()

    def __init__(self, factory: TriggerChannelFactory, addr: IAddress | None) -> None:
        self._factory = factory
        self._addr = addr
        self._parser = httptools.HttpRequestParser(self)
        self._max_headers = factory.limits.max_headers
        host = getattr(addr, "host", None)
        self._peer = host if isinstance(host, str) else None
        self._raw = bytearray()
        self._out: list[bytes] = []  # answers corked until the turn's end
        # The request being parsed (one at a time, so its state lives here
        # and the only object built per request is its HttpRequest).
        self._parsing = False
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._fields = 0
        self._close = False
        self._length = 0
        self._head = 0
        self._ready: list[HttpRequest] = []
        self._last: HttpRequest | None = None  # asked to close after it
        self._waiting = False
        self._hand_over_due = False
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
        Parse; serve the complete triggers, or hand over to twisted.web.
        """
        if self._closing or self._hand_over_due:
            return
        self._raw += data
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserCallbackError, httptools.HttpParserError):
            # Ours (_HandOverError) or llhttp's refusal: twisted.web's answer.
            self._hand_over_due = True
        else:
            if self._parsing and self._head_done is None:
                if len(self._raw) > self._factory.max_head:
                    self._hand_over_due = True
        self._serve()
        if not self._closing and not self._hand_over_due and self._raw and not self._waiting:
            if self._head_started is None:
                self._head_started = self._factory.clock.seconds()
            self._arm()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Stop the timer and an answer still awaited.
        """
        self._stop_timer()
        self._raw = bytearray()
        self._ready = []
        self._out = []
        self._closing = True
        self._lost = True
        waiting, self._waiting = self._waiting, False
        if waiting and self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()
            recorder = self._factory.recorder
            if recorder is not None and self._pending_call is not None:
                path, started, size = self._pending_call
                recorder(Served(path, 0, 0), started, size)

    _pending: Deferred[HttpResponse] | None = None
    _lost = False
    _pending_call: tuple[bytes, float, int] | None = None

    # -- httptools callbacks --------------------------------------------------

    def on_url(self, url: bytes) -> None:
        """
        The request target, possibly in pieces; the method is known here,
        and anything but C{POST} is twisted.web's.
        """
        if not self._parsing:
            # The first callback of a request (httptools calls no
            # on_message_begin we do not define: one call less per request).
            if self._parser.get_method() != b"POST":
                raise _HandOverError()  # a WebSocket upgrade, a read, a health check
            self._parsing = True
            self._url = url
            self._headers = {}
            self._fields = 0
            self._close = False
            if self._head_started is None:
                self._head_started = self._factory.clock.seconds()
        else:
            self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        """
        One header field: names lower-cased, values as sent, the last of a
        name kept; fields this front does not serve hand over.
        """
        lower = name.lower()
        self._fields += 1
        if lower in _DECLINED or self._fields > self._max_headers:
            raise _HandOverError()
        if lower == b"connection":
            # RFC 9110 section 7.6.1: every such field, a comma-separated list.
            for option in value.split(b","):
                if option.strip(b" \t").lower() == b"close":
                    self._close = True
        self._headers[lower] = value

    def on_headers_complete(self) -> None:
        """
        Serve the request here only if it is a plain HTTP/1.1 trigger with
        a C{Content-Length} body within bounds.
        """
        raw = self._raw
        url = self._url
        length = self._headers.get(b"content-length", b"")
        self._head = raw.find(b"\r\n\r\n") + 4
        if (
            not length.isdigit()
            or len(length) > 18
            or self._head > self._factory.max_head
            # HTTP/1.1 only; and what llhttp lets pass but RFC 9112 spells
            # otherwise (twisted.web refuses it): anything but single spaces.
            or not raw.startswith(b"POST /apps/")
            or not raw.startswith(b" HTTP/1.1\r\n", 5 + len(url))
            or not is_trigger_path(url.partition(b"?")[0])
        ):
            raise _HandOverError()
        size = self._length = int(length)
        if size > self._factory.max_body:
            raise _HandOverError()
        if size:
            self._head_done = self._factory.clock.seconds()

    def on_message_complete(self) -> None:
        """
        The request is whole: drop its bytes and queue it to be served.
        """
        self._parsing = False
        # The request's bytes: its head, through the blank line, and body
        # (taken from there: no on_body callback per piece).
        head = self._head
        end = head + self._length
        path, _, query = self._url.partition(b"?")
        request = HttpRequest(
            b"POST", path, query, self._headers, bytes(self._raw[head:end]), self._peer
        )
        del self._raw[:end]  # amortised O(1) at the front
        self._ready.append(request)
        if self._close:
            self._last = request
        self._head_started = self._head_done = None

    # -- serving --------------------------------------------------------------

    def _serve(self) -> None:
        """
        Answer the complete requests in order while answers come at once;
        then hand over if a request was twisted.web's.
        """
        while self._ready and not self._waiting and not self._closing:
            request = self._ready.pop(0)
            if request is self._last:
                self._closing = True
                self._ready = []
            path = request.path
            body = request.body
            # The start time is only for metrics.
            started = self._factory.clock.seconds() if self._factory.recorder else 0.0
            try:
                answer = self._factory.handler(request)
            except Exception:
                self._log.failure("Serving a trigger failed")
                answer = internal_error()
            if isinstance(answer, HttpResponse):
                self._answer(answer, path, started, len(body))
                continue
            # Answered later (a remote app store): read nothing meanwhile,
            # so answers keep the order of requests.
            self._waiting = True
            self._pending = answer
            self._pending_call = (path, started, len(body))
            self._paused = True
            IPushProducer(self.transport).pauseProducing()
            answer.addCallback(self._answered_later, path, started, len(body))
            answer.addErrback(lambda f: self._log.failure("Answering a trigger failed", f))
            return
        if self._hand_over_due and not self._waiting and not self._closing:
            self._hand_over()

    def _answered_later(
        self, response: HttpResponse, path: bytes, started: float, size: int
    ) -> None:
        self._waiting = False
        self._pending = None
        if self._lost:
            return
        self._answer(response, path, started, size)
        if self._paused and not self._closing:
            self._paused = False
            IPushProducer(self.transport).resumeProducing()
            self._serve()

    def _answer(self, response: HttpResponse, path: bytes, started: float, received: int) -> None:
        """
        Write one answer with its framing (corked on a plain socket kept
        open); close after it if asked to.
        """
        factory = self._factory
        now = self._last_active = factory.clock.seconds()
        body = response.body
        status = response.status
        headers = response.headers
        if (
            status == 200
            and body == b"{}"
            and not self._closing
            and len(headers) == 1
            and headers[0] == _OK_HEADERS
        ):
            data = factory.ok_answer(now)
        else:
            data = frame_answer(status, headers, body, factory.date(), self._closing)
        transport: Any = self.transport
        if not self._closing and plain_socket(transport):
            if not self._out:
                factory.cork(self)
            self._out.append(data)
        else:
            self.flush()
            write_now(transport, data)
        recorder = factory.recorder
        if recorder is not None:
            recorder(Served(path, status, len(body)), started, received)
        if self._closing:
            transport.loseConnection()

    def flush(self) -> None:
        """
        Write the corked answers, with one C{send()} when the socket is idle.
        """
        out = self._out
        if out:
            self._out = []
            write_now(self.transport, out[0] if len(out) == 1 else b"".join(out))

    def _hand_over(self) -> None:
        """
        Give the connection and the current request's bytes to a
        twisted.web channel from the C{Site}; this channel is done. The
        head's timeout goes on from when this request started.
        """
        self._stop_timer()
        self.flush()
        self._closing = True
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
        buffered, self._raw = bytes(self._raw), bytearray()
        if self._paused:
            self._paused = False
            IPushProducer(transport).resumeProducing()
        channel.dataReceived(buffered)

    # -- timeouts -------------------------------------------------------------

    def _due(self) -> tuple[float, str] | None:
        """
        When this connection must be closed if nothing changes, and why:
        C{"headers"} or C{"body"} (408) or C{"idle"}; L{None} while a
        request is being answered.
        """
        if self._waiting:
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
        self.flush()
        self._closing = True
        if why != "idle" and self._raw:
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
