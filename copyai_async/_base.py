"""What every client shares: options and their checks, lifecycle, the request path, waits.

:class:`CopyAIClient` and :class:`~copyai_async.aitasker.AITaskerClient` differ only in
how they authenticate, what their runs look like, and their endpoints; everything else
(retries, the rate budget, redaction, closing, polling) is here, once.
"""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import aclosing
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, Generic, TypeVar

import aiohttp
import attrs

from ._budget import Budget
from ._check import api_base_url, int_in, is_loopback, positive
from ._clock import Clock, SystemClock
from ._coordination import RedisCoordination, SharedLink
from ._durations import Durations
from ._errors import StartUncertainError
from ._http import (
    OutcomeUnknown,
    Redactor,
    Response,
    RetryConfig,
    Secret,
    Transport,
    copyai_error_fields,
    encode_segment,
)
from ._loop import LoopBinding
from ._once import AtMostOnce, Lookup, LookupInconclusive, Unsettled
from ._poll import DEFAULT_CONCURRENCY, PollPolicy, RunKind, Target, Waiter, _check_policy
from ._proxy import choose_proxy
from ._sweep import Listing
from ._version import version

__all__ = ["BaseClient", "LookupInconclusive"]

_T = TypeVar("_T")
_R = TypeVar("_R")
_C = TypeVar("_C", bound="BaseClient[Any]")


def _client_timeout(value: Any) -> aiohttp.ClientTimeout:
    if isinstance(value, aiohttp.ClientTimeout):
        return value
    total = positive("timeout", value)
    # A separate connect limit lets a stalled connect be told apart from a slow answer:
    # only the former is safe to retry for a POST.
    return aiohttp.ClientTimeout(total=total, connect=min(total, 10.0))


_LEASE_WITHOUT_TIMEOUT = 300.0
"""Seconds a shared slot is held at most when the client's timeout has no total."""


def _coordination(value: Any) -> RedisCoordination | None:
    """``coordination=``: ``None``, a Redis URL, or a :class:`RedisCoordination`."""
    if value is None or isinstance(value, RedisCoordination):
        return value
    if isinstance(value, str):
        return RedisCoordination(value)
    raise TypeError(
        "coordination must be a Redis URL (str), a RedisCoordination or None, got "
        f"{type(value).__name__}"
    )


def _retry_config(
    max_retries: Any, backoff_base: Any, backoff_max: Any, max_retry_after: Any
) -> RetryConfig:
    """The retry options, checked."""
    base = positive("backoff_base", backoff_base)
    most = positive("backoff_max", backoff_max)
    if most < base:
        raise ValueError(f"backoff_max must be >= backoff_base ({base:g}), got {most:g}")
    return RetryConfig(
        max_retries=int_in("max_retries", max_retries, 0),
        backoff_base=base,
        backoff_max=most,
        max_retry_after=positive("max_retry_after", max_retry_after, allow_zero=True),
    )


def _shared_link(
    coordinator: RedisCoordination | None,
    secret: str,
    clock: Clock,
    connections: int,
    rate: float | None,
    timeout: aiohttp.ClientTimeout,
) -> SharedLink | None:
    """The client's shared limits and events: those of every process with this key (and
    namespace), on Redis; ``None`` without coordination."""
    if coordinator is None:
        return None
    return coordinator._link(
        secret=secret,
        clock=clock,
        max_in_flight=connections,
        rate_limit=rate,
        # A slot is held at most one attempt (plus its wait for the rate, which the
        # script adds); a process that dies gives it back when it expires.
        lease_ttl=(timeout.total or _LEASE_WITHOUT_TIMEOUT) + 5.0,
    )


def _uncertain(
    lost: OutcomeUnknown,
    why: str,
    *,
    workflow_id: str,
    start_key: str | None,
    sent_at: datetime,
) -> StartUncertainError:
    """The error for a start whose answer was lost and could not be settled (``why``)."""
    error = StartUncertainError(
        f"{lost.error.message}; the run may or may not have started: {why}",
        method=lost.error.method,
        path=lost.error.path,
        workflow_id=workflow_id,
        start_key=start_key,
        sent_at=sent_at,
        status=lost.status,
    )
    error.__cause__ = lost.error
    return error


