"""
pusher-js 8 (its Node build) against a real C{twistd -n sockudo} process.

Every feature a pusher-js application uses is exercised end to end: the
connection, public/private/presence/encrypted/cache channels, events published
through the REST API by the official Node C{pusher} SDK (which also signs every
channel authorisation and user sign-in), client events, sign-in with
C{sendToUser}, and the refusal of an unknown key. The wire contract is
C{shared/docs/pusher-protocol.md}.
"""

from __future__ import annotations

import json
import re

from twisted.trial.unittest import TestCase

from tests.interop_harness import APP_KEY, Interop, match

SOCKET_ID = re.compile(r"^\d+\.\d+$")


class PusherJsConnectionTests(TestCase):
    """
    Connecting, the handshake, liveness and connection refusal.
    """

    timeout = 60

    async def test_connects_with_a_socket_id(self) -> None:
        """
        pusher-js reaches the C{connected} state and is given a socket id of
        the form the server SDKs accept (C{^\\d+\\.\\d+$}); two connections
        get different ids.
        """
        fx = await Interop.start(self)
        first = await fx.connect("a")
        second = await fx.connect("b")
        assert first is not None and second is not None
        self.assertRegex(first, SOCKET_ID)
        self.assertRegex(second, SOCKET_ID)
        self.assertNotEqual(first, second)

    async def test_ping_is_answered_with_pong(self) -> None:
        """
        With a short C{activityTimeout} pusher-js sends C{pusher:ping} after
        a second of silence; the server answers C{pusher:pong} and the
        connection stays up.
        """
        fx = await Interop.start(self)
        await fx.connect("a", activityTimeout=1000, pongTimeout=3000)
        await fx.node.wait_for(
            match("message", "a", event="pusher:pong"),
            "pusher:pong after pusher-js's ping",
            within=8,
        )
        self.assertEqual(fx.node.matching(match("state", "a", previous="connected")), [])

    async def test_unknown_app_key_is_refused_without_reconnecting(self) -> None:
        """
        An unknown key gets error 4001; pusher-js treats 40xx as "refused"
        and does not try again.
        """
        fx = await Interop.start(self)
        await fx.connect("bad", key="no-such-key", wait=False)
        error = await fx.node.wait_for(
            lambda o: (
                o["type"] == "conn_error" and o["client"] == "bad" and "4001" in json.dumps(o)
            ),
            "an error with code 4001 for an unknown app key",
        )
        self.assertIn("4001", json.dumps(error))
        await fx.node.wait_for(
            match("state", "bad", current="disconnected"), "the refused client to end disconnected"
        )
        await fx.settle(2.0)
        self.assertEqual(fx.node.matching(match("connected", "bad")), [])
        connecting = fx.node.matching(match("state", "bad", current="connecting"))
        self.assertEqual(
            len(connecting), 1, "pusher-js reconnected after 4001:\n" + fx.node.report()
        )


