"""Poll policy, single-run wait/watch, and the many-run scheduler.

The poller knows nothing of any one API: it is given how to fetch a run and a
:class:`RunKind` saying which statuses end it (and which mean failure, or are unknown).

Timing: the first poll is immediate; then sleeps grow from ``initial`` by ``multiplier``
up to ``max_interval``, each drawn within ``jitter / 2`` of its interval either way (so
the mean sleep, and the request rate, are the interval's, and no sleep exceeds
``max_interval * (1 + jitter / 2)``). A ``timeout`` is one deadline on the client's
monotonic clock over requests, retries, pauses and sleeps: a sleep that would cross it
ends at it, and a request in flight at it is cancelled. Before it, unless a reading is
fresh, the run is polled once more (:data:`FINAL_LOOK`), so that a timeout never reports
a status from long before.

Failures: a poll is a read, so a poll that fails for a passing reason (5xx, 429, a
dropped connection, a timeout, an answer that cannot be read), after the request's own
retries, is a missed poll: logged at WARNING, and the next poll comes on schedule (no
sooner than a 429's ``Retry-After``). More than ``max_failed_polls`` in a row end the wait
with :class:`PollFailedError`, carrying the last good reading. Failures that another poll
would only repeat (400, 401, 403, a 404 outside the grace window, 422) end it at once.

Events: while a webhook listener of the client is live (see :class:`RunHints`), an event
saying a run finished makes that run due for a poll at once, and the poll decides (an
event is a hint, never a result); a poll that contradicts it is followed by a few quick
re-checks (``PollPolicy.rechecks``), in case the API's reads lag its events. Runs whose events
the listener receives are polled only every ``safety_interval`` meanwhile, so that lost
deliveries still end every wait. Events never delay a run's scheduled polls.

Each run's timing is decided by a :class:`RunPoll`, a state machine without I/O: fed an
outcome (a reading, a failure, an event, the deadline), it says what happens next (due
at a time, done, or failed). One driver, the :class:`Scheduler`, sends the polls of
every wait, of one run or of 10,000, waited for or watched: a heap of (due time, run)
and at most ``concurrency`` polls in flight, each a short-lived task. Waiting on 10,000
runs costs 10,000 small heap entries, not 10,000 sleeping tasks; the scheduler wakes
only when a poll ends, an event arrives or the earliest run falls due. The
:class:`Waiter` checks a wait's arguments and builds its :class:`WaitOptions`.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import heapq
import inspect
import itertools
import logging
import math
import random
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from contextlib import aclosing
from typing import Any, Generic, TypeAlias, TypeVar

import anyio
import attrs

from ._budget import DEADLINE, Budget, DeadlineExceeded
from ._check import boolean, int_in, number, positive
from ._clock import Clock, SystemClock, loop_time
from ._durations import DurationBook, Plan
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
from ._sweep import PAGE_SIZE, Listing, Sweep
from ._tasks import cancel_and_wait

if sys.version_info < (3, 11):  # pragma: no cover - version-dependent
    from exceptiongroup import ExceptionGroup

__all__ = [
    "DEFAULT_CONCURRENCY",
    "FINAL_LOOK",
    "PollPolicy",
    "RunHints",
    "RunKind",
    "RunPoll",
    "Scheduler",
    "Target",
    "WaitOptions",
    "Waiter",
]

logger = logging.getLogger("copyai_async")

R = TypeVar("R")

DEFAULT_CONCURRENCY = 16
"""Polls of one ``wait_for_runs`` in flight at once, by default."""

_COALESCE = 0.05  # seconds: the most a poll of many runs is moved to go with others
# Seconds a due time is met early rather than slept for: a loop's clock may not move by
# less (looptime's virtual time rounds), and a sleep that moves no time would spin.
_EARLY = 1e-3

MAX_CONCURRENCY = 1_000
MAX_FAILED_POLLS = 1_000_000
MAX_RECHECKS = 10


def _finite_positive(name: str) -> Callable[[Any, Any, float], None]:
    def check(_instance: Any, _attribute: Any, value: float) -> None:
        positive(name, value)

    return check


def _boolean(name: str) -> Callable[[Any, Any, Any], None]:
    def check(_instance: Any, _attribute: Any, value: Any) -> None:
        boolean(name, value)

    return check


def _rechecks(value: Any) -> tuple[float, ...]:
    """``rechecks`` as a tuple of seconds, checked."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"rechecks must be a sequence of seconds, got {type(value).__name__}")
    pauses = tuple(value)
    if len(pauses) > MAX_RECHECKS:
        raise ValueError(f"rechecks must hold at most {MAX_RECHECKS} pauses, got {len(pauses)}")
    for pause in pauses:
        if isinstance(pause, bool) or not isinstance(pause, (int, float)):
            raise TypeError(f"rechecks must hold numbers, got {type(pause).__name__}")
        if not (math.isfinite(pause) and pause > 0):
            raise ValueError(f"rechecks must hold finite numbers > 0, got {pause!r}")
    return tuple(float(pause) for pause in pauses)


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
        max_failed_polls: scheduled polls in a row that may fail for a passing reason
            (5xx, 429, connection, timeout, an unreadable answer; each after the
            request's own retries) before the wait gives up with :class:`PollFailedError`.
            Each is logged at WARNING and the wait polls again on schedule; 0 gives up at
            the first. Polls an event caused do not count (a stranger's deliveries must
            not end a wait).
        safety_interval: while a webhook listener of the client is live and receives
            the events of the run's workflow, the run is polled only this often (and an
            event that says it finished makes it due at once); so a lost delivery
            delays a wait by at most this much. Jittered like the other sleeps.
        rechecks: seconds between the polls that follow an event the poll it caused
            contradicted (the run read unfinished after an event said it finished):
            the API's reads may lag its events. By default the run is read again 0.5,
            1.5 and 3.5 s after that reading, then only on its schedule; so one
            delivery, forged or not, costs a wait at most ``1 + len(rechecks)`` polls,
            and never moves its scheduled polls. At most 10; ``()`` for none.
        adaptive: learn how long each workflow's runs take, and once 20 of its runs
            have been seen end, place the polls of a new wait on what was learned:
            few polls, most runs seen ended within a small delay (see
            ``client.durations(workflow_id)``). No gap
            between polls ever exceeds ``max_interval``, and once a run is older than
            the shortest 5% of the learned durations, no poll comes after the one this
            backoff would make next: the learned schedule skips the backoff's early
            looks and adds looks where runs end, so a run that ends later (a workflow
            that got slower) is seen end no later than without learning. Runs are aged
            from their start (this client started them) or their ``createdAt`` (on
            this machine's clock, corrected by what this client's starts showed of the
            server's). Turned off, every wait follows the backoff above.
        sweep: let a wait on many runs of one workflow read the newest pages of the
            workflow's listing (``GET /workflow/{id}/run?size=100``), where one page
            answers for up to 100 of its runs, instead of reading each run on its own,
            wherever that costs fewer requests (see "Sweeps" in the waiting guide).
            Off, every run is read on its own.

    Raises:
        ValueError: a non-positive or non-finite value, ``multiplier < 1``,
            ``max_interval < initial``, ``jitter`` outside 0..1, a negative
            ``max_failed_polls``, or more than 10 ``rechecks``.
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
    rechecks: tuple[float, ...] = attrs.field(default=(0.5, 1.0, 2.0), converter=_rechecks)
    adaptive: bool = attrs.field(default=True, validator=_boolean("adaptive"))
    sweep: bool = attrs.field(default=True, validator=_boolean("sweep"))

    def __attrs_post_init__(self) -> None:
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier!r}")
        if self.max_interval < self.initial:
            raise ValueError(
                f"max_interval ({self.max_interval!r}) must be >= initial ({self.initial!r})"
            )
        for name in ("jitter", "not_found_grace"):
            number(name, getattr(self, name))
        if not (math.isfinite(self.jitter) and 0 <= self.jitter <= 1):
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter!r}")
        if not (math.isfinite(self.not_found_grace) and self.not_found_grace >= 0):
            raise ValueError(f"not_found_grace must be >= 0, got {self.not_found_grace!r}")
        int_in("max_failed_polls", self.max_failed_polls, 0, MAX_FAILED_POLLS)

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
        created_at: when the run was created, in Unix seconds, if the API says (to age
            runs this client did not start, for :class:`PollPolicy`'s ``adaptive``).
    """

    status: Callable[[R], str]
    is_terminal: Callable[[R], bool]
    is_failed: Callable[[R], bool]
    is_unknown: Callable[[R], bool]
    failure_detail: Callable[[R], str | None] = lambda _run: None
    created_at: Callable[[R], float | None] = lambda _run: None


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


@attrs.define
class _Claim:
    """What the latest events say about one run."""

    workflow_id: str | None  # the workflow the events named
    final: bool  # an event said the run finished, and no poll has contradicted it since


class RunHints:
    """What webhook events say about runs: the one extra input of a client's waits.

    Listeners feed it; waits read it, and report back what their polls saw. An event is
    a hint, never a result: an event saying a run finished makes that run due for a poll
    at once, and the poll decides. A poll sent after such an event that reads the run
    unfinished *contradicts* it: the claim is dropped (so the listener takes the same
    delivery again as news, not as a repeat).

    A listener is *live* from its registration and each accepted delivery, until
    ``safety_interval`` passes without one. While a live listener receives a workflow's
    events (it registered for them, or a poll has confirmed a "finished" event of that
    workflow),
    waits on that workflow's runs poll only every ``safety_interval``; a run the client
    just started is not even polled first. An unconfirmed event changes no wait's pace.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        memory: int = HINT_MEMORY,
        relay: Callable[[str, str | None, bool], None] | None = None,
    ) -> None:
        self.clock = clock
        self.listeners: int = 0
        self._covered: collections.Counter[str | None] = collections.Counter()
        self._evidence: set[str] = set()  # workflows whose events a poll has confirmed
        self._alive_at = -math.inf
        self._claims: collections.OrderedDict[str, _Claim] = collections.OrderedDict()
        self._subscribers: dict[str, list[Callable[[str], None]]] = {}
        self._memory = memory
        self.relay = relay
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
        claim = self._claims.pop(run_id, None)
        if claim is None:
            claim = _Claim(workflow_id=workflow_id, final=final)
        else:
            claim.final = claim.final or final
            claim.workflow_id = workflow_id if workflow_id is not None else claim.workflow_id
        self._claims[run_id] = claim
        if len(self._claims) > self._memory:
            self._claims.popitem(last=False)
        if final:
            for callback in list(self._subscribers.get(run_id, ())):
                callback(run_id)

    def claims_final(self, run_id: str) -> bool:
        """Whether an event said the run finished, and no poll has contradicted it since."""
        claim = self._claims.get(run_id)
        return claim is not None and claim.final

    # -- read (and told) by waits ---------------------------------------------------------

    def observed(self, run_id: str, workflow_id: str, *, finished: bool, checking: bool) -> None:
        """A wait read the run: ``finished`` or not; ``checking``: its poll was sent after
        an event said the run finished.

        A finished run whose event said so (naming this workflow) confirms that the
        workflow's events reach the listener; nothing else does (a run's existence is
        no proof: anyone with the listener's URL may name it). A poll sent after a
        "finished" event that reads the run unfinished contradicts the event."""
        claim = self._claims.get(run_id)
        if claim is None or not claim.final:
            return
        if finished:
            if claim.workflow_id == workflow_id and len(self._evidence) < self._memory:
                self._evidence.add(workflow_id)
        elif checking:
            claim.final = False

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
        """Seconds until a new wait's first poll: at once, unless the client started the
        run moments ago and a live listener receives its workflow's events."""
        if not self.watching(target.workflow_id, policy) or self.claims_final(target.run_id):
            return 0.0  # nobody will tell, or an event said it finished already: look now
        started = target.started_at
        if started is not None and self.clock.monotonic() - started <= policy.safety_interval:
            return policy.safety_interval  # its events will come: no need to look first
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


