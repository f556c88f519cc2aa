# -*- test-case-name: tests.test_browser -*-
"""
pusher-js's browser build in Debian's headless Chromium (driven by
playwright-core, C{tests/interop/browser.js}) against a real
C{twistd -n sockudo}: over C{ws://}, over C{wss://} with a certificate
Chromium trusts only through an SPKI pin, and forced onto the C{xhr_streaming}
HTTP fallback, which must end in a plain 404 (with CORS headers) rather than
in a CORS error in the console.

The page and C{pusher.min.js} (from C{tests/interop/node_modules}) are served
by the test process on another port, so every request to the daemon is
cross-origin, as from a real site.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.static import Data, File

from sockudo_tw.web import FALLBACK_TRANSPORT_MESSAGE
from tests.interop_harness import (
    INTEROP_DIR,
    REPO_ROOT,
    NodeDriver,
    SharedServer,
    app_config,
    free_port,
    require_node,
    server_config,
    server_environment,
    unavailable,
)
from tests.loopback_site import LoopbackSite
from tests.test_tls import make_chain

BROWSER_SCRIPT = INTEROP_DIR / "browser.js"
CHROMIUM = Path("/usr/bin/chromium")
PUSHER_JS = INTEROP_DIR / "node_modules" / "pusher-js" / "dist" / "web" / "pusher.min.js"

#: Every node process and Chromium with it is ended after this many seconds.
BROWSER_LIFETIME = 60
TLS_START_TIMEOUT = 20.0

#: The page under test: pusher-js with the options from the C{config} query
#: parameter (JSON), reporting its log, state changes, connection, errors,
#: subscription and events through C{window.sockudoReport}.
CLIENT_PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>pusher-js under test</title>
<script src="/pusher.min.js"></script></head>
<body><p id="state">loading</p>
<script>
const config = JSON.parse(new URLSearchParams(location.search).get('config'));
const report = (kind, fields) => window.sockudoReport(Object.assign({ kind }, fields));
Pusher.log = (message) => report('log', { message: String(message) });
const pusher = new Pusher(config.key, config.options);
pusher.connection.bind('state_change', (states) => {
  document.getElementById('state').textContent = states.current;
  report('state', { previous: states.previous, current: states.current });
});
pusher.connection.bind('connected', () => {
  report('connected', { socket_id: pusher.connection.socket_id });
});
pusher.connection.bind('error', (error) => {
  report('error', { error: JSON.parse(JSON.stringify(error)) });
});
if (config.channel) {
  const channel = pusher.subscribe(config.channel);
  channel.bind('pusher:subscription_succeeded', () => {
    report('subscribed', { channel: config.channel });
  });
  channel.bind_global((event, data) => {
    report('event', { channel: config.channel, event, data: data === undefined ? null : data });
  });
}
</script></body></html>
"""

#: In-page XHR as pusher-js's fallback sends it (a JSON POST, so with a
#: preflight), resolving with the status the page could read: 0 when CORS
#: blocked the answer.
XHR_POST = """new Promise((resolve) => {
  const xhr = new XMLHttpRequest();
  xhr.open('POST', %s);
  xhr.setRequestHeader('Content-Type', 'application/json');
  xhr.onloadend = () => resolve({ status: xhr.status, body: xhr.responseText });
  xhr.send('[]');
})"""

CORS_ERROR = "CORS policy"


def require_browser(case: TestCase) -> None:
    """
    Skip (outside CI) or fail (with C{CI=true}) without node and the pinned
    packages, playwright-core, or Debian's C{/usr/bin/chromium}.
    """
    require_node(case)
    if not (INTEROP_DIR / "node_modules" / "playwright-core" / "package.json").exists():
        unavailable(case, "browser tests need tests/interop/node_modules/playwright-core (npm ci)")
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(case, "browser tests need Debian's Chromium at /usr/bin/chromium")


