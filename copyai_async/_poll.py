"""Poll policy, single-run wait/watch, and the many-run scheduler.

The poller knows nothing of any one API: it is given how to fetch a run and a
:class:`RunKind` saying which statuses end it (and which mean failure, or are unknown).

Timing: the first poll is immediate; then sleeps grow from ``initial`` by ``multiplier``
up to ``max_interval``, each drawn within ``jitter / 2`` of its interval either way (so
the mean sleep, and the request rate, are the interval's, and no sleep exceeds
``max_interval * (1 + jitter / 2)``). A ``timeout`` is one deadline on the client's monotonic clock
over requests, retries, pauses and sleeps: a sleep that would cross it ends at it, and a
request in flight at it is cancelled.

Failures: a poll is a read, so a poll that fails for a passing reason (5xx, 429, a
dropped connection, a timeout, an answer that cannot be read), after the request's own
retries, is a missed poll: logged at WARNING, and the next poll comes on schedule (no
sooner than a 429's ``Retry-After``). More than ``max_failed_polls`` in a row end the wait
with :class:`PollFailedError`, carrying the last good reading. Failures that another poll
would only repeat (400, 401, 403, a 404 outside the grace window, 422) end it at once.

Events: while a webhook listener of the client is live (see :class:`RunHints`), an event
saying a run finished makes that run due for a poll at once, and the poll decides (an
event is a hint, never a result). Runs whose events the listener receives are polled
only every ``safety_interval`` meanwhile, so that lost deliveries still end every wait.

Many runs: a heap of (due time, run) and at most ``concurrency`` polls in flight, each a
short-lived task. Waiting on 10,000 runs costs 10,000 small heap entries, not 10,000
sleeping tasks; the scheduler wakes only when a poll ends or the earliest run falls due.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import inspect
import itertools
import logging
import math
import random
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from contextlib import aclosing
from typing import Any, Generic, TypeVar

import anyio
import attrs

from ._budget import DEADLINE, Budget, DeadlineExceeded
from ._clock import Clock, SystemClock
from ._errors import (
    APIConnectionError,
    APIStatusError,
    ClientClosedError,
    CopyAIError,
    InvalidResponseError,
    NotFoundError,
    PollFailedError,
    PollTimeoutError,
    RateLimitError,
    RunFailedError,
    ServerError,
)
from ._tasks import cancel_and_wait

if sys.version_info < (3, 11):  # pragma: no cover - version-dependent
    from exceptiongroup import ExceptionGroup

__all__ = ["DEFAULT_CONCURRENCY", "PollPolicy", "RunKind", "observe", "wait", "wait_many", "watch"]

logger = logging.getLogger("copyai_async")

R = TypeVar("R")

DEFAULT_CONCURRENCY = 16
"""Polls of one ``wait_for_runs`` in flight at once, by default."""

_COALESCE = 0.05  # seconds: the most a poll of many is moved to go with others

MAX_CONCURRENCY = 1_000
MAX_FAILED_POLLS = 1_000_000


def _finite_positive(name: str) -> Callable[[Any, Any, float], None]:
    def check(_instance: Any, _attribute: Any, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, got {type(value).__name__}")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")

    return check


@attrs.frozen(kw_only=True)
class PollPolicy:
    """How often to poll a run.

    The defaults suit runs that take seconds to minutes: polls at about 0, 1, 2.5, 4.8,
    8.1, 13.1, 20.7 s, then every 10 s.

    Attributes:
        initial: seconds before the second poll.
        multiplier: growth of each sleep over the one before (>= 1).
        max_interval: the longest interval (>= ``initial``); a run is seen terminal at
            most this long, plus the jitter and a request, after it ends.
        jitter: spread (0..1) of each sleep around its interval, so that many waits do
            not poll in lockstep: a sleep is drawn from ``interval * (1 ± jitter / 2)``,
            so on average it is the interval (jitter does not raise the request rate).
        not_found_grace: seconds after this client started a run during which a 404 for
            it means "not readable yet" and is polled again; later, it is raised.
        max_failed_polls: polls in a row that may fail for a passing reason (5xx, 429,
            connection, timeout, an unreadable answer; each after the request's own
            retries) before the wait gives up with :class:`PollFailedError`. Each is
            logged at WARNING and the wait polls again on schedule; 0 gives up at the
            first.
        safety_interval: while a webhook listener of the client is live and receives
            the events of the run's workflow, the run is polled only this often (and an
            event that says it finished makes it due at once); so a lost delivery
            delays a wait by at most this much. Jittered like the other sleeps.

    Raises:
        ValueError: a non-positive or non-finite value, ``multiplier < 1``,
            ``max_interval < initial``, ``jitter`` outside 0..1, or a negative
            ``max_failed_polls``.
    """

    initial: float = attrs.field(default=1.0, validator=_finite_positive("initial"))
    multiplier: float = attrs.field(default=1.5, validator=_finite_positive("multiplier"))
    max_interval: float = attrs.field(default=10.0, validator=_finite_positive("max_interval"))
    jitter: float = 0.1
    not_found_grace: float = 10.0
    max_failed_polls: int = 5
    safety_interval: float = attrs.field(
        default=30.0, validator=_finite_positive("safety_interval")
    )

    def __attrs_post_init__(self) -> None:
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier!r}")
        if self.max_interval < self.initial:
            raise ValueError(
                f"max_interval ({self.max_interval!r}) must be >= initial ({self.initial!r})"
            )
        for name in ("jitter", "not_found_grace"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {type(value).__name__}")
        if not (math.isfinite(self.jitter) and 0 <= self.jitter <= 1):
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter!r}")
        if not (math.isfinite(self.not_found_grace) and self.not_found_grace >= 0):
            raise ValueError(f"not_found_grace must be >= 0, got {self.not_found_grace!r}")
        failed = self.max_failed_polls
        if isinstance(failed, bool) or not isinstance(failed, int):
            raise TypeError(f"max_failed_polls must be an int, got {type(failed).__name__}")
        if not 0 <= failed <= MAX_FAILED_POLLS:
            raise ValueError(
                f"max_failed_polls must be between 0 and {MAX_FAILED_POLLS}, got {failed}"
            )

    def interval(self, attempt: int) -> float:
        """The sleep after poll ``attempt + 1``, before jitter."""
        return min(self.max_interval, self.initial * self.multiplier ** min(attempt, 200))

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The sleep after poll ``attempt + 1``: within ``jitter / 2`` of the interval."""
        return self.interval(attempt) * (1.0 + self.jitter * (rng.random() - 0.5))

    def safety_delay(self, attempt: int, rng: random.Random) -> float:
        """The sleep while events arrive: ``safety_interval`` (or the usual interval, if
        longer), jittered as :meth:`delay` is."""
        longest = max(self.safety_interval, self.interval(attempt))
        return longest * (1.0 + self.jitter * (rng.random() - 0.5))


