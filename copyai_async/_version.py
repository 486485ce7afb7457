"""The package version, read from the installed metadata on first use (never typed twice).

Reading metadata costs milliseconds, so it waits until something asks: ``__version__``
(a lazy module attribute) or a client's User-Agent.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def version() -> str:
    """The installed version of copyai-async (``0+unknown`` from a bare source tree)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as read

    try:
        return read("copyai-async")
    except PackageNotFoundError:
        return "0+unknown"
