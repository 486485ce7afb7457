"""Sweeps: one page of a workflow's listing answers for up to 100 of the runs waited on.

A wait on many runs of one workflow reads each run on its own (``GET
/workflow/{id}/run/{run_id}``) once per poll; yet one ``GET /workflow/{id}/run?size=100``
shows up to 100 runs at once, with their status and output. A :class:`Sweep` decides,
sweep by sweep, which pages of a workflow's listing a wait reads instead, and what each
page says of the runs waited on; the :class:`~copyai_async._poll.Scheduler` sends the
requests and feeds the answers in. Nothing here does I/O or reads a clock.

Where the runs are. The listing is newest first and new runs go to its head, so a run's
place counted from the *oldest* run does not move as runs are created: a run seen at
position ``i`` of a listing of ``total`` runs stays at ``total - 1 - i`` from the end,
and is looked for next at the position that gives under the latest ``total`` (runs
added to the wait since then are assumed newer still). Runs never seen in the listing
are looked for at its head. Runs created while a sweep is out may push a run past the
page it was looked for on: as the paginator reads such a page again, the sweep reads
once more the pages where the latest ``total`` puts the runs it did not find, if a page
showed that ``total`` moved; a run still not found is read on its own once. A run a
sweep looked for and did not find (:data:`MISSES` sweeps in a row), or that sits deeper
than :func:`depth` pages, is read on its own for the rest of the wait.

What a sweep costs. Reading a page costs one request; a run read from it whose
scheduled poll was due saves the one request the wait would have sent for it. A sweep
reads every page that holds a run whose poll is due (each pays for itself), and, while
the savings of earlier sweeps cover them, every other page that holds runs waited on:
so while pages are full, every run is read about once per ``initial`` at a fraction of
the requests, and as runs finish and pages thin out, the savings keep reading them that
often for up to :data:`CARRY` more sweeps' worth of pages, after which the pages are read
only as the runs' own schedules fall due. Pages read for runs that are not due are paid
for by what earlier sweeps saved; the other pages are those that look for runs not seen
in the listing yet (the first of them alone, first), and those read again for runs
pushed past them (see above).

When the listing cannot stand for a GET. A listing may leave ``status`` (and ``input``,
``output``) out of its items: the first page read shows it, and the workflow's runs
are read on their own from then on (the client remembers it, for later waits). A run
the listing shows finished but without its output is read on its own before its wait
ends. A listing not sorted newest first, or a page request that fails
:data:`FAILURES` times in a row (or for a reason another try would only repeat) ends
sweeping for the wait; no wait fails because of a page.
"""

from __future__ import annotations

import collections
import enum
import math
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

import attrs

__all__ = [
    "CARRY",
    "DENSITY",
    "FAILURES",
    "MAX_DEPTH",
    "MISSES",
    "PAGE_SIZE",
    "Answer",
    "Listing",
    "Refusals",
    "Sweep",
    "Usable",
    "depth",
]

R = TypeVar("R")

PAGE_SIZE = 100
"""Runs per page a sweep asks for: the API's most."""

DENSITY = 2
"""Runs waited on that a workflow needs for sweeps to begin (and that a page needs, on its
own, to be read for runs that have not been seen in the listing yet)."""

MISSES = 2
"""Sweeps in a row that may look for a run and not find it before it is read on its own."""

FAILURES = 3
"""Page requests in a row that may fail for a passing reason before sweeping ends."""

CARRY = 10
"""How many sweeps' worth of pages the savings may hold (``max_interval / initial`` by
the default policy): what keeps thinned-out pages read as often as full ones for a while."""

MAX_DEPTH = 200
"""The deepest page a sweep reads: runs beyond the newest 20,000 are read on their own."""

REFUSALS_KEPT = 10_000
"""Workflows whose listing a client remembers it cannot use."""


class Usable(enum.Enum):
    """What a run as the listing shows it is good for."""

    YES = "yes"
    """It stands for a read of the run on its own."""
    NO_STATUS = "no status"
    """The listing leaves the status out: it says nothing of the run's progress."""
    VERIFY = "verify"
    """It says the run finished, without all a read on its own would show (its
    output): the run is read on its own before its wait ends."""


