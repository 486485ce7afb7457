"""The package version, from the package metadata (never typed twice).

The build writes it into ``_build_version.py`` (hatchling's version hook, from the
metadata in ``pyproject.toml``), so reading it is free; a source tree that was never
installed falls back to ``importlib.metadata``, which costs milliseconds.
"""

from __future__ import annotations

from functools import lru_cache

_BUILT: str | None
try:  # a two-line module: imported with the package, not by the first client
    from ._build_version import __version__ as _BUILT
except ImportError:  # pragma: no cover - a source tree that was never built
    _BUILT = None


@lru_cache(maxsize=1)
def version() -> str:
    """The installed version of copyai-async (``0+unknown`` from a bare source tree)."""
    if _BUILT is not None:
        return _BUILT
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as read

    try:
        return read("copyai-async")
    except PackageNotFoundError:
        return "0+unknown"
