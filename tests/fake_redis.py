"""
A fake Redis server at the protocol level, for unit tests without Redis.

L{FakeRedisServer} speaks RESP over L{twisted.internet.testing} fake
transports (synapse's C{FakeRedisPubSubServer} pattern): it accepts the
connections a L{MemoryReactor} records in C{tcpClients}, parses commands
incrementally (any chunking), handles PING/AUTH/SELECT, PUBLISH, SUBSCRIBE
UNSUBSCRIBE and PUBSUB NUMSUB itself, and hands every other command (EVAL, EVALSHA,
SCRIPT, HGETALL, ...) to an in-memory fakeredis server, which runs the
adapter's real Lua scripts through lupa. Lua's C{redis.call('TIME')} reads
the test clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fakeredis
import redis.exceptions
from fakeredis.commands_mixins import server_mixin
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure
from twisted.test import iosim

__all__ = ["FakeRedisServer", "encode_reply", "parse_requests"]


def encode_reply(value: Any) -> bytes:
    """
    RESP2 bytes for one reply as redis-py's parser returns it.
    """
    if isinstance(value, Exception):
        message = str(value)
        if isinstance(value, redis.exceptions.NoScriptError):
            message = "NOSCRIPT " + message
        elif not message.split(" ", 1)[0].isupper():
            message = "ERR " + message
        return b"-" + message.replace("\r\n", " ").encode() + b"\r\n"
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, bool):
        return b":%d\r\n" % int(value)
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if isinstance(value, dict):
        value = [x for kv in value.items() for x in kv]
    if isinstance(value, (list, tuple, set)):
        return b"*%d\r\n" % len(value) + b"".join(encode_reply(v) for v in value)
    if isinstance(value, float):
        return encode_reply(repr(value))
    raise TypeError(f"cannot encode {value!r}")


def parse_requests(buffer: bytearray) -> list[list[bytes]]:
    """
    Remove and return every complete RESP array of bulk strings at the start
    of C{buffer}; an incomplete one stays in the buffer.
    """
    out: list[list[bytes]] = []
    while buffer:
        if buffer[:1] != b"*":
            raise ValueError(f"fake Redis only parses arrays, got {bytes(buffer[:20])!r}")
        end = buffer.find(b"\r\n")
        if end < 0:
            return out
        count = int(buffer[1:end])
        pos = end + 2
        args: list[bytes] = []
        for _ in range(count):
            end = buffer.find(b"\r\n", pos)
            if end < 0:
                return out
            size = int(buffer[pos + 1 : end])
            start = end + 2
            if len(buffer) < start + size + 2:
                return out
            args.append(bytes(buffer[start : start + size]))
            pos = start + size + 2
        del buffer[:pos]
        out.append(args)
    return out


class _Clock:
    """
    Stands in for the C{time} module inside fakeredis so TIME follows the
    test clock.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock

    def time(self) -> float:
        """
        The test clock's seconds.
        """
        return self._clock.seconds()


