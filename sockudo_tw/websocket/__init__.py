# -*- test-case-name: tests.test_websocket -*-
"""
The Autobahn glue: C{/app/{key}} connections run a L{Session} and this
package carries out its effects against the adapter, the cache and the
observer.

Kept thin on purpose: protocol rules live in L{sockudo_tw.pusher.session}
and what a subscribe or unsubscribe means (member_added, subscription
counts, cache replay, occupied/vacated) in
L{sockudo_tw.pusher.subscriptions}. What lives here is I/O policy:

  - L{sockudo_tw.websocket.admission}: accept or refuse a connection; the
    upgrade is always completed and refusals are sent as C{pusher:error}
    plus a close;
  - L{sockudo_tw.websocket.protocol}: one connection; frames for an idle
    TCP connection are corked until the end of the reactor turn and then
    sent with one C{send()} each (L{sockudo_tw.directwrite});
  - L{sockudo_tw.websocket.backpressure}: each connection's outbound buffer
    is bounded (close 4100 "Over capacity" beyond it);
  - L{sockudo_tw.websocket.deadlines}: timers are lazy, one deadline per
    connection in a heap the factory runs with a single C{callLater};
  - L{sockudo_tw.websocket.factory}: what connections share; disconnect
    cleanup runs in chunks so that thousands of sockets dropping at once
    never stall the reactor.

Autobahn internals used for speed and memory are in
L{sockudo_tw.compat.autobahn}.

@see: L{Session}
"""

from __future__ import annotations

from sockudo_tw.pusher.session import Session
from sockudo_tw.websocket.factory import CLEANUP_CHUNK, PusherFactory
from sockudo_tw.websocket.protocol import MAX_EARLY_MESSAGES, PusherProtocol

__all__ = ["CLEANUP_CHUNK", "MAX_EARLY_MESSAGES", "PusherFactory", "PusherProtocol", "Session"]
