"""
The official Python C{pusher} SDK against a real C{twistd -n sockudo}
process, with pusher-js clients receiving what it publishes.

The SDK is synchronous (requests), so its calls run in a thread; it accepts
only numeric app ids, hence the numeric ids of the harness's apps
(L{tests.interop_harness.APP_ID} and the shared daemon's pool). The contract is
C{shared/docs/pusher-protocol.md} section 6.
"""

from __future__ import annotations

import json
from typing import Any

import pusher.errors
from twisted.trial.unittest import TestCase

from tests.interop_harness import Interop, match


class PythonSdkPublishTests(TestCase):
    """
    C{trigger}, C{trigger_batch} and C{send_to_user} reach pusher-js.
    """

    timeout = 60

    async def test_trigger_reaches_subscribers_and_excludes_socket_id(self) -> None:
        """
        C{trigger} to two channels answers C{{}} and delivers to both; with
        C{socket_id} that connection is left out.
        """
        fx = await Interop.start(self)
        sdk = fx.python_sdk()
        socket_a = await fx.connect("a")
        await fx.connect("b")
        for client in ("a", "b"):
            await fx.subscribe(client, "py-one")
        await fx.subscribe("a", "py-two")

        result = await fx.in_thread(sdk.trigger, ["py-one", "py-two"], "news", {"n": 1})
        self.assertEqual(result, {})
        for client, channel in (("a", "py-one"), ("b", "py-one"), ("a", "py-two")):
            event = await fx.event(client, channel, "news")
            self.assertEqual(event["data"], {"n": 1})

        await fx.in_thread(sdk.trigger, "py-one", "not-for-a", {"n": 2}, socket_id=socket_a)
        await fx.event("b", "py-one", "not-for-a")
        await fx.barrier("a")
        self.assertEqual(fx.node.matching(match("event", "a", event="not-for-a")), [])

    async def test_trigger_batch(self) -> None:
        """
        C{trigger_batch} delivers each event to its own channel.
        """
        fx = await Interop.start(self)
        sdk = fx.python_sdk()
        await fx.connect("a")
        await fx.subscribe("a", "py-batch-1")
        await fx.subscribe("a", "py-batch-2")
        result = await fx.in_thread(
            sdk.trigger_batch,
            [
                {"channel": "py-batch-1", "name": "first", "data": {"i": 1}},
                {"channel": "py-batch-2", "name": "second", "data": {"i": 2}},
            ],
        )
        self.assertEqual(result, {})
        first = await fx.event("a", "py-batch-1", "first")
        second = await fx.event("a", "py-batch-2", "second")
        self.assertEqual((first["data"], second["data"]), ({"i": 1}, {"i": 2}))

    async def test_encrypted_trigger_is_decrypted_by_pusher_js(self) -> None:
        """
        The Python SDK authorises a C{private-encrypted-} channel (adding
        C{shared_secret}) and encrypts what it triggers; pusher-js decrypts.
        """
        fx = await Interop.start(self)
        sdk = fx.python_sdk()
        channel = "private-encrypted-py"
        await fx.connect("a", auth="ask")
        fx.node.send(op="subscribe", client="a", channel=channel, bind=[])

        def authorise(request: dict[str, Any]) -> dict[str, Any]:
            answer = sdk.authenticate(channel=request["channel"], socket_id=request["socket_id"])
            secret = answer["shared_secret"]
            answer["shared_secret"] = secret.decode() if isinstance(secret, bytes) else secret
            return dict(answer)

        await fx.node.answer_auth("a", "channel", authorise)
        await fx.event("a", channel, "pusher:subscription_succeeded")
        await fx.in_thread(sdk.trigger, channel, "sealed", {"word": "py-secret"})
        event = await fx.event("a", channel, "sealed")
        self.assertEqual(event["data"], {"word": "py-secret"})


