# -*- test-case-name: tests.test_api -*-
"""
Tests for L{sockudo_tw.api}: every route and every refusal of the Pusher
HTTP API, in memory through StubTreq.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import quote, urlencode

from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Request, Site
from twisted.web.test.requesthelper import DummyChannel
from zope.interface import implementer_only

from sockudo_tw.api import PusherApi
from sockudo_tw.appstores import IAppStore, ISyncAppLookup, MemoryAppStore
from sockudo_tw.caches import MemoryChannelCache
from sockudo_tw.pusher.app import App
from sockudo_tw.pusher.httpapi import HttpRequest, HttpResponse
from sockudo_tw.pusher.signing import hmac_sha256_hex, sign_api_query
from sockudo_tw.ratelimit import MemoryRateLimiter
from tests.fakes import Broadcast, RecordingAdapter

# The credentials of the worked example in pusher-protocol.md section 6.1.
KEY = "278d425bdf160c739803"
SECRET = "7ad3773142a6692b25b8"
NOW = 1353088179

PAYLOAD_TOO_LARGE = (
    "The data content of this event exceeds the allowed maximum (10240 bytes). "
    "See http://pusher.com/docs/server_api_guide/server_publishing_events for more info"
)


class Response:
    """
    What a test needs of an HTTP response.
    """

    def __init__(self, code: int, headers: dict[bytes, list[bytes]], body: bytes) -> None:
        self.code = code
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.body = body

    def header(self, name: bytes) -> bytes | None:
        """
        The first value of header C{name}.
        """
        values = self.headers.get(name.lower())
        return values[0] if values else None

    @property
    def json(self) -> Any:
        """
        The body decoded as JSON.
        """
        return json.loads(self.body)


class ApiTestMixin:
    """
    An API over a memory app store, a recording adapter and a memory cache,
    on a clock set to the example timestamp.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.apps = MemoryAppStore(
            [
                App(id="3", key=KEY, secret=SECRET),
                App(id="4", key="key4", secret="secret4"),
                App(id="5", key="key5", secret="secret5", enabled=False),
                App(id="6", key="key6", secret="secret6", max_backend_events_per_second=2),
                App(id="7", key="key7", secret="secret7", max_read_requests_per_second=1),
            ]
        )
        self.adapter = RecordingAdapter()
        self.cache = MemoryChannelCache(self.clock)
        self.api = PusherApi(
            clock=self.clock,
            app_store=self.apps,
            adapter=self.adapter,
            cache=self.cache,
            rate_limiter=MemoryRateLimiter(self.clock),
            request_limit_in_mb=1,
        )
        self.treq = StubTreq(self.api.resource())

    def raw(
        self,
        method: str,
        url: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> Response:
        """
        Send a request exactly as given and collect the response.
        """
        d = self.treq.request(
            method, "http://api.example" + url, data=body or None, headers=headers
        )
        self.treq.flush()
        response = self.successResultOf(d)  # type: ignore[attr-defined]
        content = self.successResultOf(response.content())  # type: ignore[attr-defined]
        return Response(response.code, dict(response.headers.getAllRawHeaders()), content)

    def signed(
        self,
        method: str,
        path: str,
        body: bytes | dict[str, Any] = b"",
        params: list[tuple[str, str]] | None = None,
        key: str = KEY,
        secret: str = SECRET,
        timestamp: int = NOW,
        sent_path: str | None = None,
    ) -> Response:
        """
        Send a request signed the way pusher-http-node does.

        @param sent_path: the path to put on the wire when it differs from
            the one signed.
        """
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        query = sign_api_query(key, secret, method, path, params or [], body, timestamp)
        return self.raw(method, f"{sent_path or path}?{urlencode(query)}", body)

    def trigger(self, payload: Any, app_id: str = "3", **kwargs: Any) -> Response:
        """
        POST a JSON value (or raw bytes) to C{/apps/<id>/events}.
        """
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return self.signed("POST", f"/apps/{app_id}/events", body, **kwargs)

    def batch(self, items: list[Any], app_id: str = "3", **kwargs: Any) -> Response:
        """
        POST a batch to C{/apps/<id>/batch_events}.
        """
        return self.signed("POST", f"/apps/{app_id}/batch_events", {"batch": items}, **kwargs)


class SigningTests(ApiTestMixin, SynchronousTestCase):
    """
    Request signatures, checked against the vectors of pusher-protocol.md
    section 6.1 and the quirks of each SDK.
    """

    def test_documented_trigger_vector(self) -> None:
        """
        The worked example from Pusher's documentation, with its signature
        written out, is accepted and delivered.
        """
        body = b'{"name":"foo","channels":["project-3"],"data":"{\\"some\\":\\"data\\"}"}'
        self.assertEqual(hashlib.md5(body).hexdigest(), "ec365a775a4cd0599faeb73354201b6f")
        url = (
            "/apps/3/events?auth_key=278d425bdf160c739803&auth_timestamp=1353088179"
            "&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f"
            "&auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        )
        response = self.raw("POST", url, body)
        self.assertEqual((response.code, response.json), (200, {}))
        self.assertEqual(
            self.adapter.broadcasts,
            [
                Broadcast(
                    "3",
                    "project-3",
                    b'{"event":"foo","channel":"project-3","data":"{\\"some\\":\\"data\\"}"}',
                    None,
                )
            ],
        )

    def test_documented_channels_vector(self) -> None:
        """
        The node-style C{GET /channels} vector is accepted.
        """
        url = (
            "/apps/3/channels?auth_key=278d425bdf160c739803&auth_timestamp=1353088179"
            "&auth_version=1.0&filter_by_prefix=presence-&info=user_count"
            "&auth_signature=16819168891cb5dfd72b5c7a5d3d602605b26c6ba1930033b5e2eeeb65010291"
        )
        response = self.raw("GET", url)
        self.assertEqual((response.code, response.json), (200, {"channels": {}}))

    def test_python_sdk_body_md5_on_get(self) -> None:
        """
        pusher-http-python sends C{body_md5} of the empty body on GET; the
        documented vector for that is accepted.
        """
        url = (
            "/apps/3/channels?auth_key=278d425bdf160c739803&auth_timestamp=1353088179"
            "&auth_version=1.0&body_md5=d41d8cd98f00b204e9800998ecf8427e"
            "&filter_by_prefix=presence-&info=user_count"
            "&auth_signature=f3f17c61ae491cc9085db68b22076e9b772e3bcb301659d655153ee3f9782aba"
        )
        self.assertEqual(self.raw("GET", url).code, 200)

    def test_node_sdk_unescaped_comma(self) -> None:
        """
        pusher-http-node leaves the comma of C{info=a,b} unescaped; the
        signature is over the decoded value either way.
        """
        self.adapter.subscribe("3", "my-channel", 2)
        query = sign_api_query(
            KEY, SECRET, "GET", "/apps/3/channels/my-channel",
            [("info", "subscription_count")], b"", NOW,
        )  # fmt: skip
        url = "/apps/3/channels/my-channel?" + "&".join(f"{k}={v}" for k, v in query)
        response = self.raw("GET", url)
        self.assertEqual(response.json, {"occupied": True, "subscription_count": 2})

    def test_uppercase_keys(self) -> None:
        """
        Parameter keys are lower-cased before sorting, so a client signing
        with upper-case keys is accepted.
        """
        params = [
            ("AUTH_KEY", KEY),
            ("auth_timestamp", str(NOW)),
            ("auth_version", "1.0"),
        ]
        canonical = "&".join(
            f"{k.lower()}={v}" for k, v in sorted(params, key=lambda p: p[0].lower())
        )
        signature = hmac_sha256_hex(SECRET, f"GET\n/apps/3/channels\n{canonical}")
        url = "/apps/3/channels?" + urlencode([*params, ("auth_signature", signature)])
        self.assertEqual(self.raw("GET", url).code, 200)

    def test_percent_encoded_channel_signed_as_sent(self) -> None:
        """
        A channel name percent-encoded in the path and signed over that
        encoded path is accepted and names the decoded channel.
        """
        self.adapter.join("3", "presence-a@b", "u1")
        path = "/apps/3/channels/" + quote("presence-a@b", safe="")
        response = self.signed("GET", path, params=[("info", "user_count")])
        self.assertEqual((response.code, response.json), (200, {"occupied": True, "user_count": 1}))

    def test_percent_encoded_channel_signed_decoded(self) -> None:
        """
        A client that signs the raw name but whose HTTP stack percent-encodes
        it on the wire is accepted too.
        """
        self.adapter.join("3", "presence-a@b", "u1")
        response = self.signed(
            "GET",
            "/apps/3/channels/presence-a@b/users",
            sent_path="/apps/3/channels/presence-a%40b/users",
        )
        self.assertEqual((response.code, response.json), (200, {"users": [{"id": "u1"}]}))

    def test_bad_signature(self) -> None:
        """
        A signature made with the wrong secret is refused with 401 and the
        service's message, and nothing is delivered.
        """
        response = self.trigger({"name": "e", "channel": "c", "data": "x"}, secret="wrong")
        self.assertEqual(response.code, 401)
        self.assertTrue(
            response.json["error"].startswith("Invalid signature: you should have sent")
        )
        self.assertEqual(self.adapter.broadcasts, [])

    def test_missing_auth_key(self) -> None:
        """
        No C{auth_key} at all is a 401.
        """
        response = self.raw("GET", f"/apps/3/channels?auth_timestamp={NOW}&auth_version=1.0")
        self.assertEqual(
            (response.code, response.json), (401, {"error": "Missing parameter: auth_key"})
        )

    def test_missing_query(self) -> None:
        """
        An unsigned request is a 401.
        """
        self.assertEqual(self.raw("GET", "/apps/3/channels").code, 401)

    def test_key_of_another_app(self) -> None:
        """
        A request correctly signed with app 4's credentials cannot reach app
        3 (Sockudo's [BUG] in sockudo-reference.md section 2.3).
        """
        response = self.trigger(
            {"name": "e", "channel": "c", "data": "x"}, key="key4", secret="secret4"
        )
        self.assertEqual((response.code, response.json), (401, {"error": "Unknown auth_key"}))
        self.assertEqual(self.adapter.broadcasts, [])

    def test_timestamp_window(self) -> None:
        """
        A timestamp 599 s away is accepted; 600 s (either way) is expired.
        """
        self.assertEqual(self.signed("GET", "/apps/3/channels", timestamp=NOW - 599).code, 200)
        self.assertEqual(self.signed("GET", "/apps/3/channels", timestamp=NOW + 599).code, 200)
        old = self.signed("GET", "/apps/3/channels", timestamp=NOW - 600)
        self.assertEqual(old.code, 401)
        self.assertTrue(old.json["error"].startswith("Timestamp expired"))
        self.assertEqual(self.signed("GET", "/apps/3/channels", timestamp=NOW + 600).code, 401)

    def test_body_md5_required(self) -> None:
        """
        A POST with a body but no C{body_md5} is refused even when the rest
        is correctly signed.
        """
        body = b'{"name":"e","channel":"c","data":"x"}'
        params = [("auth_key", KEY), ("auth_timestamp", str(NOW)), ("auth_version", "1.0")]
        canonical = "&".join(f"{k}={v}" for k, v in params)
        signature = hmac_sha256_hex(SECRET, f"POST\n/apps/3/events\n{canonical}")
        url = "/apps/3/events?" + urlencode([*params, ("auth_signature", signature)])
        response = self.raw("POST", url, body)
        self.assertEqual(
            (response.code, response.json), (401, {"error": "Missing parameter: body_md5"})
        )
        self.assertEqual(self.adapter.broadcasts, [])

    def test_body_md5_mismatch(self) -> None:
        """
        A body that is not the one signed is refused.
        """
        signed = b'{"name":"e","channel":"c","data":"x"}'
        query = sign_api_query(KEY, SECRET, "POST", "/apps/3/events", [], signed, NOW)
        response = self.raw(
            "POST", "/apps/3/events?" + urlencode(query), b'{"name":"e","channel":"c","data":"y"}'
        )
        self.assertEqual(response.code, 401)
        self.assertEqual(self.adapter.broadcasts, [])


class AppStatusTests(ApiTestMixin, SynchronousTestCase):
    """
    Unknown apps, disabled apps and unknown paths.
    """

    def test_unknown_app(self) -> None:
        """
        An app id nobody has is a 404 with a JSON body.
        """
        response = self.signed("GET", "/apps/99/channels")
        self.assertEqual(response.code, 404)
        self.assertIn("error", response.json)

    def test_disabled_app_publish(self) -> None:
        """
        A disabled app cannot publish (403) and nothing is delivered.
        """
        response = self.trigger(
            {"name": "e", "channel": "c", "data": "x"}, app_id="5", key="key5", secret="secret5"
        )
        self.assertEqual((response.code, response.json), (403, {"error": "App is disabled"}))
        self.assertEqual(self.adapter.broadcasts, [])

    def test_disabled_app_query(self) -> None:
        """
        A disabled app cannot query either.
        """
        response = self.signed("GET", "/apps/5/channels", key="key5", secret="secret5")
        self.assertEqual(response.code, 403)

    def test_unknown_path(self) -> None:
        """
        A path that is no route is a JSON 404.
        """
        response = self.raw("GET", "/nothing/here")
        self.assertEqual((response.code, response.json), (404, {"error": "Not found"}))

    def test_wrong_method(self) -> None:
        """
        A GET to a POST route is a 405 naming the allowed methods.
        """
        response = self.signed("GET", "/apps/3/events")
        self.assertEqual(response.code, 405)
        self.assertIn(b"POST", response.header(b"Allow") or b"")

    def test_json_content_type(self) -> None:
        """
        Success and error bodies are labelled JSON.
        """
        self.assertEqual(
            self.signed("GET", "/apps/3/channels").header(b"Content-Type"), b"application/json"
        )
        self.assertEqual(self.raw("GET", "/nope").header(b"Content-Type"), b"application/json")


class TriggerTests(ApiTestMixin, SynchronousTestCase):
    """
    C{POST /apps/<id>/events}.
    """

    def test_single_channel(self) -> None:
        """
        C{channel} publishes once to that channel and answers C{{}}.
        """
        response = self.trigger({"name": "e", "channel": "c", "data": "hi"})
        self.assertEqual((response.code, response.json), (200, {}))
        self.assertEqual(
            self.adapter.broadcasts,
            [Broadcast("3", "c", b'{"event":"e","channel":"c","data":"hi"}', None)],
        )

    def test_channels_deduplicated(self) -> None:
        """
        Each unique channel gets one broadcast with its own frame.
        """
        self.trigger({"name": "e", "channels": ["a", "b", "a"], "data": "x"})
        self.assertEqual([b.channel for b in self.adapter.broadcasts], ["a", "b"])
        self.assertEqual(
            json.loads(self.adapter.broadcasts[1].frame),
            {"event": "e", "channel": "b", "data": "x"},
        )

    def test_socket_id_excluded(self) -> None:
        """
        C{socket_id} is handed to the adapter as the socket to skip.
        """
        self.trigger({"name": "e", "channels": ["a", "b"], "data": "x", "socket_id": "123.456"})
        self.assertEqual(
            [b.except_socket_id for b in self.adapter.broadcasts], ["123.456", "123.456"]
        )

    def test_non_string_data(self) -> None:
        """
        JSON data that is not a string is published as its compact
        serialisation (Sockudo's leniency; Pusher wants a string).
        """
        self.trigger({"name": "e", "channel": "c", "data": {"a": [1, 2]}})
        self.assertEqual(json.loads(self.adapter.broadcasts[0].frame)["data"], '{"a":[1,2]}')

    def test_laravel_event_name(self) -> None:
        """
        Event names are not restricted to a charset (Laravel uses
        backslashes).
        """
        response = self.trigger({"name": "App\\Events\\Shipped", "channel": "c", "data": "x"})
        self.assertEqual(response.code, 200)
        self.assertEqual(
            json.loads(self.adapter.broadcasts[0].frame)["event"], "App\\Events\\Shipped"
        )

    def test_server_to_user(self) -> None:
        """
        C{#server-to-user-<id>} is accepted: it is how every SDK's
        C{sendToUser} publishes.
        """
        response = self.trigger({"name": "e", "channel": "#server-to-user-42", "data": "x"})
        self.assertEqual(response.code, 200)
        self.assertEqual(self.adapter.broadcasts[0].channel, "#server-to-user-42")

    def test_info(self) -> None:
        """
        With C{info}, each channel reports the asked attributes:
        C{user_count} only on presence channels, C{subscription_count} on all.
        """
        self.adapter.join("3", "presence-p", "u1")
        self.adapter.join("3", "presence-p", "u2")
        self.adapter.subscribe("3", "presence-p")
        self.adapter.subscribe("3", "pub", 5)
        response = self.trigger(
            {
                "name": "e",
                "channels": ["presence-p", "pub", "empty"],
                "data": "x",
                "info": "user_count,subscription_count",
            }
        )
        self.assertEqual(
            response.json,
            {
                "channels": {
                    "presence-p": {"user_count": 2, "subscription_count": 3},
                    "pub": {"subscription_count": 5},
                    "empty": {"subscription_count": 0},
                }
            },
        )

    def test_info_queried_after_broadcast(self) -> None:
        """
        Delivery does not wait for the counts: the broadcasts happen before
        any query.
        """
        calls: list[str] = []
        original_broadcast = self.adapter.broadcast
        original_count = self.adapter.channel_subscription_count

        def broadcast(*args: Any) -> None:
            calls.append("broadcast")
            original_broadcast(*args)

        def count(*args: Any) -> Any:
            calls.append("count")
            return original_count(*args)

        self.adapter.broadcast = broadcast  # type: ignore[method-assign]
        self.adapter.channel_subscription_count = count  # type: ignore[method-assign]
        self.trigger(
            {"name": "e", "channels": ["a", "b"], "data": "x", "info": "subscription_count"}
        )
        self.assertEqual(calls, ["broadcast", "broadcast", "count", "count"])

    def test_info_without_known_attributes(self) -> None:
        """
        C{info} naming nothing applicable still answers one entry per channel.
        """
        response = self.trigger({"name": "e", "channel": "c", "data": "x", "info": "user_count"})
        self.assertEqual(response.json, {"channels": {"c": {}}})

    def test_cache_channel_stored(self) -> None:
        """
        A publish to a cache channel stores the serialised event, which
        C{GET /channels/<name>?info=cache} then shows with its TTL.
        """
        self.trigger({"name": "e", "channel": "cache-c", "data": "x"})
        frame = self.adapter.broadcasts[0].frame
        self.assertEqual(self.successResultOf(self.cache.fetch("3", "cache-c")), (frame, 1800.0))
        self.clock.advance(100)
        response = self.signed(
            "GET", "/apps/3/channels/cache-c", params=[("info", "cache")], timestamp=NOW + 100
        )
        self.assertEqual(
            response.json,
            {"occupied": False, "cache": {"data": frame.decode(), "ttl": 1700}},
        )

    def test_non_cache_channel_not_stored(self) -> None:
        """
        Other channels leave the cache alone.
        """
        self.trigger({"name": "e", "channel": "c", "data": "x"})
        self.assertIsNone(self.successResultOf(self.cache.fetch("3", "c")))


class RefusalTests(ApiTestMixin, SynchronousTestCase):
    """
    Every malformed or over-limit publish is refused with its status and a
    JSON error, and delivers nothing.
    """

    def assert_refused(self, response: Response, code: int, contains: str = "") -> None:
        """
        C{response} is an error C{code} whose message contains C{contains},
        and nothing was broadcast.
        """
        self.assertEqual(response.code, code, response.body)
        self.assertIn(contains, response.json["error"])
        self.assertEqual(self.adapter.broadcasts, [])
        self.assertIsNone(self.successResultOf(self.cache.fetch("3", "cache-a")))

    def test_bad_json(self) -> None:
        """
        A body that is not JSON is a 400.
        """
        self.assert_refused(self.trigger(b"{nope"), 400, "JSON")

    def test_not_an_object(self) -> None:
        """
        A JSON body that is not an object is a 400.
        """
        self.assert_refused(self.trigger(["a"]), 400, "object")

    def test_missing_name(self) -> None:
        """
        No C{name} is a 400.
        """
        self.assert_refused(self.trigger({"channel": "cache-a", "data": "x"}), 400, "name")

    def test_name_not_string(self) -> None:
        """
        A non-string C{name} is a 400 with the service's message.
        """
        self.assert_refused(
            self.trigger({"name": 3, "channel": "cache-a", "data": "x"}),
            400,
            "Expected name parameter to be a string",
        )

    def test_name_too_long(self) -> None:
        """
        A name over C{max_event_name_length} (200) is a 400.
        """
        self.assertEqual(self.trigger({"name": "e" * 200, "channel": "c", "data": "x"}).code, 200)
        self.adapter.broadcasts.clear()
        self.assert_refused(
            self.trigger({"name": "e" * 201, "channel": "cache-a", "data": "x"}), 400, "long"
        )

    def test_reserved_name(self) -> None:
        """
        C{pusher:} and C{pusher_internal:} names are reserved.
        """
        for name in ("pusher:subscribe", "pusher_internal:member_added"):
            self.assert_refused(
                self.trigger({"name": name, "channel": "cache-a", "data": "x"}), 400, "reserved"
            )

    def test_missing_data(self) -> None:
        """
        No C{data} is a 400.
        """
        self.assert_refused(self.trigger({"name": "e", "channel": "cache-a"}), 400, "data")

    def test_missing_channels(self) -> None:
        """
        Neither C{channel} nor C{channels} is a 400 with Sockudo's message.
        """
        self.assert_refused(
            self.trigger({"name": "e", "data": "x"}),
            400,
            "Request must contain 'channels' (list) or 'channel' (string)",
        )

    def test_empty_channels(self) -> None:
        """
        An empty or non-list C{channels} is a 400.
        """
        self.assert_refused(self.trigger({"name": "e", "channels": [], "data": "x"}), 400)
        self.assert_refused(self.trigger({"name": "e", "channels": "a", "data": "x"}), 400)

    def test_bad_channel_name(self) -> None:
        """
        One invalid name among valid ones refuses the whole publish.
        """
        for bad in ("has space", "", 7, "#not-server-to-user", "x" * 201):
            self.assert_refused(
                self.trigger({"name": "e", "channels": ["cache-a", bad], "data": "x"}), 400
            )

    def test_too_many_channels(self) -> None:
        """
        More than C{max_event_channels_at_once} (100) channels is a 400.
        """
        channels = ["cache-a"] + [f"c{i}" for i in range(100)]
        self.assert_refused(
            self.trigger({"name": "e", "channels": channels, "data": "x"}), 400, "channels"
        )
        self.assertEqual(
            self.trigger({"name": "e", "channels": channels[1:], "data": "x"}).code, 200
        )

    def test_bad_socket_id(self) -> None:
        """
        A C{socket_id} not shaped C{digits.digits} is a 400.
        """
        for socket_id in ("abc", "1.2.3", 1.5, "1."):
            self.assert_refused(
                self.trigger(
                    {"name": "e", "channel": "cache-a", "data": "x", "socket_id": socket_id}
                ),
                400,
                "socket id",
            )

    def test_encrypted_multi_channel(self) -> None:
        """
        An encrypted channel cannot be published to with other channels.
        """
        self.assert_refused(
            self.trigger(
                {"name": "e", "channels": ["cache-a", "private-encrypted-x"], "data": "x"}
            ),
            400,
            "encrypted",
        )
        self.assertEqual(
            self.trigger({"name": "e", "channel": "private-encrypted-x", "data": "x"}).code, 200
        )

    def test_payload_too_large(self) -> None:
        """
        C{data} over C{max_event_payload_in_kb} (10 KB) is a 413 with the
        service's message; exactly 10240 bytes passes.
        """
        response = self.trigger({"name": "e", "channel": "cache-a", "data": "x" * 10241})
        self.assert_refused(response, 413)
        self.assertEqual(response.json, {"error": PAYLOAD_TOO_LARGE})
        self.assertEqual(self.trigger({"name": "e", "channel": "c", "data": "x" * 10240}).code, 200)

    def test_payload_counted_in_bytes(self) -> None:
        """
        The limit counts UTF-8 bytes, not characters.
        """
        self.assert_refused(
            self.trigger({"name": "e", "channel": "cache-a", "data": "é" * 5121}), 413
        )

    def test_request_body_cap(self) -> None:
        """
        A body over C{http_api.request_limit_in_mb} is a 413 before it is
        even parsed.
        """
        body = b"{" + b" " * (1024 * 1024) + b"}"
        self.assert_refused(self.trigger(body), 413, "too large")

    def test_batch_item_invalid(self) -> None:
        """
        One bad batch item refuses the batch: the valid items before it are
        not delivered either.
        """
        self.assert_refused(
            self.batch(
                [
                    {"name": "e", "channel": "cache-a", "data": "x"},
                    {"name": "e", "channel": "bad name", "data": "x"},
                ]
            ),
            400,
            "batch[1]",
        )

    def test_batch_too_large(self) -> None:
        """
        More than C{max_event_batch_size} (10) events is a 400.
        """
        items = [{"name": "e", "channel": "cache-a", "data": "x"}] * 11
        self.assert_refused(self.batch(items), 400, "Batch too large")

    def test_batch_missing(self) -> None:
        """
        A batch body without a C{batch} list is a 400.
        """
        self.assert_refused(
            self.signed("POST", "/apps/3/batch_events", {"events": []}), 400, "batch"
        )

    def test_batch_item_payload_too_large(self) -> None:
        """
        An oversized item refuses the batch with 413.
        """
        self.assert_refused(
            self.batch(
                [
                    {"name": "e", "channel": "cache-a", "data": "x"},
                    {"name": "e", "channel": "c", "data": "x" * 10241},
                ]
            ),
            413,
        )

    def test_app_event_rate(self) -> None:
        """
        Over the app's C{max_backend_events_per_second}, publishes get 429
        with rate-limit headers and are not delivered; the next second
        admits them again.
        """
        kwargs: dict[str, Any] = {"app_id": "6", "key": "key6", "secret": "secret6"}
        event = {"name": "e", "channel": "c", "data": "x"}
        self.assertEqual(self.trigger(event, **kwargs).code, 200)
        self.assertEqual(self.trigger(event, **kwargs).code, 200)
        self.adapter.broadcasts.clear()
        response = self.trigger(event, **kwargs)
        self.assert_refused(response, 429, "Too Many Requests")
        self.assertEqual(response.header(b"X-RateLimit-Limit"), b"2")
        self.assertEqual(response.header(b"X-RateLimit-Remaining"), b"0")
        self.assertEqual(response.header(b"Retry-After"), b"1")
        self.clock.advance(1)
        self.assertEqual(self.trigger(event, timestamp=NOW + 1, **kwargs).code, 200)

    def test_app_event_rate_counts_batch_items(self) -> None:
        """
        A batch counts one per event against the app's event rate.
        """
        kwargs: dict[str, Any] = {"app_id": "6", "key": "key6", "secret": "secret6"}
        item = {"name": "e", "channel": "cache-a", "data": "x"}
        self.assert_refused(self.batch([item, item, item], **kwargs), 429)

    def test_app_read_rate(self) -> None:
        """
        Over the app's C{max_read_requests_per_second}, queries get 429.
        """
        kwargs: dict[str, Any] = {"key": "key7", "secret": "secret7"}
        self.assertEqual(self.signed("GET", "/apps/7/channels", **kwargs).code, 200)
        self.assertEqual(self.signed("GET", "/apps/7/channels", **kwargs).code, 429)
        self.assertEqual(self.signed("GET", "/apps/7/channels/c", **kwargs).code, 429)


class BatchTests(ApiTestMixin, SynchronousTestCase):
    """
    C{POST /apps/<id>/batch_events}.
    """

    def test_publishes_each(self) -> None:
        """
        Each item is published to its channel, with its own C{socket_id}.
        """
        response = self.batch(
            [
                {"name": "e1", "channel": "a", "data": "1"},
                {"name": "e2", "channel": "b", "data": "2", "socket_id": "1.2"},
            ]
        )
        self.assertEqual((response.code, response.json), (200, {}))
        self.assertEqual(
            self.adapter.broadcasts,
            [
                Broadcast("3", "a", b'{"event":"e1","channel":"a","data":"1"}', None),
                Broadcast("3", "b", b'{"event":"e2","channel":"b","data":"2"}', "1.2"),
            ],
        )

    def test_info_index_aligned(self) -> None:
        """
        When any item asks for C{info}, the answer has one entry per item,
        in order, C{{}} for items that asked nothing.
        """
        self.adapter.join("3", "presence-p", "u1")
        self.adapter.subscribe("3", "a", 4)
        response = self.batch(
            [
                {"name": "e", "channel": "a", "data": "1"},
                {"name": "e", "channel": "presence-p", "data": "2", "info": "user_count"},
                {"name": "e", "channel": "a", "data": "3", "info": "subscription_count"},
            ]
        )
        self.assertEqual(
            response.json,
            {"batch": [{}, {"user_count": 1}, {"subscription_count": 4}]},
        )

    def test_empty(self) -> None:
        """
        An empty batch publishes nothing and succeeds.
        """
        self.assertEqual(self.batch([]).json, {})
        self.assertEqual(self.adapter.broadcasts, [])


class ChannelQueryTests(ApiTestMixin, SynchronousTestCase):
    """
    C{GET /apps/<id>/channels}, C{/channels/<name>} and
    C{/channels/<name>/users}.
    """

    def setUp(self) -> None:
        super().setUp()
        self.adapter.join("3", "presence-room", "u1")
        self.adapter.join("3", "presence-room", "u2")
        self.adapter.subscribe("3", "presence-room")
        self.adapter.subscribe("3", "news", 2)
        self.adapter.subscribe("3", "private-x")
        self.adapter.subscriptions[("3", "gone")] = 0
        self.adapter.subscribe("4", "other-app")

    def test_list(self) -> None:
        """
        Every occupied channel of the app is listed with C{{}}.
        """
        response = self.signed("GET", "/apps/3/channels")
        self.assertEqual(
            response.json,
            {"channels": {"news": {}, "presence-room": {}, "private-x": {}}},
        )

    def test_list_prefix(self) -> None:
        """
        C{filter_by_prefix} keeps the channels starting with it.
        """
        response = self.signed("GET", "/apps/3/channels", params=[("filter_by_prefix", "pr")])
        self.assertEqual(response.json, {"channels": {"presence-room": {}, "private-x": {}}})

    def test_list_user_count(self) -> None:
        """
        C{info=user_count} with the C{presence-} filter gives member counts.
        """
        response = self.signed(
            "GET",
            "/apps/3/channels",
            params=[("filter_by_prefix", "presence-"), ("info", "user_count")],
        )
        self.assertEqual(response.json, {"channels": {"presence-room": {"user_count": 2}}})

    def test_list_user_count_needs_presence_filter(self) -> None:
        """
        C{info=user_count} without the C{presence-} filter is a 400.
        """
        response = self.signed("GET", "/apps/3/channels", params=[("info", "user_count")])
        self.assertEqual(response.code, 400)
        self.assertIn("presence", response.json["error"])

    def test_list_subscription_count(self) -> None:
        """
        C{info=subscription_count} lists each channel with its count
        (Sockudo 2.9 dropped them; PR #226).
        """
        response = self.signed("GET", "/apps/3/channels", params=[("info", "subscription_count")])
        self.assertEqual(
            response.json,
            {
                "channels": {
                    "news": {"subscription_count": 2},
                    "presence-room": {"subscription_count": 3},
                    "private-x": {"subscription_count": 1},
                }
            },
        )

    def test_channel(self) -> None:
        """
        C{occupied} is always there; attributes only when asked.
        """
        self.assertEqual(self.signed("GET", "/apps/3/channels/news").json, {"occupied": True})
        self.assertEqual(self.signed("GET", "/apps/3/channels/empty").json, {"occupied": False})
        response = self.signed(
            "GET",
            "/apps/3/channels/presence-room",
            params=[("info", "user_count,subscription_count")],
        )
        self.assertEqual(
            response.json, {"occupied": True, "user_count": 2, "subscription_count": 3}
        )

    def test_channel_user_count_not_presence(self) -> None:
        """
        C{user_count} of a non-presence channel is a 400.
        """
        response = self.signed("GET", "/apps/3/channels/news", params=[("info", "user_count")])
        self.assertEqual(response.code, 400)

    def test_channel_cache_not_cache_channel(self) -> None:
        """
        C{cache} of a channel that is not a cache channel is a 400.
        """
        response = self.signed("GET", "/apps/3/channels/news", params=[("info", "cache")])
        self.assertEqual(response.code, 400)

    def test_channel_cache_empty(self) -> None:
        """
        A cache channel with nothing stored reports C{"cache": null}.
        """
        response = self.signed("GET", "/apps/3/channels/cache-x", params=[("info", "cache")])
        self.assertEqual(response.json, {"occupied": False, "cache": None})

    def test_channel_bad_name(self) -> None:
        """
        An invalid channel name in the path is a 400.
        """
        response = self.signed("GET", "/apps/3/channels/bad%20name", sent_path=None)
        self.assertEqual(response.code, 400)

    def test_users(self) -> None:
        """
        The members of a presence channel, by id.
        """
        response = self.signed("GET", "/apps/3/channels/presence-room/users")
        self.assertEqual(response.json, {"users": [{"id": "u1"}, {"id": "u2"}]})

    def test_users_not_presence(self) -> None:
        """
        C{/users} of a non-presence channel is a 400.
        """
        response = self.signed("GET", "/apps/3/channels/news/users")
        self.assertEqual(
            (response.code, response.json),
            (400, {"error": "Only presence channels support this endpoint"}),
        )


class TerminateTests(ApiTestMixin, SynchronousTestCase):
    """
    C{POST .../users/<id>/terminate_connections}.
    """

    def test_terminate(self) -> None:
        """
        The adapter is asked to close the user's connections; the answer is
        C{{}}.
        """
        response = self.signed("POST", "/apps/3/users/u-1/terminate_connections", b"{}")
        self.assertEqual((response.code, response.json), (200, {}))
        self.assertEqual(self.adapter.terminated, [("3", "u-1")])

    def test_terminate_no_body(self) -> None:
        """
        An empty body (no C{body_md5}) is accepted too.
        """
        response = self.signed("POST", "/apps/3/users/u-1/terminate_connections")
        self.assertEqual(response.code, 200)

    def test_python_sdk_path(self) -> None:
        """
        The un-prefixed path pusher-http-python uses finds the app from
        C{auth_key}.
        """
        response = self.signed(
            "POST", "/users/u-1/terminate_connections", b"{}", key="key4", secret="secret4"
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(self.adapter.terminated, [("4", "u-1")])

    def test_python_sdk_path_unknown_key(self) -> None:
        """
        An unknown C{auth_key} on the un-prefixed path is a 401.
        """
        response = self.signed(
            "POST", "/users/u-1/terminate_connections", b"{}", key="nobody", secret="x"
        )
        self.assertEqual((response.code, response.json), (401, {"error": "Unknown auth_key"}))
        self.assertEqual(self.adapter.terminated, [])

    def test_bad_user_id(self) -> None:
        """
        A user id outside the channel-name charset is a 400.
        """
        response = self.signed("POST", "/apps/3/users/a%20b/terminate_connections", b"{}")
        self.assertEqual(response.code, 400)
        self.assertEqual(self.adapter.terminated, [])


class PreflightTests(ApiTestMixin, SynchronousTestCase):
    """
    CORS preflight requests.
    """

    def test_any_origin(self) -> None:
        """
        With the default C{cors.origin} of C{*}, a preflight is allowed.
        """
        response = self.raw("OPTIONS", "/apps/3/events", headers={"Origin": "https://a.example"})
        self.assertEqual(response.code, 204)
        self.assertEqual(response.header(b"Access-Control-Allow-Origin"), b"*")
        self.assertIn(b"POST", response.header(b"Access-Control-Allow-Methods") or b"")

    def test_listed_origin(self) -> None:
        """
        With a list of origins, a listed one is echoed with credentials and
        another is refused.
        """
        api = PusherApi(
            clock=self.clock,
            app_store=self.apps,
            adapter=self.adapter,
            cache=self.cache,
            cors_origins=["https://a.example"],
        )
        self.treq = StubTreq(api.resource())
        ok = self.raw("OPTIONS", "/apps/3/events", headers={"Origin": "https://a.example"})
        self.assertEqual(ok.header(b"Access-Control-Allow-Origin"), b"https://a.example")
        self.assertEqual(ok.header(b"Access-Control-Allow-Credentials"), b"true")
        no = self.raw("OPTIONS", "/apps/3/events", headers={"Origin": "https://b.example"})
        self.assertEqual(no.code, 403)


class CountingSite(Site):
    """
    A site that counts the TCP connections it accepts.
    """

    connections = 0

    def buildProtocol(self, addr: Any) -> Any:
        self.connections += 1
        return super().buildProtocol(addr)


class KeepAliveTests(TestCase):
    """
    Over a real loopback socket, several API calls share one HTTP/1.1
    connection.
    """

    async def _calls(self, url: str, count: int) -> list[int]:
        """
        Make C{count} signed triggers through one persistent pool.
        """
        from twisted.internet import reactor

        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        client = HTTPClient(Agent(reactor, pool=pool))
        codes = []
        for i in range(count):
            body = json.dumps({"name": "e", "channel": "c", "data": str(i)}).encode()
            query = sign_api_query(KEY, SECRET, "POST", "/apps/3/events", [], body, NOW)
            response = await client.post(f"{url}/apps/3/events?{urlencode(query)}", data=body)
            await response.content()
            codes.append(response.code)
        return codes

    def test_keep_alive(self) -> Deferred[None]:
        """
        Three triggers succeed over a single accepted connection.
        """
        from twisted.internet import reactor

        clock = Clock()
        clock.advance(NOW)
        adapter = RecordingAdapter()
        api = PusherApi(
            clock=clock,
            app_store=MemoryAppStore([App(id="3", key=KEY, secret=SECRET)]),
            adapter=adapter,
            cache=MemoryChannelCache(clock),
        )
        site = CountingSite(api.resource())
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}"

        async def check() -> None:
            codes = await self._calls(url, 3)
            self.assertEqual(codes, [200, 200, 200])
            self.assertEqual(site.connections, 1)
            self.assertEqual(len(adapter.broadcasts), 3)

        return Deferred.fromCoroutine(check())


@implementer_only(IAppStore)
class _PendingAppStore(MemoryAppStore):
    """
    A memory app store whose C{find_by_id} answers only when the test says,
    like a remote store would.
    """

    def __init__(self, apps: list[App]) -> None:
        super().__init__(apps)
        self.pending: list[tuple[Deferred[App | None], App | None]] = []

    def find_by_id(self, app_id: str) -> Deferred[App | None]:
        d: Deferred[App | None] = Deferred()
        self.pending.append((d, self.memory_answer(app_id)))
        return d

    def memory_answer(self, app_id: str) -> App | None:
        """
        What the memory store would have answered.
        """
        found: list[App | None] = []
        super().find_by_id(app_id).addCallback(found.append)
        return found[0]


class _FailingAdapter(RecordingAdapter):
    """
    An adapter whose broadcast fails, as a bug would.
    """

    def broadcast(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")


class TriggerFastPathTests(ApiTestMixin, SynchronousTestCase):
    """
    C{POST /apps/{id}/events} skips Klein but answers as Klein would.
    """

    def _request(self, api: PusherApi, path: str = "/apps/3/events") -> tuple[Request, Any]:
        """
        Start a signed trigger through a real C{Request} on a fake channel.

        @return: the request and the channel's transport.
        """
        body = json.dumps({"name": "e", "channel": "c", "data": "d"}).encode()
        query = sign_api_query(KEY, SECRET, "POST", path, [], body, NOW)
        channel = DummyChannel()
        channel.site = Site(api.resource())
        request = Request(channel)
        request.gotLength(len(body))
        request.handleContentChunk(body)
        request.requestReceived(b"POST", f"{path}?{urlencode(query)}".encode(), b"HTTP/1.1")
        return request, channel.transport

    def test_pending_store_answers_later(self) -> None:
        """
        While the app lookup is pending nothing is written; when it answers
        the event is published and the 200 is sent.
        """
        store = _PendingAppStore([App(id="3", key=KEY, secret=SECRET)])
        api = PusherApi(clock=self.clock, app_store=store, adapter=self.adapter, cache=self.cache)
        request, transport = self._request(api)
        self.assertEqual(transport.written.getvalue(), b"")
        d, app = store.pending[0]
        d.callback(app)
        self.assertTrue(transport.written.getvalue().startswith(b"HTTP/1.1 200 OK"))
        self.assertEqual(len(self.adapter.broadcasts), 1)
        self.assertTrue(request.finished)

    def test_client_gone_cancels(self) -> None:
        """
        A client that disconnects while the lookup is pending cancels the
        trigger: nothing is published or written, and nothing is logged.
        """
        store = _PendingAppStore([App(id="3", key=KEY, secret=SECRET)])
        api = PusherApi(clock=self.clock, app_store=store, adapter=self.adapter, cache=self.cache)
        request, transport = self._request(api)
        request.connectionLost(Failure(ConnectionDone()))
        d, _ = store.pending[0]
        self.assertTrue(d.called)
        self.assertEqual(self.adapter.broadcasts, [])
        self.assertEqual(transport.written.getvalue(), b"")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_internal_error(self) -> None:
        """
        A bug in the trigger path is logged and answered with the JSON 500.
        """
        api = PusherApi(
            clock=self.clock, app_store=self.apps, adapter=_FailingAdapter(), cache=self.cache
        )
        self.treq = StubTreq(api.resource())
        response = self.trigger({"name": "e", "channel": "c", "data": "d"})
        self.assertEqual((response.code, response.json), (500, {"error": "Internal Server Error"}))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_memory_store_answers_at_once(self) -> None:
        """
        With the memory store (an L{ISyncAppLookup}) a trigger is answered
        by C{serve} itself, not later through a Deferred, and a failing
        C{find_by_id} is never asked: C{find_now} is.
        """

        class NoDeferredStore(MemoryAppStore):
            def find_by_id(self, app_id: str) -> Deferred[App | None]:
                raise AssertionError("find_by_id called")

        store = NoDeferredStore([App(id="3", key=KEY, secret=SECRET)])
        self.assertTrue(ISyncAppLookup.providedBy(store))
        self.assertIsNone(store.find_now("9"))
        api = PusherApi(clock=self.clock, app_store=store, adapter=self.adapter, cache=self.cache)
        body = json.dumps({"name": "e", "channel": "c", "data": "d"}).encode()
        query = sign_api_query(KEY, SECRET, "POST", "/apps/3/events", [], body, NOW)
        answer = api.serve(
            HttpRequest(b"POST", b"/apps/3/events", urlencode(query).encode(), {}, body)
        )
        assert isinstance(answer, HttpResponse)
        self.assertEqual((answer.status, answer.body), (200, b"{}"))
        self.assertEqual(len(self.adapter.broadcasts), 1)
        unknown = api.serve(HttpRequest(b"POST", b"/apps/9/events", b"", {}, body))
        assert isinstance(unknown, HttpResponse)
        self.assertEqual(unknown.status, 404)

    def test_cache_channel_kept_others_not(self) -> None:
        """
        A trigger to a cache channel keeps its frame; one to a channel that
        merely has C{cache-} inside its name, or none, keeps nothing.
        """
        for channel in ("private-cache-x", "foo-cache-bar", "plain"):
            response = self.trigger({"name": "e", "channel": channel, "data": "d"})
            self.assertEqual(response.code, 200)
        self.assertIsNotNone(self.successResultOf(self.cache.fetch("3", "private-cache-x")))
        self.assertIsNone(self.successResultOf(self.cache.fetch("3", "foo-cache-bar")))
        self.assertIsNone(self.successResultOf(self.cache.fetch("3", "plain")))
