"""
The operator guides in C{docs/guides/} run as written: every code block is
marked with what the test does with it, and every command is run for real.

Markers: an RST comment C{.. guide-test: KIND ARGS...} right before each
C{.. code-block::} (a guide may have no other literal block), one of:

  - C{config PATH [warns=KEY]...}: a JSON config file; parsed by
    L{parse_config} with an empty environment, giving exactly the listed
    warnings (none by default); written to PATH.
  - C{env NAME [config=PATH] [warns=KEY]...}: C{VAR=value} lines, each a
    variable the configuration knows; applied over the config file (or
    the embedded defaults) by L{parse_config} with the listed warnings
    only; written to NAME.
  - C{laravel-env NAME config=PATH}: a Laravel C{.env}; its C{PUSHER_*} or
    C{REVERB_*} values (chosen by C{BROADCAST_CONNECTION}) and their
    C{VITE_*} copies must match the first app, host, port and scheme of
    that config, and the app id must be numeric.
  - C{php env=NAME}: Laravel PHP config, not run (no PHP here): every
    C{env('X')} it reads must be set in that C{.env}.
  - C{echo-js env=NAME trigger=FILE}: a Laravel Echo setup; run in Node
    with the pinned C{laravel-echo} and C{pusher-js} (C{import.meta.env}
    from that C{.env}), subscribed to C{orders}; the guide's C{FILE} is run
    and the event must arrive. Checked after the guide's last block.
  - C{file NAME}: written to NAME for later commands.
  - C{nginx NAME}: an nginx C{http}-level snippet; wrapped in a minimal
    C{nginx.conf}, checked with C{nginx -t} and served until the guide
    ends.
  - C{run [presence-member=USER@PORT] [sockudo-config=NAME]}: a C{console} block; each C{$ }
    command runs in bash (consecutive commands share one shell), and its
    output must match the lines after it (C{...} alone matches any lines,
    inside a line any text; no lines means not checked). A command
    running C{twistd} starts a daemon in the background: the lines after
    it must appear in its log, in order (at least C{started:}), and it is
    stopped when the guide ends. C{presence-member} first holds a
    pusher-js presence member in C{presence-room} through that port;
    C{sockudo-config} first copies Sockudo's own shipped C{config.json}
    (C{tests/data}) to NAME, as the user's file.
  - C{log emfile}: log lines the daemon writes when it runs out of file
    descriptors; reproduced with a daemon under a low C{ulimit -n}.
  - C{mapping}: (before a table) every name in its second column must be
    an environment variable, config key or app field sockudo-tw knows.
  - C{not-run REASON}: not run, for a reason (a Laravel project, the
    system's nginx or systemd, another server's format).

Every block is run in a fresh directory, with these rewrites so that
parallel runs never collide: the ports below become free ports (for 6379 a
private C{redis-server}), and C{/etc/sockudo/} and C{/run/sockudo/} become
folders of that directory.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import attrs
import docutils.core
import docutils.nodes
from twisted.trial.unittest import SynchronousTestCase

from sockudo_tw.config import ConfigError, known_env_vars, parse_config
from sockudo_tw.config.schema import known_keys
from sockudo_tw.pusher.app import App
from tests.interop_harness import (
    INTEROP_DIR,
    REPO_ROOT,
    free_port,
    missing_node_dependencies,
    server_environment,
    unavailable,
)

GUIDES_DIR = REPO_ROOT / "docs" / "guides"
GUIDES = ("laravel", "migrating", "multi-node", "tls", "troubleshooting")

#: Ports the guides use, each replaced by a free one in every block.
DOC_PORTS = (6001, 6002, 9601, 9602, 8080, 443, 6379)

#: Block kinds and the code-block languages each may mark.
KINDS: dict[str, tuple[str, ...]] = {
    "config": ("json",),
    "env": ("bash",),
    "laravel-env": ("bash",),
    "php": ("php",),
    "echo-js": ("javascript",),
    "file": ("python", "json", "text"),
    "nginx": ("nginx",),
    "run": ("console",),
    "log": ("text",),
    "not-run": ("console", "bash", "json", "ini", "php", "text", "nginx"),
}

#: Sockudo's own shipped config.json, the user's file in the migration guide.
SOCKUDO_SHIPPED_CONFIG = REPO_ROOT / "tests" / "data" / "sockudo-config.json"

DAEMON_START_TIMEOUT = 30.0
COMMAND_TIMEOUT = 60.0


@attrs.frozen
class Block:
    """
    One marked block of a guide.

    @ivar kind: the marker's first word.
    @ivar args: its positional arguments.
    @ivar options: its C{key=value} arguments (a repeated key keeps all).
    @ivar language: the code-block language (C{"table"} for a table).
    @ivar text: the block's content (a table: rows of cell texts, JSON).
    """

    guide: str
    line: int
    kind: str
    args: tuple[str, ...]
    options: Mapping[str, tuple[str, ...]]
    language: str
    text: str

    def option(self, name: str) -> str:
        """
        The single value of option C{name}.

        @raise KeyError: when it is not given.
        """
        return self.options[name][0]

    def where(self) -> str:
        """
        The block's place, for failure messages.
        """
        return f"docs/guides/{self.guide}.rst, block at line {self.line} ({self.kind})"


@attrs.frozen
class GuideProblem:
    """
    Something wrong with the markup of a guide.
    """

    guide: str
    line: int | None
    message: str


MARKER = "guide-test:"


def read_guide(name: str) -> tuple[list[Block], list[GuideProblem]]:
    """
    Parse C{docs/guides/NAME.rst} with docutils and pair each marker
    comment with the literal block or table after it.

    @return: the marked blocks in order, and every problem found (RST
        warnings and errors, unmarked blocks, markers without a block,
        unknown kinds, kinds on the wrong language).
    """
    path = GUIDES_DIR / f"{name}.rst"
    problems: list[GuideProblem] = []
    document = docutils.core.publish_doctree(
        path.read_text(encoding="utf-8"),
        source_path=str(path),
        settings_overrides={
            "report_level": 5,
            "halt_level": 5,
            "syntax_highlight": "none",
            "file_insertion_enabled": False,
            "raw_enabled": False,
        },
    )
    for message in document.findall(docutils.nodes.system_message):
        if message["level"] >= 2:
            problems.append(GuideProblem(name, message.get("line"), message.astext()))
    blocks: list[Block] = []
    pending: tuple[int | None, list[str]] | None = None
    for node in document.findall():
        if isinstance(node, docutils.nodes.comment):
            text = node.astext().strip()
            if not text.startswith(MARKER):
                continue
            if pending is not None:
                problems.append(GuideProblem(name, pending[0], "marker without a block"))
            pending = (node.line, text[len(MARKER) :].split())
        elif isinstance(node, (docutils.nodes.literal_block, docutils.nodes.table)):
            if isinstance(node, docutils.nodes.literal_block) and isinstance(
                node.parent, docutils.nodes.system_message
            ):
                continue
            line = node.line or (node.parent.line if node.parent is not None else None)
            if pending is None:
                problems.append(GuideProblem(name, line, "block without a guide-test marker"))
                continue
            marker_line, words = pending
            pending = None
            block, problem = _make_block(name, marker_line or 0, words, node)
            if problem is not None:
                problems.append(GuideProblem(name, marker_line, problem))
            if block is not None:
                blocks.append(block)
    if pending is not None:
        problems.append(GuideProblem(name, pending[0], "marker without a block"))
    return blocks, problems


def _make_block(
    guide: str, line: int, words: list[str], node: docutils.nodes.Node
) -> tuple[Block | None, str | None]:
    """
    The L{Block} a marker's C{words} make with C{node}, or why not.
    """
    if not words:
        return None, "empty marker"
    kind, rest = words[0], words[1:]
    if isinstance(node, docutils.nodes.table):
        if kind != "mapping":
            return None, f"a table marked {kind!r} (only 'mapping' marks tables)"
        rows = [
            [entry.astext() for entry in row.findall(docutils.nodes.entry)]
            for row in node.findall(docutils.nodes.row)
        ]
        literals = [
            [
                [lit.astext() for lit in entry.findall(docutils.nodes.literal)]
                for entry in row.findall(docutils.nodes.entry)
            ]
            for row in node.findall(docutils.nodes.row)
        ]
        text = json.dumps({"rows": rows, "literals": literals})
        return Block(guide, line, kind, (), {}, "table", text), None
    classes = node.get("classes", [])
    language = next((c for c in classes if c != "code"), "")
    if kind not in KINDS:
        return None, f"unknown kind {kind!r}"
    if language not in KINDS[kind]:
        return None, f"kind {kind!r} on a {language or 'plain'!r} block"
    args: list[str] = []
    options: dict[str, tuple[str, ...]] = {}
    if kind == "not-run":
        if not rest:
            return None, "not-run needs a reason"
        args = [" ".join(rest)]
    else:
        for word in rest:
            if "=" in word:
                key, value = word.split("=", 1)
                options[key] = (*options.get(key, ()), value)
            else:
                args.append(word)
    return Block(guide, line, kind, tuple(args), options, language, node.astext()), None


def parse_dotenv(text: str) -> dict[str, str]:
    """
    C{VAR=value} lines as a shell or Laravel reads them: blank lines and
    C{#} comments skipped, one level of quotes removed, C{${VAR}} replaced
    by an earlier value.
    """
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition("=")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[name.strip()] = re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), ""), value)
    return values


def output_matches(expected: list[str], actual: list[str]) -> bool:
    """
    Whether C{actual} lines match the C{expected} patterns whole: a pattern
    C{...} alone matches any number of lines, C{...} inside a line any
    text.
    """
    if not expected:
        return not actual
    head, rest = expected[0], expected[1:]
    if head.strip() == "...":
        return any(output_matches(rest, actual[i:]) for i in range(len(actual) + 1))
    return bool(actual) and _line_matches(head, actual[0]) and output_matches(rest, actual[1:])


def _line_matches(pattern: str, line: str) -> bool:
    """
    Whether C{line} matches C{pattern}, where C{...} stands for any text.
    """
    regex = ".*".join(re.escape(part) for part in pattern.rstrip().split("..."))
    return re.fullmatch(regex, line.rstrip()) is not None


def _subsequence_matches(expected: list[str], lines: list[str]) -> bool:
    """
    Whether each of C{expected} matches a line of C{lines}, in order.
    """
    position = 0
    for pattern in expected:
        while position < len(lines) and not _line_matches(pattern, lines[position]):
            position += 1
        if position == len(lines):
            return False
        position += 1
    return True


def parse_console(text: str) -> list[tuple[str, list[str]]]:
    """
    The commands of a C{console} block with the output lines after each
    (a line ending with a backslash continues on the next).
    """
    commands: list[tuple[str, list[str]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            command = line[2:]
            while command.endswith("\\") and i + 1 < len(lines):
                i += 1
                command += "\n" + lines[i]
            commands.append((command, []))
        elif commands:
            commands[-1][1].append(line)
        else:
            raise ValueError(f"output before the first command: {line!r}")
        i += 1
    return commands


def is_daemon_command(command: str) -> bool:
    """
    Whether C{command} starts the daemon (it runs in the background).
    """
    return re.search(r"\btwistd\b", command) is not None and "--version" not in command


class _LineReader:
    """
    The lines a child writes to a pipe, read by a thread so a test can
    wait for one with a timeout.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            self._queue.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, matches: Callable[[str], bool], seconds: float) -> str | None:
        """
        The first new line for which C{matches} holds, or L{None} when the
        stream ends or C{seconds} pass.
        """
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                return None
            if line is None:
                return None
            self.lines.append(line)
            if matches(line):
                return line