class PythonSdkAuthTests(TestCase):
    """
    Signatures made by the Python SDK are accepted for the exact bytes it
    signs (it serialises with spaces, unlike the Node SDK).
    """

    timeout = 60

    async def test_authenticate_private_and_presence(self) -> None:
        """
        C{authenticate} signs a private channel and a presence channel
        (with C{custom_data}); pusher-js subscribes to both and the member
        list holds the signed user.
        """
        fx = await Interop.start(self)
        sdk = fx.python_sdk()
        await fx.connect("a", auth="ask")

        fx.node.send(op="subscribe", client="a", channel="private-py", bind=[])
        await fx.node.answer_auth(
            "a",
            "channel",
            lambda r: sdk.authenticate(channel=r["channel"], socket_id=r["socket_id"]),
        )
        await fx.event("a", "private-py", "pusher:subscription_succeeded")

        member = {"user_id": "py-1", "user_info": {"name": "Py Thon"}}
        fx.node.send(op="subscribe", client="a", channel="presence-py", bind=[])
        await fx.node.answer_auth(
            "a",
            "channel",
            lambda r: sdk.authenticate(
                channel=r["channel"], socket_id=r["socket_id"], custom_data=member
            ),
        )
        members = await fx.node.wait_for(
            match("members", "a", channel="presence-py", after="pusher:subscription_succeeded"),
            "presence members",
        )
        self.assertEqual(members["me"], {"id": "py-1", "info": {"name": "Py Thon"}})

    async def test_authenticate_user_then_send_to_user_and_terminate(self) -> None:
        """
        C{authenticate_user} signs a sign-in that succeeds; C{send_to_user}
        reaches that user; C{terminate_user_connections} disconnects that
        user and leaves the other one connected.
        """
        fx = await Interop.start(self)
        sdk = fx.python_sdk()
        await fx.connect("a", auth="ask")
        await fx.connect("b", auth="ask")
        for client, user_id in (("a", "py-user"), ("b", "py-other")):
            fx.node.send(op="signin", client=client)
            await fx.node.answer_auth(
                client,
                "user",
                lambda r, u=user_id: sdk.authenticate_user(
                    r["socket_id"], {"id": u, "user_info": {"name": u}}
                ),
            )
            success = await fx.node.wait_for(
                match("message", client, event="pusher:signin_success"), f"{client} signed in"
            )
            self.assertEqual(json.loads(success["data"]["user_data"])["id"], user_id)
            await fx.node.wait_for(
                match(
                    "message",
                    client,
                    event="pusher_internal:subscription_succeeded",
                    channel=f"#server-to-user-{user_id}",
                ),
                f"{client} on its #server-to-user- channel",
            )

        result = await fx.in_thread(sdk.send_to_user, "py-user", "direct", {"to": "py-user"})
        self.assertEqual(result, {})
        event = await fx.node.wait_for(match("user_event", "a", event="direct"), "user event")
        self.assertEqual(event["data"], {"to": "py-user"})
        await fx.barrier("b")
        self.assertEqual(fx.node.matching(match("user_event", "b", event="direct")), [])

        await fx.in_thread(sdk.terminate_user_connections, "py-user")
        await fx.node.wait_for(
            match("state", "a", previous="connected"), "the terminated user's connection to drop"
        )
        await fx.barrier("b")
        self.assertEqual(fx.node.matching(match("state", "b", previous="connected")), [])


class PythonSdkQueryTests(TestCase):
    """
    C{channels_info}, C{channel_info} and C{users_info} describe what
    pusher-js clients are subscribed to.
    """

    timeout = 60

    async def _populate(self, fx: Interop) -> None:
        """
        Users 1 (two connections) and 2 on C{presence-room}; one connection on
        the public C{lobby}.
        """
        for client, user_id in (("a", "1"), ("a2", "1"), ("b", "2")):
            await fx.connect(client, presence={"user_id": user_id, "user_info": {}})
            await fx.subscribe(client, "presence-room")
        await fx.subscribe("a", "lobby")

    async def test_channels_info(self) -> None:
        """
        C{channels_info} lists occupied channels, and with
        C{prefix_filter="presence-"} and C{user_count} counts distinct users.
        """
        fx = await Interop.start(self)
        sdk = fx.python_sdk()
        await self._populate(fx)
        everything = await fx.in_thread(sdk.channels_info)
        self.assertEqual(set(everything["channels"]), {"presence-room", "lobby"})
        presence = await fx.in_thread(
            sdk.channels_info, prefix_filter="presence-", attributes=["user_count"]
        )
        self.assertEqual(presence, {"channels": {"presence-room": {"user_count": 2}}})

    async def test_channel_info(self) -> None:
        """
        C{channel_info} reports occupancy, distinct users and connections;
        an empty channel is unoccupied.
        """
        fx = await Interop.start(self)
        sdk = fx.python_sdk()
        await self._populate(fx)
        info = await fx.in_thread(
            sdk.channel_info, "presence-room", attributes=["user_count", "subscription_count"]
        )
        self.assertEqual(info, {"occupied": True, "user_count": 2, "subscription_count": 3})
        lobby = await fx.in_thread(sdk.channel_info, "lobby")
        self.assertEqual(lobby, {"occupied": True})
        empty = await fx.in_thread(sdk.channel_info, "nobody-here")
        self.assertEqual(empty, {"occupied": False})

    async def test_users_info(self) -> None:
        """
        C{users_info} lists each presence user once; on a non-presence
        channel the server answers 400, which the SDK raises as
        C{PusherBadRequest}.
        """
        fx = await Interop.start(self)
        sdk = fx.python_sdk()
        await self._populate(fx)
        users = await fx.in_thread(sdk.users_info, "presence-room")
        self.assertEqual(sorted(u["id"] for u in users["users"]), ["1", "2"])
        self.assertEqual(len(users["users"]), 2)
        with self.assertRaises(pusher.errors.PusherBadRequest):
            await fx.in_thread(sdk.users_info, "lobby")

    async def test_wrong_secret_is_refused(self) -> None:
        """
        A request signed with the wrong secret gets 401 (the SDK raises
        C{PusherBadAuth}) and delivers nothing.
        """
        fx = await Interop.start(self)
        await fx.connect("a")
        await fx.subscribe("a", "guarded")
        import pusher as pusher_module

        forger = pusher_module.Pusher(
            app_id=fx.app_id,
            key=fx.app_key,
            secret="not-the-secret",
            ssl=False,
            host="127.0.0.1",
            port=fx.server.port,
        )
        with self.assertRaises(pusher.errors.PusherBadAuth):
            await fx.in_thread(forger.trigger, "guarded", "forged", {})
        await fx.barrier("a")
        self.assertEqual(fx.node.matching(match("event", "a", event="forged")), [])
