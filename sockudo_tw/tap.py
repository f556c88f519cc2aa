# -*- test-case-name: tests.test_tap -*-
"""
The twistd entry point: C{twistd sockudo [--config FILE] [--listen STRPORT]}.

C{postOptions} loads and validates the whole configuration, so a bad file or
environment variable stops twistd with a usage error before it binds a port
or daemonizes. C{makeService} hands over to L{sockudo_tw.service}.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from collections.abc import Mapping
from typing import IO, Any

import attrs
from twisted.application.service import IService
from twisted.copyright import version as twisted_version
from twisted.internet import endpoints
from twisted.python import usage
from twisted.python.logfile import LogFile

from sockudo_tw.config import ConfigError, ServerConfig, check_workers, load_config
from sockudo_tw.logs import make_log_observer, package_version

__all__ = ["Options", "check_listen", "makeService"]

_PARSE_ONLY: Any = object()
"""
The reactor given to endpoint parsers when a description is only checked:
parsing stores it and never calls it (and importing a fake reactor from
twisted.internet.testing would load trial and doctest into the daemon).
"""


def _systemd_sockets() -> str:
    """
    How many sockets systemd passed this process, for an error message.

    Twisted's C{systemd:} parser read (and removed) C{LISTEN_FDS} when it was
    imported, so ask the parser itself, one index after another.
    """
    count = 0
    while count < 1024:
        try:
            endpoints.serverFromString(_PARSE_ONLY, f"systemd:domain=INET:index={count}")
        except IndexError:
            break
        count += 1
    if not count:
        return "systemd passed no sockets to this process (LISTEN_FDS)"
    return f"systemd passed {count} socket(s) (FileDescriptorName= names them)"


def _listen_problem(description: str, error: Exception) -> str:
    """
    Why building the endpoint for C{description} failed, in words, without
    the parser's internal function names.
    """
    systemd = description.lower().startswith("systemd:")
    if systemd and isinstance(error, IndexError):
        return f"no inherited socket at that index; {_systemd_sockets()}"
    if systemd and isinstance(error, KeyError):
        return f"no inherited socket named {error}; {_systemd_sockets()}"
    if systemd and isinstance(error, AttributeError):
        return "domain must be INET, INET6 or UNIX"
    if isinstance(error, OSError) and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        return f"{error.strerror}{where}"
    # TypeError names the parser ("_parseTCP() got an unexpected keyword").
    text = re.sub(r"^\w+\(\) ", "", str(error))
    return text or type(error).__name__


def check_listen(description: str) -> None:
    """
    Check a strports C{description} the way twistd will use it, without
    binding anything: an unknown endpoint type, a bad parameter, a missing
    certificate or a C{systemd:} socket that was not passed all fail here.

    @raise usage.UsageError: naming the description and the problem.
    """
    try:
        endpoints.serverFromString(_PARSE_ONLY, description)
    except Exception as e:  # any parser failure means twistd could not listen
        raise usage.UsageError(
            f"--listen {description!r}: {_listen_problem(description, e)}"
        ) from None


class Options(usage.Options):
    """
    Command-line options of the C{sockudo} twistd plugin.

    @ivar environ: the environment the config overrides are read from
        (tests replace it before C{parseOptions}).
    @ivar server_config: the parsed configuration, after C{postOptions}.
    """

    synopsis = "[--config FILE] [--listen STRPORT ...]"
    longdesc = (
        "Run a Pusher Channels server. Without --config it listens on 0.0.0.0:6001 with one "
        "app (app-id/app-key/app-secret, or SOCKUDO_DEFAULT_APP_*). Environment variables "
        "override the config file as in Sockudo."
    )
    optParameters = [
        ["config", "c", None, "Sockudo-style config.json (or config.toml) to load."],
        ["workers", "w", None, "Processes sharing the listening sockets (overrides workers)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self.environ: Mapping[str, str] = os.environ
        self.server_config: ServerConfig | None = None

    def opt_listen(self, description: str) -> None:
        """
        Listen on this strports description instead of the config's
        listeners (repeatable), e.g. tcp:6001 or unix:/run/sockudo.sock.
        """
        check_listen(description)
        self["listen"].append(description)

    opt_l = opt_listen

    def opt_version(self) -> None:
        """
        Display sockudo-tw's version and exit.
        """
        python = f"{platform.python_implementation()} {platform.python_version()}"
        print(f"sockudo-tw {package_version()} (Twisted {twisted_version}, {python})")
        sys.exit(0)

    def postOptions(self) -> None:
        """
        Load and check the configuration now, before anything is bound.
        """
        from sockudo_tw.adapters import validate_adapter_driver
        from sockudo_tw.queues import validate_queue_driver
        from sockudo_tw.webhooks import validate_webhook_targets

        try:
            self.server_config = load_config(self["config"], self.environ)
            if self["workers"] is not None:
                workers = self["workers"]
                if not (workers.isascii() and workers.isdigit()) or int(workers) < 1:
                    raise ConfigError(f"--workers: expected an integer >= 1, got {workers!r}")
                self.server_config = attrs.evolve(self.server_config, workers=int(workers))
                check_workers(self.server_config)
            validate_adapter_driver(self.server_config.adapter.driver)
            validate_queue_driver(self.server_config.queue.driver)
            validate_webhook_targets(self.server_config.app_manager.apps)
        except (ConfigError, ValueError) as e:
            raise usage.UsageError(f"invalid configuration: {e}") from None


def _log_output(options: Options) -> IO[str] | None:
    """
    Where twistd would have logged (its C{--logfile}), so our observer can
    take its place; L{None} when twistd logs elsewhere (syslog).
    """
    parent: Any = getattr(options, "parent", None)
    if parent is None:
        return sys.stdout
    if parent.get("syslog"):
        return None
    logfile = parent.get("logfile")
    if logfile == "-" or (not logfile and parent.get("nodaemon")):
        return sys.stdout
    path = logfile or "twistd.log"
    output: IO[str] = LogFile.fromFullPath(path)
    return output


def makeService(options: Options) -> IService:
    """
    Build the daemon's root service from parsed options.
    """
    from twisted.internet import reactor

    from sockudo_tw.service import make_service
    from sockudo_tw.workers import WorkerRole

    config = options.server_config
    if config is None:
        raise usage.UsageError("options were not parsed")
    output = _log_output(options)
    observer = (
        None
        if output is None
        else make_log_observer(output, config.logging.output_format, config.debug)
    )
    # What a worker process needs to rebuild the same daemon.
    worker_args = ["--config", os.path.abspath(options["config"])] if options["config"] else []
    try:
        worker = WorkerRole.from_environ(options.environ)
    except ValueError as e:
        raise usage.UsageError(str(e)) from None
    return make_service(
        config,
        reactor,
        listen=options["listen"],
        log_observer=observer,
        worker_args=worker_args,
        worker=worker,
    )
