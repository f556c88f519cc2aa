"""
The official Node C{pusher} SDK (pusher-http-node 5) against a real
C{twistd -n sockudo} process, with pusher-js clients receiving what it
publishes.

Each SDK call returns the HTTP status and the parsed body, so the response
shapes of C{shared/docs/pusher-protocol.md} section 6.2 are asserted exactly;
error statuses are asserted as the SDK reports them (a C{RequestError} with
C{status}).
"""

from __future__ import annotations

import json

from twisted.trial.unittest import TestCase

from tests.interop_harness import Interop, app_config, match

PRESENCE = "presence-node"
PUBLIC = "node-public"


async def _populate(fx: Interop) -> None:
    """
    Users 1 (two connections, a and a2) and 2 (b) on L{PRESENCE}; a also on
    L{PUBLIC}.
    """
    for client, user_id in (("a", "1"), ("a2", "1"), ("b", "2")):
        await fx.connect(client, presence={"user_id": user_id, "user_info": {"n": user_id}})
        await fx.subscribe(client, PRESENCE)
    await fx.subscribe("a", PUBLIC)


class NodeSdkPublishTests(TestCase):
    """
    C{trigger}, C{triggerBatch} and C{sendToUser}.
    """

    timeout = 60

    async def test_trigger_with_info_and_socket_exclusion(self) -> None:
        """
        C{trigger} with C{info} answers the channel's C{user_count} and
        C{subscription_count}; every member receives the event except the
        connection named by C{socket_id}.
        """
        fx = await Interop.start(self)
        await _populate(fx)
        result = await fx.node.call_sdk(
            "trigger", [PRESENCE], "hello", {"x": 1}, {"info": "user_count,subscription_count"}
        )
        self.assertEqual(result["status"], 200, result)
        self.assertEqual(
            result["body"],
            {"channels": {PRESENCE: {"user_count": 2, "subscription_count": 3}}},
        )
        for client in ("a", "a2", "b"):
            event = await fx.event(client, PRESENCE, "hello")
            self.assertEqual(event["data"], {"x": 1})

        socket_b = fx.node.matching(match("connected", "b"))[0]["socket_id"]
        plain = await fx.node.call_sdk(
            "trigger", PRESENCE, "not-for-b", {"x": 2}, {"socket_id": socket_b}
        )
        self.assertEqual((plain["status"], plain["body"]), (200, {}))
        await fx.event("a", PRESENCE, "not-for-b")
        await fx.event("a2", PRESENCE, "not-for-b")
        await fx.barrier("b")
        self.assertEqual(fx.node.matching(match("event", "b", event="not-for-b")), [])

    async def test_trigger_batch(self) -> None:
        """
        C{triggerBatch} delivers each event to its channel, honouring a
        per-item C{socket_id}; with C{info} on one item the answer is
        index-aligned per item.
        """
        fx = await Interop.start(self)
        await _populate(fx)
        socket_b = fx.node.matching(match("connected", "b"))[0]["socket_id"]
        result = await fx.node.call_sdk(
            "triggerBatch",
            [
                {"channel": PRESENCE, "name": "one", "data": {"i": 1}, "info": "user_count"},
                {"channel": PUBLIC, "name": "two", "data": {"i": 2}},
                {"channel": PRESENCE, "name": "three", "data": {"i": 3}, "socket_id": socket_b},
            ],
        )
        self.assertEqual(result["status"], 200, result)
        self.assertEqual(result["body"], {"batch": [{"user_count": 2}, {}, {}]})
        one = await fx.event("b", PRESENCE, "one")
        two = await fx.event("a", PUBLIC, "two")
        self.assertEqual((one["data"], two["data"]), ({"i": 1}, {"i": 2}))
        await fx.event("a", PRESENCE, "three")
        await fx.event("a2", PRESENCE, "three")
        await fx.barrier("b")
        self.assertEqual(fx.node.matching(match("event", "b", event="three")), [])

    async def test_send_to_user_and_terminate_user_connections(self) -> None:
        """
        C{sendToUser} reaches every connection of the signed-in user and no
        one else; C{terminateUserConnections} drops all of that user's
        connections and no other.
        """
        fx = await Interop.start(self)
        await fx.connect("a", user={"id": "node-user"})
        await fx.connect("a2", user={"id": "node-user"})
        await fx.connect("b", user={"id": "someone-else"})
        for client, user_id in (("a", "node-user"), ("a2", "node-user"), ("b", "someone-else")):
            fx.node.send(op="signin", client=client)
            await fx.node.wait_for(
                match(
                    "message",
                    client,
                    event="pusher_internal:subscription_succeeded",
                    channel=f"#server-to-user-{user_id}",
                ),
                f"{client} signed in and on its #server-to-user- channel",
            )
        sent = await fx.node.call_sdk("sendToUser", "node-user", "direct", {"hi": True})
        self.assertEqual((sent["status"], sent["body"]), (200, {}))
        for client in ("a", "a2"):
            event = await fx.node.wait_for(
                match("user_event", client, event="direct"), f"{client}'s user event"
            )
            self.assertEqual(event["data"], {"hi": True})

        terminated = await fx.node.call_sdk("terminateUserConnections", "node-user")
        self.assertEqual(terminated["status"], 200, terminated)
        for client in ("a", "a2"):
            await fx.node.wait_for(
                match("state", client, previous="connected"),
                f"the terminated user's connection {client} to drop",
            )
        await fx.barrier("b")
        self.assertEqual(fx.node.matching(match("user_event", "b", event="direct")), [])
        self.assertEqual(fx.node.matching(match("state", "b", previous="connected")), [])