class PusherJsChannelTests(TestCase):
    """
    Subscriptions to each channel kind and delivery of REST-published events.
    """

    timeout = 60

    async def test_public_channel_receives_rest_events_until_unsubscribed(self) -> None:
        """
        A public channel gets the event the Node SDK triggers, with its data
        intact; after C{unsubscribe} nothing more is delivered.
        """
        fx = await Interop.start(self)
        await fx.connect("a")
        await fx.subscribe("a", "interop-public")
        await fx.subscribe("a", "interop-other")
        result = await fx.node.call_sdk("trigger", "interop-public", "greeting", {"text": "hi"})
        self.assertTrue(result["ok"], result)
        self.assertEqual(result["status"], 200)
        event = await fx.event("a", "interop-public", "greeting")
        self.assertEqual(event["data"], {"text": "hi"})

        fx.node.send(op="unsubscribe", client="a", channel="interop-public")
        await fx.settle(0.3)
        await fx.node.call_sdk("trigger", "interop-public", "after-unsubscribe", {"n": 1})
        await fx.node.call_sdk("trigger", "interop-other", "marker", {"n": 2})
        await fx.event("a", "interop-other", "marker")
        await fx.settle(0.2)
        self.assertEqual(
            fx.node.matching(lambda o: o.get("event") == "after-unsubscribe"),
            [],
            "an event reached a client after it unsubscribed",
        )

    async def test_private_channel_with_sdk_authorization(self) -> None:
        """
        A private channel authorised by the Node SDK's C{authorizeChannel}
        succeeds and receives events.
        """
        fx = await Interop.start(self)
        await fx.connect("a")
        await fx.subscribe("a", "private-interop")
        await fx.node.call_sdk("trigger", "private-interop", "secret-news", {"n": 1})
        event = await fx.event("a", "private-interop", "secret-news")
        self.assertEqual(event["data"], {"n": 1})

    async def test_private_channel_bad_signature_is_refused_connection_stays(self) -> None:
        """
        A private subscription signed with the wrong secret never succeeds,
        the client gets a C{pusher:error}, and the connection stays usable.
        """
        fx = await Interop.start(self)
        socket_id = await fx.connect("a", auth="ask")
        fx.node.send(op="subscribe", client="a", channel="private-forged", bind=[])
        request = await fx.node.wait_for(
            match("auth_request", "a", channel="private-forged"), "the auth request"
        )
        self.assertEqual(request["socket_id"], socket_id)
        fx.node.send(op="auth_response", req=request["req"], auth={"auth": f"{APP_KEY}:{'0' * 64}"})
        await fx.node.wait_for(
            match("message", "a", event="pusher:error"), "pusher:error for a forged signature"
        )
        fx.node.send(op="subscribe", client="a", channel="still-open", bind=[])
        await fx.event("a", "still-open", "pusher:subscription_succeeded")
        self.assertEqual(
            fx.node.matching(
                match("event", "a", channel="private-forged", event="pusher:subscription_succeeded")
            ),
            [],
            "a forged signature was accepted",
        )
        self.assertEqual(fx.node.matching(match("state", "a", previous="connected")), [])

    async def test_presence_members_added_and_removed_once_per_user(self) -> None:
        """
        Presence: each client sees itself and the others in C{members};
        C{member_added}/C{member_removed} reach the others once per user id,
        not once per connection.
        """
        fx = await Interop.start(self)
        channel = "presence-interop"
        await fx.connect("a", presence={"user_id": "1", "user_info": {"name": "Ann"}})
        await fx.subscribe("a", channel)
        members_a = await fx.node.wait_for(match("members", "a", channel=channel), "a's members")
        self.assertEqual(members_a["me"], {"id": "1", "info": {"name": "Ann"}})
        self.assertEqual(members_a["count"], 1)

        await fx.connect("b", presence={"user_id": "2", "user_info": {"name": "Bob"}})
        await fx.subscribe("b", channel)
        members_b = await fx.node.wait_for(
            match("members", "b", channel=channel, after="pusher:subscription_succeeded"),
            "b's members",
        )
        self.assertEqual(members_b["count"], 2)
        self.assertEqual(
            members_b["members"],
            [{"id": "1", "info": {"name": "Ann"}}, {"id": "2", "info": {"name": "Bob"}}],
        )
        added = await fx.event("a", channel, "pusher:member_added")
        self.assertEqual(added["data"], {"id": "2", "info": {"name": "Bob"}})
        self.assertEqual(
            fx.node.matching(match("event", "b", channel=channel, event="pusher:member_added")), []
        )

        # A second connection of user 2: no second member_added, and its
        # leaving is no member_removed while the first one stays.
        await fx.connect("b2", presence={"user_id": "2", "user_info": {"name": "Bob"}})
        await fx.subscribe("b2", channel)
        fx.node.send(op="disconnect", client="b2")
        await fx.node.wait_for(match("state", "b2", current="disconnected"), "b2 to disconnect")
        await fx.settle(0.5)
        self.assertEqual(
            len(
                fx.node.matching(match("event", "a", channel=channel, event="pusher:member_added"))
            ),
            1,
            "member_added sent per connection:\n" + fx.node.report(),
        )
        self.assertEqual(
            fx.node.matching(match("event", "a", channel=channel, event="pusher:member_removed")),
            [],
            "member_removed sent while the user still had a connection",
        )

        fx.node.send(op="disconnect", client="b")
        removed = await fx.event("a", channel, "pusher:member_removed")
        self.assertEqual(removed["data"]["id"], "2")
        fx.node.send(op="members", client="a", channel=channel)
        final = await fx.node.wait_for(
            match("members", "a", channel=channel, after=None), "a's members after b left"
        )
        self.assertEqual(final["count"], 1)

    async def test_encrypted_channel_event_is_decrypted_by_the_client(self) -> None:
        """
        On a C{private-encrypted-} channel the Node SDK encrypts, the server
        relays the ciphertext untouched, and pusher-js decrypts it with the
        shared secret from the SDK's authorisation.
        """
        fx = await Interop.start(self)
        channel = "private-encrypted-interop"
        await fx.connect("a")
        await fx.subscribe("a", channel)
        result = await fx.node.call_sdk("trigger", channel, "sealed", {"word": "swordfish"})
        self.assertTrue(result["ok"], result)
        event = await fx.event("a", channel, "sealed")
        self.assertEqual(event["data"], {"word": "swordfish"})
        raw = await fx.node.wait_for(
            match("message", "a", channel=channel, event="sealed"), "the raw encrypted frame"
        )
        self.assertEqual(set(raw["data"]), {"nonce", "ciphertext"})
        self.assertNotIn("swordfish", json.dumps(raw))

    async def test_cache_channel_miss_then_replay(self) -> None:
        """
        The first subscriber of an empty cache channel gets
        C{pusher:cache_miss}; after an event is published, a new subscriber
        gets that event replayed.
        """
        fx = await Interop.start(self)
        channel = "cache-interop"
        await fx.connect("a")
        await fx.subscribe("a", channel)
        await fx.event("a", channel, "pusher:cache_miss")
        await fx.node.call_sdk("trigger", channel, "state", {"version": 3})
        await fx.event("a", channel, "state")

        await fx.connect("b")
        await fx.subscribe("b", channel)
        replay = await fx.event("b", channel, "state")
        self.assertEqual(replay["data"], {"version": 3})
        self.assertEqual(
            fx.node.matching(match("event", "b", channel=channel, event="pusher:cache_miss")), []
        )