_SKEW = 2.0  # seconds a run's createdAt may be ahead of this machine's clock
_OLDEST = 86_400.0  # seconds: a run older than this when first read is not aged

FINAL_LOOK = 1.0
"""Seconds before a wait's deadline at which it polls once more (a quarter of the time it
was given, if that is less), unless it read the run at most that long before: a
timeout reports the run as it was at most about two of these before the deadline,
unless that last poll failed (the error then says how old its reading is)."""


class RunPoll(Generic[R]):
    """One run's wait, without I/O: when to poll it next, and what each outcome means.

    The :class:`Scheduler` sleeps, sends the polls and feeds the outcomes in (a reading,
    a failure, an event, the deadline); this decides what happens next: due at
    :meth:`due`, done, or failed with an error. Polls have three sources:

    - the *schedule*: the policy's growing intervals (the safety interval while a live
      listener receives the events of the run's workflow); only its own polls move it;
    - *events*: an event saying the run finished makes it due at once (one arriving
      while a poll is in flight, once that poll is back). A poll that contradicts the
      event is followed by the policy's ``rechecks``. None of these delays the schedule;
    - the *final look*: at :data:`FINAL_LOOK` before the deadline, unless a reading is
      that fresh.

    Args:
        target: the run.
        kind: how to read its status.
        policy: the poll timing.
        rng: draws the jitter.
        hints: what webhook events say (``None``: no listener).
        now: the clock's time as the wait begins.
        deadline: the wait's deadline on the clock, or ``None``.
        time_limit: the timeout, in seconds, for messages (``None``: no timeout).
        durations: what the client learned of run durations, to place polls by and to
            tell how long this run took (``None``: the policy's backoff alone).
        wall: the machine's clock in Unix seconds, to age a run by its ``createdAt``
            (``None``: only runs this client started are aged).
    """

    # One per run waited on (10,000 for a wait on 10,000 runs): kept small.
    __slots__ = (
        "_begin",
        "_book",
        "_checking",
        "_claim_open",
        "_event_at",
        "_final_at",
        "_for_schedule",
        "_hints",
        "_lead",
        "_looked",
        "_low",
        "_origin",
        "_placed",
        "_quiet_until",
        "_read_at",
        "_rng",
        "_scheduled_at",
        "_sent_at",
        "_since_event",
        "_time_limit",
        "_unsend",
        "_wall",
        "_warned",
        "attempt",
        "failures",
        "in_flight",
        "kind",
        "last",
        "last_failure",
        "policy",
        "target",
    )

    def __init__(
        self,
        target: Target[R],
        *,
        kind: RunKind[R],
        policy: PollPolicy,
        rng: random.Random,
        hints: RunHints | None,
        now: float,
        deadline: float | None,
        time_limit: float | None,
        durations: DurationBook | None = None,
        wall: Callable[[], float] | None = None,
    ) -> None:
        self.target = target
        self.kind = kind
        self.policy = policy
        self._rng = rng
        self._hints = hints
        self._time_limit = time_limit
        # Learning: the run's start on the clock (None: not known yet), and the latest
        # age at which it was seen unfinished. Only a wait that began while the run was
        # young teaches (None: this one does not): of runs first seen at an older age,
        # only the long ones would be seen unfinished, and the estimate would lean long.
        self._book = durations if policy.adaptive else None
        self._wall = wall
        self._origin = target.started_at if self._book is not None else None
        self._low: float | None = None
        if self._origin is not None and now - self._origin <= policy.initial:
            self._low = 0.0  # started moments ago: unfinished at its start
        self._sent_at = now
        self._begin = now
        # A wait keeps the schedule it began with: one begun before its workflow's runs
        # were learned polls on the backoff to the end (it paid for the early looks
        # already, and a lot started together would otherwise follow a schedule
        # learned from its own first, shortest, runs).
        model = None if self._book is None else self._book.model(target.workflow_id)
        self._placed = model is not None and model.plan(policy) is not None
        self.last: R | None = None
        """The latest reading of the run (``None``: never read)."""
        self.attempt = 0
        """Polls the schedule has made so far."""
        self.failures = 0
        """Polls in a row that failed for a passing reason."""
        self.last_failure: CopyAIError | None = None
        """The last of those failures, while the streak lasts."""
        self.in_flight = False
        self._read_at = -math.inf
        self._warned = False
        self._scheduled_at = now
        self._event_at: float | None = None  # the next poll an event asks for
        self._quiet_until = -math.inf  # no poll of any source before (a Retry-After)
        # Polls sent since the latest event saying the run finished (None: no event):
        # the check, then the re-checks, bounded by len(policy.rechecks).
        self._since_event: int | None = None
        self._claim_open = False  # that event is not yet checked by a poll that read the run
        if hints is not None:
            self._scheduled_at += hints.first_poll_in(target, policy)
            if hints.claims_final(target.run_id):
                self._since_event, self._claim_open = 0, True
        if self._scheduled_at == now and self._since_event is None:
            self._scheduled_at += self._planned_first(now)
        self._final_at = math.inf
        self._lead = 0.0
        if deadline is not None:
            self._lead = min(FINAL_LOOK, max(0.0, deadline - now) / 4)
            self._final_at = deadline - self._lead
        self._looked = False  # the final look went out
        self._unsend: tuple[bool, float | None, int | None, float] = (False, None, None, now)
        # What the poll in flight is for (set when it goes out).
        self._for_schedule = False
        self._checking = False  # it checks an event that said the run finished

    # -- when --------------------------------------------------------------------------

    def due(self) -> float:
        """When the next poll is due, on the clock (past the deadline: none is)."""
        at = self._scheduled_at
        if self._event_at is not None and self._event_at < at:
            at = self._event_at
        if at > self._final_at and not self._looked and self._read_at < self._final_at - self._lead:
            at = self._final_at
        return max(at, self._quiet_until)

    def _plan(self) -> Plan | None:
        """Where to poll by what was learned (``None``: not ready, or the run's start
        is not known: the policy's backoff)."""
        book, origin = self._book, self._origin
        if book is None or origin is None or not self._placed:
            return None
        model = book.model(self.target.workflow_id)
        return None if model is None else model.plan(self.policy)

    def _planned_first(self, now: float) -> float:
        """Seconds to the first poll of a new wait: at once, unless what was learned
        says the run (started moments ago) cannot have ended yet."""
        plan = self._plan()
        if plan is None or self._origin is None:
            return 0.0
        first = plan.first(now - self._origin, self._rng)
        return 0.0 if first is None else first

    def _pause(self, now: float) -> float:
        """The schedule's next interval, jittered."""
        hints = self._hints
        if hints is not None and hints.watching(self.target.workflow_id, self.policy):
            return self.policy.safety_delay(self.attempt, self._rng)
        plan = self._plan()
        if plan is not None and self._origin is not None:
            return plan.gap(now - self._origin, self._rng, elapsed=now - self._begin)
        return self.policy.delay(self.attempt, self._rng)

    def _learn(self, run: R, now: float, finished: bool) -> None:
        """Note what this reading says of the run's duration (see :mod:`._durations`)."""
        book = self._book
        if book is None:
            return
        if self._origin is None:
            created = self.kind.created_at(run) if self._wall is not None else None
            age = None if created is None or self._wall is None else self._wall() - created
            if age is None or not -_SKEW <= age <= _OLDEST:
                self._book = None  # its start is not known: nothing to learn or plan by
                return
            self._origin = now - max(age, 0.0)
            if self._sent_at - self._origin <= self.policy.initial:
                self._low = 0.0  # first read young: this wait teaches
        if self._low is None:
            return
        if finished:
            target = self.target
            book.observe(target.workflow_id, self._low, now - self._origin, run_id=target.run_id)
        else:
            self._low = max(self._low, self._sent_at - self._origin)
            book.alive(self.target.workflow_id, self.target.run_id, self._low)

    # -- what happened -----------------------------------------------------------------

    def hint(self, now: float) -> bool:
        """An event says the run finished. Returns True if that made it due at once
        (False while a poll is in flight: it is polled again once that one is back)."""
        self._since_event, self._claim_open = 0, True
        if self.in_flight:
            return False
        self._event_at = now
        return True

    def sent(self, now: float, *, early: bool = True) -> bool:
        """A poll of the run goes out now. Returns whether it stands for the schedule's
        poll. ``early``: it was sent a little before it was due, to go with others, and
        stands for the poll that was due (a sweep's page is not: it stands for the
        schedule's poll only if that was due by now)."""
        self._unsend = (self._looked, self._event_at, self._since_event, self._sent_at)
        due = self.due()
        reach = max(now, due) if early else now
        final = due >= self._final_at and reach >= self._final_at
        self._looked = self._looked or final
        self._for_schedule = final or self._scheduled_at <= reach
        if self._event_at is not None and self._event_at <= reach:
            self._event_at = None
        if self._since_event is not None:
            self._since_event += 1
        self._checking = self._claim_open
        self._sent_at = now
        self.in_flight = True
        return self._for_schedule

    def unsent(self, now: float) -> None:
        """The poll that went out did not read the run after all (a page of the
        listing did not show it): as if it had not gone out, due as it was (and at
        once, if an event came meanwhile)."""
        hinted = self._since_event == 0  # (hint() while it was out; sent() counts from 1)
        self._looked, self._event_at, self._since_event, self._sent_at = self._unsend
        self._for_schedule = self._checking = False
        self.in_flight = False
        if hinted:
            self._since_event, self._event_at = 0, now

    def urgent(self) -> bool:
        """Whether its next poll is one an event asks for (or a re-check after one, or a
        read a page of the listing asked for), not the schedule's."""
        return self._event_at is not None

    def verify(self, now: float) -> None:
        """A page of the listing said the run finished but did not show all a read of it
        would (its output): it is read on its own at once."""
        self._event_at = now if self._event_at is None else min(self._event_at, now)

    def read(self, run: R, now: float) -> bool:
        """The poll read the run. Returns True if it is finished: the wait is over."""
        self.in_flight = False
        self.failures, self.last_failure = 0, None
        self.last, self._read_at = run, now
        finished = self.kind.is_terminal(run)
        self._learn(run, now, finished)
        # It checks the event it went out after, unless another came while it was out
        # (this reading may be older than that one).
        checking = self._checking and self._since_event != 0
        if self._hints is not None:
            target = self.target
            self._hints.observed(
                target.run_id, target.workflow_id, finished=finished, checking=checking
            )
        if finished:
            return True
        if not self._warned and self.kind.is_unknown(run):
            self._warned = True
            _warn_unknown(self.target, self.kind, run)
        if checking:
            self._claim_open = False  # read unfinished: the event is contradicted
        self._reschedule(now, 0.0)
        return False

    def unreadable(self, now: float) -> None:
        """The poll got a 404 for a run started moments ago: not readable yet."""
        self.in_flight = False
        self._reschedule(now, 0.0)

    def missed(self, error: CopyAIError, now: float) -> PollFailedError | None:
        """The poll failed for a passing reason (a scheduled poll is logged at WARNING).
        Returns the error that ends the wait once more than ``max_failed_polls``
        scheduled polls failed in a row; polls an event caused do not count."""
        self.in_flight = False
        self.last_failure = error
        if self._for_schedule:
            self.failures += 1
            if self.failures > self.policy.max_failed_polls:
                return _gave_up(self.target, self.kind, self.last, self.failures, error)
        self._reschedule(now, _not_before(error))
        if self._for_schedule:
            _missed_poll(self.target, error, self.failures, self.policy, self.due() - now)
        else:
            logger.debug("%s: a poll an event caused failed (%s)", self.target.label, error)
        return None

    def _reschedule(self, now: float, not_before: float) -> None:
        """After a poll that did not end the wait: the next poll of each source, none
        before ``not_before`` (a Retry-After holds for every source, whichever asked)."""
        self._quiet_until = now + not_before
        if self._for_schedule:
            self._scheduled_at = now + max(self._pause(now), not_before)
            self.attempt += 1
        since, rechecks = self._since_event, self.policy.rechecks
        if since == 0:
            # An event came while the poll was in flight: its reading may be older.
            self._event_at = now + not_before
        elif since is not None and since <= len(rechecks):
            # Read unfinished (or not read) after the event: the API's reads may lag its
            # events; look again soon, a bounded number of times.
            self._event_at = now + max(rechecks[since - 1], not_before)
        else:
            self._since_event = None  # that event is spent: the schedule goes on alone

    def failed(self, error: CopyAIError | DeadlineExceeded, now: float) -> CopyAIError | None:
        """The poll failed. Returns the error that ends the wait, or ``None``: the run is
        polled again at :meth:`due`.

        A 404 for a run started moments ago means "not readable yet"; the deadline ends
        the wait (with the error that cut the poll off, else the streak's last); a
        passing failure is a missed poll (:meth:`missed`); any other ends it as itself."""
        if isinstance(error, NotFoundError) and self.target.in_grace(now):
            self.unreadable(now)
            return None
        if isinstance(error, DeadlineExceeded):
            # A poll cut off by the deadline says nothing; the streak before it may.
            self.in_flight = False
            timeout_error = self.timeout_error(now)
            timeout_error.__cause__ = error.__cause__ or self.last_failure
            return timeout_error
        if transient(error):
            return self.missed(error, now)
        self.in_flight = False
        return error

    def expired(self, now: float) -> PollTimeoutError:
        """The deadline passed now: the error that ends the wait (caused by the last
        failure, if polls were failing when time ran out)."""
        timeout_error = self.timeout_error(now)
        timeout_error.__cause__ = self.last_failure
        return timeout_error

    def timeout_error(self, now: float) -> PollTimeoutError:
        """The error for a wait whose deadline passed now."""
        last = self.last
        if last is None:
            seen = "never read"
        else:
            seen = f"last status {self.kind.status(last)}, read {now - self._read_at:.1f} s before"
        limit = self._time_limit
        return PollTimeoutError(
            f"{self.target.label}: not finished within the "
            f"{limit if limit is not None else math.inf:g} s timeout ({seen})",
            run=last,
            run_id=self.target.run_id,
            timeout=limit if limit is not None else math.inf,
            age=None if last is None else now - self._read_at,
        )


