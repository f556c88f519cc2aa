"""
Tests for L{sockudo_tw.config}: Sockudo's file structure, environment
overrides, embedded defaults and every class of error.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from sockudo_tw.config import (
    ConfigError,
    ServerConfig,
    load_config,
    parse_config,
    parse_permission_mode,
)
from sockudo_tw.pusher.app import App

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _app(**fields: Any) -> dict[str, Any]:
    """
    A minimal Sockudo app object with C{fields} added.
    """
    app: dict[str, Any] = {"id": "1", "key": "k", "secret": "s"}
    app.update(fields)
    return app


def _with_apps(*apps: dict[str, Any]) -> dict[str, Any]:
    """
    A config file body defining C{apps}.
    """
    return {"app_manager": {"driver": "memory", "array": {"apps": list(apps)}}}


class DefaultsTests(SynchronousTestCase):
    """
    With no file and no environment the server has Sockudo's defaults and
    one default app.
    """

    def test_embedded(self) -> None:
        """
        0.0.0.0:6001, local adapter, memory drivers, app-id/app-key/app-secret.
        """
        config = parse_config(None, {})
        self.assertEqual((config.host, config.port), ("0.0.0.0", 6001))
        self.assertEqual(config.adapter.driver, "local")
        self.assertEqual(config.app_manager.driver, "memory")
        self.assertEqual(config.cache.driver, "memory")
        self.assertEqual(config.queue.driver, "memory")
        self.assertEqual(config.rate_limiter.driver, "memory")
        self.assertFalse(config.rate_limiter.enabled)
        self.assertEqual(config.app_manager.apps, (App("app-id", "app-key", "app-secret"),))
        self.assertFalse(config.debug)
        self.assertEqual(config.warnings, ())

    def test_default_app_from_env(self) -> None:
        """
        C{SOCKUDO_DEFAULT_APP_*} and C{SOCKUDO_ENABLE_CLIENT_MESSAGES} shape
        the default app.
        """
        config = parse_config(
            None,
            {
                "SOCKUDO_DEFAULT_APP_ID": "42",
                "SOCKUDO_DEFAULT_APP_KEY": "key42",
                "SOCKUDO_DEFAULT_APP_SECRET": "sec42",
                "SOCKUDO_ENABLE_CLIENT_MESSAGES": "yes",
                "SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS": "7",
                "SOCKUDO_DEFAULT_APP_ENABLE_USER_AUTHENTICATION": "on",
            },
        )
        (app,) = config.app_manager.apps
        self.assertEqual((app.id, app.key, app.secret), ("42", "key42", "sec42"))
        self.assertTrue(app.enable_client_messages)
        self.assertTrue(app.enable_user_authentication)
        self.assertEqual(app.max_connections, 7)

    def test_file_apps_without_default(self) -> None:
        """
        A file that defines apps gets no default app unless the default
        app's variables are set.
        """
        config = parse_config(_with_apps(_app()), {})
        self.assertEqual([a.id for a in config.app_manager.apps], ["1"])
        config = parse_config(_with_apps(_app()), {"SOCKUDO_DEFAULT_APP_ID": "d"})
        self.assertEqual([a.id for a in config.app_manager.apps], ["1", "d"])

    def test_default_app_key_clash(self) -> None:
        """
        A default app reusing a configured app's key is an error.
        """
        with self.assertRaises(ConfigError) as e:
            parse_config(_with_apps(_app(key="app-key")), {"SOCKUDO_DEFAULT_APP_ID": "d"})
        self.assertIn("SOCKUDO_DEFAULT_APP_KEY", str(e.exception))


class FileTests(SynchronousTestCase):
    """
    Reading Sockudo's config.json structure.
    """

    def test_sample(self) -> None:
        """
        The shipped C{etc/sockudo/config.json} loads with no warnings.
        """
        config = load_config(os.path.join(ROOT, "etc", "sockudo", "config.json"), {})
        self.assertIsInstance(config, ServerConfig)
        self.assertEqual(config.warnings, ())
        self.assertEqual(config.port, 6001)
        self.assertEqual(config.app_manager.apps[0].key, "app-key")
        self.assertEqual(config.app_manager.apps[0].max_presence_members_per_channel, 100)

    def test_numbers_or_strings(self) -> None:
        """
        Every numeric app field takes a number or a numeric string; null or
        absent optional limits take L{App}'s defaults.
        """
        config = parse_config(
            _with_apps(
                _app(
                    max_connections="5",
                    max_client_events_per_second=3,
                    max_event_payload_in_kb="20",
                    max_presence_members_per_channel=None,
                    enabled=True,
                    enable_client_messages=True,
                )
            ),
            {},
        )
        (app,) = config.app_manager.apps
        self.assertEqual(app.max_connections, 5)
        self.assertEqual(app.max_client_events_per_second, 3)
        self.assertEqual(app.max_event_payload_in_kb, 20)
        self.assertEqual(app.max_presence_members_per_channel, 100)
        self.assertEqual(app.max_event_batch_size, App("", "", "").max_event_batch_size)
        self.assertTrue(app.enable_client_messages)

    def test_webhooks(self) -> None:
        """
        Webhook targets parse, including Sockudo's nested headers and filter.
        """
        hook = {
            "url": "http://127.0.0.1/h",
            "event_types": ["channel_occupied"],
            "headers": {"headers": {"X-A": "b"}},
            "filter": {"channel_prefix": "private-"},
        }
        (app,) = parse_config(_with_apps(_app(webhooks=[hook])), {}).app_manager.apps
        (target,) = app.webhooks
        self.assertEqual(target.url, "http://127.0.0.1/h")
        self.assertEqual(target.event_types, ("channel_occupied",))
        self.assertEqual(dict(target.headers), {"X-A": "b"})
        self.assertEqual(target.channel_prefix, "private-")

    def test_unknown_keys_warn(self) -> None:
        """
        Keys we do not implement become warnings naming their path.
        """
        config = parse_config(
            {"cleanup": {"async_enabled": True}, "adapter": {"frobnicate": 1}},
            {},
        )
        self.assertIn("cleanup: ignored; a disconnect is cleaned up at once", config.warnings)
        self.assertIn("adapter.frobnicate: not implemented, ignored", config.warnings)

    def test_missing_keys_default(self) -> None:
        """
        A partial file keeps the defaults of everything it leaves out.
        """
        config = parse_config({"port": 7000}, {})
        self.assertEqual(config.port, 7000)
        self.assertEqual(config.host, "0.0.0.0")
        self.assertEqual(config.metrics.port, 9601)


class PermissionModeTests(SynchronousTestCase):
    """
    The three accepted forms of C{unix_socket.permission_mode}.
    """

    def test_forms(self) -> None:
        """
        C{"755"}, C{755} and C{493} all mean C{0o755}.
        """
        for value in ("755", 755, 493):
            self.assertEqual(parse_permission_mode(value, "m"), 0o755, value)

    def test_octal_digit_numbers(self) -> None:
        """
        Numbers whose digits are octal and at most 777 read as octal digits.
        """
        self.assertEqual(parse_permission_mode(660, "m"), 0o660)
        self.assertEqual(parse_permission_mode(600, "m"), 0o600)
        # The ambiguity the rule resolves: 432 is 0o660 in decimal, but its
        # digits are octal, so it reads as 0o432.
        self.assertEqual(parse_permission_mode(432, "m"), 0o432)
        self.assertEqual(parse_permission_mode(488, "m"), 0o750)

    def test_invalid(self) -> None:
        """
        Other values are errors naming the key.
        """
        for value in ("789", "", 1000, -1, True, 9.5, "0o1000"):
            with self.assertRaises(ConfigError, msg=repr(value)) as e:
                parse_permission_mode(value, "unix_socket.permission_mode")
            self.assertIn("unix_socket.permission_mode", str(e.exception))

    def test_from_config_and_env(self) -> None:
        """
        The file and C{UNIX_SOCKET_PERMISSION_MODE} both use the rule.
        """
        config = parse_config({"unix_socket": {"permission_mode": 493}}, {})
        self.assertEqual(config.unix_socket.permission_mode, 0o755)
        config = parse_config({}, {"UNIX_SOCKET_PERMISSION_MODE": "600"})
        self.assertEqual(config.unix_socket.permission_mode, 0o600)


class EnvironmentTests(SynchronousTestCase):
    """
    Sockudo's environment variables override the file.
    """

    def test_general(self) -> None:
        """
        Top-level values, drivers and nested sections are overridden.
        """
        env = {
            "PORT": "7001",
            "HOST": "127.0.0.1",
            "ACTIVITY_TIMEOUT": "30",
            "SHUTDOWN_GRACE_PERIOD": "3",
            "ADAPTER_DRIVER": "REDIS",
            "CACHE_DRIVER": "Memory",
            "QUEUE_DRIVER": "redis",
            "APP_MANAGER_DRIVER": "MEMORY",
            "RATE_LIMITER_DRIVER": "memory",
            "RATE_LIMITER_ENABLED": "on",
            "RATE_LIMITER_API_MAX_REQUESTS": "5",
            "METRICS_ENABLED": "false",
            "METRICS_PORT": "9700",
            "WEBHOOK_BATCHING_ENABLED": "0",
            "WEBHOOK_BATCHING_DURATION": "75",
            "UNIX_SOCKET_ENABLED": "1",
            "UNIX_SOCKET_PATH": "/run/x.sock",
            "LOG_OUTPUT_FORMAT": "json",
            "CORS_ORIGINS": "https://a.example, https://b.example",
        }
        config = parse_config({"port": 1234, "host": "::1"}, env)
        self.assertEqual((config.host, config.port), ("127.0.0.1", 7001))
        self.assertEqual(config.activity_timeout, 30)
        self.assertEqual(config.shutdown_grace_period, 3)
        self.assertEqual(config.adapter.driver, "redis")
        self.assertEqual(config.cache.driver, "memory")
        self.assertEqual(config.queue.driver, "redis")
        self.assertEqual(config.app_manager.driver, "memory")
        self.assertTrue(config.rate_limiter.enabled)
        self.assertEqual(config.rate_limiter.api_rate_limit.max_requests, 5)
        self.assertFalse(config.metrics.enabled)
        self.assertEqual(config.metrics.port, 9700)
        self.assertFalse(config.webhooks.batching_enabled)
        self.assertEqual(config.webhooks.batching_duration_ms, 75)
        self.assertTrue(config.unix_socket.enabled)
        self.assertEqual(config.unix_socket.path, "/run/x.sock")
        self.assertEqual(config.logging.output_format, "json")
        self.assertEqual(config.cors.origin, ("https://a.example", "https://b.example"))

    def test_redis_url(self) -> None:
        """
        C{REDIS_URL} sets the adapter, cache, queue and rate limiter URLs.
        """
        config = parse_config(None, {"REDIS_URL": "redis://:pw@127.0.0.1:6380/2"})
        url = "redis://:pw@127.0.0.1:6380/2"
        self.assertEqual(config.adapter.redis_url, url)
        self.assertEqual(config.cache.redis_url_override, url)
        self.assertEqual(config.queue.redis_url_override, url)
        self.assertEqual(config.rate_limiter.redis_url_override, url)

    def test_debug(self) -> None:
        """
        C{DEBUG} wins over C{DEBUG_MODE}; either overrides the file.
        """
        self.assertTrue(parse_config({}, {"DEBUG_MODE": "true"}).debug)
        self.assertFalse(parse_config({"debug": True}, {"DEBUG": "0"}).debug)
        self.assertTrue(parse_config({}, {"DEBUG": "yes", "DEBUG_MODE": "no"}).debug)

    def test_cluster_health(self) -> None:
        """
        C{CLUSTER_HEALTH_*} reach C{adapter.cluster_health}, the copy the
        adapters use (unlike Sockudo).
        """
        config = parse_config(
            None,
            {
                "CLUSTER_HEALTH_ENABLED": "false",
                "CLUSTER_HEALTH_HEARTBEAT_INTERVAL": "1000",
                "CLUSTER_HEALTH_NODE_TIMEOUT": "5000",
                "CLUSTER_HEALTH_CLEANUP_INTERVAL": "2000",
            },
        )
        health = config.adapter.cluster_health
        self.assertFalse(health.enabled)
        self.assertEqual(
            (health.heartbeat_interval_ms, health.node_timeout_ms, health.cleanup_interval_ms),
            (1000, 5000, 2000),
        )

    def test_env_does_not_mutate_input(self) -> None:
        """
        Overrides apply to a copy of the parsed file.
        """
        data: dict[str, Any] = {"adapter": {"driver": "local"}}
        parse_config(data, {"ADAPTER_DRIVER": "redis"})
        self.assertEqual(data, {"adapter": {"driver": "local"}})


class ErrorTests(SynchronousTestCase):
    """
    Each class of invalid input raises L{ConfigError} naming where and what.
    """

    def assert_error(self, data: Any, env: dict[str, str], *parts: str) -> None:
        """
        C{parse_config(data, env)} fails with a message containing C{parts}.
        """
        with self.assertRaises(ConfigError) as e:
            parse_config(data, env)
        for part in parts:
            self.assertIn(part, str(e.exception))

    def test_bad_json(self) -> None:
        """
        A file that is not JSON names the file and the position.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('{"port": 6001,,}')
        with self.assertRaises(ConfigError) as e:
            load_config(path, {})
        self.assertIn(path, str(e.exception))
        self.assertIn("line 1", str(e.exception))

    def test_missing_file(self) -> None:
        """
        A config path that does not exist is an error naming it.
        """
        with self.assertRaises(ConfigError) as e:
            load_config("/nonexistent/config.json", {})
        self.assertIn("/nonexistent/config.json", str(e.exception))

    def test_top_level_not_object(self) -> None:
        """
        The file must hold an object.
        """
        self.assert_error([1, 2], {}, "expected a JSON object")

    def test_wrong_types(self) -> None:
        """
        Wrong types name the key path and what was expected.
        """
        self.assert_error({"port": "abc"}, {}, "port: expected an integer from 1 to 65535")
        self.assert_error({"debug": "maybe"}, {}, "debug: expected true or false")
        self.assert_error({"host": 5}, {}, "host: expected a string")
        self.assert_error({"adapter": []}, {}, "adapter: expected an object")
        self.assert_error({"cors": {"origin": "*"}}, {}, "cors.origin: expected a list of strings")
        self.assert_error(
            _with_apps(_app(max_connections="abc")),
            {},
            "app_manager.array.apps[0].max_connections: expected a non-negative integer"
            " or numeric string, got 'abc'",
        )
        self.assert_error(_with_apps(_app(enabled="x")), {}, "apps[0].enabled")
        self.assert_error(_with_apps({"id": "1", "key": "k"}), {}, "apps[0].secret")
        self.assert_error(_with_apps(_app(), _app()), {}, "apps[1].id: duplicate")
        self.assert_error(
            _with_apps(_app(webhooks=[{"event_types": []}])), {}, "apps[0].webhooks[0]"
        )

    def test_unknown_driver(self) -> None:
        """
        Driver names outside Sockudo's lists are errors.
        """
        self.assert_error({"adapter": {"driver": "zmq"}}, {}, "adapter.driver", "'zmq'")
        self.assert_error({"cache": {"driver": "memcached"}}, {}, "cache.driver")
        self.assert_error({"queue": {"driver": "kafka"}}, {}, "queue.driver")
        self.assert_error({"app_manager": {"driver": "mongo"}}, {}, "app_manager.driver")
        self.assert_error({}, {"ADAPTER_DRIVER": "zmq"}, "ADAPTER_DRIVER", "adapter.driver")

    def test_port_range(self) -> None:
        """
        Ports outside 1-65535 are errors, from the file or the environment.
        """
        self.assert_error({"port": 0}, {}, "port: expected an integer from 1 to 65535")
        self.assert_error({"port": 70000}, {}, "port")
        self.assert_error({"metrics": {"port": 65536}}, {}, "metrics.port")
        self.assert_error({}, {"PORT": "70000"}, "PORT", "port")

    def test_malformed_env_number(self) -> None:
        """
        Unlike Sockudo, a malformed number or boolean in the environment is
        an error naming the variable.
        """
        self.assert_error({}, {"PORT": "six"}, "PORT", "'six'")
        self.assert_error({}, {"METRICS_ENABLED": "perhaps"}, "METRICS_ENABLED")
        self.assert_error(None, {"SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS": "x"}, "MAX_CONNECTIONS")

    def test_ssl_files(self) -> None:
        """
        With C{ssl.enabled}, missing or unreadable cert/key files are errors.
        """
        self.assert_error({"ssl": {"enabled": True}}, {}, "ssl.cert_path")
        self.assert_error(
            {"ssl": {"enabled": True, "cert_path": "/nonexistent/c.pem", "key_path": "x"}},
            {},
            "ssl.cert_path",
            "/nonexistent/c.pem",
        )
        cert = self.mktemp()
        with open(cert, "w") as f:
            f.write("x")
        self.assert_error(
            {"ssl": {"enabled": True, "cert_path": cert, "key_path": "/nonexistent/k.pem"}},
            {},
            "ssl.key_path",
        )
        self.assertFalse(parse_config({"ssl": {"enabled": False}}, {}).ssl.enabled)

    def test_unix_socket_path(self) -> None:
        """
        An enabled Unix socket needs an absolute path without C{..}.
        """
        self.assert_error(
            {"unix_socket": {"enabled": True, "path": "run/x.sock"}}, {}, "unix_socket.path"
        )
        self.assert_error(
            {"unix_socket": {"enabled": True, "path": "/run/../x.sock"}}, {}, "unix_socket.path"
        )

    def test_bad_permission_mode(self) -> None:
        """
        A bad mode in the file or environment is an error.
        """
        self.assert_error({"unix_socket": {"permission_mode": "999"}}, {}, "permission_mode")
        self.assert_error({}, {"UNIX_SOCKET_PERMISSION_MODE": "rw"}, "UNIX_SOCKET_PERMISSION_MODE")

    def test_cluster_health_sanity(self) -> None:
        """
        The heartbeat must be at most a third of the node timeout.
        """
        self.assert_error(
            {"adapter": {"cluster_health": {"heartbeat_interval_ms": 20000}}},
            {},
            "adapter.cluster_health.heartbeat_interval_ms",
        )

    def test_json_roundtrip_of_message(self) -> None:
        """
        Long bad values are shortened in messages.
        """
        with self.assertRaises(ConfigError) as e:
            parse_config({"port": "x" * 500}, {})
        self.assertLess(len(str(e.exception)), 200)
        self.assertTrue(json.dumps(str(e.exception)))


