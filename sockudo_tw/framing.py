# -*- test-case-name: tests.test_local_adapter -*-
"""
RFC 6455 framing of server-to-client text messages.

Server frames are never masked, so a message can be framed once and the
same bytes written to every subscriber; this is the broadcast path's one
framing step (pure, no Twisted, no Autobahn).
"""

from __future__ import annotations

import struct

__all__ = ["text_frame"]


def text_frame(payload: bytes) -> bytes:
    """
    A single, final, unmasked WebSocket text frame carrying C{payload}.
    """
    length = len(payload)
    if length < 126:
        header = bytes((0x81, length))
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, length)
    else:
        header = struct.pack("!BBQ", 0x81, 127, length)
    return header + payload
