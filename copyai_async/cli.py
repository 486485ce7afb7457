"""The ``copyai-async`` command line (also ``python -m copyai_async``).

Exit codes:

====  ==========================================================
0     success (for ``runs wait``: every run COMPLETE)
1     another API or network error (also a start whose answer was lost: the run may
      have started; a hint names the ``runs find`` command that tells); for ``batch``,
      also a row that ended FAILED or REFUSED
2     usage error (bad arguments, no API key)
3     authentication failed (401/403)
4     not found (404; ``runs find``: no run carries the start key)
5     a run ended FAILED
6     timed out (``--timeout``)
130   interrupted (Ctrl-C)
====  ==========================================================

Human output uses rich (the ``cli`` extra: ``pip install -e ".[cli]"``) when it is
installed and stdout is a terminal; otherwise plain text. ``--json`` prints one JSON
object per line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TextIO

from ._client import AUTO, DEFAULT_BASE_URL, MAX_PAGE_SIZE, CopyAIClient
from ._errors import (
    AuthenticationError,
    ConfigurationError,
    CopyAIError,
    NotFoundError,
    PollTimeoutError,
    RunFailedError,
    StartUncertainError,
)
from ._interrupt import EXIT_INTERRUPTED, run_interruptible
from ._models import RunStatus, WorkflowRun
from ._poll import PollPolicy
from ._version import version
from .webhooks._models import RUN_EVENTS, RunEvent, Webhook, WebhookEvent

if sys.version_info < (3, 11):  # pragma: no cover - version-dependent
    from exceptiongroup import ExceptionGroup

__all__ = ["main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_AUTH, EXIT_NOT_FOUND = 0, 1, 2, 3, 4
EXIT_RUN_FAILED, EXIT_TIMEOUT = 5, 6

EXAMPLES = """\
examples:
  copyai-async demo                                   try it all on a fake server
  copyai-async runs list WCFG-123 --all --json | jq .status
  copyai-async runs get WCFG-123 WRUN-456
  copyai-async runs start WCFG-123 --var topic=otters --wait --timeout 300
  copyai-async runs wait WCFG-123 WRUN-1 WRUN-2 WRUN-3
  copyai-async runs wait WCFG-123 WRUN-1 --listen --public-url https://my.tunnel/hooks
  copyai-async batch WCFG-123 leads.csv --out results.jsonl
  copyai-async webhooks list
  copyai-async listen --public-url https://my.tunnel/hooks --workflow WCFG-123 --json
  copyai-async fake-server --port 8080 --latency 50