class Refusals:
    """The workflows whose listing cannot stand for reads of single runs, and why
    (remembered by a client, so that later waits do not look again)."""

    def __init__(self, kept: int = REFUSALS_KEPT) -> None:
        self._why: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._kept = kept

    def get(self, workflow_id: str) -> str | None:
        return self._why.get(workflow_id)

    def add(self, workflow_id: str, why: str) -> None:
        self._why[workflow_id] = why
        self._why.move_to_end(workflow_id)
        while len(self._why) > self._kept:
            self._why.popitem(last=False)


@attrs.frozen(kw_only=True)
class Listing(Generic[R]):
    """How one API's listing is read for sweeps (built once per client).

    Attributes:
        read_page: ``(workflow_id, page, size)`` -> the page's runs, newest first, and
            the server's ``total`` (``None`` if it sent none).
        run_id: a run's id.
        usable: what a run as the listing shows it is good for.
        created_at: a run's ``createdAt`` (``None`` if not sent), to see that the
            listing is newest first.
        refusals: the workflows whose listing this client found it cannot use.
    """

    read_page: Callable[[str, int, int], Awaitable[tuple[Sequence[R], int | None]]]
    run_id: Callable[[R], str]
    usable: Callable[[R], Usable]
    created_at: Callable[[R], Any]
    refusals: Refusals = attrs.field(factory=Refusals)


