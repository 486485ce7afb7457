"""``python -m copyai_async.testing``: run the fake Copy.ai API in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import signal
import sys
import time
from datetime import timedelta
from typing import Any

from ._aitasker import AITASKER_WORKFLOW_ID, AITASKER_WORKSPACE_ID
from ._faults import DEFAULT_RANDOM_FAULTS, Fault
from ._quirks import Quirks
from ._schedule import Schedule
from ._server import (
    DEFAULT_API_KEY,
    DEFAULT_COMPRESS_MIN_SIZE,
    DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_WORKFLOW_ID,
    FakeCopyAI,
)
from ._webhooks import Deliveries

# --schedule polls: one step per GET of the run.
POLL_COUNTED = Schedule.polls(("NEW", 1), ("WAITING", 1), ("PROCESSING", 2))

# --fault-kinds: the faults --fault-rate draws from, by name. The first nine are the
# default (DEFAULT_RANDOM_FAULTS); "lost-" ones let the request take effect first (a
# start makes its run), then lose the answer.
FAULT_KINDS: dict[str, Fault] = {
    "500": Fault.server_error(500),
    "503-html": Fault.server_error(503, html=True),
    "502-html": Fault.server_error(502, html=True),
    "429": Fault.rate_limit("0"),
    "429-bare": Fault.rate_limit(None),
    "disconnect": Fault.disconnect(),
    "truncate": Fault.truncate(),
    "garbled": Fault.garbled("truncated"),
    "garbled-html": Fault.garbled("html"),
    "lost-500": Fault.server_error(500, after=True),
    "lost-disconnect": Fault.disconnect(after=True),
}
DEFAULT_FAULT_KINDS = tuple(name for name, f in FAULT_KINDS.items() if f in DEFAULT_RANDOM_FAULTS)

EPILOG = (
    "example: python -m copyai_async.testing --port 8080 --runs 500 --latency 50\n"
    "then:    COPYAI_API_KEY=test-key COPYAI_BASE_URL=http://127.0.0.1:8080/api your-app"
)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535 (0: any free port), got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m copyai_async.testing",
        description="Serve a fake Copy.ai Workflow API on loopback until interrupted.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(p)
    return p


def add_options(p: argparse.ArgumentParser) -> None:
    """The fake server's options, on ``p`` (``copyai-async fake-server`` has the same)."""
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=_port, default=0, help="port, 0..65535 (default 0: a free one)")
    p.add_argument("--api-key", default=DEFAULT_API_KEY, help="accepted key (default %(default)s)")
    p.add_argument("--workflow", default=DEFAULT_WORKFLOW_ID, help="workflow id to create")
    p.add_argument("--runs", type=int, default=0, help="runs to create up front (completed)")
    p.add_argument(
        "--finish-between",
        nargs=2,
        type=float,
        metavar=("MIN", "MAX"),
        help="make the --runs finish at random times MIN..MAX s after start, not at once",
    )
    p.add_argument(
        "--polls-each",
        type=int,
        default=0,
        help="make the --runs stay PROCESSING for this many polls each (default: none)",
    )
    p.add_argument(
        "--aitasker-runs",
        type=int,
        default=0,
        metavar="N",
        help="aitasker runs to create up front in its default workspace and workflow "
        "(completed; --finish-between and --polls-each apply to them too)",
    )
    p.add_argument(
        "--runs-file",
        help="write the --runs as JSON: id and when each finishes (Unix time)",
    )
    p.add_argument("--latency", type=float, default=0.0, help="milliseconds added per answer")
    p.add_argument("--fault-rate", type=float, default=0.0, help="share of requests to fail, 0..1")
    p.add_argument(
        "--fault-kinds",
        nargs="+",
        choices=tuple(FAULT_KINDS),
        default=DEFAULT_FAULT_KINDS,
        metavar="KIND",
        help="the faults --fault-rate draws from, each alike: 500, 503-html, 502-html, 429 "
        "(Retry-After: 0), 429-bare, disconnect, truncate (half the body, then the line "
        "drops), garbled, garbled-html (a 200 that cannot be read; the request took "
        "effect), lost-500, lost-disconnect (the request takes effect, a start makes its "
        "run, then the answer is lost) (default: the first nine)",
    )
    p.add_argument(
        "--fault-methods",
        nargs="+",
        choices=("GET", "POST", "DELETE"),
        metavar="METHOD",
        help="the methods --fault-rate hits: GET, POST, DELETE (default: all)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for faults, ids and run durations")
    p.add_argument(
        "--keepalive-timeout",
        type=float,
        default=DEFAULT_KEEPALIVE_TIMEOUT,
        metavar="S",
        help="close connections idle for S seconds (default %(default)g; 0: never)",
    )
    p.add_argument("--no-gzip", action="store_true", help="never compress answers")
    p.add_argument(
        "--cache-pages",
        action="store_true",
        help="send each listing page from its first encoding (benchmarks of the client)",
    )
    p.add_argument(
        "--bare-listing",
        action="store_true",
        help="send listing items without status, input and output (the documentation's "
        "second shape; Quirks(bare_listing=True)); a run read on its own keeps them",
    )
    p.add_argument(
        "--schedule",
        choices=("seconds", "polls"),
        default="seconds",
        help="how runs started through the API move on: 'seconds' (default): NEW, WAITING, "
        "PROCESSING, then COMPLETE 1 to 4 s after the start, each run at its own time; "
        "'polls': one step per GET of the run (NEW, WAITING, PROCESSING twice, then "
        "COMPLETE), so a wait with a listener ends only on its 30 s safety poll",
    )
    p.add_argument(
        "--finish-from",
        metavar="VARIABLE",
        help="runs started through the API stay PROCESSING for as many seconds as their "
        "start variable VARIABLE says (a number, or a string of one), then COMPLETE "
        "(instead of --schedule)",
    )
    hooks = p.add_argument_group("webhook deliveries")
    hooks.add_argument(
        "--webhook-shape",
        choices=("result", "run", "mixed"),
        default="result",
        help="event body shape (default %(default)s)",
    )
    hooks.add_argument(
        "--webhook-delay",
        nargs=2,
        type=float,
        default=(0.0, 0.0),
        metavar=("MIN", "MAX"),
        help="seconds from a change to its delivery, drawn uniformly (default 0 0)",
    )
    for name in ("drop", "duplicate", "reorder"):
        hooks.add_argument(
            f"--webhook-{name}-rate",
            type=float,
            default=0.0,
            metavar="SHARE",
            help=f"share of deliveries to {name} (0..1, default 0)",
        )