@attrs.frozen
class RunKind(Generic[R]):
    """What the poller needs to know about one API's runs.

    Attributes:
        status: the run's status as a string (to see changes and to report).
        is_terminal: whether the run will not change any more.
        is_failed: whether a terminal run failed.
        is_unknown: whether the status is one the API does not document.
        failure_detail: why a failed run failed, if the API says (for error messages).
    """

    status: Callable[[R], str]
    is_terminal: Callable[[R], bool]
    is_failed: Callable[[R], bool]
    is_unknown: Callable[[R], bool]
    failure_detail: Callable[[R], str | None] = lambda _run: None


@attrs.frozen(kw_only=True)
class Target(Generic[R]):
    """One run to wait for: how to read it, and how to speak of it.

    Kept small, one per run waited on: the reader and the noun are shared by every
    target of a client, and the label is only built when a message needs it."""

    workflow_id: str
    run_id: str
    read: Callable[[str, str], Awaitable[R]]  # (workflow_id, run_id) -> the run
    noun: str = "run"  # how messages name a run, e.g. "aitasker run"
    grace_until: float | None = None  # clock time until which a 404 is polled again
    started_at: float | None = None  # clock time this client started the run, if it did

    @property
    def label(self) -> str:
        """How messages name the run, e.g. "run WRUN-1 of workflow WCFG-2"."""
        return f"{self.noun} {self.run_id} of workflow {self.workflow_id}"

    def fetch(self) -> Awaitable[R]:
        """Read the run once."""
        return self.read(self.workflow_id, self.run_id)

    def in_grace(self, now: float) -> bool:
        """Whether a 404 now means "started moments ago, not readable yet"."""
        return self.grace_until is not None and now < self.grace_until


HINT_MEMORY = 100_000
"""Runs whose latest event :class:`RunHints` remembers (for waits that begin later)."""


