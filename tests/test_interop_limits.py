"""
The per-connection limits (C{websocket_limits}) as pusher-js meets them,
against a real C{twistd -n sockudo} process: the defaults never get in the
way of a client re-subscribing all its channels at once, and a flooding
client is closed with a code that makes pusher-js back off and reconnect.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.trial.unittest import TestCase

from tests.interop_harness import Interop, ServerProcess, app_config, match


def _codes(fx: Interop, client: str) -> list[int]:
    """
    The codes of every C{pusher:error} frame C{client} received.
    """
    return [
        o["data"]["code"]
        for o in fx.node.matching(match("message", client, event="pusher:error"))
        if isinstance(o.get("data"), dict)
    ]


class DefaultLimitsTests(TestCase):
    """
    The defaults are generous: pusher-js never hits them.
    """

    timeout = 120

    async def test_resubscribing_every_channel_after_a_restart(self) -> None:
        """
        A client with 1000 channels (the default cap) gets them all, and
        gets them all again when pusher-js re-subscribes every one at once
        after a server restart: no error, no rate-limit close.
        """
        fx = await Interop.start(self, private=True)
        server = fx.server
        assert isinstance(server, ServerProcess)
        await fx.connect("a")
        channels = [f"many-{i}" for i in range(1000)]
        for channel in channels:
            fx.node.send(op="subscribe", client="a", channel=channel, bind=[])
        succeeded = match("event", "a", event="pusher:subscription_succeeded")
        await fx.node.wait_count(succeeded, 1000, "1000 subscriptions", within=60)
        await server.restart(self)
        await fx.node.wait_count(match("connected", "a"), 2, "a reconnection", within=40)
        await fx.node.wait_count(succeeded, 2000, "1000 re-subscriptions", within=60)
        await fx.settle(0.5)
        # Only the restart's own "reconnect now".
        self.assertEqual(_codes(fx, "a"), [4200], fx.node.report())
        closes = [o["code"] for o in fx.node.matching(match("transport_closed", "a"))]
        self.assertNotIn(4101, closes)


class FloodTests(TestCase):
    """
    Small limits, to see each refusal through pusher-js.
    """

    timeout = 90

    async def test_cap_then_flood_then_back_off(self) -> None:
        """
        With at most 3 channels and a bucket of 8 messages refilled at 2 per
        second: a 4th subscription gets 4304 (the connection stays); a burst
        of client events then gets 4305 for the first dropped message, and,
        as it goes on, a close with 4101, after which pusher-js backs off
        (about a second) and reconnects.
        """
        limits = {"max_subscriptions": 3, "messages_per_second": 2, "message_burst": 8}
        fx = await Interop.start(
            self,
            apps=[app_config(enable_client_messages=True)],
            config={"websocket_limits": limits},
        )
        await fx.connect("a")
        for channel in ("cap-0", "cap-1", "private-flood"):
            await fx.subscribe("a", channel)
        fx.node.send(op="subscribe", client="a", channel="cap-3", bind=[])
        await fx.node.wait_for(
            lambda o: 4304 in _codes(fx, "a"), "error 4304 for the 4th subscription"
        )
        await fx.settle(0.3)
        self.assertEqual(
            len(fx.node.matching(match("event", "a", event="pusher:subscription_succeeded"))), 3
        )
        self.assertEqual(fx.node.matching(match("state", "a", previous="connected")), [])
        for _ in range(40):
            fx.node.send(
                op="client_event", client="a", channel="private-flood", event="client-x", data={}
            )
        closed = await fx.node.wait_for(
            lambda o: o["type"] == "transport_closed" and o["client"] == "a",
            "the flooding connection to be closed",
        )
        closed_at = time.monotonic()
        self.assertEqual(closed["code"], 4101, fx.node.report())
        self.assertIn(4305, _codes(fx, "a"))
        self.assertIn(4101, _codes(fx, "a"))
        reconnected: list[dict[str, Any]] = await fx.node.wait_count(
            match("connected", "a"), 2, "pusher-js to reconnect", within=20
        )
        self.assertGreater(time.monotonic() - closed_at, 0.8)
        self.assertNotEqual(reconnected[0]["socket_id"], reconnected[1]["socket_id"])