@attrs.frozen(kw_only=True)
class WaitOptions:
    """How one wait goes, whether on one run or on many: built once per wait by
    :class:`Waiter`, from arguments it has checked, and read by its :class:`Scheduler`.

    Attributes:
        policy: the poll timing.
        clock: the client's clock (every due time and the deadline are on it).
        rng: draws the jitter.
        deadline: the wait's deadline on the clock (``None``: none).
        time_limit: the timeout, in seconds, for messages (``None``: no timeout).
        concurrency: polls of this wait in flight at once.
        coalesce: the most, in seconds, a poll may move to go with others (0: none);
            it is also held to a quarter of its jitter's spread.
        hints: what webhook events say (``None``, or no listener when the wait
            begins: polls alone).
        closing: resolved when the client closes: the wait then ends with
            :class:`ClientClosedError`.
        durations: what the client learned of run durations (``None``: nothing is
            learned, every wait follows the policy's backoff).
        wall: the machine's clock in Unix seconds, to age runs by their ``createdAt``
            (``None``: only runs the client started are aged).
        listing: how to read the runs' listing, for sweeps (``None``, or the policy's
            ``sweep`` off: each run is read on its own).
    """

    policy: PollPolicy
    clock: Clock
    rng: random.Random
    deadline: float | None = None
    time_limit: float | None = None
    concurrency: int = 1
    coalesce: float = 0.0
    hints: RunHints | None = None
    closing: asyncio.Future[None] | None = None
    durations: DurationBook | None = None
    wall: Callable[[], float] | None = None
    listing: Listing[Any] | None = None


