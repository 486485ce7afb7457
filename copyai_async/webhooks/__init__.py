"""Copy.ai webhooks: typed webhooks and events, parsing, and a safe listener.

Manage webhooks with :class:`~copyai_async.CopyAIClient` (``create_webhook``,
``get_webhook``, ``delete_webhook``, ``list_webhooks``); receive them with
``client.listen()`` (a :class:`Listener`), which also makes the client's waits finish
the moment an event lands (each verified with one GET), polling as the safety net.

Deliveries are not signed: an event is a claim, never the truth (``verified=False``
until :meth:`~copyai_async.CopyAIClient.verify_event` has read the run from the API).
"""

from typing import TYPE_CHECKING, Any

from ._models import (
    RUN_EVENTS,
    CreditLimitEvent,
    RunEvent,
    Webhook,
    WebhookEvent,
    WebhookEventType,
)
from ._parse import parse_event

if TYPE_CHECKING:
    from ._listener import (
        DEFAULT_MAX_BODY,
        DEFAULT_MAX_CONNECTIONS,
        DEFAULT_PATH,
        DEFAULT_REQUEST_TIMEOUT,
        TOKEN_PARAM,
        Listener,
        ListenerStats,
    )

__all__ = [
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_PATH",
    "DEFAULT_REQUEST_TIMEOUT",
    "RUN_EVENTS",
    "TOKEN_PARAM",
    "CreditLimitEvent",
    "Listener",
    "ListenerStats",
    "RunEvent",
    "Webhook",
    "WebhookEvent",
    "WebhookEventType",
    "parse_event",
]

_LAZY = {
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_PATH",
    "DEFAULT_REQUEST_TIMEOUT",
    "TOKEN_PARAM",
    "Listener",
    "ListenerStats",
}


def __getattr__(name: str) -> Any:
    # The listener needs aiohttp.web (a tenth of aiohttp's import time): loaded when used.
    if name in _LAZY:
        from . import _listener

        return getattr(_listener, name)
    raise AttributeError(f"module 'copyai_async.webhooks' has no attribute {name!r}")