The API key comes from --api-key or the COPYAI_API_KEY environment variable.
Requests go through --proxy, else HTTPS_PROXY (NO_PROXY respected; never for loopback).
exit codes: 0 ok, 1 API or network error (batch: also a row FAILED or REFUSED),
2 usage, 3 authentication, 4 not found, 5 run failed, 6 timeout, 130 interrupted.
"""

STATUS_STYLE = {
    "COMPLETE": "green",
    "FAILED": "red",
    "PROCESSING": "cyan",
    "RETRYING": "yellow",
    "WAITING": "blue",
    "NEW": "white",
}


class UsageError(Exception):
    """A command line that cannot be carried out as given."""


def run_json(run: WorkflowRun) -> dict[str, Any]:
    """A run as a JSON object for ``--json`` output (ISO 8601 timestamps)."""
    return {
        "id": run.id,
        "workflow_id": run.workflow_id,
        "status": run.status.value,
        "raw_status": run.raw_status,
        "created_at": run.created_at.isoformat() if run.created_at else None,
        "credits": run.credits,
        "metadata": run.metadata,
        "input": run.input,
        "output": run.output,
    }


def webhook_json(hook: Webhook) -> dict[str, Any]:
    """A webhook as a JSON object for ``--json`` output."""
    return {
        "id": hook.id,
        "url": hook.url,
        "event_type": hook.raw_event_type or hook.event_type.value,
        "workflow_id": hook.workflow_id,
    }


def event_json(event: WebhookEvent) -> dict[str, Any]:
    """An event as a JSON object for ``--json`` output (``verified`` says it is a claim)."""
    out: dict[str, Any] = {
        "type": event.raw_type,
        "workflow_id": event.workflow_id,
        "verified": event.verified,
    }
    if isinstance(event, RunEvent):
        out.update(
            run_id=event.run_id,
            status=None if event.status is None else event.status.value,
            output=event.output,
            credits=event.credits,
        )
    out["metadata"] = event.metadata
    return out


class Output:
    """Where results go: JSON lines, rich, or plain text."""

    def __init__(self, *, as_json: bool, stream: TextIO | None = None) -> None:
        self.stream: TextIO = stream or sys.stdout
        self.as_json = as_json
        self.tty: bool = self.stream.isatty()
        self.rich: bool = self.tty and not as_json and importlib.util.find_spec("rich") is not None
        self._console: Any = None

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.stream)
        return self._console

    def line(self, text: str = "") -> None:
        """Print one line of text."""
        print(text, file=self.stream, flush=True)

    def json_line(self, obj: Any) -> None:
        """Print ``obj`` as one compact JSON line."""
        print(
            json.dumps(obj, ensure_ascii=False, separators=(",", ":")), file=self.stream, flush=True
        )

    def run(self, run: WorkflowRun) -> None:
        """Print one run: a JSON line, a rich table or plain ``key: value`` lines."""
        if self.as_json:
            self.json_line(run_json(run))
            return
        rows = [
            ("Run", run.id),
            ("Workflow", run.workflow_id),
            ("Status", run.raw_status or run.status.value),
            ("Created", run.created_at.isoformat() if run.created_at else "-"),
            ("Credits", "-" if run.credits is None else str(run.credits)),
        ]
        for label, data in (
            ("Metadata", run.metadata),
            ("Input", run.input),
            ("Output", run.output),
        ):
            if data is not None:
                rows.append((label, json.dumps(data, ensure_ascii=False, indent=2)))
        if self.rich:
            from rich.table import Table

            table = Table(show_header=False, box=None, pad_edge=False)
            table.add_column(style="bold")
            table.add_column()
            for label, value in rows:
                style = STATUS_STYLE.get(value, "") if label == "Status" else ""
                table.add_row(label, f"[{style}]{value}[/]" if style else value)
            self.console.print(table)
        else:
            for label, value in rows:
                self.line(f"{label + ':':<10} {value}".replace("\n", "\n" + " " * 11))

    def run_rows(self, runs: list[WorkflowRun], *, header: bool) -> None:
        """Runs as table rows (a streamed table when not using rich)."""
        if self.as_json:
            for run in runs:
                self.json_line(run_json(run))
            return
        if self.rich:
            from rich.table import Table

            table = Table(show_header=header)
            for name in ("Run", "Status", "Created", "Credits"):
                table.add_column(name, justify="right" if name == "Credits" else "left")
            for run in runs:
                status = run.raw_status or run.status.value
                style = STATUS_STYLE.get(status, "")
                table.add_row(
                    run.id,
                    f"[{style}]{status}[/]" if style else status,
                    run.created_at.strftime("%Y-%m-%d %H:%M:%S") if run.created_at else "-",
                    "-" if run.credits is None else str(run.credits),
                )
            self.console.print(table)
            return
        if header:
            self.line(f"{'RUN':<42} {'STATUS':<11} {'CREATED':<19} {'CREDITS':>7}")
        for run in runs:
            created = run.created_at.strftime("%Y-%m-%d %H:%M:%S") if run.created_at else "-"
            credits = "-" if run.credits is None else str(run.credits)
            self.line(
                f"{run.id:<42} {run.raw_status or run.status.value:<11} {created:<19} {credits:>7}"
            )


class StatusBoard:
    """Live counts by status of many runs: a rich progress bar on a terminal, else a
    plain line at most once a second."""

    def __init__(self, out: Output, total: int, title: str) -> None:
        self.out = out
        self.total = total
        self.title = title
        # Each run's latest status, and whether it is final: the done count and the counts
        # by status are both read from it, so that every line agrees with itself (a run is
        # read final a moment before the wait hands it over).
        self.latest: dict[str, tuple[str, bool]] = {}
        self.started: float = time.monotonic()
        self._last_line = 0.0
        self._last_printed: tuple[int, Counter[str]] | None = None
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> StatusBoard:
        if self.out.rich:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[counts]}"),
                console=self.out.console,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self.title, total=self.total, counts="")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self._refresh()
            self._progress.__exit__(None, None, None)
        elif not self.out.as_json and self.snapshot() != self._last_printed:
            self._print_line()  # the end, unless the last line already said it

    def snapshot(self) -> tuple[int, Counter[str]]:
        """How many runs are done (COMPLETE or FAILED), and how many are in each status."""
        counts: Counter[str] = Counter()
        done = 0
        for status, final in self.latest.values():
            counts[status] += 1
            done += final
        return done, counts

    def summary_line(self) -> str:
        """Elapsed time, runs done and the count per status, on one line."""
        elapsed = time.monotonic() - self.started
        done, counts = self.snapshot()
        shown = " ".join(f"{status.lower()} {n}" for status, n in sorted(counts.items()))
        return f"{elapsed:6.1f} s  {done}/{self.total} done  {shown}"

    def _refresh(self) -> None:
        if self._progress is None:
            return
        order = ["COMPLETE", "FAILED", "RETRYING", "PROCESSING", "WAITING", "NEW"]
        done, counts = self.snapshot()
        parts = []
        for status in sorted(counts, key=lambda s: order.index(s) if s in order else len(order)):
            style = STATUS_STYLE.get(status, "magenta")
            parts.append(f"[{style}]{status.lower()} {counts[status]}[/]")
        self._progress.update(self._task, completed=done, counts="  ".join(parts))

    def seen(self, run: WorkflowRun) -> None:
        """Record a run's latest status (and print a summary at most once a second)."""
        self.latest[run.id] = (run.raw_status or run.status.value, run.is_terminal)
        self._refresh()
        if self._progress is None and not self.out.as_json:
            now = time.monotonic()
            if now - self._last_line >= 1.0:
                self._last_line = now
                self._print_line()

    def _print_line(self) -> None:
        self._last_printed = self.snapshot()
        self.out.line(self.summary_line())

    def finished(self, run: WorkflowRun) -> None:
        """Record a run that reached a terminal status."""
        self.seen(run)


