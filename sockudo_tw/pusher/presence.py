# -*- test-case-name: tests.test_session -*-
"""
Presence members and signed-in users: parsing the exact strings clients send
in C{channel_data} and C{user_data}.

User ids may arrive as JSON numbers (Laravel sends ints); they are accepted
and always emitted as strings (pusher-protocol.md section 4.3).
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from sockudo_tw.pusher.channels import MAX_USER_ID_LENGTH, valid_user_id
from sockudo_tw.pusher.events import MalformedJSONError, parse_json

__all__ = [
    "MAX_USER_ID_LENGTH",
    "PresenceMember",
    "SignedInUser",
    "parse_channel_data",
    "parse_user_data",
]

MAX_WATCHLIST = 100

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


@attrs.frozen
class PresenceMember:
    """
    One socket's identity on a presence channel.

    @ivar user_id: the member's id, as a string.
    @ivar user_info: the JSON value shown to other members (C{{}} if none).
    """

    user_id: str
    user_info: Any = attrs.field(factory=dict, eq=False)

    def info_size(self) -> int:
        """
        Bytes of C{user_info} as compact JSON, for the member size limit.
        """
        return len(_encoder.encode(self.user_info).encode("utf-8"))


@attrs.frozen
class SignedInUser:
    """
    The user a connection signed in as.

    @ivar user_data: the exact string the client signed.
    @ivar watchlist: the first 100 watched ids.
    @ivar watchlist_truncated: whether more than 100 were given.
    """

    user_id: str
    user_info: Any
    user_data: str
    watchlist: tuple[str, ...] = ()
    watchlist_truncated: bool = False

    def as_member(self) -> PresenceMember:
        """
        This user as a presence member (pusher-js >= 7.4 subscribes without
        C{channel_data} once signed in).
        """
        return PresenceMember(self.user_id, self.user_info if self.user_info is not None else {})


def _user_id(value: object) -> str | None:
    """
    A user id as a string, from a string or an integer, if it follows
    Pusher's rules (L{valid_user_id}).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        value = str(value)
    if isinstance(value, str) and valid_user_id(value):
        return value
    return None


def _load(text: object) -> dict[str, Any] | None:
    if not isinstance(text, str):
        return None
    try:
        value = parse_json(text)
    except MalformedJSONError:
        return None
    return value if isinstance(value, dict) else None


def parse_channel_data(channel_data: object) -> PresenceMember | str:
    """
    The member described by a presence subscribe's C{channel_data} string,
    or an error message.
    """
    data = _load(channel_data)
    if data is None:
        return "Invalid channel_data: expected a JSON object string"
    user_id = _user_id(data.get("user_id"))
    if user_id is None:
        return (
            "Invalid channel_data: user_id must be a string or an integer of 1 to "
            f"{MAX_USER_ID_LENGTH} characters from A-Z a-z 0-9 _ - = @ , . ; :"
        )
    info = data.get("user_info", {})
    return PresenceMember(user_id, info if info is not None else {})


def parse_user_data(user_data: object) -> SignedInUser | str:
    """
    The user described by a C{pusher:signin}'s C{user_data} string, or an
    error message.
    """
    data = _load(user_data)
    if data is None or not isinstance(user_data, str):
        return "Invalid user_data: expected a JSON object string"
    user_id = _user_id(data.get("id"))
    if user_id is None or not isinstance(data.get("id"), str):
        return (
            f"Invalid user_data: id must be a string of 1 to {MAX_USER_ID_LENGTH} "
            "characters from A-Z a-z 0-9 _ - = @ , . ; :"
        )
    raw_watchlist = data.get("watchlist", [])
    if not isinstance(raw_watchlist, list):
        return "Invalid user_data: watchlist must be an array of user ids"
    watchlist: dict[str, None] = {}
    for item in raw_watchlist:
        watched = _user_id(item)
        if watched is None:
            return "Invalid user_data: watchlist must be an array of user ids"
        watchlist[watched] = None
    return SignedInUser(
        user_id=user_id,
        user_info=data.get("user_info"),
        user_data=user_data,
        watchlist=tuple(watchlist)[:MAX_WATCHLIST],
        watchlist_truncated=len(watchlist) > MAX_WATCHLIST,
    )
