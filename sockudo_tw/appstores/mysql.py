# -*- test-case-name: tests.test_appstore_sql -*-
"""
The MySQL/MariaDB app store (C{app_manager.driver: mysql}): Sockudo's
C{applications} table read with PyMySQL through L{SqlAppSource}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorThreads

from sockudo_tw.appstores import IAppSource
from sockudo_tw.appstores.sql import SqlAppSource, SqlDialect, require_library
from sockudo_tw.config.schema import SqlDatabaseConfig

if TYPE_CHECKING:
    from sockudo_tw.config import ServerConfig

__all__ = ["CONNECT_TIMEOUT", "IO_TIMEOUT", "MYSQL", "source_from_config"]

CONNECT_TIMEOUT = 5
"""
Seconds to establish the TCP connection to the database.
"""

IO_TIMEOUT = 15
"""
Seconds one read or write on a connection may wait (PyMySQL's
C{read_timeout}/C{write_timeout}), the server's greeting included: a
server that accepts connections but does not answer, or a connection the
network cut silently, fails the query after this long, not after the
kernel's TCP timeouts (many minutes).
"""


def _connect_arguments(database: SqlDatabaseConfig) -> dict[str, Any]:
    """
    C{pymysql.connect()}'s arguments. A host starting with C{/} is the
    path of the server's Unix socket.
    """
    arguments: dict[str, Any] = {
        "port": database.port,
        "user": database.username,
        "password": database.password,
        "database": database.database,
        "charset": "utf8mb4",
        "connect_timeout": CONNECT_TIMEOUT,
        "read_timeout": IO_TIMEOUT,
        "write_timeout": IO_TIMEOUT,
        "autocommit": False,
    }
    if database.host.startswith("/"):
        arguments["unix_socket"] = database.host
    else:
        arguments["host"] = database.host
    return arguments


MYSQL = SqlDialect(
    name="MySQL",
    module_name="pymysql",
    quote_char="`",
    placeholder="%s",
    types={
        "text": "VARCHAR(255)",
        "count": "INT UNSIGNED",
        "flag": "BOOLEAN",
        "json": "JSON",
        "time": "TIMESTAMP",
    },
    current_schema="DATABASE()",
    on_update="ON UPDATE CURRENT_TIMESTAMP",
    add_if_not_exists=False,
    fold_case=False,
    connect_arguments=_connect_arguments,
)
"""
MySQL and MariaDB: backquoted names (C{key} is a reserved word), the
database of the connection as the schema, C{JSON} columns (text with a
validity check in MariaDB).
"""


def source_from_config(config: ServerConfig, reactor: IReactorThreads) -> IAppSource:
    """
    The app source C{database.mysql} describes.

    @param reactor: the running reactor (L{IReactorThreads} and
        C{IReactorCore}).
    @raise ConfigError: PyMySQL is missing or the table name is unsafe.
    """
    require_library("pymysql", "mysql", "the PyMySQL library", "mysql")
    return SqlAppSource(MYSQL, config.database_mysql, reactor, "database.mysql")
