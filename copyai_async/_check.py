"""Checks of arguments, one of each: every public call's bad input is refused here, with
a ``TypeError`` or ``ValueError`` (``ConfigurationError`` for a client's setup) that names
the argument and what it allows. No I/O, no imports from the rest of the package but its
errors.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
from collections.abc import Mapping
from typing import Any

from yarl import URL

from ._errors import ConfigurationError

__all__ = [
    "api_base_url",
    "base_url_from",
    "boolean",
    "credential",
    "fraction",
    "http_url",
    "int_in",
    "is_loopback",
    "json_object",
    "number",
    "positive",
]


def boolean(name: str, value: Any) -> bool:
    """``value`` if it is a bool (not merely truthy); TypeError naming ``name`` otherwise."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def number(name: str, value: Any) -> float:
    """``value`` as a float if it is an int or a float (not a bool); TypeError naming
    ``name`` otherwise. Its range is the caller's to check."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    return float(value)


def fraction(name: str, value: Any) -> float:
    """``value`` as a number from 0 to 1; TypeError/ValueError naming ``name`` otherwise."""
    checked = number(name, value)
    if not 0.0 <= checked <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
    return checked


def credential(value: Any, *, name: str, env: str, what: str, how: str) -> str:
    """The secret from the argument or the environment variable, checked."""
    if value is None:
        value = os.environ.get(env)
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value or not value.strip():
        raise ConfigurationError(
            f"no {what}: pass {how}({name}=...) or set the {env} environment variable"
        )
    return value


def base_url_from(value: Any, *, env: str, default: str | None, how: str) -> Any:
    """``value``, else the environment variable ``env`` (if set and not blank), else
    ``default``; with neither, ConfigurationError (the URL itself is checked later)."""
    if value is None:
        value = os.environ.get(env, "").strip() or default
    if value is None:
        raise ConfigurationError(
            f"no base URL: pass {how}(base_url=...) or set the {env} environment variable"
        )
    return value


def positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """``value`` as a finite number > 0 (>= 0 with ``allow_zero``); TypeError/ValueError
    naming ``name`` otherwise."""
    number(name, value)
    low_ok = value >= 0 if allow_zero else value > 0
    if not (math.isfinite(value) and low_ok):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def int_in(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` if it is an int (not a bool) from ``low`` to ``high`` (no upper bound
    when ``None``); TypeError/ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        allowed = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` names this machine (localhost, 127.0.0.0/8, ::1)."""
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def http_url(name: str, value: Any) -> URL:
    """``value`` as an http(s) URL with a host, no credentials and no fragment.

    Raises:
        TypeError: not a str.
        ValueError: anything else, naming ``name`` (and never echoing credentials).
    """
    if not isinstance(value, (str, URL)):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    try:
        url = URL(str(value))
    except ValueError as exc:
        raise ValueError(f"{name} is not a URL: {exc}") from None
    if url.user is not None or url.password is not None:
        raise ValueError(
            f"{name} must not contain credentials (user:password@): Copy.ai would store and "
            "send them in the clear; put a secret in the path or query instead"
        )
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{name} must be an http(s) URL with a host, got {str(value)!r}")
    if url.fragment:
        raise ValueError(f"{name} must not carry a fragment (#...): it is never sent")
    return url


def api_base_url(value: Any, *, allow_http: bool) -> URL:
    """``base_url=``: an http(s) URL with a host, without credentials, query or fragment;
    plain http only to loopback unless ``allow_http``. ConfigurationError otherwise."""
    if not isinstance(value, (str, URL)):
        raise TypeError(f"base_url must be a str, got {type(value).__name__}")
    url = URL(value)
    if url.user is not None or url.password is not None:
        # Say so without echoing them: they are secrets too.
        raise ConfigurationError(
            "base_url must not contain credentials (user:password@); the API key goes in api_key="
        )
    shown = str(url)
    if url.scheme not in ("http", "https"):
        raise ConfigurationError(f"base_url must be an http(s) URL, got {shown!r}")
    if not url.host:
        raise ConfigurationError(f"base_url must name a host, got {shown!r}")
    if url.query_string or url.fragment:
        raise ConfigurationError("base_url must not carry a query or a fragment")
    if url.scheme == "http" and not allow_http and not is_loopback(url.host):
        raise ConfigurationError(
            f"base_url {shown!r} is plain http to a host that is not loopback: the API key "
            "would cross the network unencrypted; use https, or pass allow_http=True"
        )
    return url


def json_object(name: str, value: Any) -> dict[str, Any]:
    """``value`` as a dict that JSON can encode.

    Raises:
        TypeError: not a mapping, or holding a value JSON cannot encode.
        ValueError: holding NaN or an infinity (not JSON), a circular reference, or
            nesting deeper than the encoder can follow.
    """
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping (dict), got {type(value).__name__}")
    obj = dict(value)
    try:
        json.dumps(obj, allow_nan=False)
    except TypeError as exc:
        raise TypeError(f"{name} must hold only JSON-encodable values: {exc}") from exc
    except ValueError as exc:
        raise ValueError(f"{name} must hold only JSON-encodable values: {exc}") from exc
    except RecursionError:
        raise ValueError(f"{name} is nested too deeply to encode as JSON") from None
    return obj
