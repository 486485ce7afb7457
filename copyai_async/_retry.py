"""The request path's decisions: what one attempt's outcome means, and what to do next.

Pure: no I/O, no clock, no aiohttp. :class:`~copyai_async._http.Transport` sends an
attempt, reads what came back into an *outcome*, and asks :meth:`RetryPolicy.decide`
what follows:

- :class:`Answered` (a 2xx, read) → :class:`Return`;
- :class:`Dropped` (no answer: a connection failure or a timeout, classified by the
  :class:`Fate` it leaves the request in), :class:`Refused` (an error status, or the
  API's error envelope on a 2xx) or :class:`Unreadable` (a 2xx that cannot be read) →
  :class:`Retry` after a wait, :class:`Pause` (a 429's ``Retry-After``: every request
  of the client waits, then this one is sent again), :class:`Raise`, or
  :class:`Expire` (the wait would reach the caller's deadline: wait until it, then
  give up).

A request that is not idempotent (a POST that starts something) is sent again only
where it provably never reached the server; where the server may have acted on it, the
decision is ``Raise(OutcomeUnknown(...))``: its caller settles the question (see
:mod:`copyai_async._once`), never a blind resend. The rules themselves are in
:mod:`copyai_async._http`'s docstring.
"""

from __future__ import annotations

import enum
import random
from typing import Generic, TypeAlias, TypeVar

import attrs

from ._errors import APIConnectionError, APIError, InvalidResponseError

__all__ = [
    "RETRY_AFTER_STATUSES",
    "RETRY_STATUSES",
    "UNKNOWN_OUTCOME_STATUSES",
    "UNSENT_STATUSES",
    "Answered",
    "Decision",
    "Dropped",
    "Expire",
    "Fate",
    "Outcome",
    "OutcomeUnknown",
    "Pause",
    "Raise",
    "Refused",
    "Retry",
    "RetryConfig",
    "RetryPolicy",
    "Return",
    "Step",
    "Unreadable",
]

_T = TypeVar("_T")


class Fate(enum.Enum):
    """What a failed attempt means for the request."""

    UNSENT = "unsent"  # provably never reached the server: always safe to send again
    UNKNOWN = "unknown"  # sent; the server may have acted on it, and is done with it
    RUNNING = "running"  # sent; the server may have acted on it, or may still be acting
    FINAL = "final"  # sending again would fail the same way (e.g. TLS)


RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# A start answered with one of these may have created the run (504: may still do so).
UNKNOWN_OUTCOME_STATUSES = frozenset({500, 502, 503, 504})
# A start answered with one of these did not: the server refused it before acting.
UNSENT_STATUSES = frozenset({408, 429})
# Statuses whose Retry-After is honoured (a 503 often carries one too).
RETRY_AFTER_STATUSES = frozenset({429, 503})


