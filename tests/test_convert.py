"""The wire format: recorded payloads, each documented quirk, and precise errors."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from copyai_async import RunPage, RunStatus, WorkflowRun
from copyai_async._convert import WIRE, ErrorEnvelope, WireError, WireFormat, parse_datetime

from .conftest import load_payload

STRICT = WireFormat(strict=True)
BOTH = pytest.mark.parametrize("wire", [WIRE, STRICT], ids=["tolerant", "strict"])


def _env(data: Any) -> dict[str, Any]:
    return {"status": "success", "data": data}


def _run(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "WRUN-1",
        "status": "COMPLETE",
        "createdAt": "2023-09-27T18:24:47Z",
    }
    base.update(fields)
    return base


# -- recorded payloads, tolerant and strict ---------------------------------------------


@BOTH
def test_list_example_payload(wire: WireFormat) -> None:
    page = wire.page(load_payload("list_runs_example.json"), workflow_id="WCFG-a", page=1, size=10)
    assert page.total == 2
    assert [r.status for r in page.runs] == [RunStatus.COMPLETE, RunStatus.COMPLETE]
    assert page.runs[0].metadata == {"api": True}
    assert page.runs[1].metadata is None
    assert page.runs[0].input == {
        "Input 1": "Inputs vary depending on the workflow used.",
        "Input 2": "The best way to see an example is to try it!",
    }
    assert page.runs[0].credits == 2
    assert page.runs[0].created_at == datetime(2023, 4, 29, 15, 8, 1, 326000, tzinfo=timezone.utc)
    # workflowId is absent here: the id asked for fills in.
    assert {r.workflow_id for r in page.runs} == {"WCFG-a"}


@BOTH
def test_list_success_payload_with_string_numbers(wire: WireFormat) -> None:
    page = wire.page(load_payload("list_runs_success.json"), workflow_id="ignored", page=2, size=2)
    assert page.total == 3
    assert (page.page, page.size, page.has_next) == (2, 2, True)
    first, second = page.runs
    assert first.id == "WRUN-6fe9e53c-945a-4aa3-a87e-d64c3cc0dcb0"
    assert first.workflow_id == "PKGW-d0f4f3eb-16b9-4973-8e1e-939af867ce56"
    assert (first.credits, second.credits) == (22, 0)
    assert first.status is RunStatus.UNKNOWN
    assert first.raw_status is None
    assert first.input is None
    assert first.output is None
    assert second.metadata is None
    assert first.created_at == datetime(2023, 9, 27, 18, 24, 47, tzinfo=timezone.utc)
    assert second.created_at == datetime(2023, 9, 27, 18, 24, 46, 998000, tzinfo=timezone.utc)


@BOTH
def test_get_run_payloads(wire: WireFormat) -> None:
    run = wire.run(load_payload("get_run_example.json"), workflow_id="WCFG-b")
    assert (run.id, run.workflow_id, run.status, run.credits) == (
        "<run_id>",
        "WCFG-b",
        RunStatus.COMPLETE,
        2,
    )
    assert run.is_terminal
    run = wire.run(load_payload("get_run_success.json"), workflow_id="WCFG-other")
    assert run.workflow_id == "WCFG-84e56597-ebaf-4b49-a98c-75cacd4aecaa"
    assert run.output == {"text": "workflow run output"}
    assert run.credits == 9001
    assert run.status is RunStatus.UNKNOWN
    assert not run.is_terminal


@BOTH
def test_start_answers(wire: WireFormat) -> None:
    run = wire.started_run(load_payload("start_run_id_only.json"), workflow_id="WCFG-s")
    assert run == WorkflowRun(
        id="WRUN-0a1b2c3d-0000-4000-8000-000000000001",
        workflow_id="WCFG-s",
        status=RunStatus.NEW,
        raw_status="NEW",
    )
    run = wire.started_run(load_payload("start_run_full.json"), workflow_id="WCFG-s")
    assert (run.id, run.workflow_id, run.status) == (
        "WRUN-0a1b2c3d-0000-4000-8000-000000000002",
        "WCFG-x",
        RunStatus.NEW,
    )


def test_strict_twin_notices_new_fields_and_tolerant_ignores_them() -> None:
    body = _env(_run(toolKey="x", error=None))
    assert WIRE.run(body, workflow_id="w").id == "WRUN-1"
    with pytest.raises(WireError) as info:
        STRICT.run(body, workflow_id="w")
    assert info.value.json_path == "$.data"
    assert "error" in info.value.reason
    assert "toolKey" in info.value.reason
    page_body = _env({"total": 0, "data": [], "nextPage": 2})
    assert WIRE.page(page_body, workflow_id="w", page=1, size=10).runs == ()
    with pytest.raises(WireError, match="nextPage"):
        STRICT.page(page_body, workflow_id="w", page=1, size=10)


# -- each quirk -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(7, 7), ("7", 7), (" 42 ", 42), ("-3", -3), (5.0, 5), (None, None)],
)
def test_credits_int_or_numeric_string(raw: Any, expected: int | None) -> None:
    assert WIRE.run(_env(_run(credits=raw)), workflow_id="w").credits == expected


@pytest.mark.parametrize("raw", ["lots", "", "1.5", "1_000", True, 2.5, [], {}])
def test_credits_of_wrong_kind_is_an_error_naming_the_path(raw: Any) -> None:
    with pytest.raises(WireError) as info:
        WIRE.run(_env(_run(credits=raw)), workflow_id="w")
    assert info.value.json_path == "$.data.credits"
    assert "integer" in info.value.reason


def test_total_of_wrong_kind_names_the_path() -> None:
    with pytest.raises(WireError) as info:
        WIRE.page(_env({"total": "many", "data": []}), workflow_id="w", page=1, size=10)
    assert info.value.json_path == "$.data.total"


def test_total_missing_is_none() -> None:
    page = WIRE.page(_env({"data": [_run()]}), workflow_id="w", page=1, size=1)
    assert page.total is None
    assert page.has_next


def test_bad_run_in_a_page_names_its_index_and_wire_key() -> None:
    body = _env({"total": 3, "data": [_run(), _run(id="WRUN-2"), _run(id="WRUN-3", credits="x")]})
    with pytest.raises(WireError) as info:
        WIRE.page(body, workflow_id="w", page=1, size=3)
    assert info.value.json_path == "$.data.data[2].credits"


@pytest.mark.parametrize("body", [[1, 2], "text", None, {"status": "success"}])
def test_missing_envelope(body: Any) -> None:
    with pytest.raises(WireError) as info:
        WIRE.run(body, workflow_id="w")
    assert info.value.json_path in ("$", "$.data")


@BOTH
@pytest.mark.parametrize("word", ["error", "ERROR", "Error"])
def test_error_envelope_in_any_case_is_the_apis_error(wire: WireFormat, word: str) -> None:
    body = {"status": word, "errorCode": "NOT_FOUND", "details": {"id": ["unknown"]}}
    for read in (
        lambda: wire.run(body, workflow_id="w"),
        lambda: wire.started_run(body, workflow_id="w"),
        lambda: wire.page(body, workflow_id="w", page=1, size=10),
    ):
        with pytest.raises(ErrorEnvelope) as info:
            read()
        assert info.value.error_code == "NOT_FOUND"
        assert info.value.details == {"id": ["unknown"]}
    with pytest.raises(ErrorEnvelope) as no_code:
        wire.run({"status": word, "errorCode": 5, "data": {"id": "x"}}, workflow_id="w")
    assert no_code.value.error_code is None  # not a string: no code, still an error


def test_page_without_run_list() -> None:
    with pytest.raises(WireError) as info:
        WIRE.page(_env({"total": 1}), workflow_id="w", page=1, size=10)
    assert info.value.json_path == "$.data.data"


@pytest.mark.parametrize("metadata", ["absent", None, {"k": [1, 2]}])
def test_metadata_object_null_or_missing(metadata: Any) -> None:
    fields = {} if metadata == "absent" else {"metadata": metadata}
    run = WIRE.run(_env(_run(**fields)), workflow_id="w")
    assert run.metadata == (None if metadata == "absent" else metadata)


def test_metadata_of_wrong_kind() -> None:
    with pytest.raises(WireError) as info:
        WIRE.run(_env(_run(metadata="yes")), workflow_id="w")
    assert info.value.json_path == "$.data.metadata"


def test_only_workflow_run_id() -> None:
    body = _env({"workflowRunId": "WRUN-9", "workflowId": "WCFG-1", "status": "NEW"})
    run = STRICT.run(body, workflow_id="other")
    assert (run.id, run.workflow_id) == ("WRUN-9", "WCFG-1")


def test_missing_id_is_an_error() -> None:
    with pytest.raises(WireError) as info:
        WIRE.run(_env({"status": "NEW"}), workflow_id="w")
    assert info.value.json_path == "$.data.id"
    assert "missing" in info.value.reason


def test_non_string_id_is_an_error() -> None:
    with pytest.raises(WireError, match="expected a string") as info:
        WIRE.run(_env(_run(id=12)), workflow_id="w")
    assert info.value.json_path == "$.data.id"


@pytest.mark.parametrize("status", list(RunStatus)[:-1])
def test_documented_statuses(status: RunStatus) -> None:
    run = WIRE.run(_env(_run(status=status.value)), workflow_id="w")
    assert run.status is status
    assert run.raw_status == status.value
    assert run.is_terminal is (status in (RunStatus.COMPLETE, RunStatus.FAILED))


@pytest.mark.parametrize("raw", ["CANCELLED", "complete", ""])
def test_unknown_status_keeps_raw_value(raw: str) -> None:
    run = WIRE.run(_env(_run(status=raw)), workflow_id="w")
    assert run.status is RunStatus.UNKNOWN
    assert run.raw_status == raw
    assert not run.is_terminal


def test_status_of_wrong_kind() -> None:
    with pytest.raises(WireError) as info:
        WIRE.run(_env(_run(status=3)), workflow_id="w")
    assert info.value.json_path == "$.data.status"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-09-27T18:24:47Z", datetime(2023, 9, 27, 18, 24, 47, tzinfo=timezone.utc)),
        ("2023-04-29T15:08:01.326Z", datetime(2023, 4, 29, 15, 8, 1, 326000, tzinfo=timezone.utc)),
        ("2023-04-29T15:08:01.3Z", datetime(2023, 4, 29, 15, 8, 1, 300000, tzinfo=timezone.utc)),
        (
            "2023-04-29T15:08:01.123456789Z",
            datetime(2023, 4, 29, 15, 8, 1, 123456, tzinfo=timezone.utc),
        ),
        ("2023-04-29T15:08:01", datetime(2023, 4, 29, 15, 8, 1, tzinfo=timezone.utc)),
        (
            "2023-04-29T17:08:01+02:00",
            datetime(2023, 4, 29, 17, 8, 1, tzinfo=timezone(timedelta(hours=2))),
        ),
        (
            "2023-04-29T10:08:01.5-0500",
            datetime(2023, 4, 29, 10, 8, 1, 500000, tzinfo=timezone(timedelta(hours=-5))),
        ),
    ],
)
def test_timestamps_always_aware(text: str, expected: datetime) -> None:
    parsed = parse_datetime(text)
    assert parsed == expected
    assert parsed.tzinfo is not None
    assert parsed.utcoffset() == expected.utcoffset()


BAD_TIMESTAMPS = ["yesterday", "", "2023-13-45T00:00:00Z", 1695839087, "2023-09-27T25:00:00Z"]


@pytest.mark.parametrize("raw", BAD_TIMESTAMPS)
def test_bad_timestamp_names_the_path_in_the_strict_twin(raw: Any) -> None:
    with pytest.raises(WireError) as info:
        STRICT.run(_env(_run(createdAt=raw)), workflow_id="w")
    assert info.value.json_path == "$.data.createdAt"


def test_one_bad_timestamp_does_not_fail_a_page(caplog: pytest.LogCaptureFixture) -> None:
    # Decided: a run whose createdAt cannot be read keeps every other field, with
    # created_at None; it is logged (once at WARNING), and the rest of the page is read.
    wire = WireFormat()
    runs = [_run(id=f"WRUN-{i}", credits=i) for i in range(3)]
    runs[1]["createdAt"] = "yesterday at noon"
    runs.append(_run(id="WRUN-3", credits=3, createdAt=1695839087))
    with caplog.at_level("DEBUG", logger="copyai_async"):
        page = wire.page(_env({"total": 4, "data": runs}), workflow_id="w", page=1, size=4)
    assert [r.id for r in page.runs] == ["WRUN-0", "WRUN-1", "WRUN-2", "WRUN-3"]
    assert [r.credits for r in page.runs] == [0, 1, 2, 3]
    assert [r.created_at is None for r in page.runs] == [False, True, False, True]
    logged = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert logged == [
        ("WARNING", "run WRUN-1: createdAt is not an ISO 8601 date-time; its created_at is None"),
        ("DEBUG", "run WRUN-3: createdAt is not an ISO 8601 date-time; its created_at is None"),
    ]
    assert "noon" not in str(logged)  # the server's text is not logged


@BOTH
def test_run_without_created_at_or_credits_decodes(wire: WireFormat) -> None:
    run = wire.run(_env({"id": "WRUN-1"}), workflow_id="w")
    assert (run.created_at, run.credits, run.metadata, run.output) == (None, None, None, None)
    assert run.status is RunStatus.UNKNOWN


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2016-12-31T23:59:60Z", datetime(2016, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc)),
        (
            "2016-12-31T23:59:60.5+00:00",
            datetime(2016, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc),
        ),
        (
            "2015-06-30T18:59:60-05:00",
            datetime(2015, 6, 30, 18, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-5))),
        ),
    ],
)
def test_leap_seconds_are_accepted(text: str, expected: datetime) -> None:
    parsed = parse_datetime(text)
    assert parsed == expected
    assert parsed > parse_datetime(text.replace(":60", ":59"))  # after the second it follows
    # Strict too: a leap second is a valid RFC 3339 time.
    run = STRICT.run(_env(_run(createdAt=text)), workflow_id="w")
    assert run.created_at == expected


def test_run_page_has_next_is_about_fullness_not_total() -> None:
    runs = tuple(WorkflowRun(id=f"r{i}", workflow_id="w") for i in range(3))
    # A stale total must not hide a further page: a full page always says "maybe more".
    assert RunPage(runs=runs, total=1, page=1, size=3).has_next
    assert not RunPage(runs=runs[:2], total=100, page=1, size=3).has_next
    assert not RunPage(runs=(), total=None, page=4, size=3).has_next


def test_models_are_frozen() -> None:
    run = WorkflowRun(id="r", workflow_id="w")
    with pytest.raises(AttributeError):
        run.id = "other"  # type: ignore[misc]