class WebSocketLimitsTests(SynchronousTestCase):
    """
    C{websocket_limits}: per-connection subscriptions and message rate.
    """

    def test_defaults(self) -> None:
        """
        Generous defaults: 1000 channels, 100 messages/s, a burst of 1100
        (above the channel cap: pusher-js re-subscribes all at once).
        """
        limits = parse_config({}, {}).websocket_limits
        self.assertEqual(
            (limits.max_subscriptions, limits.messages_per_second, limits.message_burst),
            (1000, 100, 1100),
        )
        self.assertEqual(ServerConfig().websocket_limits, limits)

    def test_set(self) -> None:
        """
        Each key is read; 0 turns a bound off.
        """
        limits = parse_config(
            {
                "websocket_limits": {
                    "max_subscriptions": 0,
                    "messages_per_second": "20",
                    "message_burst": 50,
                }
            },
            {},
        ).websocket_limits
        self.assertEqual(
            (limits.max_subscriptions, limits.messages_per_second, limits.message_burst),
            (0, 20, 50),
        )
        off = parse_config(
            {"websocket_limits": {"messages_per_second": 0, "message_burst": 0}}, {}
        ).websocket_limits
        self.assertEqual((off.messages_per_second, off.message_burst), (0, 0))

    def test_refused(self) -> None:
        """
        A burst at or below the channel cap, a negative value or an unknown
        key is refused, naming the key.
        """
        for section, key in (
            ({"max_subscriptions": 2000}, "websocket_limits.message_burst"),
            ({"message_burst": 1000}, "websocket_limits.message_burst"),
            ({"max_subscriptions": -1}, "websocket_limits.max_subscriptions"),
            ({"messages_per_second": "fast"}, "websocket_limits.messages_per_second"),
        ):
            with self.assertRaises(ConfigError) as e:
                parse_config({"websocket_limits": section}, {})
            self.assertIn(key, str(e.exception))
        config = parse_config({"websocket_limits": {"max_subscription": 5}}, {})
        self.assertTrue(
            any("websocket_limits.max_subscription" in w for w in config.warnings),
            config.warnings,
        )

    def test_wired_to_factory(self) -> None:
        """
        The service builds its WebSocket factory with these limits.
        """
        from twisted.internet.task import Clock
        from twisted.web.resource import Resource

        import sockudo_tw.websocket
        from sockudo_tw import service
        from sockudo_tw.appstores import MemoryAppStore
        from sockudo_tw.caches import MemoryChannelCache

        built: list[dict[str, Any]] = []

        class Factory:
            protocols: set[object] = set()

            def __init__(self, **options: Any) -> None:
                built.append(options)

            def websocket_resource(self) -> Resource:
                return Resource()

            def close_connections(self, code: int, reason: str) -> None:
                pass

        self.patch(sockudo_tw.websocket, "PusherFactory", Factory)
        config = parse_config(
            {
                "websocket_limits": {
                    "max_subscriptions": 7,
                    "messages_per_second": 8,
                    "message_burst": 9,
                }
            },
            {},
        )
        clock = Clock()
        service._websocket_resource(
            config, clock, MemoryAppStore([]), None, MemoryChannelCache(clock)
        )
        [options] = built
        self.assertEqual(
            (
                options["max_subscriptions"],
                options["messages_per_second"],
                options["message_burst"],
            ),
            (7, 8, 9),
        )


