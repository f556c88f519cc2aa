"""
Tests for L{sockudo_tw.tap}: command-line options, config failures before
anything is bound, and the systemd unit's command line.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from sockudo_tw.config import load_config
from sockudo_tw.logs import package_version
from sockudo_tw.service import SockudoService, make_service
from sockudo_tw.tap import Options, makeService

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "etc", "sockudo", "config.json")
NGINX = os.path.join(ROOT, "etc", "nginx", "sockudo.conf")
UNIT = os.path.join(ROOT, "systemd", "sockudo.service")
_TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def _options(env: dict[str, str] | None = None) -> Options:
    """
    Options reading C{env} instead of the process environment.
    """
    options = Options()
    options.environ = env or {}
    return options


class OptionsTests(SynchronousTestCase):
    """
    Parsing C{twistd sockudo} arguments.
    """

    def test_defaults(self) -> None:
        """
        No arguments: no config file, no --listen, embedded defaults loaded.
        """
        options = _options()
        options.parseOptions([])
        self.assertEqual(options["config"], None)
        self.assertEqual(options["listen"], [])
        assert options.server_config is not None
        self.assertEqual(options.server_config.port, 6001)

    def test_config_and_listen(self) -> None:
        """
        C{-c}/C{--config} and repeatable C{--listen} are all kept.
        """
        for flag in ("-c", "--config"):
            options = _options()
            options.parseOptions(
                [flag, SAMPLE, "--listen", "tcp:7001", "--listen", "unix:/tmp/x.sock:mode=660"]
            )
            self.assertEqual(options["config"], SAMPLE)
            self.assertEqual(options["listen"], ["tcp:7001", "unix:/tmp/x.sock:mode=660"])
            assert options.server_config is not None
            self.assertEqual(options.server_config.host, "127.0.0.1")

    def test_bad_listen(self) -> None:
        """
        An unparseable strports description is a usage error.
        """
        for bad in ("nonsense:1", "tcp:notaport"):
            with self.assertRaises(UsageError) as e:
                _options().parseOptions(["--listen", bad])
            self.assertIn(bad, str(e.exception))

    def test_bad_listen_explained(self) -> None:
        """
        Every way Twisted's endpoint parser can fail (a C{systemd:} socket
        that was not passed, by index or by name, a bad domain, an unknown
        or repeated parameter, a missing certificate file) is a usage error
        naming the description and the problem in words, never a raw
        C{IndexError} nor the parser's internal function names.
        """
        # trial is not started by systemd: no socket was passed.
        missing = os.path.abspath(self.mktemp())
        cases = {
            "systemd:domain=INET:index=3": "no inherited socket at that index",
            "systemd:domain=INET:name=web": "no inherited socket named 'web'",
            "systemd:domain=FOO:index=0": "no inherited socket at that index",
            "systemd:": "Specify exactly one of descriptor index or name",
            "tcp:6001:bogus=1": "unexpected keyword argument 'bogus'",
            "tcp:6001:interface=a:b": "multiple values for argument 'interface'",
            f"ssl:6443:privateKey={missing}": f"No such file or directory: {missing}",
            "unix:/tmp/x.sock:mode=zz": "invalid literal",
        }
        for bad, why in cases.items():
            with self.assertRaises(UsageError) as e:
                _options().parseOptions(["--listen", bad])
            message = str(e.exception)
            self.assertTrue(message.startswith(f"--listen {bad!r}: "), message)
            self.assertIn(why, message)
            self.assertNotIn("_parse", message)
        with self.assertRaises(UsageError) as e:
            _options().parseOptions(["--listen", "systemd:domain=INET:index=0"])
        self.assertIn("systemd passed no sockets", str(e.exception))

    def test_version(self) -> None:
        """
        C{--version} prints sockudo-tw's version (then Twisted's and
        Python's, for bug reports) and exits 0.
        """
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        with self.assertRaises(SystemExit) as e:
            _options().parseOptions(["--version"])
        self.assertEqual(e.exception.code, 0)
        printed = out.getvalue()
        self.assertTrue(printed.startswith(f"sockudo-tw {package_version()} (Twisted "), printed)
        self.assertNotIn("Twisted version:", printed)
        self.assertIn("sockudo-tw's version", str(_options()))

    def test_bad_config(self) -> None:
        """
        Config errors become usage errors naming the key path.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump({"adapter": {"driver": "carrier-pigeon"}}, f)
        with self.assertRaises(UsageError) as e:
            _options().parseOptions(["--config", path])
        self.assertIn("adapter.driver", str(e.exception))

    def test_unsupported_backends(self) -> None:
        """
        Backends Sockudo has and we refuse (the NATS and Redis Cluster
        adapters, the Redis Cluster queue, an incomplete Lambda webhook
        target) are usage errors naming what to use instead.
        """
        with self.assertRaises(UsageError) as e:
            _options({"QUEUE_DRIVER": "redis-cluster"}).parseOptions([])
        self.assertIn('queue.driver: "redis-cluster"', str(e.exception))
        path = self.mktemp()
        app = {"id": "1", "key": "k", "secret": "s", "max_connections": 0}
        app["webhooks"] = [{"lambda": {"function_name": "f"}, "event_types": ["channel_occupied"]}]
        with open(path, "w") as f:
            json.dump({"app_manager": {"array": {"apps": [app]}}}, f)
        with self.assertRaises(UsageError) as e:
            _options().parseOptions(["--config", path])
        self.assertIn("region", str(e.exception))

    def test_env(self) -> None:
        """
        The environment given to the options overrides the file.
        """
        options = _options({"PORT": "7007"})
        options.parseOptions(["--config", SAMPLE])
        assert options.server_config is not None
        self.assertEqual(options.server_config.port, 7007)
        with self.assertRaises(UsageError) as e:
            _options({"PORT": "x"}).parseOptions([])
        self.assertIn("PORT", str(e.exception))

    def test_make_service(self) -> None:
        """
        C{makeService} returns the root service, not yet started.
        """
        options = _options()
        options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1"])
        service = makeService(options)
        self.assertIsInstance(service, SockudoService)
        self.assertFalse(service.running)
        # The --listen listener and the metrics listener (on by default).
        self.assertEqual(len(list(service)), 2)


