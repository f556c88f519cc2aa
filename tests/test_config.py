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
        self.assertIn("cleanup: not implemented, ignored", config.warnings)
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
            "CACHE_DRIVER": "redis",
            "QUEUE_DRIVER": "redis",
            "APP_MANAGER_DRIVER": "postgres",
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
            "NATS_SERVERS": "nats://127.0.0.1:4222,nats://127.0.0.1:4223",
        }
        config = parse_config({"port": 1234, "host": "::1"}, env)
        self.assertEqual((config.host, config.port), ("127.0.0.1", 7001))
        self.assertEqual(config.activity_timeout, 30)
        self.assertEqual(config.shutdown_grace_period, 3)
        self.assertEqual(config.adapter.driver, "redis")
        self.assertEqual(config.cache.driver, "redis")
        self.assertEqual(config.queue.driver, "redis")
        self.assertEqual(config.app_manager.driver, "pgsql")
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
        self.assertEqual(len(config.adapter.nats.servers), 2)

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
        parse_config(data, {"ADAPTER_DRIVER": "nats"})
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