def _build(args: argparse.Namespace) -> FakeCopyAI:
    server = FakeCopyAI(
        api_key=args.api_key,
        workflows=(args.workflow,),
        host=args.host,
        port=args.port,
        latency=args.latency / 1000.0,
        fault_rate=args.fault_rate,
        faults=[FAULT_KINDS[name] for name in dict.fromkeys(args.fault_kinds)],
        fault_methods=args.fault_methods,
        seed=args.seed,
        default_schedule=POLL_COUNTED if args.schedule == "polls" else Schedule.default(),
        keepalive_timeout=args.keepalive_timeout or None,
        compress_min_size=None if args.no_gzip else DEFAULT_COMPRESS_MIN_SIZE,
        cache_pages=args.cache_pages,
        quirks=Quirks(bare_listing=args.bare_listing),
        deliveries=Deliveries(
            shape=args.webhook_shape,
            delay=tuple(args.webhook_delay),
            drop_rate=args.webhook_drop_rate,
            duplicate_rate=args.webhook_duplicate_rate,
            reorder_rate=args.webhook_reorder_rate,
        ),
    )
    if args.finish_from:
        name = args.finish_from

        def finish_from(_workflow: str, variables: Any) -> Schedule:
            value = variables.get(name, 0) if isinstance(variables, dict) else 0
            seconds = 0.0
            if isinstance(value, (int, float, str)) and not isinstance(value, bool):
                with contextlib.suppress(ValueError):  # `--var KEY=3` sends the string "3"
                    seconds = float(value)
            if not math.isfinite(seconds):
                seconds = 0.0
            return Schedule.seconds(("PROCESSING", max(0.0, seconds)))

        server.schedule_for = finish_from
    if args.runs:
        rng = random.Random(args.seed)
        listing = []
        started = time.time()
        # Runs that finish MIN..MAX s from now were started now (their createdAt says
        # so, as the API's would: waits age runs by it); others a second apart.
        apart = timedelta(microseconds=1) if args.finish_between else timedelta(seconds=1)
        made = server.add_runs(args.runs, args.workflow, apart=apart, schedule=Schedule.immediate())
        for fake in made:
            finishes = 0.0
            # reschedule, not an assignment: a listener then hears of the finish on time.
            if args.finish_between:
                finishes = rng.uniform(*args.finish_between)
                server.reschedule(fake, Schedule.seconds(("PROCESSING", finishes)))
            elif args.polls_each:
                server.reschedule(fake, Schedule.polls(("PROCESSING", args.polls_each)))
            listing.append({"id": fake.id, "finishes_at": started + finishes})
        if args.runs_file:
            with open(args.runs_file, "w") as out:
                json.dump(listing, out)
    if args.aitasker_runs:
        rng = random.Random(args.seed + 1)
        for _ in range(args.aitasker_runs):
            schedule = Schedule.immediate(final="completed")
            if args.finish_between:
                finishes = rng.uniform(*args.finish_between)
                schedule = Schedule.seconds(("running", finishes), final="completed")
            elif args.polls_each:
                schedule = Schedule.polls(("running", args.polls_each), final="completed")
            server.add_aitasker_run(schedule=schedule)
    return server


async def _serve(server: FakeCopyAI, workflow: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with server:
        # The first line names the base URL (scripts read it); the second how to use it.
        print(
            f"fake Copy.ai API on {server.url} (workflow {workflow}, API key {server.api_key})\n"
            f"use it: COPYAI_API_KEY={server.api_key} COPYAI_BASE_URL={server.url} "
            f"copyai-async runs list {workflow}\n"
            f"aitasker: AITASKER_API_TOKEN={server.api_key} "
            f"AITASKER_BASE_URL={server.aitasker_url} "
            f"(workspace {AITASKER_WORKSPACE_ID}, workflow {AITASKER_WORKFLOW_ID})",
            flush=True,
        )
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """Serve until interrupted; returns the exit code."""
    return run(_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Serve with parsed options (from :func:`add_options`); returns the exit code."""
    if not 0.0 <= args.fault_rate <= 1.0:
        print("error: --fault-rate must be between 0 and 1", file=sys.stderr)
        return 2
    if args.latency < 0 or args.runs < 0 or args.aitasker_runs < 0:
        print("error: --latency, --runs and --aitasker-runs must be >= 0", file=sys.stderr)
        return 2
    if not args.keepalive_timeout >= 0:
        print("error: --keepalive-timeout must be >= 0", file=sys.stderr)
        return 2
    if args.finish_between and not 0 <= args.finish_between[0] <= args.finish_between[1]:
        print("error: --finish-between needs 0 <= MIN <= MAX", file=sys.stderr)
        return 2
    try:
        server = _build(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(server, args.workflow))
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
