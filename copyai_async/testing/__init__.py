"""Test tools: a fake Copy.ai server on loopback and a virtual clock.

:class:`FakeCopyAI` serves the documented Workflow API endpoints from memory over real
HTTP on 127.0.0.1, with runs that move through their statuses on a schedule you set,
the documented payload quirks, latency, and fault injection (5xx with JSON or HTML
bodies, 429 with and without ``Retry-After``, dropped connections, truncated JSON).
:class:`FakeClock` makes retries and waits take no real time.

Run it on its own with ``python -m copyai_async.testing --port 8080``.
"""

from ._clock import FakeClock
from ._server import (
    AITASKER_WORKFLOW_ID,
    AITASKER_WORKSPACE_ID,
    DEFAULT_API_KEY,
    DEFAULT_WORKFLOW_ID,
    FakeCopyAI,
    FakeRun,
    Fault,
    Quirks,
    RecordedRequest,
    Schedule,
    ServerStats,
)

__all__ = [
    "AITASKER_WORKFLOW_ID",
    "AITASKER_WORKSPACE_ID",
    "DEFAULT_API_KEY",
    "DEFAULT_WORKFLOW_ID",
    "FakeClock",
    "FakeCopyAI",
    "FakeRun",
    "Fault",
    "Quirks",
    "RecordedRequest",
    "Schedule",
    "ServerStats",
]
