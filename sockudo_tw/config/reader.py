# -*- test-case-name: tests.test_config -*-
"""
Reading typed values out of a JSON object (L{Section}), remembering the
keys handed out so that every other key is reported, plus the coercions
shared with the environment (L{as_int}, L{as_bool}).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, cast

from sockudo_tw.config.schema import KEY_TABLE, ConfigError


def describe(value: object) -> str:
    """
    A short rendering of a bad value for an error message.
    """
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def as_int(value: object, path: str, minimum: int, maximum: int | None) -> int:
    """
    A JSON number or numeric string as an integer in [minimum, maximum].
    """
    what = f"an integer >= {minimum}" if minimum != 0 else "a non-negative integer"
    if maximum is not None:
        what = f"an integer from {minimum} to {maximum}"
    result: int | None = None
    if isinstance(value, bool):
        result = None
    elif isinstance(value, int):
        result = value
    elif isinstance(value, float) and value.is_integer():
        result = int(value)
    elif isinstance(value, str) and _ASCII_INTEGER.fullmatch(value.strip()):
        result = int(value.strip())
    if result is None or result < minimum or (maximum is not None and result > maximum):
        raise ConfigError(f"{path}: expected {what} or numeric string, got {describe(value)}")
    return result


# ASCII digits only: str.isdigit() also accepts "²" (which int() refuses)
# and int() accepts other scripts' digits.
_ASCII_INTEGER = re.compile(r"[+-]?[0-9]+")

TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


def as_bool(value: object, path: str) -> bool:
    """
    A JSON boolean (or, leniently, one of Sockudo's boolean words).
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise ConfigError(f"{path}: expected true or false, got {describe(value)}")


def parse_permission_mode(value: object, path: str) -> int:
    """
    A Unix file mode from a string of octal digits (C{"755"}), a number
    written with octal digits (C{755}) or the mode as a plain number
    (C{493}); see the module docstring for the rule.
    """
    expected = 'octal digits up to "777" (e.g. "660") or a mode number up to 511'
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("0o"):
            text = text[2:]
        if text and all(c in "01234567" for c in text) and int(text, 8) <= 0o777:
            return int(text, 8)
        raise ConfigError(f"{path}: expected {expected}, got {describe(value)}")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        digits = str(value)
        if all(c in "01234567" for c in digits) and value <= 777:
            return int(digits, 8)
        if value <= 0o777:
            return value
    raise ConfigError(f"{path}: expected {expected}, got {describe(value)}")


# The default of a Section read: take it from the key table (KEY_TABLE).
_TABLE: Any = object()
_T = TypeVar("_T")


class Section:
    """
    A JSON object being read with the keys it has handed out remembered, so
    that everything else can be reported as ignored.
    """

    def __init__(
        self,
        data: Mapping[str, Any],
        path: str,
        warnings: list[str],
        seen: set[str] | None = None,
    ) -> None:
        self._data = data
        self._path = path
        self._warnings = warnings
        self._read: set[str] = set()
        self._seen = seen

    def path_of(self, key: str) -> str:
        """
        The full key path of C{key} in this section, as messages name it.
        """
        return f"{self._path}.{key}" if self._path else key

    def _get(self, key: str) -> Any:
        self._read.add(key)
        if self._seen is not None:
            self._seen.add(self.path_of(key))
        return self._data.get(key)

    def _default(self, key: str, given: _T) -> _T:
        """
        C{given}, or the key table's default for C{key} when none was given.
        """
        return cast(_T, KEY_TABLE[self.path_of(key)].default) if given is _TABLE else given

    def section(self, key: str) -> Section:
        """
        A nested object; absent or null reads as empty.
        """
        self._read.add(key)
        value = self._data.get(key)
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{self.path_of(key)}: expected an object, got {describe(value)}")
        return Section(value, self.path_of(key), self._warnings, self._seen)

    def ignore(self, *keys: str) -> None:
        """
        Mark keys (or whole sections) as known and deliberately unused (no
        warning): the settings of drivers that are not selected.
        """
        for key in keys:
            self._get(key)

    def present(self, key: str) -> bool:
        """
        Whether the file (or the environment) sets C{key} to a non-null value.
        """
        return self._data.get(key) is not None

    def warn(self, key: str, note: str | None = None) -> None:
        """
        Record that C{key} is set and ignored, and why that is harmless
        (C{note}, by default the key table's).
        """
        self._get(key)
        if note is None:
            note = KEY_TABLE[self.path_of(key)].note
        self._warnings.append(f"{self.path_of(key)}: {note}")

    def warn_if_present(self, key: str, note: str | None = None) -> None:
        """
        L{warn} when the key is set; otherwise only mark it known.
        """
        if self.present(key):
            self.warn(key, note)
        else:
            self._get(key)

    def integer(
        self, key: str, default: int = _TABLE, minimum: int = 0, maximum: int | None = None
    ) -> int:
        """
        An integer key (number or numeric string).
        """
        value = self._get(key)
        if value is None:
            return self._default(key, default)
        return as_int(value, self.path_of(key), minimum, maximum)

    def optional_integer(self, key: str) -> int | None:
        """
        An integer key where null or absence means "not set".
        """
        value = self._get(key)
        if value is None:
            return None
        return as_int(value, self.path_of(key), 0, None)

    def boolean(self, key: str, default: bool = _TABLE) -> bool:
        """
        A boolean key.
        """
        value = self._get(key)
        if value is None:
            return self._default(key, default)
        return as_bool(value, self.path_of(key))

    def string(self, key: str, default: str = _TABLE) -> str:
        """
        A string key.
        """
        value = self.optional_string(key)
        return self._default(key, default) if value is None else value

    def optional_string(self, key: str) -> str | None:
        """
        A string key where null or absence means "not set".
        """
        value = self._get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ConfigError(f"{self.path_of(key)}: expected a string, got {describe(value)}")
        return value

    def strings(self, key: str, default: tuple[str, ...] = _TABLE) -> tuple[str, ...]:
        """
        A list of strings.
        """
        value = self._get(key)
        if value is None:
            return self._default(key, default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(
                f"{self.path_of(key)}: expected a list of strings, got {describe(value)}"
            )
        return tuple(value)

    def choice(self, key: str, choices: Mapping[str, str] | Sequence[str]) -> str:
        """
        A driver-like name, case-insensitive, mapped through C{choices};
        its default is the key table's.
        """
        value = self.optional_string(key)
        if value is None:
            default: str = self._default(key, _TABLE)
            return default
        table = choices if isinstance(choices, Mapping) else {c: c for c in choices}
        name = value.strip().lower()
        if name not in table:
            raise ConfigError(
                f"{self.path_of(key)}: expected one of {', '.join(sorted(set(table)))},"
                f" got {describe(value)}"
            )
        return table[name]

    def raw(self, key: str) -> Any:
        """
        The value as it is, for keys with their own parser.
        """
        return self._get(key)

    def finish(self) -> None:
        """
        Record a warning for every key nobody read (C{_comment*} keys are
        annotations and are skipped).
        """
        for key in self._data:
            if key not in self._read and not key.startswith("_comment"):
                self._warnings.append(f"{self.path_of(key)}: not implemented, ignored")