class PusherJsClientEventTests(TestCase):
    """
    Client events between two pusher-js clients.
    """

    timeout = 60

    async def test_private_client_event_reaches_others_not_sender(self) -> None:
        """
        A client event on a private channel reaches the other subscriber
        with its data and is not echoed to the sender.
        """
        fx = await Interop.start(self)
        channel = "private-chat"
        await fx.connect("a")
        await fx.connect("b")
        await fx.subscribe("a", channel)
        await fx.subscribe("b", channel)
        fx.node.send(
            op="client_event", client="a", channel=channel, event="client-typing", data={"who": "a"}
        )
        sent = await fx.node.wait_for(match("client_event_sent", "a"), "pusher-js to send")
        self.assertTrue(sent["ok"])
        received = await fx.event("b", channel, "client-typing")
        self.assertEqual(received["data"], {"who": "a"})
        await fx.settle()
        self.assertEqual(
            fx.node.matching(match("event", "a", channel=channel, event="client-typing")), []
        )

    async def test_presence_client_event_carries_user_id(self) -> None:
        """
        A client event on a presence channel reaches the other member with
        C{metadata.user_id} set to the sender's user id.
        """
        fx = await Interop.start(self)
        channel = "presence-chat"
        await fx.connect("a", presence={"user_id": "7", "user_info": {}})
        await fx.connect("b", presence={"user_id": "8", "user_info": {}})
        await fx.subscribe("a", channel)
        await fx.subscribe("b", channel, bind=["client-wave"])
        fx.node.send(
            op="client_event", client="a", channel=channel, event="client-wave", data={"x": 1}
        )
        bound = await fx.node.wait_for(
            match("bound", "b", channel=channel, event="client-wave"), "b's bound handler"
        )
        self.assertEqual(bound["data"], {"x": 1})
        self.assertEqual(bound["metadata"], {"user_id": "7"})
        await fx.settle()
        self.assertEqual(
            fx.node.matching(match("event", "a", channel=channel, event="client-wave")), []
        )

    async def test_client_event_on_public_channel_is_rejected(self) -> None:
        """
        Client events are refused on public channels: the sender gets a
        C{pusher:error}, the other subscriber nothing, and the connection
        stays open.
        """
        fx = await Interop.start(self)
        channel = "public-chat"
        await fx.connect("a")
        await fx.connect("b")
        await fx.subscribe("a", channel)
        await fx.subscribe("b", channel)
        fx.node.send(op="client_event", client="a", channel=channel, event="client-nope", data={})
        await fx.node.wait_for(
            match("message", "a", event="pusher:error"), "pusher:error to the sender"
        )
        await fx.settle()
        self.assertEqual(
            fx.node.matching(match("event", "b", channel=channel, event="client-nope")), []
        )
        self.assertEqual(fx.node.matching(match("state", "a", previous="connected")), [])