SHIPPED = os.path.join(ROOT, "tests", "data", "sockudo-config.json")
"""
Sockudo 2.9's own C{config/config.json}, as shipped (the italic values of
sockudo-reference.md section 4.2).
"""


def _warned(config: ServerConfig) -> set[str]:
    """
    The key (or variable) each warning names.
    """
    return {warning.split(":", 1)[0].split(" (sets ")[0] for warning in config.warnings}


class ShippedConfigTests(SynchronousTestCase):
    """
    Sockudo's own config file loads and means what it means to Sockudo.
    """

    def test_limits_honoured(self) -> None:
        """
        The global C{event_limits}, C{channel_limits} and C{presence}
        sections become the app's limits, since its app leaves them unset.
        """
        config = load_config(SHIPPED, {})
        (app,) = config.app_manager.apps
        self.assertEqual(app.max_event_payload_in_kb, 1000)
        self.assertEqual(app.max_event_batch_size, 100)
        self.assertEqual(app.max_event_channels_at_once, 1000)
        self.assertEqual(app.max_event_name_length, 2000)
        self.assertEqual(app.max_channel_name_length, 200)
        self.assertEqual(app.max_presence_members_per_channel, 100)
        self.assertEqual(app.max_presence_member_size_in_kb, 2)
        self.assertEqual(app.max_client_events_per_second, 1000)
        self.assertEqual(config.channel_cache_ttl, 3600)

    def test_expected_warnings(self) -> None:
        """
        Exactly the keys sockudo-tw ignores (harmlessly) are named; the
        settings of unselected drivers (C{database.mysql}, C{queue.sqs},
        C{adapter.nats}, ...) are not.
        """
        config = load_config(SHIPPED, {})
        expected = {
            "mode",
            "instance.process_id",
            "logging.colors_enabled",
            "database.redis.key_prefix",
            "cache.memory.ttl",
            "cache.memory.cleanup_interval",
            "cache.memory.max_capacity",
            "cleanup",
            "adapter.cluster.use_connection_manager",
        }
        warned = _warned(config)
        self.assertEqual(warned - {"http_api.accept_traffic"}, expected, config.warnings)