def depth(runs: int) -> int:
    """The deepest page a sweep reads for a wait on ``runs`` runs: four times the pages
    they would fill, and two more (runs of others interleave, and push them deeper as
    they are created); never deeper than :data:`MAX_DEPTH`."""
    return 4 * -(-runs // PAGE_SIZE) + 2


@attrs.frozen
class Answer(Generic[R]):
    """What a page says of the runs waited on.

    Attributes:
        found: each run waited on that the page holds, and whether it must be read on
            its own before its wait may end (:attr:`Usable.VERIFY`).
        more: pages to read next in the same sweep (looking further for runs never seen).
        refused: why the listing cannot be used (the sweep is over), else ``None``.
    """

    found: list[tuple[str, R, bool]]
    more: list[int]
    refused: str | None = None


class Sweep(Generic[R]):
    """One workflow's listing as one wait reads it: where its runs are, whether it can
    stand for reads of single runs, which pages to read, and when.

    The scheduler tells it of the runs (:meth:`add`, :meth:`forget`), asks which pages a
    sweep reads (:meth:`begin`), feeds the answers in (:meth:`answer`, :meth:`failed`)
    and ends the sweep (:meth:`end`); :meth:`next_at` says when the next one is due.

    Args:
        workflow_id: the workflow.
        listing: how its listing is read (and what the client knows of it).
        floor: the least time between two sweeps (the policy's ``initial``).
        carry: sweeps' worth of pages the savings may hold (see :data:`CARRY`).
        jitter: the spread of the time between sweeps, as the policy's.
        rng: draws that jitter.
    """

    def __init__(
        self,
        workflow_id: str,
        *,
        listing: Listing[R],
        floor: float,
        carry: float = CARRY,
        jitter: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self.workflow_id = workflow_id
        self.listing = listing
        self.floor = floor
        self.carry = carry
        self.jitter = jitter
        self._rng = rng or random.Random()
        self.refused: str | None = listing.refusals.get(workflow_id)
        self.probed = False  # the first page was read
        self.in_flight = False
        self.savings = 0.0
        self._pending: set[str] = set()  # runs waited on, not done
        self._alone: set[str] = set()  # read on their own for the rest of the wait
        self._unsought: set[str] = set()  # never seen in the listing
        self._where: dict[str, int] = {}  # run id -> its place counted from the oldest run
        self._misses: dict[str, int] = {}
        self._total = 0  # the latest total the listing sent
        self._added = 0  # runs added to the wait since that total
        self._seen_runs = 0  # runs added to the wait in all
        self._last = -math.inf  # when the latest sweep began
        self._gap = floor
        self._pages = 0  # pages holding runs read by sweeps, at the end of the latest
        self._begin_total = 0
        self.moved = False  # a page of the sweep in flight showed runs were created
        self._failures = 0
        # The sweep in flight: the pages still to send after the first, the runs it
        # looks for that were never seen, and the deepest page asked for.
        self._rest: list[int] = []
        self._seeking: set[str] = set()
        self._deepest = 0
        self._found_sought = 0

    # -- the runs ----------------------------------------------------------------------

    def add(self, run_id: str) -> None:
        """A run is waited on."""
        if run_id in self._pending:
            return
        self._pending.add(run_id)
        self._unsought.add(run_id)
        self._added += 1
        self._seen_runs += 1

    def forget(self, run_id: str) -> None:
        """A run's wait is over."""
        self._pending.discard(run_id)
        self._alone.discard(run_id)
        self._unsought.discard(run_id)
        self._where.pop(run_id, None)
        self._misses.pop(run_id, None)

    def leave(self, run_id: str) -> None:
        """The run is read on its own for the rest of the wait (the listing showed it
        finished without its output: a read on its own ends its wait)."""
        if run_id in self._pending:
            self._alone.add(run_id)

    def wants(self, run_id: str) -> bool:
        """Whether the run is read by sweeps (else on its own)."""
        return self.refused is None and run_id in self._pending and run_id not in self._alone

    def active(self) -> bool:
        """Whether sweeps go on: the listing may be used, and enough runs are read by them
        (before the first sweep: :data:`DENSITY`)."""
        if self.refused is not None:
            return False
        sweepable = len(self._pending) - len(self._alone)
        return sweepable >= (DENSITY if not self.probed else 1)

    def page_of(self, run_id: str) -> int:
        """The page the run is looked for on (runs never seen: the first pages)."""
        place = self._where.get(run_id)
        if place is None:
            return 1
        position = self._total + self._added - 1 - place
        return max(position, 0) // PAGE_SIZE + 1

    # -- when --------------------------------------------------------------------------

    def next_at(self, first_due: float) -> float:
        """When the next sweep is due, given the earliest due poll of the runs it reads:
        at once for the first; then no sooner than the floor after the latest, and not
        before that poll unless the savings pay for a sweep of every page."""
        if self._last == -math.inf:
            return first_due
        earliest = self._last + self._gap
        if self.savings >= self._pages:
            return earliest
        return max(earliest, first_due)

    def _sweepable(self) -> Iterable[str]:
        return (r for r in self._pending if r not in self._alone)

    # -- a sweep -----------------------------------------------------------------------

    def unsought(self, run_id: str) -> bool:
        """Whether the run was never seen in the listing (sweeps look for it at its head)."""
        return run_id in self._unsought

    def begin(self, now: float, due: Iterable[str]) -> list[int]:
        """A sweep begins now: the pages it reads (none: no sweep). Before the first
        page was read, send only the first: :meth:`answer` gives the rest (or not).
        ``due``: the runs read by sweeps whose poll is due now.

        The pages holding a due run, or a run never seen; at the sweep's own time (not
        one an event brought forward), while the savings cover them, every other page
        that holds a run waited on, fullest first. Runs deeper than :func:`depth` pages
        are read on their own from now on."""
        regular = now >= self._last + self._gap
        self._last = now
        self._begin_total = self._total
        self.moved = False
        self._gap = self.floor * (1.0 + self.jitter * (self._rng.random() - 0.5))
        counts: collections.Counter[int] = collections.Counter()
        bound = self._bound()
        for run_id in list(self._sweepable()):
            page = self.page_of(run_id)
            if page > bound:
                self._alone.add(run_id)
            else:
                counts[page] += 1
        head = -(-len(self._unsought) // PAGE_SIZE)
        chosen = {self.page_of(run_id) for run_id in due if self.wants(run_id)}
        chosen.update(range(1, head + 1))
        spare = self.savings - len(chosen) if regular else 0
        for page, _ in counts.most_common():
            if page not in chosen and spare >= 1:
                chosen.add(page)
                spare -= 1
        self._seeking = set(self._unsought)
        self._found_sought = 0
        pages = sorted(chosen)
        self._deepest = max(pages, default=0)
        self.in_flight = bool(pages)
        if not self.probed:
            # The first page alone first: it shows whether the listing carries status,
            # and whether the runs sought are among its newest.
            self._rest = pages[1:]
        return pages

    def answer(self, page: int, runs: Sequence[R], total: int | None) -> Answer[R]:
        """A page of the sweep came back: the runs waited on that it holds."""
        if self.refused is not None:
            return Answer(found=[], more=[])
        self._failures = 0
        listing = self.listing
        ids = [listing.run_id(run) for run in runs]
        if not newest_first([listing.created_at(run) for run in runs]):
            return Answer(found=[], more=[], refused=self._refuse("is not newest first", True))
        self._added = 0
        if total is not None:
            self.moved = self.moved or total != self._begin_total
            self._total = total
        found: list[tuple[str, R, bool]] = []
        sought = 0
        base = (page - 1) * PAGE_SIZE
        for index, (run_id, run) in enumerate(zip(ids, runs, strict=True)):
            if run_id not in self._pending:
                continue
            usable = listing.usable(run)
            if usable is Usable.NO_STATUS:
                return Answer(found=[], more=[], refused=self._refuse("carries no status", True))
            # (Without a total, places count from the head: runs created later are
            # then counted by ``_added`` alone.)
            self._where[run_id] = (total if total is not None else 0) - 1 - (base + index)
            if run_id in self._seeking:
                self._seeking.discard(run_id)
                sought += 1
            self._unsought.discard(run_id)
            self._misses.pop(run_id, None)
            found.append((run_id, run, usable is Usable.VERIFY))
        self._found_sought += sought
        more: list[int] = []
        if not self.probed:
            self.probed = True
            if sought < min(DENSITY, len(self._seeking) + sought):
                # The runs sought are not among the newest: the listing is busy with
                # other runs (or they are old); they are read on their own.
                self._give_up_seeking()
            else:
                more, self._rest = self._rest, []
        elif (
            page == self._deepest
            and self._seeking
            and sought >= DENSITY
            and len(runs) >= PAGE_SIZE
            and page < self._bound()
        ):
            self._deepest = page + 1
            more = [page + 1]
        return Answer(found=found, more=more)

    def failed(self, *, passing: bool, why: str) -> str | None:
        """A page request of the sweep failed (``passing``: another try may succeed).
        Returns why sweeping ends, or ``None`` (the runs are read by the next sweep)."""
        if self.refused is not None:
            return None
        self._failures += 1
        self._rest = []
        if not passing or self._failures >= FAILURES:
            return self._refuse(f"failed: {why}", False)
        return None

    def end(self, unseen: Iterable[str], saved: int, spent: int) -> None:
        """The sweep is over: ``unseen``, the runs it looked for and did not find;
        ``saved``, the scheduled polls its readings stood for; ``spent``, its requests."""
        self.in_flight = False
        self._rest = []
        for run_id in unseen:
            misses = self._misses.get(run_id, 0) + 1
            if misses >= MISSES or (run_id in self._seeking and not self._found_sought):
                self._alone.add(run_id)
                self._misses.pop(run_id, None)
            else:
                self._misses[run_id] = misses
        self._seeking = set()
        self._pages = len({self.page_of(run_id) for run_id in self._sweepable()})
        self.savings = min(self.savings + saved - spent, self.carry * max(self._pages, 1))

    def _bound(self) -> int:
        """The deepest page read: :func:`depth` of the runs this wait has had (those that
        finished kept their places), and no deeper than :data:`MAX_DEPTH`."""
        return min(depth(self._seen_runs), MAX_DEPTH)

    def _give_up_seeking(self) -> None:
        self._alone.update(self._seeking)
        self._unsought.difference_update(self._seeking)
        self._seeking = set()
        self._rest = []

    def _refuse(self, why: str, remember: bool) -> str:
        reason = f"the listing of workflow {self.workflow_id} {why}"
        self.refused = reason
        self._rest = []
        if remember:
            self.listing.refusals.add(self.workflow_id, reason)
        return reason


def newest_first(created: Sequence[Any]) -> bool:
    """Whether these ``createdAt`` values (``None`` skipped) never grow."""
    dated = [c for c in created if c is not None]
    # Sorting a sorted list only compares neighbours (see the paginator's order check).
    return dated == sorted(dated, reverse=True)