def _comments(section: dict[str, object]) -> str:
    """
    The C{_comment*} notes of one config section, joined.
    """
    return " ".join(str(v) for k, v in section.items() if k.startswith("_comment"))


# Per section with a driver: (drivers sockudo-tw implements, Sockudo's
# drivers it refuses at start).
_DRIVERS = {
    "adapter": (("local", "redis", "redis-cluster", "nats"), ()),
    "app_manager": (("memory", "mysql", "pgsql", "postgres", "dynamodb"), ("scylladb",)),
    "cache": (("memory", "redis"), ("redis-cluster",)),
    "queue": (("memory", "redis", "sqs", "none"), ("redis-cluster",)),
    "rate_limiter": (("memory", "redis"), ("redis-cluster",)),
}


class SampleTests(SynchronousTestCase):
    """
    The sample config (C{etc/sockudo/config.json}) is safe behind the sample
    nginx (C{etc/nginx/sockudo.conf}) and its notes tell the truth.
    """

    def sample(self) -> dict[str, dict[str, object]]:
        """
        The sample config as parsed JSON.
        """
        with open(SAMPLE) as f:
            data: dict[str, dict[str, object]] = json.load(f)
        return data

    def test_trust_hops_matches_nginx(self) -> None:
        """
        nginx appends the client's address to C{X-Forwarded-For} (and
        overwrites C{X-Real-IP}) on the upstream that reaches the sample's
        loopback listener, so both rate limits trust exactly one hop, and
        the sample's note says why.
        """
        with open(NGINX) as f:
            lines = [line.split("#", 1)[0].strip() for line in f]
        self.assertIn("proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;", lines)
        self.assertIn("proxy_set_header X-Real-IP $remote_addr;", lines)
        self.assertIn("server 127.0.0.1:6001;", lines)
        config = load_config(SAMPLE, {})
        self.assertEqual((config.host, config.port), ("127.0.0.1", 6001))
        self.assertTrue(config.rate_limiter.enabled)
        self.assertEqual(config.rate_limiter.api_rate_limit.trust_hops, 1)
        self.assertEqual(config.rate_limiter.websocket_rate_limit.trust_hops, 1)
        note = _comments(self.sample()["rate_limiter"])
        for words in ("trust_hops", "X-Forwarded-For", "unknown_ip", "429"):
            self.assertIn(words, note)

    def statuses(self, trust_hops: int | None, forwarded_for: list[str]) -> list[int]:
        """
        Send one unsigned API request per C{X-Forwarded-For} value, as nginx
        does (one kept-alive connection from 127.0.0.1), to a daemon built
        from the sample (with C{trust_hops} replaced unless L{None}); return
        the status codes.
        """
        import attrs

        config = load_config(SAMPLE, {})
        if trust_hops is not None:
            limiter = config.rate_limiter
            config = attrs.evolve(
                config,
                rate_limiter=attrs.evolve(
                    limiter,
                    api_rate_limit=attrs.evolve(limiter.api_rate_limit, trust_hops=trust_hops),
                ),
            )
        reactor = MemoryReactorClock()
        make_service(config, reactor).startService()
        nginx = IPv4Address("TCP", "127.0.0.1", 40000)
        protocol = reactor.tcpServers[0][1].buildProtocol(nginx)
        transport = StringTransport(peerAddress=nginx)
        protocol.makeConnection(transport)
        codes = []
        for client in forwarded_for:
            protocol.dataReceived(
                b"GET /apps/app-id/channels HTTP/1.1\r\nHost: ws.example.com\r\n"
                b"X-Forwarded-For: " + client.encode() + b"\r\n\r\n"
            )
            codes.append(int(transport.value().split(b" ", 2)[1]))
            transport.clear()
        return codes

    def test_clients_behind_nginx(self) -> None:
        """
        Behind nginx, each client has its own API limit: as many distinct
        clients as the limit allows, plus one, all get through (401: the
        requests are unsigned); one client going over gets 429. With
        C{trust_hops} 0 they would all share nginx's limit.
        """
        limit = load_config(SAMPLE, {}).rate_limiter.api_rate_limit.max_requests
        clients = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(limit + 1)]
        self.assertEqual(set(self.statuses(None, clients)), {401})
        # A client's own X-Forwarded-For entry before nginx's is not trusted.
        codes = self.statuses(None, [f"{c}, 192.0.2.1" for c in clients])
        self.assertEqual((codes[limit - 1], codes[limit]), (401, 429))
        codes = self.statuses(0, clients)
        self.assertEqual((codes[limit - 1], codes[limit]), (401, 429))

    def test_driver_notes(self) -> None:
        """
        Each section's note names the drivers sockudo-tw implements, which
        load, and Sockudo's drivers it lacks only as refused, which stop
        the start with a usage error naming the key.
        """
        sample = self.sample()
        for section, (implemented, refused) in _DRIVERS.items():
            note = _comments(sample[section])
            for driver in (*implemented, *refused):
                self.assertRegex(note, rf"(?<![\w-]){re.escape(driver)}(?![\w-])", section)
            if refused:
                self.assertIn("refused", note, section)
            for driver in implemented:
                Options().parseOptions(["--config", self.with_driver(section, driver)])
            for driver in refused:
                with self.assertRaises(UsageError, msg=f"{section}.driver {driver}") as e:
                    Options().parseOptions(["--config", self.with_driver(section, driver)])
                self.assertIn(f"{section}.driver", str(e.exception))

    def with_driver(self, section: str, driver: str) -> str:
        """
        A copy of the sample with C{section.driver} set to C{driver}.
        """
        data = self.sample()
        data[section]["driver"] = driver
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump(data, f)
        return path


