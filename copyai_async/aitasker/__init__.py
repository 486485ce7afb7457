"""aitasker's workflow runs, with the same core as the Copy.ai client.

``AITaskerClient(token=None, *, base_url, ...)``: ``list_runs``, ``get_run``, ``trigger``,
and the same ``wait_for_run``, ``watch_run`` and ``wait_for_runs`` as ``CopyAIClient``.
"""

from ._client import (
    DEFAULT_FAILED_STATUSES,
    DEFAULT_RUNNING_STATUSES,
    DEFAULT_TERMINAL_STATUSES,
    AITaskerClient,
)
from ._models import AITaskerRun, NodeRun

__all__ = [
    "DEFAULT_FAILED_STATUSES",
    "DEFAULT_RUNNING_STATUSES",
    "DEFAULT_TERMINAL_STATUSES",
    "AITaskerClient",
    "AITaskerRun",
    "NodeRun",
]