class BrowserDriver(NodeDriver):
    """
    A L{NodeDriver} running C{tests/interop/browser.js}: one headless
    Chromium with a fresh profile, its tabs' reports and network, and the
    Node SDK.
    """

    @classmethod
    async def launch(
        cls,
        case: TestCase,
        describe_server: Callable[[], str],
        flags: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> BrowserDriver:
        """
        Start Chromium with the standard flags plus C{flags}, wait until it
        is ready and register its shutdown as a cleanup of C{case}.

        @param env: variables added to node's environment.
        """
        from twisted.internet import reactor

        driver = cls(describe_server)
        node = shutil.which("node") or "node"
        driver._transport = reactor.spawnProcess(
            driver._collector,
            node,
            [node, str(BROWSER_SCRIPT), str(BROWSER_LIFETIME), *flags],
            env={**os.environ, **(env or {})},
            path=str(INTEROP_DIR),
        )
        case.addCleanup(driver.stop)
        await driver.wait_for(lambda o: o["type"] == "ready", "Chromium ready", within=30)
        return driver

    async def open(self, page: str, url: str) -> None:
        """
        Open C{url} in a new tab named C{page} and wait until it has loaded.
        """
        self.send(op="open", page=page, url=url)
        await self.wait_for(
            lambda o: o["type"] == "opened" and o["page"] == page, f"tab {page!r} loaded"
        )

    async def evaluate(self, page: str, expression: str) -> Any:
        """
        The value of C{expression} in tab C{page} (awaited if a promise).
        """
        self._next_id += 1
        call_id = self._next_id
        self.send(op="eval", id=call_id, page=page, expression=expression)
        result = await self.wait_for(
            lambda o: o["type"] == "eval_result" and o["id"] == call_id, f"eval in {page!r}"
        )
        if not result["ok"]:
            raise AssertionError(f"eval failed: {result['error']}\n" + self.report())
        return result["value"]

    async def reported(self, page: str, kind: str, **fields: Any) -> dict[str, Any]:
        """
        Wait for tab C{page} to report C{kind} with the given fields.
        """
        return await self.wait_for(
            lambda o: (
                o["type"] == "report"
                and o["page"] == page
                and o["report"]["kind"] == kind
                and all(o["report"].get(k) == v for k, v in fields.items())
            ),
            f"tab {page!r} to report {kind} {fields or ''}",
        )

    def console(self, page: str) -> list[str]:
        """
        Every console message of tab C{page} so far.
        """
        return [
            o["text"] for o in self.observations if o["type"] == "console" and o["page"] == page
        ]


def page_site(case: TestCase) -> LoopbackSite:
    """
    Serve the page under test and pusher-js's browser build from the test
    process.
    """
    root = Resource()
    root.putChild(b"client.html", Data(CLIENT_PAGE, "text/html; charset=utf-8"))
    root.putChild(b"pusher.min.js", File(str(PUSHER_JS), defaultType="text/javascript"))
    return LoopbackSite.start(case, root)


def page_url(site: LoopbackSite, key: str, options: Mapping[str, Any], channel: str) -> str:
    """
    The page's URL for pusher-js with C{key} and C{options}, subscribing to
    C{channel}.
    """
    config = {"key": key, "options": dict(options), "channel": channel}
    return f"{site.url}/client.html?config={quote(json.dumps(config))}"


def spki_pin(cert_path: str) -> str:
    """
    The base64 SHA-256 of the first certificate's SubjectPublicKeyInfo in
    C{cert_path}: what C{--ignore-certificate-errors-spki-list} takes.
    """
    with open(cert_path, "rb") as pem:
        leaf = x509.load_pem_x509_certificates(pem.read())[0]
    spki = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


class _DaemonOutput(protocol.ProcessProtocol):
    """
    Keeps a daemon's output and tells when it has exited.
    """

    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: defer.Deferred[None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted's name)
        self.output += data

    def errReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted's name)
        self.output += data

    def processEnded(self, reason: Failure) -> None:  # noqa: N802 (Twisted's name)
        self.ended.callback(None)


class _Answer(protocol.Protocol):
    """
    Collects a whole HTTP/1.0 answer.
    """

    def __init__(self) -> None:
        self.data = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.done.callback(self.data)


class TlsDaemon:
    """
    A C{twistd -n sockudo} of one test serving TLS from its config's C{ssl}
    section, as an operator enables it (the harness's adopted socket cannot
    carry TLS, so the port comes from L{free_port}).

    @ivar port: its TLS port.
    @ivar root_path: the root CA's PEM file (the chain is leaf, then
        intermediate, as C{tests.test_tls.make_chain} makes it).
    @ivar cert_path: the served chain.
    """

    def __init__(self, port: int, cert_path: str, root_path: str) -> None:
        self.port = port
        self.cert_path = cert_path
        self.root_path = root_path
        self._output = _DaemonOutput()
        self._transport: Any = None

    @classmethod
    async def start(cls, case: TestCase, app: Mapping[str, Any]) -> TlsDaemon:
        """
        Make a certificate chain, write the config, start the daemon and
        wait until C{GET /up} answers over TLS (trusting only the root).
        """
        from twisted.internet import reactor

        port, cert_path, config_path, root_pem = _tls_setup(case.mktemp(), app)
        daemon = cls(port, cert_path, os.path.join(os.path.dirname(cert_path), "root.pem"))
        argv = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "sockudo",
            "--config",
            config_path,
        ]
        daemon._transport = reactor.spawnProcess(
            daemon._output, sys.executable, argv, env=server_environment(), path=str(REPO_ROOT)
        )
        case.addCleanup(daemon.stop)
        await daemon._wait_until_up(case, root_pem)
        return daemon

    async def _wait_until_up(self, case: TestCase, root_pem: bytes) -> None:
        """
        Ask C{GET /up} over TLS until it answers 200; fail C{case} with the
        daemon's log if it exits or does not within L{TLS_START_TIMEOUT}.
        """
        from twisted.internet import reactor, task

        tls = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(root_pem))
        deadline = time.monotonic() + TLS_START_TIMEOUT
        answer = b""
        while time.monotonic() < deadline and not self._output.ended.called:
            endpoint = wrapClientTLS(tls, TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, 1))
            try:
                got = await connectProtocol(endpoint, _Answer())
                assert got.transport is not None
                got.transport.write(b"GET /up HTTP/1.0\r\nHost: localhost\r\n\r\n")
                answer = await got.done.addTimeout(2, reactor)
            except Exception as error:
                answer = repr(error).encode()
            if answer.startswith(b"HTTP/1.0 200 "):
                return
            await task.deferLater(reactor, 0.1)
        case.fail(f"TLS daemon not up on {self.port} ({answer[:200]!r}):\n{self.log_tail()}")

    async def stop(self) -> None:
        """
        SIGTERM the daemon (SIGKILL after 10 s) and wait until it has exited.
        """
        from twisted.internet import reactor

        for signal in ("TERM", "KILL"):
            if self._output.ended.called:
                return
            try:
                self._transport.signalProcess(signal)
            except Exception:
                return
            try:
                await defer.Deferred.fromCoroutine(_wait(self._output.ended)).addTimeout(
                    10, reactor
                )
            except defer.TimeoutError:
                pass

    def log_tail(self) -> str:
        """
        The end of the daemon's output, for failure messages.
        """
        text = bytes(self._output.output).decode("utf-8", "replace")
        return "--- TLS twistd output (tail) ---\n" + "\n".join(text.splitlines()[-40:])


