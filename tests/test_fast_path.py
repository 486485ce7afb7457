"""The fast path for the common run shape agrees with the converter on every body.

``WIRE`` builds runs of the usual shape directly and leaves everything else to the
cattrs converter; ``WireFormat(fast=False)`` sends every run through the converter, and
the strict twin refuses unknown keys. On generated bodies, odd and ordinary, the three
must agree: the same runs, or the same refusal.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import copyai_async._convert as convert
import copyai_async._http as http
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


# -- from bytes: every decoder, one answer ----------------------------------------------
#
# A listing's body goes bytes -> msgspec Structs -> runs when msgspec is installed, and
# bytes -> dicts (orjson, or the standard library) -> runs otherwise; either way a run
# of the common shape is built directly and any other goes through the converter. Bodies
# mutated byte by byte, from recorded pages and generated ones, must come out the same
# whichever way they go: the same runs, or the same documented error.

PAYLOADS = Path(__file__).parent / "payloads"
KW = {"workflow_id": "WCFG-1", "page": 1, "size": 10}


def _stdlib(raw: bytes) -> Any:
    return json.loads(raw)


def _orjson(raw: bytes) -> Any:
    return http.loads(raw)


def _msgspec(raw: bytes) -> Any:
    typed = WIRE.decode_page(raw)
    return http.loads(raw) if typed is None else typed


def _page_outcome(decode: Any, wire: WireFormat, raw: bytes) -> Any:
    """What the client makes of a listing's body: the page (as text, so that NaN equals
    NaN and 1 differs from 1.0), or the error it gives (``not JSON`` is what the client
    reports as such: ValueError, UnicodeDecodeError, RecursionError)."""
    try:
        body = decode(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return "not JSON"
    try:
        return repr(wire.page(body, **KW))
    except WireError as exc:
        return ("WireError", exc.json_path)
    except ErrorEnvelope as exc:
        return ("ErrorEnvelope", exc.error_code, repr(exc.details))


def _all_outcomes(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    got = {
        "msgspec": _page_outcome(_msgspec, WIRE, raw),
        "orjson": _page_outcome(_orjson, WIRE, raw),
        "stdlib": _page_outcome(_stdlib, WIRE, raw),
        "stdlib, converter only": _page_outcome(_stdlib, CONVERTER, raw),
    }
    with monkeypatch.context() as patch:  # the builder as a model with validators has it
        patch.setattr(convert, "_BUILD_RUN", None)
        patch.setattr(convert, "_RUN_DRAFT", None)
        got["msgspec, no slot builder"] = _page_outcome(_msgspec, WIRE, raw)
        got["stdlib, no slot builder"] = _page_outcome(_stdlib, WIRE, raw)
    return got


def _recorded_pages() -> list[bytes]:
    bodies = [(PAYLOADS / name).read_bytes() for name in PAGE_PAYLOADS]
    run = {
        "id": "WRUN-1",
        "workflowRunId": "WRUN-1",
        "workflowId": "WCFG-1",
        "status": "COMPLETE",
        "input": {"topic": "cats"},
        "output": {"text": "é \u2603"},
        "metadata": {"copyai_async_start_key": "k"},
        "createdAt": "2023-04-29T15:08:01.326Z",
        "credits": 3,
        "toolKey": "x",
    }
    bodies.append(
        json.dumps({"status": "success", "data": {"total": 2, "data": [run, run]}}).encode()
    )
    return bodies


PAGE_PAYLOADS = ("list_runs_example.json", "list_runs_success.json")
INSERTS = st.sampled_from(
    [
        b"0",
        b"9" * 25,
        b"9" * 4301,
        b"-",
        b".5",
        b"e400",
        b'"',
        b"\\",
        b"\\ud800",
        b"\\u00e9",
        b"\xff",
        b"\xed\xa0\x80",
        b"\xc3\xa9",
        b"\x00",
        b"\x01",
        b"{",
        b"}",
        b"[",
        b"]",
        b",",
        b":",
        b" ",
        b"null",
        b"true",
        b"NaN",
        b"Infinity",
        b'"toolKey":[1,{"a":null}],',
        b'"status":"error",',
        b'"credits":"22",',
        b'"createdAt":"2016-12-31T23:59:60Z",',
        b'"createdAt":"2023-09-27T18:24:47.123456789Z",',
        b'"id":null,',
        b'"x":' + b"[" * 3000 + b"]" * 3000 + b",",
    ]
)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """A body with a few bytes deleted, replaced, inserted or repeated."""
    raw = bytearray(draw(base))
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 1, 2, 3]))):
        at = draw(st.integers(0, len(raw)))
        kind = draw(st.sampled_from(["delete", "insert", "replace", "repeat"]))
        if kind == "delete":
            del raw[at : at + draw(st.integers(1, 4))]
        elif kind == "insert":
            raw[at:at] = draw(INSERTS)
        elif kind == "replace":
            raw[at : at + 1] = draw(INSERTS)
        else:
            raw[at:at] = raw[at : at + draw(st.integers(1, 30))]
    return bytes(raw)


def _generated_page(items: list[dict[str, Any]]) -> bytes:
    return json.dumps({"status": "success", "data": {"total": len(items), "data": items}}).encode()


BYTES_FUZZ = settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@BYTES_FUZZ
@given(raw=mutated(st.sampled_from(_recorded_pages())))
def test_mutated_recorded_pages_decode_to_one_answer(
    monkeypatch: pytest.MonkeyPatch, raw: bytes
) -> None:
    got = _all_outcomes(raw, monkeypatch)
    assert len(set(map(repr, got.values()))) == 1, got


USUAL_RUNS = st.fixed_dictionaries(
    {
        "id": TEXT,
        "workflowId": TEXT,
        "status": st.sampled_from(["NEW", "COMPLETE", "FAILED", "SOMETHING_NEW"]),
        "createdAt": TIMESTAMPS,
        "credits": st.integers(0, 10**6) | st.integers(-(2**70), 2**70).map(str),
    },
    optional={
        "workflowRunId": TEXT,
        "input": OBJECT,
        "output": OBJECT | st.none(),
        "metadata": OBJECT | st.none(),
        "toolKey": TEXT | st.lists(st.integers() | st.floats(), max_size=2),
    },
)


@BYTES_FUZZ
@given(raw=mutated(st.lists(runs(), max_size=4).map(_generated_page)))
def test_mutated_generated_pages_decode_to_one_answer(
    monkeypatch: pytest.MonkeyPatch, raw: bytes
) -> None:
    got = _all_outcomes(raw, monkeypatch)
    assert len(set(map(repr, got.values()))) == 1, got


@BYTES_FUZZ
@given(raw=mutated(st.lists(USUAL_RUNS, max_size=4).map(_generated_page)))
def test_mutated_pages_of_usual_runs_decode_to_one_answer(
    monkeypatch: pytest.MonkeyPatch, raw: bytes
) -> None:
    got = _all_outcomes(raw, monkeypatch)
    assert len(set(map(repr, got.values()))) == 1, got


@pytest.mark.parametrize(
    "run",
    [
        {"id": "WRUN-1", "toolKey": "t", "error": None},  # unknown fields: skipped
        {"id": "WRUN-1", "credits": "22"},
        {"id": "WRUN-1", "credits": " +7 "},
        {"workflowRunId": "WRUN-1", "status": "SOMETHING_NEW"},
        {"id": "WRUN-1", "createdAt": "2023-09-27T18:24:47Z"},
        {"id": "WRUN-1", "createdAt": "2023-04-29T15:08:01.326Z"},
        {"id": "WRUN-1", "createdAt": "2023-09-27T18:24:47.123456789Z"},  # truncated
        {"id": "WRUN-1", "createdAt": "2023-09-27T18:24:47+05:30"},
        {"id": "WRUN-1", "createdAt": "2023-09-27 18:24:47"},
    ],
)
def test_pages_of_the_usual_shapes_take_the_typed_path(run: dict[str, Any]) -> None:
    raw = _generated_page([run, {**run, "metadata": {"n": 2**70}}])
    raw = raw.replace(b'"total": 2', b'"total": "2"')
    typed = WIRE.decode_page(raw)
    assert typed is not None
    page = WIRE.page(typed, **KW)
    assert page == CONVERTER.page(json.loads(raw), **KW)
    assert page.total == 2
    assert page.runs[1].metadata == {"n": 2**70}


def test_odd_runs_in_a_typed_page_go_through_the_converter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    items = [
        {"id": "WRUN-1", "createdAt": "2016-12-31T23:59:60Z"},  # a leap second
        {"id": "WRUN-2", "createdAt": "yesterday"},  # read as None, with a warning
        {"id": "WRUN-3", "credits": "lots"},  # an error, worded by the converter
    ]
    raw = _generated_page(items[:2])
    typed = WIRE.decode_page(raw)
    assert typed is not None
    page = WIRE.page(typed, **KW)
    assert page == CONVERTER.page(json.loads(raw), **KW)
    assert page.runs[0].created_at == datetime(2016, 12, 31, 23, 59, 59, 999999, timezone.utc)
    assert page.runs[1].created_at is None
    with pytest.raises(WireError) as info:
        WIRE.page(WIRE.decode_page(_generated_page(items)), **KW)
    assert info.value.json_path == "$.data.data[2].credits"


@pytest.mark.parametrize(
    "raw",
    [
        # nested deeper than any decoder follows: msgspec's RecursionError never leaks
        b'{"status":"success","data":{"data":[{"id":"a","output":'
        + b'{"a":' * 100_000
        + b"{}"
        + b"}" * 100_000
        + b"}]}}",
        b'{"status":"success","data":{"data":[],"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
        # what msgspec lets through in a field it skips, and the standard library refuses
        b'{"status":"success","data":{"data":[]},"x":"\xff"}',
        b'{"status":"success","data":{"data":[]},"x":' + b"9" * 5000 + b"}",
        # what msgspec refuses, and the standard library reads
        b'{"status":"success","data":{"data":[{"id":"a","input":{"x":NaN}}]}}',
        b'{"status":"success","data":{"data":[{"id":"a","input":{"x":1e400}}]}}',
        b'{"status":"success","data":{"data":[{"id":"\\ud800"}]}}',
        b'\xef\xbb\xbf{"status":"success","data":{"data":[]}}',
        b'{"status":"success","data":{"data":[{"id":"a","credits":1.0}]}}',
        # the API's error envelope, with data or without
        b'{"status":"Error","errorCode":"NOT_FOUND","data":{"data":[]}}',
        b'{"status":"error","errorCode":"NOT_FOUND"}',
    ],
    ids=[
        "deep-run",
        "deep-skipped",
        "bad-utf8-skipped",
        "5000-digits-skipped",
        "nan",
        "1e400",
        "lone-surrogate",
        "bom",
        "float-credits",
        "error-envelope-with-data",
        "error-envelope",
    ],
)
def test_bodies_msgspec_reads_otherwise_get_the_standard_answer(
    monkeypatch: pytest.MonkeyPatch, raw: bytes
) -> None:
    got = _all_outcomes(raw, monkeypatch)
    assert len(set(map(repr, got.values()))) == 1, got


def test_without_msgspec_pages_are_decoded_the_usual_way(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _recorded_pages()[-1]
    with_msgspec = WIRE.page(_msgspec(raw), **KW)
    monkeypatch.setattr(convert, "_decode_typed_page", None)
    assert WIRE.decode_page(raw) is None
    assert WIRE.page(_msgspec(raw), **KW) == with_msgspec


def test_msgspec_is_installed_for_the_tests() -> None:
    # It is in the test extra: the typed half of these tests must not vanish.
    assert convert._decode_typed_page is not None, "install the test extra (it has msgspec)"


def test_only_the_fast_tolerant_format_decodes_into_structs() -> None:
    raw = _recorded_pages()[-1]
    assert CONVERTER.decode_page(raw) is None
    assert STRICT.decode_page(raw) is None
