"""copyai_async: an asyncio client for Copy.ai's Workflow API.

Await run completion, stream every run of a workflow, poll many runs at once: with
retries, backoff and a precise error tree instead of hand-written loops.
"""

from ._batch import REFUSED, Batch, BatchProgress, BatchResult
from ._client import DEFAULT_BASE_URL, MAX_PAGE_SIZE, CopyAIClient
from ._clock import Clock, SystemClock
from ._coordination import RedisCoordination
from ._durations import Durations
from ._errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BatchJournalError,
    ClientClosedError,
    ConfigurationError,
    CopyAIError,
    EventLoopError,
    InvalidResponseError,
    NotFoundError,
    PaginationError,
    PollFailedError,
    PollTimeoutError,
    ProxyError,
    RateLimitError,
    RunFailedError,
    ServerError,
    StartUncertainError,
    UnprocessableEntityError,
    WebhookEventError,
)
from ._models import START_KEY, RunPage, RunStatus, WorkflowRun
from ._paginate import RunPaginator
from ._poll import PollPolicy
from ._version import version as _version

__all__ = [
    "DEFAULT_BASE_URL",
    "MAX_PAGE_SIZE",
    "REFUSED",
    "START_KEY",
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "Batch",
    "BatchJournalError",
    "BatchProgress",
    "BatchResult",
    "ClientClosedError",
    "Clock",
    "ConfigurationError",
    "CopyAIClient",
    "CopyAIError",
    "Durations",
    "EventLoopError",
    "InvalidResponseError",
    "NotFoundError",
    "PaginationError",
    "PollFailedError",
    "PollPolicy",
    "PollTimeoutError",
    "ProxyError",
    "RateLimitError",
    "RedisCoordination",
    "RunFailedError",
    "RunPage",
    "RunPaginator",
    "RunStatus",
    "ServerError",
    "StartUncertainError",
    "SystemClock",
    "UnprocessableEntityError",
    "WebhookEventError",
    "WorkflowRun",
    "__version__",
]


# Tracebacks name the public home of each exception (copyai_async.NotFoundError, not
# copyai_async._errors.NotFoundError); pickling finds them there too. Only exceptions:
# the models' string annotations are resolved in the module they name.
for _name in __all__:
    _obj = globals().get(_name)
    if isinstance(_obj, type) and issubclass(_obj, BaseException):
        _obj.__module__ = __name__
del _name, _obj


def __getattr__(name: str) -> str:
    # __version__ is read from the package metadata only when asked for (it costs ms).
    if name == "__version__":
        return _version()
    raise AttributeError(f"module 'copyai_async' has no attribute {name!r}")
