"""A page of runs decoded straight into msgspec Structs (the ``fast`` extra).

Imported by :mod:`copyai_async._convert` when msgspec is installed (as orjson is by
:mod:`copyai_async._http`); the core works without it. The Structs say where the
fields of a page are and which JSON types they may have; what the values mean (the run's
id from ``workflowRunId``, numeric strings, timestamps, statuses) is left to
:mod:`copyai_async._convert`, which builds the runs from them. So ``createdAt`` and
``status`` stay strings here: msgspec would round a timestamp with more than 6 fraction
digits where the converter truncates, and would refuse an unknown status.

:func:`decode_page` answers only for a body it decodes exactly as the standard library
would; for every other body it answers ``None`` and the caller decodes it the usual way:

- any body msgspec refuses (not JSON, ``NaN``, a number past the float range in a run's
  field, an integer past Python's limit, a lone surrogate), any value of another JSON
  type than the Structs say (a run that is not an object, ``credits`` as a float), an
  error envelope without ``data``: ``None``;
- nested deeper than msgspec follows: ``None`` (never its ``RecursionError``). msgspec
  follows one level more than the standard library (on Python 3.13, 9,998 levels
  against 9,997): a body nested exactly that deep is the one body read here that the
  standard library would refuse;
- msgspec skips unknown fields without reading them as closely as it reads the rest:
  it lets invalid UTF-8 and integers of any length through there. A body that is not
  ASCII and not valid UTF-8, or that holds a longer digit run than Python converts to
  an ``int``, is left to the standard library (which refuses both).
"""

from __future__ import annotations

import sys
from typing import Any

import msgspec

__all__ = ["Envelope", "PageData", "Run", "decode_page"]


class Run(msgspec.Struct, gc=False, rename="camel"):
    """A run of a listing, as sent (unknown fields skipped)."""

    id: str | msgspec.UnsetType = msgspec.UNSET  # null is not missing: null goes the slow way
    workflow_run_id: str | None = None
    workflow_id: str | None = None
    status: str | None = None
    input: dict[str, Any] | None = None
    output: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    created_at: str | None = None
    credits: int | str | None = None


class PageData(msgspec.Struct, gc=False):
    """The ``data`` of a listing's envelope."""

    data: list[Run]
    total: Any = None


class Envelope(msgspec.Struct, gc=False, rename="camel"):
    """A listing's answer: ``{"status", "data"}``, or the API's error envelope."""

    data: PageData
    status: Any = None
    error_code: Any = None
    details: Any = None


_decode = msgspec.json.Decoder(Envelope).decode
_DIGITS_AS_D = bytes(0x64 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))


def _long_digit_run(raw: bytes) -> bool:
    """Whether ``raw`` holds a run of more digits than Python converts to an ``int``.

    Such a run, of at least ``2 * step`` digits, covers a whole span between two
    neighbouring multiples of ``step``: only those spans are looked at (a few dozen in a
    page), and the whole body only when one of them is all digits.
    """
    # 3.10 before 3.10.7 has no limit (nor this function): every length is converted.
    get_limit = getattr(sys, "get_int_max_str_digits", None)
    limit: int = 0 if get_limit is None else get_limit()
    if limit <= 0 or len(raw) <= limit:
        return False
    step = (limit + 1) // 2
    sample = raw[::step]
    for i in range(len(sample) - 1):
        if (
            0x30 <= sample[i] <= 0x39
            and 0x30 <= sample[i + 1] <= 0x39
            and raw[i * step : (i + 1) * step + 1].isdigit()
        ):
            return raw.translate(_DIGITS_AS_D).find(b"d" * (limit + 1)) >= 0
    return False


def decode_page(raw: bytes) -> Envelope | None:
    """The page as Structs, or ``None``: decode it the usual way (see the module)."""
    if not raw.isascii():
        try:
            raw.decode()
        except UnicodeDecodeError:
            return None
    if _long_digit_run(raw):
        return None
    try:
        return _decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return None