class GuideRun:
    """
    Runs one guide's blocks in order in a fresh directory (see the module
    docstring), then its deferred Echo checks; everything it starts is
    stopped by the test's cleanups.
    """

    def __init__(self, case: SynchronousTestCase, guide: str) -> None:
        self.case = case
        self.guide = guide
        self.blocks, problems = read_guide(guide)
        if problems:
            case.fail("\n".join(f"{p.guide}.rst:{p.line}: {p.message}" for p in problems))
        self.work = Path(tempfile.mkdtemp(prefix=f"guide-{guide}-"))
        case.addCleanup(shutil.rmtree, self.work, True)
        (self.work / "etc").mkdir()
        (self.work / "run").mkdir()
        texts = "\n".join(b.text for b in self.blocks)
        self.ports = {
            port: free_port() for port in DOC_PORTS if re.search(rf"(?<![\w.-]){port}(?!\d)", texts)
        }
        self.env = server_environment()
        self.env["PATH"] = os.pathsep.join(
            [os.path.dirname(sys.executable), self.env.get("PATH", os.defpath)]
        )
        self.configs: dict[str, dict[str, Any]] = {}
        self.dotenvs: dict[str, dict[str, str]] = {}
        self.deferred: list[Block] = []
        self.daemons: list[tuple[subprocess.Popen[bytes], Path]] = []
        if 6379 in self.ports:
            self._start_redis(self.ports[6379])

    # -- helpers ----------------------------------------------------------

    def rewrite(self, text: str) -> str:
        """
        C{text} with the guide's ports and paths replaced (see the module
        docstring).
        """
        for port, real in self.ports.items():
            text = re.sub(rf"(?<![\w.-]){port}(?!\d)", str(real), text)
        text = text.replace("/etc/sockudo/", f"{self.work}/etc/")
        return text.replace("/run/sockudo/", f"{self.work}/run/")

    def path(self, name: str) -> Path:
        """
        Where a block's file C{name} lives in the work directory.
        """
        return Path(self.rewrite(name)) if name.startswith("/") else self.work / name

    def fail(self, block: Block, message: str) -> None:
        """
        Fail the test, naming the block.
        """
        self.case.fail(f"{block.where()}: {message}")

    def need(self, program: str) -> None:
        """
        Skip (or fail under CI) when C{program} is not installed.
        """
        if shutil.which(program, path=self.env["PATH"]) is None:
            unavailable(self.case, f"docs/guides/{self.guide}.rst needs `{program}`")

    def spawn(self, argv: list[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
        """
        Start a child in its own process group, output to C{log}, stopped
        (group SIGTERM, then SIGKILL) at cleanup.
        """
        with open(log, "wb") as out:
            child = subprocess.Popen(
                argv,
                cwd=self.work,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **kwargs,
            )
        self.case.addCleanup(self._stop, child)
        return child

    @staticmethod
    def _stop(child: subprocess.Popen[bytes]) -> None:
        if child.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(child.pid, sig)
            except ProcessLookupError:
                return
            try:
                child.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def _start_redis(self, port: int) -> None:
        """
        A private Redis on C{port} for the guide's 6379.
        """
        self.need("redis-server")
        self.need("redis-cli")
        child = self.spawn(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.work),
            ],
            self.work / "redis.log",
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ping = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True)
            if ping.stdout.strip() == b"PONG":
                return
            if child.poll() is not None:
                break
            time.sleep(0.1)
        self.case.fail(
            "private redis-server did not start:\n" + (self.work / "redis.log").read_text()
        )

    # -- the kinds --------------------------------------------------------

    def run(self) -> None:
        """
        Every block in order, then the deferred Echo checks.
        """
        for block in self.blocks:
            getattr(self, "do_" + block.kind.replace("-", "_"))(block)
        for block in self.deferred:
            self.check_echo(block)

    def do_not_run(self, block: Block) -> None:
        """
        Nothing: the marker gave the reason.
        """

    def do_mapping(self, block: Block) -> None:
        """
        Every name in the table's second column is known to sockudo-tw.
        """
        literals = json.loads(block.text)["literals"]
        env_vars, keys = known_env_vars(), known_keys()
        app_fields = {f.name for f in attrs.fields(App)}
        checked = 0
        for row in literals[1:]:
            for name in row[1]:
                checked += 1
                if name.startswith("apps[]."):
                    ok = name[len("apps[].") :] in app_fields
                elif name.isupper():
                    ok = name in env_vars
                else:
                    ok = name in keys or any(
                        k.endswith(".*") and name.startswith(k[:-1]) for k in keys
                    )
                if not ok:
                    self.fail(block, f"{name!r} is not a variable, key or app field we know")
        self.case.assertGreater(checked, 20)

    def do_config(self, block: Block) -> None:
        """
        Parse the config as the daemon does; write it out.
        """
        text = self.rewrite(block.text)
        try:
            data = json.loads(text)
            config = parse_config(data, {})
        except (ValueError, ConfigError) as e:
            self.fail(block, f"does not parse: {e}")
            raise
        self._check_warnings(block, config.warnings)
        target = self.path(block.args[0])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        self.configs[block.args[0]] = json.loads(block.text)

    def _check_warnings(self, block: Block, warnings: tuple[str, ...]) -> None:
        expected = block.options.get("warns", ())
        unexpected = [w for w in warnings if not any(w.startswith(k) for k in expected)]
        missing = [k for k in expected if not any(w.startswith(k) for w in warnings)]
        if unexpected or missing:
            self.fail(block, f"warnings {list(warnings)}, expected {list(expected)}")

    def do_env(self, block: Block) -> None:
        """
        Apply the variables over the config (or the defaults) as the
        daemon does; write them out.
        """
        text = self.rewrite(block.text)
        env = parse_dotenv(text)
        unknown = sorted(set(env) - known_env_vars())
        if unknown:
            self.fail(block, f"variables sockudo-tw does not know: {unknown}")
        data = None
        if "config" in block.options:
            data = json.loads(self.path(block.option("config")).read_text())
        try:
            config = parse_config(data, env)
        except ConfigError as e:
            self.fail(block, f"does not parse: {e}")
            raise
        self._check_warnings(block, config.warnings)
        (self.work / block.args[0]).write_text(text)

    def do_laravel_env(self, block: Block) -> None:
        """
        The Laravel variables match the sockudo-tw config beside them.
        """
        env = parse_dotenv(block.text)
        config = self.configs[block.option("config")]
        app = config["app_manager"]["array"]["apps"][0]
        ssl = config.get("ssl", {}).get("enabled", False)
        prefix = env.get("BROADCAST_CONNECTION", "").upper()
        if prefix not in ("PUSHER", "REVERB"):
            self.fail(block, f"BROADCAST_CONNECTION is {env.get('BROADCAST_CONNECTION')!r}")
        wanted = {
            f"{prefix}_APP_ID": str(app["id"]),
            f"{prefix}_APP_KEY": app["key"],
            f"{prefix}_APP_SECRET": app["secret"],
            f"{prefix}_HOST": config.get("host", "0.0.0.0"),
            f"{prefix}_PORT": str(config.get("port", 6001)),
            f"{prefix}_SCHEME": "https" if ssl else "http",
            f"VITE_{prefix}_APP_KEY": app["key"],
            f"VITE_{prefix}_HOST": config.get("host", "0.0.0.0"),
            f"VITE_{prefix}_PORT": str(config.get("port", 6001)),
            f"VITE_{prefix}_SCHEME": "https" if ssl else "http",
        }
        for name, value in wanted.items():
            self.case.assertEqual(env.get(name), value, f"{block.where()}: {name}")
        self.case.assertTrue(env[f"{prefix}_APP_ID"].isdigit(), f"{block.where()}: numeric id")
        self.dotenvs[block.args[0]] = parse_dotenv(self.rewrite(block.text))

    def do_php(self, block: Block) -> None:
        """
        Every C{env()} the PHP reads is set in its C{.env}.
        """
        names = re.findall(r"env\('(\w+)'", block.text)
        self.case.assertTrue(names, block.where())
        missing = sorted(set(names) - set(self.dotenvs[block.option("env")]))
        if missing:
            self.fail(block, f"reads {missing}, which the .env does not set")

    def do_file(self, block: Block) -> None:
        """
        Write the file for later commands.
        """
        target = self.path(block.args[0])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(self.rewrite(block.text) + "\n")

    def do_echo_js(self, block: Block) -> None:
        """
        Checked at the end, when the trigger script exists.
        """
        self.deferred.append(block)

    def do_nginx(self, block: Block) -> None:
        """
        Wrap the snippet in a minimal nginx.conf, check it, serve it.
        """
        self.need("nginx")
        snippet = self.work / block.args[0]
        snippet.write_text(self.rewrite(block.text) + "\n")
        temp = self.work / "nginx-temp"
        temp.mkdir(exist_ok=True)
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = self.work / f"nginx-{block.args[0]}"
        conf.write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {self.work}/nginx.pid;\n"
            f"error_log {self.work}/nginx-error.log;\n"
            "events { worker_connections 256; }\n"
            "http {\n    access_log off;\n"
            + "".join(
                f"    {kind}_temp_path {temp}/{kind};\n"
                for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            )
            + f"    include {snippet};\n}}\n"
        )
        checked = subprocess.run(
            ["nginx", "-t", "-c", str(conf), "-p", str(self.work)],
            capture_output=True,
            env=self.env,
        )
        if checked.returncode != 0:
            self.fail(block, "nginx -t refuses it:\n" + checked.stderr.decode())
        self.spawn(["nginx", "-c", str(conf), "-p", str(self.work)], self.work / "nginx.out")
        listen = re.search(r"listen\s+(\d+)", self.rewrite(block.text))
        assert listen is not None
        self._wait_for_port(block, int(listen.group(1)))

    def _wait_for_port(self, block: Block, port: int) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        self.fail(block, f"nothing listens on port {port}")

    def do_run(self, block: Block) -> None:
        """
        Run the commands: daemons in the background, the rest in bash,
        consecutive ones in one shell; compare their output.
        """
        commands = parse_console(block.text)
        for name in block.options.get("sockudo-config", ()):
            shutil.copy(SOCKUDO_SHIPPED_CONFIG, self.work / name)
        for member in block.options.get("presence-member", ()):
            self._hold_presence_member(block, member)
        batch: list[tuple[str, list[str]]] = []
        for command, expected in commands:
            if is_daemon_command(command):
                self._run_batch(block, batch)
                batch = []
                self._start_daemon(block, command, expected)
            else:
                batch.append((command, expected))
        self._run_batch(block, batch)

    def _run_batch(self, block: Block, batch: list[tuple[str, list[str]]]) -> None:
        if not batch:
            return
        for program in ("curl", "openssl"):
            if any(re.search(rf"\b{program}\b", c) for c, _ in batch):
                self.need(program)
        script = []
        for i, (command, _) in enumerate(batch):
            script.append(f"printf '\\n@@guide-command {i}@@\\n'")
            script.append(self.rewrite(command))
            script.append(f"printf '\\n@@guide-status {i} %s@@\\n' \"$?\"")
        result = subprocess.run(
            ["bash", "-c", "\n".join(script)],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            timeout=COMMAND_TIMEOUT,
        )
        output = result.stdout.decode("utf-8", "replace")
        for i, (command, expected) in enumerate(batch):
            found = re.search(
                rf"@@guide-command {i}@@\n(.*?)\n?@@guide-status {i} (\d+)@@", output, re.S
            )
            if found is None:
                self.fail(block, f"`{command}` did not finish:\n{output}\n{result.stderr!r}")
                return
            status = int(found.group(2))
            lines = [line for line in found.group(1).split("\n") if line.strip()]
            if status != 0:
                self.fail(
                    block,
                    f"`{command}` exited with {status}:\n{found.group(1)}\n"
                    + result.stderr.decode("utf-8", "replace"),
                )
            wanted = [self.rewrite(line) for line in expected if line.strip()]
            if wanted and not output_matches(wanted, lines):
                self.fail(
                    block,
                    f"`{command}` printed:\n"
                    + "\n".join(lines)
                    + "\nexpected:\n"
                    + "\n".join(wanted),
                )

    def _start_daemon(self, block: Block, command: str, expected: list[str]) -> None:
        log = self.work / f"daemon-{len(self.daemons)}.log"
        child = self.spawn(["bash", "-c", self.rewrite(command)], log)
        self.daemons.append((child, log))
        wanted = [self.rewrite(line) for line in expected if line.strip()] or ["...started: ..."]
        deadline = time.monotonic() + DAEMON_START_TIMEOUT
        while time.monotonic() < deadline:
            lines = log.read_text(errors="replace").splitlines()
            if _subsequence_matches(wanted, lines):
                return
            if child.poll() is not None:
                break
            time.sleep(0.1)
        self.fail(
            block,
            f"`{command}` did not log {wanted} (exit status {child.poll()}):\n"
            + log.read_text(errors="replace"),
        )

    # -- Node.js checks ---------------------------------------------------

    def _node_dir(self) -> Path:
        """
        The work directory, made able to import the pinned npm packages.
        """
        missing = missing_node_dependencies()
        if not (INTEROP_DIR / "node_modules" / "laravel-echo" / "package.json").exists():
            missing.append(
                "tests/interop/node_modules/laravel-echo (run `npm ci` in tests/interop)"
            )
        if missing:
            unavailable(self.case, "the guides' Echo checks need " + "; ".join(missing))
        link = self.work / "node_modules"
        if not link.exists():
            link.symlink_to(INTEROP_DIR / "node_modules")
        return self.work

    def _node(self, script: str, name: str) -> tuple[subprocess.Popen[bytes], _LineReader]:
        path = self._node_dir() / name
        path.write_text(script)
        child = subprocess.Popen(
            ["node", str(path)],
            cwd=self.work,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.case.addCleanup(self._stop, child)
        assert child.stdout is not None
        return child, _LineReader(child.stdout)

    def _hold_presence_member(self, block: Block, member: str) -> None:
        """
        A pusher-js client in C{presence-room} as C{USER} through C{PORT}
        (C{USER@PORT}), with the guide's first app, signing its own
        subscription.
        """
        user, port = member.split("@")
        config = next(iter(self.configs.values()))
        app = config["app_manager"]["array"]["apps"][0]
        script = _PRESENCE_MEMBER_JS % {
            "port": json.dumps(self.ports.get(int(port), int(port))),
            "key": json.dumps(app["key"]),
            "secret": json.dumps(app["secret"]),
            "user": json.dumps(user),
        }
        _, reader = self._node(script, f"presence-{user}.cjs")
        if reader.wait_for(lambda line: line.startswith(("JOINED", "ERROR")), 20) != "JOINED":
            self.fail(block, "the presence member did not join:\n" + "\n".join(reader.lines))

    def check_echo(self, block: Block) -> None:
        """
        The guide's Echo setup in Node receives an event the guide's
        trigger script publishes on C{orders}.
        """
        env = self.dotenvs[block.option("env")]
        vite = {k: v for k, v in env.items() if k.startswith("VITE_")}
        snippet = self.rewrite(block.text).replace("import.meta.env.", "guideEnv.")
        script = (
            "globalThis.window = globalThis;\n"
            f"const guideEnv = {json.dumps(vite)};\n" + snippet + "\n" + _ECHO_LISTEN_JS
        )
        _, reader = self._node(script, f"echo-{block.line}.mjs")
        if (
            reader.wait_for(lambda line: line.startswith(("SUBSCRIBED", "FAILED")), 20)
            != "SUBSCRIBED"
        ):
            self.fail(block, "Echo did not subscribe:\n" + "\n".join(reader.lines))
        trigger = subprocess.run(
            ["python3", block.option("trigger")],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            timeout=COMMAND_TIMEOUT,
        )
        if trigger.returncode != 0:
            self.fail(block, "the trigger script failed:\n" + trigger.stderr.decode())
        line = reader.wait_for(lambda line: line.startswith("EVENT "), 20)
        if line is None:
            self.fail(block, "Echo did not receive the event:\n" + "\n".join(reader.lines))
        assert line is not None
        self.case.assertEqual(json.loads(line[len("EVENT ") :]), {"id": 42})

    # -- the file-limit scenario -----------------------------------------

    def do_log(self, block: Block) -> None:
        """
        Reproduce the condition the log lines describe (C{emfile}: a daemon
        under a low C{ulimit -n} and more connections than it allows) and
        find them, in order, in its log.
        """
        self.case.assertEqual(block.args, ("emfile",), block.where())
        port = free_port()
        config = self.work / "emfile.json"
        config.write_text(
            json.dumps(
                {
                    "host": "127.0.0.1",
                    "port": port,
                    "app_manager": {"array": {"apps": [{"id": "1", "key": "k", "secret": "s"}]}},
                    "metrics": {"enabled": False},
                }
            )
        )
        log = self.work / "emfile.log"
        child = self.spawn(
            ["bash", "-c", f"ulimit -n 64 && exec twistd -n --pidfile= sockudo --config {config}"],
            log,
        )
        self._wait_for_port(block, port)
        held: list[socket.socket] = []
        # Each line as it ends the daemon's log lines (after the time and source).
        wanted = ["..." + line for line in block.text.splitlines() if line.strip()]
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                for _ in range(20):
                    try:
                        held.append(socket.create_connection(("127.0.0.1", port), timeout=2))
                    except OSError:
                        break
                time.sleep(0.2)
                lines = log.read_text(errors="replace").splitlines()
                if _subsequence_matches(wanted, lines):
                    return
                if child.poll() is not None:
                    break
        finally:
            for sock in held:
                sock.close()
        self.fail(block, "the daemon did not log these lines:\n" + log.read_text(errors="replace"))


#: A presence member (CommonJS, run with node): signs its own subscription.
_PRESENCE_MEMBER_JS = """\
const Pusher = require('pusher-js');
const crypto = require('crypto');
const key = %(key)s, secret = %(secret)s, user = %(user)s;
const pusher = new Pusher(key, {
  wsHost: '127.0.0.1', wsPort: %(port)s, forceTLS: false, enabledTransports: ['ws'],
  cluster: '',
  channelAuthorization: {
    customHandler: ({socketId, channelName}, callback) => {
      const data = JSON.stringify({user_id: user, user_info: {}});
      const signature = crypto.createHmac('sha256', secret)
        .update(`${socketId}:${channelName}:${data}`).digest('hex');
      callback(null, {auth: `${key}:${signature}`, channel_data: data});
    },
  },
});
const channel = pusher.subscribe('presence-room');
channel.bind('pusher:subscription_succeeded', () => console.log('JOINED'));
channel.bind('pusher:subscription_error', (e) => console.log('ERROR ' + JSON.stringify(e)));
setTimeout(() => process.exit(0), 120000);
"""

#: Appended to a guide's Echo setup: subscribe, report, print the event.
_ECHO_LISTEN_JS = """\
const pusher = window.Echo.connector.pusher;
pusher.connection.bind('state_change', (s) => console.log('STATE ' + s.current));
pusher.connection.bind('failed', () => console.log('FAILED'));
window.Echo.channel('orders')
  .subscribed(() => console.log('SUBSCRIBED'))
  .listen('.order.shipped', (e) => { console.log('EVENT ' + JSON.stringify(e)); process.exit(0); });
setTimeout(() => { console.log('TIMEOUT'); process.exit(3); }, 60000);
"""


class GuideMarkupTests(SynchronousTestCase):
    """
    The guides are valid RST, every block is marked, and nothing escapes.
    """

    def test_guides_listed(self) -> None:
        """
        Every C{.rst} file in C{docs/guides/} is one this module runs.
        """
        self.assertEqual(sorted(p.stem for p in GUIDES_DIR.glob("*.rst")), sorted(GUIDES))

    def test_every_block_marked(self) -> None:
        """
        Each guide parses without RST warnings; each literal block has a
        marker of a known kind on a matching language; every console block
        is run or says why not.
        """
        for guide in GUIDES:
            blocks, problems = read_guide(guide)
            self.assertEqual(problems, [], guide)
            self.assertTrue(any(b.kind == "run" for b in blocks), guide)
            for block in blocks:
                if block.language == "console":
                    self.assertIn(block.kind, ("run", "not-run"), block.where())

    def test_unmarked_block_found(self) -> None:
        """
        The checks themselves: an RST warning, an unmarked block, a marker
        without a block and an unknown kind are each reported.
        """
        text = (
            "T\n=\n\n.. code-block:: console\n\n   $ true\n\n"
            ".. guide-test: frobnicate\n\n.. code-block:: console\n\n   $ true\n\n"
            ".. guide-test: run\n\nSome ``text.\n"
        )
        with tempfile.TemporaryDirectory() as folder:
            self.patch(sys.modules[__name__], "GUIDES_DIR", Path(folder))
            (Path(folder) / "x.rst").write_text(text)
            _, problems = read_guide("x")
        messages = [p.message for p in problems]
        self.assertIn("Inline literal start-string without end-string.", messages[0])
        self.assertEqual(
            messages[1:],
            [
                "block without a guide-test marker",
                "unknown kind 'frobnicate'",
                "marker without a block",
            ],
        )

    def test_output_patterns(self) -> None:
        """
        C{...} matches any lines alone, any text inside a line.
        """
        self.assertTrue(output_matches(["a", "...", "c"], ["a", "b", "b", "c"]))
        self.assertTrue(output_matches(["..."], []))
        self.assertTrue(output_matches(["x...z"], ["xyyz"]))
        self.assertFalse(output_matches(["a"], ["a", "b"]))
        self.assertFalse(output_matches(["a"], []))

    def test_dotenv(self) -> None:
        """
        Quotes removed, C{${VAR}} resolved, comments skipped.
        """
        self.assertEqual(
            parse_dotenv('# c\nA=1\nB="${A}x"\n'),
            {"A": "1", "B": "1x"},
        )


class GuideTests(SynchronousTestCase):
    """
    Each guide, run as written (see the module docstring).
    """

    def run_guide(self, guide: str) -> None:
        GuideRun(self, guide).run()

    def test_laravel(self) -> None:
        """
        The Laravel guide: config, both .env samples, both Echo setups
        receiving an event from the Python SDK.
        """
        self.run_guide("laravel")

    def test_migrating(self) -> None:
        """
        The migration guide: the Soketi mapping, the variables and config
        parsed, the daemon started from the variables on a private Redis,
        Sockudo's shipped config listed with its warnings.
        """
        self.run_guide("migrating")

    def test_multi_node(self) -> None:
        """
        The multi-node guide: two nodes on a private Redis behind the nginx
        sample, one presence member seen from every node.
        """
        self.run_guide("multi-node")

    def test_tls(self) -> None:
        """
        The TLS guide: a CA and a chain made with openssl, TLS served
        directly (chain, ALPN, redirect) and through the nginx sample.
        """
        self.run_guide("tls")

    def test_troubleshooting(self) -> None:
        """
        The troubleshooting guide: 429 with trust_hops, the file-limit log
        lines, CORS, 4001, clock skew, Redis stopped.
        """
        self.run_guide("troubleshooting")