class ShippedConfigApiTests(SynchronousTestCase):
    """
    Through the HTTP API, Sockudo's shipped file allows what Sockudo allows.
    """

    def setUp(self) -> None:
        from tests.test_api import ApiTestMixin

        class Api(ApiTestMixin, SynchronousTestCase):
            pass

        self.api = Api()
        self.api.setUp()

    def use(self, config: ServerConfig) -> None:
        """
        Serve C{config}'s apps.
        """
        from treq.testing import StubTreq

        from sockudo_tw.api import PusherApi
        from sockudo_tw.appstores import MemoryAppStore
        from sockudo_tw.ratelimit import MemoryRateLimiter

        api = self.api
        api.api = PusherApi(
            clock=api.clock,
            app_store=MemoryAppStore(config.app_manager.apps),
            adapter=api.adapter,
            cache=api.cache,
            rate_limiter=MemoryRateLimiter(api.clock),
            request_limit_in_mb=2,
        )
        api.treq = StubTreq(api.api.resource())

    def test_50kb_trigger_and_batch_of_20(self) -> None:
        """
        A 50 KB trigger and a batch of 20 are accepted (Sockudo's shipped
        C{event_limits}); without the global sections the same app gets
        Pusher's 10 KB and 10 events.
        """
        event = {"name": "e", "channel": "c", "data": "x" * 50_000}
        signing = {"app_id": "app-id", "key": "app-key", "secret": "app-secret"}
        self.use(load_config(SHIPPED, {}))
        self.assertEqual(self.api.trigger(event, **signing).code, 200)
        small = {"name": "e", "channel": "c", "data": "x"}
        self.assertEqual(self.api.batch([small] * 20, **signing).code, 200)

        with open(SHIPPED, encoding="utf-8") as f:
            data = json.load(f)
        for section in ("event_limits", "channel_limits", "presence"):
            del data[section]
        self.use(parse_config(data, {}))
        self.assertEqual(self.api.trigger(event, **signing).code, 413)
        self.assertEqual(self.api.batch([small] * 20, **signing).code, 400)


class GlobalLimitsTests(SynchronousTestCase):
    """
    The global limit sections are the defaults of every app's C{max_*}.
    """

    def test_app_value_wins(self) -> None:
        """
        An app's own value wins; a null or absent one takes the global one;
        a global key left out keeps L{App}'s default.
        """
        data = _with_apps(
            _app(id="a", key="ka", max_event_payload_in_kb="20"),
            _app(id="b", key="kb", max_event_payload_in_kb=None),
        )
        data["event_limits"] = {"max_payload_in_kb": 50}
        data["presence"] = {"max_members_per_channel": "7"}
        config = parse_config(data, {})
        a, b = config.app_manager.apps
        self.assertEqual((a.max_event_payload_in_kb, b.max_event_payload_in_kb), (20, 50))
        self.assertEqual(b.max_presence_members_per_channel, 7)
        self.assertEqual(b.max_event_batch_size, App("", "", "").max_event_batch_size)
        self.assertEqual(
            config.app_limit_defaults,
            (("max_event_payload_in_kb", 50), ("max_presence_members_per_channel", 7)),
        )

    def test_default_app(self) -> None:
        """
        The C{SOCKUDO_DEFAULT_APP_*} app takes the global limits too, unless
        its own variable is set.
        """
        data = {"event_limits": {"max_payload_in_kb": 50, "max_batch_size": 30}}
        env = {"SOCKUDO_DEFAULT_APP_ID": "d", "SOCKUDO_DEFAULT_APP_MAX_EVENT_BATCH_SIZE": "5"}
        (app,) = parse_config(data, env).app_manager.apps
        self.assertEqual((app.max_event_payload_in_kb, app.max_event_batch_size), (50, 5))

    def test_cache_ttl(self) -> None:
        """
        C{channel_limits.cache_ttl} is how long a cache channel's event is
        kept (1800 s unless set).
        """
        self.assertEqual(parse_config({}, {}).channel_cache_ttl, 1800)
        config = parse_config({"channel_limits": {"cache_ttl": 60}}, {})
        self.assertEqual(config.channel_cache_ttl, 60)

    def test_invalid(self) -> None:
        """
        A malformed global limit is an error naming it.
        """
        with self.assertRaises(ConfigError) as caught:
            parse_config({"event_limits": {"max_batch_size": "many"}}, {})
        self.assertIn("event_limits.max_batch_size", str(caught.exception))


