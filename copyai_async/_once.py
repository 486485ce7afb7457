"""A POST that creates something, sent at most once: a lost answer is settled by looking.

Starting a run (``BaseClient._start``) and creating a webhook
(``CopyAIClient.create_webhook``) share this one loop:

1. The request is sent. The transport sends it again by itself only where it provably
   never reached the server (see :mod:`copyai_async._http`); where the server may have
   acted on it, the transport raises :class:`OutcomeUnknown` instead.
2. With nothing to look for the result by (a start without a start key), the outcome
   is :attr:`Unsettled.NOTHING_TO_LOOK_BY`.
3. Otherwise, after a wait (the server's ``Retry-After`` if it asked for no more than
   ``max_retry_after``, else a backoff: a server still at work gets a moment), the
   caller's ``find`` looks for the result. **Found**: that is the answer. **The lookup
   failed** (or could not see far enough back): :attr:`Unsettled.LOOKUP_FAILED`.
4. **Ruled out**, but the server may still be acting on it (a timeout, a 504):
   :attr:`Unsettled.MAY_STILL_APPEAR`. Otherwise it is sent again, continuing the count
   of attempts, within ``max_retries`` (and not after a ``Retry-After`` longer than
   ``max_retry_after``); with none left, the error is raised knowing nothing was created.

Each unsettled outcome becomes the caller's documented error (``uncertain``): the
request may or may not have had its effect, and the message says how to find out.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import attrs

from ._errors import APIError
from ._http import Response, Transport, logger
from ._retry import OutcomeUnknown

__all__ = ["AtMostOnce", "Lookup", "LookupInconclusive", "Unsettled"]

_T = TypeVar("_T")


class LookupInconclusive(Exception):
    """Looking for a lost request's result could neither find it nor rule it out."""


class Unsettled(enum.Enum):
    """Why a lost answer could not be settled."""

    NOTHING_TO_LOOK_BY = "nothing to look by"  # e.g. a start without a start key
    LOOKUP_FAILED = "lookup failed"  # an APIError, or LookupInconclusive
    MAY_STILL_APPEAR = "may still appear"  # ruled out, but the server may still act


@attrs.frozen(kw_only=True)
class Lookup(Generic[_T]):
    """How a caller settles a lost answer.

    Attributes:
        find: looks for the result among what was created since the monotonic time it is
            given (when the request was first sent); returns ``None`` when it rules the
            result out, raises :class:`LookupInconclusive` (or an ``APIError``) when it
            cannot. ``None``: there is nothing to look by.
        uncertain: the documented error for an unsettled loss, given the loss, why it is
            unsettled, and the lookup's error (for ``LOOKUP_FAILED``).
        noun: what the request creates, for log lines ("run", "webhook").
        by: what the lookup goes by, for log lines ("its start key").
    """

    find: Callable[[float], Awaitable[_T | None]] | None
    uncertain: Callable[[OutcomeUnknown, Unsettled, Exception | None], APIError]
    noun: str
    by: str


class AtMostOnce(Generic[_T]):
    """One POST that creates something, sent at most once (see the module docstring).

    Args:
        transport: the client's transport.
        segments: the path, each segment already encoded.
        body: the JSON body.
        parse: reads a 2xx answer into the result.
        lookup: how a lost answer is settled.
        what: what the path names, for a 404's message ("no such workflow").
    """

    __slots__ = ("_body", "_lookup", "_parse", "_segments", "_transport", "_what")

    def __init__(
        self,
        transport: Transport,
        segments: Sequence[str],
        *,
        body: Mapping[str, Any],
        parse: Callable[[Response], _T],
        lookup: Lookup[_T],
        what: str | None = None,
    ) -> None:
        self._transport = transport
        self._segments = segments
        self._body = body
        self._parse = parse
        self._lookup = lookup
        self._what = what

    async def send(self) -> _T:
        """Send it, settling a lost answer instead of guessing.

        Raises:
            APIError: what ``lookup.uncertain`` builds, when the loss is unsettled; the
                request's own error (a subclass of it), when nothing was created.
        """
        transport = self._transport
        # Every lookup reaches back to the first attempt: a result an earlier attempt
        # created late must not be missed by the lookup after a later one.
        sent = transport.clock.monotonic()
        attempt = 1
        while True:
            try:
                return await transport.request(
                    "POST",
                    self._segments,
                    json_body=self._body,
                    idempotent=False,
                    parse=self._parse,
                    first_attempt=attempt,
                    what=self._what,
                )
            except OutcomeUnknown as exc:
                lost = exc
            found = await self._settle(lost, sent)
            if found is not None:
                return found
            attempt = lost.attempt + 1
            logger.info(
                "retrying %s %s (attempt %d of %d): the answer was lost, and no %s carries %s",
                lost.error.method,
                lost.error.path,
                attempt,
                transport.retry.max_retries + 1,
                self._lookup.noun,
                self._lookup.by,
            )

    async def _settle(self, lost: OutcomeUnknown, sent: float) -> _T | None:
        """The result, found; ``None`` to send again; raises when neither."""
        lookup = self._lookup
        if lookup.find is None:
            raise lookup.uncertain(lost, Unsettled.NOTHING_TO_LOOK_BY, None)
        transport = self._transport
        policy = transport.policy(idempotent=False)
        await transport.budget.sleep(policy.wait_after_loss(lost), cause=lost.error)
        try:
            found = await lookup.find(sent)
        except (APIError, LookupInconclusive) as lookup_error:
            raise lookup.uncertain(lost, Unsettled.LOOKUP_FAILED, lookup_error) from lost.error
        if found is not None:
            logger.info(
                "%s %s: the answer was lost, but the %s was created: found %s by %s",
                lost.error.method,
                lost.error.path,
                lookup.noun,
                getattr(found, "id", "?"),
                lookup.by,
            )
            return found
        if lost.in_progress:
            raise lookup.uncertain(lost, Unsettled.MAY_STILL_APPEAR, None)
        if not policy.may_resend(lost):
            # Known not to have been created: the error is the whole story.
            raise lost.error
        return None
