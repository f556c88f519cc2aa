# -*- test-case-name: tests.test_metrics_churn -*-
"""
Issue 7 point 3: after any mix of connects, refused connects, errors and
mass disconnects, C{sockudo_connected} equals the number of open sockets
(Sockudo #205 drifted to 4,600 with about 100 real sockets; Soketi went
negative on refusals).

The WebSocket factory, local adapter, metrics observer and scrape-time
sources are wired as the composition root wires them; clients are the
in-memory L{tests.wsclient.WSClient}.
"""

from __future__ import annotations

import random
import struct
from collections import Counter

from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from sockudo_tw.adapters.local import LocalAdapter
from sockudo_tw.appstores import MemoryAppStore
from sockudo_tw.caches import MemoryChannelCache
from sockudo_tw.metrics import (
    UNKNOWN_APP,
    MetricsObserver,
    PusherMetrics,
    channels_by_type,
    open_connections,
)
from sockudo_tw.pusher.app import App
from sockudo_tw.websocket import PusherFactory
from tests.test_metrics import Scrape, scrape
from tests.wsclient import WSClient, client_frame

QUOTA = 4

APPS = {
    "open": App(id="open", key="open-key", secret="s1"),
    "small": App(id="small", key="small-key", secret="s2", max_connections=QUOTA),
    "off": App(id="off", key="off-key", secret="s3", enabled=False),
}


class Node:
    """
    One node as L{sockudo_tw.service.make_service} composes it, minus the
    listeners.
    """

    def __init__(self) -> None:
        self.clock = Clock()
        self.registry = CollectorRegistry()
        self.metrics = PusherMetrics(self.registry)
        observer = MetricsObserver(self.metrics)
        # A fan-out timer that advances 2 ms per reading.
        self.ticks = iter(range(0, 10**9, 2))
        self.adapter = LocalAdapter(observer=observer, timer=lambda: next(self.ticks) / 1000)
        self.factory = PusherFactory(
            reactor=self.clock,
            app_store=MemoryAppStore(APPS.values()),
            adapter=self.adapter,
            cache=MemoryChannelCache(self.clock),
            observer=observer,
        )
        factory = self.factory
        registry = self.adapter.registry
        self.metrics.watch(
            connections=lambda: open_connections(factory.protocols),
            active_channels=lambda: channels_by_type(registry),
        )
        self.live: dict[str, list[WSClient]] = {app_id: [] for app_id in APPS}
        self.gone: list[WSClient] = []

    def connect(self, key: str, settle: bool = True) -> WSClient:
        """
        Open a client to C{key}; settle any refusal unless told not to.
        """
        client = WSClient(self.factory, f"/app/{key}?protocol=7")
        self.clock.advance(0)
        client.pump()
        if settle:
            self.settle()
        return client

    def drop(self, client: WSClient) -> None:
        """
        The TCP connection of C{client} goes away without a close frame.
        """
        client.disconnect()
        for clients in self.live.values():
            if client in clients:
                clients.remove(client)
        self.gone.append(client)

    def settle(self) -> None:
        """
        Finish the close handshakes the server started (the client answers
        the close frame and the TCP connection ends), run the chunked
        cleanup, and file clients as live or gone.
        """
        for _ in range(100):
            self.clock.advance(0)
            progressed = False
            for clients in self.live.values():
                for client in list(clients):
                    client.pump()
                    if client.close_code is not None or client.transport.disconnecting:
                        if not client.transport.disconnecting:
                            payload = struct.pack("!H", 1000)
                            client.send_raw(client_frame(payload, opcode=8))
                        client.disconnect()
                        clients.remove(client)
                        self.gone.append(client)
                        progressed = True
            if not progressed and not self.factory._cleanup:
                return
        raise AssertionError("cleanup did not settle")

    def open_sockets(self) -> dict[str, int]:
        """
        The truth: clients that were accepted and whose socket is still
        open, per app.
        """
        return {app_id: len(clients) for app_id, clients in self.live.items() if clients}