@attrs.frozen(kw_only=True)
class _StartUncertainty:
    """What a start whose answer could not be settled tells the caller, by reason."""

    workflow_id: str
    start_key: str | None
    sent_at: datetime

    def __call__(
        self, lost: OutcomeUnknown, reason: Unsettled, lookup_error: Exception | None
    ) -> StartUncertainError:
        wf, key = self.workflow_id, self.start_key
        look = f"await client.find_started_run({wf!r}, {key!r})"
        if reason is Unsettled.NOTHING_TO_LOOK_BY:
            why = (
                "the start carried no start key to look for it by; look among the "
                "workflow's newest runs before starting it again"
            )
        elif reason is Unsettled.LOOKUP_FAILED:
            why = (
                f"looking for start key {key!r} did not settle it ({lookup_error}); "
                f"before starting it again, {look}"
            )
        else:
            why = (
                f"no run carries start key {key!r} yet, but the server may still be "
                f"creating it; before starting it again, {look}"
            )
        return _uncertain(lost, why, workflow_id=wf, start_key=key, sent_at=self.sent_at)


class BaseClient(Generic[_R]):
    """The shared body of a client; see :class:`CopyAIClient` for the options."""

    def __init__(
        self,
        *,
        secret: str,
        auth_headers: Callable[[Secret], Mapping[str, str]],
        kind: RunKind[_R],
        base_url: Any,
        timeout: Any,
        max_retries: Any,
        max_connections: Any,
        backoff_base: Any,
        backoff_max: Any,
        max_retry_after: Any,
        session: Any,
        clock: Any,
        rate_limit: Any,
        allow_http: bool,
        coordination: Any = None,
        proxy: Any = None,
        trust_env: Any = True,
        error_fields: Callable[[Any], tuple[str | None, Any]] = copyai_error_fields,
        auth_hint: str = "check the API key (api_key= or the COPYAI_API_KEY variable)",
        credential: str = "API key",
        root_hint: str = "",
        listing: Listing[_R] | None = None,
    ) -> None:
        if session is not None and not isinstance(session, aiohttp.ClientSession):
            raise TypeError(
                f"session must be an aiohttp.ClientSession, got {type(session).__name__}"
            )
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError("clock must have monotonic() and async sleep(seconds)")
        base = api_base_url(base_url, allow_http=allow_http)
        retry = _retry_config(max_retries, backoff_base, backoff_max, max_retry_after)
        key = Secret(secret)
        self._key = key
        self.base_url: str = str(base)
        # The proxy is chosen once, here (a session of the caller's reads the environment
        # itself, by its own trust_env).
        route = choose_proxy(
            base,
            proxy=proxy,
            trust_env=trust_env,
            loopback=is_loopback(base.host),
            environ=os.environ if session is None else {},
        )
        connections = int_in("max_connections", max_connections, 1)
        rate = None if rate_limit is None else positive("rate_limit", rate_limit)
        client_timeout = _client_timeout(timeout)
        coordinator = _coordination(coordination)
        clock = clock or SystemClock()
        # Every part is built here, once, with what it uses; none is rewired later.
        link = _shared_link(coordinator, secret, clock, connections, rate, client_timeout)
        budget = Budget(clock=clock, max_concurrency=connections, rate_limit=rate, shared=link)
        self._transport = Transport(
            base_url=base,
            auth_headers=lambda: auth_headers(key),
            redactor=Redactor(secret, *(route.secrets if route is not None else ())),
            binding=LoopBinding(owner=type(self).__name__, release=self._loop_ended),
            user_agent=f"copyai-async/{version()}",
            timeout=client_timeout,
            retry=retry,
            budget=budget,
            max_connections=connections,
            session=session,
            proxy=route,
            error_fields=error_fields,
            auth_hint=auth_hint,
            credential=credential,
            root_hint=root_hint,
        )
        self._waiter: Waiter[_R] = Waiter(
            kind=kind,
            budget=budget,
            hints=None if link is None else link.hints,
            durations=None if link is None else link.durations,
            listing=listing,
        )
        self.coordination: RedisCoordination | None = coordinator
        self._owns_coordination = isinstance(coordination, str)

    def __repr__(self) -> str:
        state = "closed" if self._transport.closed else "open"
        route = self._transport.proxy
        via = "" if route is None else f" proxy={route.shown!r}"
        return f"<{type(self).__name__} base_url={self.base_url!r} key='***'{via} {state}>"

    @property
    def proxy(self) -> str | None:
        """The proxy requests go through (its URL without credentials), or ``None``."""
        route = self._transport.proxy
        return None if route is None else route.shown

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` has been called."""
        return self._transport.closed

    @property
    def clock(self) -> Clock:
        """The clock this client sleeps on."""
        return self._transport.clock

    async def __aenter__(self: _C) -> _C:
        self._transport.open()
        shared = self._transport.budget.shared
        if shared is not None:
            # Events other processes publish from now on reach this client's waits.
            await shared.started()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client and its own session (a session passed in is left open).

        Calling it again does nothing. Any later request raises
        :class:`ClientClosedError`.

        Raises:
            EventLoopError: called from an event loop other than the one the client
                serves, while its session is open there (close it in that loop).
        """
        await self._transport.aclose()
        await self._close_coordination()

    async def _loop_ended(self) -> None:
        """The event loop this client served is shutting down: close what was opened in
        it, there (the client is then unusable from any other loop)."""
        await self._transport.release()
        await self._close_coordination()

    async def _close_coordination(self) -> None:
        coordination = self.coordination
        if coordination is not None and self._owns_coordination:
            await coordination.aclose()

    def _enter(self) -> None:
        """Check that the client can be used here and now (raises ClientClosedError or
        EventLoopError); binds it to the running event loop on first use."""
        self._transport.enter()

    async def _in_loop(self, inner: AsyncGenerator[_T, None]) -> AsyncGenerator[_T, None]:
        """``inner``, after checking on first iteration that the client can be used in
        this event loop."""
        async with aclosing(inner):
            self._enter()
            async for item in inner:
                yield item

    # -- starting runs exactly once ------------------------------------------------------

    async def _start(
        self,
        segments: Sequence[str],
        *,
        workflow_id: str,
        body: Mapping[str, Any],
        parse: Callable[[Response], _R],
        start_key: str | None,
        find: Callable[[str, float], Awaitable[_R | None]] | None,
        what: str = "workflow",
    ) -> _R:
        """POST a start, and settle a lost answer instead of guessing.

        Sent with :class:`~copyai_async._once.AtMostOnce`, as webhook creation is. The
        transport sends a start again by itself only where it provably never reached
        the server. Where the server may have acted on it, the answer is settled: after
        a short wait (a server still at work gets a moment), ``find(start_key,
        sent)`` looks for a run tagged with the start's key. Found: that is the answer.
        Ruled out: the start is sent again (within ``max_retries``), or the error is
        raised knowing no run exists. Neither (no key, the lookup failed or could not see
        far enough back, or the server may still be creating it): StartUncertainError.

        Args:
            segments: the start's path.
            workflow_id: for messages and the error.
            body: the JSON body.
            parse: reads the answer into a run.
            start_key: the key the start carries in its metadata, or ``None``.
            find: looks for a run by key among runs created since the monotonic time it
                is given; returns ``None`` when it rules the run out, and raises
                :class:`LookupInconclusive` when it cannot.
            what: what the path names, for a 404's message ("no such workflow").
        """
        sent_at = datetime.now(timezone.utc)
        key = start_key
        lookup: Lookup[_R] = Lookup(
            find=None if key is None or find is None else functools.partial(find, key),
            uncertain=_StartUncertainty(workflow_id=workflow_id, start_key=key, sent_at=sent_at),
            noun="run",
            by="its start key",
        )
        once = AtMostOnce(
            self._transport, segments, body=body, parse=parse, lookup=lookup, what=what
        )
        return await once.send()

    # -- waiting (the same for every API; ``_target`` says how to read one run) ----------

    _run_label = "run"  # how messages name a run: "<label> <id> of workflow <id>"

    async def get_run(self, workflow_id: str, run_id: str) -> _R:
        """Read one run; each API's client implements this."""
        raise NotImplementedError  # each API's client reads one run its own way

    def _note_started(self, workflow_id: str, run_id: str, created_at: datetime | None) -> None:
        created = None if created_at is None else created_at.timestamp()
        self._waiter.note_started(f"{workflow_id}\0{run_id}", created_at=created)

    def _targets(
        self, workflow_id: str, run_ids: list[str]
    ) -> Callable[[PollPolicy], list[Target[_R]]]:
        encode_segment("workflow_id", workflow_id)
        for run_id in run_ids:
            encode_segment("run_id", run_id)
        # One reader and one noun for every target: a target per run stays small.
        read, noun, target = self.get_run, self._run_label, self._waiter.target
        return lambda policy: [
            target(policy, workflow_id=workflow_id, run_id=r, read=read, noun=noun) for r in run_ids
        ]

    def _target(self, workflow_id: str, run_id: str) -> Callable[[PollPolicy], Target[_R]]:
        make = self._targets(workflow_id, [run_id])
        return lambda policy: make(policy)[0]

    def durations(self, workflow_id: str, *, policy: PollPolicy | None = None) -> Durations:
        """What this client's waits have learned of the workflow's run durations.

        Each wait that sees a run end from a known start (this client started it, or the
        run's ``createdAt`` dates it) teaches how long it took, as an interval: last read
        unfinished, first read finished. From the latest 200 of a workflow the client
        estimates how its run durations spread; once 20 are in, new waits of a policy
        with ``adaptive`` on (the default) poll where runs end, not on the fixed backoff
        (see :class:`PollPolicy`). What is learned lives in this client only (with a
        :class:`RedisCoordination`, every process sharing it learns from all); nothing
        is written anywhere.

        Args:
            workflow_id: the workflow.
            policy: the policy whose schedule to show (default :class:`PollPolicy()`).

        Returns:
            A :class:`Durations`: how many runs were seen, whether waits use it, the
            learned median, 90th and 99th percentiles, and the ages at which a new wait
            polls.

        Raises:
            TypeError: ``workflow_id`` is not a string, or ``policy`` not a PollPolicy.
        """
        if not isinstance(workflow_id, str):
            raise TypeError(f"workflow_id must be a str, got {type(workflow_id).__name__}")
        checked = _check_policy(policy)
        return self._waiter.durations.summary(workflow_id, checked)

    async def wait_for_run(
        self,
        workflow_id: str,
        run_id: str,
        *,
        timeout: float | None = None,
        policy: PollPolicy | None = None,
        raise_on_failure: bool = True,
        on_status: Callable[[_R], Any] | None = None,
    ) -> _R:
        """Poll a run until its status is terminal (Copy.ai: ``COMPLETE`` or ``FAILED``).

        The first poll is immediate; then sleeps grow as ``policy`` says (with jitter) up
        to its ``max_interval``. ``NEW``, ``WAITING``, ``PROCESSING`` and ``RETRYING``
        keep polling; so does an undocumented status (logged once at WARNING). A 429's
        ``Retry-After`` pauses every request of this client. A 404 for a run this client
        started less than ``policy.not_found_grace`` seconds ago is polled again (the run
        may not be readable yet); any other 404 is raised.

        With a webhook listener of this client running when the wait begins
        (``client.listen()``), an event saying the run finished makes it poll at once
        (the poll, never the event, ends the wait), and while the run's events arrive it
        is polled only every ``policy.safety_interval``.

        Args:
            workflow_id: the workflow's id.
            run_id: the run's id.
            timeout: one deadline, in seconds on the client's monotonic clock, over
                requests, retries, pauses and sleeps (``None``: wait as long as it takes).
            policy: the poll timing (default :class:`PollPolicy()`).
            raise_on_failure: raise :class:`RunFailedError` for a ``FAILED`` run (else
                return it).
            on_status: called (sync, or awaited if it returns an awaitable) with the run
                at its first reading and at each status change; what it raises ends the
                wait.

        Returns:
            The run, finished (or failed, with ``raise_on_failure=False``).

        Raises:
            RunFailedError: the run ended ``FAILED`` (``.run`` holds it).
            PollTimeoutError: ``timeout`` passed first (``.run`` is the last reading; it
                is also a ``TimeoutError``).
            NotFoundError: no such run (outside the grace window).
            CopyAIError: any other failure, after retries.
            TypeError, ValueError: bad arguments.
        """
        target = self._target(workflow_id, run_id)
        self._enter()
        return await self._waiter.wait(
            target,
            time_limit=timeout,
            policy=policy,
            raise_on_failure=raise_on_failure,
            on_status=on_status,
        )

    def watch_run(
        self,
        workflow_id: str,
        run_id: str,
        *,
        timeout: float | None = None,
        policy: PollPolicy | None = None,
    ) -> AsyncGenerator[_R, None]:
        """Follow a run's status: ``async for run in client.watch_run(wf, run_id)``.

        Yields the first reading, then each reading whose status differs from the one
        before, and ends after the terminal one (a ``FAILED`` run is yielded, not
        raised). Polling, ``timeout`` and ``policy`` are as for :meth:`wait_for_run`;
        the timeout starts when iteration does. Breaking out or closing it cancels the
        request in flight.

        Raises:
            PollTimeoutError: while iterating, when ``timeout`` passes first.
            CopyAIError: while iterating, a failure after retries.
            TypeError, ValueError: bad arguments (at the call).
        """
        return self._in_loop(
            self._waiter.watch(self._target(workflow_id, run_id), timeout=timeout, policy=policy)
        )

    def wait_for_runs(
        self,
        workflow_id: str,
        run_ids: Iterable[str],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout: float | None = None,
        policy: PollPolicy | None = None,
        on_status: Callable[[_R], Any] | None = None,
    ) -> AsyncGenerator[_R, None]:
        """Wait on many runs at once: yields each run once, as soon as it is seen terminal.

        ``FAILED`` runs are yielded, not raised. Polls are scheduled by due time (first
        polls at once, then each run's sleeps grow as ``policy`` says), with at most
        ``concurrency`` requests of this wait in flight; the client's own limits
        (``max_connections``, ``rate_limit``) apply on top. Duplicate ids are waited on
        once. Polling pauses while the loop body runs (requests in flight go on).
        Polls due close together are sent together, each moved by at most a quarter of
        its jitter's spread and 50 ms (not at all with ``jitter=0``), so that many runs
        cost few wake-ups; on average a poll is neither early nor late.

        With a webhook listener running, events make runs due at once and the pace
        between events is ``policy.safety_interval``, as for :meth:`wait_for_run`.

        Where the API has a listing fit for it (Copy.ai's), the wait reads the newest
        pages of the workflow's listing, each showing up to 100 of its runs, instead of
        each run on its own, wherever that costs fewer requests: about once per
        ``policy.initial`` while pages are full (see "Sweeps" in the waiting guide). A
        listing without ``status`` costs one request, and the runs are read one by one.
        ``PollPolicy(sweep=False)`` turns it off.

        A run that cannot be polled (a 404 outside the grace window, a failure after
        retries, or the ``timeout``) does not stop the others: once every other run has
        been yielded, those errors are raised together as an ``ExceptionGroup`` of
        :class:`CopyAIError` (each naming its run; :class:`PollTimeoutError` for runs
        the timeout caught), in the order the ids were given.

        Args:
            workflow_id: the workflow's id.
            run_ids: the runs' ids (a collection of str, not one str).
            concurrency: requests of this wait in flight at once, 1 to 1,000 (default 16).
            timeout: one deadline for the whole wait, in seconds; it starts when
                iteration does.
            policy: the poll timing (default :class:`PollPolicy()`).
            on_status: called (sync, or awaited) with each run at its first reading and
                at each change of its status, e.g. to show progress.

        Raises:
            ExceptionGroup: while iterating, after the last run is yielded, if any failed.
            TypeError, ValueError: bad arguments (at the call).
        """
        if isinstance(run_ids, (str, bytes)):
            raise TypeError("run_ids must be a collection of run ids, not a single string")
        try:
            ids = list(dict.fromkeys(run_ids))
        except TypeError as exc:
            raise TypeError(f"run_ids must be an iterable of str: {exc}") from exc
        return self._in_loop(
            self._waiter.wait_many(
                self._targets(workflow_id, ids),
                concurrency=concurrency,
                timeout=timeout,
                policy=policy,
                on_status=on_status,
            )
        )