@attrs.define(eq=False)
class _Track(Generic[R]):
    """One run of a wait: its state, and its place in the heap."""

    poll: RunPoll[R]
    order: int  # its place among the runs given (errors are raised in this order)
    entry: int = -1  # the sequence number of its live heap entry (older ones are stale)


@attrs.define(eq=False)
class _Swept(Generic[R]):
    """A workflow's sweeps in one wait: the decisions (a :class:`Sweep`), and the runs
    they read: parked until the next sweep, or held by the one in flight (with whether
    the poll it stands for is the schedule's)."""

    sweep: Sweep[R]
    parked: dict[str, _Track[R]] = attrs.Factory(dict)
    held: dict[str, tuple[_Track[R], bool]] = attrs.Factory(dict)
    queue: list[int] = attrs.Factory(list)  # pages to send
    out: int = 0  # pages in flight
    failed: set[int] = attrs.Factory(set)  # pages of this sweep that failed
    looked_again: bool = False  # runs it did not find were looked for once more
    missed: set[str] = attrs.Factory(set)  # runs the latest sweep missed: read on their own
    saved: int = 0  # scheduled polls this sweep's readings stood for
    spent: int = 0  # pages this sweep asked for
    first_due: float = math.inf  # the earliest due scheduled poll of the parked runs
    first_urgent: float = math.inf  # the earliest poll an event asks for
    entry: int = -1  # the sequence number of its timer's live heap entry
    timer_at: float = math.inf


@attrs.frozen
class _PageRead(Generic[R]):
    """A page request in flight."""

    swept: _Swept[R]
    page: int


# A run read, whether its status changed, and whether it is finished.
_Reading: TypeAlias = tuple[R, bool, bool]


