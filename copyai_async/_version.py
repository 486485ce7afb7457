"""The package version, read once from the installed metadata (never typed twice)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("copyai-async")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
