# -*- test-case-name: tests.test_http_edge -*-
"""
Tests for the bounds of the HTTP edge (L{sockudo_tw.config.HttpLimits}) on
both paths of a listener: the trigger fast path
(L{sockudo_tw.triggerchannel.TriggerChannel}) and twisted.web behind it
(L{sockudo_tw.web.BoundedChannel}): body size, header count and size, line
ends, timeouts, C{Connection} options, header case, reason phrases and the
C{Server} header, and a real-socket slowloris.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from typing import Any

from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyChannel

from sockudo_tw.config import HttpLimits, parse_config
from sockudo_tw.pusher.httpapi import HttpRequest, HttpResponse
from sockudo_tw.service import make_service
from sockudo_tw.triggerchannel import (
    TriggerChannelFactory,
)
from sockudo_tw.web import BoundedChannel, BoundedRequest, make_site
from tests.test_triggerchannel import (
    ADDRESS,
    NOW,
    ChannelMixin,
    event,
    responses,
    signed_trigger,
)

reactor: Any = _global_reactor

MB = 1024 * 1024


def head_of(request: bytes) -> bytes:
    """
    The request line and headers of C{request}, with the blank line.
    """
    return request[: request.index(b"\r\n\r\n") + 4]


def other_route(body: bytes, headers: tuple[bytes, ...] = ()) -> bytes:
    """
    A C{POST} twisted.web serves (not the fast path's route).
    """
    lines = [
        b"POST /apps/3/batch_events HTTP/1.1",
        b"Host: x",
        b"Content-Length: %d" % (len(body),),
        *headers,
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class EdgeMixin(ChannelMixin):
    """
    A listener's factory on a clock, with helpers that follow the
    connection to twisted.web's channel after a hand-over.
    """

    def send(self, transport: StringTransport, data: bytes) -> None:
        """
        Deliver C{data} to whichever protocol now owns C{transport}.
        """
        protocol: Any = transport.protocol  # type: ignore[attr-defined]
        protocol.dataReceived(data)

    def refusal(self, transport: StringTransport) -> tuple[int, dict[bytes, bytes], Any]:
        """
        The single answer written, with its JSON body decoded, after checking
        the connection is closing.
        """
        self.assertTrue(transport.disconnecting)  # type: ignore[attr-defined]
        ((code, headers, body),) = responses(transport.value())
        return code, headers, json.loads(body)

    def finish(self, transport: StringTransport) -> None:
        """
        End the connection, so that no timer outlives the test.
        """
        protocol: Any = transport.protocol  # type: ignore[attr-defined]
        protocol.connectionLost(Failure(ConnectionDone()))


class BodyLimitTests(EdgeMixin, SynchronousTestCase):
    """
    C{http_api.request_limit_in_mb}: a body over it is refused with 413 as
    soon as that is known, without reading the rest.
    """

    def setUp(self) -> None:
        self.make(limits=HttpLimits(request_limit_in_mb=1))

    def test_content_length_fast_path(self) -> None:
        """
        A trigger declaring a body over the limit gets 413 at its head, in
        Pusher's JSON error form; nothing sent after is read.
        """
        for declared in (MB + 1, 10**12):
            _, transport = self.connect()
            request = signed_trigger(b"{}").replace(
                b"Content-Length: 2", b"Content-Length: %d" % declared
            )
            self.send(transport, head_of(request) + b"x" * 1000)
            code, headers, body = self.refusal(transport)
            self.assertEqual(code, 413)
            self.assertEqual(headers[b"content-type"], b"application/json")
            self.assertEqual(headers[b"connection"], b"close")
            self.assertEqual(body, {"error": f"Request body too large: {declared} > {MB} bytes"})
            self.send(transport, b"x" * 100_000)
            self.assertEqual(len(responses(transport.value())), 1)
            self.finish(transport)
        self.assertEqual(self.adapter.broadcasts, [])

    def test_content_length_too_many_digits(self) -> None:
        """
        A C{Content-Length} with thousands of digits (more than C{int()}
        takes) gets 413 too, on either path, without a traceback.
        """
        digits = b"9" * 5000
        for request in (signed_trigger(b"{}"), other_route(b"{}")):
            _, transport = self.connect()
            self.send(
                transport,
                head_of(request).replace(b"Content-Length: 2", b"Content-Length: " + digits),
            )
            code, _, body = self.refusal(transport)
            self.assertEqual(
                (code, body), (413, {"error": f"Request body too large: more than {MB} bytes"})
            )
            self.finish(transport)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_content_length_twisted_web(self) -> None:
        """
        Any other route gets the same, before C{100 Continue}.
        """
        _, transport = self.connect()
        self.send(
            transport,
            head_of(other_route(b"x" * (MB + 1), (b"Expect: 100-continue",))),
        )
        code, _, body = self.refusal(transport)
        self.assertEqual(code, 413)
        self.assertNotIn(b"100 Continue", transport.value())
        self.assertEqual(body, {"error": f"Request body too large: {MB + 1} > {MB} bytes"})
        self.finish(transport)

    def test_chunked(self) -> None:
        """
        A chunked body is refused with 413 in the read that passes the
        limit; the request is never served and later chunks are ignored.
        """
        _, transport = self.connect()
        request = signed_trigger(b"").replace(b"Content-Length: 0", b"Transfer-Encoding: chunked")
        self.send(transport, head_of(request))
        chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
        for _ in range(16):
            self.send(transport, chunk)
        self.assertEqual(transport.value(), b"")
        self.send(transport, chunk)
        code, _, body = self.refusal(transport)
        self.assertEqual(
            (code, body), (413, {"error": f"Request body too large: more than {MB} bytes"})
        )
        self.send(transport, chunk + b"0\r\n\r\n")
        self.assertEqual(len(responses(transport.value())), 1)
        self.assertEqual(self.adapter.broadcasts, [])
        self.finish(transport)

    def test_bodies_stay_in_memory(self) -> None:
        """
        No body goes to a temporary file, whatever its size (twisted.web
        spools bodies over 100 KB to disk before any signature check).
        """

        def no_disk(*args: object, **kwargs: object) -> None:
            raise AssertionError("a request body went to disk")

        self.patch(tempfile, "TemporaryFile", no_disk)
        self.assertIsInstance(self.site.getContentFile(MB), io.BytesIO)
        self.assertIsInstance(self.site.getContentFile(None), io.BytesIO)
        _, transport = self.connect()
        self.send(transport, other_route(b"x" * 300_000))
        ((code, _, _),) = responses(transport.value())
        self.assertEqual(code, 401)  # unsigned, refused after reading it
        self.finish(transport)


class HeaderLimitTests(EdgeMixin, SynchronousTestCase):
    """
    C{http_api.max_headers} and C{http_api.max_header_bytes}: 431.
    """

    def setUp(self) -> None:
        self.make(limits=HttpLimits(max_headers=20, max_header_bytes=4096))

    def test_too_many_headers(self) -> None:
        """
        One field more than C{max_headers} is refused on either path.
        """
        many = tuple(b"X-%d: y" % (i,) for i in range(19))
        # 21 fields each: Host, Content-Type and Content-Length, or Host and
        # Content-Length, and the extra ones.
        for request in (signed_trigger(b"{}", headers=many[:-1]), other_route(b"{}", many)):
            _, transport = self.connect()
            self.send(transport, request)
            code, _, body = self.refusal(transport)
            self.assertEqual(
                (code, body), (431, {"error": "Too many request header fields: more than 20"})
            )
            self.finish(transport)
        # At the limit, the trigger is served.
        _, transport = self.connect()
        self.send(transport, signed_trigger(event(), headers=many[:-2]))
        self.assertEqual(responses(transport.value())[0][0], 200)
        self.finish(transport)

    def test_too_many_header_bytes(self) -> None:
        """
        A head over C{max_header_bytes}, in many lines or in one, is refused
        as soon as it passes the limit, before its end arrives.
        """
        expected = (431, {"error": "Request header fields too large: more than 4096 bytes"})
        pads = (b"X-Pad: " + b"a" * 1000 + b"\r\n") * 5
        for start in (b"GET /up HTTP/1.1\r\n", b"POST /apps/3/events HTTP/1.1\r\n"):
            for data in (start + pads, start + b"X-Long: " + b"a" * 5000):
                _, transport = self.connect()
                self.send(transport, data)
                code, _, body = self.refusal(transport)
                self.assertEqual((code, body), expected)
                self.finish(transport)


class MalformedTests(EdgeMixin, SynchronousTestCase):
    """
    Malformed heads get 400 at once, never a hang or a traceback.
    """

    def setUp(self) -> None:
        self.make()

    def test_bare_line_ends(self) -> None:
        """
        A head using bare LF (or a stray CR) gets 400 at once on either path,
        even when it never sends a CRLF.
        """
        cases = [
            b"GET /up HTTP/1.1\nHost: x\n\n",
            b"GET /up HTTP/1.1\r\nHost: x\n\r\n",
            b"GET /up HTTP/1.1\r\nHost: x\rY: z\r\n\r\n",
            signed_trigger(b"{}").replace(b"\r\n", b"\n"),
            signed_trigger(b"{}").replace(b"Host:", b"X: a\nHost:", 1),
        ]
        for request in cases:
            _, transport = self.connect()
            self.send(transport, request)
            code, _, body = self.refusal(transport)
            self.assertEqual(
                (code, body), (400, {"error": "Malformed request head: line ends must be CRLF"})
            )
            self.finish(transport)

    def test_bare_lf_split(self) -> None:
        """
        A CR ending one read and its LF starting the next is a CRLF; a body
        with bare LFs is not a head and is served.
        """
        _, transport = self.connect()
        request = other_route(b"a\nb\n")
        cut = request.index(b"\r\n") + 1
        self.send(transport, request[:cut])
        self.send(transport, request[cut:])
        ((code, _, _),) = responses(transport.value())
        self.assertEqual(code, 401)
        self.finish(transport)

    def test_garbage_request_line(self) -> None:
        """
        A request line that is not C{METHOD TARGET VERSION} gets 400.
        """
        for line in (
            b"GARBAGE",
            b"GET /up",
            b"GET  /up HTTP/1.1",
            b"GET /up HTTP/1.1 extra",
            b"\x00\x01\x02 / HTTP/1.1",
            b"GET /a\x00b HTTP/1.1",
            b"GET /up FTP/1.1",
        ):
            _, transport = self.connect()
            self.send(transport, line + b"\r\nHost: x\r\n\r\n")
            code, _, body = self.refusal(transport)
            self.assertEqual(
                (code, body),
                (400, {"error": "Malformed request line: expected METHOD TARGET HTTP/x.y"}),
                line,
            )
            self.finish(transport)

    def test_bad_percent_encoding(self) -> None:
        """
        A path that is not UTF-8 once percent-decoded gets a JSON 400, and
        nothing is logged as an error.
        """
        for path in (b"/apps/app-id/channels/%ff", b"/apps/%ff/events", b"/users/%c3%28"):
            _, transport = self.connect()
            self.send(transport, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            ((code, headers, body),) = responses(transport.value())
            self.assertEqual(code, 400, path)
            self.assertEqual(headers[b"content-type"], b"application/json")
            self.assertEqual(
                json.loads(body), {"error": "Invalid request path: not UTF-8 once percent-decoded"}
            )
            self.finish(transport)
        self.assertEqual(self.flushLoggedErrors(), [])


class TimeoutTests(EdgeMixin, SynchronousTestCase):
    """
    C{header_timeout_seconds}, C{body_timeout_seconds} and
    C{idle_timeout_seconds}, on the clock.
    """

    def setUp(self) -> None:
        self.make(
            limits=HttpLimits(
                header_timeout_seconds=10, body_timeout_seconds=30, idle_timeout_seconds=60
            )
        )

    def assert_closed_at(
        self, transport: StringTransport, seconds: float, answer: int | None
    ) -> None:
        """
        The connection is open just before C{seconds} from now and closed
        then, with a 408 (or, if C{answer} is None, nothing) written.
        """
        self.clock.advance(seconds - 0.01)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.01)
        if answer is None:
            self.assertTrue(transport.disconnecting)
            self.assertEqual(transport.value(), b"")
        else:
            code, _, body = self.refusal(transport)
            self.assertEqual(code, answer)
            self.assertIn("not received within", body["error"])
        self.finish(transport)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_silent_connection(self) -> None:
        """
        A connection that sends nothing is closed after the header timeout,
        without an answer.
        """
        _, transport = self.connect()
        self.assert_closed_at(transport, 10, None)

    def test_slow_head(self) -> None:
        """
        A first head sent a byte a second (slowloris) is refused with 408
        ten seconds after the connection opened, on either path: bytes do
        not extend the deadline.
        """
        for data in (b"POST /apps/3/events HTTP/1.1\r\nX-A: b", b"GET /up HTTP/1.1\r\nX-A: b"):
            _, transport = self.connect()
            for i in range(len(data)):
                self.send(transport, data[i : i + 1])
                if i < 9:
                    self.clock.advance(1)
            self.assertEqual(transport.value(), b"", data)
            self.assert_closed_at(transport, 1, 408)

    def test_slow_next_head(self) -> None:
        """
        On a keep-alive connection, a later head is due ten seconds after
        its own first byte, on either path.
        """
        for data in (b"POST /apps/3/events HTTP/1.1\r\nX-A: b", b"GET /up HTTP/1.1\r\nX-A: b"):
            channel, transport = self.connect()
            self.clock.advance(3)
            channel.dataReceived(signed_trigger(event(), timestamp=NOW + 3))
            self.clock.advance(5)
            transport.clear()
            self.send(transport, data[:5])
            self.clock.advance(5)
            self.send(transport, data[5:])
            self.assertEqual(transport.value(), b"", data)
            self.assert_closed_at(transport, 5, 408)

    def test_slow_body(self) -> None:
        """
        A body not complete thirty seconds after its head is refused with
        408, on either path.
        """
        for request in (signed_trigger(event()), other_route(b"x" * 100)):
            _, transport = self.connect()
            self.send(transport, request[:-10])
            self.clock.advance(20)
            self.send(transport, request[-10:-5])
            self.assertEqual(transport.value(), b"")
            self.assert_closed_at(transport, 10, 408)

    def test_idle_after_twisted_web(self) -> None:
        """
        After twisted.web's answer, an idle keep-alive connection is closed
        after the idle timeout, not twisted.web's 12 hours.
        """
        _, transport = self.connect()
        self.send(transport, b"GET /up HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(responses(transport.value())[0][0], 200)
        self.clock.advance(59)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.finish(transport)

    def test_keep_alive_requests(self) -> None:
        """
        Requests that arrive whole, one after another, never time out and
        arm no timer of their own.
        """
        channel, transport = self.connect()
        for i in range(30):
            self.clock.advance(5)
            channel.dataReceived(signed_trigger(event(), timestamp=NOW + 5 * (i + 1)))
            self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(len(responses(transport.value())), 30)
        self.finish(transport)


class SemanticsTests(EdgeMixin, SynchronousTestCase):
    """
    Header values keep their case; C{Connection} is read per RFC 9110;
    reason phrases and C{Server} carry no surprises.
    """

    def setUp(self) -> None:
        self.make()

    def test_header_case_kept(self) -> None:
        """
        The fast path finds header names in any case and gives the core
        values as sent.
        """
        seen: list[HttpRequest] = []

        def capture(request: HttpRequest) -> HttpResponse:
            seen.append(request)
            return HttpResponse(200, [], b"{}")

        factory = TriggerChannelFactory(self.site, capture, self.clock)
        channel = factory.buildProtocol(ADDRESS)
        channel.makeConnection(StringTransport())
        channel.dataReceived(
            signed_trigger(b"{}", headers=(b"X-Mixed: AbC dEf", b"ORIGIN: https://Ex.COM"))
        )
        (request,) = seen
        self.assertEqual(request.headers[b"x-mixed"], b"AbC dEf")
        self.assertEqual(request.headers[b"origin"], b"https://Ex.COM")
        self.assertEqual(request.headers[b"content-type"], b"application/json")
        channel.connectionLost(Failure(ConnectionDone()))

    def test_connection_options(self) -> None:
        """
        C{close} among the options of any C{Connection} header, in any case,
        closes after the answer, on either path; other options do not.
        """
        closing = [
            (b"Connection: keep-alive, Close",),
            (b"Connection: keep-alive", b"Connection: TE ,close"),
            (b"Connection: close", b"Connection: keep-alive"),
        ]
        staying = [(b"Connection: keep-alive",), (b"Connection: closed, x-close",)]
        for headers in closing + staying:
            for request in (
                signed_trigger(event(), headers=headers),
                b"GET /up HTTP/1.1\r\nHost: x\r\n" + b"\r\n".join(headers) + b"\r\n\r\n",
            ):
                _, transport = self.connect()
                self.send(transport, request)
                ((code, answer_headers, _),) = responses(transport.value())
                self.assertEqual(code, 200)
                closes = headers in closing
                self.assertEqual(transport.disconnecting, closes, (headers, request[:4]))
                self.assertEqual(answer_headers.get(b"connection") == b"close", closes)
                self.finish(transport)

    def test_reason_phrases(self) -> None:
        """
        429 is "Too Many Requests" on both paths.
        """

        def limited(request: HttpRequest) -> HttpResponse:
            return HttpResponse(429, [], b"")

        factory = TriggerChannelFactory(self.site, limited, self.clock)
        channel = factory.buildProtocol(ADDRESS)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(signed_trigger(b"{}"))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 429 Too Many Requests\r\n"))
        channel.connectionLost(Failure(ConnectionDone()))

        request = BoundedRequest(DummyChannel())  # type: ignore[no-untyped-call]
        request.setResponseCode(429)
        self.assertEqual(request.code_message, b"Too Many Requests")

    def test_server_header(self) -> None:
        """
        twisted.web's answers name the server without versions.
        """
        _, transport = self.connect()
        self.send(transport, b"GET /up HTTP/1.1\r\nHost: x\r\n\r\n")
        ((_, headers, _),) = responses(transport.value())
        self.assertEqual(headers[b"server"], b"sockudo-tw")
        self.finish(transport)


class LinearTests(EdgeMixin, SynchronousTestCase):
    """
    Any split of a request costs time linear in its size.
    """

    def setUp(self) -> None:
        self.make()

    def feed(self, body_size: int, piece: int) -> float:
        """
        Seconds to feed a trigger with a C{body_size} body in C{piece}-byte
        reads (best of three).
        """
        request = signed_trigger(b"x" * body_size)
        best = float("inf")
        for _ in range(3):
            channel, transport = self.connect()
            started = time.perf_counter()
            for at in range(0, len(request), piece):
                channel.dataReceived(request[at : at + piece])
            best = min(best, time.perf_counter() - started)
            self.assertEqual(responses(transport.value())[0][0], 400)  # not JSON
            self.finish(transport)
        return best

    def test_small_reads(self) -> None:
        """
        Four times the body in 8-byte reads takes about four times as long
        (a quadratic buffer would take sixteen).
        """
        small = self.feed(32 * 1024, 8)
        large = self.feed(128 * 1024, 8)
        self.assertLess(large / small, 8.0, (small, large))


class SiteAloneTests(SynchronousTestCase):
    """
    With the per-IP limiter or debug, the Site serves without the fast path;
    its channels apply the same bounds.
    """

    def test_bounds(self) -> None:
        """
        The Site's own channel refuses, times out and closes as above.
        """
        clock = Clock()
        site = make_site(Resource(), limits=HttpLimits(max_headers=10), clock=clock)
        channel = site.buildProtocol(ADDRESS)
        self.assertIsInstance(channel, BoundedChannel)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 11 + b"\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 431 "))
        channel.connectionLost(Failure(ConnectionDone()))

        channel = site.buildProtocol(ADDRESS)
        transport = StringTransport()
        channel.makeConnection(transport)
        clock.advance(10)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(site.acceptableProtocols(), [b"http/1.1"])
        self.assertEqual(site.logPrefix(), "sockudo-tw HTTP")


class SlowlorisTests(TestCase):
    """
    Real sockets: half-sent requests are all closed within the header
    timeout.
    """

    async def test_half_sent_requests_closed(self) -> None:
        """
        200 connections each sending half a request (both paths) are all
        closed by the server after the one-second header timeout (well under
        three seconds even on a loaded machine), each with a 408.
        """
        app = {"id": "app-id", "key": "app-key", "secret": "app-secret"}
        config = parse_config(
            {
                "metrics": {"enabled": False},
                "shutdown_grace_period": 1,
                "app_manager": {"array": {"apps": [app]}},
                "http_api": {"header_timeout_seconds": 1},
            },
            {},
        )
        service = make_service(config, reactor, listen=["tcp:0:interface=127.0.0.1"])
        service.startService()
        self.addCleanup(service.stopService)
        port = (await service.listening_port(0)).getHost().port
        halves = [b"POST /apps/app-id/events HTTP/1.1\r\nHost: x\r\n", b"GET /up HTTP/1.1\r\nX: "]
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        clients = [_HalfRequest(halves[i % 2]) for i in range(200)]
        for batch in range(0, len(clients), 25):
            # In batches, yielding to the reactor so it accepts them before the
            # listen backlog fills (a dropped SYN is retried only after 1 s).
            await gatherResults(
                [endpoint.connect(_OneProtocol(c)) for c in clients[batch : batch + 25]]
            ).addTimeout(10, reactor)
        started = time.monotonic()
        await gatherResults([client.lost for client in clients]).addTimeout(10, reactor)
        closed = [client.closed_at - started for client in clients]
        self.assertLess(max(closed), 3.0)
        self.assertTrue(all(c.received.startswith(b"HTTP/1.1 408 ") for c in clients))


class _HalfRequest(Protocol):
    """
    Sends half a request on connect; C{lost} fires when the server closes.
    """

    def __init__(self, half: bytes) -> None:
        self.half = half
        self.received = b""
        self.closed_at = 0.0
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.half)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.closed_at = time.monotonic()
        self.lost.callback(None)


class _OneProtocol(ClientFactory):
    """
    A client factory building one given protocol instance.
    """

    def __init__(self, protocol: Protocol) -> None:
        self.protocol_instance = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self.protocol_instance
