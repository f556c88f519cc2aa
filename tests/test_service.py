"""
Tests for L{sockudo_tw.service} and L{sockudo_tw.logs}: composition from
config on a L{MemoryReactor}, and the ordered graceful shutdown on a clock.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

from twisted.application.service import Application, IService, Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from sockudo_tw.config import parse_config
from sockudo_tw.logs import listener_url, make_log_observer, package_version
from sockudo_tw.service import (
    SockudoService,
    config_listeners,
    escape_strport,
    make_service,
)


class _Recorder:
    """
    Records the order of shutdown steps; each step can be held open.
    """

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.pending: dict[str, Deferred[None]] = {}

    def step(self, name: str, hold: bool = False) -> Deferred[None]:
        """
        Record C{name}; return a Deferred that is already fired unless
        C{hold}.
        """
        self.calls.append(name)
        if hold:
            d: Deferred[None] = Deferred()
            self.pending[name] = d
            return d
        return succeed(None)


class _Listener(Service):
    """
    A listener whose stop is recorded.
    """

    def __init__(self, recorder: _Recorder, name: str) -> None:
        self.recorder = recorder
        self.name = name

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return self.recorder.step(f"stop {self.name}")


class _Child(Service):
    """
    A non-listener child (a backend client), stopped last.
    """

    def __init__(self, recorder: _Recorder) -> None:
        self.recorder = recorder

    def stopService(self) -> None:
        Service.stopService(self)
        self.recorder.calls.append("stop child")


class ShutdownTests(SynchronousTestCase):
    """
    L{SockudoService.stopService} runs its steps in order within the grace
    period.
    """

    def build(self, hold: str | None = None) -> tuple[SockudoService, _Recorder, Clock]:
        """
        A started service with two listeners, a child and one step of each
        kind; the step named C{hold} does not finish on its own.
        """
        recorder = _Recorder()
        clock = Clock()

        def close_connections(code: int, reason: str) -> Deferred[None]:
            return recorder.step(f"close {code} {reason}", hold == "close")

        service = SockudoService(clock, 10, close_connections)
        service.add_listener(_Listener(recorder, "a"))
        service.add_listener(_Listener(recorder, "b"))
        _Child(recorder).setServiceParent(service)
        service.flush_steps.append(lambda: recorder.step("flush", hold == "flush"))
        service.close_steps.append(lambda: recorder.step("close backends"))
        service.startService()
        return service, recorder, clock

    def test_order(self) -> None:
        """
        Draining, then listeners, clients (4200), flush, backends, children.
        """
        service, recorder, _ = self.build()
        self.assertFalse(service.lifecycle.draining)
        d = service.stopService()
        self.successResultOf(d)
        self.assertTrue(service.lifecycle.draining)
        self.assertEqual(
            recorder.calls,
            [
                "stop a",
                "stop b",
                "close 4200 Server shutting down",
                "flush",
                "close backends",
                "stop child",
            ],
        )
        self.assertFalse(service.running)

    def test_waits_for_each_step(self) -> None:
        """
        A step that has not finished holds back the later ones.
        """
        service, recorder, _ = self.build(hold="flush")
        d = service.stopService()
        self.assertNoResult(d)
        self.assertEqual(recorder.calls[-1], "flush")
        recorder.pending["flush"].callback(None)
        self.successResultOf(d)
        self.assertEqual(recorder.calls[-2:], ["close backends", "stop child"])

    def test_grace_period(self) -> None:
        """
        Steps still running when the grace period ends are abandoned and the
        remaining children are stopped anyway.
        """
        service, recorder, clock = self.build(hold="close")
        d = service.stopService()
        clock.advance(9.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        self.successResultOf(d)
        self.assertNotIn("flush", recorder.calls)
        self.assertEqual(recorder.calls[-1], "stop child")
        self.assertFalse(service.running)

    def test_failing_step(self) -> None:
        """
        A failing step is logged and shutdown still completes.
        """
        service, recorder, _ = self.build()

        def broken() -> Deferred[None]:
            raise RuntimeError("flush broke")

        service.flush_steps.insert(0, broken)
        self.successResultOf(service.stopService())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(recorder.calls[-1], "stop child")


class ComposeTests(SynchronousTestCase):
    """
    L{make_service} builds listeners from config on the given reactor.
    """

    def test_embedded_defaults(self) -> None:
        """
        Without config, one TCP listener on 0.0.0.0:6001, plus the metrics
        listener on 0.0.0.0:9601 (metrics are on by default, as in Sockudo).
        """
        reactor = MemoryReactorClock()
        service = make_service(parse_config(None, {}), reactor)
        service.startService()
        self.assertEqual(
            [(s[0], s[3]) for s in reactor.tcpServers], [(6001, "0.0.0.0"), (9601, "0.0.0.0")]
        )

    def test_listen_overrides(self) -> None:
        """
        C{--listen} descriptions replace the config's listeners, each
        serving the same site.
        """
        reactor = MemoryReactorClock()
        config = parse_config({"unix_socket": {"enabled": True, "path": "/run/s.sock"}}, {})
        service = make_service(config, reactor, listen=["tcp:7001:interface=127.0.0.1", "tcp:7002"])
        service.startService()
        # The metrics listener (9601) is not a main listener: --listen keeps it.
        self.assertEqual([s[0] for s in reactor.tcpServers], [7001, 7002, 9601])
        self.assertEqual(reactor.unixServers, [])
        self.assertIs(reactor.tcpServers[0][1], reactor.tcpServers[1][1])

    def test_unix_replaces_tcp(self) -> None:
        """
        An enabled Unix socket is the only main listener, with its mode.
        """
        config = parse_config(
            {"unix_socket": {"enabled": True, "path": "/run/a:b.sock", "permission_mode": 755}},
            {},
        )
        self.assertEqual(config_listeners(config), ["unix:/run/a\\:b.sock:mode=755:lockfile=1"])
        reactor = MemoryReactorClock()
        make_service(config, reactor).startService()
        # Only the metrics listener (on by default) is TCP.
        self.assertEqual([s[0] for s in reactor.tcpServers], [9601])
        (server,) = reactor.unixServers
        self.assertEqual((server[0], server[3], server[4]), ("/run/a:b.sock", 0o755, True))

    def test_ssl_description(self) -> None:
        """
        TLS becomes an C{ssl:} description with escaped paths.
        """
        cert = self.mktemp()
        with open(cert, "w") as f:
            f.write("x")
        config = parse_config(
            {"host": "::1", "ssl": {"enabled": True, "cert_path": cert, "key_path": cert}}, {}
        )
        (description,) = config_listeners(config)
        escaped = escape_strport(cert)
        self.assertEqual(
            description,
            f"ssl:6001:interface=\\:\\:1:privateKey={escaped}:certKey={escaped}",
        )

    def test_metrics_listener(self) -> None:
        """
        With metrics enabled and a resource given, it gets its own listener.
        """
        from twisted.web.resource import Resource

        reactor = MemoryReactorClock()
        config = parse_config({"metrics": {"enabled": True, "host": "127.0.0.1"}}, {})
        make_service(config, reactor, metrics_resource=Resource()).startService()
        self.assertEqual([(s[0], s[3]) for s in reactor.tcpServers][1], (9601, "127.0.0.1"))
        reactor = MemoryReactorClock()
        config = parse_config({"metrics": {"enabled": False}}, {})
        make_service(config, reactor, metrics_resource=Resource()).startService()
        self.assertEqual(len(reactor.tcpServers), 1)

    def test_warnings_logged(self) -> None:
        """
        Ignored config keys are logged as warnings at start.
        """
        from twisted.internet.testing import EventLoggingObserver
        from twisted.logger import globalLogPublisher

        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        reactor = MemoryReactorClock()
        make_service(parse_config({"cleanup": {}}, {}), reactor).startService()
        warned = [e for e in events if e["log_level"] == LogLevel.warn]
        # Then this config's lack of any app (see StartupLogTests).
        self.assertEqual(
            [e.get("note") for e in warned],
            ["cleanup: ignored; a disconnect is cleaned up at once", None],
        )

    def test_log_observer_installed(self) -> None:
        """
        Under twistd's C{Application}, our log observer replaces twistd's.
        """

        def observer(event: dict[str, object]) -> None:
            pass

        application = Application("sockudo")
        service = make_service(parse_config(None, {}), MemoryReactorClock(), log_observer=observer)
        service.setServiceParent(application)
        self.assertIs(application.getComponent(ILogObserver), observer)
        self.assertIn(service, list(IService(application)))


class LogTests(SynchronousTestCase):
    """
    L{make_log_observer}: level filtering and JSON lines.
    """

    def emit(self, output_format: str, debug: bool) -> str:
        """
        Log one debug and one info event through a fresh observer.
        """
        out = io.StringIO()
        log = Logger(namespace="t", observer=make_log_observer(out, output_format, debug))
        log.debug("low {app_id}", app_id="a1")
        log.info("high {app_id}", app_id="a2")
        return out.getvalue()

    def test_level(self) -> None:
        """
        Debug events appear only when debug is on.
        """
        self.assertNotIn("low a1", self.emit("human", False))
        self.assertIn("high a2", self.emit("human", False))
        self.assertIn("low a1", self.emit("human", True))

    def test_json(self) -> None:
        """
        JSON output is one object per line with the structured fields.
        """
        lines = self.emit("json", False).splitlines()
        self.assertEqual(len(lines), 1)
        event = json.loads(lines[0])
        self.assertEqual(event["app_id"], "a2")
        self.assertEqual(event["message"], "high a2")
        self.assertEqual(event["level"], "info")
        self.assertEqual(event["namespace"], "t")

    def test_json_failure(self) -> None:
        """
        A logged failure carries its traceback.
        """
        out = io.StringIO()
        log = Logger(namespace="t", observer=make_log_observer(out, "json", False))
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            log.failure("broke on {channel}", channel="c")
        event = json.loads(out.getvalue())
        self.assertEqual(event["level"], "critical")
        self.assertEqual(event["channel"], "c")
        self.assertIn("ZeroDivisionError", event["traceback"])


class StartupLogTests(SynchronousTestCase):
    """
    What the daemon logs once it has started: each listener as a URL, the
    version, the app count and the adapter; a warning when there is no app.
    """

    def start(
        self, config: dict[str, object] | None, listen: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """
        Start a daemon built from C{config} on a memory reactor; return the
        events it logged.
        """
        from twisted.internet.testing import EventLoggingObserver
        from twisted.logger import globalLogPublisher

        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        service = make_service(parse_config(config, {}), MemoryReactorClock(), listen=listen or ())
        service.startService()
        return list(events)

    def test_listeners_as_urls(self) -> None:
        """
        One info line per listener with its URL and role, then a summary
        with the version, the app count and the adapter driver.
        """
        events = self.start(None)
        urls = [(e["url"], e["role"]) for e in events if "url" in e]
        self.assertEqual(
            urls,
            [
                ("http://0.0.0.0:6001", "Pusher WebSocket and HTTP API"),
                ("http://0.0.0.0:9601/metrics", "Prometheus metrics"),
            ],
        )
        messages = [formatEvent(e) for e in events]
        self.assertIn("Listening on http://0.0.0.0:6001 (Pusher WebSocket and HTTP API)", messages)
        self.assertIn(f"sockudo-tw {package_version()} started: 1 app, local adapter", messages)
        self.assertEqual([e for e in events if e["log_level"] >= LogLevel.warn], [])

    def test_unix_and_tls(self) -> None:
        """
        A Unix socket is a C{unix://} URL with its absolute path; TLS is
        C{https}, with an IPv6 host in brackets; the HTTPS redirect listener
        is listed too.
        """
        events = self.start(
            {
                "unix_socket": {"enabled": True, "path": "/run/sockudo/s.sock"},
                "metrics": {"enabled": False},
            }
        )
        self.assertEqual([e["url"] for e in events if "url" in e], ["unix:///run/sockudo/s.sock"])
        from tests.test_endpoints import _make_cert

        cert, key, _ = _make_cert(self.mktemp())
        events = self.start(
            {
                "host": "::1",
                "port": 6443,
                "ssl": {
                    "enabled": True,
                    "cert_path": cert,
                    "key_path": key,
                    "redirect_http": True,
                    "http_port": 8080,
                },
                "metrics": {"enabled": True, "host": "127.0.0.1", "port": 9602},
            }
        )
        self.assertEqual(
            [(e["url"], e["role"]) for e in events if "url" in e],
            [
                ("https://[::1]:6443", "Pusher WebSocket and HTTP API"),
                ("http://[::1]:8080", "redirect to HTTPS"),
                ("http://127.0.0.1:9602/metrics", "Prometheus metrics"),
            ],
        )

    def test_zero_apps(self) -> None:
        """
        A config file with no app starts, with a warning saying everything
        will be refused and how to add an app.
        """
        events = self.start({"app_manager": {"array": {"apps": []}}})
        (warning,) = [e for e in events if e["log_level"] == LogLevel.warn]
        message = formatEvent(warning)
        self.assertIn("No apps are configured", message)
        self.assertIn("refused", message)
        self.assertIn("app_manager.array.apps", message)
        self.assertIn("SOCKUDO_DEFAULT_APP_ID", message)
        self.assertIn(
            f"sockudo-tw {package_version()} started: 0 apps, local adapter",
            [formatEvent(e) for e in events],
        )

    def test_database_app_store(self) -> None:
        """
        With a database app store there is no "no apps" warning (its apps
        are not in the file): the summary names the store instead.
        """
        events = self.start(
            {
                "app_manager": {"driver": "mysql", "array": {"apps": []}},
                "database": {"mysql": {"port": 1, "database": "apps"}},
                "metrics": {"enabled": False},
            }
        )
        self.assertEqual([e for e in events if e["log_level"] >= LogLevel.warn], [])
        self.assertIn(
            f"sockudo-tw {package_version()} started: apps from MySQL table 'applications'"
            " at 127.0.0.1:1/apps, local adapter",
            [formatEvent(e) for e in events],
        )

    def test_no_reprs(self) -> None:
        """
        Nothing sockudo-tw logs at start or shutdown shows an object's repr
        or an internal class name.
        """
        from twisted.internet.testing import EventLoggingObserver
        from twisted.logger import globalLogPublisher

        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        service = make_service(parse_config(None, {}), MemoryReactorClock())
        service.startService()
        self.successResultOf(service.stopService())
        ours = [
            formatEvent(e)
            for e in events
            if str(e.get("log_namespace", "")).startswith("sockudo_tw")
        ]
        self.assertTrue(ours)
        for message in ours:
            self.assertNotRegex(message, r"<\w|object at 0x|_QuietSite|Factory|Service\b")

    def test_listener_url(self) -> None:
        """
        L{listener_url} turns strports descriptions into URLs, undoing
        escapes; anything it does not know stays as written.
        """
        cases = {
            "tcp:6001": "http://0.0.0.0:6001",
            "tcp:6001:interface=127.0.0.1": "http://127.0.0.1:6001",
            "tcp:6001:10.0.0.1": "http://10.0.0.1:6001",
            "tcp:6001:interface=\\:\\:": "http://[::]:6001",
            "tcp6:6001": "http://[::]:6001",
            "ssl:6443:privateKey=k.pem:certKey=c.pem": "https://0.0.0.0:6443",
            "ssl:6443:interface=\\:\\:1:privateKey=a\\:b.pem": "https://[::1]:6443",
            "unix:/run/a\\:b.sock:mode=660:lockfile=1": "unix:///run/a:b.sock",
            "unix:rel.sock": "unix://" + os.path.abspath("rel.sock"),
            "systemd:domain=INET:index=0": "systemd:domain=INET:index=0",
            "TCP:80": "http://0.0.0.0:80",
        }
        for description, url in cases.items():
            self.assertEqual(listener_url(description), url, description)
        self.assertEqual(listener_url("tcp:9601", "/metrics"), "http://0.0.0.0:9601/metrics")

    def test_package_version(self) -> None:
        """
        The version is the installed distribution's; without one (a source
        tree on C{PYTHONPATH}), the package's C{__version__}, marked.
        """
        import importlib.metadata

        import sockudo_tw

        self.assertEqual(package_version(), importlib.metadata.version("sockudo-tw"))

        def missing(name: str) -> str:
            raise importlib.metadata.PackageNotFoundError(name)

        self.patch(importlib.metadata, "version", missing)
        self.assertEqual(package_version(), f"{sockudo_tw.__version__} (not installed)")
