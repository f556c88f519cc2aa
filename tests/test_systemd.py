"""
The systemd units as shipped: C{systemd/sockudo.service}, C{sockudo.socket}
and the drop-ins in C{systemd/drop-ins/}.

Nothing here needs systemd as PID 1. C{systemd-analyze verify} and
C{security --offline=true} read the units from a temporary root
(C{--root}): the units and drop-ins where an administrator installs them,
a stub at the C{ExecStart} path (verify checks that it is executable,
inside the root), and a copy of the host's own unit directory so that the
targets the units order themselves against exist. Socket activation runs
for real under C{systemd-socket-activate}, which binds the socket, waits
for the first connection, then execs the drop-in's command line with
C{LISTEN_FDS} set, as systemd does; a zero-downtime restart is shown with
the test holding the listening socket the way PID 1 does. The daemon runs
under the unit's system call filter and address families, reproduced with
libseccomp; the install written in the unit runs into a temporary prefix.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
    app_config,
    daemon_argv,
    free_port,
    listening_socket,
    server_config,
    server_environment,
    unavailable,
)

SYSTEMD = REPO_ROOT / "systemd"
SERVICE = SYSTEMD / "sockudo.service"
SOCKET = SYSTEMD / "sockudo.socket"
SYSUSERS = SYSTEMD / "sockudo-sysusers.conf"
SOCKET_ACTIVATION = SYSTEMD / "drop-ins" / "socket-activation.conf"
LOW_PORTS = SYSTEMD / "drop-ins" / "low-ports.conf"
SAMPLE = REPO_ROOT / "etc" / "sockudo" / "config.json"
NGINX = REPO_ROOT / "etc" / "nginx" / "sockudo.conf"
HOST_UNITS = Path("/usr/lib/systemd/system")

#: How twistd ends after SIGTERM: it shuts down, then dies of the signal it
#: got, which systemd counts as a clean stop (SuccessExitStatus).
CLEAN_EXIT = (0, -signal.SIGTERM)

#: The highest C{systemd-analyze security} exposure rated "OK".
SECURITY_LIMIT = 2.5


def _program(case: SynchronousTestCase, name: str) -> str:
    """
    The path of the systemd tool C{name}, or the test is unavailable.
    """
    path = shutil.which(name)
    if path is None:
        unavailable(case, f"`{name}` is not installed (Debian package systemd)")
    return path


def _directives(path: Path, key: str) -> list[str]:
    """
    The values of every C{key=} line of a unit file, in order.
    """
    values = []
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == key:
            values.append(value.strip())
    return values


def _exec_start(path: Path) -> list[str]:
    """
    The last non-empty C{ExecStart=} of a unit or drop-in, as an argument
    list (a drop-in first resets it with an empty one).
    """
    commands = [value for value in _directives(path, "ExecStart") if value]
    return shlex.split(commands[-1])


def _twistd() -> list[str]:
    """
    How to run this checkout's C{twistd}: the virtualenv's script when there
    is one, otherwise the same through C{python -c}.
    """
    script = Path(sys.executable).parent / "twistd"
    if script.exists():
        return [str(script)]
    runner = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
    return [sys.executable, "-c", runner]


def _write_config(directory: Path, **overrides: object) -> tuple[Path, dict[str, object]]:
    """
    A daemon config with one app in C{directory}, the top-level C{overrides}
    applied; its path and its app.
    """
    app = app_config(id="123456", key="systemd-key", secret="systemd-secret")
    config = server_config(6001, [app], dict(overrides))
    path = directory / "config.json"
    path.write_text(json.dumps(config))
    return path, app


class UnitFileTests(SynchronousTestCase):
    """
    C{systemd-analyze} accepts the units and rates their sandbox "OK".
    """

    def make_root(self, *drop_ins: Path, executable: bool = True) -> Path:
        """
        A root directory with the units installed as the README says, the
        given drop-ins in C{sockudo.service.d/}, and (when C{executable}) a
        stub at the C{ExecStart} path.
        """
        root = Path(self.mktemp())
        units = root / "etc" / "systemd" / "system"
        units.mkdir(parents=True)
        shutil.copy(SERVICE, units)
        shutil.copy(SOCKET, units)
        if drop_ins:
            (units / "sockudo.service.d").mkdir()
            for drop_in in drop_ins:
                shutil.copy(drop_in, units / "sockudo.service.d")
        if not HOST_UNITS.is_dir():
            unavailable(self, f"{HOST_UNITS} is missing (Debian package systemd)")
        shutil.copytree(HOST_UNITS, root / HOST_UNITS.relative_to("/"), symlinks=True)
        if executable:
            stub = root / _exec_start(SERVICE)[0].lstrip("/")
            stub.parent.mkdir(parents=True)
            stub.write_text("#!/bin/sh\nexit 0\n")
            stub.chmod(0o755)
        return root

    def analyze(self, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
        """
        Run C{systemd-analyze ARGS} on the units of C{root}.
        """
        return subprocess.run(
            [_program(self, "systemd-analyze"), f"--root={root}", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    def assert_verified(self, root: Path, *units: str) -> None:
        """
        C{systemd-analyze verify} passes without a single warning (an unknown
        key is only a warning, so any output fails the test).
        """
        result = self.analyze(root, "verify", *units)
        self.assertEqual(
            (result.returncode, result.stdout + result.stderr), (0, ""), f"verify {units}"
        )

    def test_verify_service(self) -> None:
        """
        The service alone, as installed without socket activation.
        """
        self.assert_verified(self.make_root(), "sockudo.service")

    def test_verify_socket_activation(self) -> None:
        """
        The socket unit with the service and its socket-activation drop-in.
        """
        root = self.make_root(SOCKET_ACTIVATION)
        self.assert_verified(root, "sockudo.socket", "sockudo.service")

    def test_verify_low_ports(self) -> None:
        """
        The service with the drop-in granting C{CAP_NET_BIND_SERVICE}.
        """
        self.assert_verified(self.make_root(LOW_PORTS), "sockudo.service")

    def test_verify_checks_executable(self) -> None:
        """
        The check is real: without the program at the C{ExecStart} path in
        the root, verify fails naming it.
        """
        result = self.analyze(self.make_root(executable=False), "verify", "sockudo.service")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("/opt/sockudo/venv/bin/twistd is not executable", result.stderr)

    def exposure(self, root: Path) -> float:
        """
        The overall exposure C{systemd-analyze security --offline=true} gives
        sockudo.service in C{root}, asserting its verdict is "OK".
        """
        result = self.analyze(root, "security", "--offline=true", "--no-pager", "sockudo.service")
        self.assertEqual(result.returncode, 0, result.stderr)
        found = re.search(
            r"Overall exposure level for sockudo\.service: (\d+\.\d) (\w+)", result.stdout
        )
        assert found is not None, result.stdout
        self.assertEqual(found.group(2), "OK", result.stdout)
        return float(found.group(1))

    def test_security_rating(self) -> None:
        """
        The service rates 2.5 or lower, alone, with socket activation and
        with the capability for low ports; the figures written in the unit
        and in the drop-in are the measured ones.
        """
        alone = self.exposure(self.make_root())
        activated = self.exposure(self.make_root(SOCKET_ACTIVATION))
        low_ports = self.exposure(self.make_root(LOW_PORTS))
        for rating in (alone, activated, low_ports):
            self.assertLessEqual(rating, SECURITY_LIMIT)
        self.assertIn(f"rates this unit {alone} (OK)", SERVICE.read_text())
        self.assertIn(f"rates the unit {low_ports} instead of {alone}", LOW_PORTS.read_text())

    def test_service_settings(self) -> None:
        """
        What the install depends on: a dedicated user, the configuration,
        state (working) and runtime directories, no capability, and no
        ExecStartPre running as root.
        """
        text = SERVICE.read_text()
        for line in (
            "User=sockudo",
            "Group=sockudo",
            "ConfigurationDirectory=sockudo",
            "StateDirectory=sockudo",
            "WorkingDirectory=/var/lib/sockudo",
            "RuntimeDirectory=sockudo",
            "CapabilityBoundingSet=",
            "AmbientCapabilities=",
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        ):
            self.assertIn(f"\n{line}\n", text)
        self.assertEqual(_directives(SERVICE, "ExecStartPre"), [])
        # pyOpenSSL's callbacks need writable and executable memory (see
        # test_write_execute_memory_breaks_tls).
        self.assertEqual(_directives(SERVICE, "MemoryDenyWriteExecute"), [])
        self.assertEqual(_directives(LOW_PORTS, "AmbientCapabilities"), ["CAP_NET_BIND_SERVICE"])

    def test_socket_matches_service_and_samples(self) -> None:
        """
        The drop-in runs the service's own command plus a C{--listen} for the
        socket by the name the socket unit gives it, on the address of the
        sample config and the sample nginx upstream.
        """
        service = _exec_start(SERVICE)
        activated = _exec_start(SOCKET_ACTIVATION)
        (name,) = _directives(SOCKET, "FileDescriptorName")
        self.assertEqual(activated, [*service, "--listen", f"systemd:domain=INET:name={name}"])
        self.assertEqual(_directives(SOCKET_ACTIVATION, "ExecStart")[0], "")
        (address,) = _directives(SOCKET, "ListenStream")
        sample = json.loads(SAMPLE.read_text())
        self.assertEqual(address, f"{sample['host']}:{sample['port']}")
        self.assertIn(f"    server {address};\n", NGINX.read_text())


class SocketActivationTests(SynchronousTestCase):
    """
    The daemon on a socket systemd holds.
    """

    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="sockudo-systemd-"))
        self.addCleanup(shutil.rmtree, self.directory, True)

    def activate(self, listen: str, domain: str) -> tuple[DaemonProcess, dict[str, object]]:
        """
        C{systemd-socket-activate -l LISTEN} running the socket-activation
        drop-in's command line, with this checkout's twistd and a test
        config in place of the installed paths, and C{domain=} in the
        C{--listen} description set to C{domain}.
        """
        config_path, app = _write_config(self.directory)
        argv = _exec_start(SOCKET_ACTIVATION)
        argv = [*_twistd(), *argv[1:]]
        argv[argv.index("/etc/sockudo/config.json")] = str(config_path)
        argv[-1] = argv[-1].replace("domain=INET", f"domain={domain}")
        (name,) = _directives(SOCKET, "FileDescriptorName")
        command = [
            _program(self, "systemd-socket-activate"),
            f"--listen={listen}",
            f"--fdname={name}",
            *argv,
        ]
        daemon = DaemonProcess(
            command, self.directory / "daemon.log", server_environment(), cwd=self.directory
        )
        self.addCleanup(daemon.stop)
        return daemon, app

    def exercise(self, daemon: DaemonProcess, address: Address, app: dict[str, object]) -> None:
        """
        The first connection starts the daemon (it waits in the backlog
        meanwhile); then a WebSocket client receives an event triggered
        over HTTP, and a SIGTERM closes it with 4200.
        """
        try:
            status, body = wait_until_answers(address, daemon.process)
            self.assertEqual((status, body), (200, b"OK"))
            client = PusherSocket(address, str(app["key"]))
            client.subscribe("activated")
            status, answer = trigger(address, app, "activated", "hello", {"n": 1})
            self.assertEqual(status, 200, answer)
            event = client.wait_for("hello")
        except (AssertionError, OSError) as error:
            self.fail(f"{error}\n{daemon.log()}")
        self.assertEqual((event["channel"], json.loads(event["data"])), ("activated", {"n": 1}))
        self.assertIn(daemon.stop(), CLEAN_EXIT, daemon.log())
        self.assertEqual(client.wait_closed(), 4200)
        self.assertIn("Listening on systemd:domain=", daemon.log(200))

    def test_tcp(self) -> None:
        """
        The socket unit's TCP socket (on a free port instead of 6001).
        """
        port = free_port()
        daemon, app = self.activate(f"127.0.0.1:{port}", "INET")
        self.exercise(daemon, ("127.0.0.1", port), app)

    def test_unix(self) -> None:
        """
        A Unix socket, as the socket unit's comment describes it.
        """
        path = str(self.directory / "sockudo.sock")
        daemon, app = self.activate(path, "UNIX")
        self.exercise(daemon, path, app)

    def test_restart_refuses_nothing(self) -> None:
        """
        What C{systemctl restart sockudo.service} does with the socket unit:
        the listening socket stays open in PID 1 (here, in the test) while
        the old process shuts down and the new one starts. Clients of the
        old process get 4200; a connection made while no process runs is
        not refused: it waits in the backlog and the new process answers it.
        """
        sock = listening_socket()
        self.addCleanup(sock.close)
        address = sock.getsockname()
        config_path, app = _write_config(self.directory)
        env = server_environment()
        env["SOCKUDO_TEST_LISTEN_FD"] = str(sock.fileno())

        def start(log: str) -> DaemonProcess:
            daemon = DaemonProcess(
                daemon_argv(config_path),
                self.directory / log,
                env,
                cwd=self.directory,
                pass_fds=[sock.fileno()],
            )
            self.addCleanup(daemon.stop)
            return daemon

        old = start("old.log")
        wait_until_answers(address, old.process)
        client = PusherSocket(address, str(app["key"]))
        self.assertIn(old.stop(), CLEAN_EXIT, old.log())
        self.assertEqual(client.wait_closed(), 4200)
        # No process listens now; the kernel still completes the handshake.
        waiting = socket.create_connection(address, timeout=30)
        self.addCleanup(waiting.close)
        waiting.sendall(b"GET /up HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        time.sleep(0.5)
        new = start("new.log")
        answer = b""
        while chunk := waiting.recv(65536):
            answer += chunk
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), f"{answer!r}\n{new.log()}")
        self.assertIn(b"\r\nX-Health-Check: OK\r\n", answer)
        PusherSocket(address, str(app["key"])).close()

    def test_write_execute_memory_breaks_tls(self) -> None:
        """
        Why the unit leaves out C{MemoryDenyWriteExecute=yes}: under the
        kernel's equivalent (C{prctl(PR_SET_MDWE)}), Python runs, but every
        TLS context Twisted builds (https webhooks, rediss://, TLS listeners)
        fails, as pyOpenSSL's callbacks need memory both writable and
        executable. When this test fails, the setting has become possible.
        """
        script = (
            "import ctypes, sys\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "if libc.prctl(65, 1, 0, 0, 0) != 0:\n"  # PR_SET_MDWE, REFUSE_EXEC_GAIN
            "    print('no PR_SET_MDWE'); sys.exit(3)\n"
            "from twisted.internet.ssl import optionsForClientTLS\n"
            "try:\n"
            "    optionsForClientTLS('localhost').clientConnectionForTLS(None)\n"
            "except MemoryError as e:\n"
            "    print(e); sys.exit(2)\n"
            "print('TLS works'); sys.exit(0)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            env=server_environment(),
        )
        if result.returncode == 3:
            unavailable(self, f"this kernel ({os.uname().release}) has no PR_SET_MDWE (6.3+)")
        self.assertEqual(result.returncode, 2, result.stdout + result.stderr)
        self.assertIn("write+execute memory", result.stdout)


#: What C{python -c} runs to start the daemon under the unit's system call
#: filter and address families, as systemd installs them (with seccomp)
#: before exec: the system calls named in C{SOCKUDO_TEST_SYSCALLS} (JSON)
#: allowed, C{socket()} only for the families in C{SOCKUDO_TEST_FAMILIES},
#: anything else failing with EPERM (C{SystemCallErrorNumber=EPERM});
#: inherited by the worker processes. Probes show the filter works: a no-op
#: C{chown} (in C{@privileged}) and a netlink socket are refused.
_FILTERED_TWISTD = """\
import ctypes, json, os, socket, sys, tempfile
class Compare(ctypes.Structure):  # struct scmp_arg_cmp
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]
lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
lib.seccomp_rule_add_array.argtypes = [
    ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(Compare)]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
