"""
Serialising Pusher frames.

Rule (pusher-protocol.md section 2.1): C{data} sent by the server is always a
string, except on C{pusher:error} where it is an object. Absent fields are
left out, never written as C{null}. Frames are compact JSON encoded once as
UTF-8 bytes, ready to be framed once for every subscriber.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["channel_event", "encode", "error_frame"]

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode(frame: dict[str, Any]) -> bytes:
    """
    Compact JSON bytes for one frame.
    """
    return _encoder.encode(frame).encode("utf-8")


def channel_event(event: str, channel: str, data: str, user_id: str | None = None) -> bytes:
    """
    A channel event as subscribers receive it; C{data} is passed through as
    the exact string the publisher sent.
    """
    frame: dict[str, Any] = {"event": event, "channel": channel, "data": data}
    if user_id is not None:
        frame["user_id"] = user_id
    return encode(frame)


def error_frame(code: int | None, message: str) -> bytes:
    """
    A C{pusher:error} frame (object data, code may be null after the
    handshake).
    """
    return encode({"event": "pusher:error", "data": {"code": code, "message": message}})
