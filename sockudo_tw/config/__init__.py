# -*- test-case-name: tests.test_config -*-
"""
Configuration: Sockudo's C{config.json} structure plus its environment
variables, parsed once into frozen typed objects.

Load order (sockudo-reference.md section 4.1): embedded defaults, then the
file given with C{--config} (JSON, or Sockudo's TOML form when the name ends
in C{.toml}; missing keys keep their defaults), then the environment
(section 4.3). Every problem raises L{ConfigError} naming the key path or
the environment variable and what was expected, so the daemon fails before
any port is bound.

Nothing is ignored silently. Each key is honoured; or, when ignoring it is
harmless, it is named in L{ServerConfig.warnings} (logged at start); or,
when ignoring it would change behaviour or drop a safety property (a driver
sockudo-tw does not implement, C{cluster_mode: true}, a C{path_prefix}),
it is refused with a L{ConfigError} saying why. The settings of a driver
that is not selected are read only by that driver, so they are accepted
silently; environment variables for such a driver are warned about, since
setting one shows an intent. L{known_keys} lists every key the parser
reads; README.rst documents each one (a test compares the two).

Global limits: C{channel_limits.max_name_length}, C{event_limits.*} and
C{presence.*} are the defaults of the matching C{max_*} field of every app
(the default app included) that leaves the field null or absent; a key
absent from the global section leaves L{App}'s default (Pusher's limit).

Deliberate differences from Sockudo:
  - a malformed number or boolean in the environment is an error naming the
    variable (Sockudo ignores it with a warning);
  - an unknown driver name is an error (Sockudo silently keeps the old one);
  - C{CLUSTER_HEALTH_*} apply to C{adapter.cluster_health}, the copy the
    adapters read (Sockudo writes an unused top-level copy);
  - optional app limits (C{max_*}) accept JSON numbers as well as strings,
    and a null or absent one takes L{App}'s default (Pusher's limit);
  - the queue driver defaults to C{memory} so the embedded defaults need no
    Redis.

C{permission_mode} rule: the value is octal digits when it is a string, or a
number whose decimal digits are all 0-7 and which is at most 777 (so C{"755"}
and C{755} both mean C{0o755}); any other number up to C{0o777} (511) is the
mode itself (so C{493} means C{0o755}).

Layout (one module per concern):

  - L{sockudo_tw.config.schema}: the frozen typed objects, the driver names
    and the key table (every key, its default and its treatment), from
    which L{known_keys} derives;
  - L{sockudo_tw.config.reader}: reading typed values out of JSON objects;
  - L{sockudo_tw.config.sections}: one parser per top-level section;
  - L{sockudo_tw.config.validation}: cross-field checks and refusals;
  - L{sockudo_tw.config.env}: the environment variables;
  - L{sockudo_tw.config.parse}: L{parse_config}, the environment over the
    tree;
  - L{sockudo_tw.config.formats}: L{load_config}, JSON and TOML files.
"""

from sockudo_tw.config.env import env_bool, known_env_vars
from sockudo_tw.config.formats import load_config
from sockudo_tw.config.parse import parse_config
from sockudo_tw.config.reader import parse_permission_mode
from sockudo_tw.config.schema import (
    ADAPTER_DRIVERS,
    APP_MANAGER_DRIVERS,
    CACHE_DRIVERS,
    LOG_FORMATS,
    METRICS_DRIVERS,
    QUEUE_DRIVERS,
    AdapterConfig,
    AppManagerConfig,
    CacheConfig,
    ClusterHealthConfig,
    ConfigError,
    CorsConfig,
    DatabaseRedisConfig,
    HttpLimits,
    LoggingConfig,
    MetricsConfig,
    NatsConfig,
    QueueConfig,
    RateLimit,
    RateLimiterConfig,
    ServerConfig,
    SslConfig,
    UnixSocketConfig,
    WebhooksConfig,
    WebSocketLimitsConfig,
    known_keys,
)
from sockudo_tw.config.validation import check_workers

__all__ = [
    "ADAPTER_DRIVERS",
    "APP_MANAGER_DRIVERS",
    "CACHE_DRIVERS",
    "LOG_FORMATS",
    "METRICS_DRIVERS",
    "QUEUE_DRIVERS",
    "AdapterConfig",
    "AppManagerConfig",
    "CacheConfig",
    "ClusterHealthConfig",
    "ConfigError",
    "CorsConfig",
    "DatabaseRedisConfig",
    "HttpLimits",
    "LoggingConfig",
    "MetricsConfig",
    "NatsConfig",
    "QueueConfig",
    "RateLimit",
    "RateLimiterConfig",
    "ServerConfig",
    "SslConfig",
    "UnixSocketConfig",
    "WebSocketLimitsConfig",
    "WebhooksConfig",
    "check_workers",
    "env_bool",
    "known_env_vars",
    "known_keys",
    "load_config",
    "parse_config",
    "parse_permission_mode",
]
