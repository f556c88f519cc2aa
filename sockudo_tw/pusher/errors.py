"""
Pusher error and close codes, and the exception that carries one.

Ranges (pusher-protocol.md section 3.1): 4000-4099 fatal, 4100-4199 reconnect
with back-off, 4200-4299 reconnect now, 4300-4399 errors sent as
C{pusher:error} frames that never close the connection.

Ours, not Pusher's (README.rst, "Limits"): 4101 closes a connection that
keeps sending over its message rate (pusher-js backs off, then reconnects),
4304 refuses a subscription over the per-connection cap, 4305 says messages
are being dropped for the message rate. 4303 is left alone (Sockudo uses it
for internal broadcast errors).
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["PusherError", "PusherErrorCode"]


class PusherErrorCode(IntEnum):
    """
    The codes Pusher clients understand, by their documented meaning.
    """

    SSL_ONLY = 4000
    APP_NOT_FOUND = 4001
    APP_DISABLED = 4003
    OVER_CONNECTION_QUOTA = 4004
    PATH_NOT_FOUND = 4005
    INVALID_VERSION_FORMAT = 4006
    UNSUPPORTED_PROTOCOL = 4007
    NO_PROTOCOL = 4008
    UNAUTHORIZED = 4009
    OVER_CAPACITY = 4100
    MESSAGE_RATE_LIMIT = 4101
    APP_STORE_UNAVAILABLE = 4102  # ours: the database of apps is down; back off, reconnect
    RECONNECT_NOW = 4200
    PONG_NOT_RECEIVED = 4201
    CLOSED_AFTER_INACTIVITY = 4202
    GENERIC_ERROR = 4300
    CLIENT_EVENT_REJECTED = 4301
    WATCHLIST_LIMIT = 4302
    SUBSCRIPTION_LIMIT = 4304
    MESSAGES_DROPPED = 4305

    @property
    def closes(self) -> bool:
        """
        Whether a connection is closed with this code (everything below 4300).
        """
        return self < 4300


class PusherError(Exception):
    """
    A protocol error to report to a client as C{pusher:error}.

    @ivar code: the Pusher code, or L{None} for the null-coded errors the hosted
        service sends (bad signature, unsupported event); never L{None} on the
        first frame of a connection.
    @ivar message: human-readable text, copied from Pusher where it has one.
    """

    def __init__(self, code: int | None, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    @property
    def closes(self) -> bool:
        """
        Whether this error also closes the connection.
        """
        return self.code is not None and self.code < 4300