ALLOW = 0x7FFF0000
context = lib.seccomp_init(0x00050000 | 1)  # SCMP_ACT_ERRNO(EPERM)
def allow(name, *compare):
    number = lib.seccomp_syscall_resolve_name(name.encode())
    if number < 0:
        return
    array = (Compare * max(len(compare), 1))(*compare)
    if lib.seccomp_rule_add_array(context, ALLOW, number, len(compare), array) != 0:
        sys.exit(f"seccomp_rule_add {name} failed")
for name in json.loads(os.environ.pop("SOCKUDO_TEST_SYSCALLS")):
    if name != "socket":
        allow(name)
for family in json.loads(os.environ.pop("SOCKUDO_TEST_FAMILIES")):
    allow("socket", Compare(0, 4, family, 0))  # SCMP_CMP_EQ on the first argument
if lib.seccomp_load(context) != 0:
    sys.exit("seccomp_load failed")
with tempfile.NamedTemporaryFile() as probe:
    try:
        os.chown(probe.name, -1, -1)
    except PermissionError:
        print("system call filter active", flush=True)
    else:
        sys.exit("chown still works: the filter is not active")
try:
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close()
except PermissionError:
    print("address families restricted", flush=True)
else:
    sys.exit("a netlink socket still opens: the filter is not active")