class RunHints:
    """What webhook events say about runs: the one extra input of a client's waits.

    Listeners feed it; waits read it. An event is a hint, never a result: an event
    saying a run finished makes that run due for a poll at once, and the poll decides.

    A listener is *live* from its registration and each accepted delivery, until
    ``safety_interval`` passes without one. While a live listener receives a workflow's
    events (it registered for them, or they arrive), waits on that workflow's runs poll
    only every ``safety_interval``; a run the client just started, or one an event has
    named, is not even polled first.
    """

    def __init__(self, clock: Clock, *, memory: int = HINT_MEMORY) -> None:
        self.clock = clock
        self.listeners: int = 0
        self._covered: collections.Counter[str | None] = collections.Counter()
        self._evidence: set[str] = set()  # workflows whose events arrived unregistered
        self._alive_at = -math.inf
        self._final: collections.OrderedDict[str, bool] = collections.OrderedDict()
        self._subscribers: dict[str, list[Callable[[str], None]]] = {}
        self._memory = memory
        self.relay: Callable[[str, str | None, bool], None] | None = None
        """Passes this process's events on to other processes (Redis coordination)."""

    # -- fed by listeners ---------------------------------------------------------------

    def attach(self) -> None:
        """A listener started."""
        self.listeners += 1

    def detach(self) -> None:
        """A listener stopped; with the last one, what the events showed is forgotten."""
        self.listeners = max(0, self.listeners - 1)
        if not self.listeners:
            self._covered.clear()
            self._evidence.clear()
            self._alive_at = -math.inf

    def cover(self, workflow_id: str | None) -> None:
        """A listener registered for a workflow's events (``None``: every workflow)."""
        self._covered[workflow_id] += 1
        self.alive()

    def uncover(self, workflow_id: str | None) -> None:
        """A listener's registration for a workflow's events was deleted."""
        if self._covered[workflow_id] <= 1:
            del self._covered[workflow_id]
        else:
            self._covered[workflow_id] -= 1

    def alive(self) -> None:
        """A sign that deliveries arrive: a registration, or an accepted delivery."""
        self._alive_at = self.clock.monotonic()

    def hint(
        self, run_id: str, workflow_id: str | None, *, final: bool, relayed: bool = False
    ) -> None:
        """An event about run ``run_id``; ``final``: it says the run finished.

        ``relayed``: it came from another process (so it is not passed on again)."""
        self.alive()
        if not relayed and self.relay is not None:
            self.relay(run_id, workflow_id, final)
        if workflow_id is not None and len(self._evidence) < HINT_MEMORY:
            self._evidence.add(workflow_id)
        was_final = self._final.pop(run_id, False)
        self._final[run_id] = final or was_final
        if len(self._final) > self._memory:
            self._final.popitem(last=False)
        if final:
            for callback in list(self._subscribers.get(run_id, ())):
                callback(run_id)

    # -- read by waits ------------------------------------------------------------------

    def watching(self, workflow_id: str, policy: PollPolicy) -> bool:
        """Whether a live listener receives this workflow's events."""
        if not self.listeners:
            return False
        if self.clock.monotonic() - self._alive_at > policy.safety_interval:
            return False
        return (
            None in self._covered or workflow_id in self._covered or workflow_id in self._evidence
        )

    def first_poll_in(self, target: Target[Any], policy: PollPolicy) -> float:
        """Seconds until a new wait's first poll: at once, unless events will tell."""
        if not self.watching(target.workflow_id, policy):
            return 0.0
        if self._final.get(target.run_id, False):
            return 0.0  # an event said it finished already
        started = target.started_at
        recent = started is not None and self.clock.monotonic() - started <= policy.safety_interval
        if target.run_id in self._final or recent:
            # Its events reach the listener (one arrived, or it started just now).
            return policy.safety_interval
        return 0.0  # it may have finished before anyone listened: look now

    def subscribe(self, run_id: str, callback: Callable[[str], None]) -> None:
        """Call ``callback(run_id)`` when an event says the run finished."""
        self._subscribers.setdefault(run_id, []).append(callback)

    def unsubscribe(self, run_id: str, callback: Callable[[str], None]) -> None:
        """Stop calling ``callback`` for ``run_id`` (a no-op if it was not subscribed)."""
        callbacks = self._subscribers.get(run_id)
        if callbacks is None:
            return
        try:
            callbacks.remove(callback)
        except ValueError:
            return
        if not callbacks:
            del self._subscribers[run_id]


def _timeout_error(
    target: Target[Any], kind: RunKind[Any], last: Any, time_limit: float | None
) -> PollTimeoutError:
    seen = f"last status {kind.status(last)}" if last is not None else "never read"
    return PollTimeoutError(
        f"{target.label}: not finished within the {time_limit:g} s timeout ({seen})",
        run=last,
        run_id=target.run_id,
        timeout=time_limit if time_limit is not None else math.inf,
    )


