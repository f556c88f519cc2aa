# -*- test-case-name: tests.test_compat_autobahn -*-
"""
The Autobahn (and txaio) internals sockudo-tw relies on, each guarded, with
a public fallback (see L{sockudo_tw.compat} for the rule).

Checked on Autobahn 26.11.1 and txaio 26.6.1 (C{CHECKED_ON}); the guards
accept the ranges in C{KNOWN_RANGE} and C{TXAIO_KNOWN_RANGE} (Autobahn's is
the one C{install_requires} allows). Each use has a flag, true when the
installed version is in range and the internal has the expected shape:

  - L{LAZY_LOG_ARGUMENTS}: Autobahn builds its debug log arguments eagerly
    even with debug off (C{pformat} of its ~40 protocol options and
    C{hltype} names on every connection: about 30 % of the CPU an accepted
    connection costs). L{QuietServerProtocol} carries copies of the few
    server-path methods that do it, compiled from Autobahn's own code but
    with lazy C{pformat}/C{hltype}/C{hlval} that format only when a debug
    event is written. Only our subclass uses the copies: Autobahn's module
    and classes are untouched. Fallback: Autobahn's methods, unchanged
    (slower connects).
  - L{SHED_HANDSHAKE}: L{shed_handshake_state} drops the attributes an
    Autobahn server protocol only reads until C{onOpen}, swaps its empty
    send C{deque} for a small list and rebuilds the instance C{__dict__}:
    about 2.7 KiB less for each held connection. Fallback: nothing is
    dropped (more memory per connection).
  - L{SEND_QUEUE}: L{writes_queued} reads Autobahn's outgoing queue
    (C{send_queue}, for sync or chopped sends), so that a frame written
    straight to the transport never overtakes bytes Autobahn still holds.
    Fallback: every frame is taken for queued and goes through
    C{sendData} (no write corking).
  - L{CLOSE_FRAME}: L{close_invalid_payload} closes with 1007 through
    C{sendCloseFrame} (the public C{sendClose} refuses codes below 3000).
    Fallback: the factory turns on Autobahn's own UTF-8 validation
    (C{utf8validateIncoming}, public), which closes with 1007 itself and
    logs more; if invalid text still reaches us, the connection is dropped.
  - L{BATCHED_TIMER}: L{reactor_timer} builds txaio's C{_BatchedTimer} on
    our reactor for the factory's C{_batched_timer} (Autobahn's handshake
    and close timeouts), so tests drive them with a clock and one reactor
    call serves every connection in a 200 ms bucket. Fallback: an object
    with the same C{call_later} over C{reactor.callLater} (one reactor call
    per timeout).
"""

from __future__ import annotations

import pprint
import types
from collections.abc import Callable
from typing import Any

import autobahn
import autobahn.websocket.protocol as autobahn_protocol
import txaio
from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from sockudo_tw.compat import version_in_range

__all__ = [
    "BATCHED_TIMER",
    "CHECKED_ON",
    "CLOSE_FRAME",
    "HANDSHAKE_STATE",
    "KNOWN_RANGE",
    "LAZY_LOG_ARGUMENTS",
    "NO_CLOSE_WAIT",
    "RECOGNISED",
    "SEND_QUEUE",
    "SHED_HANDSHAKE",
    "TXAIO_KNOWN_RANGE",
    "QuietServerProtocol",
    "close_invalid_payload",
    "close_without_waiting",
    "reactor_timer",
    "sharing_class",
    "shed_handshake_state",
    "writes_queued",
]

CHECKED_ON = {"autobahn": "26.11.1", "txaio": "26.6.1"}
"""
The releases the uses below were read against and tested on.
"""

KNOWN_RANGE = ((26, 0), (27, 0))
"""
Autobahn versions (major, minor), lower bound included, upper excluded,
for which the guards accept the internals.
"""

TXAIO_KNOWN_RANGE = ((23, 0), (27, 0))
"""
txaio versions (major, minor) for which L{BATCHED_TIMER} may be on.
"""

