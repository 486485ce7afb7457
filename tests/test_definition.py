"""Bodies generated from the published API definition, and past it: decode exactly or
raise a documented error; never a raw built-in exception, never a hang.

Microsoft's Power Platform connector for Copy.ai publishes a Swagger 2.0 definition of the
three run endpoints. The schemas below are written from its facts (see the API notes,
"External API definition"): no property is required anywhere, ``credits`` and ``total``
are int32, ``createdAt`` is a plain string, ``input``/``output``/``metadata`` are objects,
and a run read on its own has no ``output``. hypothesis-jsonschema generates bodies from
them; the ``WIDE`` variants drop the int32 bounds, as real servers and fuzzers do.

The schemas use four forms only (objects whose properties are all optional, strings,
integers, short arrays), mapped onto Hypothesis's public strategies by ``_strategy``.
(hypothesis-jsonschema would do it, but its object support reaches into Hypothesis's
private internals, and its newest release, 0.23.1, fails on current Hypothesis.)
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import copyai_async._convert as convert
import copyai_async._http as http
from copyai_async import CopyAIClient, CopyAIError, WorkflowRun
from copyai_async._convert import WIRE, ErrorEnvelope, WireError, parse_datetime
from copyai_async.testing import FakeCopyAI, Fault

INT32 = {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
OBJECT = {"type": "object"}


def _run(*, output: bool, integer: dict[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "status": {"type": "string"},
        "input": OBJECT,
        "metadata": OBJECT,
        "createdAt": {"type": "string"},
        "id": {"type": "string"},
        "credits": integer,
    }
    if output:
        properties["output"] = OBJECT
    return {"type": "object", "properties": properties}


def _schemas(integer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        "list": {
            "type": "object",
            "properties": {
                "status": {"type": "string"},
                "data": {
                    "type": "object",
                    "properties": {
                        "total": integer,
                        "data": {
                            "type": "array",
                            "items": _run(output=True, integer=integer),
                            "maxItems": 5,
                        },
                    },
                },
            },
        },
        "get": {
            "type": "object",
            "properties": {
                "status": {"type": "string"},
                "data": _run(output=False, integer=integer),
            },
        },
        "start": {
            "type": "object",
            "properties": {
                "status": {"type": "string"},
                "data": {"type": "object", "properties": {"id": {"type": "string"}}},
            },
        },
    }


DEFINED = _schemas(INT32)
WIDE = _schemas({"type": "integer"})  # any integer: beyond 64 bits too


JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def _strategy(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid under ``schema`` (the forms the definition uses), extra keys and all."""
    kind = schema["type"]
    if kind == "string":
        return st.text()
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "array":
        return st.lists(_strategy(schema["items"]), max_size=schema.get("maxItems", 10))
    assert kind == "object", kind
    properties = schema.get("properties")
    if properties is None:  # any object
        return st.dictionaries(st.text(), JSON_VALUE, max_size=5)
    # No property is required; undeclared ones are allowed (Swagger's default).
    known = st.fixed_dictionaries({}, optional={k: _strategy(v) for k, v in properties.items()})
    extra = st.dictionaries(st.text().filter(lambda k: k not in properties), JSON_VALUE, max_size=2)
    return st.builds(lambda a, b: {**b, **a}, known, extra)


def _bodies(schemas: dict[str, dict[str, Any]]) -> st.SearchStrategy[tuple[str, Any]]:
    return st.one_of(
        *(_strategy(schema).map(lambda body, k=kind: (k, body)) for kind, schema in schemas.items())
    )


def _decode(kind: str, body: Any) -> Any:
    """The client's own decode path, from bytes: ``loads``, then the wire format."""
    raw = json.dumps(body).encode()
    if kind == "list":
        typed = WIRE.decode_page(raw)  # msgspec's Structs, when it is installed
        data = http.loads(raw) if typed is None else typed
        return WIRE.page(data, workflow_id="WCFG-1", page=1, size=10)
    data = http.loads(raw)
    if kind == "get":
        return WIRE.run(data, workflow_id="WCFG-1")
    return WIRE.started_run(data, workflow_id="WCFG-1", start_variables={"a": 1})


def _check_exact(raw: dict[str, Any], run: WorkflowRun) -> None:
    """Every field of the body that the model carries came through unchanged."""
    assert run.id == raw.get("id", raw.get("workflowRunId"))
    if "credits" in raw:
        assert run.credits == raw["credits"]
        assert type(run.credits) is int
    for wire, value in (("input", run.input), ("metadata", run.metadata), ("output", run.output)):
        if wire in raw:
            assert value == raw[wire]
    if "status" in raw:
        assert run.raw_status == raw["status"]
    created = raw.get("createdAt")
    if created is not None:
        try:
            expected = parse_datetime(created)
        except ValueError:
            expected = None  # documented: an unreadable createdAt is None, the run is kept
        assert run.created_at == expected


