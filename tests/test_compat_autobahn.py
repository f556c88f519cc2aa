"""
Tests for L{sockudo_tw.compat.autobahn}: each Autobahn/txaio internal is
recognised on the installed versions (these tests fail loudly otherwise),
is scoped to our classes, and has a working fallback on public API.
"""

from __future__ import annotations

import pprint
from typing import Any

import autobahn
import autobahn.util as autobahn_util
import autobahn.websocket.protocol as autobahn_protocol
import txaio
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from sockudo_tw.compat import autobahn as compat
from sockudo_tw.websocket import PusherProtocol
from sockudo_tw.websocket import factory as factory_module
from tests.wsclient import Harness, client_frame


class _CountedRepr:
    """
    An object that records each time it is formatted.
    """

    def __init__(self) -> None:
        self.formatted = 0

    def __repr__(self) -> str:
        self.formatted += 1
        return "counted"

    def __call__(self, offers: object) -> None:
        """
        Accept no compression offer (as the factory's own option does).
        """


def _subscribe(harness: Harness) -> list[Any]:
    client = harness.connect()
    return client.send({"event": "pusher:subscribe", "data": {"channel": "lazy"}})


class RecognisedTests(SynchronousTestCase):
    """
    The guards recognise the installed Autobahn and txaio: when one of these
    fails, the server still works, on the fallbacks, but slower or bigger;
    check the internals against the new release, then widen the ranges.
    """

    def test_versions(self) -> None:
        """
        The installed versions are in the known ranges.
        """
        self.assertTrue(
            compat.RECOGNISED, f"autobahn {autobahn.__version__} not in {compat.KNOWN_RANGE}"
        )
        self.assertTrue(
            compat.TXAIO_RECOGNISED,
            f"txaio {txaio.__version__} not in {compat.TXAIO_KNOWN_RANGE}",
        )

    def test_every_use_on(self) -> None:
        """
        Every internal has the shape the checked release had.
        """
        self.assertEqual(
            {
                "LAZY_LOG_ARGUMENTS": compat.LAZY_LOG_ARGUMENTS,
                "SHED_HANDSHAKE": compat.SHED_HANDSHAKE,
                "CLOSE_FRAME": compat.CLOSE_FRAME,
                "BATCHED_TIMER": compat.BATCHED_TIMER,
                "NO_CLOSE_WAIT": compat.NO_CLOSE_WAIT,
            },
            dict.fromkeys(
                (
                    "LAZY_LOG_ARGUMENTS",
                    "SHED_HANDSHAKE",
                    "CLOSE_FRAME",
                    "BATCHED_TIMER",
                    "NO_CLOSE_WAIT",
                ),
                True,
            ),
        )

    def test_unknown_version(self) -> None:
        """
        A version outside the range, or not a version, is not recognised.
        """
        self.assertFalse(compat._in_range("27.0.0", compat.KNOWN_RANGE))
        self.assertFalse(compat._in_range("25.12.1", compat.KNOWN_RANGE))
        self.assertFalse(compat._in_range("dev", compat.KNOWN_RANGE))
        self.assertTrue(compat._in_range("26.11.1", compat.KNOWN_RANGE))


