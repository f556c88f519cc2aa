"""
The tunables of webhook delivery, shared by the sink, the batcher and the
sender.
"""

from __future__ import annotations

import attrs

__all__ = ["WebhookSettings"]


@attrs.frozen
class WebhookSettings:
    """
    Tunables of webhook delivery.

    @ivar batching_enabled: C{webhooks.batching.enabled}; when off, each
        event is its own request.
    @ivar batching_duration: C{webhooks.batching.duration}, in seconds.
    @ivar max_batch_events: a batch is sent early once it holds this many.
    @ivar leave_delay: seconds C{channel_vacated}/C{member_removed} are
        held; 0 sends them at once.
    @ivar request_timeout: seconds one HTTP attempt may take.
    @ivar retry_initial_delay: back-off before the second attempt.
    @ivar retry_max_delay: the largest back-off between two attempts.
    @ivar retry_max_duration: no attempt starts later than this many seconds
        after the first one (Pusher retries for about 5 minutes).
    @ivar concurrency: HTTP requests in flight at once on this node
        (C{queue.redis.concurrency}); waiting for a retry takes no slot.
    """

    batching_enabled: bool = True
    batching_duration: float = 0.05
    max_batch_events: int = 100
    leave_delay: float = 3.0
    request_timeout: float = 10.0
    retry_initial_delay: float = 1.0
    retry_max_delay: float = 60.0
    retry_max_duration: float = 300.0
    concurrency: int = 20