class RefusedTests(SynchronousTestCase):
    """
    What sockudo-tw cannot honour, and where ignoring it would change
    behaviour, stops the start with the key and the reason.
    """

    def assertRefused(  # noqa: N802
        self, data: dict[str, Any], env: dict[str, str], *words: str
    ) -> None:
        with self.assertRaises(ConfigError) as caught:
            parse_config(data, env)
        for word in words:
            self.assertIn(word, str(caught.exception))

    def test_app_manager_drivers(self) -> None:
        """
        The ScyllaDB app manager is refused instead of running with no apps.
        """
        for driver in ("scylladb", "scylla"):
            self.assertRefused(
                {"app_manager": {"driver": driver}}, {}, "app_manager.driver", "refused"
            )
        self.assertRefused({}, {"APP_MANAGER_DRIVER": "scylla"}, "APP_MANAGER_DRIVER", "refused")

    def test_cache_drivers(self) -> None:
        """
        The Redis Cluster cache driver is refused; C{redis} is accepted;
        C{none} keeps memory, warned.
        """
        self.assertRefused(
            {"cache": {"driver": "redis-cluster"}}, {}, "cache.driver", "redis-cluster"
        )
        self.assertRefused({}, {"CACHE_DRIVER": "redis-cluster"}, "CACHE_DRIVER", "cache.driver")
        self.assertEqual(parse_config({"cache": {"driver": "redis"}}, {}).cache.driver, "redis")
        config = parse_config({"cache": {"driver": "none"}}, {})
        self.assertIn("cache.driver", _warned(config))

    def test_rate_limiter_drivers(self) -> None:
        """
        The Redis rate limiter is accepted with its settings; Redis Cluster
        is refused when the limiter is on; neither means anything when it
        is off (Sockudo's shipped file).
        """
        on = parse_config(
            {
                "rate_limiter": {
                    "enabled": True,
                    "driver": "redis",
                    "redis": {"prefix": "p:", "url_override": "redis://10.0.0.1:6380/2"},
                }
            },
            {},
        )
        self.assertEqual(on.warnings, ())
        self.assertEqual(
            (
                on.rate_limiter.driver,
                on.rate_limiter.redis_prefix,
                on.rate_limiter.redis_url_override,
            ),
            ("redis", "p:", "redis://10.0.0.1:6380/2"),
        )
        self.assertRefused(
            {"rate_limiter": {"driver": "redis-cluster"}},
            {"RATE_LIMITER_ENABLED": "true"},
            "rate_limiter.driver",
        )
        off = parse_config({"rate_limiter": {"enabled": False, "driver": "redis"}}, {})
        self.assertEqual(off.warnings, ())
        config = parse_config({"rate_limiter": {"enabled": True, "driver": "none"}}, {})
        self.assertIn("rate_limiter.driver", _warned(config))

    def test_adapter_and_queue_drivers(self) -> None:
        """
        The Redis Cluster queue is refused by the config itself; the Redis
        Cluster adapter without seeds is refused, naming both places for
        them, and takes Sockudo's fallback seeds; the NATS adapter loads.
        """
        self.assertRefused(
            {"adapter": {"driver": "redis-cluster"}}, {}, "adapter.cluster.nodes", "database.redis"
        )
        config = parse_config(
            {
                "adapter": {"driver": "redis-cluster"},
                "database": {"redis": {"cluster_nodes": [{"host": "10.0.0.1"}, "10.0.0.2:7001"]}},
            },
            {},
        )
        self.assertEqual(config.adapter.cluster_nodes, ("10.0.0.1:7000", "10.0.0.2:7001"))
        env = parse_config(
            None, {"ADAPTER_DRIVER": "redis-cluster", "REDIS_CLUSTER_NODES": "a:1,b:2"}
        )
        self.assertEqual(env.adapter.cluster_nodes, ("a:1", "b:2"))
        nats = parse_config(
            None, {"ADAPTER_DRIVER": "nats", "NATS_SERVERS": "nats://n1:4222,nats://n2:4222"}
        )
        self.assertEqual(nats.adapter.nats.servers, ("nats://n1:4222", "nats://n2:4222"))
        for driver in ("redis-cluster", "nats"):
            self.assertRefused(
                {
                    "adapter": {
                        "driver": driver,
                        "cluster": {"nodes": ["a:1"]},
                        "cluster_health": {"enabled": False},
                    }
                },
                {},
                "cluster_health.enabled",
            )
        self.assertRefused(
            {"queue": {"driver": "redis-cluster"}}, {}, "queue.driver", "redis-cluster"
        )

    def test_cluster_mode(self) -> None:
        """
        C{cluster_mode: true} is refused wherever it is; false is fine.
        """
        for section in (("adapter", "redis"), ("cache", "redis"), ("queue", "redis")):
            data = {section[0]: {section[1]: {"cluster_mode": True}}}
            self.assertRefused(data, {}, ".".join(section) + ".cluster_mode", "Redis Cluster")
            self.assertEqual(
                parse_config({section[0]: {section[1]: {"cluster_mode": False}}}, {}).warnings,
                (),
            )
        self.assertRefused(
            {"rate_limiter": {"redis": {"cluster_mode": "true"}}},
            {},
            "rate_limiter.redis.cluster_mode",
        )

    def test_path_prefix(self) -> None:
        """
        Only the root path prefix is served.
        """
        self.assertRefused({"path_prefix": "/ws"}, {}, "path_prefix", "'/ws'", "reverse proxy")
        for prefix in ("/", ""):
            self.assertEqual(parse_config({"path_prefix": prefix}, {}).warnings, ())

    def test_cluster_health_off(self) -> None:
        """
        Heartbeats cannot be turned off for the Redis adapter; with the
        local adapter there are none to turn off.
        """
        data = {"adapter": {"driver": "redis", "cluster_health": {"enabled": False}}}
        self.assertRefused(data, {}, "adapter.cluster_health.enabled", "heartbeats")
        self.assertRefused(
            {"adapter": {"driver": "redis"}},
            {"CLUSTER_HEALTH_ENABLED": "false"},
            "CLUSTER_HEALTH_ENABLED",
        )
        local = parse_config({"adapter": {"cluster_health": {"enabled": False}}}, {})
        self.assertFalse(local.adapter.cluster_health.enabled)

    def test_redis_urls(self) -> None:
        """
        Every Redis URL is checked by the one parser at load, naming the key
        (or the variable) and never showing the password.
        """
        keys = {
            "adapter.redis.redis_pub_options.url": {
                "adapter": {"redis": {"redis_pub_options": {"url": "x"}}}
            },
            "cache.redis.url_override": {"cache": {"redis": {"url_override": "x"}}},
            "queue.redis.url_override": {"queue": {"redis": {"url_override": "x"}}},
            "rate_limiter.redis.url_override": {"rate_limiter": {"redis": {"url_override": "x"}}},
        }
        for key, data in keys.items():
            for url in ("http://h", "redis://:hunter2@h:99999"):
                _set(data, key, url)
                with self.assertRaises(ConfigError) as caught:
                    parse_config(data, {})
                self.assertTrue(str(caught.exception).startswith(key + ":"), caught.exception)
                self.assertNotIn("hunter2", str(caught.exception))
        self.assertRefused({}, {"REDIS_URL": "tcp://h"}, "REDIS_URL", "scheme")
        self.assertRefused({"database": {"redis": {"host": ""}}}, {}, "database.redis", "host")

    def test_redis_urls_accepted(self) -> None:
        """
        TLS and Unix-socket URLs pass; C{database.redis} credentials with
        URL-special characters survive into the URL.
        """
        for url in ("rediss://u:p@h:6380/1", "unix:///run/redis.sock?db=2", "redis://[::1]"):
            config = parse_config({"adapter": {"driver": "redis"}}, {"REDIS_URL": url})
            self.assertEqual(config.adapter.redis_url, url)
        from sockudo_tw.redisurl import parse_redis_url

        config = parse_config(
            {"database": {"redis": {"host": "::1", "username": "a@b", "password": "p:/@?#"}}}, {}
        )
        parsed = parse_redis_url(config.database_redis.url)
        self.assertEqual(
            (parsed.host, parsed.username, parsed.password, parsed.db), ("::1", "a@b", "p:/@?#", 0)
        )


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


class WarnedTests(SynchronousTestCase):
    """
    Keys whose ignoring is harmless are named in L{ServerConfig.warnings}.
    """

    def test_file_keys(self) -> None:
        """
        Each harmlessly ignored key is named when set, and only then.
        """
        cases: dict[str, Any] = {
            "mode": "development",
            "instance.process_id": "node-1",
            "logging.colors_enabled": True,
            "logging.include_target": False,
            "database.redis.key_prefix": "x:",
            "database.redis.sentinels": [{"host": "s", "port": 26379}],
            "database.redis.sentinel_password": "p",
            "database.redis.name": "mymaster",
            "app_manager.cache.enabled": True,
            "app_manager.cache.ttl": 60,
            "cache.memory.ttl": 60,
            "cache.memory.cleanup_interval": 10,
            "cache.memory.max_capacity": 5,
            "adapter.buffer_multiplier_per_cpu": 8,
            "adapter.redis.redis_sub_options": {"url": "redis://h"},
            "cluster_health": {"enabled": True},
            "cleanup": {"batch_size": 5},
            "ssl.passphrase": "secret",
            "ssl.ca_path": "/etc/ssl/chain.pem",
        }
        for key, value in cases.items():
            data: dict[str, Any] = {}
            _set(data, key, value)
            config = parse_config(data, {})
            self.assertEqual(_warned(config), {key}, key)
        self.assertEqual(parse_config({}, {}).warnings, ())

    def test_harmless_values(self) -> None:
        """
        Values that match what sockudo-tw does anyway are not warned about.
        """
        data: dict[str, Any] = {
            "logging": {"colors_enabled": False, "include_target": True},
            "app_manager": {"cache": {"enabled": False, "ttl": 300}},
            "adapter": {"redis": {"redis_sub_options": {}}},
            "database": {"redis": {"sentinels": []}, "mysql": {"host": "m"}},
            "queue": {"sqs": {"region": "eu"}, "redis_cluster": {"nodes": []}},
            "database_pooling": {"enabled": True},
        }
        self.assertEqual(parse_config(data, {}).warnings, ())

    def test_env_keys(self) -> None:
        """
        A warned key set by a variable names the variable too.
        """
        config = parse_config(None, {"CACHE_TTL_SECONDS": "60", "ENVIRONMENT": "dev"})
        self.assertIn(
            "CACHE_TTL_SECONDS (sets cache.memory.ttl: ignored; cache-channel entries live"
            " channel_limits.cache_ttl seconds)",
            config.warnings,
        )
        self.assertEqual(
            _warned(config),
            {"CACHE_TTL_SECONDS", "ENVIRONMENT"},
        )

    def test_env_of_unimplemented_drivers(self) -> None:
        """
        Variables of drivers sockudo-tw refuses (the Redis Cluster queue)
        and of Sockudo internals are named, not read (so a malformed value
        is no error).
        """
        env = {
            "REDIS_CLUSTER_QUEUE_CONCURRENCY": "soon",
            "REDIS_CLUSTER_QUEUE_PREFIX": "q:",
            "CLEANUP_BATCH_SIZE": "5",
            "RUST_LOG": "debug",
        }
        config = parse_config(None, env)
        self.assertEqual(_warned(config), set(env))
        self.assertIn(
            "REDIS_CLUSTER_QUEUE_PREFIX: ignored; it configures queue.driver"
            ' "redis-cluster", which sockudo-tw does not implement (selecting it is refused)',
            config.warnings,
        )