from twisted.scripts.twistd import run
sys.argv[0] = "twistd"
run()
"""


def _syscall_group(case: SynchronousTestCase, group: str) -> set[str]:
    """
    The system calls of a C{systemd-analyze syscall-filter} group, nested
    groups expanded.
    """
    result = subprocess.run(
        [_program(case, "systemd-analyze"), "syscall-filter", "--no-pager", group],
        capture_output=True,
        text=True,
        timeout=60,
    )
    names: set[str] = set()
    for line in result.stdout.splitlines()[1:]:
        line = line.strip()
        if line.startswith("@"):
            names |= _syscall_group(case, line)
        elif line and not line.startswith("#"):
            names.add(line)
    return names


def _unit_syscalls(case: SynchronousTestCase) -> set[str]:
    """
    The system calls the unit's C{SystemCallFilter=} lines allow: the first
    line's groups, less those of each C{~} line after it.
    """
    allowed: set[str] = set()
    for value in _directives(SERVICE, "SystemCallFilter"):
        deny = value.startswith("~")
        for group in value.lstrip("~").split():
            names = _syscall_group(case, group) if group.startswith("@") else {group}
            allowed = allowed - names if deny else allowed | names
    return allowed


class SandboxTests(SynchronousTestCase):
    """
    The daemon under the parts of the unit's sandbox that decide whether
    Python and its libraries work and can be reproduced without systemd as
    PID 1: the system call filter and the address families (the rest only
    hides files and devices the daemon does not use).
    """

    def run_filtered(self, tls: bool, **overrides: object) -> str:
        """
        Start the daemon under the unit's system call and address family
        filter with the config
        C{overrides}; check that it answers C{/up}, that a WebSocket client
        gets an event triggered over HTTP and that C{/usage} answers (over
        TLS when C{tls}), then stop it; its log.
        """
        if ctypes.util.find_library("seccomp") is None:
            unavailable(self, "libseccomp.so.2 (Debian package libseccomp2)")
        directory = Path(tempfile.mkdtemp(prefix="sockudo-sandbox-"))
        self.addCleanup(shutil.rmtree, directory, True)
        port = free_port()
        context: ssl.SSLContext | None = None
        if tls:
            cert, key = self_signed(directory)
            context = ssl.create_default_context(cafile=str(cert))
            overrides["ssl"] = {"enabled": True, "cert_path": str(cert), "key_path": str(key)}
        config_path, app = _write_config(directory, port=port, **overrides)
        env = server_environment()
        env["SOCKUDO_TEST_SYSCALLS"] = json.dumps(sorted(_unit_syscalls(self)))
        (families,) = _directives(SERVICE, "RestrictAddressFamilies")
        env["SOCKUDO_TEST_FAMILIES"] = json.dumps([getattr(socket, f) for f in families.split()])
        argv = [sys.executable, "-c", _FILTERED_TWISTD, "-n", "--pidfile=", "sockudo"]
        daemon = DaemonProcess(
            [*argv, "--config", str(config_path)], directory / "daemon.log", env, cwd=directory
        )
        self.addCleanup(daemon.stop)
        address = ("127.0.0.1", port)
        try:
            self.assertEqual(wait_until_answers(address, daemon.process, context), (200, b"OK"))
            client = PusherSocket(address, str(app["key"]), context)
            client.subscribe("sandboxed")
            status, answer = trigger(address, app, "sandboxed", "filtered", {"n": 2}, context)
            self.assertEqual(status, 200, answer)
            event = client.wait_for("filtered")
            status, _, usage = http_request(address, "GET", "/usage", tls=context)
        except (AssertionError, OSError) as error:
            self.fail(f"{error}\n{daemon.log()}")
        self.assertEqual(json.loads(event["data"]), {"n": 2})
        self.assertEqual(status, 200, usage)
        self.assertIn(daemon.stop(), CLEAN_EXIT, daemon.log())
        log = daemon.log(400)
        self.assertIn("system call filter active", log)
        self.assertIn("address families restricted", log)
        self.assertNotIn("Traceback", log)
        return log

    def test_tls_listener(self) -> None:
        """
        One process with a TLS listener (pyOpenSSL, ALPN).
        """
        self.run_filtered(tls=True)

    def test_workers(self) -> None:
        """
        Two worker processes (started by the daemon, under the same filter)
        sharing the listening socket through the Redis adapter.
        """
        try:
            socket.create_connection(("127.0.0.1", 6379), timeout=2).close()
        except OSError:
            unavailable(self, "redis-server on 127.0.0.1:6379 (two workers need Redis)")
        log = self.run_filtered(
            tls=False,
            workers=2,
            adapter={
                "driver": "redis",
                "redis": {
                    "prefix": f"sockudo_sandbox_{os.getpid()}:",
                    "redis_pub_options": {"url": "redis://localhost:6379/0"},
                },
            },
        )
        self.assertIn("Starting 1 more worker processes", log)


def _install_commands() -> list[str]:
    """
    The install commands written at the top of the unit (C{#   } lines).
    """
    commands = []
    for line in SERVICE.read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("#   "):
            commands.append(line[4:])
    return commands


#: What a wheel build needs from the checkout, less what runs leave in it.
_NOT_COPIED = shutil.ignore_patterns(
    ".git", ".ci-venv", "node_modules", "_trial_temp*", "__pycache__", "build", "dist", "*.egg-info"
)


class InstallTests(SynchronousTestCase):
    """
    The install written in the unit works as written, with a temporary
    directory in place of C{/opt/sockudo} and of C{/}.
    """

    def test_virtualenv_install(self) -> None:
        """
        The virtualenv, wheel, install and plugin-cache commands, run from a
        copy of the checkout: the installed C{twistd} knows the plugin
        without rescanning (the cache lists it) and prints our version.
        """
        commands = _install_commands()
        python = [c for c in commands if "/opt/sockudo" in c and "install -D" not in c]
        self.assertEqual(
            [c.split()[0] for c in python],
            ["python3", *["/opt/sockudo/venv/bin/pip"] * 2, "/opt/sockudo/venv/bin/python"],
        )
        if shutil.which("python3") is None:
            unavailable(self, "`python3` is not on PATH")
        directory = Path(tempfile.mkdtemp(prefix="sockudo-install-"))
        self.addCleanup(shutil.rmtree, directory, True)
        checkout = directory / "checkout"
        shutil.copytree(REPO_ROOT, checkout, ignore=_NOT_COPIED, symlinks=True)
        prefix = directory / "opt" / "sockudo"
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        for command in python:
            result = subprocess.run(
                ["bash", "-euc", command.replace("/opt/sockudo", str(prefix))],
                cwd=checkout,
                env=env,
                capture_output=True,
                text=True,
                timeout=540,
            )
            self.assertEqual(result.returncode, 0, f"{command}\n{result.stdout}{result.stderr}")
        caches = list(prefix.glob("venv/lib/python*/site-packages/twisted/plugins/dropin.cache"))
        self.assertEqual(len(caches), 1, caches)
        self.assertIn(b"sockudo_plugin", caches[0].read_bytes())
        version = subprocess.run(
            [str(prefix / "venv" / "bin" / "twistd"), "sockudo", "--version"],
            cwd=directory,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(version.returncode, 0, version.stderr)
        self.assertTrue(version.stdout.startswith("sockudo-tw "), version.stdout)

    def test_system_user(self) -> None:
        """
        The written C{systemd-sysusers} step, with a temporary root for
        C{/}, creates the unit's user and group, with the state directory as
        home and no login shell.
        """
        (line,) = [c for c in _install_commands() if "systemd-sysusers" in c]
        if shutil.which("systemd-sysusers") is None:
            unavailable(self, "`systemd-sysusers` is not installed (Debian package systemd)")
        root = Path(self.mktemp()).absolute()
        command = line.replace(" /etc/", f" {root}/etc/").replace(
            "systemd-sysusers", f"systemd-sysusers --root={root}"
        )
        result = subprocess.run(
            ["bash", "-euc", command], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
        )
        self.assertEqual(result.returncode, 0, f"{command}\n{result.stderr}")
        (user,) = (root / "etc" / "passwd").read_text().splitlines()
        (group,) = (root / "etc" / "group").read_text().splitlines()
        name, _, uid, gid, _, home, shell = user.split(":")
        self.assertEqual(_directives(SERVICE, "User"), [name])
        self.assertEqual((home, shell), ("/var/lib/sockudo", "/usr/sbin/nologin"))
        self.assertEqual((group.split(":")[0], group.split(":")[2]), ("sockudo", gid))
        self.assertEqual(_directives(SERVICE, "Group"), ["sockudo"])
        self.assertEqual(_directives(SERVICE, "WorkingDirectory"), [home])
        self.assertLess(int(uid), 1000)
