"""
Measure how long 10,000 WebSocket connections dropping at once keep the
reactor busy.

Builds the real PusherFactory and LocalAdapter on the real reactor, opens N
socket-free connections (StringTransport; the full Autobahn handshake and
Pusher subscribe path run), subscribes every one to one big public channel
(subscription_count on) and to a presence channel of 100 members, then calls
connectionLost on all of them in one go, as a load balancer restart would.
A probe re-arms itself with callLater(0) and records the gap between reactor
iterations while the chunked cleanup runs.

    python bench/mass_disconnect.py [N]
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import reactor
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from sockudo_tw.adapters.local import LocalAdapter
from sockudo_tw.appstores import MemoryAppStore
from sockudo_tw.caches import MemoryChannelCache
from sockudo_tw.pusher.app import App
from sockudo_tw.pusher.signing import token
from sockudo_tw.websocket import CLEANUP_CHUNK, PusherFactory
from tests.wsclient import WSClient


def main(n: int) -> None:
    app = App(
        id="1",
        key="key",
        secret="secret",
        enable_subscription_count=True,
        max_presence_members_per_channel=100,
    )
    adapter = LocalAdapter()
    factory = PusherFactory(
        reactor=reactor,
        app_store=MemoryAppStore([app]),
        adapter=adapter,
        cache=MemoryChannelCache(reactor),
    )
    t0 = time.perf_counter()
    clients = []
    for i in range(n):
        c = WSClient(factory, "/app/key?protocol=7")
        c.pump()
        sid = c.socket_id
        c.send({"event": "pusher:subscribe", "data": {"channel": "big"}})
        room = f"presence-room-{i // 100}"
        cd = json.dumps({"user_id": str(i)})
        c.send(
            {
                "event": "pusher:subscribe",
                "data": {
                    "channel": room,
                    "channel_data": cd,
                    "auth": token("key", "secret", f"{sid}:{room}:{cd}"),
                },
            }
        )
        c.transport.clear()
        clients.append(c)
    setup = time.perf_counter() - t0
    # Let the subscription_count broadcasts of the setup run first.
    reactor.callLater(0, drop, factory, adapter, clients, setup)


def drop(
    factory: PusherFactory, adapter: LocalAdapter, clients: list[WSClient], setup: float
) -> None:
    for c in clients:
        c.transport.clear()
    gc.collect()
    n = len(clients)
    t0 = time.perf_counter()
    for c in clients:
        c.protocol.connectionLost(Failure(ConnectionDone()))
    lost = time.perf_counter() - t0
    gaps: list[float] = []

    def probe(last: float) -> None:
        now = time.perf_counter()
        gaps.append(now - last)
        if adapter.registry.socket_count("1") or factory._cleanup:
            reactor.callLater(0, probe, now)
        else:
            total = now - t0
            written = sum(len(c.transport.value()) for c in clients)
            print(f"connections: {n}, setup {setup:.2f} s")
            print(f"connectionLost loop for all {n}: {lost * 1000:.0f} ms (Autobahn + our onClose)")
            print(
                f"cleanup: {len(gaps)} reactor turns of <= {CLEANUP_CHUNK} sockets, "
                f"longest turn {max(gaps) * 1000:.1f} ms, "
                f"median {sorted(gaps)[len(gaps) // 2] * 1000:.1f} ms, "
                f"p90 {sorted(gaps)[len(gaps) * 9 // 10] * 1000:.1f} ms"
            )
            print(f"total from first drop to empty index: {total * 1000:.0f} ms")
            print(f"bytes written to closed sockets during cleanup: {written}")
            reactor.stop()

    reactor.callLater(0, probe, time.perf_counter())


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
    reactor.run()