# Every variable of sockudo-reference.md section 4.3 (Sockudo 2.9.2), plus
# NATS_NODES_NUMBER (5.x).
SOCKUDO_ENV = """
ENVIRONMENT DEBUG_MODE DEBUG ACTIVITY_TIMEOUT HOST PORT SHUTDOWN_GRACE_PERIOD
USER_AUTHENTICATION_TIMEOUT WEBSOCKET_MAX_PAYLOAD_KB INSTANCE_PROCESS_ID
ADAPTER_DRIVER ADAPTER_BUFFER_MULTIPLIER_PER_CPU CACHE_DRIVER QUEUE_DRIVER APP_MANAGER_DRIVER
RATE_LIMITER_DRIVER DATABASE_REDIS_HOST DATABASE_REDIS_PORT DATABASE_REDIS_PASSWORD
DATABASE_REDIS_DB DATABASE_REDIS_KEY_PREFIX REDIS_URL REDIS_CLUSTER_NODES
REDIS_CLUSTER_QUEUE_CONCURRENCY REDIS_CLUSTER_QUEUE_PREFIX DATABASE_MYSQL_HOST
DATABASE_MYSQL_PORT DATABASE_MYSQL_USERNAME DATABASE_MYSQL_PASSWORD DATABASE_MYSQL_DATABASE
DATABASE_MYSQL_TABLE_NAME DATABASE_MYSQL_POOL_MIN DATABASE_MYSQL_POOL_MAX DATABASE_POSTGRES_HOST
DATABASE_POSTGRES_PORT DATABASE_POSTGRES_USERNAME DATABASE_POSTGRES_PASSWORD
DATABASE_POSTGRES_DATABASE DATABASE_POSTGRES_POOL_MIN DATABASE_POSTGRES_POOL_MAX
DATABASE_DYNAMODB_REGION DATABASE_DYNAMODB_TABLE_NAME DATABASE_DYNAMODB_ENDPOINT_URL
AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY DATABASE_POOLING_ENABLED DATABASE_POOL_MIN
DATABASE_POOL_MAX DATABASE_CONNECTION_POOL_SIZE APP_MANAGER_CACHE_ENABLED APP_MANAGER_CACHE_TTL
CACHE_TTL_SECONDS CACHE_CLEANUP_INTERVAL CACHE_MAX_CAPACITY SSL_ENABLED SSL_CERT_PATH
SSL_KEY_PATH SSL_REDIRECT_HTTP SSL_HTTP_PORT UNIX_SOCKET_ENABLED UNIX_SOCKET_PATH
UNIX_SOCKET_PERMISSION_MODE METRICS_DRIVER METRICS_ENABLED METRICS_HOST METRICS_PORT
METRICS_PROMETHEUS_PREFIX RATE_LIMITER_ENABLED RATE_LIMITER_API_MAX_REQUESTS
RATE_LIMITER_API_WINDOW_SECONDS RATE_LIMITER_API_TRUST_HOPS RATE_LIMITER_WS_MAX_REQUESTS
RATE_LIMITER_WS_WINDOW_SECONDS RATE_LIMITER_REDIS_PREFIX QUEUE_REDIS_CONCURRENCY
QUEUE_REDIS_PREFIX QUEUE_SQS_REGION QUEUE_SQS_VISIBILITY_TIMEOUT QUEUE_SQS_MAX_MESSAGES
QUEUE_SQS_WAIT_TIME_SECONDS QUEUE_SQS_CONCURRENCY QUEUE_SQS_FIFO QUEUE_SQS_ENDPOINT_URL
WEBHOOK_BATCHING_ENABLED WEBHOOK_BATCHING_DURATION NATS_SERVERS NATS_USERNAME NATS_PASSWORD
NATS_TOKEN NATS_CONNECTION_TIMEOUT_MS NATS_REQUEST_TIMEOUT_MS NATS_NODES_NUMBER CORS_ORIGINS
CORS_METHODS CORS_HEADERS CORS_CREDENTIALS CLEANUP_ASYNC_ENABLED CLEANUP_FALLBACK_TO_SYNC
CLEANUP_QUEUE_BUFFER_SIZE CLEANUP_BATCH_SIZE CLEANUP_BATCH_TIMEOUT_MS CLEANUP_WORKER_THREADS
CLEANUP_MAX_RETRY_ATTEMPTS CLUSTER_HEALTH_ENABLED CLUSTER_HEALTH_HEARTBEAT_INTERVAL
CLUSTER_HEALTH_NODE_TIMEOUT CLUSTER_HEALTH_CLEANUP_INTERVAL LOG_OUTPUT_FORMAT
LOG_COLORS_ENABLED LOG_INCLUDE_TARGET SOCKUDO_LOG_DEBUG SOCKUDO_LOG_PROD RUST_LOG
SOCKUDO_DEFAULT_APP_ID SOCKUDO_DEFAULT_APP_KEY SOCKUDO_DEFAULT_APP_SECRET
SOCKUDO_DEFAULT_APP_ENABLED SOCKUDO_ENABLE_CLIENT_MESSAGES SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS
SOCKUDO_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SECOND SOCKUDO_DEFAULT_APP_MAX_READ_REQUESTS_PER_SECOND
SOCKUDO_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SECOND
SOCKUDO_DEFAULT_APP_MAX_PRESENCE_MEMBERS_PER_CHANNEL
SOCKUDO_DEFAULT_APP_MAX_PRESENCE_MEMBER_SIZE_IN_KB SOCKUDO_DEFAULT_APP_MAX_CHANNEL_NAME_LENGTH
SOCKUDO_DEFAULT_APP_MAX_EVENT_CHANNELS_AT_ONCE SOCKUDO_DEFAULT_APP_MAX_EVENT_NAME_LENGTH
SOCKUDO_DEFAULT_APP_MAX_EVENT_PAYLOAD_IN_KB SOCKUDO_DEFAULT_APP_MAX_EVENT_BATCH_SIZE
SOCKUDO_DEFAULT_APP_ENABLE_USER_AUTHENTICATION SOCKUDO_DEFAULT_APP_ENABLE_WATCHLIST_EVENTS
SOCKUDO_DEFAULT_APP_ALLOWED_ORIGINS
""".split()


class EveryVariableTests(SynchronousTestCase):
    """
    No Sockudo variable is silently ignored.
    """

    def test_all_known(self) -> None:
        """
        Every Sockudo variable is one the configuration reads or warns
        about.
        """
        from sockudo_tw.config import known_env_vars

        self.assertEqual(set(SOCKUDO_ENV) - known_env_vars(), set())

    def test_each_has_an_effect(self) -> None:
        """
        Setting any Sockudo variable changes the configuration, is warned
        about by name, or (for a value it cannot take) is an error naming it.
        """
        base = parse_config(None, {})
        values = ("true", "false", "7", "redis://127.0.0.1:6390/1", "nats", "*")
        for name in SOCKUDO_ENV:
            effects = []
            for value in values:
                try:
                    config = parse_config(None, {name: value})
                except ConfigError as e:
                    effects.append(str(e).startswith(name))
                    continue
                effects.append(config != base or name in _warned(config))
            self.assertTrue(any(effects), name)


