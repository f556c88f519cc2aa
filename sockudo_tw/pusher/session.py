# -*- test-case-name: tests.test_session -*-
"""
One Pusher connection's state machine, without I/O.

The glue feeds it text frames with the current time (L{Session.receive}) and
carries out the effects it returns: frames to send, a close, and requests to
the adapter (subscribe, unsubscribe, client events, sign-in, cache lookup)
whose answers come back through L{Session.subscribed},
L{Session.cache_fetched} and L{Session.signed_in}; what a subscribe or an
unsubscribe means to the other subscribers and the observer comes back
from them as channel effects (L{sockudo_tw.pusher.subscriptions}). Timers
are lazy: the glue asks L{Session.next_deadline} and calls L{Session.tick}
then; activity only moves a timestamp.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from sockudo_tw.pusher import events
from sockudo_tw.pusher.app import App
from sockudo_tw.pusher.channels import (
    ChannelKind,
    channel_type,
    server_to_user_id,
    validate_channel_name,
)
from sockudo_tw.pusher.errors import PusherError, PusherErrorCode
from sockudo_tw.pusher.presence import (
    PresenceMember,
    SignedInUser,
    parse_channel_data,
    parse_user_data,
)
from sockudo_tw.pusher.signing import (
    channel_string_to_sign,
    user_string_to_sign,
    verify_token,
)
from sockudo_tw.pusher.subscriptions import (
    CacheMissed,
    ChannelEffect,
    Occupied,
    SubscribeOutcome,
    after_confirm,
    member_joined,
)

__all__ = [
    "MAX_SUBSCRIPTIONS",
    "MESSAGES_PER_SECOND",
    "MESSAGE_BURST",
    "MESSAGE_TOKEN_BYTES",
    "PONG_TIMEOUT",
    "ClientEvent",
    "Close",
    "Effect",
    "Ping",
    "Refused",
    "Send",
    "Session",
    "SignIn",
    "Subscribe",
    "Unsubscribe",
    "check_protocol",
    "new_socket_id",
    "origin_allowed",
    "parse_app_key",
    "rejection",
]

PONG_TIMEOUT = 30.0
SUPPORTED_PROTOCOLS = range(4, 8)
_PROTOCOL_VERSIONS = frozenset(str(version) for version in SUPPORTED_PROTOCOLS)
MAX_SUBSCRIPTIONS = 1000
MESSAGES_PER_SECOND = 100.0
MESSAGE_BURST = 1100
MESSAGE_TOKEN_BYTES = 4096

_APP_PATH = re.compile(r"/app/([^/\x00-\x20\x7f]+)/?")


@attrs.frozen
class Send:
    """
    Send this serialised Pusher frame to the client.
    """

    frame: bytes


@attrs.frozen
class Close:
    """
    Close the connection with this WebSocket close code and reason.
    """

    code: int = attrs.field(converter=int)
    reason: str


@attrs.frozen
class Ping:
    """
    Send a WebSocket ping control frame (alongside C{pusher:ping}).
    """


@attrs.frozen
class Refused:
    """
    A client message was refused (malformed, or over the message rate): the
    glue logs C{reason} once, at debug level, or at info when C{notable}.
    The client has already been told by a L{Send} in the same effects.
    """

    reason: str
    notable: bool = False


@attrs.frozen
class Subscribe:
    """
    Ask the adapter to add this socket to C{channel}; answer with
    L{Session.confirm} or L{Session.refuse}.

    @ivar member: the presence member, for presence channels.
    @ivar max_members: the app's presence member limit (0 unlimited).
    """

    channel: str
    member: PresenceMember | None = None
    max_members: int = 0


@attrs.frozen
class Unsubscribe:
    """
    Ask the adapter to remove this socket from C{channel}.
    """

    channel: str


@attrs.frozen
class ClientEvent:
    """
    Relay C{frame} to every other subscriber of C{channel}.
    """

    channel: str
    event: str
    data: str | None
    user_id: str | None
    frame: bytes


@attrs.frozen
class SignIn:
    """
    Record the connection's user with the adapter; answer with
    L{Session.signed_in}.
    """

    user: SignedInUser


Effect = (
    Send | Close | Ping | Subscribe | Unsubscribe | ClientEvent | SignIn | Refused | ChannelEffect
)
"""
Everything a session asks the glue to do; the channel effects
(broadcasts, notices, count and cache requests) are in
L{sockudo_tw.pusher.subscriptions}.
"""


def new_socket_id(randbelow: Callable[[int], int] | None = None) -> str:
    """
    A random C{"<digits>.<digits>"} socket id (about 66 random bits, so
    unique across a cluster without coordination).

    By default both numbers come from one read of the system's random
    source (16 bytes, reduced modulo 10**10: a bias of under 1e-9), where
    C{secrets.randbelow} would read several times per number; C{randbelow}
    replaces it (tests).
    """
    if randbelow is not None:
        return f"{randbelow(10**10)}.{randbelow(10**10)}"
    first, second = _TWO_WORDS.unpack(os.urandom(16))
    return f"{first % 10**10}.{second % 10**10}"


_TWO_WORDS = struct.Struct("<QQ")


def parse_app_key(path: str) -> str | None:
    """
    The app key of a C{/app/{key}} path, or L{None}. A prefix (pusher-js's
    C{wsPath}) is refused so the client hears 4005 at once; a proxy in front
    strips it (etc/nginx/sockudo.conf).
    """
    match = _APP_PATH.fullmatch(path)
    return match.group(1) if match else None


def check_protocol(params: Mapping[str, Sequence[str]]) -> PusherError | None:
    """
    The error for a missing (4008) or unsupported (4007) C{protocol} query
    parameter, or L{None} when it is 4 to 7.
    """
    values = params.get("protocol")
    if not values or not values[0]:
        return PusherError(PusherErrorCode.NO_PROTOCOL, "No protocol version supplied")
    value = values[0]
    if value not in _PROTOCOL_VERSIONS:
        return PusherError(
            PusherErrorCode.UNSUPPORTED_PROTOCOL, f"Unsupported protocol version: {value[:20]}"
        )
    return None


def _host(origin: str) -> str:
    """
    The host[:port] part of an origin.
    """
    _, sep, rest = origin.partition("://")
    return (rest if sep else origin).split("/", 1)[0]


def origin_allowed(origin: str | None, allowed: Sequence[str]) -> bool:
    """
    Whether C{origin} passes an app's C{allowed_origins}, by Sockudo's rules
    (sockudo-reference.md section 7.4): empty list or C{*} allows all; exact
    match; a pattern without a scheme matches the host; C{*.example.com}
    matches the domain and its subdomains; one C{*} is a prefix/suffix match.
    Case-insensitive; a missing origin only passes an empty list or C{*}.
    """
    if not allowed:
        return True
    candidate = (origin or "").lower()
    host_port = _host(candidate)
    host = host_port.rsplit(":", 1)[0] if ":" in host_port else host_port
    for raw in allowed:
        pattern = raw.lower().strip()
        if pattern == "*":
            return True
        if not candidate:
            continue
        if pattern == candidate:
            return True
        if pattern.startswith("*.") and "://" not in pattern:
            domain = pattern[2:]
            if host == domain or host.endswith("." + domain):
                return True
            continue
        if "*" in pattern:
            prefix, _, suffix = pattern.partition("*")
            if (
                len(candidate) >= len(prefix) + len(suffix)
                and candidate.startswith(prefix)
                and candidate.endswith(suffix)
            ):
                return True
            continue
        if "://" not in pattern and pattern in (host, host_port):
            return True
    return False


def rejection(error: PusherError) -> list[Effect]:
    """
    The effects that refuse a connection: C{pusher:error} with the code, then
    a close with the same code (pusher-protocol.md section 1.3).
    """
    code = error.code if error.code is not None else PusherErrorCode.GENERIC_ERROR
    return [Send(events.error_frame(code, error.message)), Close(code, error.message)]


@attrs.define
class _Subscription:
    """
    One channel of this connection.

    @ivar confirmed: the adapter accepted it (client events need this).
    @ivar member: this socket's presence member, on presence channels.
    """

    member: PresenceMember | None
    confirmed: bool = False


def _error(code: int | None, message: str) -> Send:
    return Send(events.error_frame(code, message))


class Session:
    """
    The protocol state of one accepted connection.

    Over 300 lines on purpose: it is one state machine (timers, message
    rate, subscriptions, client events, sign-in) whose parts share the
    connection's state; the channel outcomes it hands out are built in
    L{sockudo_tw.pusher.subscriptions}.

    @ivar app: the app the connection belongs to.
    @ivar socket_id: the connection's id.
    @ivar user: the signed-in user, if any.
    @ivar closing: set once a close was asked for; input is then ignored.
    @ivar max_subscriptions: channels one connection may be subscribed to
        (pending ones count); 0 is unlimited.
    @ivar messages_per_second: the rate at which the token bucket for every
        inbound message (text, binary, WebSocket ping and pong) refills; 0
        turns the message rate limit off. Raised to the app's
        C{max_client_events_per_second} when that is higher.
    @ivar message_burst: the bucket's size: messages accepted at once after
        a quiet spell. pusher-js re-subscribes every channel at once on
        reconnect, so it must exceed C{max_subscriptions}.
    """

    def __init__(
        self,
        app: App,
        socket_id: str,
        now: float,
        *,
        activity_timeout: int = 120,
        pong_timeout: float = PONG_TIMEOUT,
        user_authentication_timeout: float = 3600.0,
        max_subscriptions: int = MAX_SUBSCRIPTIONS,
        messages_per_second: float = MESSAGES_PER_SECOND,
        message_burst: int = MESSAGE_BURST,
    ) -> None:
        self.app = app
        self.socket_id = socket_id
        self.activity_timeout = activity_timeout
        self.pong_timeout = pong_timeout
        self.user_authentication_timeout = user_authentication_timeout
        self.connected_at = now
        self.last_activity = now
        self.ping_sent_at: float | None = None
        self.user: SignedInUser | None = None
        self.authorized = False
        self.closing = False
        self._subscriptions: dict[str, _Subscription] = {}
        self._window_start = now
        self._window_count = 0
        self.max_subscriptions = max_subscriptions
        # Client events take tokens too: never below what the app allows.
        if messages_per_second:
            messages_per_second = max(messages_per_second, app.max_client_events_per_second)
        self.messages_per_second = messages_per_second
        self.message_burst = message_burst
        # The message token bucket, refilled lazily on arrival.
        self._tokens = float(message_burst)
        self._tokens_at = now
        self._dropped = 0

    # -- lifecycle ---------------------------------------------------------

    def open(self) -> list[Effect]:
        """
        The effects of accepting the connection: C{connection_established}.
        """
        return [Send(events.connection_established(self.socket_id, self.activity_timeout))]

    @property
    def channels(self) -> list[str]:
        """
        The channels this connection subscribed to (pending ones included).
        """
        return list(self._subscriptions)

    def is_subscribed(self, channel: str) -> bool:
        """
        Whether a confirmed subscription to C{channel} exists.
        """
        sub = self._subscriptions.get(channel)
        return sub is not None and sub.confirmed

    def _close(self, code: int, message: str) -> list[Effect]:
        self.closing = True
        return [_error(code, message), Close(code, message)]

    def close(self, code: int, message: str) -> list[Effect]:
        """
        Close from the server side (shutdown, termination, back-pressure):
        C{pusher:error} then the close.
        """
        if self.closing:
            return []
        return self._close(code, message)

    def touch(self, now: float) -> None:
        """
        Record activity that carries no Pusher frame (WebSocket ping or pong).
        """
        self.last_activity = now
        self.ping_sent_at = None

    def next_deadline(self) -> float:
        """
        When L{tick} next has something to decide.
        """
        if self.ping_sent_at is not None:
            deadline = self.ping_sent_at + self.pong_timeout
        else:
            deadline = self.last_activity + self.activity_timeout
        if self._auth_timer_running():
            deadline = min(deadline, self.connected_at + self.user_authentication_timeout)
        return deadline

    def _auth_timer_running(self) -> bool:
        return (
            self.app.enable_user_authentication
            and not self.authorized
            and self.user_authentication_timeout > 0
        )

    def tick(self, now: float) -> list[Effect]:
        """
        Run the lazy timers: ping after C{activity_timeout} of silence, close
        4201 when no frame follows within the pong timeout, close 4009 when
        user authentication is required and has not happened in time.
        """
        if self.closing:
            return []
        if (
            self._auth_timer_running()
            and now >= self.connected_at + self.user_authentication_timeout
        ):
            return self._close(
                PusherErrorCode.UNAUTHORIZED, "Connection not authorized within timeout."
            )
        if self.ping_sent_at is not None:
            if now >= self.ping_sent_at + self.pong_timeout:
                return self._close(
                    PusherErrorCode.PONG_NOT_RECEIVED, "Pong reply not received in time"
                )
            return []
        if now >= self.last_activity + self.activity_timeout:
            self.ping_sent_at = now
            return [Send(events.ping()), Ping()]
        return []

    # -- input -------------------------------------------------------------

    def _over_rate(self, now: float, size: int = 0) -> list[Effect] | None:
        """
        Take the tokens for a message of C{size} bytes (or characters)
        arriving at C{now}: one, plus one per full L{MESSAGE_TOKEN_BYTES}, so
        that large messages, which cost more to parse, count for more.

        @return: L{None} to handle the message; else the effects of dropping
            it: a C{pusher:error} 4305 for the first dropped message, a
            close 4101 once more than C{message_burst} were dropped before
            the bucket filled up again (sustained flooding), else nothing.
        """
        rate = self.messages_per_second
        if rate <= 0:
            return None
        burst = self.message_burst
        tokens = self._tokens
        elapsed = now - self._tokens_at
        self._tokens_at = now
        if elapsed > 0:
            tokens += elapsed * rate
            if tokens >= burst:
                tokens = burst
                self._dropped = 0
        cost = min(1 + size // MESSAGE_TOKEN_BYTES, burst)
        if tokens >= cost:
            self._tokens = tokens - cost
            return None
        self._tokens = tokens
        self._dropped += 1
        if self._dropped == 1:
            message = (
                f"Message rate limit exceeded: over {rate:g} messages per second, "
                "messages are being dropped"
            )
            return [_error(PusherErrorCode.MESSAGES_DROPPED, message), Refused(message)]
        if self._dropped > burst:
            message = "Message rate limit exceeded"
            return [
                *self._close(PusherErrorCode.MESSAGE_RATE_LIMIT, message),
                Refused(message, True),
            ]
        return []

    def receive_control(self, now: float) -> list[Effect] | None:
        """
        A WebSocket ping or pong control frame arrived: activity, and a
        message for the rate limit.

        @return: L{None} to answer it as usual; else the effects of dropping
            it (see L{_over_rate}), and no answer.
        """
        if self.closing:
            return []
        self.touch(now)
        return self._over_rate(now)

    def receive_binary(self, now: float, size: int = 0) -> list[Effect]:
        """
        A binary frame (of C{size} bytes): not part of the protocol,
        answered with an error.
        """
        if self.closing:
            return []
        self.touch(now)
        dropped = self._over_rate(now, size)
        if dropped is not None:
            return dropped
        message = "Binary frames are not supported"
        return [_error(PusherErrorCode.GENERIC_ERROR, message), Refused(message)]

    def receive(self, text: str, now: float) -> list[Effect]:
        """
        Handle one text frame received at C{now}.
        """
        if self.closing:
            return []
        self.touch(now)
        dropped = self._over_rate(now, len(text))
        if dropped is not None:
            return dropped
        try:
            frame = events.decode(text)
            return self._dispatch(frame, now)
        except PusherError as e:
            if e.closes:
                return self._close(e.code or PusherErrorCode.GENERIC_ERROR, e.message)
            return [_error(e.code, e.message), Refused(e.message)]

    def _dispatch(self, frame: events.Inbound, now: float) -> list[Effect]:
        name = frame.event
        if name.startswith("client-"):
            return self._client_event(frame, now)
        if name == "pusher:ping":
            return [Send(events.pong())]
        if name == "pusher:pong":
            return []
        if name == "pusher:subscribe":
            return self._subscribe(events.command_data(frame))
        if name == "pusher:unsubscribe":
            return self._unsubscribe(frame)
        if name == "pusher:signin":
            return self._signin(events.command_data(frame))
        return [_error(None, f"Unsupported event received on socket: {name[:200]}")]

    # -- subscriptions -----------------------------------------------------

    def _subscribe(self, data: dict[str, Any]) -> list[Effect]:
        channel = data.get("channel")
        problem = validate_channel_name(channel, self.app.max_channel_name_length)
        if problem is not None or not isinstance(channel, str):
            raise PusherError(PusherErrorCode.GENERIC_ERROR, problem or "Invalid channel")
        if channel in self._subscriptions:
            return [_error(None, f"Existing subscription to channel {channel}")]
        if self.max_subscriptions and len(self._subscriptions) >= self.max_subscriptions:
            return [
                _error(
                    PusherErrorCode.SUBSCRIPTION_LIMIT,
                    f"Cannot subscribe to {channel}: this connection is at its limit of "
                    f"{self.max_subscriptions} channels",
                )
            ]
        ctype = channel_type(channel)
        auth = data.get("auth")
        channel_data = data.get("channel_data")
        if channel_data is not None and not isinstance(channel_data, str):
            raise PusherError(
                PusherErrorCode.GENERIC_ERROR, "Invalid channel_data: expected a string"
            )
        if ctype.kind is ChannelKind.SERVER_TO_USER:
            user_id = server_to_user_id(channel)
            if self.user is None or self.user.user_id != user_id:
                message = f"Invalid subscription to {channel}: not signed in as that user"
                return [
                    _error(None, message),
                    Send(events.subscription_error(channel, message, 403)),
                ]
        elif ctype.requires_auth:
            to_sign = channel_string_to_sign(self.socket_id, channel, channel_data)
            if not verify_token(self.app.key, self.app.secret, to_sign, auth):
                message = (
                    "Invalid signature: Expected HMAC SHA256 hex digest of "
                    f"{to_sign}, but got {auth if isinstance(auth, str) else ''}"
                )
                return [
                    _error(None, message),
                    Send(events.subscription_error(channel, message, 401)),
                ]
        member: PresenceMember | None = None
        if ctype.kind is ChannelKind.PRESENCE:
            if channel_data is not None:
                parsed = parse_channel_data(channel_data)
                if isinstance(parsed, str):
                    raise PusherError(PusherErrorCode.GENERIC_ERROR, parsed)
                member = parsed
            elif self.user is not None:
                member = self.user.as_member()
            else:
                raise PusherError(
                    PusherErrorCode.GENERIC_ERROR,
                    f"Presence channel {channel} needs channel_data or a signed-in user",
                )
            limit = self.app.max_presence_member_size_in_kb
            if limit and member.info_size() > limit * 1024:
                raise PusherError(
                    PusherErrorCode.GENERIC_ERROR,
                    f"The user_info of presence member {member.user_id} is larger than {limit} KB",
                )
        self._subscriptions[channel] = _Subscription(member)
        return [Subscribe(channel, member, self.app.max_presence_members_per_channel)]

    def confirm(self, channel: str, members: Mapping[str, Any] | None) -> list[Effect]:
        """
        The adapter added this socket to C{channel}: send
        C{subscription_succeeded} (with C{members} on presence channels).
        Returns an L{Unsubscribe} instead if the client left meanwhile.
        """
        sub = self._subscriptions.get(channel)
        if sub is None or self.closing:
            return [Unsubscribe(channel)]
        sub.confirmed = True
        if channel_type(channel).requires_auth:
            self.authorized = True
        if sub.member is not None:
            return [Send(events.subscription_succeeded(channel, members or {}))]
        return [Send(events.subscription_succeeded(channel))]

    def subscribed(self, request: Subscribe, outcome: SubscribeOutcome) -> list[Effect]:
        """
        The adapter answered a L{Subscribe}: refuse a full presence channel
        (4100), else the channel occupied, C{member_added} to the others for
        a user new to it, C{subscription_succeeded}, then (unless the client
        left meanwhile) the notice, a new subscription count and the cache
        replay request.
        """
        channel = request.channel
        if not outcome.accepted:
            return self.refuse(
                channel,
                PusherErrorCode.OVER_CAPACITY,
                f"Cannot join {channel}: the presence channel has reached its limit of "
                f"{request.max_members} members",
            )
        effects: list[Effect] = []
        if outcome.occupied:
            effects.append(Occupied(channel))
        member = request.member
        if outcome.member_added and member is not None:
            effects.extend(member_joined(channel, member.user_id, member.user_info))
        confirmed = self.confirm(channel, outcome.members)
        effects.extend(confirmed)
        if not any(isinstance(effect, Unsubscribe) for effect in confirmed):
            effects.extend(after_confirm(self.app, channel))
        return effects

    def cache_fetched(self, channel: str, cached: bytes | None) -> list[Effect]:
        """
        The cache lookup of a L{FetchCache} answered: replay the cached frame,
        or C{pusher:cache_miss} when there is none; nothing if the client
        left the channel meanwhile.
        """
        if self.closing or not self.is_subscribed(channel):
            return []
        if cached is None:
            return [CacheMissed(channel), Send(events.cache_miss(channel))]
        return [Send(cached)]

    def refuse(self, channel: str, code: int | None, message: str) -> list[Effect]:
        """
        The adapter refused the subscription (presence channel full).
        """
        if self._subscriptions.pop(channel, None) is None or self.closing:
            return []
        return [_error(code, message)]

    def member(self, channel: str) -> PresenceMember | None:
        """
        This socket's presence member on C{channel}.
        """
        sub = self._subscriptions.get(channel)
        return sub.member if sub is not None else None

    def _unsubscribe(self, frame: events.Inbound) -> list[Effect]:
        if isinstance(frame.data, str) and not frame.data.lstrip().startswith("{"):
            channel: object = frame.data
        else:
            channel = events.command_data(frame).get("channel")
        if not isinstance(channel, str):
            raise PusherError(PusherErrorCode.GENERIC_ERROR, "Invalid channel")
        if self._subscriptions.pop(channel, None) is None:
            return []
        return [Unsubscribe(channel)]

    # -- client events -----------------------------------------------------

    def _client_event(self, frame: events.Inbound, now: float) -> list[Effect]:
        app = self.app
        limit = app.max_client_events_per_second
        if limit:
            if now >= self._window_start + 1.0 or now < self._window_start:
                self._window_start = now
                self._window_count = 0
            self._window_count += 1
            if self._window_count > limit:
                return [
                    _error(
                        PusherErrorCode.CLIENT_EVENT_REJECTED,
                        "Client event rejected due to rate limit",
                    )
                ]
        if not events.valid_event_name(frame.event):
            raise PusherError(
                PusherErrorCode.GENERIC_ERROR, "Invalid event name: control characters"
            )
        if not app.enable_client_messages:
            return [
                _error(
                    None,
                    "To send client events, you must enable this feature in the "
                    "Settings page of your dashboard.",
                )
            ]
        channel = frame.channel
        if not isinstance(channel, str) or not channel:
            raise PusherError(PusherErrorCode.GENERIC_ERROR, "Client event without a channel")
        if not channel_type(channel).allows_client_events:
            return [
                _error(
                    None, "Client event rejected - only supported on private and presence channels"
                )
            ]
        if not self.is_subscribed(channel):
            return [
                _error(
                    PusherErrorCode.CLIENT_EVENT_REJECTED,
                    f"Client event rejected - not subscribed to channel {channel}",
                )
            ]
        name = frame.event
        if app.max_event_name_length and len(name) > app.max_event_name_length:
            return [
                _error(
                    PusherErrorCode.CLIENT_EVENT_REJECTED,
                    f"Client event rejected - event name longer than "
                    f"{app.max_event_name_length} characters",
                )
            ]
        data = events.relay_data(frame.data)
        if (
            data is not None
            and app.max_event_payload_in_kb
            and len(data.encode("utf-8")) > app.max_event_payload_in_kb * 1024
        ):
            return [
                _error(
                    PusherErrorCode.CLIENT_EVENT_REJECTED,
                    f"Client event rejected - payload larger than {app.max_event_payload_in_kb} KB",
                )
            ]
        member = self.member(channel)
        user_id = member.user_id if member is not None else None
        return [
            ClientEvent(
                channel, name, data, user_id, events.client_event(name, channel, data, user_id)
            )
        ]

    # -- user authentication ----------------------------------------------

    def _signin(self, data: dict[str, Any]) -> list[Effect]:
        user_data = data.get("user_data")
        auth = data.get("auth")
        if not isinstance(user_data, str):
            return self._close(PusherErrorCode.UNAUTHORIZED, "Invalid user_data: missing")
        to_sign = user_string_to_sign(self.socket_id, user_data)
        if not verify_token(self.app.key, self.app.secret, to_sign, auth):
            return self._close(
                PusherErrorCode.UNAUTHORIZED,
                "Invalid signature: Expected HMAC SHA256 hex digest of "
                f"{to_sign}, but got {auth if isinstance(auth, str) else ''}",
            )
        user = parse_user_data(user_data)
        if isinstance(user, str):
            return self._close(PusherErrorCode.UNAUTHORIZED, user)
        if self.user is not None and self.user.user_id != user.user_id:
            return [_error(None, f"Already signed in as user {self.user.user_id}")]
        if not self.app.enable_watchlist_events:
            user = attrs.evolve(user, watchlist=(), watchlist_truncated=False)
        first = self.user is None
        self.user = user
        self.authorized = True
        effects: list[Effect] = [Send(events.signin_success(user_data))]
        if user.watchlist_truncated:
            effects.append(
                _error(
                    PusherErrorCode.WATCHLIST_LIMIT,
                    "Watchlist limit exceeded: only the first 100 user ids are watched",
                )
            )
        if first:
            effects.append(SignIn(user))
        return effects

    def signed_in(self, online: Sequence[str], offline: Sequence[str]) -> list[Effect]:
        """
        The adapter recorded the sign-in: send the watchlist's initial state
        (when the app has watchlist events and the user watches anyone).
        """
        if self.closing or self.user is None or not self.user.watchlist:
            return []
        pairs = [(name, ids) for name, ids in (("online", online), ("offline", offline)) if ids]
        if not pairs:
            return []
        return [Send(events.watchlist_events(pairs))]
