"""
Channel kinds, decided by exact (anchored) prefix, and channel name rules.

Sockudo classifies with unanchored regexes, so C{private-cache-x} skips the
signature check and C{presence-cache-x} loses presence semantics
(sockudo-reference.md section 1.5 [BUG]). Here the kind and the cache flag
are separate facts, both read from the start of the name.
"""

from __future__ import annotations

import enum
import re

import attrs

__all__ = [
    "MAX_USER_ID_LENGTH",
    "SERVER_TO_USER_PREFIX",
    "ChannelKind",
    "ChannelType",
    "channel_type",
    "server_to_user_id",
    "valid_user_id",
    "validate_channel_name",
]

SERVER_TO_USER_PREFIX = "#server-to-user-"
MAX_USER_ID_LENGTH = 128

# Pusher's documented charset plus ":" (Sockudo accepts it; Laravel apps use
# it); "#" only in the reserved server-to-user prefix. ASCII only and matched
# against the whole string (fullmatch: "$" would let a trailing newline in).
# User ids use the same set (pusher-protocol.md section 4.2).
_NAME = re.compile(r"[A-Za-z0-9_\-=@,.;:]+")
_CACHE_PREFIXES = ("cache-", "private-cache-", "presence-cache-", "private-encrypted-cache-")


class ChannelKind(enum.Enum):
    """
    What a channel requires of a subscriber.
    """

    PUBLIC = "public"
    PRIVATE = "private"
    PRIVATE_ENCRYPTED = "private_encrypted"
    PRESENCE = "presence"
    SERVER_TO_USER = "server_to_user"


@attrs.frozen
class ChannelType:
    """
    The kind of a channel plus whether it is a cache channel.
    """

    kind: ChannelKind
    cache: bool

    @property
    def requires_auth(self) -> bool:
        """
        Whether subscribing needs a channel signature.
        """
        return self.kind in (
            ChannelKind.PRIVATE,
            ChannelKind.PRIVATE_ENCRYPTED,
            ChannelKind.PRESENCE,
        )

    @property
    def allows_client_events(self) -> bool:
        """
        Whether C{client-*} events may be sent on it (private and presence,
        not encrypted: the server cannot see inside those).
        """
        return self.kind in (ChannelKind.PRIVATE, ChannelKind.PRESENCE)

    @property
    def metric_label(self) -> str:
        """
        Sockudo's C{channel_type} metric label value.
        """
        if self.cache and self.kind is ChannelKind.PUBLIC:
            return "cache"
        return self.kind.value


_TYPES = {
    (kind, cache): ChannelType(kind, cache) for kind in ChannelKind for cache in (False, True)
}
"""
The ten channel types, built once: classifying a name is on every
subscribe, publish and metric path, several times each.
"""


def channel_type(name: str) -> ChannelType:
    """
    Classify C{name} by its exact prefix.
    """
    cache = name.startswith(_CACHE_PREFIXES)
    if name.startswith("private-encrypted-"):
        kind = ChannelKind.PRIVATE_ENCRYPTED
    elif name.startswith("private-"):
        kind = ChannelKind.PRIVATE
    elif name.startswith("presence-"):
        kind = ChannelKind.PRESENCE
    elif name.startswith(SERVER_TO_USER_PREFIX):
        kind = ChannelKind.SERVER_TO_USER
    else:
        kind = ChannelKind.PUBLIC
    return _TYPES[kind, cache]


def server_to_user_id(name: str) -> str | None:
    """
    The user id of a C{#server-to-user-<id>} channel, else L{None}.
    """
    if name.startswith(SERVER_TO_USER_PREFIX):
        user_id = name[len(SERVER_TO_USER_PREFIX) :]
        if valid_user_id(user_id):
            return user_id
    return None


def valid_user_id(user_id: str) -> bool:
    """
    Whether C{user_id} is a user id by Pusher's rules: 1 to 128 characters
    of the channel name set (pusher-protocol.md sections 4.2 and 4.3).
    """
    return 0 < len(user_id) <= MAX_USER_ID_LENGTH and _NAME.fullmatch(user_id) is not None


def validate_channel_name(name: object, max_length: int) -> str | None:
    """
    Check a channel name; return an error message, or L{None} when it is valid.

    @param max_length: the app's C{max_channel_name_length}; 0 is unlimited.
    """
    if not isinstance(name, str) or not name:
        return "Channel name must be a non-empty string"
    if max_length and len(name) > max_length:
        return f"Channel name too long: {len(name)} > {max_length} characters"
    if name.startswith("#"):
        if server_to_user_id(name) is None:
            return f"Invalid channel name: {name}"
        return None
    if _NAME.fullmatch(name) is None:
        return f"Invalid channel name: {name}"
    return None