class LazyLogArgumentsTests(SynchronousTestCase):
    """
    Autobahn's eager debug-log formatting is made lazy for our protocol
    only (a third of the CPU of each connection went to C{pformat} of its
    options).
    """

    def test_connection_does_not_format(self) -> None:
        """
        A whole connection (handshake, subscribe) formats nothing for
        Autobahn's debug log at the default level.
        """
        counted = _CountedRepr()
        h = Harness()
        # An option Autobahn copies to every protocol and logs at debug.
        h.factory.perMessageCompressionAccept = counted
        [ok] = _subscribe(h)
        self.assertEqual(ok["event"], "pusher_internal:subscription_succeeded")
        self.assertEqual(counted.formatted, 0)

    def test_autobahn_untouched(self) -> None:
        """
        Autobahn's module and classes are left as they are: its formatters,
        its methods and C{Timings} printing.
        """
        Harness()
        self.assertIs(autobahn_protocol.pformat, pprint.pformat)
        self.assertIs(autobahn_protocol.hltype, autobahn_util.hltype)
        self.assertIs(autobahn_protocol.hlval, autobahn_util.hlval)
        for cls, name, ours in compat._LAZY_METHODS:
            self.assertIs(vars(cls)[name].__globals__, vars(autobahn_protocol))
            self.assertIsNot(getattr(compat.QuietServerProtocol, ours), vars(cls)[name])
        timings = autobahn_protocol.Timings()
        timings.track("open")
        self.assertIn("'open'", str(timings))

    def test_formats_when_written(self) -> None:
        """
        The lazy copies' formatters still format as before when a debug
        event is written.
        """
        copy = compat.QuietServerProtocol.processHandshake
        lazy_pformat = copy.__globals__["pformat"]
        counted = _CountedRepr()
        lazy = lazy_pformat([counted])
        self.assertEqual(counted.formatted, 0)
        self.assertEqual(f"{lazy}", pprint.pformat([counted]))
        self.assertEqual(str(lazy), "[counted]")
        self.assertEqual(repr(lazy), "[counted]")

    def test_fallback(self) -> None:
        """
        Without the copies (an unrecognised Autobahn), the guard makes none
        and a protocol on Autobahn's own methods works the same, only
        formatting its debug arguments eagerly.
        """
        self.patch(compat, "RECOGNISED", False)
        self.assertEqual(compat._lazy_methods(), {})
        originals = {ours: vars(cls)[name] for cls, name, ours in compat._LAZY_METHODS}
        originals["_connectionMade"] = autobahn_protocol.WebSocketServerProtocol._connectionMade
        plain = type("PlainPusherProtocol", (PusherProtocol,), originals)
        counted = _CountedRepr()
        h = Harness()
        h.factory.protocol = plain
        h.factory.perMessageCompressionAccept = counted
        [ok] = _subscribe(h)
        self.assertEqual(ok["event"], "pusher_internal:subscription_succeeded")
        self.assertGreater(counted.formatted, 0)
        self.assertEqual(h.factory.countConnections, 1)


class ShedHandshakeTests(SynchronousTestCase):
    """
    The handshake state is dropped when recognised, kept otherwise.
    """

    def test_fallback_keeps_state(self) -> None:
        """
        With the guard off nothing is dropped, and the connection works.
        """
        self.patch(compat, "SHED_HANDSHAKE", False)
        h = Harness()
        c = h.connect()
        self.assertIn("http_headers", vars(c.protocol))
        self.assertIsNot(type(c.protocol.send_queue), compat._SendQueue)
        [ok] = c.send({"event": "pusher:subscribe", "data": {"channel": "a"}})
        self.assertEqual(ok["event"], "pusher_internal:subscription_succeeded")

    def test_shed(self) -> None:
        """
        With the guard on the state is gone and the send queue is small.
        """
        c = Harness().connect()
        self.assertNotIn("http_headers", vars(c.protocol))
        self.assertIs(type(c.protocol.send_queue), compat._SendQueue)

    def test_shared_state_on_the_class(self) -> None:
        """
        The options and flags every connection starts with live on the
        factory's protocol class: the instance dict keeps under 43 entries
        (a table of 64 slots) through subscribing and messaging, and reads
        still give the factory's values.
        """
        h = Harness()
        c = h.connect()
        [ok] = c.send({"event": "pusher:subscribe", "data": {"channel": "a"}})
        self.assertEqual(ok["event"], "pusher_internal:subscription_succeeded")
        c.send({"event": "pusher:ping", "data": {}})
        attributes = vars(c.protocol)
        for name in compat.CONFIG_STATE:
            self.assertNotIn(name, attributes)
            self.assertEqual(getattr(c.protocol, name), getattr(h.factory, name))
        for name, value in compat.SHARED_STATE:
            self.assertNotIn(name, attributes)
            self.assertEqual(getattr(c.protocol, name), value)
        self.assertLess(len(attributes), 43)

    def test_option_changed_later(self) -> None:
        """
        An option set on the factory later holds for new connections (the
        factory builds a new protocol class), not for existing ones, as
        with Autobahn's own per-connection copies.
        """
        h = Harness()
        before = h.connect()
        h.factory.setProtocolOptions(maxFramePayloadSize=1234)
        after = h.connect()
        self.assertEqual(after.protocol.maxFramePayloadSize, 1234)
        self.assertEqual(before.protocol.maxFramePayloadSize, 64 * 1024)

    def test_fallback_shares_nothing(self) -> None:
        """
        With the guard off the factory's protocol class is ours, unchanged.
        """
        self.patch(compat, "SHED_HANDSHAKE", False)
        self.assertIs(compat.sharing_class(PusherProtocol, object()), PusherProtocol)


