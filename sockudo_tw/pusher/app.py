"""
An application: the credentials and per-app limits every check consults.

The field names are Sockudo's (sockudo-reference.md section 4.4) so that apps
from a Sockudo config, database or environment map one to one. Where Sockudo
leaves a limit unlimited by default we use Pusher's published limit instead
(documented in README.rst, "Apps"); a value of 0 means unlimited, as in
Sockudo.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import attrs

__all__ = ["App", "WebhookTarget", "valid_app_id"]

# ASCII letters, digits and _ - . : (Pusher's ids are numeric, Sockudo's
# samples say "app-id"), matched against the whole string.
_APP_ID = re.compile(r"[A-Za-z0-9_\-.:]{1,128}")


def valid_app_id(app_id: str) -> bool:
    """
    Whether C{app_id} can be an app id: 1 to 128 of C{A-Z a-z 0-9 _ - . :}.
    API requests naming anything else are answered 404 without a lookup.
    """
    return _APP_ID.fullmatch(app_id) is not None


@attrs.frozen
class WebhookTarget:
    """
    One entry of an app's C{webhooks} list.

    @ivar url: the HTTP endpoint, or L{None} for a Lambda target.
    @ivar lambda_function: legacy Lambda function name (Sockudo's
        C{lambda_function}).
    @ivar lambda_config: Sockudo's C{lambda: {function_name, region}} object.
    @ivar event_types: webhook names this target receives (C{channel_occupied},
        ...).
    @ivar headers: extra HTTP headers sent with each request.
    @ivar channel_prefix: only channels starting with this (Sockudo C{filter}).
    @ivar channel_suffix: only channels ending with this.
    @ivar channel_pattern: only channels matching this regular expression.
    """

    url: str | None
    event_types: tuple[str, ...]
    headers: Mapping[str, str] = attrs.field(factory=dict)
    lambda_function: str | None = None
    lambda_config: Mapping[str, str] | None = None
    channel_prefix: str | None = None
    channel_suffix: str | None = None
    channel_pattern: str | None = None


@attrs.frozen
class App:
    """
    A Pusher application and its limits.

    Every C{max_*} limit uses 0 for "unlimited". Defaults are Pusher's
    published limits where Sockudo has none.
    """

    id: str
    key: str
    secret: str
    enabled: bool = True
    max_connections: int = 0
    enable_client_messages: bool = False
    max_client_events_per_second: int = 10
    max_backend_events_per_second: int = 0
    max_read_requests_per_second: int = 0
    max_presence_members_per_channel: int = 100
    max_presence_member_size_in_kb: int = 1
    max_channel_name_length: int = 200
    max_event_channels_at_once: int = 100
    max_event_name_length: int = 200
    max_event_payload_in_kb: int = 10
    max_event_batch_size: int = 10
    enable_user_authentication: bool = False
    enable_watchlist_events: bool = False
    enable_subscription_count: bool = False
    webhooks: tuple[WebhookTarget, ...] = ()
    allowed_origins: tuple[str, ...] = ()