class FakeRedisProtocol(Protocol):
    """
    One client connection to the fake server.
    """

    def __init__(self, server: FakeRedisServer) -> None:
        self.server = server
        self.buffer = bytearray()
        self.channels: set[bytes] = set()
        self.authenticated = server.password is None
        self.data = fakeredis.FakeStrictRedis(server=server.data, protocol=2)
        self.conn = self.data.connection_pool.get_connection()

    def connectionMade(self) -> None:
        """
        Count the connection.
        """
        self.server.connections.append(self)

    def connectionLost(self, reason: Failure | None = None) -> None:
        """
        Forget the connection and its subscriptions.
        """
        if self in self.server.connections:
            self.server.connections.remove(self)

    def dataReceived(self, data: bytes) -> None:
        """
        Parse and run every complete command.
        """
        self.buffer.extend(data)
        for args in parse_requests(self.buffer):
            self.run(args)

    def reply(self, value: Any) -> None:
        """
        Write one reply.
        """
        assert self.transport is not None
        self.transport.write(encode_reply(value))

    def run(self, args: list[bytes]) -> None:
        """
        Run one command.
        """
        name = args[0].upper().decode()
        self.server.log.append([name, *args[1:]])
        if self.server.on_command is not None:
            if self.server.on_command(self, name, args) is False:
                return
        if name == "AUTH":
            if args[-1].decode() == self.server.password:
                self.authenticated = True
                self.reply(b"OK")
            else:
                self.reply(redis.exceptions.ResponseError("WRONGPASS invalid password"))
            return
        if not self.authenticated:
            self.reply(redis.exceptions.ResponseError("NOAUTH Authentication required."))
            return
        if name == "SUBSCRIBE":
            for channel in args[1:]:
                self.channels.add(channel)
                self.reply([b"subscribe", channel, len(self.channels)])
            return
        if name == "UNSUBSCRIBE":
            for channel in args[1:]:
                self.channels.discard(channel)
                self.reply([b"unsubscribe", channel, len(self.channels)])
            return
        if name == "PING" and self.channels:
            self.reply([b"pong", b""])
            return
        if name == "PUBSUB" and args[1].upper() == b"NUMSUB":
            counts: list[Any] = []
            for channel in args[2:]:
                counts += [channel, sum(channel in c.channels for c in self.server.connections)]
            self.reply(counts)
            return
        if name == "PUBLISH":
            self.reply(self.server.publish(args[1], args[2]))
            return
        self.conn.send_command(*args)
        try:
            result = self.conn.read_response()
        except redis.exceptions.ResponseError as e:
            result = e
        self.reply(result)


class FakeRedisServer:
    """
    The fake server: shared data, pub/sub, and the connections it accepted.

    @ivar accepting: when False, new connection attempts are refused.
    @ivar log: every command received, as C{[NAME, arg, ...]}.
    @ivar on_command: a hook called with C{(protocol, name, args)} before a
        command runs; returning False swallows the command (no reply), to
        simulate a hung server.
    """

    def __init__(self, clock: IReactorTime, password: str | None = None) -> None:
        self.clock = clock
        self.password = password
        self.data = fakeredis.FakeServer()
        self.connections: list[FakeRedisProtocol] = []
        self.pumps: list[iosim.IOPump] = []
        self.accepting = True
        self.log: list[list[Any]] = []
        self.on_command: Callable[[FakeRedisProtocol, str, list[bytes]], object] | None = None

    def patch_time(self, patch: Callable[[object, str, object], object]) -> None:
        """
        Make Lua's TIME read the test clock; C{patch} is C{TestCase.patch}.
        """
        patch(server_mixin, "time", _Clock(self.clock))

    def publish(self, channel: bytes, payload: bytes) -> int:
        """
        Deliver C{payload} to every connection subscribed to C{channel}.
        """
        receivers = [c for c in self.connections if channel in c.channels]
        for c in receivers:
            c.reply([b"message", channel, payload])
        return len(receivers)

    def accept(self, reactor: MemoryReactor) -> int:
        """
        Connect (or refuse) every connection attempt C{reactor} recorded
        since the last call. Returns how many were handled.
        """
        handled = 0
        while reactor.tcpClients:
            _host, _port, factory, _timeout, _bind = reactor.tcpClients.pop(0)
            handled += 1
            if not self.accepting:
                factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
                continue
            client = factory.buildProtocol(None)
            server = FakeRedisProtocol(self)
            pump = iosim.connect(
                server,
                iosim.makeFakeServer(server),
                client,
                iosim.makeFakeClient(client),
                greet=False,
            )
            self.pumps.append(pump)
        return handled

    def flush(self, reactor: MemoryReactor | None = None) -> None:
        """
        Accept pending connections and move bytes both ways until quiet.
        """
        for _ in range(1000):
            moved = False
            if reactor is not None and self.accept(reactor):
                moved = True
            for pump in list(self.pumps):
                if pump.pump():
                    moved = True
                if pump.clientIO.disconnected and pump.serverIO.disconnected:
                    self.pumps.remove(pump)
            if not moved:
                return
        raise RuntimeError("fake Redis did not settle")

    def drop_connections(self) -> None:
        """
        Close every connection from the server side (like a Redis restart
        or CLIENT KILL).
        """
        for pump in self.pumps:
            pump.serverIO.loseConnection()