def _tls_setup(directory: str, app: Mapping[str, Any]) -> tuple[int, str, str, bytes]:
    """
    Make a certificate chain in C{directory} (C{root.pem} beside the chain)
    and write a config serving C{app} over TLS on a free port.

    @return: the port, the chain's path, the config's path and the root
        CA's PEM.
    """
    directory = os.path.abspath(directory)
    cert_path, key_path, root_pem = make_chain(directory)
    ssl = {"enabled": True, "cert_path": cert_path, "key_path": key_path}
    config_path = os.path.join(directory, "config.json")
    port = free_port()
    with open(config_path, "w", encoding="utf-8") as config:
        json.dump(server_config(port, [app], {"ssl": ssl}), config)
    return port, cert_path, config_path, root_pem


async def _wait(ended: defer.Deferred[None]) -> None:
    """
    Wait for C{ended} without consuming its result for other waiters.
    """
    waiter: defer.Deferred[None] = defer.Deferred()
    ended.addBoth(lambda result: (waiter.callback(None), result)[1])
    await waiter


def sdk_options(app: Mapping[str, Any], host: str, port: int, tls: bool) -> dict[str, Any]:
    """
    Node SDK options publishing to the daemon for C{app}.
    """
    return {
        "appId": app["id"],
        "key": app["key"],
        "secret": app["secret"],
        "host": host,
        "port": str(port),
        "useTLS": tls,
    }