class ChurnTests(SynchronousTestCase):
    """
    C{connected} stays equal to the open sockets through churn.
    """

    def assert_connected(self, node: Node, result: Scrape | None = None) -> None:
        """
        Every app's C{sockudo_connected} equals its open sockets, and no
        series is negative.
        """
        result = result or scrape(node.registry)
        truth = node.open_sockets()
        for sample in result.family("sockudo_connected"):
            self.assertGreaterEqual(sample.value, 0)
            self.assertEqual(sample.value, truth.get(sample.labels["app_id"], 0), sample)
        for app_id, count in truth.items():
            self.assertEqual(result.value("sockudo_connected", app_id=app_id), count)

    def test_churn(self) -> None:
        """
        A seeded random mix of accepted and refused connects (unknown key,
        disabled app, over quota), subscriptions, bad frames, protocol
        errors, clean closes, drops and mass disconnects: after every step
        C{connected} equals the open sockets, and the counters add up.
        """
        rng = random.Random(7)
        node = Node()
        refused: Counter[str] = Counter()
        accepted: Counter[str] = Counter()
        for step in range(400):
            action = rng.random()
            every = [c for clients in node.live.values() for c in clients]
            if action < 0.40:
                app_id = rng.choice(["open", "small"])
                client = node.connect(APPS[app_id].key)
                if client.events("pusher:connection_established"):
                    accepted[app_id] += 1
                    node.live[app_id].append(client)
                else:
                    self.assertEqual(app_id, "small")
                    self.assertEqual(client.close_code, 4004)
                    refused["socket_handling_failed"] += 1
            elif action < 0.46:
                client = node.connect(f"nope-{step}")
                self.assertEqual(client.close_code, 4001)
                refused["app_not_found"] += 1
            elif action < 0.50:
                client = node.connect("off-key")
                self.assertEqual(client.close_code, 4003)
                refused["app_disabled"] += 1
            elif action < 0.65 and every:
                client = rng.choice(every)
                channel = rng.choice(["news", "cache-a", "sport", "private-x"])
                client.send({"event": "pusher:subscribe", "data": {"channel": channel}})
            elif action < 0.70 and every:
                rng.choice(every).send("{not json")
            elif action < 0.74 and every:
                # A frame a client must not send (unmasked): a protocol error.
                rng.choice(every).send_raw(b"\x81\x02hi")
            elif action < 0.82 and every:
                client = rng.choice(every)
                client.send_raw(client_frame(struct.pack("!H", 1000), opcode=8))
            elif action < 0.92 and every:
                node.drop(rng.choice(every))
            elif action < 0.94 and every:
                for client in rng.sample(every, len(every) // 2):
                    node.drop(client)
            node.settle()
            self.assert_connected(node)
            self.assertLessEqual(len(node.live["small"]), QUOTA)

        result = scrape(node.registry)
        self.assertGreater(sum(accepted.values()), 50)
        self.assertGreater(len(node.gone), 100)
        for app_id in ("open", "small"):
            self.assertEqual(
                result.value("sockudo_new_connections_total", app_id=app_id), accepted[app_id]
            )
            self.assertEqual(
                result.value("sockudo_new_disconnections_total", app_id=app_id),
                accepted[app_id] - len(node.live[app_id]),
            )
        errors = result.family("sockudo_connection_errors_total")
        self.assertEqual(
            {(s.labels["app_id"], s.labels["error_type"]): s.value for s in errors},
            {
                (UNKNOWN_APP, "app_not_found"): refused["app_not_found"],
                ("off", "app_disabled"): refused["app_disabled"],
                ("small", "socket_handling_failed"): refused["socket_handling_failed"],
            },
        )

    def test_mass_disconnect(self) -> None:
        """
        Hundreds of sockets dropping at once: C{connected} is exact at once
        (before the chunked cleanup has run) and the channels are gone once
        it has.
        """
        node = Node()
        for _ in range(600):
            client = node.connect("open-key", settle=False)
            client.send({"event": "pusher:subscribe", "data": {"channel": "news"}})
            node.live["open"].append(client)
        node.settle()
        self.assert_connected(node)
        result = scrape(node.registry)
        self.assertEqual(result.value("sockudo_connected", app_id="open"), 600)
        self.assertEqual(
            result.value("sockudo_active_channels", app_id="open", channel_type="public"), 1
        )
        for client in node.live["open"][:550]:
            node.drop(client)
        self.assertEqual(scrape(node.registry).value("sockudo_connected", app_id="open"), 50)
        for client in list(node.live["open"]):
            node.drop(client)
        self.assertEqual(scrape(node.registry).value("sockudo_connected", app_id="open"), 0)
        node.settle()
        result = scrape(node.registry)
        self.assertEqual(
            result.value("sockudo_active_channels", app_id="open", channel_type="public"), 0
        )
        self.assertEqual(result.value("sockudo_new_disconnections_total", app_id="open"), 600)

    def test_slow_consumer(self) -> None:
        """
        A client that stops reading is closed 4100 once its outbound buffer
        is full: counted as an outbound-buffer close, and no longer
        connected once its socket is gone.
        """
        node = Node()
        node.factory.max_buffer_bytes = 5_000
        slow, fast = node.connect("open-key"), node.connect("open-key")
        node.live["open"] += [slow, fast]
        for client in (slow, fast):
            client.send({"event": "pusher:subscribe", "data": {"channel": "news"}})
        slow.transport.producer.pauseProducing()
        frame = b'{"event":"e","channel":"news","data":"' + b"x" * 1000 + b'"}'
        for _ in range(8):
            node.adapter.broadcast("open", "news", frame, None)
        node.settle()
        self.assertEqual(slow.close_code, 4100)
        self.assertEqual(node.live["open"], [fast])
        result = scrape(node.registry)
        self.assertEqual(result.value("sockudo_outbound_buffer_closes_total", app_id="open"), 1)
        self.assertEqual(result.value("sockudo_connected", app_id="open"), 1)

    def test_broadcast_fanout(self) -> None:
        """
        A broadcast counts one message per recipient, its fan-out size and
        the time its local fan-out took.
        """
        node = Node()
        clients = [node.connect("open-key") for _ in range(3)]
        for client in clients:
            client.send({"event": "pusher:subscribe", "data": {"channel": "news"}})
        before = scrape(node.registry).value("sockudo_ws_messages_sent_total", app_id="open")
        node.adapter.broadcast("open", "news", b'{"event":"e","channel":"news","data":"x"}', None)
        result = scrape(node.registry)
        self.assertEqual(result.value("sockudo_ws_messages_sent_total", app_id="open") - before, 3)
        self.assertEqual(result.value("sockudo_broadcast_fanout_size_sum", app_id="open"), 3)
        self.assertEqual(result.value("sockudo_broadcast_fanout_duration_ms_count"), 1)
        self.assertEqual(result.value("sockudo_broadcast_fanout_duration_ms_sum"), 2.0)
