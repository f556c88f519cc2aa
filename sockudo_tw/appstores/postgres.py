# -*- test-case-name: tests.test_appstore_sql -*-
"""
The PostgreSQL app store (C{app_manager.driver: pgsql}, C{postgres} or
C{postgresql}): Sockudo's C{applications} table read with psycopg 3
through L{SqlAppSource}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorThreads

from sockudo_tw.appstores import IAppSource
from sockudo_tw.appstores.sql import SqlAppSource, SqlDialect, require_library
from sockudo_tw.config.schema import SqlDatabaseConfig

if TYPE_CHECKING:
    from sockudo_tw.config import ServerConfig

__all__ = ["CONNECT_TIMEOUT", "IO_TIMEOUT", "POSTGRES", "source_from_config"]

CONNECT_TIMEOUT = 5
"""
Seconds a connection attempt may take (libpq's C{connect_timeout}).
"""

IO_TIMEOUT = 15
"""
Seconds sent data may stay unacknowledged before the connection is given
up (C{tcp_user_timeout}); TCP keepalives (first probe after 5 s idle, then
every 2 s, 3 probes) notice a peer that vanished while we wait for an
answer. Together they bound how long a query waits on a database cut off
by the network.
"""


def _connect_arguments(database: SqlDatabaseConfig) -> dict[str, Any]:
    """
    C{psycopg.connect()}'s arguments. An empty password is left out, so
    that libpq's own sources (C{PGPASSWORD}, C{~/.pgpass}) apply.
    """
    arguments: dict[str, Any] = {
        "host": database.host,
        "port": database.port,
        "user": database.username,
        "dbname": database.database,
        "connect_timeout": CONNECT_TIMEOUT,
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
        "tcp_user_timeout": IO_TIMEOUT * 1000,
        "application_name": "sockudo-tw",
        # No server-side prepared statements: they break behind PgBouncer
        # in transaction mode, and these lookups gain nothing from them.
        "prepare_threshold": None,
    }
    if database.password:
        arguments["password"] = database.password
    return arguments


POSTGRES = SqlDialect(
    name="PostgreSQL",
    module_name="psycopg",
    quote_char='"',
    placeholder="%s",
    types={
        "text": "VARCHAR(255)",
        "count": "INTEGER",
        "flag": "BOOLEAN",
        "json": "JSONB",
        "time": "TIMESTAMP WITH TIME ZONE",
    },
    current_schema="current_schema()",
    on_update="",
    add_if_not_exists=True,
    fold_case=True,
    connect_arguments=_connect_arguments,
)
"""
PostgreSQL: double-quoted names, table names folded to lower case as
unquoted names are, the first schema of the C{search_path}, C{JSONB}
columns.
"""


def source_from_config(config: ServerConfig, reactor: IReactorThreads) -> IAppSource:
    """
    The app source C{database.postgres} describes.

    @param reactor: the running reactor (L{IReactorThreads} and
        C{IReactorCore}).
    @raise ConfigError: psycopg is missing or the table name is unsafe.
    """
    require_library("psycopg", "postgres", "the psycopg 3 library", "postgres")
    return SqlAppSource(POSTGRES, config.database_postgres, reactor, "database.postgres")
