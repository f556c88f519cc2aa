"""
The nginx samples, run for real: C{etc/nginx/sockudo.conf} (TLS in front of
sockudo-tw on 127.0.0.1) and C{etc/nginx/sockudo-unix.conf} (TLS in front of
its Unix socket).

Each sample is rendered for the test (loopback ports instead of 443 and 80,
a self-signed certificate made here, the test daemon's address as the
upstream; every substitution must match exactly once, so an edited sample
cannot slip past), checked with C{nginx -t}, and served by a foreground
C{nginx -p TMP} in front of a real daemon running the sample config
(C{etc/sockudo/config.json}, its webhooks and metrics listener removed):
a C{wss://} client receives an event triggered over C{https://}, plain
HTTP is redirected to HTTPS, and the sample's C{trust_hops: 1} makes the
API rate limit count clients (two loopback addresses) apart.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.blocking_clients import (
    Address,
    DaemonProcess,
    PusherSocket,
    http_request,
    self_signed,
    trigger,
    wait_until_answers,
)
from tests.interop_harness import (
    REPO_ROOT,
    daemon_argv,
    free_port,
    listening_socket,
    server_environment,
    unavailable,
)

NGINX_DIR = REPO_ROOT / "etc" / "nginx"
SAMPLE = REPO_ROOT / "etc" / "sockudo" / "config.json"
_TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def render(sample: str, upstream: str, server_line: str, **paths: Any) -> str:
    """
    The text of C{etc/nginx/SAMPLE} with the test's ports, certificate and
    upstream (C{server_line} is the sample's own C{server} line in its
    C{upstream} block).

    @param paths: C{https_port}, C{http_port}, C{cert}, C{key}.
    """
    text = (NGINX_DIR / sample).read_text()
    substitutions = [
        ("    listen 443 ssl;\n", f"    listen 127.0.0.1:{paths['https_port']} ssl;\n"),
        ("    listen [::]:443 ssl;\n", ""),
        ("    listen 80;\n", f"    listen 127.0.0.1:{paths['http_port']};\n"),
        ("    listen [::]:80;\n", ""),
        ("/etc/letsencrypt/live/ws.example.com/fullchain.pem", str(paths["cert"])),
        ("/etc/letsencrypt/live/ws.example.com/privkey.pem", str(paths["key"])),
        (f"    {server_line}\n", f"    server {upstream};\n"),
    ]
    for old, new in substitutions:
        if text.count(old) != 1:
            raise AssertionError(f"{sample}: {old!r} found {text.count(old)} times, not once")
        text = text.replace(old, new)
    return text


class NginxSampleMixin:
    """
    Run one nginx sample in front of a daemon running the sample config
    (mixed into a C{SynchronousTestCase} per sample).

    @cvar sample: the file name in C{etc/nginx}.
    @cvar server_line: its C{upstream} block's C{server} line.
    """

    sample = ""
    server_line = ""

    def setUp(self) -> None:
        # Debian installs it in /usr/sbin, which a user's PATH may lack.
        nginx = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
        if nginx is None:
            unavailable(self, "`nginx` is not installed (Debian package nginx)")
        self.nginx = nginx
        self.directory = Path(tempfile.mkdtemp(prefix="sockudo-nginx-"))
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.cert, self.key = self_signed(self.directory)
        self.tls = ssl.create_default_context(cafile=str(self.cert))
        self.https_port, self.http_port = free_port(), free_port()
        self.api_limit: int | None = None

    def sample_config(self) -> dict[str, Any]:
        """
        The sample config, without its webhooks (nobody listens on their
        URL here) and metrics listener (a fixed port).
        """
        config: dict[str, Any] = json.loads(SAMPLE.read_text())
        for app in config["app_manager"]["array"]["apps"]:
            app.pop("webhooks", None)
        config["metrics"]["enabled"] = False
        if self.api_limit is not None:
            config["rate_limiter"]["api_rate_limit"]["max_requests"] = self.api_limit
        return config

    def app(self) -> dict[str, Any]:
        """
        The sample config's app.
        """
        app: dict[str, Any] = self.sample_config()["app_manager"]["array"]["apps"][0]
        return app

    def start_daemon(self) -> str:
        """
        Start the daemon; the address for nginx's C{upstream} C{server} line.
        """
        raise NotImplementedError()

    def nginx_command(self, upstream: str, *args: str) -> list[str]:
        """
        nginx on the sample rendered with C{upstream}, everything it writes
        under the test's directory.
        """
        (self.directory / "sockudo.conf").write_text(
            render(
                self.sample,
                upstream,
                self.server_line,
                https_port=self.https_port,
                http_port=self.http_port,
                cert=self.cert,
                key=self.key,
            )
        )
        for temp in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.directory / temp).mkdir(exist_ok=True)
        d = self.directory
        # As root, nginx's workers would switch to "nobody", who cannot
        # reach the test's directory; elsewhere the directive is ignored.
        user = "user root;\n" if os.geteuid() == 0 else ""
        (d / "nginx.conf").write_text(
            f"{user}worker_processes 1;\n"
            f"error_log {d}/error.log info;\n"
            "events { worker_connections 128; }\n"
            "http {\n"
            f"    access_log {d}/access.log;\n"
            f"    client_body_temp_path {d}/client_body;\n"
            f"    proxy_temp_path {d}/proxy;\n"
            f"    fastcgi_temp_path {d}/fastcgi;\n"
            f"    uwsgi_temp_path {d}/uwsgi;\n"
            f"    scgi_temp_path {d}/scgi;\n"
            f"    include {d}/sockudo.conf;\n"
            "}\n"
        )
        return [
            self.nginx,
            "-p",
            str(d),
            "-e",
            str(d / "error.log"),
            "-c",
            str(d / "nginx.conf"),
            "-g",
            f"daemon off; pid {d}/nginx.pid;",
            *args,
        ]

    def test_config_test(self) -> None:
        """
        C{nginx -t} accepts the sample.
        """
        result = subprocess.run(
            self.nginx_command("127.0.0.1:1", "-t"), capture_output=True, text=True, timeout=60
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("syntax is ok", result.stderr)
        self.assertIn("test is successful", result.stderr)

    def test_through_nginx(self) -> None:
        """
        C{/up}, a C{wss://} client receiving an event triggered over
        C{https://} (both through nginx), and the redirect of plain HTTP.
        """
        upstream = self.start_daemon()
        nginx = DaemonProcess(self.nginx_command(upstream), self.directory / "nginx.log")
        self.addCleanup(nginx.stop)
        address: Address = ("127.0.0.1", self.https_port)
        try:
            status, body = wait_until_answers(address, nginx.process, self.tls)
            self.assertEqual((status, body), (200, b"OK"))
            app = self.app()
            client = PusherSocket(address, app["key"], self.tls)
            client.subscribe("through-nginx")
            status, answer = trigger(
                address, app, "through-nginx", "proxied", {"ok": True}, self.tls
            )
            self.assertEqual(status, 200, answer)
            event = client.wait_for("proxied")
            client.close()
        except (AssertionError, OSError) as error:
            self.fail(f"{error}\n{self.logs()}")
        self.assertEqual(json.loads(event["data"]), {"ok": True})
        status, headers, _ = http_request(("127.0.0.1", self.http_port), "GET", "/up")
        self.assertEqual((status, headers["location"]), (301, "https://localhost/up"))

    def test_clients_limited_apart(self) -> None:
        """
        Behind nginx, with the sample's C{trust_hops: 1}, the API rate limit
        counts each client apart: one client over the limit gets 429, another
        one (another loopback address) does not.
        """
        self.api_limit = 2
        upstream = self.start_daemon()
        nginx = DaemonProcess(self.nginx_command(upstream), self.directory / "nginx.log")
        self.addCleanup(nginx.stop)
        address: Address = ("127.0.0.1", self.https_port)
        path = f"/apps/{self.app()['id']}/channels"
        try:
            wait_until_answers(address, nginx.process, self.tls)
            first = [
                http_request(address, "GET", path, tls=self.tls, source="127.0.0.1")[0]
                for _ in range(3)
            ]
            other = http_request(address, "GET", path, tls=self.tls, source="127.0.0.2")[0]
        except (AssertionError, OSError) as error:
            self.fail(f"{error}\n{self.logs()}")
        # Unsigned requests: 401 while under the limit, 429 over it.
        self.assertEqual(first, [401, 401, 429], self.logs())
        self.assertEqual(other, 401, self.logs())

    def logs(self) -> str:
        """
        nginx's error log and the daemon's output, for failure messages.
        """
        parts = []
        for name in ("error.log", "daemon.log"):
            path = self.directory / name
            if path.exists():
                parts.append(f"--- {name} ---\n" + path.read_text(errors="replace")[-4000:])
        return "\n".join(parts)


class TLSSampleTests(NginxSampleMixin, SynchronousTestCase):
    """
    C{etc/nginx/sockudo.conf}: TLS in front of 127.0.0.1:PORT.
    """

    sample = "sockudo.conf"
    server_line = "server 127.0.0.1:6001;"

    def start_daemon(self) -> str:
        """
        The daemon on a socket the test bound (as the harness does), so its
        port is known and nobody takes it first.
        """
        sock = listening_socket()
        self.addCleanup(sock.close)
        port = sock.getsockname()[1]
        config = self.sample_config()
        config["port"] = port
        path = self.directory / "config.json"
        path.write_text(json.dumps(config))
        env = server_environment()
        env["SOCKUDO_TEST_LISTEN_FD"] = str(sock.fileno())
        daemon = DaemonProcess(
            daemon_argv(path),
            self.directory / "daemon.log",
            env,
            cwd=self.directory,
            pass_fds=[sock.fileno()],
        )
        self.addCleanup(daemon.stop)
        wait_until_answers(("127.0.0.1", port), daemon.process)
        return f"127.0.0.1:{port}"


class UnixSampleTests(NginxSampleMixin, SynchronousTestCase):
    """
    C{etc/nginx/sockudo-unix.conf}: TLS in front of the daemon's Unix socket,
    enabled in the sample config as that file's notes say.
    """

    sample = "sockudo-unix.conf"
    server_line = "server unix:/run/sockudo/sockudo.sock;"

    def start_daemon(self) -> str:
        """
        The daemon on the sample config with C{unix_socket} enabled (which
        replaces its TCP listener).
        """
        socket_path = self.directory / "run" / "sockudo.sock"
        config = self.sample_config()
        config["unix_socket"].update(enabled=True, path=str(socket_path))
        path = self.directory / "config.json"
        path.write_text(json.dumps(config))
        daemon = DaemonProcess(
            [
                sys.executable,
                "-c",
                _TWISTD,
                "-n",
                "--pidfile=",
                "sockudo",
                "--config",
                str(path),
            ],
            self.directory / "daemon.log",
            server_environment(),
            cwd=self.directory,
        )
        self.addCleanup(daemon.stop)
        wait_until_answers(str(socket_path), daemon.process)
        return f"unix:{socket_path}"