class SystemdTests(SynchronousTestCase):
    """
    The shipped systemd unit runs a command our Options accept.
    """

    def exec_start(self) -> list[str]:
        """
        The unit's C{ExecStart} as an argument list.
        """
        with open(UNIT) as f:
            lines = [line.strip() for line in f if line.startswith("ExecStart=")]
        self.assertEqual(len(lines), 1)
        return shlex.split(lines[0].split("=", 1)[1])

    def test_exec_start(self) -> None:
        """
        Foreground twistd with an empty pidfile and journal logging, then
        C{sockudo --config /etc/sockudo/config.json}, which our Options
        parse (with the sample config standing in for the absent file).
        """
        argv = self.exec_start()
        self.assertTrue(argv[0].endswith("/bin/twistd"))
        self.assertTrue(os.path.isabs(argv[0]))
        plugin = argv.index("sockudo")
        self.assertEqual(set(argv[1:plugin]), {"--nodaemon", "--pidfile=", "--logfile=-"})
        args = argv[plugin + 1 :]
        self.assertEqual(args, ["--config", "/etc/sockudo/config.json"])
        options = _options()
        options.parseOptions([SAMPLE if a == "/etc/sockudo/config.json" else a for a in args])
        self.assertEqual(options["config"], SAMPLE)

    def test_unit_settings(self) -> None:
        """
        A dedicated user, Type=simple, Restart=always.
        """
        with open(UNIT) as f:
            text = f.read()
        for line in ("User=sockudo", "Type=simple", "Restart=always"):
            self.assertIn(f"\n{line}\n", text)