class Scheduler(Generic[R]):
    """The one driver of every wait: one run or 10,000, waited for or watched.

    It holds a heap of (due time, run), the polls in flight (at most ``concurrency``,
    each a short-lived task), and the one future it sleeps on, woken by a poll ending,
    an event, the client closing, or the earliest due time (or the deadline). Each
    run's :class:`RunPoll` decides when it is due and what each outcome means; this
    only sends the polls and feeds the outcomes in. Waiting on 10,000 runs costs
    10,000 small heap entries, not 10,000 sleeping tasks.

    Polls due close together are sent together: one wake for many polls, not one each.
    A poll moves by at most ``options.coalesce`` and a quarter of its jitter's spread
    (with the many-run default of 50 ms: 25 ms early or late on the default policy's
    first interval); none with ``coalesce=0`` or jitter 0.

    Args:
        targets: the runs (iterated once, when the scheduler is built).
        kind: how to read their statuses.
        options: the timing, the clock, the deadline, the cap, the hints.
        on_status: called (sync, or awaited) with each run at its first reading and at
            each change of its status.
        changes: yield each such reading (a watch), not only the terminal one.
        grouped: collect the runs' failures and raise them together, as an
            ``ExceptionGroup`` in the order the runs were given, once every other run is
            done; else the first is raised as itself, at once.
        open_ended: more runs may come with :meth:`add` while it runs; it ends once
            :meth:`end_input` was called and every run is done.
        on_failure: called with each run's id and error as the run is given up on
            (``grouped`` waits raise them all at the end; this tells of each at once).
    """

    def __init__(
        self,
        targets: Iterable[Target[R]],
        *,
        kind: RunKind[R],
        options: WaitOptions,
        on_status: Callable[[R], Any] | None = None,
        changes: bool = False,
        grouped: bool = True,
        open_ended: bool = False,
        on_failure: Callable[[str, CopyAIError], None] | None = None,
    ) -> None:
        hints = options.hints
        if hints is not None and not hints.listeners:
            hints = None  # no listener: nothing will hint (one started later is not used)
        self.kind = kind
        self.options = options
        self.clock = options.clock
        self.hints = hints
        self._on_status = on_status
        self._changes = changes
        self._grouped = grouped
        self.heap: list[tuple[float, int, _Track[R] | _Swept[R]]] = []
        self.pending = 0  # tracks with a live heap entry
        self.running: dict[asyncio.Task[Any], _Track[R] | _PageRead[R]] = {}
        self.finished: list[asyncio.Task[Any]] = []  # requests that ended since the last look
        self.failures: list[tuple[int, CopyAIError]] = []
        # Only the heap, the polls in flight, the sweeps and (with hints) this map hold a
        # track: a run seen terminal is let go at once, so memory follows the runs pending.
        self._by_run: dict[str, _Track[R]] = {}
        self._sequence = itertools.count()
        self._wakeup: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()
        self._system_clock = isinstance(self.clock, SystemClock)
        self._quarter = options.policy.jitter / 4 if options.coalesce > 0 else 0.0
        self._open = open_ended
        self._on_failure = on_failure
        self.total = 0
        # Sweeps of the listing, per workflow (none without a listing or with the
        # policy's sweep off); ``parked``: tracks they hold, out of the heap.
        self._listing = options.listing if options.policy.sweep else None
        self._sweeps: dict[str, _Swept[R]] = {}
        self._sending: list[_Swept[R]] = []  # sweeps with pages to send
        self.parked = 0
        self._add(targets)

    def add(self, targets: Iterable[Target[R]]) -> None:
        """More runs for an open-ended scheduler, due at their first poll."""
        if not self._open:
            raise RuntimeError("runs can be added only to an open-ended scheduler before its end")
        self._add(targets)
        self._wake()

    def end_input(self) -> None:
        """No more runs will be added: the scheduler ends once those it has are done."""
        self._open = False
        self._wake()

    def _add(self, targets: Iterable[Target[R]]) -> None:
        """Runs, each due at its first poll (many are added to the heap in one go)."""
        options, hints = self.options, self.hints
        now = self.clock.monotonic()
        heap = self.heap
        added = 0
        for order, target in enumerate(targets, start=self.total):
            state = RunPoll(
                target,
                kind=self.kind,
                policy=options.policy,
                rng=options.rng,
                hints=hints,
                now=now,
                deadline=options.deadline,
                time_limit=options.time_limit,
                durations=options.durations,
                wall=options.wall,
            )
            track = _Track(poll=state, order=order, entry=next(self._sequence))
            if hints is not None:
                self._by_run[target.run_id] = track
                hints.subscribe(target.run_id, self._on_hint)
            if self._listing is not None:
                self._swept(target.workflow_id).sweep.add(target.run_id)
            heap.append((state.due(), track.entry, track))
            added += 1
        self.pending += added
        self.total += added
        heapq.heapify(heap)

    # -- the loop ------------------------------------------------------------------------

    async def runs(self) -> AsyncGenerator[R, None]:
        """Poll until every run is done; yield each run when seen terminal (with
        ``changes``, each reading whose status changed); then raise the failures."""
        clock, deadline, closing = self.clock, self.options.deadline, self.options.closing
        on_status, changes = self._on_status, self._changes
        if closing is not None:
            closing.add_done_callback(self._wake)
        try:
            while self.pending or self.running or self._open or self.parked:
                now = clock.monotonic()
                late = deadline is not None and now >= deadline
                if late and not self.finished:
                    await self._expire(now)  # time is up for every run not seen terminal
                    break
                if not late:  # (late: readings already back are taken first, below)
                    self._launch(now)
                await self._idle()
                if closing is not None and closing.done():
                    raise ClientClosedError(
                        "the client was closed while this operation was waiting"
                    )
                done, self.finished = self.finished, []
                for task in done:
                    for run, changed, finished in self._settle(task):
                        if changed and on_status is not None:
                            result = on_status(run)
                            if inspect.isawaitable(result):
                                await result
                        if changed if changes else finished:
                            yield run
        finally:
            if closing is not None:
                closing.remove_done_callback(self._wake)
            await self._aclose()
        self._raise_failures()

    def _settle(self, task: asyncio.Task[Any]) -> list[_Reading[R]]:
        """A request ended: feed its outcome to the states of the runs it read. Returns
        the readings: each run, whether its status changed, whether it is finished."""
        item = self.running.pop(task)
        if isinstance(item, _PageRead):
            return self._settle_page(item, task)
        error = task.exception()
        now = self.clock.monotonic()
        if error is None:
            return [self._reading(item, task.result(), now)]
        if not isinstance(error, (CopyAIError, DeadlineExceeded)):
            raise error
        failure = item.poll.failed(error, now)
        if failure is None:
            self._push(item)  # polled again when its state says
        else:
            self._done_with(item)
            self._fail(item, failure)
        return []

    def _reading(self, track: _Track[R], run: R, now: float) -> _Reading[R]:
        """The run was read (on its own, or on a page of the listing)."""
        state = track.poll
        last = state.last
        changed = last is None or self.kind.status(last) != self.kind.status(run)
        finished = state.read(run, now)
        if finished:
            self._done_with(track)
        else:
            self._requeue(track, now)
        return run, changed, finished

    def _fail(self, track: _Track[R], error: CopyAIError) -> None:
        if not self._grouped:
            raise error
        self.failures.append((track.order, error))
        if self._on_failure is not None:
            self._on_failure(track.poll.target.run_id, error)

    def _raise_failures(self) -> None:
        failures = self.failures
        if failures:
            failures.sort(key=lambda item: item[0])
            raise ExceptionGroup(
                f"{len(failures)} of {self.total} runs could not be waited for",
                [error for _, error in failures],
            )

    async def _expire(self, now: float) -> None:
        """Time is up: cancel the polls in flight; every run not seen finished fails."""
        late = [t for t in self.running.values() if isinstance(t, _Track)]
        late += [e[2] for e in self.heap if isinstance(e[2], _Track) and e[1] == e[2].entry]
        for swept in self._sweeps.values():
            late += [*swept.parked.values(), *(track for track, _ in swept.held.values())]
            swept.parked.clear()
            swept.held.clear()
        late.sort(key=lambda track: track.order)
        await self._cancel_running()
        self.heap.clear()
        self.pending = self.parked = 0
        for track in late:
            self._fail(track, track.poll.expired(now))

    # -- the heap ------------------------------------------------------------------------

    def _push(self, track: _Track[R]) -> None:
        """(Re)schedule a run at its state's due time; an older entry becomes stale."""
        if track.entry < 0:
            self.pending += 1
        track.entry = next(self._sequence)
        heapq.heappush(self.heap, (track.poll.due(), track.entry, track))

    def _requeue(self, track: _Track[R], now: float) -> None:
        """A run read unfinished: parked for the next sweep if one stands for its next
        poll, else on the heap."""
        if not self._park(track, now):
            self._push(track)

    def _slack(self, item: _Track[R] | _Swept[R]) -> float:
        if not self._quarter or isinstance(item, _Swept):
            return 0.0
        interval = self.options.policy.interval(item.poll.attempt)
        return min(self.options.coalesce, self._quarter * interval)

    def _drop_stale(self) -> None:
        heap = self.heap
        while heap and heap[0][1] != heap[0][2].entry:
            heapq.heappop(heap)  # the run was made due again, or is done

    def _launch(self, now: float) -> None:
        """Send the pages of the sweeps in flight, then every poll due by now (and those
        due within their slack), up to the cap."""
        heap, running = self.heap, self.running
        deadline, clock = self.options.deadline, self.clock
        concurrency = self.options.concurrency
        self._send_pages()
        self._drop_stale()
        while heap and heap[0][0] <= now + self._slack(heap[0][2]) + _EARLY:
            if len(running) >= concurrency:
                return
            _, _, item = heapq.heappop(heap)
            item.entry = -1
            if isinstance(item, _Swept):
                self._begin_sweep(item, now)
                self._send_pages()
                self._drop_stale()
                continue
            self.pending -= 1
            if self._park(item, now):
                self._drop_stale()
                continue
            item.poll.sent(now)
            target = item.poll.target
            task = self._loop.create_task(
                bounded(target.fetch, deadline, clock),
                name=f"copyai_async.poll[{target.run_id}]",
            )
            task.add_done_callback(self._on_done)
            running[task] = item
            self._drop_stale()

    def _done_with(self, track: _Track[R]) -> None:
        """A run is finished or failed: no more events or sweeps for it."""
        run_id = track.poll.target.run_id
        if self.hints is not None:
            self._by_run.pop(run_id, None)
            self.hints.unsubscribe(run_id, self._on_hint)
        swept = self._sweeps.get(track.poll.target.workflow_id)
        if swept is not None:
            swept.sweep.forget(run_id)
            swept.missed.discard(run_id)

    # -- sweeps of the listing (see ._sweep) ---------------------------------------------

    def _swept(self, workflow_id: str) -> _Swept[R]:
        swept = self._sweeps.get(workflow_id)
        if swept is None:
            listing = self._listing
            assert listing is not None  # (only called with a listing)
            policy = self.options.policy
            sweep = Sweep(
                workflow_id,
                listing=listing,
                floor=policy.initial,
                carry=policy.max_interval / policy.initial,
                jitter=policy.jitter,
                rng=self.options.rng,
            )
            swept = self._sweeps[workflow_id] = _Swept(sweep=sweep)
        return swept

    def _park(self, track: _Track[R], now: float) -> bool:
        """Leave the run's next poll to its workflow's sweeps, if they read it (and the
        latest did not miss it: that run is read on its own once). The sweep timer
        follows its due time. Returns whether it was parked."""
        swept = self._sweeps.get(track.poll.target.workflow_id)
        if swept is None:
            return False
        sweep, run_id = swept.sweep, track.poll.target.run_id
        if run_id in swept.missed:
            swept.missed.discard(run_id)
            return False
        if not (sweep.active() and sweep.wants(run_id)):
            return False
        poll = track.poll
        swept.parked[run_id] = track
        self.parked += 1
        self._note_due(swept, poll)
        if not sweep.in_flight:
            self._time_sweep(swept)
        return True

    @staticmethod
    def _note_due(swept: _Swept[R], poll: RunPoll[R]) -> None:
        """A parked run's next poll: the schedule's (any sweep until then stands for it),
        or a first look, or one an event asks for (a sweep goes for it then)."""
        if poll.urgent() or poll.last is None:
            swept.first_urgent = min(swept.first_urgent, poll.due())
        else:
            swept.first_due = min(swept.first_due, poll.due())

    def _time_sweep(self, swept: _Swept[R], *, not_before: float = -math.inf) -> None:
        """Put the workflow's next sweep on the heap (if it moved earlier)."""
        at = max(min(swept.sweep.next_at(swept.first_due), swept.first_urgent), not_before)
        if swept.entry >= 0 and swept.timer_at <= at:
            return
        swept.entry, swept.timer_at = next(self._sequence), at
        heapq.heappush(self.heap, (at, swept.entry, swept))

    def _unpark(self, swept: _Swept[R], run_id: str, track: _Track[R]) -> None:
        """Sweeps no longer read this parked run: back to the heap."""
        del swept.parked[run_id]
        self.parked -= 1
        self._push(track)

    def _release(self, swept: _Swept[R]) -> None:
        """Sweeps no longer read the parked runs: back to the heap."""
        for track in swept.parked.values():
            self._push(track)
        self.parked -= len(swept.parked)
        swept.parked.clear()
        swept.first_due = swept.first_urgent = math.inf

    def _begin_sweep(self, swept: _Swept[R], now: float) -> None:
        """The sweep's time came: choose its pages, and hold the parked runs they show."""
        swept.timer_at = math.inf
        sweep = swept.sweep
        if not sweep.active():
            self._release(swept)
            return
        parked = swept.parked
        soon = now + _EARLY  # (as _launch takes what is due)
        due = [run_id for run_id, track in parked.items() if track.poll.due() <= soon]
        pages = sweep.begin(now, due)
        plan = set(pages)
        swept.first_due = swept.first_urgent = math.inf
        for run_id, track in list(parked.items()):
            if not sweep.wants(run_id) or (not pages and track.poll.due() <= soon):
                self._unpark(swept, run_id, track)  # (too deep now: read on its own)
            elif sweep.page_of(run_id) in plan or (pages and sweep.unsought(run_id)):
                del parked[run_id]
                swept.held[run_id] = (track, track.poll.sent(now, early=False))
            else:
                self._note_due(swept, track.poll)
        if not pages:
            # Nothing due, nothing to read: the next sweep is later, never now again
            # (a timer due now would be taken again by this same _launch, forever).
            self._time_sweep(swept, not_before=soon + _EARLY)
            return
        swept.queue = pages if sweep.probed else pages[:1]
        self._sending.append(swept)

    def _send_pages(self) -> None:
        """Send the pages the sweeps ask for, within the cap."""
        running, cap = self.running, self.options.concurrency
        listing = self._listing
        while self._sending and len(running) < cap:
            swept = self._sending[0]
            if not swept.queue:
                self._sending.pop(0)
                continue
            assert listing is not None  # (sweeps exist only with a listing)
            page = swept.queue.pop(0)
            workflow_id = swept.sweep.workflow_id
            task = self._loop.create_task(
                bounded(
                    functools.partial(listing.read_page, workflow_id, page, PAGE_SIZE),
                    self.options.deadline,
                    self.clock,
                ),
                name=f"copyai_async.sweep[{workflow_id}:{page}]",
            )
            task.add_done_callback(self._on_done)
            running[task] = _PageRead(swept, page)
            swept.out += 1
            swept.spent += 1

    def _settle_page(self, read: _PageRead[R], task: asyncio.Task[Any]) -> list[_Reading[R]]:
        """A page came back (or failed): the readings of the runs the sweep held on it."""
        swept, sweep = read.swept, read.swept.sweep
        swept.out -= 1
        error = task.exception()
        now = self.clock.monotonic()
        readings: list[_Reading[R]] = []
        if error is None:
            runs, total = task.result()
            answer = sweep.answer(read.page, runs, total)
            if answer.refused is not None:
                swept.queue.clear()
                logger.info("%s: its runs are read one by one from now on", answer.refused)
            elif answer.more:
                swept.queue.extend(answer.more)
                self._sending.append(swept)
            for run_id, run, verify in answer.found:
                held = swept.held.pop(run_id, None)
                if held is None:
                    continue  # not looked for by this sweep (read on its own meanwhile)
                track, scheduled = held
                self.parked -= 1
                if verify:  # read on its own, at once, before its wait may end
                    sweep.leave(run_id)
                    track.poll.unsent(now)
                    track.poll.verify(now)
                    self._push(track)
                    continue
                swept.saved += scheduled
                readings.append(self._reading(track, run, now))
        elif not isinstance(error, (CopyAIError, DeadlineExceeded)):
            raise error
        else:
            swept.queue.clear()
            swept.failed.add(read.page)
            passing = isinstance(error, DeadlineExceeded) or transient(error)
            why = sweep.failed(passing=passing, why=str(error))
            if why is not None:
                logger.info("%s: its runs are read one by one from now on", why)
        if not swept.out and not swept.queue and not self._look_again(swept):
            self._end_sweep(swept)
        return readings

    def _look_again(self, swept: _Swept[R]) -> bool:
        """Runs created while the sweep was out push the runs it looks for onto later
        pages, perhaps past a page read already: as the paginator reads such a page
        again, the sweep reads the pages where the latest ``total`` puts the runs it
        did not find, once. Returns whether it did."""
        sweep = swept.sweep
        if swept.looked_again or swept.failed or not sweep.active() or not sweep.moved:
            return False
        pages = sorted(
            {sweep.page_of(run_id) for run_id in swept.held if not sweep.unsought(run_id)}
        )
        if not pages:
            return False
        swept.looked_again = True
        swept.queue = pages
        self._sending.append(swept)
        self._send_pages()
        return True

    def _end_sweep(self, swept: _Swept[R]) -> None:
        """The sweep is over: the runs it looked for and did not find are read on their
        own, due as they were; those on a page that failed (or, if one did, never seen)
        wait for the next sweep, which is timed now."""
        sweep = swept.sweep
        missed = []
        now = self.clock.monotonic()
        for run_id, (track, _) in swept.held.items():
            track.poll.unsent(now)
            failed = swept.failed and (
                sweep.unsought(run_id) or sweep.page_of(run_id) in swept.failed
            )
            if failed and sweep.active():
                swept.parked[run_id] = track
            else:
                missed.append(run_id)
                swept.missed.add(run_id)
                self.parked -= 1
                self._push(track)
        swept.held.clear()
        swept.failed.clear()
        swept.looked_again = False
        sweep.end(missed, saved=swept.saved, spent=swept.spent)
        swept.saved = swept.spent = 0
        if not sweep.active():
            self._release(swept)
        elif swept.parked:
            swept.first_due = swept.first_urgent = math.inf
            for run_id, track in list(swept.parked.items()):
                if sweep.wants(run_id):
                    self._note_due(swept, track.poll)
                else:  # (given up on while the sweep was out: read on its own)
                    self._unpark(swept, run_id, track)
            self._time_sweep(swept)

    # -- waking up -----------------------------------------------------------------------

    def _wake(self, _: object = None) -> None:
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    def _on_done(self, task: asyncio.Task[Any]) -> None:
        self.finished.append(task)
        self._wake()

    def _on_hint(self, run_id: str) -> None:
        """An event says the run finished: due at once, unless a poll of it is out (a
        parked run: its workflow's sweep is, for the pages of such runs)."""
        track = self._by_run.get(run_id)
        if track is None:
            return
        swept = self._sweeps.get(track.poll.target.workflow_id)
        if swept is not None and swept.parked.pop(run_id, None) is not None:
            self.parked -= 1  # (parked again, as due now, when the heap gives it)
        if track.poll.hint(self.clock.monotonic()):
            self._push(track)
            self._wake()

    def _next_wake(self) -> float | None:
        """When the earliest poll (within its slack) or the deadline is due.

        While polls are in flight, the deadline alone wakes nothing: each of them ends
        by the deadline by itself (see :func:`bounded`), and that wakes the scheduler."""
        until: float | None = None
        self._drop_stale()
        heap = self.heap
        if heap and len(self.running) < self.options.concurrency:
            until = heap[0][0] + self._slack(heap[0][2])
        deadline = self.options.deadline
        if deadline is not None and (until is not None or not self.running):
            until = deadline if until is None else min(until, deadline)
        return until

    async def _idle(self) -> None:
        """Sleep until a poll ends, an event or the close arrives, or the next poll (or
        the deadline) is due."""
        closing = self.options.closing
        if self.finished or (closing is not None and closing.done()):
            return  # (a close while the consumer held a yield wakes nothing: look first)
        until = self._next_wake()
        delay = None if until is None else until - self.clock.monotonic()
        if delay is not None and delay <= _EARLY:
            await anyio.lowlevel.checkpoint()
            return
        self._wakeup = self._loop.create_future()
        timer: asyncio.TimerHandle | asyncio.Task[None] | None = None
        if delay is not None:
            if self._system_clock:
                timer = self._loop.call_later(delay, self._wake)
            else:
                timer = self._loop.create_task(
                    self.clock.sleep(delay), name="copyai_async.poll-timer"
                )
                timer.add_done_callback(self._wake)
        try:
            await self._wakeup
        finally:
            self._wakeup = None
            if isinstance(timer, asyncio.Task):
                timer.remove_done_callback(self._wake)
                await cancel_and_wait([timer])
            elif timer is not None:
                timer.cancel()

    # -- the end -------------------------------------------------------------------------

    async def _cancel_running(self) -> None:
        for task in self.running:
            task.remove_done_callback(self._on_done)
        await cancel_and_wait(list(self.running))
        self.running.clear()

    async def _aclose(self) -> None:
        """Cancel the polls in flight and let go of every event subscription."""
        await self._cancel_running()
        if self.hints is not None:
            for run_id in self._by_run:
                self.hints.unsubscribe(run_id, self._on_hint)
            self._by_run.clear()


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


