# -*- test-case-name: tests.test_interop_echo -*-
"""
Laravel Echo 2.5 (over pusher-js 8.6, in Node) against a real
C{twistd -n sockudo}, with Echo configured as Laravel documents it for each
broadcaster: C{pusher} (key, cluster, wsHost, wsPort, forceTLS false,
enabledTransports ws/wss) and C{reverb} (key, wsHost, wsPort, wssPort,
forceTLS false).

The Laravel app's side is played by the test process: a small twisted.web
site (L{LaravelApp}) answers C{POST /broadcasting/auth} and
C{/broadcasting/user-auth} as Laravel's broadcasting routes do, checking
Echo's C{X-CSRF-TOKEN} and C{Authorization: Bearer} headers, applying
channel rules like a C{routes/channels.php}, and signing with the app secret
through the official Python C{pusher} SDK. Events are published with the
Node C{pusher} SDK (C{trigger}, C{sendToUser}) as a Laravel backend
publishes them, with Laravel's C{App\\Events\\...} names.

Every test runs once per broadcaster (L{PusherBroadcasterTests},
L{ReverbBroadcasterTests}) on the process's shared daemon, with an app of
its own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

import attrs
from twisted.internet import defer
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from tests.interop_harness import (
    DRIVER_LIFETIME,
    INTEROP_DIR,
    NodeDriver,
    SharedServer,
    match,
    require_node,
    unavailable,
)
from tests.loopback_site import LoopbackSite

ECHO_DRIVER_SCRIPT = INTEROP_DIR / "echo_driver.js"

SOCKET_ID = re.compile(r"^\d+\.\d+$")

CSRF_TOKEN = "csrf-token-of-the-page"

#: The Laravel app's users, by the bearer token Echo sends
#: (C{bearerToken}, as with Sanctum).
USERS: dict[str, dict[str, Any]] = {
    "token-ada": {"id": 1, "name": "Ada"},
    "token-bob": {"id": 2, "name": "Bob"},
}

#: Laravel's default event namespace: C{listen("OrderShipped")} binds
#: C{App\Events\OrderShipped}.
NAMESPACE = "App\\Events\\"


def require_echo(case: TestCase) -> None:
    """
    Skip (outside CI) or fail (with C{CI=true}) without node, pusher-js, the
    Node SDK or laravel-echo.
    """
    require_node(case)
    if not (INTEROP_DIR / "node_modules" / "laravel-echo" / "package.json").exists():
        unavailable(case, "Echo tests need tests/interop/node_modules/laravel-echo (npm ci)")


class EchoDriver(NodeDriver):
    """
    A L{NodeDriver} running C{tests/interop/echo_driver.js}: Laravel Echo
    clients and the Node SDK, with the same command and observation
    conventions as C{driver.js}.
    """

    @classmethod
    async def start(cls, case: TestCase, describe_server: Callable[[], str]) -> EchoDriver:
        """
        Start C{echo_driver.js}, wait for its C{ready} line and register its
        shutdown as a cleanup of C{case}.
        """
        from twisted.internet import reactor

        driver = cls(describe_server)
        node = shutil.which("node") or "node"
        driver._transport = reactor.spawnProcess(
            driver._collector,
            node,
            [node, str(ECHO_DRIVER_SCRIPT), str(DRIVER_LIFETIME)],
            env=dict(os.environ),
            path=str(INTEROP_DIR),
        )
        case.addCleanup(driver.stop)
        await driver.wait_for(lambda o: o["type"] == "ready", "Echo driver ready", within=15)
        return driver


@attrs.define
class AuthRequest:
    """
    One request Echo made to the Laravel app.

    @ivar path: C{/broadcasting/auth} or C{/broadcasting/user-auth}.
    @ivar form: the form fields (C{socket_id}, C{channel_name}).
    @ivar csrf: the C{X-CSRF-TOKEN} header.
    @ivar authorization: the C{Authorization} header.
    @ivar status: what the app answered.
    """

    path: str
    form: dict[str, str]
    csrf: str | None
    authorization: str | None
    status: int = 0


class LaravelApp(Resource):
    """
    The broadcasting routes of a Laravel app: C{/broadcasting/auth} and
    C{/broadcasting/user-auth}, authenticating by bearer token (L{USERS}),
    refusing a wrong CSRF token with 419 as Laravel does, and deciding
    channels as this C{routes/channels.php} would::

        Broadcast::channel('orders.{orderId}', fn ($user, $orderId) =>
            $user->id === Order::findOrNew($orderId)->user_id);   // order N: user N
        Broadcast::channel('App.Models.User.{id}', fn ($user, $id) =>
            (int) $user->id === (int) $id);
        Broadcast::channel('chat.{room}', fn ($user) =>
            ['id' => $user->id, 'name' => $user->name]);          // presence

    @ivar requests: every request, in order.
    """

    isLeaf = True  # noqa: N815 (twisted.web's name)

    def __init__(self, sdk: Any) -> None:
        super().__init__()
        self._sdk = sdk
        self.requests: list[AuthRequest] = []

    def render_POST(self, request: Request) -> bytes:
        """
        Authenticate the user, then authorise the channel or sign the user
        in.
        """
        assert request.content is not None
        fields = parse_qs(request.content.read().decode("utf-8"))
        form = {name: values[-1] for name, values in fields.items()}
        header = request.getHeader
        record = AuthRequest(
            request.path.decode(),
            form,
            _text(header(b"x-csrf-token")),
            _text(header(b"authorization")),
        )
        self.requests.append(record)
        status, body = self._answer(record)
        record.status = status
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(body).encode()

    def _answer(self, record: AuthRequest) -> tuple[int, Any]:
        """
        The status and JSON body Laravel would answer.
        """
        if record.csrf != CSRF_TOKEN:
            return 419, {"message": "CSRF token mismatch."}
        token = (record.authorization or "").removeprefix("Bearer ")
        user = USERS.get(token)
        if user is None:
            return 403, {"message": "Unauthenticated."}
        socket_id = record.form.get("socket_id", "")
        if record.path == "/broadcasting/user-auth":
            user_data = {"id": str(user["id"]), "user_info": {"name": user["name"]}}
            return 200, self._sdk.authenticate_user(socket_id, user_data)
        channel = record.form.get("channel_name", "")
        if channel.startswith("presence-chat."):
            presence = {"user_id": str(user["id"]), "user_info": user}
            return 200, self._sdk.authenticate(channel, socket_id, presence)
        owner = re.fullmatch(r"private-(?:orders|App\.Models\.User)\.(\d+)", channel)
        if owner is not None and int(owner.group(1)) == user["id"]:
            return 200, self._sdk.authenticate(channel, socket_id)
        return 403, {"message": "This action is unauthorized."}


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


@attrs.define
class EchoFixture:
    """
    A test's Laravel front ends: Echo clients in one driver, the shared
    daemon with an app of the test's own, and the Laravel app signing for
    that app.
    """

    case: TestCase
    broadcaster: str
    server: SharedServer
    node: EchoDriver
    laravel: LaravelApp
    site: LoopbackSite
    app: dict[str, Any]

    @classmethod
    async def start(cls, case: TestCase, broadcaster: str) -> EchoFixture:
        """
        Start (or reuse) the shared daemon, the Echo driver and the Laravel
        app; initialise the Node SDK for the test's app.
        """
        import pusher

        require_echo(case)
        servers: list[SharedServer] = []

        def describe_server() -> str:
            return servers[0].log_tail() if servers else "(server not started yet)"

        starting = defer.Deferred.fromCoroutine(EchoDriver.start(case, describe_server))
        try:
            servers.append(await SharedServer.get(case))
        finally:
            node = await starting
        server = servers[0]
        app = server.take_app()
        sdk = pusher.Pusher(app_id=app["id"], key=app["key"], secret=app["secret"], ssl=False)
        laravel = LaravelApp(sdk)
        site = LoopbackSite.start(case, laravel)
        fixture = cls(case, broadcaster, server, node, laravel, site, app)
        await node.init_sdk(
            {
                "appId": app["id"],
                "key": app["key"],
                "secret": app["secret"],
                "host": "127.0.0.1",
                "port": str(server.port),
                "useTLS": False,
            }
        )
        return fixture

    async def connect(self, client: str, token: str | None = "token-ada") -> str:
        """
        Make an Echo client of the user with bearer C{token}; wait until it
        is connected and return its socket id.
        """
        self.node.send(
            op="connect",
            client=client,
            broadcaster=self.broadcaster,
            key=self.app["key"],
            host="127.0.0.1",
            port=self.server.port,
            auth_url=self.site.url,
            csrf_token=CSRF_TOKEN,
            bearer_token=token,
        )
        connected = await self.node.wait_for(
            match("connected", client), f"Echo client {client!r} to connect"
        )
        self.case.assertEqual(connected["status"], "connected")
        socket_id: str = connected["socket_id"]
        self.case.assertRegex(socket_id, SOCKET_ID)
        return socket_id

    async def listen(
        self, client: str, kind: str, channel: str, event: str, subscribed: bool = True
    ) -> str:
        """
        C{listen} on an Echo channel; wait for Echo's C{subscribed} callback
        unless told not to. Return the channel's full name.
        """
        self.node.send(op="listen", client=client, kind=kind, channel=channel, event=event)
        full = {"public": "", "private": "private-", "presence": "presence-"}[kind] + channel
        if subscribed:
            await self.node.wait_for(
                match("subscribed", client, channel=full), f"{client!r} subscribed to {full!r}"
            )
        return full

    def listen_whisper(self, client: str, kind: str, channel: str, event: str) -> None:
        """
        C{listenForWhisper(event)} on an Echo channel.
        """
        self.node.send(op="listen_whisper", client=client, kind=kind, channel=channel, event=event)

    def whisper(
        self, client: str, kind: str, channel: str, event: str, data: Mapping[str, Any]
    ) -> None:
        """
        C{whisper(event, data)} on an Echo channel.
        """
        self.node.send(
            op="whisper", client=client, kind=kind, channel=channel, event=event, data=dict(data)
        )

    async def trigger(
        self, channel: str, event: str, data: Mapping[str, Any], socket_id: str | None = None
    ) -> None:
        """
        Publish as a Laravel backend does (Node SDK C{trigger}), excluding
        C{socket_id} when given (C{broadcast(...)->toOthers()}).
        """
        params = {"socket_id": socket_id} if socket_id is not None else {}
        result = await self.node.call_sdk("trigger", channel, event, dict(data), params)
        self.case.assertEqual(result["status"], 200, result)

    async def event(self, client: str, channel: str, event: str) -> dict[str, Any]:
        """
        Wait until Echo calls C{client}'s listener of C{event} on C{channel}.
        """
        return await self.node.wait_for(
            match("event", client, channel=channel, event=event),
            f"{client!r} to receive {event!r} on {channel!r}",
        )

    async def barrier(self, *clients: str) -> None:
        """
        Ping and wait for the pong on each client's connection: whatever the
        server sent it before has arrived (see L{Interop.barrier}).
        """
        for client in clients:
            pongs = match("message", client, event="pusher:pong")
            before = len(self.node.matching(pongs))
            self.node.send(op="ping", client=client)
            await self.node.wait_count(pongs, before + 1, f"pusher:pong to {client!r}")


class _EchoTests:
    """
    Echo's features, run by the subclasses with each broadcaster's
    settings.
    """

    broadcaster: str
    timeout = 60

    async def fixture(self) -> EchoFixture:
        case: Any = self
        return await EchoFixture.start(case, self.broadcaster)

    async def test_public_channel(self) -> None:
        """
        C{Echo.channel(...).listen("OrderShipped")} receives
        C{App\\Events\\OrderShipped} and C{.listen(".status.updated")} a
        C{broadcastAs} name; C{toOthers()} (the trigger's C{socket_id})
        leaves the sender out.
        """
        case: Any = self
        fx = await self.fixture()
        sender = await fx.connect("a")
        await fx.connect("b")
        for client in ("a", "b"):
            await fx.listen(client, "public", "orders", "OrderShipped")
            await fx.listen(client, "public", "orders", ".status.updated", subscribed=False)
        await fx.trigger("orders", NAMESPACE + "OrderShipped", {"order": {"id": 7}})
        for client in ("a", "b"):
            event = await fx.event(client, "orders", "OrderShipped")
            case.assertEqual(event["data"], {"order": {"id": 7}})
        await fx.trigger("orders", "status.updated", {"status": "sent"}, socket_id=sender)
        event = await fx.event("b", "orders", ".status.updated")
        case.assertEqual(event["data"], {"status": "sent"})
        await fx.barrier("a")
        case.assertEqual(fx.node.matching(match("event", "a", event=".status.updated")), [])

    async def test_private_channel(self) -> None:
        """
        C{Echo.private("orders.1")} is authorised by the Laravel app (with
        Echo's CSRF and bearer headers) for the order's owner, who then
        receives its events; another user's subscription is refused with
        403 and reaches Echo's C{error} callback.
        """
        case: Any = self
        fx = await self.fixture()
        socket_id = await fx.connect("ada", "token-ada")
        await fx.connect("bob", "token-bob")
        channel = await fx.listen("ada", "private", "orders.1", "OrderShipped")
        (request,) = fx.laravel.requests
        case.assertEqual(request.path, "/broadcasting/auth")
        case.assertEqual(request.form, {"socket_id": socket_id, "channel_name": channel})
        case.assertEqual(request.csrf, CSRF_TOKEN)
        case.assertEqual(request.authorization, "Bearer token-ada")
        case.assertEqual(request.status, 200)

        await fx.listen("bob", "private", "orders.1", "OrderShipped", subscribed=False)
        refused = await fx.node.wait_for(
            match("subscription_error", "bob", channel=channel), "bob's subscription refused"
        )
        case.assertEqual(refused["error"]["status"], 403, refused)
        case.assertEqual(fx.laravel.requests[-1].status, 403)

        await fx.trigger(channel, NAMESPACE + "OrderShipped", {"id": 1})
        event = await fx.event("ada", channel, "OrderShipped")
        case.assertEqual(event["data"], {"id": 1})
        await fx.barrier("bob")
        case.assertEqual(fx.node.matching(match("event", "bob")), [])

    async def test_presence_here_joining_leaving(self) -> None:
        """
        C{Echo.join("chat.1")}: C{here} lists the members with the user info
        the Laravel app returned, C{joining} and C{leaving} report the other
        user, and C{Echo.leave} is what makes the other leave.
        """
        case: Any = self
        fx = await self.fixture()
        await fx.connect("ada", "token-ada")
        await fx.connect("bob", "token-bob")
        ada, bob = USERS["token-ada"], USERS["token-bob"]
        channel = await fx.listen("ada", "presence", "chat.1", "MessagePosted")
        here = await fx.node.wait_for(match("here", "ada", channel=channel), "ada's here")
        case.assertEqual(here["members"], [ada])

        await fx.listen("bob", "presence", "chat.1", "MessagePosted")
        here = await fx.node.wait_for(match("here", "bob", channel=channel), "bob's here")
        case.assertCountEqual(here["members"], [ada, bob])
        joining = await fx.node.wait_for(match("joining", "ada", channel=channel), "bob joining")
        case.assertEqual(joining["member"], bob)

        await fx.trigger(channel, NAMESPACE + "MessagePosted", {"text": "hi"})
        for client in ("ada", "bob"):
            event = await fx.event(client, channel, "MessagePosted")
            case.assertEqual(event["data"], {"text": "hi"})

        fx.node.send(op="leave", client="bob", channel="chat.1")
        leaving = await fx.node.wait_for(match("leaving", "ada", channel=channel), "bob leaving")
        case.assertEqual(leaving["member"], bob)

    async def test_whisper(self) -> None:
        """
        C{whisper("typing", ...)} on a presence and on a private channel
        reaches the other subscribers' C{listenForWhisper("typing")} (a
        C{client-typing} event), not the sender.
        """
        case: Any = self
        fx = await self.fixture()
        await fx.connect("ada", "token-ada")
        await fx.connect("bob", "token-bob")
        await fx.connect("ada2", "token-ada")
        for client in ("ada", "bob"):
            await fx.listen(client, "presence", "chat.2", "MessagePosted")
            fx.listen_whisper(client, "presence", "chat.2", "typing")
        fx.whisper("ada", "presence", "chat.2", "typing", {"name": "Ada"})
        whisper = await fx.node.wait_for(match("whisper", "bob", event="typing"), "bob hears ada")
        case.assertEqual(whisper["channel"], "presence-chat.2")
        case.assertEqual(whisper["data"], {"name": "Ada"})

        for client in ("ada", "ada2"):
            await fx.listen(client, "private", "App.Models.User.1", "Notice")
            fx.listen_whisper(client, "private", "App.Models.User.1", "typing")
        fx.whisper("ada2", "private", "App.Models.User.1", "typing", {"tab": 2})
        whisper = await fx.node.wait_for(
            match("whisper", "ada", channel="private-App.Models.User.1"), "ada hears ada2"
        )
        case.assertEqual(whisper["data"], {"tab": 2})

        await fx.barrier("ada", "ada2")
        case.assertEqual(fx.node.matching(match("whisper", "ada", channel="presence-chat.2")), [])
        case.assertEqual(fx.node.matching(match("whisper", "ada2")), [])

    async def test_leave(self) -> None:
        """
        C{Echo.leave("orders")} unsubscribes: the server reports the channel
        vacant, and later events do not reach the client.
        """
        case: Any = self
        fx = await self.fixture()
        await fx.connect("a")
        await fx.listen("a", "public", "orders", "OrderShipped")
        fx.node.send(op="leave", client="a", channel="orders")
        await fx.barrier("a")
        result = await fx.node.call_sdk("get", {"path": "/channels/orders"})
        case.assertEqual(result["status"], 200, result)
        case.assertFalse(result["body"]["occupied"], result)
        await fx.trigger("orders", NAMESPACE + "OrderShipped", {"late": True})
        await fx.barrier("a")
        case.assertEqual(fx.node.matching(match("event", "a")), [])

    async def test_signin_and_send_to_user(self) -> None:
        """
        C{Echo.connector.signin()} signs the user in through the Laravel
        app's C{/broadcasting/user-auth}; C{sendToUser} then reaches every
        connection of that user (both of Ada's tabs), and no one else.
        """
        case: Any = self
        fx = await self.fixture()
        tabs = {"ada": await fx.connect("ada", "token-ada")}
        tabs["ada2"] = await fx.connect("ada2", "token-ada")
        await fx.connect("bob", "token-bob")
        for client in ("ada", "ada2", "bob"):
            fx.node.send(op="signin", client=client)
            await fx.node.wait_for(
                match("message", client, event="pusher:signin_success"), f"{client!r} signed in"
            )
        user_auths = [r for r in fx.laravel.requests if r.path == "/broadcasting/user-auth"]
        case.assertCountEqual([r.form["socket_id"] for r in user_auths][:2], tabs.values())
        case.assertTrue(all(r.csrf == CSRF_TOKEN for r in user_auths))

        result = await fx.node.call_sdk("sendToUser", "1", "notification", {"unread": 3})
        case.assertEqual(result["status"], 200, result)
        for client in ("ada", "ada2"):
            event = await fx.node.wait_for(
                match("user_event", client, event="notification"), f"{client!r} notified"
            )
            case.assertEqual(event["data"], {"unread": 3})
        await fx.barrier("bob")
        case.assertEqual(fx.node.matching(match("user_event", "bob", event="notification")), [])


class PusherBroadcasterTests(_EchoTests, TestCase):
    """
    Echo with C{broadcaster: "pusher"}.
    """

    broadcaster = "pusher"


class ReverbBroadcasterTests(_EchoTests, TestCase):
    """
    Echo with C{broadcaster: "reverb"}.
    """

    broadcaster = "reverb"