class OutcomeUnknown(Exception):
    """A request that is not idempotent was sent and its answer was lost.

    The server may have acted on it (a run may exist). The transport raises this
    instead of sending such a request again; the caller decides (look for the result,
    send again, or tell the user).

    Attributes:
        error: the documented error for what went wrong (with method, path, status).
        attempt: the number of the attempt that failed (1 for the first).
        in_progress: the server may still be acting on it (a timeout, ours or a
            gateway's 504): a result not visible yet may still appear.
        retry_after: seconds the server asked to wait (a 503's ``Retry-After``), if any.
    """

    def __init__(
        self,
        error: APIError,
        *,
        attempt: int,
        in_progress: bool,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(str(error))
        self.error = error
        self.attempt = attempt
        self.in_progress = in_progress
        self.retry_after = retry_after

    @property
    def status(self) -> int | None:
        """The HTTP status of the lost answer, or ``None`` if none arrived."""
        status = getattr(self.error, "status", None)
        return status if isinstance(status, int) else None


@attrs.frozen(kw_only=True)
class RetryConfig:
    """How failed requests are retried (see :mod:`copyai_async._http` for the rules)."""

    max_retries: int
    backoff_base: float
    backoff_max: float
    max_retry_after: float

    def backoff(self, retry_number: int, rng: random.Random) -> float:
        """Full-jitter wait before retry number ``retry_number`` (0 for the first)."""
        ceiling = min(self.backoff_max, self.backoff_base * (2.0 ** min(retry_number, 62)))
        return rng.uniform(0.0, ceiling)

    def too_long(self, retry_after: float | None) -> bool:
        """Whether a server's ``Retry-After`` asks for more than this client waits."""
        return retry_after is not None and retry_after > self.max_retry_after


# -- outcomes: what one attempt brought back ------------------------------------------------


@attrs.frozen
class Answered(Generic[_T]):
    """A 2xx answer, read: the request's result."""

    value: _T


@attrs.frozen(kw_only=True)
class Dropped:
    """No answer: the connection failed or timed out (``error``), leaving ``fate``."""

    error: APIConnectionError
    fate: Fate
    why: str  # for the log line: the failure's type


@attrs.frozen(kw_only=True)
class Refused:
    """An answer with an error status (or the API's error envelope on a 2xx).

    ``retry_after``: what the server asked to wait, in seconds (a 429's or a 503's
    ``Retry-After``), if it did.
    """

    status: int
    error: APIError
    retry_after: float | None = None


@attrs.frozen
class Unreadable:
    """A 2xx answer that cannot be read (not JSON, cut short, the wrong shape)."""

    error: InvalidResponseError


Outcome: TypeAlias = "Answered[_T] | Dropped | Refused | Unreadable"


# -- decisions: what happens next ---------------------------------------------------------


@attrs.frozen
class Return(Generic[_T]):
    """The request is done: ``value`` is its result."""

    value: _T


@attrs.frozen
class Raise:
    """The request is over: raise ``error`` (``OutcomeUnknown`` for a lost answer)."""

    error: Exception


@attrs.frozen(kw_only=True)
class Retry:
    """Wait ``after`` seconds, then send the request again."""

    after: float
    error: APIError  # what went wrong: the cause if the wait reaches the deadline
    why: str  # for the log line


@attrs.frozen(kw_only=True)
class Pause:
    """The server asked the client to slow down (a 429's ``Retry-After``): every request
    of the client waits ``after`` seconds, then this one is sent again."""

    after: float
    error: APIError
    why: str


@attrs.frozen(kw_only=True)
class Expire:
    """The wait before the next attempt would reach the caller's deadline: wait ``after``
    seconds (what is left), then give up with ``DeadlineExceeded`` from ``error``.

    ``pause``: seconds to pause the whole client first (the server's ask stands for the
    client's other requests), or ``None``.
    """

    after: float
    error: APIError
    pause: float | None = None


Step: TypeAlias = "Raise | Retry | Pause | Expire"
"""A decision that is not the result: what to do before the next attempt, or instead."""

Decision: TypeAlias = "Return[_T] | Step"


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """Decides what follows an attempt, for one kind of request.

    Args:
        config: the retry settings.
        idempotent: whether sending the request twice is harmless (a GET); if not (a
            POST that starts something), it is sent again only where it provably never
            reached the server.
        rng: the source of backoff jitter.
    """

    config: RetryConfig
    idempotent: bool
    rng: random.Random = attrs.field(factory=random.Random, eq=False)

    def backoff(self, attempt: int) -> float:
        """The wait after attempt number ``attempt`` failed (full jitter)."""
        return self.config.backoff(attempt - 1, self.rng)

    def decide(
        self, attempt: int, outcome: Outcome[_T], *, time_left: float | None = None
    ) -> Decision[_T]:
        """What to do after attempt number ``attempt`` (1 for the first) ended in
        ``outcome``, with ``time_left`` seconds until the caller's deadline (``None``:
        no deadline)."""
        if isinstance(outcome, Answered):
            return Return(outcome.value)
        decision: Step
        if isinstance(outcome, Dropped):
            decision = self._after_drop(attempt, outcome)
        elif isinstance(outcome, Refused):
            decision = self._after_refusal(attempt, outcome)
        else:
            decision = self._after_unreadable(attempt, outcome)
        if (
            time_left is not None
            and isinstance(decision, (Retry, Pause))
            and decision.after >= time_left
        ):
            pause = decision.after if isinstance(decision, Pause) else None
            return Expire(after=max(0.0, time_left), error=decision.error, pause=pause)
        return decision

    def _after_drop(self, attempt: int, outcome: Dropped) -> Step:
        fate = outcome.fate
        if not self.idempotent and fate in (Fate.UNKNOWN, Fate.RUNNING):
            return Raise(
                OutcomeUnknown(outcome.error, attempt=attempt, in_progress=fate is Fate.RUNNING)
            )
        retriable = fate is not Fate.FINAL if self.idempotent else fate is Fate.UNSENT
        if retriable and attempt <= self.config.max_retries:
            return Retry(after=self.backoff(attempt), error=outcome.error, why=outcome.why)
        return Raise(outcome.error)

    def _after_refusal(self, attempt: int, outcome: Refused) -> Step:
        status, retry_after = outcome.status, outcome.retry_after
        if not self.idempotent and status in UNKNOWN_OUTCOME_STATUSES:
            return Raise(
                OutcomeUnknown(
                    outcome.error,
                    attempt=attempt,
                    in_progress=status == 504,
                    retry_after=retry_after,
                )
            )
        retriable = status in (RETRY_STATUSES if self.idempotent else UNSENT_STATUSES)
        if not retriable or self.config.too_long(retry_after):
            return Raise(outcome.error)
        if attempt > self.config.max_retries:
            return Raise(outcome.error)
        why = str(status)
        if retry_after is None:
            return Retry(after=self.backoff(attempt), error=outcome.error, why=why)
        if status == 429:
            return Pause(after=retry_after, error=outcome.error, why=why)
        return Retry(after=retry_after, error=outcome.error, why=why)

    def _after_unreadable(self, attempt: int, outcome: Unreadable) -> Step:
        if not self.idempotent:
            # The server answered 2xx: it acted, but the answer is lost.
            return Raise(OutcomeUnknown(outcome.error, attempt=attempt, in_progress=False))
        if attempt > self.config.max_retries:
            return Raise(outcome.error)
        why = f"an unreadable {outcome.error.status}"
        return Retry(after=self.backoff(attempt), error=outcome.error, why=why)

    # -- a lost answer, settled by its caller (see copyai_async._once) ---------------------

    def wait_after_loss(self, lost: OutcomeUnknown) -> float:
        """How long to wait before looking for a lost request's result (and sending it
        again): the server's ``Retry-After`` if it asked for no more than this client
        waits, else a backoff (a server still at work gets a moment)."""
        asked = lost.retry_after
        if asked is not None and not self.config.too_long(asked):
            return asked
        return self.backoff(lost.attempt)

    def may_resend(self, lost: OutcomeUnknown) -> bool:
        """Whether a lost request whose result was ruled out (and which the server is not
        still acting on) is sent again: not with no retries left, nor when the server
        asked for a longer wait than this client waits."""
        return not (
            lost.attempt > self.config.max_retries or self.config.too_long(lost.retry_after)
        )