class NodeSdkQueryTests(TestCase):
    """
    C{get} on C{/channels}, C{/channels/{name}} and C{/channels/{name}/users}.
    """

    timeout = 60

    async def test_get_channels(self) -> None:
        """
        C{GET /channels} lists occupied channels; filtered by C{presence-}
        with C{info=user_count} it counts distinct users.
        """
        fx = await Interop.start(self)
        await _populate(fx)
        listed = await fx.node.call_sdk("get", {"path": "/channels"})
        self.assertEqual(listed["status"], 200, listed)
        self.assertEqual(listed["body"], {"channels": {PRESENCE: {}, PUBLIC: {}}})
        counted = await fx.node.call_sdk(
            "get",
            {
                "path": "/channels",
                "params": {"filter_by_prefix": "presence-", "info": "user_count"},
            },
        )
        self.assertEqual(counted["body"], {"channels": {PRESENCE: {"user_count": 2}}})

    async def test_get_channel_and_users(self) -> None:
        """
        C{GET /channels/{name}} reports occupancy and counts;
        C{/users} lists each presence user once and is refused (400) on a
        public channel.
        """
        fx = await Interop.start(self)
        await _populate(fx)
        info = await fx.node.call_sdk(
            "get",
            {
                "path": f"/channels/{PRESENCE}",
                "params": {"info": "user_count,subscription_count"},
            },
        )
        self.assertEqual(info["status"], 200, info)
        self.assertEqual(info["body"], {"occupied": True, "user_count": 2, "subscription_count": 3})
        empty = await fx.node.call_sdk("get", {"path": "/channels/node-empty"})
        self.assertEqual(empty["body"], {"occupied": False})
        users = await fx.node.call_sdk("get", {"path": f"/channels/{PRESENCE}/users"})
        self.assertEqual(users["status"], 200, users)
        self.assertEqual(
            sorted(users["body"]["users"], key=lambda u: u["id"]), [{"id": "1"}, {"id": "2"}]
        )
        refused = await fx.node.call_sdk("get", {"path": f"/channels/{PUBLIC}/users"})
        self.assertEqual(refused["status"], 400, refused)