HANDSHAKE_STATE = (
    # The opening handshake as Autobahn parsed and answered it.
    "http_request_data",
    "http_response_data",
    "http_headers",
    "http_request_params",
    "http_status_line",
    "http_request_uri",
    "http_request_path",
    "http_request_host",
    "_wskey",
    "websocket_origin",
    "websocket_protocols",
    "websocket_extensions",
    # Factory options Autobahn copies to each protocol and reads only while
    # it accepts the handshake.
    "flashSocketPolicy",
    "serveFlashSocketPolicy",
    "allowedOrigins",
    "allowedOriginsPatterns",
    "allowNullOrigin",
    "maxConnections",
    "trustXForwardedFor",
    "versions",
    "perMessageCompressionAccept",
    "webStatus",
    "openHandshakeTimeout",
)
"""
Attributes an Autobahn server protocol only reads until C{onOpen} (checked
against autobahn/websocket/protocol.py of 26.11.1: C{processHandshake},
C{succeedHandshake} and C{_connectionMade}).
"""


_in_range = version_in_range


RECOGNISED = _in_range(getattr(autobahn, "__version__", ""), KNOWN_RANGE)
"""
Whether the installed Autobahn is in L{KNOWN_RANGE} (asserted by the tests).
"""

TXAIO_RECOGNISED = _in_range(getattr(txaio, "__version__", ""), TXAIO_KNOWN_RANGE)
"""
Whether the installed txaio is in L{TXAIO_KNOWN_RANGE} (asserted by the tests).
"""


# -- lazy log arguments --------------------------------------------------------


class _FormatLater:
    """
    A log argument formatted only when a log event is written.
    """

    __slots__ = ("_argument", "_format")

    def __init__(self, format_: Callable[[Any], object], argument: object) -> None:
        self._format = format_
        self._argument = argument

    def __str__(self) -> str:
        return str(self._format(self._argument))

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


_FORMATTERS = ("pformat", "hltype", "hlval")

_LAZY_METHODS = (
    (autobahn_protocol.WebSocketProtocol, "_connectionMade", "_base_connection_made"),
    (autobahn_protocol.WebSocketProtocol, "sendData", "sendData"),
    (autobahn_protocol.WebSocketServerProtocol, "_connectionLost", "_connectionLost"),
    (autobahn_protocol.WebSocketServerProtocol, "processHandshake", "processHandshake"),
)
"""
The server-path methods that build debug log arguments eagerly: class,
name, and the name of the copy on L{QuietServerProtocol}.
(C{WebSocketServerProtocol._connectionMade} only logs and calls the base
one; L{QuietServerProtocol} restates it. C{onConnect} is ours.)
"""


def _lazy_globals() -> dict[str, Any] | None:
    """
    A copy of Autobahn's protocol module namespace whose formatters are
    lazy, or L{None} when the module does not have them as expected.
    """
    namespace = dict(vars(autobahn_protocol))
    expected = {
        "pformat": pprint.pformat,
        "hltype": getattr(autobahn_protocol, "hltype", None),
        "hlval": getattr(autobahn_protocol, "hlval", None),
    }
    for name in _FORMATTERS:
        eager = expected[name]
        if eager is None or namespace.get(name) is not eager:
            return None
        namespace[name] = lambda argument, eager=eager: _FormatLater(eager, argument)
    return namespace