def _outcome(kind: str, body: Any) -> None:
    try:
        result = _decode(kind, body)
    except (WireError, ErrorEnvelope):
        return  # documented: the transport raises InvalidResponseError / APIStatusError
    if kind == "list":
        assert result.total == body["data"].get("total")
        for raw, run in zip(body["data"]["data"], result.runs, strict=True):
            _check_exact(raw, run)
    elif kind == "get":
        _check_exact(body["data"], result)
    else:
        assert result.id == body["data"]["id"]


SLOW = settings(
    max_examples=400,
    deadline=None,
    # The decoder fixture is set once and holds for every example.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(params=["msgspec", "orjson", "stdlib"])
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every decoder: exactness must not depend on the optional extra. ``msgspec``
    decodes listings (into Structs) and orjson every other body; ``orjson`` decodes
    them all; ``stdlib``, the standard library alone."""
    if request.param != "msgspec":
        monkeypatch.setattr(convert, "_decode_typed_page", None)
    elif convert._decode_typed_page is None:  # in the test extra: its third must not vanish
        pytest.fail("msgspec is not installed; install the test extra (it brings msgspec)")
    if request.param == "stdlib":
        monkeypatch.setattr(http, "_fast_loads", None)
    elif http._fast_loads is None:  # it is in the test extra: its half must not vanish
        pytest.fail("orjson is not installed; install the test extra (it brings orjson)")
    return str(request.param)


@SLOW
@given(case=_bodies(DEFINED))
def test_bodies_from_the_definition_decode_exactly_or_raise_documented_errors(
    decoder: str, case: tuple[str, Any]
) -> None:
    _outcome(*case)


@SLOW
@given(case=_bodies(WIDE))
def test_integers_of_any_size_decode_exactly(decoder: str, case: tuple[str, Any]) -> None:
    _outcome(*case)


@pytest.mark.parametrize(
    "value", [2**64 + 1, 2**63, -(2**63) - 1, 10**40, -(10**40), 2**64 - 1, 10**18]
)
def test_big_integers_are_exact_with_either_decoder(decoder: str, value: int) -> None:
    body = {
        "status": "success",
        "data": {"id": "WRUN-1", "credits": value, "metadata": {"n": value, "l": [value]}},
    }
    run = _decode("get", body)
    assert run.credits == value
    assert run.metadata == {"n": value, "l": [value]}
    assert all(type(v) is int for v in (run.credits, run.metadata["n"], run.metadata["l"][0]))


def test_a_long_digit_run_in_a_string_costs_only_the_slower_decoder(decoder: str) -> None:
    body = {"status": "success", "data": {"id": "WRUN-" + "1" * 40, "credits": 3}}
    assert _decode("get", body).id == "WRUN-" + "1" * 40


# -- through the client, over HTTP ------------------------------------------------------


def _nested(depth: int) -> str:
    return '{"a":' * depth + "{}" + "}" * depth


@pytest.mark.parametrize(
    ("body", "outcome"),
    [
        # nested deeper than a decoder follows: a documented error, never RecursionError
        ('{"status":"success","data":{"id":"WRUN-1","output":' + _nested(100_000) + "}}", "error"),
        # 5,000 levels: past Python 3.10-3.12's decoder (an error), within 3.13's (decodes)
        ('{"status":"success","data":{"id":"WRUN-1","output":' + _nested(5000) + "}}", "either"),
        # nested a few hundred levels: decodes
        ('{"status":"success","data":{"id":"WRUN-1","output":' + _nested(400) + "}}", "ok"),
        # past the float range: not an integer, an error (not inf, not OverflowError)
        ('{"status":"success","data":{"id":"WRUN-1","credits":1e400}}', "error"),
        # an integer literal longer than Python converts: an error
        ('{"status":"success","data":{"id":"WRUN-1","credits":' + "9" * 5000 + "}}", "error"),
        ('{"status":"success","data":{"id":"WRUN-1","credits":' + "9" * 400 + "}}", "ok"),
        ('{"status":"success","data":{"id":"WRUN-1","createdAt":"2016-12-31T23:59:60Z"}}', "ok"),
        ('{"status":"success","data":{"id":"WRUN-1","createdAt":"99999-01-01"}}', "ok"),
    ],
    ids=[
        "deep-100000",
        "deep-5000",
        "deep-400",
        "1e400",
        "5000-digits",
        "400-digits",
        "leap",
        "odd-date",
    ],
)
async def test_hostile_bodies_through_the_client(decoder: str, body: str, outcome: str) -> None:
    async with (
        FakeCopyAI() as server,
        CopyAIClient(
            server.api_key, base_url=server.url, max_retries=1, backoff_base=0.001
        ) as client,
    ):
        server.inject(*[Fault.raw(body, content_type="application/json")] * 2)
        if outcome == "either":
            try:
                run = await client.get_run(server.workflow_id, "WRUN-1")
            except CopyAIError as error:
                said = str(error)
            else:
                said = f"GET /api/workflow/{server.workflow_id}/run/{run.id}"
            assert f"GET /api/workflow/{server.workflow_id}/run/WRUN-1" in said
        elif outcome == "ok":
            run = await client.get_run(server.workflow_id, "WRUN-1")
            assert run.id == "WRUN-1"
        else:
            with pytest.raises(CopyAIError) as info:
                await client.get_run(server.workflow_id, "WRUN-1")
            assert f"GET /api/workflow/{server.workflow_id}/run/WRUN-1" in str(info.value)


def _listing(run: str, extra: str = "") -> str:
    return '{"status":"success","data":{"total":1,"data":[' + run + "]}" + extra + "}"


@pytest.mark.parametrize(
    ("body", "outcome"),
    [
        (_listing('{"id":"WRUN-1","output":' + _nested(100_000) + "}"), "error"),
        (_listing('{"id":"WRUN-1","toolKey":' + "[" * 100_000 + "]" * 100_000 + "}"), "error"),
        (_listing('{"id":"WRUN-1","output":' + _nested(400) + "}"), "ok"),
        (_listing('{"id":"WRUN-1","credits":1e400}'), "error"),
        (_listing('{"id":"WRUN-1","credits":' + "9" * 5000 + "}"), "error"),
        (_listing('{"id":"WRUN-1","credits":' + "9" * 400 + "}"), "ok"),
        (_listing('{"id":"WRUN-1","input":{"n":NaN}}'), "ok"),
        (_listing('{"id":"WRUN-1"}', ',"x":' + "9" * 5000), "error"),
        (_listing('{"id":"WRUN-1","createdAt":"2016-12-31T23:59:60Z"}'), "ok"),
    ],
    ids=[
        "deep-100000",
        "deep-skipped",
        "deep-400",
        "1e400",
        "5000-digits",
        "400-digits",
        "nan",
        "5000-digits-skipped",
        "leap",
    ],
)
async def test_hostile_listings_through_the_client(decoder: str, body: str, outcome: str) -> None:
    async with (
        FakeCopyAI() as server,
        CopyAIClient(
            server.api_key, base_url=server.url, max_retries=1, backoff_base=0.001
        ) as client,
    ):
        server.inject(*[Fault.raw(body, content_type="application/json")] * 2)
        if outcome == "ok":
            page = await client.list_runs(server.workflow_id)
            assert [run.id for run in page.runs] == ["WRUN-1"]
        else:
            with pytest.raises(CopyAIError) as info:
                await client.list_runs(server.workflow_id)
            assert f"GET /api/workflow/{server.workflow_id}/run" in str(info.value)


async def test_a_listing_with_invalid_utf8_in_an_unknown_field_is_an_error(decoder: str) -> None:
    body = _listing('{"id":"WRUN-1","toolKey":"?"}').encode().replace(b"?", b"\xff")
    async with (
        FakeCopyAI() as server,
        CopyAIClient(server.api_key, base_url=server.url, max_retries=0) as client,
    ):
        server.inject(Fault.raw(body, content_type="application/json"))
        with pytest.raises(CopyAIError, match="not JSON"):
            await client.list_runs(server.workflow_id)


async def test_a_total_past_the_float_range_pages_normally() -> None:
    async with FakeCopyAI() as server, CopyAIClient(server.api_key, base_url=server.url) as client:
        fakes = server.add_runs(150)
        server.report_total = lambda _n: 10**311  # an integer no float can hold
        got = [run.id async for run in client.iter_runs(server.workflow_id)]
        assert got == [fake.id for fake in fakes[::-1]]
        again = [run.id async for run in client.iter_runs(server.workflow_id, max_items=10**400)]
        assert again == got


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_bodies(WIDE))
def test_generated_bodies_through_the_client_raise_only_documented_errors(
    case: tuple[str, Any],
) -> None:
    kind, body = case

    async def call() -> None:
        async with (
            FakeCopyAI() as server,
            CopyAIClient(
                server.api_key, base_url=server.url, max_retries=0, start_keys=False
            ) as client,
        ):
            server.inject(Fault.raw(body))
            wf = server.workflow_id
            try:
                if kind == "list":
                    await client.list_runs(wf)
                elif kind == "get":
                    await client.get_run(wf, "WRUN-1")
                else:
                    await client.start_run(wf, {})
            except CopyAIError:
                pass  # every failure is documented; anything else fails the test

    asyncio.run(asyncio.wait_for(call(), 10))  # never a hang
