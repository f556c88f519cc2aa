"""
Tests for L{sockudo_tw.tap}: command-line options, config failures before
anything is bound, and the systemd unit's command line.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from sockudo_tw.service import SockudoService
from sockudo_tw.tap import Options, makeService

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "etc", "sockudo", "config.json")
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
        adapters, the C{sqs} queue, Lambda webhook targets) are usage errors
        naming what to use instead.
        """
        for driver in ("nats", "redis-cluster"):
            with self.assertRaises(UsageError) as e:
                _options({"ADAPTER_DRIVER": driver}).parseOptions([])
            self.assertIn(f"adapter.driver: {driver!r} is not supported", str(e.exception))
        with self.assertRaises(UsageError) as e:
            _options({"QUEUE_DRIVER": "sqs"}).parseOptions([])
        self.assertIn('queue.driver: "sqs"', str(e.exception))
        path = self.mktemp()
        app = {"id": "1", "key": "k", "secret": "s", "max_connections": 0}
        app["webhooks"] = [{"lambda_function": "f", "event_types": ["channel_occupied"]}]
        with open(path, "w") as f:
            json.dump({"app_manager": {"array": {"apps": [app]}}}, f)
        with self.assertRaises(UsageError) as e:
            _options().parseOptions(["--config", path])
        self.assertIn("lambda webhook targets are not supported", str(e.exception))

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