def _lazy_copy(function: Any, namespace: dict[str, Any]) -> Any:
    """
    C{function} compiled against C{namespace}: the same code, reading the
    lazy formatters. L{None} when it is not a plain function (a closure,
    e.g. C{super()}, would tie it to its class).
    """
    if not isinstance(function, types.FunctionType) or function.__closure__:
        return None
    if not set(_FORMATTERS) & set(function.__code__.co_names):
        return None
    copy = types.FunctionType(
        function.__code__,
        namespace,
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__qualname__ = function.__qualname__
    copy.__doc__ = function.__doc__
    return copy


def _server_connection_made_known() -> bool:
    """
    Whether C{WebSocketServerProtocol._connectionMade} is the one restated
    in L{QuietServerProtocol}: it logs, calls the base class's, and counts
    the connection on the factory.
    """
    function = autobahn_protocol.WebSocketServerProtocol.__dict__.get("_connectionMade")
    code = getattr(function, "__code__", None)
    return code is not None and set(code.co_names) <= {
        "log",
        "debug",
        "hltype",
        "_connectionMade",
        "peer",
        "WebSocketProtocol",
        "factory",
        "countConnections",
    }


def _lazy_methods() -> dict[str, Any]:
    """
    The lazy copies, by name; empty unless every one could be made.
    """
    if not RECOGNISED or not _server_connection_made_known():
        return {}
    namespace = _lazy_globals()
    if namespace is None:
        return {}
    copies: dict[str, Any] = {}
    for cls, name, ours in _LAZY_METHODS:
        copy = _lazy_copy(cls.__dict__.get(name), namespace)
        if copy is None:
            return {}
        copies[ours] = copy
    return copies


_COPIES = _lazy_methods()

LAZY_LOG_ARGUMENTS = bool(_COPIES)


class QuietServerProtocol(WebSocketServerProtocol):
    """
    An Autobahn server protocol that formats its debug log arguments only
    when debug logging is on (see L{LAZY_LOG_ARGUMENTS}); our protocols
    derive from it. With the flag off it is Autobahn's class unchanged.
    """

    if LAZY_LOG_ARGUMENTS:
        _base_connection_made = _COPIES["_base_connection_made"]
        sendData = _COPIES["sendData"]  # noqa: N815 (Autobahn's name)
        _connectionLost = _COPIES["_connectionLost"]  # noqa: N815 (Autobahn's name)
        processHandshake = _COPIES["processHandshake"]  # noqa: N815 (Autobahn's name)

        def _connectionMade(self) -> None:  # noqa: N802 (Autobahn's name)
            """
            C{WebSocketServerProtocol._connectionMade} without its debug
            line: the base class's (lazy copy), then count the connection.
            """
            self._base_connection_made()
            self.factory.countConnections += 1


# -- per-connection memory -----------------------------------------------------


class _SendQueue(list[tuple[bytes, bool]]):
    """
    Autobahn's outgoing queue (C{send_queue}), used only for sync or chopped
    writes, which this server does not make: an empty list costs 72 bytes
    where the empty C{deque} Autobahn creates costs 760.
    """

    __slots__ = ()

    def popleft(self) -> tuple[bytes, bool]:
        """
        The oldest queued write, as C{deque.popleft}.
        """
        return self.pop(0)


def _shed_handshake_known() -> bool:
    """
    Whether Autobahn's send queue is a C{deque} used through C{append},
    C{popleft} and C{len} only, and a protocol instance keeps its state in
    a plain C{__dict__}.
    """
    code = autobahn_protocol.WebSocketProtocol._connectionMade.__code__
    slotted = any("__slots__" in vars(cls) for cls in WebSocketServerProtocol.__mro__[:-1])
    return "deque" in code.co_names and not slotted


SHED_HANDSHAKE = RECOGNISED and _shed_handshake_known()


SHARED_STATE = (
    ("wasMaxFramePayloadSizeExceeded", False),
    ("wasMaxMessagePayloadSizeExceeded", False),
    ("closedByMe", False),
    ("failedByMe", False),
    ("droppedByMe", False),
    ("wasClean", False),
    ("wasNotCleanReason", None),
    ("wasServerConnectionDropTimeout", False),
    ("wasOpenHandshakeTimeout", False),
    ("wasCloseHandshakeTimeout", False),
    ("wasServingFlashSocketPolicyFile", False),
    ("localCloseCode", None),
    ("localCloseReason", None),
    ("remoteCloseCode", None),
    ("remoteCloseReason", None),
    ("openHandshakeTimeoutCall", None),
    ("closeHandshakeTimeoutCall", None),
    ("autoPingTimeoutCall", None),
    ("autoPingPending", None),
    ("autoPingPendingCall", None),
    ("autoPingPendingSeq", 0),
    ("autoPingPendingSent", None),
    ("_perMessageCompress", None),
    ("trackedTimings", None),
    ("websocket_protocol_in_use", None),
    ("websocket_version", 13),
)
"""
Per-connection attributes Autobahn sets in C{_connectionMade} or the
handshake and writes again only when the connection closes or fails, or
for automatic pings (off here): with these values they can live on the
class (checked against autobahn/websocket/protocol.py of 26.11.1).
"""

CONFIG_STATE = (
    "logOctets",
    "logFrames",
    "trackTimings",
    "utf8validateIncoming",
    "applyMask",
    "maxFramePayloadSize",
    "maxMessagePayloadSize",
    "autoFragmentSize",
    "failByDrop",
    "echoCloseCodeReason",
    "closeHandshakeTimeout",
    "autoPingInterval",
    "autoPingTimeout",
    "autoPingSize",
    "autoPingRestartOnAnyTraffic",
    "requireMaskedClientFrames",
    "maskServerFrames",
)
"""
Factory options Autobahn copies to every protocol (C{CONFIG_ATTRS}) and
reads later: the same for every connection of one factory. Not
C{tcpNoDelay}: Autobahn's C{connectionMade} reads it before the copy (and
gives up silently while it is missing), so on the class it would set
C{TCP_NODELAY} a second time on each connection (the listener's protocol
sets it first) and fail noisily on Unix sockets.
"""

_ABSENT = object()


def sharing_class(protocol_class: type[Any], factory: Any) -> type[Any]:
    """
    A subclass of C{protocol_class} holding, as class attributes, the
    values every connection of C{factory} starts with (L{SHARED_STATE} and
    the factory's L{CONFIG_STATE} options as they are now), so that
    L{shed_handshake_state} can drop them from each instance: an instance
    C{__dict__} of under 43 entries fits a table half the size (about 750
    bytes less per connection). Autobahn copies an option to a new
    connection only when the protocol (its class included) lacks it, so
    the factory must build a new class whenever its options change.
    C{protocol_class} itself when L{SHED_HANDSHAKE} is off.
    """
    if not SHED_HANDSHAKE:
        return protocol_class
    shared: dict[str, Any] = dict(SHARED_STATE)
    for name in CONFIG_STATE:
        value = getattr(factory, name, _ABSENT)
        if value is not _ABSENT:
            shared[name] = value
    # What the class shares, looked up once per connection by the shedding.
    body: dict[str, Any] = {**shared, _SHARED: tuple(shared.items())}
    body["__module__"] = protocol_class.__module__
    body["__doc__"] = protocol_class.__doc__
    return type(protocol_class.__name__, (protocol_class,), body)


_SHARED = "_sockudo_shared_state"


def _shed_shared_state(protocol: WebSocketServerProtocol, attributes: dict[str, Any]) -> None:
    """
    Drop the instance attributes whose value the protocol's sharing class
    holds already (the same type and an equal value), so reads find the
    class's. A class that is not a L{sharing_class} shares nothing.
    """
    shared: tuple[tuple[str, Any], ...] = getattr(type(protocol), _SHARED, ())
    get = attributes.get
    for name, value in shared:
        mine = get(name, _ABSENT)
        if mine is value or (type(mine) is type(value) and mine == value):
            del attributes[name]


def shed_handshake_state(protocol: WebSocketServerProtocol) -> None:
    """
    Drop what only the opening handshake needed, the state its class
    shares (L{sharing_class}) and Autobahn's empty send C{deque}, then
    rebuild the instance C{__dict__} at its new size (it then fits a table
    of a quarter of the size). Call from C{onOpen}. Does nothing when
    L{SHED_HANDSHAKE} is off.
    """
    if not SHED_HANDSHAKE:
        return
    attributes = protocol.__dict__
    for name in HANDSHAKE_STATE:
        attributes.pop(name, None)
    _shed_shared_state(protocol, attributes)
    if not attributes.get("send_queue", True):
        attributes["send_queue"] = _SendQueue()
    protocol.__dict__ = dict(attributes)


SEND_QUEUE = RECOGNISED and "send_queue" in (
    autobahn_protocol.WebSocketProtocol._connectionMade.__code__.co_names
)


def writes_queued(protocol: WebSocketServerProtocol) -> bool:
    """
    Whether Autobahn still holds writes of its own for C{protocol}, which a
    frame written past it would overtake. With L{SEND_QUEUE} off, always
    true: the caller then sends through C{sendData}.
    """
    if not SEND_QUEUE:
        return True
    return bool(protocol.send_queue)


# -- closing with 1007 ---------------------------------------------------------

CLOSE_FRAME = RECOGNISED and callable(getattr(WebSocketServerProtocol, "sendCloseFrame", None))


def close_invalid_payload(protocol: WebSocketServerProtocol, reason: bytes) -> None:
    """
    Close with 1007 (invalid payload data, RFC 6455 section 7.4.1); with
    L{CLOSE_FRAME} off, drop the connection instead (the factory then has
    Autobahn validate UTF-8 itself, so this is not reached in practice).
    """
    if CLOSE_FRAME:
        protocol.sendCloseFrame(
            code=protocol.CLOSE_STATUS_CODE_INVALID_PAYLOAD, reasonUtf8=reason, isReply=False
        )
    else:
        protocol.dropConnection(abort=False)


# -- closing without waiting for the client ------------------------------------

NO_CLOSE_WAIT = CLOSE_FRAME and "closeHandshakeTimeout" in (
    WebSocketServerProtocol.sendCloseFrame.__code__.co_names
)
"""
Whether Autobahn reads the connection's C{closeHandshakeTimeout} when it
sends a close frame (checked on 26.11.1), so that setting it on the
connection just before closing keeps its timer from starting.
"""


def close_without_waiting(protocol: WebSocketServerProtocol) -> None:
    """
    Have the next close frame of C{protocol} start no closing-handshake
    timer: at shutdown the caller closes the TCP connection itself right
    after, and under load Autobahn's timer (1 s) could fire first and abort
    it with a reset that overtakes the close frame. With L{NO_CLOSE_WAIT}
    off, nothing changes (the timer may then abort a slow connection, as
    Autobahn does by default).
    """
    if NO_CLOSE_WAIT:
        connection: Any = protocol  # the option Autobahn copied to it
        connection.closeHandshakeTimeout = 0


# -- Autobahn's timers on our reactor -----------------------------------------


class _ReactorTimer:
    """
    txaio's C{IBatchedTimer} on public API: one reactor call per timeout.
    """

    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor

    def call_later(
        self, delay: float, func: Callable[..., object], *args: Any, **kwargs: Any
    ) -> IDelayedCall:
        """
        Call C{func} after C{delay} seconds.
        """
        return self._reactor.callLater(delay, func, *args, **kwargs)


def _batched_timer_class() -> Any:
    """
    txaio's C{_BatchedTimer}, or L{None} when it is not there with the
    constructor arguments of the checked release.
    """
    if not (RECOGNISED and TXAIO_RECOGNISED):
        return None
    try:
        from txaio._common import _BatchedTimer
    except ImportError:
        return None
    names = _BatchedTimer.__init__.__code__.co_varnames
    wanted = ("bucket_milliseconds", "chunk_size", "seconds_provider", "delayed_call_creator")
    return _BatchedTimer if all(name in names for name in wanted) else None


_BATCHED_TIMER = _batched_timer_class()

BATCHED_TIMER = _BATCHED_TIMER is not None


def reactor_timer(reactor: IReactorTime) -> Any:
    """
    An object for an Autobahn factory's C{_batched_timer}: Autobahn's
    handshake and close timeouts, run by C{reactor} (see L{BATCHED_TIMER}).
    """
    if _BATCHED_TIMER is not None:
        return _BATCHED_TIMER(
            200.0,
            1000,
            seconds_provider=reactor.seconds,
            delayed_call_creator=reactor.callLater,
        )
    return _ReactorTimer(reactor)


def use_reactor_for_timers(factory: Any, reactor: IReactorTime) -> bool:
    """
    Point an Autobahn factory's timers (its C{_batched_timer}, which
    Autobahn creates on txaio's global loop) at C{reactor}.

    @return: whether the factory has that attribute (it does on every
        recognised Autobahn); if not, its timers stay on the global reactor.
    """
    if not RECOGNISED or not hasattr(factory, "_batched_timer"):
        return False
    factory._batched_timer = reactor_timer(reactor)
    return True
