"""The fast path for the common run shape agrees with the converter on every body.

``WIRE`` builds runs of the usual shape directly and leaves everything else to the
cattrs converter; ``WireFormat(fast=False)`` sends every run through the converter, and
the strict twin refuses unknown keys. On generated bodies, odd and ordinary, the three
must agree: the same runs, or the same refusal.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from copyai_async._convert import WIRE, ErrorEnvelope, WireError, WireFormat

CONVERTER = WireFormat(fast=False)
STRICT = WireFormat(strict=True)

TIMESTAMPS = st.sampled_from(
    [
        "2023-04-29T15:08:01.326Z",
        "2023-09-27T18:24:47Z",
        "2023-09-27T18:24:47.123456789Z",
        "2023-09-27T18:24:47+05:30",
        "2023-09-27T18:24:47",
        "2023-09-27 18:24:47Z",
        " 2023-09-27T18:24:47Z ",
        "2016-12-31T23:59:60Z",
        "2023-09-27",
        "2023-W39-3",
        "20230927T182447Z",
        "yesterday",
        "",
        "2023-02-30T00:00:00Z",
    ]
)
ABSENT = object()


def _field(good: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a value of the common shape, so that one odd field at a time is tried."""
    return st.one_of(good, good, good, good, st.just(ABSENT), st.none(), odd)


TEXT = st.text(max_size=12)
OBJECT = st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3)
NOT_OBJECT = st.lists(st.integers(), max_size=2) | st.text(max_size=5) | st.integers()
FIELDS = {
    "id": _field(TEXT, st.integers()),
    "workflowRunId": _field(TEXT, st.booleans()),
    "workflowId": _field(TEXT, st.integers()),
    "status": _field(
        st.sampled_from(["NEW", "WAITING", "PROCESSING", "COMPLETE", "RETRYING", "FAILED"]),
        st.text(max_size=8) | st.integers() | st.lists(st.text(), max_size=1),
    ),
    "input": _field(OBJECT, NOT_OBJECT),
    "output": _field(OBJECT, NOT_OBJECT),
    "metadata": _field(OBJECT, NOT_OBJECT),
    "createdAt": _field(TIMESTAMPS, st.text(max_size=25) | st.integers()),
    "credits": _field(
        st.integers(0, 10**6) | st.integers(0, 10**6).map(str),
        st.integers()
        | st.integers(0, 99).map(lambda n: f" +{n} ")
        | st.just("9" * 5000)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.booleans()
        | st.sampled_from(["lots", "", "1.5", "٣"]),
    ),
    "toolKey": st.one_of(st.just(ABSENT), TEXT),
}


@st.composite
def runs(draw: st.DrawFn) -> dict[str, Any]:
    body = {}
    for key, values in FIELDS.items():
        value = draw(values)
        if value is not ABSENT:
            body[key] = value
    return body


def _outcome(call: Any) -> Any:
    try:
        return call()
    except (WireError, ErrorEnvelope) as exc:
        return type(exc)


FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="copyai_async")  # odd timestamps warn


@FUZZ
@given(items=st.lists(runs(), max_size=4))
def test_pages_agree(items: list[dict[str, Any]]) -> None:
    body = {"status": "success", "data": {"total": len(items), "data": items}}
    kw = {"workflow_id": "WCFG-1", "page": 1, "size": 10}
    fast = _outcome(lambda: WIRE.page(body, **kw))
    assert fast == _outcome(lambda: CONVERTER.page(body, **kw))
    strict = _outcome(lambda: STRICT.page(body, **kw))
    if strict is not WireError:
        assert fast == strict


@FUZZ
@given(item=runs())
def test_single_runs_and_starts_agree(item: dict[str, Any]) -> None:
    body = {"status": "success", "data": item}
    fast = _outcome(lambda: WIRE.run(body, workflow_id="WCFG-1"))
    assert fast == _outcome(lambda: CONVERTER.run(body, workflow_id="WCFG-1"))
    kw = {"workflow_id": "WCFG-1", "start_variables": {"a": 1}, "metadata": {"k": "v"}}
    started = _outcome(lambda: WIRE.started_run(body, **kw))
    assert started == _outcome(lambda: CONVERTER.started_run(body, **kw))


def test_the_common_shape_takes_the_fast_path() -> None:
    item = {
        "id": "WRUN-1",
        "workflowRunId": "WRUN-1",
        "workflowId": "WCFG-1",
        "status": "COMPLETE",
        "input": {"a": 1},
        "output": {"b": 2},
        "metadata": None,
        "createdAt": "2023-04-29T15:08:01.326Z",
        "credits": "22",
    }
    run = WIRE._fast_run(item, "WCFG-1")
    assert run is not None
    assert run == CONVERTER.run({"status": "success", "data": item}, workflow_id="WCFG-1")
    assert run.credits == 22
    assert run.created_at is not None
    assert run.created_at.utcoffset() is not None
    for odd in ({"credits": "lots"}, {"createdAt": "yesterday"}, {"status": 3}, {"id": None}):
        assert WIRE._fast_run({**item, **odd}, "WCFG-1") is None  # the converter decides