def _check_policy(policy: PollPolicy | None) -> PollPolicy:
    if policy is None:
        return PollPolicy()
    if not isinstance(policy, PollPolicy):
        raise TypeError(f"policy must be a PollPolicy, got {type(policy).__name__}")
    return policy


def _check_on_status(on_status: Callable[[R], Any] | None) -> None:
    if on_status is not None and not callable(on_status):
        raise TypeError(f"on_status must be callable or None, got {type(on_status).__name__}")


def _check_concurrency(concurrency: int) -> int:
    return int_in("concurrency", concurrency, 1, MAX_CONCURRENCY)


class Waiter(Generic[R]):
    """The waits of one client: argument checks, deadlines, and the runs it started.

    Each wait checks its arguments at the call, builds its :class:`WaitOptions`, and
    hands its runs to a :class:`Scheduler`: a single wait, a watch and a wait on many
    runs differ only in what is yielded and how failures are raised.

    Args:
        kind: what the API's runs look like to the poller.
        budget: the client's budget: its clock, and the future resolved when it closes.
        hints: what webhook events say (shared with Redis coordination's; by default
            the client's own).
        durations: what waits learn of run durations (shared with Redis
            coordination's; by default the client's own).
        listing: how to read the API's listing, for sweeps of waits on many runs
            (``None``: the API has none fit for it).
        started_memory: how many recently started runs to remember for the 404 grace.
    """

    def __init__(
        self,
        *,
        kind: RunKind[R],
        budget: Budget,
        hints: RunHints | None = None,
        durations: DurationBook | None = None,
        listing: Listing[R] | None = None,
        started_memory: int = 10_000,
    ) -> None:
        self.kind = kind
        self.listing = listing
        self.budget = budget
        self.clock = budget.clock
        self.rng = random.Random()
        self._started: dict[str, float] = {}
        self._memory = started_memory
        self.hints = hints if hints is not None else RunHints(self.clock)
        self.durations = durations if durations is not None else DurationBook()
        # How far the server's createdAt is behind this machine's clock (its skew, plus
        # the quickest answer to a start): the least of the latest starts' gaps.
        self._behind: collections.deque[float] = collections.deque(maxlen=50)
        self._skew = 0.0

    def note_started(self, key: str, *, created_at: float | None = None) -> None:
        """Remember that this client started the run ``key`` now (for the 404 grace,
        and to age it); ``created_at``: its ``createdAt``, in Unix seconds, if known (to
        age by their ``createdAt`` runs it did not start, on this machine's clock)."""
        self._started.pop(key, None)
        self._started[key] = self.clock.monotonic()
        while len(self._started) > self._memory:
            del self._started[next(iter(self._started))]
        if created_at is not None and math.isfinite(created_at):
            self._behind.append(time.time() - created_at)
            self._skew = min(self._behind)

    def _wall(self) -> Callable[[], float] | None:
        """This machine's clock in Unix seconds, put on the server's ``createdAt`` clock
        (``None`` where time is virtual: a FakeClock, or a loop whose time is not the
        monotonic clock's)."""
        if not isinstance(self.clock, SystemClock):
            return None
        if abs(loop_time() - time.monotonic()) > 1.0:
            return None  # virtual loop time (looptime): wall time means nothing to it
        return self._server_time

    def _server_time(self) -> float:
        return time.time() - self._skew

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

    def options(
        self,
        policy: PollPolicy,
        timeout: float | None,
        *,
        deadline: float | None = None,
        concurrency: int = 1,
        coalesce: float = 0.0,
        sweep: bool = False,
    ) -> WaitOptions:
        """The options of a wait that begins now (in the running loop); ``sweep``: a
        wait on many runs, which may read the listing (as the policy allows)."""
        return WaitOptions(
            policy=policy,
            clock=self.clock,
            rng=self.rng,
            deadline=self.deadline(timeout) if deadline is None else deadline,
            time_limit=timeout,
            concurrency=concurrency,
            coalesce=coalesce,
            hints=self.hints,
            closing=self.budget.closing_future(),
            durations=self.durations if policy.adaptive else None,
            wall=self._wall(),
            listing=self.listing if sweep else None,
        )

    async def wait(
        self,
        make_target: Callable[[PollPolicy], Target[R]],
        *,
        time_limit: float | None,
        policy: PollPolicy | None,
        raise_on_failure: bool,
        on_status: Callable[[R], Any] | None,
        deadline: float | None = None,
    ) -> R:
        """Poll one run until it is terminal; call ``on_status`` at each change."""
        _check_on_status(on_status)
        timeout = check_timeout(time_limit)
        checked = _check_policy(policy)
        target = make_target(checked)
        options = self.options(checked, timeout, deadline=deadline)
        scheduler = Scheduler(
            [target], kind=self.kind, options=options, on_status=on_status, grouped=False
        )
        final: R | None = None
        async with aclosing(scheduler.runs()) as runs:
            async for run in runs:
                final = run
        if final is None:  # pragma: no cover - the scheduler ends only after a terminal reading
            raise RuntimeError("the poll ended without a reading")
        kind = self.kind
        if raise_on_failure and kind.is_failed(final):
            detail = kind.failure_detail(final)
            raise RunFailedError(
                f"{target.label} ended {kind.status(final)}" + (f": {detail}" if detail else ""),
                run=final,
                run_id=target.run_id,
            )
        return final

    def watch(
        self,
        make_target: Callable[[PollPolicy], Target[R]],
        *,
        timeout: float | None,
        policy: PollPolicy | None,
    ) -> AsyncGenerator[R, None]:
        """Yield the first reading of one run, then each whose status differs from the one
        before, until it is terminal (the terminal reading included)."""
        checked_timeout = check_timeout(timeout)
        checked = _check_policy(policy)
        target = make_target(checked)
        # The deadline starts when iteration does, not when the generator is made.
        return _deferred(
            lambda: Scheduler(
                [target],
                kind=self.kind,
                options=self.options(checked, checked_timeout),
                changes=True,
                grouped=False,
            ).runs()
        )

    def wait_many(
        self,
        make_targets: Callable[[PollPolicy], list[Target[R]]],
        *,
        concurrency: int,
        timeout: float | None,
        policy: PollPolicy | None,
        on_status: Callable[[R], Any] | None = None,
    ) -> AsyncGenerator[R, None]:
        """Yield each run once, when seen terminal; then raise the failures as a group."""
        _check_on_status(on_status)
        cap = _check_concurrency(concurrency)
        checked_timeout = check_timeout(timeout)
        checked = _check_policy(policy)
        targets = make_targets(checked)
        return _deferred(
            lambda: Scheduler(
                targets,
                kind=self.kind,
                options=self.options(
                    checked, checked_timeout, concurrency=cap, coalesce=_COALESCE, sweep=True
                ),
                on_status=on_status,
            ).runs()
        )


async def _deferred(make: Callable[[], AsyncGenerator[R, None]]) -> AsyncGenerator[R, None]:
    """An async generator that builds the real one on first iteration (so its deadline
    starts then) and closes it with itself."""
    inner = make()
    del make  # what it captured (e.g. every target of a wait) is the inner generator's now
    async with aclosing(inner):
        async for item in inner:
            yield item