class PusherJsUserTests(TestCase):
    """
    User sign-in and server-to-user delivery.
    """

    timeout = 60

    async def test_signin_and_send_to_user(self) -> None:
        """
        C{pusher.signin()} with the Node SDK's C{authenticateUser} succeeds,
        pusher-js subscribes to its C{#server-to-user-} channel, and
        C{sendToUser} reaches that user only.
        """
        fx = await Interop.start(self)
        await fx.connect("a", user={"id": "42", "user_info": {"name": "Ann"}})
        await fx.connect("b", user={"id": "43"})
        fx.node.send(op="signin", client="a")
        fx.node.send(op="signin", client="b")
        success = await fx.node.wait_for(
            match("message", "a", event="pusher:signin_success"), "signin_success"
        )
        self.assertEqual(json.loads(success["data"]["user_data"])["id"], "42")
        for client, user in (("a", "42"), ("b", "43")):
            await fx.node.wait_for(
                match(
                    "message",
                    client,
                    event="pusher_internal:subscription_succeeded",
                    channel=f"#server-to-user-{user}",
                ),
                f"{client} subscribed to #server-to-user-{user}",
            )
        result = await fx.node.call_sdk("sendToUser", "42", "direct", {"for": "ann"})
        self.assertTrue(result["ok"], result)
        event = await fx.node.wait_for(match("user_event", "a", event="direct"), "a's user event")
        self.assertEqual(event["data"], {"for": "ann"})
        await fx.settle()
        self.assertEqual(fx.node.matching(match("user_event", "b", event="direct")), [])

    async def test_signin_with_bad_signature_is_refused(self) -> None:
        """
        A sign-in signed with the wrong secret gets no C{signin_success}
        (the server answers with an error).
        """
        fx = await Interop.start(self)
        await fx.connect("a", auth="ask")
        fx.node.send(op="signin", client="a")
        request = await fx.node.wait_for(
            match("auth_request", "a", kind="user"), "the user auth request"
        )
        fx.node.send(
            op="auth_response",
            req=request["req"],
            auth={"auth": f"{APP_KEY}:{'f' * 64}", "user_data": json.dumps({"id": "5"})},
        )
        await fx.node.wait_for(
            lambda o: (
                o["client"] == "a"
                and (
                    (o["type"] == "message" and o["event"] == "pusher:error")
                    or (o["type"] == "state" and o["previous"] == "connected")
                )
            ),
            "an error or a close for a forged sign-in",
        )
        await fx.settle()
        self.assertEqual(fx.node.matching(match("message", "a", event="pusher:signin_success")), [])
