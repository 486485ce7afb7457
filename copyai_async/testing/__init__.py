"""Test tools: a fake Copy.ai server on loopback and a virtual clock.

:class:`FakeCopyAI` serves the documented Workflow API endpoints from memory over real
HTTP on 127.0.0.1, with runs that move through their statuses on a :class:`Schedule`
(by default, as in production, with time: each run finishes 1 to 4 s after it starts),
the documented payload quirks, latency, and fault injection (5xx with JSON or HTML
bodies, 429 with and without ``Retry-After``, dropped connections, truncated JSON,
unreadable 200 answers), and webhooks: the endpoints, and events delivered to registered
URLs as runs change (late, lost, repeated or reordered as you ask). Like production
servers, it closes idle keep-alive connections (after 5 s by default) and gzips large
answers.
:class:`FakeClock` makes retries and waits take no real time.

Run it on its own with ``python -m copyai_async.testing --port 8080``.
"""

from ._clock import FakeClock
from ._faults import DEFAULT_RANDOM_FAULTS, Fault
from ._quirks import Quirks
from ._schedule import FakeRun, Schedule
from ._server import (
    AITASKER_WORKFLOW_ID,
    AITASKER_WORKSPACE_ID,
    DEFAULT_API_KEY,
    DEFAULT_COMPRESS_MIN_SIZE,
    DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_WORKFLOW_ID,
    FakeCopyAI,
    RecordedRequest,
    ServerStats,
)
from ._webhooks import Deliveries, Delivery, FakeWebhook

__all__ = [
    "AITASKER_WORKFLOW_ID",
    "AITASKER_WORKSPACE_ID",
    "DEFAULT_API_KEY",
    "DEFAULT_COMPRESS_MIN_SIZE",
    "DEFAULT_KEEPALIVE_TIMEOUT",
    "DEFAULT_RANDOM_FAULTS",
    "DEFAULT_WORKFLOW_ID",
    "Deliveries",
    "Delivery",
    "FakeClock",
    "FakeCopyAI",
    "FakeRun",
    "FakeWebhook",
    "Fault",
    "Quirks",
    "RecordedRequest",
    "Schedule",
    "ServerStats",
]