class ChromiumTests(TestCase):
    """
    pusher-js in headless Chromium: ws, wss, and the HTTP fallback.
    """

    timeout = 90

    async def receive_event(self, browser: BrowserDriver, page: str, channel: str) -> None:
        """
        Publish an event through the HTTP API (Node SDK) and check that the
        page's pusher-js hands it to the application.
        """
        result = await browser.call_sdk("trigger", channel, "greeting", {"hello": "browser"})
        self.assertEqual(result["status"], 200, result)
        event = await browser.reported(page, "event", channel=channel, event="greeting")
        self.assertEqual(event["report"]["data"], {"hello": "browser"})

    async def test_ws(self) -> None:
        """
        Over C{ws://}: pusher-js connects with a socket id, subscribes and
        receives an event triggered through the HTTP API; the console has no
        error.
        """
        require_browser(self)
        server = await SharedServer.get(self)
        app = server.take_app()
        site = page_site(self)
        browser = await BrowserDriver.launch(self, server.log_tail)
        await browser.init_sdk(sdk_options(app, "127.0.0.1", server.port, tls=False))
        options = {
            "cluster": "mt1",
            "wsHost": "127.0.0.1",
            "wsPort": server.port,
            "forceTLS": False,
            "enabledTransports": ["ws"],
        }
        await browser.open("ws", page_url(site, app["key"], options, "browser-ws"))
        connected = await browser.reported("ws", "connected")
        self.assertRegex(connected["report"]["socket_id"], r"^\d+\.\d+$")
        await browser.reported("ws", "subscribed", channel="browser-ws")
        await self.receive_event(browser, "ws", "browser-ws")
        errors = [o for o in browser.observations if o["type"] in ("pageerror", "requestfailed")]
        self.assertEqual(errors, [], browser.report())

    async def test_wss(self) -> None:
        """
        Over C{wss://} to a daemon with C{ssl.enabled}: Chromium trusts its
        certificate only through C{--ignore-certificate-errors-spki-list}
        (the leaf's SPKI hash; no C{--ignore-certificate-errors}); pusher-js
        with C{forceTLS} connects over C{wss}, subscribes and receives an
        event published over HTTPS.
        """
        require_browser(self)
        app = app_config()
        daemon = await TlsDaemon.start(self, app)
        site = page_site(self)
        browser = await BrowserDriver.launch(
            self,
            daemon.log_tail,
            flags=[f"--ignore-certificate-errors-spki-list={spki_pin(daemon.cert_path)}"],
            env={"NODE_EXTRA_CA_CERTS": daemon.root_path},
        )
        await browser.init_sdk(sdk_options(app, "localhost", daemon.port, tls=True))
        options = {
            "cluster": "mt1",
            "wsHost": "localhost",
            "wsPort": daemon.port,
            "wssPort": daemon.port,
            "forceTLS": True,
            "enabledTransports": ["ws", "wss"],
        }
        await browser.open("wss", page_url(site, app["key"], options, "browser-wss"))
        await browser.reported("wss", "connected")
        connecting = [
            o["report"]["message"]
            for o in browser.observations
            if o["type"] == "report" and o["report"]["kind"] == "log"
        ]
        self.assertTrue(
            any(f"wss://localhost:{daemon.port}/app/" in m for m in connecting),
            browser.report(),
        )
        await browser.reported("wss", "subscribed", channel="browser-wss")
        await self.receive_event(browser, "wss", "browser-wss")

    async def test_fallback_transport(self) -> None:
        """
        pusher-js forced onto C{xhr_streaming} against the daemon: the
        preflight succeeds and the POST gets the 404 with the explanation
        and C{Access-Control-Allow-Origin}, and the console shows no CORS
        error. The same in-page request to a path without CORS headers does
        show one: the check can see what it looks for.
        """
        require_browser(self)
        server = await SharedServer.get(self)
        app = server.take_app()
        site = page_site(self)
        browser = await BrowserDriver.launch(self, server.log_tail)
        options = {
            "cluster": "mt1",
            "wsHost": "127.0.0.1",
            "wsPort": server.port,
            "httpHost": "127.0.0.1",
            "httpPort": server.port,
            "forceTLS": False,
            "enabledTransports": ["xhr_streaming"],
        }
        await browser.open("xhr", page_url(site, app["key"], options, "browser-xhr"))

        def fallback(o: dict[str, Any]) -> bool:
            return (
                o["type"] == "response"
                and o["method"] == "POST"
                and "/xhr_streaming?" in o["url"]
                and o["url"].startswith(f"http://127.0.0.1:{server.port}/pusher/app/{app['key']}/")
            )

        response = await browser.wait_for(fallback, "the xhr_streaming POST's answer")
        self.assertEqual(response["status"], 404, response)
        self.assertEqual(response["headers"].get("access-control-allow-origin"), "*", response)

        # The page itself can read the answer (no CORS block): status and
        # explanation.
        streaming_url = json.dumps(response["url"])
        seen = await browser.evaluate("xhr", XHR_POST % streaming_url)
        self.assertEqual(seen["status"], 404, seen)
        self.assertEqual(json.loads(seen["body"]), {"error": FALLBACK_TRANSPORT_MESSAGE})

        # The control: a path without CORS headers is blocked, and Chromium
        # says so in the console.
        other_url = json.dumps(f"http://127.0.0.1:{server.port}/not/a/transport")
        blocked = await browser.evaluate("xhr", XHR_POST % other_url)
        self.assertEqual(blocked["status"], 0, blocked)
        await browser.wait_for(
            lambda o: o["type"] == "console" and CORS_ERROR in o["text"], "the control's CORS error"
        )
        about_fallback = [
            text for text in browser.console("xhr") if CORS_ERROR in text and "/pusher/" in text
        ]
        self.assertEqual(about_fallback, [], browser.report())
        failed = [
            o
            for o in browser.observations
            if o["type"] == "requestfailed" and "/pusher/" in o["url"]
        ]
        self.assertEqual(failed, [], browser.report())
