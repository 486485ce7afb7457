"""The fake Copy.ai server: schedules, paging, quirks, faults, counters, standalone mode."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from typing import Any

import aiohttp
import pytest

from copyai_async import START_KEY, CopyAIClient, NotFoundError, RunStatus
from copyai_async._convert import WIRE, WireError, WireFormat
from copyai_async.testing import (
    AITASKER_WORKFLOW_ID,
    AITASKER_WORKSPACE_ID,
    DEFAULT_COMPRESS_MIN_SIZE,
    FakeClock,
    FakeCopyAI,
    Fault,
    Quirks,
    Schedule,
)

STRICT = WireFormat(strict=True)


async def _raw(
    server: FakeCopyAI, method: str, path: str, *, key: str | None = "default", **kw: Any
) -> tuple[int, Any]:
    headers = (
        {} if key is None else {"x-copy-ai-api-key": server.api_key if key == "default" else key}
    )
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{server.url}{path}", headers=headers, **kw) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def test_documented_error_bodies(server: FakeCopyAI) -> None:
    wf = server.workflow_id
    assert await _raw(server, "GET", f"/workflow/{wf}/run", key=None) == (
        401,
        {"status": "error", "errorCode": "UNAUTHORIZED"},
    )
    assert await _raw(server, "GET", f"/workflow/{wf}/run/WRUN-x") == (
        404,
        {"status": "error", "errorCode": "NOT_FOUND"},
    )
    assert await _raw(server, "GET", "/workflow/WCFG-unknown/run") == (
        404,
        {"status": "error", "errorCode": "NOT_FOUND"},
    )
    status, body = await _raw(server, "POST", f"/workflow/{wf}/run", json={"metadata": {}})
    assert (status, body["errorCode"], body["details"]) == (
        422,
        "REQUEST_INVALID",
        {"startVariables": ["is required"]},
    )
    status, body = await _raw(server, "POST", f"/workflow/{wf}/run", json={"startVariables": [1]})
    assert status == 422
    assert "startVariables" in body["details"]
    status, body = await _raw(server, "POST", f"/workflow/{wf}/run", data=b"{oops")
    assert status == 400
    assert server.runs() == []


@pytest.mark.parametrize(
    ("query", "ok"),
    [
        ("size=100", True),
        ("size=101", False),
        ("size=0", False),
        ("page=0", False),
        ("page=x", False),
    ],
)
async def test_page_size_limits(server: FakeCopyAI, query: str, ok: bool) -> None:
    status, body = await _raw(server, "GET", f"/workflow/{server.workflow_id}/run?{query}")
    assert (status == 200) is ok
    if not ok:
        assert status == 400
        assert body["status"] == "error"
        assert body["details"]


async def test_list_defaults_and_newest_first(server: FakeCopyAI) -> None:
    fakes = server.add_runs(12, schedule=Schedule.immediate())
    status, body = await _raw(server, "GET", f"/workflow/{server.workflow_id}/run")
    assert status == 200
    assert body["data"]["total"] == 12
    assert [r["id"] for r in body["data"]["data"]] == [f.id for f in reversed(fakes)][:10]
    page = STRICT.page(body, workflow_id=server.workflow_id, page=1, size=10)
    assert [r.created_at for r in page.runs] == sorted(
        (r.created_at for r in page.runs), reverse=True
    )


async def test_schedule_by_time_uses_server_clock() -> None:
    clock = FakeClock()
    async with FakeCopyAI(clock=clock.monotonic) as server:
        fake = server.add_run(
            schedule=Schedule.seconds(("WAITING", 2), ("PROCESSING", 3), final="FAILED")
        )
        async with CopyAIClient(server.api_key, base_url=server.url) as client:
            seen = []
            for advance in (0, 1.9, 0.2, 2.8, 0.2):
                clock.advance(advance)
                seen.append((await client.get_run(server.workflow_id, fake.id)).status)
    assert seen == [
        RunStatus.WAITING,
        RunStatus.WAITING,
        RunStatus.PROCESSING,
        RunStatus.PROCESSING,
        RunStatus.FAILED,
    ]


async def test_schedule_by_polls_counts_reads_and_listings_that_show_the_status(
    client: CopyAIClient, server: FakeCopyAI
) -> None:
    fake = server.add_run(schedule=Schedule.polls(("PROCESSING", 3)), input={"a": 1})
    server.quirks = Quirks(bare_listing=True)  # shows no status: not a read
    for _ in range(3):
        assert (await client.list_runs(server.workflow_id)).runs[0].status is RunStatus.UNKNOWN
    server.quirks = Quirks()
    assert (await client.list_runs(server.workflow_id)).runs[0].status is RunStatus.PROCESSING
    assert (fake.polls, fake.listed) == (0, 1)
    statuses = [(await client.get_run(server.workflow_id, fake.id)) for _ in range(3)]
    assert fake.polls == 3
    assert [r.status for r in statuses] == [
        RunStatus.PROCESSING,
        RunStatus.PROCESSING,
        RunStatus.COMPLETE,
    ]
    assert statuses[0].output is None
    assert statuses[0].credits == 0
    assert statuses[-1].output == {"result": "Generated text for 1 input(s)"}
    assert statuses[-1].credits == 2


async def test_schedule_for_picks_per_run(server: FakeCopyAI, client: CopyAIClient) -> None:
    server.schedule_for = lambda wf, variables: Schedule.immediate(
        "FAILED" if variables.get("fail") else "COMPLETE", output={"echo": variables}
    )
    ok = await client.start_run(server.workflow_id, {"fail": False})
    bad = await client.start_run(server.workflow_id, {"fail": True})
    ok_run = await client.get_run(server.workflow_id, ok.id)
    assert ok_run.status is RunStatus.COMPLETE
    assert ok_run.output == {"echo": {"fail": False}}
    assert (await client.get_run(server.workflow_id, bad.id)).status is RunStatus.FAILED


def test_schedule_validation() -> None:
    with pytest.raises(ValueError, match="duration"):
        Schedule.polls(("NEW", -1))
    with pytest.raises(TypeError, match="status"):
        Schedule.polls(("", 1))
    with pytest.raises(ValueError, match="unit"):
        Schedule(unit="days")  # type: ignore[arg-type]
    for spread in (-0.1, 1.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"spread must be between 0 and 1, got"):
            Schedule.seconds(("PROCESSING", 1), spread=spread)
    for spread in (True, "0.5"):
        with pytest.raises(TypeError, match="spread must be a number"):
            Schedule(spread=spread)  # type: ignore[arg-type]
    assert Schedule.polls(("A", 1), ("B", 2)).status_at(2.5) == "B"
    with pytest.raises(ValueError, match="fault_rate"):
        FakeCopyAI(fault_rate=2)


def test_schedule_constructors_and_the_default() -> None:
    # The constructors give every run the same durations unless asked for a spread.
    assert Schedule.polls(("PROCESSING", 2)).unit == "polls"
    assert Schedule.seconds(("PROCESSING", 2)).unit == "seconds"
    assert Schedule.immediate().unit == "polls"
    for made in (Schedule.polls(("A", 2)), Schedule.seconds(("A", 2)), Schedule.immediate()):
        assert made.spread == 0
    # The default counts seconds: 2.5 s in all, each step within 60% for each run.
    default = Schedule.default()
    assert (default.unit, default.final, default.spread) == ("seconds", "COMPLETE", 0.6)
    assert default.steps == (("NEW", 0.3), ("WAITING", 0.5), ("PROCESSING", 1.7))
    assert default.total == pytest.approx(2.5)
    assert FakeCopyAI().default_schedule == default
    # A schedule built by hand varies only when asked to: Schedule() is the default's
    # steps, every run alike; steps given without a unit count seconds.
    assert (Schedule().steps, Schedule().spread, Schedule().unit) == (default.steps, 0, "seconds")
    by_hand = Schedule(steps=(("PROCESSING", 2),), unit="polls")
    assert by_hand.draw(random.Random(3)) is by_hand


def test_draw_gives_each_run_its_own_durations() -> None:
    rng = random.Random(1)
    fixed = Schedule.seconds(("PROCESSING", 2))
    assert fixed.draw(rng) is fixed  # no spread: no draw, the same object
    spread = Schedule.polls(("NEW", 1), ("PROCESSING", 10), spread=0.5, credits=7)
    drawn = [spread.draw(rng) for _ in range(200)]
    for one in drawn:
        assert (one.unit, one.final, one.credits, one.spread) == ("polls", "COMPLETE", 7, 0)
        assert [status for status, _ in one.steps] == ["NEW", "PROCESSING"]
        assert 0.5 <= one.steps[0][1] <= 1.5
        assert 5 <= one.steps[1][1] <= 15
    assert len({one.steps for one in drawn}) == 200
    totals = [Schedule.default().draw(rng).total for _ in range(1000)]
    assert 1.0 <= min(totals) < 1.6
    assert 3.4 < max(totals) <= 4.0


async def _start_runs(server: FakeCopyAI, count: int) -> list[str]:
    async with CopyAIClient(server.api_key, base_url=server.url) as client:
        return [(await client.start_run(server.workflow_id, {"n": n})).id for n in range(count)]


async def test_the_default_schedule_counts_seconds_varied_and_seeded() -> None:
    clock = FakeClock()

    async def durations(seed: int | None) -> list[float]:
        async with FakeCopyAI(seed=seed, clock=clock.monotonic) as server:
            ids = await _start_runs(server, 6)
            return [server.get(run_id).schedule.total for run_id in ids]

    first = await durations(5)
    assert len(set(first)) == 6  # each run its own time
    assert all(1.0 <= d <= 4.0 for d in first)
    assert await durations(5) == first  # the same seed, the same times
    assert await durations(6) != first
    assert await durations(None) != first

    # Over HTTP, a run finishes with time alone: nobody read it on the way.
    async with (
        FakeCopyAI(clock=clock.monotonic) as server,
        CopyAIClient(server.api_key, base_url=server.url) as client,
    ):
        (run_id,) = await _start_runs(server, 1)
        fake = server.get(run_id)
        assert fake.finishes_at == pytest.approx(clock.now + fake.schedule.total)
        clock.advance(fake.schedule.total + 0.001)
        done = await client.get_run(server.workflow_id, run_id)
        assert done.status is RunStatus.COMPLETE
        assert fake.polls == 1


async def test_a_spread_applies_to_each_run_added_or_rescheduled() -> None:
    spread = Schedule.seconds(("PROCESSING", 10), spread=0.2)
    async with FakeCopyAI(default_schedule=Schedule.polls(("PROCESSING", 1))) as server:
        added = [server.add_run(schedule=spread) for _ in range(3)]
        assert len({run.schedule.total for run in added}) == 3
        assert all(8 <= run.schedule.total <= 12 and not run.schedule.spread for run in added)
        plain = server.add_run()
        assert plain.schedule == Schedule.polls(("PROCESSING", 1))
        server.reschedule(plain, spread)
        assert plain.schedule.unit == "seconds"
        assert 8 <= plain.schedule.total <= 12
        assert plain.finishes_at == pytest.approx(plain.created_mono + plain.schedule.total)
        # The durations drawn do not move the seeded ids or faults (a stream of their own).
    async with FakeCopyAI(default_schedule=Schedule.polls(("PROCESSING", 1))) as server:
        ids_plain = [server.add_run().id for _ in range(3)]
    async with FakeCopyAI(default_schedule=spread) as server:
        assert [server.add_run().id for _ in range(3)] == ids_plain


async def test_fake_run_endpoint(server: FakeCopyAI) -> None:
    seconds = server.add_run(schedule=Schedule.seconds(("WAITING", 30), ("PROCESSING", 60)))
    polled = server.add_run(schedule=Schedule.polls(("PROCESSING", 2)))
    before = time.time()
    status, body = await _raw(server, "GET", f"/../_fake/runs/{seconds.id}", key=None)
    assert status == 200
    assert body["id"] == seconds.id
    assert body["workflow_id"] == server.workflow_id
    assert (body["status"], body["unit"], body["final"]) == ("WAITING", "seconds", "COMPLETE")
    assert body["steps"] == [["WAITING", 30], ["PROCESSING", 60]]
    assert before + 89 < body["finishes_at"] < time.time() + 90  # Unix time
    status, body = await _raw(server, "GET", f"/../_fake/runs/{polled.id}", key=None)
    assert (body["status"], body["unit"], body["finishes_at"], body["polls"]) == (
        "PROCESSING",
        "polls",
        None,
        0,  # looking here is not a poll
    )
    assert polled.polls == 0
    assert (await _raw_text(server, "GET", "/../_fake/runs/WRUN-nope"))[0] == 404
    stats = (await _raw(server, "GET", "/../_fake/stats", key=None))[1]
    assert stats["requests"] == 0  # the fake's own endpoints are not counted


QUIRKS = [
    Quirks(),
    Quirks(numbers_as_strings=True),
    Quirks(empty_metadata="missing"),
    Quirks(whole_second_timestamps=True),
    Quirks(run_id_keys="id"),
    Quirks(run_id_keys="workflowRunId"),
    Quirks(omit_workflow_id=True),
    Quirks(omit_status=True),
    Quirks(omit_input=True),
    Quirks(omit_created_at=True),
    Quirks(omit_credits=True),
    Quirks(omit_output_on_get=True),
    Quirks(timestamp_offset="+05:30"),
    Quirks(timestamp_offset="-08:00", whole_second_timestamps=True),
    Quirks(errors_as_200=True),
    Quirks(full_start_answer=True),
    Quirks(
        numbers_as_strings=True,
        empty_metadata="missing",
        whole_second_timestamps=True,
        run_id_keys="workflowRunId",
        omit_workflow_id=True,
        omit_input=True,
        omit_created_at=True,
        omit_credits=True,
        omit_output_on_get=True,
        errors_as_200=True,
    ),
]


@pytest.mark.parametrize("quirks", QUIRKS, ids=repr)
async def test_each_quirk_reads_the_same(quirks: Quirks, clock: FakeClock) -> None:
    server = FakeCopyAI(quirks=quirks, default_schedule=Schedule.immediate())
    async with server, CopyAIClient(server.api_key, base_url=server.url, clock=clock) as client:
        started = [
            await client.start_run(server.workflow_id, {"n": 1}, metadata={"m": 1}),
            await client.start_run(server.workflow_id, {"n": 2}, start_key=None),
        ]
        assert all(r.status is RunStatus.NEW for r in started)
        page = await client.list_runs(server.workflow_id)
        single = await client.get_run(server.workflow_id, started[0].id)
        with pytest.raises(NotFoundError) as missing:  # 404, or 200 with the error envelope
            await client.get_run(server.workflow_id, "WRUN-nope")
    assert missing.value.status == (200 if quirks.errors_as_200 else 404)
    assert missing.value.error_code == "NOT_FOUND"
    assert [r.id for r in page.runs] == [started[1].id, started[0].id]
    assert page.total == 2
    expected_status = RunStatus.UNKNOWN if quirks.omit_status else RunStatus.COMPLETE
    created = [fake.created_at for fake in server.runs()]
    for run, made in ((page.runs[0], created[0]), (page.runs[1], created[1]), (single, created[1])):
        assert run.workflow_id == server.workflow_id
        assert run.status is expected_status
        assert run.credits == (None if quirks.omit_credits else 2)
        if quirks.omit_created_at:
            assert run.created_at is None
        else:
            assert run.created_at is not None
            assert run.created_at.tzinfo is not None
            exact = made.replace(microsecond=made.microsecond // 1000 * 1000)
            if quirks.whole_second_timestamps:
                exact = made.replace(microsecond=0)
            assert run.created_at == exact  # the same instant, whatever the offset
    for run in (*page.runs, single):
        if run is single and quirks.omit_output_on_get:
            assert run.output is None
        else:
            assert run.output == {"result": "Generated text for 1 input(s)"}
    key = started[0].start_key
    assert key is not None
    assert single.metadata == {"m": 1, START_KEY: key}
    assert single.start_key == key
    assert started[1].start_key is None
    assert page.runs[0].metadata is None
    assert page.runs[0].input == (None if quirks.omit_input else {"n": 2})


async def test_fake_payloads_fit_the_strict_twin(server: FakeCopyAI) -> None:
    server.quirks = Quirks(numbers_as_strings=True, whole_second_timestamps=True)
    server.add_runs(3, schedule=Schedule.immediate(), metadata={"x": 1})
    status, body = await _raw(server, "GET", f"/workflow/{server.workflow_id}/run")
    assert status == 200
    assert len(STRICT.page(body, workflow_id="w", page=1, size=10).runs) == 3
    server.quirks = Quirks(extra_fields=True)
    _status, body = await _raw(server, "GET", f"/workflow/{server.workflow_id}/run")
    assert len(WIRE.page(body, workflow_id="w", page=1, size=10).runs) == 3
    with pytest.raises(WireError, match="toolKey"):
        STRICT.page(body, workflow_id="w", page=1, size=10)


async def test_random_faults_are_seeded_and_counted(clock: FakeClock) -> None:
    async def run_once() -> tuple[int, int]:
        async with FakeCopyAI(fault_rate=0.3, seed=42) as server:
            server.add_runs(5, schedule=Schedule.immediate())
            async with CopyAIClient(
                server.api_key, base_url=server.url, clock=clock, max_retries=10
            ) as client:
                for _ in range(30):
                    page = await client.list_runs(server.workflow_id)
                    assert len(page.runs) == 5
            return server.stats.faults, server.stats.requests

    first, second = await run_once(), await run_once()
    assert first == second  # same seed, same faults
    faults, requests = first
    assert requests > 30
    assert faults == requests - 30


async def test_random_faults_only_for_chosen_methods(clock: FakeClock) -> None:
    server = FakeCopyAI(fault_rate=1.0, fault_methods=("GET",))
    async with server, CopyAIClient(server.api_key, base_url=server.url, clock=clock) as client:
        for _ in range(5):
            await client.start_run(server.workflow_id, {})
    assert server.stats.faults == 0
    assert len(server.runs()) == 5


async def test_counters_and_request_log(client: CopyAIClient, server: FakeCopyAI) -> None:
    server.latency = 0.01
    fake = server.add_run(schedule=Schedule.immediate())
    await asyncio.gather(*(client.get_run(server.workflow_id, fake.id) for _ in range(8)))
    stats = server.stats
    assert stats.requests == 8
    assert stats.in_flight == 0
    assert stats.max_in_flight == 8
    assert stats.by_path[f"GET /api/workflow/{server.workflow_id}/run/{fake.id}"] == 8
    assert len(server.requests) == 8
    assert all(r.status == 200 for r in server.requests)
    server.reset_stats()
    assert server.stats.requests == 0
    assert not server.requests


async def test_scripted_fault_matching(client: CopyAIClient, server: FakeCopyAI) -> None:
    server.inject(Fault.raw("<html/>"), path="/run/WRUN-target")
    await client.list_runs(server.workflow_id)  # does not match: no fault
    server.add_run(run_id="WRUN-target", schedule=Schedule.immediate())
    # The HTML 200 matches once; the client retries an unreadable GET, and reads the run.
    assert (await client.get_run(server.workflow_id, "WRUN-target")).id == "WRUN-target"
    assert [r.fault is not None for r in server.requests] == [False, True, False]


async def test_delete_run_shifts_pages(client: CopyAIClient, server: FakeCopyAI) -> None:
    fakes = server.add_runs(4, schedule=Schedule.immediate())
    server.delete_run(fakes[3].id)
    page = await client.list_runs(server.workflow_id, size=2)
    assert [r.id for r in page.runs] == [fakes[2].id, fakes[1].id]
    assert page.total == 3


async def test_stats_endpoint(client: CopyAIClient, server: FakeCopyAI) -> None:
    await client.list_runs(server.workflow_id)
    status, body = await _raw(server, "GET", "/../_fake/stats", key=None)
    assert status == 200
    assert body["requests"] == 1  # the stats request itself does not count
    server.fault_rate = 1.0  # every API request fails; the fake's own stats never do
    for _ in range(5):
        status, body = await _raw(server, "GET", "/../_fake/stats", key=None)
        assert status == 200
    assert body["faults"] == 0


BARE_ITEM_KEYS = {"metadata", "createdAt", "id", "workflowRunId", "workflowId", "credits"}


async def test_bare_listing_leaves_status_input_output_out_of_listing_items_only(
    server: FakeCopyAI,
) -> None:
    wf = server.workflow_id
    done = server.add_run(schedule=Schedule.immediate(), input={"topic": "otters"})
    busy = server.add_run(schedule=Schedule.polls(("PROCESSING", 100)))
    # The default: the documentation's first listing shape, status, input and output in.
    _status, body = await _raw(server, "GET", f"/workflow/{wf}/run")
    items = body["data"]["data"]
    assert [(i["id"], i["status"], i["input"]) for i in items] == [
        (busy.id, "PROCESSING", {}),
        (done.id, "COMPLETE", {"topic": "otters"}),
    ]
    assert "output" in items[1]
    # Bare: the schema's "success" example, in the listing alone.
    server.quirks = Quirks(bare_listing=True)
    status, body = await _raw(server, "GET", f"/workflow/{wf}/run")
    assert status == 200
    items = body["data"]["data"]
    assert [i["id"] for i in items] == [busy.id, done.id]
    assert [set(i) for i in items] == [BARE_ITEM_KEYS, BARE_ITEM_KEYS]
    assert body["data"]["total"] == 2
    assert len(STRICT.page(body, workflow_id=wf, page=1, size=10).runs) == 2
    # A run read on its own keeps all three.
    _status, body = await _raw(server, "GET", f"/workflow/{wf}/run/{done.id}")
    assert body["data"]["status"] == "COMPLETE"
    assert body["data"]["input"] == {"topic": "otters"}
    assert body["data"]["output"] == {"result": "Generated text for 1 input(s)"}
    _status, body = await _raw(server, "GET", f"/workflow/{wf}/run/{busy.id}")
    assert (body["data"]["status"], body["data"]["input"]) == ("PROCESSING", {})
    assert "output" not in body["data"]
    # Listings did not count as reads of the runs (polls schedules move on GETs only).
    assert busy.polls == 1


def test_bare_listing_from_the_command_line() -> None:
    from copyai_async.testing.__main__ import _build, _parser

    assert _build(_parser().parse_args([])).quirks == Quirks()
    assert _build(_parser().parse_args(["--bare-listing"])).quirks == Quirks(bare_listing=True)


async def test_requests_counted_by_kind(server: FakeCopyAI) -> None:
    wf = server.workflow_id
    fake = server.add_run(schedule=Schedule.immediate())
    server.add_aitasker_run()
    api = {"x-copy-ai-api-key": server.api_key}
    aitasker = {"Authorization": f"Bearer {server.api_key}"}
    root = server.aitasker_url  # the server's root, outside /api
    requests: list[tuple[str, str, dict[str, str], int]] = [
        *[("POST", f"/api/workflow/{wf}/run", api, 200)] * 2,
        *[("GET", f"/api/workflow/{wf}/run/{fake.id}", api, 200)] * 3,
        ("GET", f"/api/workflow/{wf}/run/WRUN-missing", api, 404),
        ("GET", f"/api/workflow/{wf}/run?page=1&size=100", api, 200),
        ("GET", "/api/webhook", api, 200),
        ("GET", "/api/webhook/WH-missing", api, 404),
        (
            "GET",
            f"/api/v1/workspaces/{AITASKER_WORKSPACE_ID}/workflows/{AITASKER_WORKFLOW_ID}/runs",
            aitasker,
            200,
        ),
        ("POST", f"/api/workflow/{wf}/run/{fake.id}", api, 405),
        ("GET", "/elsewhere", api, 404),
    ]
    async with aiohttp.ClientSession() as session:
        for method, path, headers, expected_status in requests:
            payload = {"startVariables": {}} if method == "POST" else None
            async with session.request(method, root + path, headers=headers, json=payload) as resp:
                assert resp.status == expected_status, (method, path)
    status, body = await _raw(server, "GET", "/../_fake/stats", key=None)
    assert status == 200
    expected = {"start": 2, "get": 4, "list": 1, "webhook": 2, "aitasker": 1, "other": 2}
    assert server.stats.by_kind == expected  # the stats request itself is not counted
    assert body["by_kind"] == expected
    assert body["run_gets"] == 4  # reads of one run, the listing left out
    assert body["requests"] == sum(expected.values())
    server.reset_stats()
    assert not server.stats.by_kind
    _status, body = await _raw(server, "GET", "/../_fake/stats", key=None)
    assert body["by_kind"] == dict.fromkeys(expected, 0)
    assert body["run_gets"] == body["requests"] == 0


async def test_url_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        _ = FakeCopyAI().url


async def test_standalone_module() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "copyai_async.testing",
        "--runs",
        "7",
        "--api-key",
        "k2",
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        match = re.search(r"(http://127\.0\.0\.1:\d+/api)", line)
        assert match, line
        async with CopyAIClient("k2", base_url=match.group(1)) as client:
            page = await client.list_runs("WCFG-fake-workflow", size=100)
        assert len(page.runs) == 7
        assert all(r.status is RunStatus.COMPLETE for r in page.runs)
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 30)
    assert code == 0


def test_standalone_module_rejects_bad_options() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "copyai_async.testing", "--fault-rate", "3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "fault-rate" in result.stderr


async def test_ipv6_loopback(clock: FakeClock) -> None:
    try:
        server = FakeCopyAI(host="::1")
        await server.start()
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    try:
        assert server.url.startswith("http://[::1]:")
        async with CopyAIClient(server.api_key, base_url=server.url, clock=clock) as client:
            assert (await client.list_runs(server.workflow_id)).runs == ()
    finally:
        await server.aclose()


# -- as rough as production -------------------------------------------------------------


async def _connections_for_two_requests(server: FakeCopyAI, pause: float) -> int:
    """How many TCP connections a plain aiohttp session opens for two requests."""
    made = 0

    async def on_create(*_args: Any) -> None:
        nonlocal made
        made += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_create)
    url = f"{server.url}/workflow/{server.workflow_id}/run"
    headers = {"x-copy-ai-api-key": server.api_key}
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        for _ in range(2):
            async with session.get(url, headers=headers) as resp:
                await resp.read()
            await asyncio.sleep(pause)
    return made


async def test_idle_connections_are_closed_after_the_keepalive_timeout() -> None:
    async with FakeCopyAI(keepalive_timeout=0.1) as server:
        assert await _connections_for_two_requests(server, 0.3) == 2  # closed while idle
        assert await _connections_for_two_requests(server, 0.0) == 1  # reused when busy
    async with FakeCopyAI(keepalive_timeout=None) as server:
        assert await _connections_for_two_requests(server, 0.3) == 1
    assert FakeCopyAI().keepalive_timeout == 5.0  # like uvicorn and Node


@pytest.mark.parametrize("value", [0, -1, float("nan"), "5", True])
def test_keepalive_timeout_is_checked(value: Any) -> None:
    with pytest.raises(ValueError, match="keepalive_timeout"):
        FakeCopyAI(keepalive_timeout=value)


async def _get_raw(
    server: FakeCopyAI, path: str, accept: str
) -> tuple[aiohttp.ClientResponse, bytes]:
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.get(
            f"{server.url}{path}",
            headers={"x-copy-ai-api-key": server.api_key, "Accept-Encoding": accept},
        ) as resp,
    ):
        return resp, await resp.read()


async def test_large_answers_are_gzipped_when_the_client_accepts_it() -> None:
    async with FakeCopyAI() as server:
        small = server.add_run(schedule=Schedule.immediate())
        server.add_runs(30, schedule=Schedule.immediate())
        listing = f"/workflow/{server.workflow_id}/run?size=30"
        resp, raw = await _get_raw(server, listing, "gzip, deflate")
        assert resp.headers["Content-Encoding"] == "gzip"
        assert len(json.loads(gzip.decompress(raw))["data"]["data"]) == 30
        resp, raw = await _get_raw(server, listing, "identity")
        assert "Content-Encoding" not in resp.headers
        assert len(json.loads(raw)["data"]["data"]) == 30
        resp, raw = await _get_raw(server, f"/workflow/{server.workflow_id}/run/{small.id}", "gzip")
        assert len(raw) < DEFAULT_COMPRESS_MIN_SIZE
        assert "Content-Encoding" not in resp.headers  # too small to be worth it
        server.compress_min_size = None
        resp, _raw = await _get_raw(server, listing, "gzip")
        assert "Content-Encoding" not in resp.headers
    with pytest.raises(ValueError, match="compress_min_size"):
        FakeCopyAI(compress_min_size=-1)


async def test_garbled_answers(server: FakeCopyAI) -> None:
    fake = server.add_run(schedule=Schedule.immediate())
    path = f"/workflow/{server.workflow_id}/run/{fake.id}"
    server.compress_min_size = None
    _resp, whole = await _get_raw(server, path, "identity")
    server.inject(Fault.garbled("truncated"))
    resp, cut = await _get_raw(server, path, "identity")
    assert resp.status == 200
    assert int(resp.headers["Content-Length"]) == len(cut)  # the framing is fine
    assert whole.startswith(cut)
    assert len(cut) == len(whole) // 2
    server.inject(Fault.garbled("html"))
    resp, page = await _get_raw(server, path, "identity")
    assert (resp.status, resp.content_type) == (200, "text/html")
    assert page.startswith(b"<!DOCTYPE html>")
    server.inject(Fault.garbled("shape"))
    resp, shape = await _get_raw(server, path, "identity")
    assert resp.status == 200
    assert "status" not in json.loads(shape)
    with pytest.raises(ValueError, match="kind"):
        Fault.garbled("bogus")  # type: ignore[arg-type]


@pytest.mark.parametrize("after", [True, False])
async def test_a_garbled_start_takes_effect_only_after(server: FakeCopyAI, after: bool) -> None:
    server.inject(Fault.garbled("html", after=after))
    status, _body = await _raw_text(
        server, "POST", f"/workflow/{server.workflow_id}/run", json={"startVariables": {}}
    )
    assert status == 200
    assert len(server.runs()) == (1 if after else 0)
    assert server.stats.runs_started == (1 if after else 0)


async def _raw_text(server: FakeCopyAI, method: str, path: str, **kw: Any) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, f"{server.url}{path}", headers={"x-copy-ai-api-key": server.api_key}, **kw
        ) as resp,
    ):
        return resp.status, await resp.text()


async def test_errors_as_200_and_runs_started(server: FakeCopyAI) -> None:
    server.quirks = Quirks(errors_as_200=True)
    wf = server.workflow_id
    assert await _raw(server, "GET", f"/workflow/{wf}/run/nope") == (
        200,
        {"status": "error", "errorCode": "NOT_FOUND"},
    )
    assert await _raw(server, "GET", f"/workflow/{wf}/run", key="wrong") == (
        200,
        {"status": "error", "errorCode": "UNAUTHORIZED"},
    )
    status, body = await _raw(server, "POST", f"/workflow/{wf}/run", json={})
    assert (status, body["errorCode"]) == (200, "REQUEST_INVALID")
    await _raw(server, "POST", f"/workflow/{wf}/run", json={"startVariables": {}})
    assert server.stats.runs_started == 1
    assert (await _raw(server, "GET", "/../_fake/stats", key=None))[1]["runs_started"] == 1


@pytest.mark.parametrize("offset", ["+24:00", "+05:60", "5", "+0530", "UTC", ""])
def test_timestamp_offset_is_checked(offset: str) -> None:
    with pytest.raises(ValueError, match="timestamp_offset"):
        Quirks(timestamp_offset=offset)


async def test_clear_faults(server: FakeCopyAI, client: CopyAIClient) -> None:
    server.inject(Fault.server_error(), Fault.disconnect(), path="/never")
    assert server.clear_faults() == 2
    assert server.clear_faults() == 0
    await client.list_runs(server.workflow_id)
    assert server.stats.faults == 0


def test_public_surface_of_testing() -> None:
    import copyai_async.testing as testing

    assert sorted(testing.__all__) == sorted(
        [
            "AITASKER_WORKFLOW_ID",
            "AITASKER_WORKSPACE_ID",
            "DEFAULT_API_KEY",
            "DEFAULT_COMPRESS_MIN_SIZE",
            "DEFAULT_KEEPALIVE_TIMEOUT",
            "Deliveries",
            "Delivery",
            "FakeWebhook",
            "DEFAULT_RANDOM_FAULTS",
            "DEFAULT_WORKFLOW_ID",
            "FakeClock",
            "FakeCopyAI",
            "FakeRun",
            "Fault",
            "Quirks",
            "RecordedRequest",
            "Schedule",
            "ServerStats",
        ]
    )
    for name in testing.__all__:
        assert hasattr(testing, name), name
    kinds = {
        (f.kind, f.garble if f.kind == "garbled" else None) for f in testing.DEFAULT_RANDOM_FAULTS
    }
    assert {("garbled", "truncated"), ("garbled", "html"), ("disconnect", None)} <= kinds