class CloseWithoutWaitingTests(SynchronousTestCase):
    """
    A shutdown close starts no closing-handshake timer when recognised;
    otherwise Autobahn's timer runs, and the client still gets 4200.
    """

    def test_no_timer(self) -> None:
        """
        With the guard on, closing for shutdown leaves no timer behind.
        """
        h = Harness()
        c = h.connect()
        c.protocol.shut_down(4200, "Server shutting down")
        self.assertIsNone(c.protocol.closeHandshakeTimeoutCall)
        h.flush()
        c.pump()
        self.assertEqual(c.close_code, 4200)

    def test_fallback(self) -> None:
        """
        With the guard off the connection keeps Autobahn's timer.
        """
        self.patch(compat, "NO_CLOSE_WAIT", False)
        h = Harness()
        c = h.connect()
        c.protocol.shut_down(4200, "Server shutting down")
        self.assertIsNotNone(c.protocol.closeHandshakeTimeoutCall)
        h.flush()
        c.pump()
        self.assertEqual(c.close_code, 4200)


class CloseFrameTests(SynchronousTestCase):
    """
    Invalid UTF-8 closes with 1007, through C{sendCloseFrame} or, as the
    fallback, through Autobahn's own (public) validation.
    """

    def test_fallback(self) -> None:
        """
        With the guard off the factory turns Autobahn's UTF-8 validation on,
        which closes with 1007.
        """
        self.patch(factory_module, "CLOSE_FRAME", False)
        self.patch(compat, "CLOSE_FRAME", False)
        h = Harness()
        self.assertTrue(h.factory.utf8validateIncoming)
        a = h.connect()
        a.send_raw(client_frame(b'{"event":"\xff"}'))
        self.assertEqual(a.close_code, 1007)

    def test_fallback_drops(self) -> None:
        """
        Invalid text that still reaches the protocol with the guard off
        drops the connection.
        """
        self.patch(compat, "CLOSE_FRAME", False)
        a = Harness().connect()
        a.send_raw(client_frame(b'{"event":"\xff"}'))
        self.assertIsNone(a.close_code)
        self.assertTrue(a.transport.disconnecting)


class ReactorTimerTests(SynchronousTestCase):
    """
    Autobahn's handshake and close timeouts run on the factory's reactor.
    """

    def _close_times_out(self) -> None:
        h = Harness()
        a = h.connect()
        a.protocol.sendClose(4200, "bye")
        a.pump()
        self.assertEqual(a.close_code, 4200)
        self.assertFalse(a.transport.disconnecting)
        h.clock.advance(h.factory.closeHandshakeTimeout + 1)
        self.assertTrue(a.transport.disconnecting)

    def test_batched(self) -> None:
        """
        The close handshake timeout is driven by the factory's clock.
        """
        self.assertIsInstance(Harness().factory._batched_timer, compat._BATCHED_TIMER)
        self._close_times_out()

    def test_fallback(self) -> None:
        """
        Without txaio's batched timer, a plain one on the reactor does it.
        """
        self.patch(compat, "_BATCHED_TIMER", None)
        self.assertIsInstance(Harness().factory._batched_timer, compat._ReactorTimer)
        self._close_times_out()

    def test_unrecognised_factory(self) -> None:
        """
        A factory without the attribute is left alone.
        """
        self.assertFalse(compat.use_reactor_for_timers(object(), Clock()))


class SendQueueTests(SynchronousTestCase):
    """
    Frames wait behind Autobahn's own queued writes; with the guard off
    they all go through C{sendData}, and still arrive.
    """

    def test_recognised(self) -> None:
        """
        The installed Autobahn keeps the queue the guard looks for.
        """
        self.assertTrue(compat.SEND_QUEUE)

    def test_queued(self) -> None:
        """
        With the guard on, C{writes_queued} says whether Autobahn holds writes.
        """
        c = Harness().connect()
        self.assertFalse(compat.writes_queued(c.protocol))
        c.protocol.send_queue.append((b"x", False))
        self.assertTrue(compat.writes_queued(c.protocol))

    def test_fallback(self) -> None:
        """
        With the guard off every frame counts as queued, and a subscribe is
        still answered.
        """
        self.patch(compat, "SEND_QUEUE", False)
        c = Harness().connect()
        self.assertTrue(compat.writes_queued(c.protocol))
        [ok] = c.send({"event": "pusher:subscribe", "data": {"channel": "a"}})
        self.assertEqual(ok["event"], "pusher_internal:subscription_succeeded")
