# -*- test-case-name: tests.test_config -*-
"""
L{parse_config}: a parsed config tree and the environment in, one
L{ServerConfig} out (the environment over the file over the defaults, then
the default app).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from sockudo_tw.config.env import apply_env, copy_tree, default_app, env_warnings
from sockudo_tw.config.reader import describe
from sockudo_tw.config.schema import ConfigError, ServerConfig
from sockudo_tw.config.sections import parse_tree
from sockudo_tw.pusher.app import App


def parse_config(
    data: Mapping[str, Any] | None,
    env: Mapping[str, str],
) -> ServerConfig:
    """
    Build the configuration from a parsed config file (L{None} for the
    embedded defaults) and the environment C{env}.

    Without a file, the default app (C{SOCKUDO_DEFAULT_APP_*}, defaulting to
    C{app-id}/C{app-key}/C{app-secret}) is always present. With a file, it
    is added only when one of C{SOCKUDO_DEFAULT_APP_ID/KEY/SECRET} is set, so
    a production file never gains well-known credentials by accident.

    @raise ConfigError: for any invalid value.
    """
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"(top level): expected a JSON object, got {describe(data)}")
    tree: dict[str, Any] = copy_tree(data) if data is not None else {}
    sources = apply_env(tree, env)
    warnings: list[str] = []
    try:
        config = parse_tree(tree, warnings)
    except ConfigError as e:
        key = str(e).split(":", 1)[0]
        if key in sources:
            raise ConfigError(f"{sources[key]} (sets {e})") from None
        raise
    for i, warning in enumerate(warnings):
        key = warning.split(":", 1)[0]
        if key in sources:
            warnings[i] = f"{sources[key]} (sets {warning})"
    warnings.extend(env_warnings(env))
    default_requested = any(
        env.get(f"SOCKUDO_DEFAULT_APP_{part}") for part in ("ID", "KEY", "SECRET")
    )
    apps = config.app_manager.apps
    if data is None or default_requested:
        apps = _with_default_app(apps, env, dict(config.app_limit_defaults))
    return attrs.evolve(
        config,
        app_manager=attrs.evolve(config.app_manager, apps=apps),
        warnings=tuple(warnings),
    )


def _with_default_app(
    apps: tuple[App, ...], env: Mapping[str, str], limits: Mapping[str, int]
) -> tuple[App, ...]:
    """
    C{apps} with the default app of C{SOCKUDO_DEFAULT_APP_*} in place of
    any app with its id; its key must be its own.
    """
    default = default_app(env, limits)
    result = (*(a for a in apps if a.id != default.id), default)
    for other in result[:-1]:
        if other.key == default.key:
            raise ConfigError(
                f"SOCKUDO_DEFAULT_APP_KEY: key {default.key!r} is already used by app {other.id!r}"
            )
    return result
