# -*- test-case-name: tests.test_config -*-
"""
The file formats: a config file is JSON, or Sockudo's TOML form (the same
structure) when its name ends in C{.toml}.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from typing import Any

from sockudo_tw.config.parse import parse_config
from sockudo_tw.config.schema import ConfigError, ServerConfig


def read_config_file(path: str) -> Any:
    """
    The parsed content of the config file at C{path}: TOML when the name
    ends in C{.toml}, JSON otherwise.

    @raise ConfigError: if the file cannot be read, is not UTF-8, or is not
        valid JSON (or TOML); the message names the file and, for JSON, the
        line and column.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: config file is not UTF-8: {e}") from None
    if path.lower().endswith(".toml"):
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML: {e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None


def load_config(path: str | None, env: Mapping[str, str]) -> ServerConfig:
    """
    Read and parse the file at C{path} (or the embedded defaults when
    L{None}), then apply C{env}. A name ending in C{.toml} is read as
    Sockudo's TOML form (the same structure as the JSON); anything else as
    JSON.

    @raise ConfigError: if the file cannot be read, is not JSON (or TOML),
        or holds invalid values.
    """
    if path is None:
        return parse_config(None, env)
    return parse_config(read_config_file(path), env)