class TomlTests(SynchronousTestCase):
    """
    C{--config x.toml} reads Sockudo's TOML form.
    """

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.mktemp())
        os.makedirs(path)
        path = os.path.join(path, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_same_structure(self) -> None:
        """
        Tables and arrays of tables map to the JSON objects and lists.
        """
        path = self.write(
            "config.toml",
            """
port = 6002
mode = "production"

[adapter]
driver = "local"

[event_limits]
max_payload_in_kb = 1000
max_batch_size = 100

[[app_manager.array.apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
max_connections = 100
enable_client_messages = true
enabled = true
max_client_events_per_second = 1000
""",
        )
        config = load_config(path, {"PORT": "6003"})
        self.assertEqual(config.port, 6003)
        (app,) = config.app_manager.apps
        self.assertEqual(
            (app.key, app.max_event_payload_in_kb, app.max_event_batch_size), ("app-key", 1000, 100)
        )
        self.assertEqual(_warned(config), {"mode"})

    def test_extension(self) -> None:
        """
        The extension decides the format, case-insensitively.
        """
        self.assertEqual(load_config(self.write("c.TOML", "port = 7000\n"), {}).port, 7000)
        with self.assertRaises(ConfigError) as caught:
            load_config(self.write("c.json", "port = 7000\n"), {})
        self.assertIn("invalid JSON", str(caught.exception))

    def test_invalid(self) -> None:
        """
        Malformed TOML names the file and the position.
        """
        path = self.write("bad.toml", "port = \n")
        with self.assertRaises(ConfigError) as caught:
            load_config(path, {})
        self.assertIn("bad.toml: invalid TOML", str(caught.exception))
        self.assertIn("line 1", str(caught.exception))

    def test_shipped_equivalent(self) -> None:
        """
        Sockudo's shipped file, converted to TOML, loads the same.
        """
        with open(SHIPPED, encoding="utf-8") as f:
            data = json.load(f)
        path = self.write("config.toml", _to_toml(data))
        self.assertEqual(load_config(path, {}), load_config(SHIPPED, {}))


def _to_toml(data: dict[str, Any], prefix: str = "") -> str:
    """
    A minimal TOML writer for the shipped config (tables, arrays of tables,
    scalars and lists of scalars).
    """
    lines: list[str] = []
    tables: list[str] = []
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            tables.append(f"\n[{name}]\n" + _to_toml(value, name))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                tables.append(f"\n[[{name}]]\n" + _to_toml(item, name))
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n" + "".join(tables)


class ReadmeTests(SynchronousTestCase):
    """
    README.rst's configuration reference and the parser cannot drift apart.
    """

    def section(self, title: str) -> str:
        with open(os.path.join(ROOT, "README.rst"), encoding="utf-8") as f:
            text = f.read()
        start = text.index(f"\n{title}\n")
        end = text.index("\n---", start + len(title) + 10)
        return text[start:end]

    def test_key_table(self) -> None:
        """
        Every key in the "Main keys" table is one the parser reads, and
        every key the parser reads is in the table (C{a.*} covers a
        section).
        """
        import re

        from sockudo_tw.config import known_keys

        table = self.section("Main keys")
        rows = [line for line in table.splitlines() if line.startswith("``")]
        documented = set()
        for row in rows:
            documented.update(re.findall(r"``([a-z_.*]+)``", row.split("  ")[0]))
        known = known_keys()

        def covers(doc: str, key: str) -> bool:
            return key == doc or (doc.endswith(".*") and key.startswith(doc[:-1]))

        self.assertEqual({k for k in known if not any(covers(d, k) for d in documented)}, set())
        self.assertEqual({d for d in documented if not any(covers(d, k) for k in known)}, set())

    def test_variables(self) -> None:
        """
        Every variable in "Environment variables" is one the configuration
        knows, and every one it knows is listed.
        """
        import re

        from sockudo_tw.config import known_env_vars

        listed = set(re.findall(r"``([A-Z][A-Z0-9_]+)``", self.section("Environment variables")))
        self.assertEqual(listed ^ known_env_vars(), set())


# Every key of sockudo-reference.md section 4.2 (Sockudo 2.9.2's options).
SOCKUDO_KEYS = """
debug host port mode path_prefix shutdown_grace_period websocket_max_payload_kb
user_authentication_timeout activity_timeout instance.process_id logging.colors_enabled
logging.include_target cluster_health.enabled adapter.driver adapter.buffer_multiplier_per_cpu
adapter.redis.requests_timeout adapter.redis.prefix adapter.redis.redis_pub_options.url
adapter.redis.redis_sub_options adapter.redis.cluster_mode adapter.cluster.nodes
adapter.cluster.prefix adapter.cluster.request_timeout_ms adapter.cluster.use_connection_manager
adapter.nats.servers adapter.nats.prefix adapter.nats.request_timeout_ms
adapter.nats.connection_timeout_ms adapter.nats.username adapter.nats.password adapter.nats.token
adapter.nats.nodes_number adapter.cluster_health.enabled
adapter.cluster_health.heartbeat_interval_ms
adapter.cluster_health.node_timeout_ms adapter.cluster_health.cleanup_interval_ms
app_manager.driver app_manager.array.apps app_manager.cache.enabled app_manager.cache.ttl
cache.driver cache.redis.prefix cache.redis.url_override cache.redis.cluster_mode cache.memory.ttl
cache.memory.cleanup_interval cache.memory.max_capacity queue.driver queue.redis.concurrency
queue.redis.prefix queue.redis.url_override queue.redis.cluster_mode
queue.redis_cluster.concurrency queue.redis_cluster.prefix queue.redis_cluster.nodes
queue.redis_cluster.request_timeout_ms queue.sqs.region queue.sqs.queue_url_prefix
queue.sqs.visibility_timeout queue.sqs.endpoint_url queue.sqs.max_messages
queue.sqs.wait_time_seconds queue.sqs.concurrency queue.sqs.fifo queue.sqs.message_group_id
rate_limiter.enabled rate_limiter.driver rate_limiter.api_rate_limit.max_requests
rate_limiter.api_rate_limit.window_seconds rate_limiter.api_rate_limit.identifier
rate_limiter.api_rate_limit.trust_hops rate_limiter.websocket_rate_limit.max_requests
rate_limiter.websocket_rate_limit.window_seconds rate_limiter.websocket_rate_limit.identifier
rate_limiter.websocket_rate_limit.trust_hops rate_limiter.redis.prefix
rate_limiter.redis.url_override rate_limiter.redis.cluster_mode metrics.enabled metrics.driver
metrics.host metrics.port metrics.prometheus.prefix ssl.enabled ssl.cert_path ssl.key_path
ssl.passphrase ssl.ca_path ssl.redirect_http ssl.http_port cors.credentials cors.origin
cors.methods cors.allowed_headers channel_limits.max_name_length channel_limits.cache_ttl
event_limits.max_channels_at_once event_limits.max_name_length event_limits.max_payload_in_kb
event_limits.max_batch_size presence.max_members_per_channel presence.max_member_size_in_kb
http_api.request_limit_in_mb http_api.accept_traffic.memory_threshold webhooks.batching.enabled
webhooks.batching.duration database_pooling.enabled database_pooling.min database_pooling.max
database.redis.host database.redis.port database.redis.db database.redis.username
database.redis.password database.redis.key_prefix database.redis.sentinels
database.redis.sentinel_password database.redis.name database.redis.cluster_nodes
database.mysql.host database.postgres.port database.dynamodb.region database.scylladb.nodes
cleanup.async_enabled cleanup.fallback_to_sync cleanup.queue_buffer_size cleanup.batch_size
cleanup.batch_timeout_ms cleanup.worker_threads cleanup.max_retry_attempts unix_socket.enabled
unix_socket.path unix_socket.permission_mode
""".split()


class EveryKeyTests(SynchronousTestCase):
    """
    No key of Sockudo's configuration is silently ignored.
    """

    def test_all_known_or_warned(self) -> None:
        """
        Every Sockudo key is one the parser reads (itself or as part of a
        section it accepts as a block), or setting it is warned about by
        name.
        """
        from sockudo_tw.config import known_keys

        known = known_keys()
        unknown = []
        for key in SOCKUDO_KEYS:
            parts = key.split(".")
            if any(".".join(parts[:n]) in known for n in range(1, len(parts) + 1)):
                continue
            data: dict[str, Any] = {}
            _set(data, key, 1)
            warned = parse_config(data, {}).warnings
            if not any(w.startswith(".".join(parts[:-1])) for w in warned):
                unknown.append(key)
        self.assertEqual(unknown, [])


class KeyTableTests(SynchronousTestCase):
    """
    L{sockudo_tw.config.schema.KEYS}, the one list of keys with their
    defaults and treatments, agrees with what the parser does.
    """

    # A value that sets each warned key in the way that is warned about.
    WARNED_VALUES: dict[str, Any] = {
        "logging.include_target": False,
        "database.redis.sentinels": ["sentinel:26379"],
        "adapter.nats.nodes_number": 3,
        **{
            f"database.{db}.{key}": 1
            for db in ("mysql", "postgres")
            for key in ("cache_ttl", "cache_cleanup_interval", "cache_max_capacity")
        },
    }

    def test_parser_reads_the_table(self) -> None:
        """
        The parser reads exactly the table's keys, so L{known_keys} (the
        README check's source) is what the parser knows.
        """
        from sockudo_tw.config import known_keys
        from sockudo_tw.config.schema import KEY_TABLE
        from sockudo_tw.config.sections import parse_tree

        read: set[str] = set()
        parse_tree({}, [], read)
        self.assertEqual(read, set(KEY_TABLE))
        self.assertEqual(known_keys(), frozenset(KEY_TABLE))

    def test_defaults_agree(self) -> None:
        """
        The table's defaults, which the parser uses, are the typed objects'
        defaults: parsing an empty tree gives L{ServerConfig}().
        """
        from sockudo_tw.config.sections import parse_tree

        warnings: list[str] = []
        self.assertEqual(parse_tree({}, warnings), ServerConfig())
        self.assertEqual(warnings, [])

    def test_warned(self) -> None:
        """
        Setting each warned key gives one warning naming it, with the
        table's note.
        """
        from sockudo_tw.config.schema import KEYS, WARNED

        for key in (k for k in KEYS if k.treatment == WARNED):
            value = self.WARNED_VALUES.get(key.path, "x" if key.default is None else key.default)
            data: dict[str, Any] = {}
            _set(data, key.path, value)
            warnings = parse_config(data, {}).warnings
            self.assertIn(f"{key.path}: {key.note}", warnings)

    def test_refused(self) -> None:
        """
        Setting each refused key to anything but its default is an error
        naming it.
        """
        from sockudo_tw.config.schema import KEYS, REFUSED

        for key in (k for k in KEYS if k.treatment == REFUSED):
            value = "/prefix" if key.default is None else not key.default
            data: dict[str, Any] = {}
            _set(data, key.path, value)
            with self.assertRaises(ConfigError) as caught:
                parse_config(data, {})
            self.assertTrue(str(caught.exception).startswith(f"{key.path}: "), caught.exception)


class HttpLimitsTests(SynchronousTestCase):
    """
    C{http_api}: the bounds of the HTTP edge, each a key with a default.
    """

    def test_defaults(self) -> None:
        """
        Without the section, the documented defaults apply.
        """
        from sockudo_tw.config import HttpLimits

        limits = parse_config({}, {}).http_limits
        self.assertEqual(
            limits,
            HttpLimits(
                request_limit_in_mb=10,
                max_header_bytes=16384,
                max_headers=100,
                header_timeout_seconds=10,
                body_timeout_seconds=30,
                idle_timeout_seconds=60,
            ),
        )
        self.assertEqual(limits.body_limit, 10 * 1024 * 1024)

    def test_set(self) -> None:
        """
        Every key is read, as a number or a numeric string.
        """
        limits = parse_config(
            {
                "http_api": {
                    "request_limit_in_mb": 2,
                    "max_header_bytes": "8192",
                    "max_headers": 50,
                    "header_timeout_seconds": 5,
                    "body_timeout_seconds": 20,
                    "idle_timeout_seconds": 120,
                }
            },
            {},
        ).http_limits
        self.assertEqual(
            (
                limits.body_limit,
                limits.max_header_bytes,
                limits.max_headers,
                limits.header_timeout_seconds,
                limits.body_timeout_seconds,
                limits.idle_timeout_seconds,
            ),
            (2 * 1024 * 1024, 8192, 50, 5, 20, 120),
        )

    def test_refused(self) -> None:
        """
        Values that would disable a bound or break every request are refused
        at start, naming the key.
        """
        for key, value in (
            ("max_header_bytes", 100),
            ("max_headers", 0),
            ("header_timeout_seconds", 0),
            ("body_timeout_seconds", -1),
            ("idle_timeout_seconds", "soon"),
            ("request_limit_in_mb", 0),
        ):
            with self.assertRaises(ConfigError) as e:
                parse_config({"http_api": {key: value}}, {})
            self.assertIn(f"http_api.{key}", str(e.exception))


class CommandLineTests(SynchronousTestCase):
    """
    C{twistd sockudo --config} reads TOML and refuses before anything binds.
    """

    def options(self, *argv: str, env: dict[str, str] | None = None) -> Any:
        from sockudo_tw.tap import Options

        options = Options()
        options.environ = env or {}
        options.parseOptions(list(argv))
        return options

    def test_toml(self) -> None:
        """
        A C{.toml} file is parsed as TOML.
        """
        path = self.mktemp() + ".toml"
        with open(path, "w", encoding="utf-8") as f:
            f.write('[event_limits]\nmax_batch_size = 20\n\n[adapter]\ndriver = "local"\n')
        config = self.options("--config", path).server_config
        self.assertEqual(config.app_limit_defaults, (("max_event_batch_size", 20),))

    def test_refused_is_usage_error(self) -> None:
        """
        A refused key stops option parsing with the key and the reason.
        """
        from twisted.python.usage import UsageError

        with self.assertRaises(UsageError) as caught:
            self.options(env={"APP_MANAGER_DRIVER": "scylladb"})
        self.assertIn("APP_MANAGER_DRIVER (sets app_manager.driver", str(caught.exception))
        with self.assertRaises(UsageError) as caught:
            self.options(env={"REDIS_URL": "rediss://:pw@h:0"})
        self.assertIn("REDIS_URL", str(caught.exception))
        self.assertNotIn(":pw@", str(caught.exception))


class AsciiNumbersAndIdsTests(SynchronousTestCase):
    """
    Numbers are ASCII digits only, and app ids follow the API's rule, so no
    configured app is unreachable and no number raises outside ConfigError.
    """

    def test_non_ascii_digits_refused(self) -> None:
        """
        C{"²"} (which C{str.isdigit} accepts and C{int} refuses) and Arabic-Indic
        digits (which C{int} accepts) are refused, in the file and in the
        environment.
        """
        for text in ("\u00b2", "\u0661\u0662"):
            with self.assertRaises(ConfigError) as e:
                parse_config({"port": text}, {})
            self.assertIn("port", str(e.exception))
            with self.assertRaises(ConfigError) as e:
                parse_config({}, {"PORT": text})
            self.assertIn("PORT", str(e.exception))
        self.assertEqual(parse_config({"port": "+6002"}, {}).port, 6002)

    def test_app_id_rule(self) -> None:
        """
        An app id the API would answer 404 for is refused at start, in the
        file and in C{SOCKUDO_DEFAULT_APP_ID}.
        """
        bad = {"app_manager": {"array": {"apps": [{"id": "a b", "key": "k", "secret": "s"}]}}}
        with self.assertRaises(ConfigError) as e:
            parse_config(bad, {})
        self.assertIn("app_manager.array.apps[0].id", str(e.exception))
        with self.assertRaises(ConfigError) as e:
            parse_config(None, {"SOCKUDO_DEFAULT_APP_ID": "caf\u00e9"})
        self.assertIn("SOCKUDO_DEFAULT_APP_ID", str(e.exception))