def transient(error: CopyAIError) -> bool:
    """Whether another poll may well succeed where this one failed."""
    if isinstance(error, (APIConnectionError, InvalidResponseError, ServerError, RateLimitError)):
        return True
    return isinstance(error, APIStatusError) and error.status == 408


def _not_before(error: CopyAIError) -> float:
    """The least a next poll must wait after ``error`` (a 429's Retry-After), in seconds."""
    retry_after = error.retry_after if isinstance(error, RateLimitError) else None
    return retry_after or 0.0


def _missed_poll(
    target: Target[Any], error: CopyAIError, failures: int, policy: PollPolicy, pause: float
) -> None:
    logger.warning(
        "%s: a poll failed (%s); polling again in %.1f s (%d in a row; the wait gives up after %d)",
        target.label,
        error,
        pause,
        failures,
        policy.max_failed_polls + 1,
    )


def _gave_up(
    target: Target[Any], kind: RunKind[Any], last: Any, failures: int, error: CopyAIError
) -> PollFailedError:
    seen = f"last status {kind.status(last)}" if last is not None else "never read"
    gave_up = PollFailedError(
        f"{target.label}: {failures} polls in a row failed ({seen}); the last: {error}",
        run=last,
        run_id=target.run_id,
        failures=failures,
    )
    gave_up.__cause__ = error
    return gave_up


async def bounded(call: Callable[[], Awaitable[R]], deadline: float | None, clock: Clock) -> R:
    """Await ``call()`` within the deadline; past it, raise :class:`DeadlineExceeded`.

    Waits inside the call (retry backoff, pacing, the shared pause) see the deadline
    through :data:`DEADLINE` and stop at it; a request still in flight is cancelled.
    """
    token = DEADLINE.set(deadline)
    try:
        if deadline is None:
            return await call()
        remaining = deadline - clock.monotonic()
        if remaining > 0:
            with anyio.move_on_after(remaining):
                return await call()
        raise DeadlineExceeded()
    finally:
        DEADLINE.reset(token)


def _warn_unknown(target: Target[Any], kind: RunKind[Any], run: Any) -> None:
    logger.warning(
        "%s has status %r, which the API does not document; still polling it",
        target.label,
        kind.status(run),
    )


