"""The argument checks every public call shares (copyai_async._check): each names the
argument and what it allows, and tells a bool from a number."""

from __future__ import annotations

import math
from typing import Any

import pytest

from copyai_async._check import boolean, fraction, int_in, number, positive


@pytest.mark.parametrize(
    ("check", "value", "error", "words"),
    [
        (lambda v: boolean("serve", v), 1, TypeError, "serve must be a bool, got int"),
        (lambda v: boolean("serve", v), None, TypeError, "serve must be a bool, got NoneType"),
        (lambda v: number("delay", v), True, TypeError, "delay must be a number, got bool"),
        (lambda v: number("delay", v), "1", TypeError, "delay must be a number, got str"),
        (lambda v: fraction("spread", v), 1.5, ValueError, "spread must be between 0 and 1"),
        (lambda v: fraction("spread", v), math.nan, ValueError, "between 0 and 1, got nan"),
        (lambda v: fraction("spread", v), False, TypeError, "spread must be a number"),
        (lambda v: positive("timeout", v), 0, ValueError, "timeout must be a finite number > 0"),
        (lambda v: positive("timeout", v), math.inf, ValueError, "finite number > 0"),
        (
            lambda v: positive("pause", v, allow_zero=True),
            -1,
            ValueError,
            "pause must be a finite number >= 0",
        ),
        (lambda v: int_in("port", v, 0, 65535), 70000, ValueError, "between 0 and 65535"),
        (lambda v: int_in("port", v, 0, 65535), True, TypeError, "port must be an int, got bool"),
        (lambda v: int_in("buffer", v, 1), 0, ValueError, "buffer must be >= 1, got 0"),
    ],
)
def test_a_bad_value_is_refused_by_name(check: Any, value: Any, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        check(value)


def test_good_values_come_back_normalised() -> None:
    assert boolean("serve", False) is False
    assert number("delay", 2) == 2.0
    assert isinstance(number("delay", 2), float)
    assert fraction("spread", 1) == 1.0
    assert positive("pause", 0, allow_zero=True) == 0.0
    assert int_in("port", 0, 0, 65535) == 0