def _pairs(items: Sequence[str] | None, what: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{what} must be KEY=VALUE, got {item!r}")
        result[key] = value
    return result


# The library's advice, in the command line's words.
_CLI_ADVICE = (
    ("pass CopyAIClient(api_key=...)", "pass --api-key"),
    ("pass CopyAIClient(base_url=...)", "pass --base-url"),
    ("pass allow_http=True", "pass --allow-http"),
    (", or pass trust_env=False", ", or pass --proxy"),
)


def _client(args: argparse.Namespace, **options: Any) -> CopyAIClient:
    """The client of a command, from the global options (and ``options``, e.g. the
    ``rate_limit`` of ``batch``)."""
    try:
        return CopyAIClient(
            args.api_key,
            base_url=args.base_url,
            allow_http=args.allow_http,
            proxy=args.proxy,
            **options,
        )
    except ValueError as error:  # a bad --proxy: in the command line's words
        raise UsageError(str(error).replace("proxy", "--proxy", 1)) from None
    except ConfigurationError as error:
        message = str(error)
        for library, cli in _CLI_ADVICE:
            message = message.replace(library, cli)
        raise UsageError(message) from None


async def cmd_list(args: argparse.Namespace, out: Output) -> int:
    """``runs list``: stream a workflow's runs."""
    size = args.size or (MAX_PAGE_SIZE if args.all else 10)
    async with _client(args) as client:
        if not args.all:
            page = await client.list_runs(args.workflow_id, page=args.page, size=size)
            out.run_rows(list(page.runs), header=True)
            if not out.as_json:
                total = "?" if page.total is None else page.total
                more = "; more with --page" if page.has_next else ""
                out.line(f"page {page.page}, {len(page.runs)} runs of {total}{more}")
            return EXIT_OK
        count = 0
        async with client.iter_runs(args.workflow_id, page_size=size, start_page=args.page) as runs:
            async for page in runs.pages():
                out.run_rows(list(page.runs), header=count == 0 and not out.rich)
                count += len(page.runs)
        if not out.as_json:
            out.line(f"{count} runs")
    return EXIT_OK


async def cmd_get(args: argparse.Namespace, out: Output) -> int:
    """``runs get``: print one run."""
    async with _client(args) as client:
        out.run(await client.get_run(args.workflow_id, args.run_id))
    return EXIT_OK


async def cmd_start(args: argparse.Namespace, out: Output) -> int:
    """``runs start``: start a run, and wait for it with ``--wait``."""
    variables = _pairs(args.var, "--var")
    metadata = _pairs(args.metadata, "--metadata") or None
    start_key: Any = None if args.no_start_key else (args.start_key or AUTO)
    async with _client(args) as client:
        run = await client.start_run(
            args.workflow_id, variables, metadata=metadata, start_key=start_key
        )
        if not args.wait:
            out.run(run)
            return EXIT_OK
        if not out.as_json:
            out.line(f"started {run.id}; waiting")

        def show(seen: WorkflowRun) -> None:
            if not out.as_json:
                out.line(f"{time.strftime('%H:%M:%S')}  {seen.raw_status or seen.status.value}")

        final = await client.wait_for_run(
            args.workflow_id, run.id, timeout=args.timeout, raise_on_failure=False, on_status=show
        )
        out.run(final)
        return EXIT_RUN_FAILED if final.status is RunStatus.FAILED else EXIT_OK


async def cmd_find(args: argparse.Namespace, out: Output) -> int:
    """``runs find``: find the run started with a start key."""
    async with _client(args) as client:
        run = await client.find_started_run(
            args.workflow_id, args.start_key, max_runs=args.max_runs
        )
    if run is None:
        print(
            f"error: none of the {args.max_runs} newest runs of {args.workflow_id} carries "
            f"start key {args.start_key!r}",
            file=sys.stderr,
        )
        return EXIT_NOT_FOUND
    out.run(run)
    return EXIT_OK


async def cmd_wait(args: argparse.Namespace, out: Output) -> int:
    """``runs wait``: wait for runs to finish, with live progress."""
    ids = list(dict.fromkeys(args.run_ids))
    async with _client(args) as client:
        if not args.listen:
            return await _wait(client, args, out, ids)
        async with _listener(client, args) as listener:
            await listener.register(args.workflow_id)
            return await _wait(client, args, out, ids)


async def _wait(client: CopyAIClient, args: argparse.Namespace, out: Output, ids: list[str]) -> int:
    failed: list[WorkflowRun] = []
    code = EXIT_OK
    with StatusBoard(out, len(ids), "Waiting") as board:
        try:
            async for run in client.wait_for_runs(
                args.workflow_id,
                ids,
                timeout=args.timeout,
                on_status=board.seen,
                policy=PollPolicy(sweep=args.sweep),
            ):
                board.finished(run)
                if run.status is RunStatus.FAILED:
                    failed.append(run)
                if out.as_json:
                    out.json_line(run_json(run))
        except ExceptionGroup as group:
            codes = [exit_code(error) for error in group.exceptions]
            for error in group.exceptions:
                print(f"error: {_one_line(error)}", file=sys.stderr)
            code = max(codes, key=_severity)
    # The summary counts failures; these lines say which runs (in JSON mode the rows do).
    if not out.as_json:
        for run in failed:
            status = run.raw_status or run.status.value
            print(
                f"failed: run {run.id} of workflow {args.workflow_id} ({status})", file=sys.stderr
            )
    if code != EXIT_OK:
        return code
    return EXIT_RUN_FAILED if failed else EXIT_OK


async def cmd_webhooks_list(args: argparse.Namespace, out: Output) -> int:
    """``webhooks list``: print the registered webhooks."""
    count = 0
    async with _client(args) as client:
        async for hook in client.list_webhooks():
            count += 1
            _show_webhook(out, hook)
    if not out.as_json:
        out.line(f"{count} webhooks")
    return EXIT_OK


def _show_webhook(out: Output, hook: Webhook) -> None:
    if out.as_json:
        out.json_line(webhook_json(hook))
        return
    kind = hook.raw_event_type or hook.event_type.value
    out.line(f"{hook.id}  {kind:<28}  {hook.workflow_id or '(every workflow)'}  {hook.url}")


async def cmd_webhooks_create(args: argparse.Namespace, out: Output) -> int:
    """``webhooks create``: register a webhook URL."""
    async with _client(args) as client:
        hook = await client.create_webhook(args.url, args.event_type, workflow_id=args.workflow)
    _show_webhook(out, hook)
    return EXIT_OK


async def cmd_webhooks_get(args: argparse.Namespace, out: Output) -> int:
    """``webhooks get``: print one webhook."""
    async with _client(args) as client:
        _show_webhook(out, await client.get_webhook(args.webhook_id))
    return EXIT_OK


async def cmd_webhooks_delete(args: argparse.Namespace, out: Output) -> int:
    """``webhooks delete``: remove a webhook."""
    async with _client(args) as client:
        await client.delete_webhook(args.webhook_id, missing_ok=args.missing_ok)
    if not out.as_json:
        out.line(f"deleted {args.webhook_id}")
    return EXIT_OK


def _listener(client: CopyAIClient, args: argparse.Namespace) -> Any:
    return client.listen(
        host=args.listen_host,
        port=args.listen_port,
        path=args.listen_path,
        public_url=args.public_url,
    )


async def cmd_listen(args: argparse.Namespace, out: Output) -> int:
    """``listen``: receive webhook events and print them."""
    async with _client(args) as client, _listener(client, args) as listener:
        if not args.no_register:
            hooks = await listener.register(args.workflow, args.events or RUN_EVENTS)
            if not out.as_json:
                print(
                    f"listening; registered {len(hooks)} webhooks (deleted on exit)",
                    file=sys.stderr,
                )
        else:
            print(f"listening at {listener.url} (register it yourself)", file=sys.stderr)
        seen = 0
        async for event in listener:
            seen += 1
            if out.as_json:
                out.json_line(event_json(event))
            else:
                about = f"run {event.run_id}" if isinstance(event, RunEvent) else ""
                where = f"workflow {event.workflow_id}" if event.workflow_id else ""
                out.line(
                    f"{time.strftime('%H:%M:%S')}  {event.raw_type:<28}  {about}  {where}  "
                    "(unverified)"
                )
            if args.count and seen >= args.count:
                break
    return EXIT_OK


# When several runs fail in different ways, the exit code names the gravest.
_GRAVITY = [
    EXIT_OK,
    EXIT_RUN_FAILED,
    EXIT_NOT_FOUND,
    EXIT_TIMEOUT,
    EXIT_ERROR,
    EXIT_AUTH,
    EXIT_USAGE,
]


def _severity(code: int) -> int:
    return _GRAVITY.index(code)


async def cmd_demo(args: argparse.Namespace, out: Output) -> int:
    """``demo``: the whole tour against an embedded fake server."""
    from .testing import FakeCopyAI, Schedule

    rng = random.Random(args.seed)

    scale = args.time_scale

    def schedule_for(_workflow: str, _variables: Any) -> Schedule:
        steps = [
            ("NEW", 0.2),
            ("WAITING", rng.uniform(0.1, 1.5)),
            ("PROCESSING", rng.uniform(0.5, 5)),
        ]
        if rng.random() < 0.2:
            steps += [("RETRYING", rng.uniform(0.5, 1.5)), ("PROCESSING", rng.uniform(0.3, 2))]
        final = "FAILED" if rng.random() < 0.08 else "COMPLETE"
        scaled = [(status, seconds * scale) for status, seconds in steps]
        return Schedule.seconds(*scaled, final=final, credits=rng.randint(1, 12))

    server = FakeCopyAI(
        latency=args.latency / 1000.0,
        fault_rate=args.fault_rate,
        # Starts meet faults too: a start whose answer is lost is found by its start key.
        schedule_for=schedule_for,
        seed=args.seed,
    )
    policy = PollPolicy(initial=0.25 * scale, multiplier=1.5, max_interval=1.0 * scale)
    began = time.monotonic()
    async with server, CopyAIClient(server.api_key, base_url=server.url) as client:
        say = (lambda text: None) if out.as_json else out.line
        say(
            f"fake Copy.ai API on {server.url} (latency {args.latency:g} ms, "
            f"fault rate {args.fault_rate:g})"
        )
        gate = asyncio.Semaphore(16)

        async def start(n: int) -> WorkflowRun:
            async with gate:
                return await client.start_run(
                    server.workflow_id, {"topic": f"demo run {n}"}, metadata={"n": n}
                )

        started = await asyncio.gather(*(start(n) for n in range(args.runs)))
        say(f"started {len(started)} runs in {time.monotonic() - began:.1f} s")
        listed = 0
        async for _ in client.iter_runs(server.workflow_id):
            listed += 1
        say(f"streamed {listed} runs with iter_runs ({time.monotonic() - began:.1f} s)")
        finished: list[WorkflowRun] = []
        with StatusBoard(out, len(started), "Waiting") as board:
            async for run in client.wait_for_runs(
                server.workflow_id, [r.id for r in started], policy=policy, on_status=board.seen
            ):
                board.finished(run)
                finished.append(run)
                if out.as_json:
                    out.json_line(run_json(run))
        say(
            "the same wait three ways: each run read on its own, sweeps of the listing "
            "(the default), and with a webhook listener:"
        )
        compared = await _compare_waits(server, client, min(args.runs, 50), scale, rng, say)
        wall = time.monotonic() - began
    summary = {
        "runs": len(finished),
        "complete": sum(r.status is RunStatus.COMPLETE for r in finished),
        "failed": sum(r.status is RunStatus.FAILED for r in finished),
        "credits": sum(r.credits or 0 for r in finished),
        "requests": server.stats.requests,
        "faults_injected": server.stats.faults,
        "wall_s": round(wall, 2),
    }
    for mode, figures in compared.items():
        key = mode.replace(" ", "_")
        summary[f"{key}_requests_per_run"] = figures["requests_per_run"]
        summary[f"{key}_detection_p50_s"] = figures["p50_s"]
    if out.as_json:
        out.json_line({"summary": summary})
    elif out.rich:
        from rich.table import Table

        table = Table(title="copyai_async demo", show_header=False)
        table.add_column(style="bold")
        table.add_column(justify="right")
        table.add_row("Runs", str(summary["runs"]))
        table.add_row("Complete", f"[green]{summary['complete']}[/]")
        table.add_row("Failed", f"[red]{summary['failed']}[/]")
        table.add_row("Credits", str(summary["credits"]))
        table.add_row("Requests made", str(summary["requests"]))
        table.add_row("Faults injected (retried)", str(summary["faults_injected"]))
        for mode, figures in compared.items():
            table.add_row(
                f"Waiting, {mode}",
                f"{figures['requests_per_run']:.2f} requests/run, "
                f"seen {figures['p50_s'] * 1000:,.0f} ms after (p50)",
            )
        table.add_row("Wall time", f"{wall:.1f} s")
        out.console.print(table)
    else:
        width = max(len(k) for k in summary)
        for key, value in summary.items():
            out.line(f"{key.replace('_', ' '):<{width}}  {value}")
    return EXIT_OK


async def _compare_waits(
    server: Any, client: CopyAIClient, count: int, scale: float, rng: random.Random, say: Any
) -> dict[str, dict[str, float]]:
    """Wait on ``count`` runs finishing 1-3 s (scaled) after they start: each read on its
    own, then by sweeps of the listing, then with a listener; the requests per run and
    how late each run was seen finished."""
    from .testing import Schedule

    async def one(mode: str) -> dict[str, float]:
        async with contextlib.AsyncExitStack() as stack:
            if mode == "webhooks":
                listener = await stack.enter_async_context(client.listen())
                await listener.register(server.workflow_id)
            # Every run finishes 1-3 s (scaled) after the last one started (a run finished
            # before the wait begins would show no difference): held until then.
            server.schedule_for = lambda _wf, _vars: Schedule.seconds(("PROCESSING", 3600))
            gate = asyncio.Semaphore(16)

            async def start() -> WorkflowRun:
                async with gate:
                    return await client.start_run(server.workflow_id, {"compare": mode})

            finishes: dict[str, float] = {}
            for run in await asyncio.gather(*(start() for _ in range(count))):
                fake = server.get(run.id)
                after = server.clock() - fake.created_mono + rng.uniform(1.0, 3.0) * scale
                server.reschedule(fake, Schedule.seconds(("PROCESSING", after)))
                finishes[run.id] = fake.created_mono + after
            before = sum(n for k, n in server.stats.by_path.items() if k.startswith("GET"))
            late: list[float] = []
            policy = PollPolicy(sweep=mode != "one by one")
            async for run in client.wait_for_runs(
                server.workflow_id, list(finishes), policy=policy
            ):
                late.append(max(0.0, time.monotonic() - finishes[run.id]))
            gets = sum(n for k, n in server.stats.by_path.items() if k.startswith("GET"))
        late.sort()
        return {
            "requests_per_run": round((gets - before) / count, 2),
            "p50_s": round(late[len(late) // 2], 3),
        }

    previous = server.schedule_for
    results: dict[str, dict[str, float]] = {}
    try:
        for mode in ("one by one", "sweeps", "webhooks"):
            results[mode] = figures = await one(mode)
            say(
                f"  {mode:<10} {figures['requests_per_run']:.2f} requests per run; each seen "
                f"finished {figures['p50_s'] * 1000:,.0f} ms after it finished (p50)"
            )
    finally:
        server.schedule_for = previous
    return results


def cmd_fake_server(args: argparse.Namespace) -> int:
    """``fake-server``: serve the fake Copy.ai API until interrupted."""
    from .testing.__main__ import run

    return run(args)


def _sweep_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-sweep",
        dest="sweep",
        action="store_false",
        help="read each run on its own, not pages of the workflow's listing (one page "
        "shows up to 100 runs; see PollPolicy(sweep=...))",
    )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def _rate(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``--help`` shows examples and exit codes)."""
    parser = argparse.ArgumentParser(
        prog="copyai-async",
        description="Copy.ai workflow runs from the shell: list, inspect, start and wait.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"copyai-async {version()}")
    _global_options(parser, default=None)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser("demo", help="run a demo against a fake server on loopback")
    demo.add_argument(
        "--runs", type=_int_at_least(1), default=300, help="runs to start (default 300)"
    )
    demo.add_argument("--latency", type=float, default=20.0, help="server latency, ms (default 20)")
    demo.add_argument(
        "--fault-rate",
        type=_rate,
        default=0.05,
        help="share of polls that fail and are retried (default 0.05)",
    )
    demo.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    demo.add_argument(
        "--time-scale",
        type=_positive_float,
        default=1.0,
        help="stretch (or, below 1, shrink) how long runs take (default 1: up to ~10 s)",
    )
    demo.add_argument("--json", action="store_true", help="one JSON object per line")
    demo.set_defaults(handler=cmd_demo)

    runs = commands.add_parser("runs", help="list, get, start and wait for runs")
    run_cmds = runs.add_subparsers(dest="runs_command", metavar="ACTION", required=True)

    listing = run_cmds.add_parser("list", help="list a workflow's runs, newest first")
    listing.add_argument("workflow_id", help="the workflow whose runs to list (WCFG-...)")
    listing.add_argument("--all", action="store_true", help="every run, across all pages")
    listing.add_argument("--page", type=_int_at_least(1), default=1, help="page (default 1)")
    listing.add_argument("--size", type=_int_at_least(1), help="runs per page (max 100)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(handler=cmd_list)

    get = run_cmds.add_parser("get", help="show one run")
    get.add_argument("workflow_id", help="the workflow the run belongs to")
    get.add_argument("run_id", help="the run's id (WRUN-...)")
    get.add_argument("--json", action="store_true", help="print the run as JSON")
    get.set_defaults(handler=cmd_get)

    start = run_cmds.add_parser("start", help="start a run (and optionally wait for it)")
    start.add_argument("workflow_id", help="the workflow to run")
    start.add_argument("--var", action="append", metavar="KEY=VALUE", help="a start variable")
    start.add_argument("--metadata", action="append", metavar="KEY=VALUE", help="metadata")
    start.add_argument("--wait", action="store_true", help="wait until it is COMPLETE or FAILED")
    start.add_argument("--timeout", type=_positive_float, help="give up after S seconds")
    start.add_argument("--json", action="store_true", help="print the run as JSON")
    keys = start.add_mutually_exclusive_group()
    keys.add_argument(
        "--start-key",
        metavar="KEY",
        help="tag the run with this start key (default: a fresh one), to find it with 'runs find'",
    )
    keys.add_argument(
        "--no-start-key", action="store_true", help="send the metadata as given, untagged"
    )
    start.set_defaults(handler=cmd_start)

    find = run_cmds.add_parser("find", help="find the run a start tagged with a start key")
    find.add_argument("workflow_id", help="the workflow the run was started in")
    find.add_argument(
        "start_key", help="the run's start key (its --start-key, or as a lost start's hint shows)"
    )
    find.add_argument(
        "--max-runs",
        type=_int_at_least(1),
        default=1000,
        help="newest runs to look through (default %(default)s)",
    )
    find.add_argument("--json", action="store_true", help="print the run as JSON")
    find.set_defaults(handler=cmd_find)

    wait = run_cmds.add_parser("wait", help="wait for runs, with live progress")
    wait.add_argument("workflow_id", help="the workflow the runs belong to")
    wait.add_argument("run_ids", nargs="+", metavar="RUN_ID", help="the runs to wait for")
    wait.add_argument("--timeout", type=_positive_float, help="give up after S seconds")
    wait.add_argument("--json", action="store_true", help="each run as JSON when it ends")
    wait.add_argument(
        "--listen",
        action="store_true",
        help="receive webhook events meanwhile: a run is seen finished the moment its event "
        "lands (checked with one GET); webhooks are deleted on exit",
    )
    _listen_options(wait)
    _sweep_option(wait)
    wait.set_defaults(handler=cmd_wait)

    hooks = commands.add_parser("webhooks", help="list, create, get and delete webhooks")
    hook_cmds = hooks.add_subparsers(dest="webhooks_command", metavar="ACTION", required=True)
    hook_list = hook_cmds.add_parser("list", help="every webhook of the workspace")
    hook_list.add_argument("--json", action="store_true", help="one JSON object per line")
    hook_list.set_defaults(handler=cmd_webhooks_list)
    create = hook_cmds.add_parser("create", help="register a webhook")
    create.add_argument("url", help="where Copy.ai POSTs events (http or https)")
    create.add_argument(
        "event_type",
        choices=[*(e.value for e in RUN_EVENTS), "workflowCreditLimit.reached"],
        metavar="EVENT_TYPE",
        help="workflowRun.started|completed|failed or workflowCreditLimit.reached",
    )
    create.add_argument("--workflow", metavar="WORKFLOW_ID", help="only this workflow's events")
    create.add_argument("--json", action="store_true", help="print the webhook as JSON")
    create.set_defaults(handler=cmd_webhooks_create)
    hook_get = hook_cmds.add_parser("get", help="show one webhook")
    hook_get.add_argument("webhook_id", help="the webhook's id ('webhooks list' shows them)")
    hook_get.add_argument("--json", action="store_true", help="print the webhook as JSON")
    hook_get.set_defaults(handler=cmd_webhooks_get)
    delete = hook_cmds.add_parser("delete", help="delete a webhook")
    delete.add_argument("webhook_id", help="the webhook's id ('webhooks list' shows them)")
    delete.add_argument("--missing-ok", action="store_true", help="a missing webhook is no error")
    delete.set_defaults(handler=cmd_webhooks_delete)

    listen = commands.add_parser(
        "listen", help="receive webhook events and print them as they arrive"
    )
    listen.add_argument("--workflow", metavar="WORKFLOW_ID", help="only this workflow's events")
    listen.add_argument(
        "--events",
        nargs="+",
        metavar="EVENT_TYPE",
        help="event types to register for (default: the three run events)",
    )
    listen.add_argument(
        "--no-register", action="store_true", help="register nothing; print the URL to register"
    )
    listen.add_argument(
        "--count", type=_int_at_least(1), help="stop after this many events (default: Ctrl-C)"
    )
    listen.add_argument("--json", action="store_true", help="one JSON object per event")
    _listen_options(listen)
    listen.set_defaults(handler=cmd_listen)

    from ._cli_batch import add_parser as add_batch

    add_batch(commands)

    from .testing.__main__ import EPILOG, add_options

    fake = commands.add_parser(
        "fake-server",
        help="serve the fake Copy.ai API in the foreground (prints its URL and API key)",
        description="The same server, with the same options, as python -m copyai_async.testing.",
        epilog=EPILOG.replace("python -m copyai_async.testing", "copyai-async fake-server"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(fake)
    fake.set_defaults(handler=None)
    # The global options are accepted after the command too (where they mean nothing
    # else there: fake-server's --api-key is the key the server accepts).
    _global_options_after(commands)
    return parser


def _global_options(parser: argparse.ArgumentParser, *, default: Any) -> None:
    """The options of every command; after a command, ``default=SUPPRESS`` so that one
    not given there leaves the value given before the command."""
    options: list[tuple[tuple[str, ...], dict[str, Any]]] = [
        (("--api-key",), {"help": "Copy.ai API key (default: $COPYAI_API_KEY)"}),
        (
            ("--base-url",),
            {"help": f"API root (default: $COPYAI_BASE_URL, else {DEFAULT_BASE_URL})"},
        ),
        (
            ("--proxy",),
            {
                "metavar": "URL",
                "help": "send requests through this HTTP proxy, http://[user:password@]host:port "
                "(default: $HTTPS_PROXY / $HTTP_PROXY, unless $NO_PROXY names the host)",
            },
        ),
        (
            ("--allow-http",),
            {
                "action": "store_true",
                "help": "allow a plain-http base URL that is not loopback (the key crosses "
                "unencrypted)",
            },
        ),
        (("-v", "--verbose"), {"action": "store_true", "help": "log requests to stderr"}),
    ]
    taken = {flag for action in parser._actions for flag in action.option_strings}
    for flags, kwargs in options:
        if taken.isdisjoint(flags):
            if default is argparse.SUPPRESS:
                kwargs = {**kwargs, "default": argparse.SUPPRESS}
            elif kwargs.get("action") != "store_true":
                kwargs = {**kwargs, "default": default}
            parser.add_argument(*flags, **kwargs)


def _global_options_after(commands: argparse._SubParsersAction[Any]) -> None:
    for sub in set(commands.choices.values()):
        nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            _global_options_after(nested[0])
        else:
            _global_options(sub, default=argparse.SUPPRESS)


def _listen_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--public-url",
        metavar="URL",
        help="the address Copy.ai reaches the listener at (a tunnel or proxy); the secret "
        "token is added to it",
    )
    parser.add_argument(
        "--listen-host", default="127.0.0.1", help="address to listen on (default %(default)s)"
    )
    parser.add_argument(
        "--listen-port", type=_int_at_least(0), default=0, help="port (default: any free)"
    )
    parser.add_argument(
        "--listen-path", default="/copyai-webhooks", help="path to serve (default %(default)s)"
    )


def exit_code(error: BaseException) -> int:
    """The documented exit code for an error."""
    if isinstance(error, (UsageError, ConfigurationError, TypeError, ValueError)):
        return EXIT_USAGE
    if isinstance(error, AuthenticationError):
        return EXIT_AUTH
    if isinstance(error, NotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(error, RunFailedError):
        return EXIT_RUN_FAILED
    if isinstance(error, PollTimeoutError):
        return EXIT_TIMEOUT
    return EXIT_ERROR


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logger = logging.getLogger("copyai_async")
    handler: logging.Handler | None = None
    previous_level = logger.level
    if args.verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        return _run(args)
    finally:
        if handler is not None:  # main() may be called again in the same process
            logger.removeHandler(handler)
            logger.setLevel(previous_level)


def _run(args: argparse.Namespace) -> int:
    if args.command == "fake-server":
        return cmd_fake_server(args)
    out = Output(as_json=getattr(args, "json", False))
    command: Callable[[argparse.Namespace, Output], Coroutine[Any, Any, int]] = args.handler
    try:
        return run_interruptible(command(args, out))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (CopyAIError, UsageError, TypeError, ValueError) as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        if isinstance(error, StartUncertainError) and error.start_key:
            print(
                f"hint: before starting it again, look for it: copyai-async runs find "
                f"{error.workflow_id} {error.start_key}",
                file=sys.stderr,
            )
        return exit_code(error)
    except BrokenPipeError:
        # The reader went away (`| head`): not an error to report. As the Python docs
        # advise, point stdout at devnull so that the exit's flush cannot fail again.
        _silence_stdout()
        return EXIT_ERROR
    except OSError as error:  # e.g. writing the output to a full disk
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return EXIT_ERROR


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (a test's capture)
        pass