async def _rest_or_hint(
    rest: Callable[[float], Awaitable[None]], seconds: float, hinted: asyncio.Event | None
) -> bool:
    """Sleep ``seconds``, or less if ``hinted`` is set meanwhile; True if it was."""
    if hinted is None:
        await rest(seconds)
        return False
    if hinted.is_set():
        return True
    sleeper = asyncio.ensure_future(rest(seconds))
    waiter = asyncio.ensure_future(hinted.wait())
    try:
        await asyncio.wait((sleeper, waiter), return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait([sleeper, waiter])
    if not hinted.is_set() and not sleeper.cancelled() and sleeper.exception() is not None:
        raise sleeper.exception()  # type: ignore[misc]  # the client closed under the nap
    return hinted.is_set()


async def observe(
    target: Target[R],
    *,
    kind: RunKind[R],
    policy: PollPolicy,
    clock: Clock,
    rng: random.Random,
    deadline: float | None,
    time_limit: float | None,
    nap: Callable[[float], Awaitable[None]] | None = None,
    hints: RunHints | None = None,
) -> AsyncGenerator[R, None]:
    """Yield every reading of one run until it is terminal (the last one yielded).

    ``nap`` sleeps between polls (the client's, which ends early if it closes). With
    ``hints``, an event saying the run finished cuts a sleep short (see
    :class:`RunHints`)."""
    rest = nap or clock.sleep
    if hints is not None and not hints.listeners:
        hints = None  # no listener: nothing will hint (one started later is not used)
    hinted = asyncio.Event()

    def on_hint(_run_id: str) -> None:
        hinted.set()

    if hints is not None:
        hints.subscribe(target.run_id, on_hint)

    async def pause_for(seconds: float) -> tuple[bool, bool]:
        """Sleep (cut short by an event); returns (woken by an event, out of time)."""
        cut = False
        if deadline is not None:
            remaining = deadline - clock.monotonic()
            if seconds >= remaining:
                seconds, cut = max(remaining, 0.0), True
        listening = hints is not None and hints.listeners > 0
        if cut and not listening and seconds <= 0:
            return False, True
        woke = await _rest_or_hint(rest, seconds, hinted if listening else None)
        return woke, cut and not woke

    last: R | None = None
    attempt = 0
    warned = False
    failures = 0
    last_failure: CopyAIError | None = None  # of the current streak of failed polls
    try:
        first = 0.0 if hints is None else hints.first_poll_in(target, policy)
        woke = False
        if first > 0:
            woke, out_of_time = await pause_for(first)
            if out_of_time:
                raise _timeout_error(target, kind, last, time_limit)
        while True:
            hinted_poll = woke
            hinted.clear()  # an event from now on is news to this poll
            missed: CopyAIError | None = None
            try:
                run: R | None = await bounded(target.fetch, deadline, clock)
            except NotFoundError:
                if not target.in_grace(clock.monotonic()):
                    raise
                run = None  # started moments ago and not readable yet
            except DeadlineExceeded as exc:
                # A poll cut off by the deadline says nothing; the streak before it may.
                raise _timeout_error(target, kind, last, time_limit) from (
                    exc.__cause__ or last_failure
                )
            except CopyAIError as exc:
                if not transient(exc):
                    raise
                failures += 1
                if failures > policy.max_failed_polls:
                    raise _gave_up(target, kind, last, failures, exc) from exc
                run, missed, last_failure = None, exc, exc
            if run is not None:
                failures, last_failure = 0, None
                last = run
                yield run
                if kind.is_terminal(run):
                    return
                if not warned and kind.is_unknown(run):
                    warned = True
                    _warn_unknown(target, kind, run)
            if hinted.is_set() and missed is None:
                pause = 0.0  # an event came while the poll was in flight: look again
            elif hinted_poll:
                # The API does not confirm the event (yet): one more look soon, in case
                # its reads lag its events; then the usual pace.
                pause = policy.delay(0, rng)
            elif hints is not None and hints.watching(target.workflow_id, policy):
                pause = policy.safety_delay(attempt, rng)
            else:
                pause = policy.delay(attempt, rng)
            attempt += 1
            if missed is not None:
                pause = max(pause, _not_before(missed))
                _missed_poll(target, missed, failures, policy, pause)
            woke, out_of_time = await pause_for(pause)
            if out_of_time:
                # If polls were failing when time ran out, the last failure says why.
                raise _timeout_error(target, kind, last, time_limit) from last_failure
    finally:
        if hints is not None:
            hints.unsubscribe(target.run_id, on_hint)


async def watch(target: Target[R], *, kind: RunKind[R], **options: Any) -> AsyncGenerator[R, None]:
    """Yield the first reading, then each whose status differs from the one before."""
    previous: str | None = None
    async with aclosing(observe(target, kind=kind, **options)) as readings:
        async for run in readings:
            status = kind.status(run)
            if status != previous:
                previous = status
                yield run


async def wait(
    target: Target[R],
    *,
    kind: RunKind[R],
    raise_on_failure: bool,
    on_status: Callable[[R], Any] | None,
    **options: Any,
) -> R:
    """Poll one run until it is terminal; call ``on_status`` at each change."""
    final: R | None = None
    async with aclosing(watch(target, kind=kind, **options)) as changes:
        async for run in changes:
            final = run
            if on_status is not None:
                result = on_status(run)
                if inspect.isawaitable(result):
                    await result
    if final is None:  # pragma: no cover - watch ends only after a terminal reading
        raise RuntimeError("the poll ended without a reading")
    if raise_on_failure and kind.is_failed(final):
        detail = kind.failure_detail(final)
        raise RunFailedError(
            f"{target.label} ended {kind.status(final)}" + (f": {detail}" if detail else ""),
            run=final,
            run_id=target.run_id,
        )
    return final


@attrs.define(eq=False)
class _Track(Generic[R]):
    target: Target[R]
    order: int
    attempt: int = 0
    last: R | None = None
    warned: bool = False
    failures: int = 0  # polls in a row that failed for a passing reason
    last_failure: CopyAIError | None = None  # the last of them, while the streak lasts
    entry: int = -1  # the sequence number of its live heap entry (older ones are stale)
    in_flight: bool = False
    hinted: bool = False  # an event said it finished since its poll started
    hinted_poll: bool = False  # its next (or current) poll is an event's verification


async def wait_many(
    targets: Iterable[Target[R]],
    *,
    kind: RunKind[R],
    policy: PollPolicy,
    clock: Clock,
    rng: random.Random,
    deadline: float | None,
    time_limit: float | None,
    concurrency: int,
    on_status: Callable[[R], Any] | None = None,
    nap: Callable[[float], Awaitable[None]] | None = None,
    closing: asyncio.Future[None] | None = None,
    hints: RunHints | None = None,
) -> AsyncGenerator[R, None]:
    """Yield each run once, when seen terminal; then raise the failures as a group.

    ``on_status`` is called with each reading whose status differs from that run's
    reading before (the first reading included). With ``hints``, an event saying a run
    finished makes it due at once (the scheduler's one extra input)."""
    sequence = itertools.count()
    now = clock.monotonic()
    if hints is not None and not hints.listeners:
        hints = None  # no listener: nothing will hint (one started later is not used)
    # Only the heap, the running tasks (and, with hints, ``by_run``) hold a track: a run
    # seen terminal is let go at once, so memory follows the runs still pending, not all
    # the runs ever given. Hence ``targets`` is dropped once the heap is built.
    heap: list[tuple[float, int, _Track[R]]] = []
    by_run: dict[str, _Track[R]] = {}
    poked: list[str] = []
    # Polls run as tasks; each one that ends is put in ``finished`` and wakes the loop
    # (as do events, and the client closing), so a wake costs the same however many
    # polls are in flight.
    finished: list[asyncio.Task[R]] = []
    wakeup: asyncio.Future[None] | None = None
    loop = asyncio.get_running_loop()
    system_clock = isinstance(clock, SystemClock)
    # Polls due close together are sent together: one wake of the loop for many polls,
    # not one each. A poll moves by at most a quarter of its jitter's spread, and 50 ms
    # (25 ms early or late on the default policy's first interval); none with jitter 0.
    quarter = policy.jitter / 4

    def slack(track: _Track[R]) -> float:
        return min(_COALESCE, quarter * policy.interval(track.attempt)) if quarter else 0.0

    def wake(_: object = None) -> None:
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    def on_done(task: asyncio.Task[R]) -> None:
        finished.append(task)
        wake()

    def on_hint(run_id: str) -> None:
        poked.append(run_id)
        wake()

    for i, t in enumerate(targets):
        track = _Track(target=t, order=i, entry=next(sequence))
        first = 0.0
        if hints is not None:
            by_run[t.run_id] = track
            hints.subscribe(t.run_id, on_hint)
            first = hints.first_poll_in(t, policy)
        heap.append((now + first, track.entry, track))
    heapq.heapify(heap)
    targets = ()
    total = len(heap)
    pending = total  # tracks with a live heap entry
    running: dict[asyncio.Task[R], _Track[R]] = {}
    failures: list[tuple[int, CopyAIError]] = []

    def due(track: _Track[R], at: float) -> None:
        nonlocal pending
        if track.entry < 0:
            pending += 1
        track.entry = next(sequence)
        heapq.heappush(heap, (at, track.entry, track))

    def schedule(track: _Track[R], missed: CopyAIError | None = None) -> None:
        if track.hinted and missed is None:
            # An event came while the poll was in flight: look again at once.
            track.hinted, track.hinted_poll = False, True
            due(track, clock.monotonic())
            return
        if track.hinted_poll:
            # The API does not confirm the event (yet): one more look soon, in case its
            # reads lag its events; then the usual pace.
            pause = policy.delay(0, rng)
        elif hints is not None and hints.watching(track.target.workflow_id, policy):
            pause = policy.safety_delay(track.attempt, rng)
        else:
            pause = policy.delay(track.attempt, rng)
        track.hinted_poll = False
        track.attempt += 1
        if missed is not None:
            pause = max(pause, _not_before(missed))
            _missed_poll(track.target, missed, track.failures, policy, pause)
        due(track, clock.monotonic() + pause)

    def done_with(track: _Track[R]) -> None:
        if hints is not None:
            by_run.pop(track.target.run_id, None)
            hints.unsubscribe(track.target.run_id, on_hint)

    if closing is not None:
        closing.add_done_callback(wake)
    try:
        while pending or running:
            now = clock.monotonic()
            if poked:
                for run_id in poked:
                    hinted = by_run.get(run_id)
                    if hinted is None:
                        continue
                    if hinted.in_flight:
                        hinted.hinted = True
                    elif not hinted.hinted_poll:
                        hinted.hinted_poll = True
                        due(hinted, now)
                poked.clear()
            if deadline is not None and now >= deadline:
                # Time is up for every run not seen terminal.
                for task in running:
                    task.remove_done_callback(on_done)
                await cancel_and_wait(list(running))
                late = [*running.values(), *(e[2] for e in heap if e[1] == e[2].entry)]
                running.clear()
                heap.clear()
                pending = 0
                for gone in late:
                    timeout_error = _timeout_error(gone.target, kind, gone.last, time_limit)
                    # Why its last polls failed, if they did.
                    timeout_error.__cause__ = gone.last_failure
                    failures.append((gone.order, timeout_error))
                break
            while heap and heap[0][1] != heap[0][2].entry:
                heapq.heappop(heap)  # stale: the run was made due again, or is done
            while heap and heap[0][0] <= now + slack(heap[0][2]) and len(running) < concurrency:
                _, seq, track = heapq.heappop(heap)
                if seq != track.entry:
                    continue
                track.entry = -1
                pending -= 1
                track.in_flight = True
                track.hinted = False
                task = loop.create_task(
                    bounded(track.target.fetch, deadline, clock),
                    name=f"copyai_async.poll[{track.target.run_id}]",
                )
                task.add_done_callback(on_done)
                running[task] = track
            if not finished and not poked:
                until: float | None = None
                if heap and len(running) < concurrency:
                    until = heap[0][0] + slack(heap[0][2])
                if deadline is not None:
                    until = deadline if until is None else min(until, deadline)
                delay = None if until is None else until - clock.monotonic()
                if delay is not None and delay <= 0:
                    await anyio.lowlevel.checkpoint()
                else:
                    wakeup = loop.create_future()
                    timer: asyncio.TimerHandle | asyncio.Task[None] | None = None
                    if delay is not None:
                        if system_clock:
                            timer = loop.call_later(delay, wake)
                        else:
                            timer = loop.create_task(
                                clock.sleep(delay), name="copyai_async.poll-timer"
                            )
                            timer.add_done_callback(wake)
                    try:
                        await wakeup
                    finally:
                        wakeup = None
                        if isinstance(timer, asyncio.Task):
                            timer.remove_done_callback(wake)
                            await cancel_and_wait([timer])
                        elif timer is not None:
                            timer.cancel()
            if closing is not None and closing.done():
                raise ClientClosedError("the client was closed while this operation was waiting")
            done, finished[:] = list(finished), []
            for task in done:
                track = running.pop(task)
                track.in_flight = False
                error = task.exception()
                if error is None:
                    run = task.result()
                    track.failures, track.last_failure = 0, None
                    if on_status is not None and (
                        track.last is None or kind.status(track.last) != kind.status(run)
                    ):
                        result = on_status(run)
                        if inspect.isawaitable(result):
                            await result
                    track.last = run
                    if kind.is_terminal(run):
                        done_with(track)
                        yield run
                        continue
                    if not track.warned and kind.is_unknown(run):
                        track.warned = True
                        _warn_unknown(track.target, kind, run)
                    schedule(track)
                elif isinstance(error, NotFoundError) and track.target.in_grace(clock.monotonic()):
                    schedule(track)  # started moments ago and not readable yet
                elif isinstance(error, DeadlineExceeded):
                    timeout_error = _timeout_error(track.target, kind, track.last, time_limit)
                    timeout_error.__cause__ = error.__cause__ or track.last_failure
                    failures.append((track.order, timeout_error))
                    done_with(track)
                elif isinstance(error, CopyAIError) and transient(error):
                    track.failures += 1
                    track.last_failure = error
                    if track.failures > policy.max_failed_polls:
                        gave_up = _gave_up(track.target, kind, track.last, track.failures, error)
                        failures.append((track.order, gave_up))
                        done_with(track)
                    else:
                        schedule(track, missed=error)  # a missed poll: poll again on schedule
                elif isinstance(error, CopyAIError):
                    failures.append((track.order, error))
                    done_with(track)
                else:
                    raise error
    finally:
        if closing is not None:
            closing.remove_done_callback(wake)
        for task in running:
            task.remove_done_callback(on_done)
        await cancel_and_wait(list(running))
        if hints is not None:
            for run_id in by_run:
                hints.unsubscribe(run_id, on_hint)
    if failures:
        failures.sort(key=lambda item: item[0])
        raise ExceptionGroup(
            f"{len(failures)} of {total} runs could not be waited for",
            [error for _, error in failures],
        )


def check_timeout(timeout: Any) -> float | None:
    """``timeout`` as seconds, or ``None``; raises TypeError/ValueError naming it."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(
            f"timeout must be a number of seconds or None, got {type(timeout).__name__}"
        )
    if not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
    return float(timeout)


def _check_policy(policy: Any) -> PollPolicy:
    if policy is None:
        return PollPolicy()
    if not isinstance(policy, PollPolicy):
        raise TypeError(f"policy must be a PollPolicy, got {type(policy).__name__}")
    return policy


class Waiter(Generic[R]):
    """The waits of one client: argument checks, deadlines, and the runs it started.

    Args:
        kind: what the API's runs look like to the poller.
        clock: the client's clock.
        budget: the client's budget: its clock, and its naps that end when it closes.
        started_memory: how many recently started runs to remember for the 404 grace.
    """

    def __init__(self, *, kind: RunKind[R], budget: Budget, started_memory: int = 10_000) -> None:
        self.kind = kind
        self.budget = budget
        self.clock = budget.clock
        self.rng = random.Random()
        self._started: dict[str, float] = {}
        self._memory = started_memory
        self.hints = RunHints(self.clock)

    def note_started(self, key: str) -> None:
        """Remember that this client started the run ``key`` now (for the 404 grace)."""
        self._started.pop(key, None)
        self._started[key] = self.clock.monotonic()
        while len(self._started) > self._memory:
            del self._started[next(iter(self._started))]

    def target(
        self,
        policy: PollPolicy,
        *,
        workflow_id: str,
        run_id: str,
        read: Callable[[str, str], Awaitable[R]],
        noun: str,
    ) -> Target[R]:
        started = self._started.get(f"{workflow_id}\0{run_id}")
        grace = None if started is None else started + policy.not_found_grace
        return Target(
            workflow_id=workflow_id,
            run_id=run_id,
            read=read,
            noun=noun,
            grace_until=grace,
            started_at=started,
        )

    def deadline(self, timeout: float | None) -> float | None:
        return None if timeout is None else self.clock.monotonic() + timeout

    def _options(
        self, policy: PollPolicy, timeout: float | None, deadline: float | None
    ) -> dict[str, Any]:
        return {
            "policy": policy,
            "clock": self.clock,
            "rng": self.rng,
            "deadline": self.deadline(timeout) if deadline is None else deadline,
            "time_limit": timeout,
            "nap": self.budget.nap,
            "hints": self.hints,
        }

    async def wait(
        self,
        make_target: Callable[[PollPolicy], Target[R]],
        *,
        time_limit: Any,
        policy: Any,
        raise_on_failure: bool,
        on_status: Any,
        deadline: float | None = None,
    ) -> R:
        if on_status is not None and not callable(on_status):
            raise TypeError(f"on_status must be callable or None, got {type(on_status).__name__}")
        timeout = check_timeout(time_limit)
        policy = _check_policy(policy)
        return await wait(
            make_target(policy),
            kind=self.kind,
            raise_on_failure=bool(raise_on_failure),
            on_status=on_status,
            **self._options(policy, timeout, deadline),
        )

    def watch(
        self, make_target: Callable[[PollPolicy], Target[R]], *, timeout: Any, policy: Any
    ) -> AsyncGenerator[R, None]:
        timeout = check_timeout(timeout)
        policy = _check_policy(policy)
        target = make_target(policy)
        # The deadline starts when iteration does, not when the generator is made.
        return _deferred(
            lambda: watch(target, kind=self.kind, **self._options(policy, timeout, None))
        )

    def wait_many(
        self,
        make_targets: Callable[[PollPolicy], list[Target[R]]],
        *,
        concurrency: Any,
        timeout: Any,
        policy: Any,
        on_status: Any = None,
    ) -> AsyncGenerator[R, None]:
        if on_status is not None and not callable(on_status):
            raise TypeError(f"on_status must be callable or None, got {type(on_status).__name__}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int):
            raise TypeError(f"concurrency must be an int, got {type(concurrency).__name__}")
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise ValueError(
                f"concurrency must be between 1 and {MAX_CONCURRENCY}, got {concurrency}"
            )
        timeout = check_timeout(timeout)
        policy = _check_policy(policy)
        targets = make_targets(policy)
        return _deferred(
            lambda: wait_many(
                targets,
                kind=self.kind,
                concurrency=concurrency,
                on_status=on_status,
                closing=self.budget.closing_future(),
                **self._options(policy, timeout, None),
            )
        )


async def _deferred(make: Callable[[], AsyncGenerator[R, None]]) -> AsyncGenerator[R, None]:
    """An async generator that builds the real one on first iteration (so its deadline
    starts then) and closes it with itself."""
    inner = make()
    del make  # what it captured (e.g. every target of a wait) is the inner generator's now
    async with aclosing(inner):
        async for item in inner:
            yield item