class NodeSdkErrorTests(TestCase):
    """
    Refused requests get real HTTP error statuses and deliver nothing.
    """

    timeout = 60

    async def test_refusals(self) -> None:
        """
        10241 bytes of data (one over the default 10 KB) is 413, a batch of
        11 (default limit 10) is 400, a batch with one bad channel name is 400
        as a whole, C{info=user_count} without the C{presence-} filter is 400,
        a wrong secret 401, a disabled app 403, an unknown app id 404; the
        subscribed client receives none of those events (issue 4 point 3:
        "Nothing is delivered when a request is refused").
        """
        fx = await Interop.start(
            self,
            apps=[
                app_config(),
                app_config(id="222222", key="disabled-key", secret="s2", enabled=False),
            ],
        )
        await fx.connect("a")
        await fx.subscribe("a", "node-guarded")

        too_big = await fx.node.call_sdk("trigger", "node-guarded", "big", "x" * 10241)
        self.assertEqual(too_big["status"], 413, too_big)

        eleven = [{"channel": "node-guarded", "name": "batch", "data": str(i)} for i in range(11)]
        too_many = await fx.node.call_sdk("triggerBatch", eleven)
        self.assertEqual(too_many["status"], 400, too_many)

        half_bad = await fx.node.call_sdk(
            "triggerBatch",
            [
                {"channel": "node-guarded", "name": "half", "data": "1"},
                {"channel": "bad channel!", "name": "half", "data": "2"},
            ],
        )
        self.assertEqual(half_bad["status"], 400, half_bad)

        await fx.node.init_sdk(
            fx.sdk_options(app_id="222222", key="disabled-key", secret="s2"), name="disabled"
        )
        disabled = await fx.node.call_sdk("trigger", "node-guarded", "off", {}, sdk="disabled")
        self.assertEqual(disabled["status"], 403, disabled)

        unfiltered = await fx.node.call_sdk(
            "get", {"path": "/channels", "params": {"info": "user_count"}}
        )
        self.assertEqual(unfiltered["status"], 400, unfiltered)

        await fx.node.init_sdk(fx.sdk_options(secret="not-the-secret"), name="forger")
        forged = await fx.node.call_sdk("trigger", "node-guarded", "forged", {}, sdk="forger")
        self.assertEqual(forged["status"], 401, forged)

        await fx.node.init_sdk(fx.sdk_options(app_id="999999"), name="stranger")
        unknown = await fx.node.call_sdk("trigger", "node-guarded", "stranger", {}, sdk="stranger")
        self.assertEqual(unknown["status"], 404, unknown)

        await fx.node.call_sdk("trigger", "node-guarded", "marker", {})
        await fx.event("a", "node-guarded", "marker")
        await fx.barrier("a")
        delivered = {o["event"] for o in fx.node.matching(match("event", "a"))}
        self.assertEqual(
            delivered & {"big", "batch", "half", "forged", "stranger"},
            set(),
            json.dumps(sorted(delivered)),
        )

    async def test_api_rate_limit_answers_429_and_delivers_only_admitted(self) -> None:
        """
        With C{rate_limiter.api_rate_limit} at 5 requests a minute, a burst
        of triggers gets 429 once the budget is spent (the SDK reports the
        status), and exactly the admitted events reach the subscriber.
        """
        fx = await Interop.start(
            self,
            config={
                "rate_limiter": {
                    "enabled": True,
                    "driver": "memory",
                    "api_rate_limit": {"max_requests": 5, "window_seconds": 60},
                    "websocket_rate_limit": {"max_requests": 100, "window_seconds": 60},
                }
            },
        )
        await fx.connect("a")
        await fx.subscribe("a", "node-limited")
        statuses = []
        for i in range(8):
            result = await fx.node.call_sdk("trigger", "node-limited", "burst", {"i": i})
            statuses.append(result["status"])
        self.assertIn(429, statuses, statuses)
        self.assertEqual(set(statuses), {200, 429}, statuses)
        admitted = statuses.count(200)
        self.assertGreaterEqual(admitted, 1, statuses)
        await fx.node.wait_count(match("event", "a", event="burst"), admitted, "admitted events")
        await fx.settle()
        received = fx.node.matching(match("event", "a", event="burst"))
        self.assertEqual(
            [o["data"]["i"] for o in received],
            [i for i, status in enumerate(statuses) if status == 200],
        )