class TwistdTests(SynchronousTestCase):
    """
    The real C{twistd} command exits before binding on bad config.
    """

    def run_twistd(self, *args: str) -> subprocess.CompletedProcess[str]:
        """
        Run C{twistd -n --pidfile= sockudo ARGS} from the source tree.
        """
        env = dict(os.environ, PYTHONPATH=ROOT)
        return subprocess.run(
            [sys.executable, "-c", _TWISTD, "-n", "--pidfile=", "sockudo", *args],
            env=env,
            cwd=self.mktemp_dir(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def mktemp_dir(self) -> str:
        """
        A fresh working directory.
        """
        path = self.mktemp()
        os.makedirs(path)
        return path

    def test_version(self) -> None:
        """
        C{twistd sockudo --version} prints sockudo-tw's version, not only
        Twisted's, and exits 0.
        """
        result = self.run_twistd("--version")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(result.stdout, r"^sockudo-tw \d+\.\d+\S* .*\(Twisted \S+, ")
        self.assertNotIn("Twisted version:", result.stdout)

    def test_bad_listen_exits(self) -> None:
        """
        A C{--listen systemd:} index systemd did not pass makes twistd exit
        non-zero with a usage message, no traceback, nothing started.
        """
        result = self.run_twistd("--listen", "systemd:domain=INET:index=5")
        output = result.stdout + result.stderr
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--listen 'systemd:domain=INET:index=5': no inherited socket", output)
        self.assertNotIn("Traceback", output)
        self.assertNotIn("starting up", output)

    def test_systemd_listen(self) -> None:
        """
        C{systemd:} descriptions naming sockets systemd did pass (by index
        or by name, the way L{sockudo_tw.workers} passes them) are accepted;
        one past the last is refused saying what was passed.
        """
        script = (
            "import os, sys; os.environ['LISTEN_PID'] = str(os.getpid())\n"
            "from twisted.python.usage import UsageError\n"
            "from sockudo_tw.tap import Options\n"
            "options = Options(); options.environ = {}\n"
            "try:\n"
            "    options.parseOptions(sys.argv[1:])\n"
            "except UsageError as e:\n"
            "    print(e); sys.exit(2)\n"
            "print(len(options['listen']))\n"
        )
        env = dict(os.environ, PYTHONPATH=ROOT, LISTEN_FDS="1", LISTEN_FDNAMES="web")
        ok = ["--listen", "systemd:domain=INET:index=0", "--listen", "systemd:domain=INET:name=web"]
        bad = ["--listen", "systemd:domain=INET:index=1"]
        results = [
            subprocess.run(
                [sys.executable, "-c", script, *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            for args in (ok, bad)
        ]
        self.assertEqual((results[0].returncode, results[0].stdout), (0, "2\n"), results[0].stderr)
        self.assertEqual(results[1].returncode, 2, results[1].stderr)
        self.assertIn(
            "no inherited socket at that index; systemd passed 1 socket(s)", results[1].stdout
        )

    def test_bad_config_exits(self) -> None:
        """
        An invalid file makes twistd exit non-zero naming the key, without
        starting the server.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            json.dump({"port": 99999}, f)
        result = self.run_twistd("--config", path)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("port: expected an integer from 1 to 65535", result.stdout + result.stderr)
        self.assertNotIn("starting up", result.stdout + result.stderr)
