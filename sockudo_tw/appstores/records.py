# -*- test-case-name: tests.test_appstore_records -*-
"""
One stored app record (a SQL row, a DynamoDB item) to an L{App}, the way
Sockudo stores them: every column of the app object, with C{webhooks} and
C{allowed_origins} as JSON (text or already decoded), booleans as 0/1 or
true/false, limits as numbers or numeric strings, NULL for "not set", and
bookkeeping columns (C{created_at}, C{updated_at}) beside them.

The conversion is the config file's own (L{parse_app}), so an app means the
same in a file and in a database.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import attrs

from sockudo_tw.config.schema import ConfigError
from sockudo_tw.config.sections import parse_app
from sockudo_tw.pusher.app import App

__all__ = ["BOOKKEEPING_COLUMNS", "InvalidRecord", "app_from_record"]

BOOKKEEPING_COLUMNS = frozenset({"created_at", "updated_at"})
"""
Columns Sockudo's tables have that are not part of an app.
"""

_JSON_COLUMNS = ("webhooks", "allowed_origins")
_BOOLEAN_COLUMNS = frozenset(a.name for a in attrs.fields(App) if isinstance(a.default, bool))


class InvalidRecord(ValueError):  # noqa: N818 (reads "raise InvalidRecord(...)")
    """
    A stored record that does not make a valid app; the message names the
    record and what is wrong with it.
    """


def app_from_record(
    record: Mapping[str, Any], where: str, warnings: list[str] | None = None
) -> App:
    """
    The app in C{record}, described as C{where} in errors (for example
    C{"applications row id='app-1'"}). Unknown columns are reported in
    C{warnings}, like unknown keys of a config file.

    @raise InvalidRecord: the record is not a valid app.
    """
    fields: dict[str, Any] = {}
    for name, value in record.items():
        if name in BOOKKEEPING_COLUMNS or value is None:
            continue
        if isinstance(value, (bytes, bytearray, memoryview)):
            value = bytes(value).decode("utf-8")
        if isinstance(value, Decimal):  # DynamoDB numbers
            value = int(value) if value == value.to_integral_value() else float(value)
        if name in _BOOLEAN_COLUMNS and type(value) is int and value in (0, 1):  # SQL BOOL
            value = bool(value)
        if name in _JSON_COLUMNS and isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else None
            except ValueError as e:
                raise InvalidRecord(f"{where}.{name}: not JSON ({e})") from None
            if value is None:
                continue
        fields[name] = value
    try:
        return parse_app(fields, where, warnings if warnings is not None else [])
    except ConfigError as e:
        raise InvalidRecord(str(e)) from None
