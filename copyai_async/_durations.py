"""What waits learn: how long each workflow's runs take, and where to poll them.

Every wait that sees a run end from a known start (this client started it, or the run's
``createdAt`` dates it) records one *observation*: an interval, since nobody saw the
moment itself. The run was last read unfinished ``low`` seconds after its start and
first read finished ``high`` seconds after it, so its duration lies in ``(low, high]``.

A workflow's latest :data:`WINDOW` observations, with the runs still being waited for
(each "longer than its age when last seen unfinished"), make its *estimate*: the
distribution of durations that best explains those intervals (the nonparametric maximum-likelihood
estimate for interval-censored data, found by the EM iteration of Turnbull, on a
geometric grid of bins), mixed with a little mass spread evenly over every duration
seen (:data:`_FLOOR`), so that no duration is ever ruled out. The lognormal that best
explains the intervals gives the shape inside the spans no interval splits (EM keeps the
shape it starts from there): a plain backoff that saw runs end "between 1 and 2.5 s" in
five cases of six and "between 2.5 and 4.75 s" in the sixth learns that they cluster just
below 2.5 s, not that they spread evenly from 1 s.

From the estimate, a :class:`Plan`: the ages (seconds since a run's start) at which a
new wait polls. It is chosen by dynamic programming over the grid to minimise the
expected number of polls plus the expected delay in seeing the end, one poll being worth
:data:`TRADE` of the median duration (or more, until the plan expects no more polls than
the plain backoff would; if none does, there is no plan). No gap exceeds the policy's
``max_interval``, and past the guard (the shortest 5% of the runs seen end) no poll
comes after the plain backoff's next one (counted from the wait's begin): before it,
the plan may skip the backoff's early looks; after it, a run is seen end no later than
without learning, whatever it became (a workflow that got slower). Past the plan's last
age, the plain backoff's polls go on. A wait uses a plan only if one was ready when it
began.

Nothing here does I/O or reads a clock: :class:`~copyai_async._poll.RunPoll` reports
observations and asks the plan for its next gap.
"""

from __future__ import annotations

import bisect
import collections
import functools
import itertools
import math
import random
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from ._poll import PollPolicy

__all__ = [
    "READY",
    "WINDOW",
    "DurationBook",
    "DurationModel",
    "Durations",
    "Plan",
    "plain_next",
]

WINDOW = 200
"""Observations an estimate is made from: a workflow's latest."""

READY = 20
"""Observations of a workflow before new waits place their polls by them."""

TRADE = 0.08
"""One poll is worth this share of the median duration in delay (0.18 s for runs of 2.3 s,
2.4 s for runs of 30 s): the plan spends a poll where it saves more delay than that."""

EXPLORE = 0.1
"""The share of new waits whose first poll looks at a random age before the plan's first."""

MAX_WORKFLOWS = 1_000
"""Workflows a book keeps (the least recently observed is forgotten first)."""

_FLOOR = 0.02  # share of the estimate spread evenly over (0, longest seen]
_MIN_SPREAD = 0.05  # the least spread of log-durations the lognormal start may have
_SIGNIFICANT = 1e-3  # a better log-likelihood by less than this is no reason to move
_GUARD = 0.05  # past this share of the runs seen, no poll comes after the backoff's next one
_HORIZON = 0.99  # a plan ends at this share of the runs seen (past it, the backoff's polls)
_MAX_AGES = 2_000  # a plan's ages, at most (past them, the plain backoff's polls)
_MIN_GAP = 0.1  # seconds: the shortest gap between two polls of a plan
_MAX_ALIVE = 10_000  # runs being waited for that a model keeps (the latest seen)
_RATIO = 1.025  # each bin is this much longer than the one before...
_MAX_BINS = 160  # ...unless that would take more bins than this
_ROUNDS = 30  # EM iterations per estimate
_REBUILD = 0.25  # a new estimate once this share of the window is new
_MAX_DURATION = 30 * 86_400.0  # seconds; a longer "duration" is a clock gone wrong


@attrs.frozen
class Durations:
    """What waits have learned of one workflow's run durations (``client.durations()``).

    Attributes:
        workflow_id: the workflow.
        observed: runs seen end from a known start (by this client's waits, and with a
            :class:`~copyai_async.RedisCoordination`, by those of every process sharing
            it), since the client was made.
        window: how many of the latest of those the estimate is made from (at most 200).
        ready: whether new waits place their polls by it (20 observations or more, the
            policy's ``adaptive`` on, and a schedule that expects no more polls than
            the policy's backoff).
        p50: the median duration, in seconds (``None``: nothing observed).
        p90: the 90th percentile.
        p99: the 99th percentile.
        schedule: the ages, in seconds after a run's start, at which a new wait of the
            policy asked about polls it (empty until ``ready``); past the last, the
            policy's backoff goes on.
    """

    workflow_id: str
    observed: int
    window: int
    ready: bool
    p50: float | None
    p90: float | None
    p99: float | None
    schedule: tuple[float, ...]


class _Estimate:
    """A distribution of durations on a grid of bins: bin ``k`` is ``(edges[k],
    edges[k + 1]]`` and holds ``masses[k]`` (the masses sum to 1)."""

    __slots__ = ("edges", "mass_to", "masses", "moment_to")

    def __init__(self, edges: list[float], masses: list[float]) -> None:
        self.edges = edges
        self.masses = masses
        # Prefix sums: the mass up to edge i, and the mass times its bin's middle.
        self.mass_to = [0.0]
        self.moment_to = [0.0]
        for k, mass in enumerate(masses):
            self.mass_to.append(self.mass_to[-1] + mass)
            self.moment_to.append(self.moment_to[-1] + mass * (edges[k] + edges[k + 1]) / 2)

    @classmethod
    def fit(
        cls, observations: collections.deque[tuple[float, float]], alive: Iterable[float] = ()
    ) -> _Estimate:
        """The estimate that best explains the intervals: EM from the lognormal that
        best explains them (which shapes the mass inside the spans no observation
        splits: EM keeps the shape it starts from within them).

        ``alive``: the ages at which runs still being waited for were last seen
        unfinished. Each says "longer than this" (a right-censored interval): without
        them, the first runs learned of a lot started together would be its shortest
        only, and the estimate would lean short."""
        censored = [(low, math.inf) for low in alive if low > 0]
        longest = max([high for _, high in observations] + [low * 1.05 for low, _ in censored])
        intervals = [*observations, *censored]
        edges = _grid(min(high for _, high in observations), longest)
        bins = len(edges) - 1
        span = edges[-1]
        floor = [_FLOOR * (edges[k + 1] - edges[k]) / span for k in range(bins)]
        mu, sigma = _lognormal(intervals)
        below = [0.0, *(_normal_below((math.log(edge) - mu) / sigma) for edge in edges[1:])]
        total = below[-1] or 1.0
        masses = [(1 - _FLOOR) * (below[k + 1] - below[k]) / total + floor[k] for k in range(bins)]
        covers = [_cover(edges, low, high) for low, high in intervals]
        share = (1.0 - _FLOOR) / len(covers)
        for _ in range(_ROUNDS):
            prefix = [0.0]
            for mass in masses:
                prefix.append(prefix[-1] + mass)
            # Each interval's weight spread over its bins in proportion to their mass: a
            # difference array sums every interval's 1 / (its mass) per bin at once.
            weight = [0.0] * (bins + 1)
            for first, last in covers:
                held = prefix[last + 1] - prefix[first]
                if held > 0:
                    weight[first] += 1.0 / held
                    weight[last + 1] -= 1.0 / held
            running = 0.0
            for k in range(bins):
                running += weight[k]
                masses[k] = share * masses[k] * running + floor[k]
            total = sum(masses)
            masses = [mass / total for mass in masses]
        return cls(edges, masses)

    def split(self, cuts: Iterable[float]) -> _Estimate:
        """The same estimate on a grid with edges at ``cuts`` too (each bin cut is split
        in proportion to its lengths)."""
        edges, masses = list(self.edges), list(self.masses)
        for cut in sorted(set(cuts)):
            k = bisect.bisect_right(edges, cut) - 1
            if not 0 <= k < len(masses) or cut - edges[k] < 1e-9 or edges[k + 1] - cut < 1e-9:
                continue
            share = (cut - edges[k]) / (edges[k + 1] - edges[k])
            edges.insert(k + 1, cut)
            masses[k : k + 1] = [masses[k] * share, masses[k] * (1 - share)]
        return _Estimate(edges, masses)

    def share_below(self, duration: float) -> float:
        """The share of runs that end within ``duration`` seconds."""
        edges, masses = self.edges, self.masses
        k = bisect.bisect_right(edges, duration) - 1
        if k >= len(masses):
            return 1.0
        inside = (duration - edges[k]) / (edges[k + 1] - edges[k])
        return self.mass_to[k] + masses[k] * inside

    def quantile(self, q: float) -> float:
        """The duration below which a share ``q`` of runs end."""
        seen = 0.0
        edges = self.edges
        for k, mass in enumerate(self.masses):
            if seen + mass >= q and mass > 0:
                return edges[k] + (edges[k + 1] - edges[k]) * (q - seen) / mass
            seen += mass
        return edges[-1]


def _normal_below(x: float) -> float:
    """The standard normal distribution's share below ``x``."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _log_likelihood(bounds: list[tuple[float | None, float]], mu: float, sigma: float) -> float:
    """How well a lognormal explains the intervals, given as the logs of their ends
    (``None``: from 0): their log-likelihood."""
    scale = 1.0 / (math.sqrt(2.0) * sigma)
    erfc, log = math.erfc, math.log
    total = 0.0
    for log_low, log_high in bounds:
        b = (log_high - mu) * scale
        if log_low is None:
            held = 0.5 * erfc(-b)
        else:
            a = (log_low - mu) * scale
            # In the upper tail, differences of erfc keep their digits.
            held = 0.5 * (erfc(a) - erfc(b)) if a > 0 else 0.5 * (erfc(-b) - erfc(-a))
        total += log(held) if held > 1e-300 else -690.0
    return total


def _lognormal(observations: list[tuple[float, float]]) -> tuple[float, float]:
    """The lognormal (the mean and spread of the log-duration) that best explains the
    intervals, its spread no less than :data:`_MIN_SPREAD`: a pattern search from the
    intervals' upper ends.

    Where the intervals cannot tell (all of them "between 1 and 2.5 s"), it stays near
    its start: the upper ends, so that such runs are first looked at late rather than
    early (fewer polls; the waits that look early, :data:`EXPLORE`, correct it). It
    also leans against a bias of the first runs learned: of runs started together, the
    short ones end, and are learned, first."""
    bounds = [(math.log(low) if low > 0 else None, math.log(high)) for low, high in observations]
    uppers = sorted(high for _, high in bounds if high < math.inf)
    mu = uppers[len(uppers) // 2]
    sigma = max(_MIN_SPREAD, math.sqrt(sum((x - mu) ** 2 for x in uppers) / len(uppers)))
    best = _log_likelihood(bounds, mu, sigma)
    step_mu, step_sigma = 0.25, 0.5  # in log-duration, and in the log of the spread
    while step_mu > 2e-3:
        moved = False
        for d_mu, d_log_sigma in ((step_mu, 0), (-step_mu, 0), (0, step_sigma), (0, -step_sigma)):
            cand_mu = mu + d_mu
            cand_sigma = max(_MIN_SPREAD, sigma * math.exp(d_log_sigma))
            value = _log_likelihood(bounds, cand_mu, cand_sigma)
            if value > best + _SIGNIFICANT:
                best, mu, sigma, moved = value, cand_mu, cand_sigma, True
        if not moved:
            step_mu, step_sigma = step_mu / 2, step_sigma / 2
    return mu, sigma


def _cover(edges: list[float], low: float, high: float) -> tuple[int, int]:
    """The first and last bins an interval covers: those more than half inside it (so
    that intervals meeting at a point share no bin), else the one holding its middle."""
    first = bisect.bisect_right(edges, low) - 1
    if low > (edges[first] + edges[first + 1]) / 2:
        first += 1
    last = min(len(edges) - 2, max(0, bisect.bisect_left(edges, high) - 1))
    if high < (edges[last] + edges[last + 1]) / 2:
        last -= 1
    if first > last:
        first = last = max(0, bisect.bisect_left(edges, (low + high) / 2) - 1)
    return first, last


def _grid(shortest: float, longest: float) -> list[float]:
    """Bin edges: 0, then from a quarter of the shortest run's bound up past the longest
    in geometric steps (``_RATIO``, coarser if that would take over ``_MAX_BINS``)."""
    start = max(shortest / 4, 1e-3)
    top = max(longest, start * _RATIO)
    ratio = max(_RATIO, (top / start) ** (1 / _MAX_BINS))
    count = max(1, math.ceil(math.log(top / start) / math.log(ratio)))
    return [0.0, *(start * ratio**k for k in range(count)), top * (1 + 1e-9)]


@functools.lru_cache(maxsize=64)
def _plain_points(policy: PollPolicy) -> tuple[tuple[float, ...], float]:
    """The plain backoff's poll ages (no jitter) until its gap stops growing, and that
    last gap, which it keeps from there on."""
    points, attempt = [0.0], 0
    gap = policy.interval(0)
    while attempt < 200 and gap < policy.max_interval:
        points.append(points[-1] + gap)
        attempt += 1
        gap = policy.interval(attempt)
    return tuple(points), gap


def plain_next(policy: PollPolicy, age: float) -> float:
    """The first age after ``age`` at which the plain backoff polls (before jitter)."""
    points, gap = _plain_points(policy)
    if age < points[-1]:
        return points[bisect.bisect_right(points, age)]
    after = points[-1] + (math.floor((age - points[-1]) / gap) + 1) * gap
    while after <= age:  # (float rounding)
        after += gap
    return after


def _expected_polls(estimate: _Estimate, ages: Iterable[float]) -> float:
    """How many polls a wait at ``ages`` makes on average, if runs last as estimated:
    the first, and each next one a run is still unfinished for."""
    total = 1.0
    for age in ages:
        alive = 1.0 - estimate.share_below(age)
        if alive <= 1e-9:
            break
        total += alive
    return total


def _plain_ages(policy: PollPolicy, until: float) -> Iterator[float]:
    """The plain backoff's poll ages after 0, up to the first past ``until`` (at most
    :data:`_MAX_AGES`)."""
    age = 0.0
    for _ in range(_MAX_AGES):
        age = plain_next(policy, age)
        yield age
        if age >= until:
            return


def _best_ages(
    estimate: _Estimate, policy: PollPolicy, worth: float, guard: float, horizon: float
) -> list[float]:
    """The poll ages that minimise the expected polls plus the expected delay (in units
    of ``worth`` seconds), by dynamic programming over the estimate's bin edges: no gap
    longer than ``max_interval``, and past the guard (the shortest learned durations)
    no poll after the one the plain backoff would make next; up to the horizon (the
    longest learned durations but the rarest 1%), past which the backoff goes on."""
    edges, masses = estimate.edges, estimate.masses
    count = len(masses)
    mass_to, moment_to = estimate.mass_to, estimate.moment_to
    value = 1.0 / worth  # per second of delay

    def reach(age: float) -> float:
        # The backoff's first look past the guard, or past this age: a run that ends
        # past the guard must not be seen after the backoff would see it.
        return min(policy.max_interval, plain_next(policy, max(age, guard)) - age)

    # cost[i]: the least expected cost from a poll at edge i (unnormalised: it counts
    # only runs still unfinished there); after[i]: the next poll's edge.
    cost = [math.inf] * (count + 1)
    after = [count] * (count + 1)
    cost[count] = 0.0
    for i in range(count - 1, -1, -1):
        here, alive = edges[i], 1.0 - mass_to[i]
        limit = reach(here)
        best, best_j = math.inf, i + 1
        j = i + 1
        while j <= count and (edges[j] - here <= limit or j == i + 1):
            gathered = mass_to[j] - mass_to[i]
            delay = edges[j] * gathered - (moment_to[j] - moment_to[i])
            total = alive + value * delay + cost[j]
            if total < best:
                best, best_j = total, j
            j += 1
        cost[i], after[i] = best, best_j
    ages: list[float] = []
    here, i = 0.0, 0
    while i < count:
        i = after[i]
        step = reach(here)
        while edges[i] - here > step * (1 + 1e-9):
            here += step  # a bin wider than the longest gap: crossed in steps
            ages.append(here)
            step = reach(here)
        here = edges[i]
        ages.append(here)
        if here >= horizon or len(ages) >= _MAX_AGES:
            break  # past them, the backoff's polls
    return ages[:_MAX_AGES]


class Plan:
    """The ages (seconds after a run's start) at which a wait polls, for one policy.

    Args:
        ages: the poll ages, increasing.
        policy: the policy whose backoff goes on past the last age.
        spacing: the shortest gap worth a poll: a planned age closer than this to the
            last poll is skipped (plans are rebuilt as runs end, and may move a
            little). No gap is ever under 0.1 s (half of ``max_interval``, if less): a
            look of the backoff closer than that to the last poll counts as made.
        guard: the age past which no poll comes after the plain backoff's next one.
    """

    __slots__ = ("ages", "guard", "least", "policy", "spacing")

    def __init__(
        self, ages: tuple[float, ...], policy: PollPolicy, spacing: float, guard: float = 0.0
    ) -> None:
        self.ages = ages
        self.policy = policy
        # The least gap: a tenth of a second (or half max_interval), more than the
        # scheduler may move a poll early, so that each poll moves the next one on.
        self.least = min(_MIN_GAP, policy.max_interval / 2)
        self.spacing = max(spacing, self.least)
        self.guard = guard

    @classmethod
    def build(
        cls, estimate: _Estimate, policy: PollPolicy, guard: float, horizon: float
    ) -> Plan | None:
        """The poll ages that minimise expected polls plus delay (see the module), one
        poll being worth :data:`TRADE` of the median; worth more, if need be, until the
        plan expects no more polls than the plain backoff would on the same estimate
        (``None`` if no such plan is found: then the backoff it is). Past ``guard``
        (the shortest runs seen), no poll comes after the backoff's next one; the plan
        ends at ``horizon`` (the longest runs seen, but for the rarest 1%)."""
        median = max(estimate.quantile(0.5), 1e-3)
        worth = TRADE * median
        spacing = min(worth / 2, policy.max_interval / 10)
        plain = list(_plain_ages(policy, estimate.edges[-1]))
        budget = _expected_polls(estimate, [0.0, *plain])
        # The backoff's own ages are edges too: past the guard, a poll may be due at one.
        # The backoff's own looks are edges too: past the guard a poll may be due at
        # one, and before it, none may be more than max_interval apart.
        estimate = estimate.split(age for age in plain if age <= horizon)
        if len(estimate.masses) > _MAX_BINS * 4:
            return None  # the backoff's looks alone outnumber what the grid can hold
        for _ in range(8):
            ages = _best_ages(estimate, policy, worth, guard, horizon)
            if ages and _expected_polls(estimate, ages[:-1]) <= budget:
                return cls(tuple(ages), policy, spacing, guard)
            worth *= 1.5
        return None

    def first(self, age: float, rng: random.Random) -> float | None:
        """Seconds from ``age`` to a first poll; ``None``: poll at once (the run may have
        ended already).

        One wait in ten (:data:`EXPLORE`) looks first at a random age before the planned
        one: without such looks, runs that end before the first poll would only say
        "before it", and a workflow that got faster would never be seen to."""
        ages = self.ages
        if not ages or age >= ages[0]:
            return None
        ahead = ages[0] - age
        if rng.random() < EXPLORE:
            return ahead * rng.random()
        return ahead * (1.0 + self.policy.jitter * (rng.random() - 0.5))

    def gap(self, age: float, rng: random.Random, elapsed: float | None = None) -> float:
        """Seconds from a poll at ``age`` to the next: to the next planned age, or past
        the last, to the next look of the plain backoff (so that a run slower than any
        seen is seen end no later than without learning); never more than
        ``max_interval``, and jittered as the policy says.

        ``elapsed``: seconds since the wait began (default: ``age``, a wait begun with
        the run). The backoff's looks are counted from there, as the backoff counts
        them."""
        policy = self.policy
        began = 0.0 if elapsed is None else age - elapsed  # the run's age at the begin
        since = age - began
        limit = began + plain_next(policy, max(since, self.guard - began))
        if limit < age + self.least:  # a look that close to this one is this one
            limit = began + plain_next(policy, since + self.least)
        i = bisect.bisect_right(self.ages, age + self.spacing)
        following = min(self.ages[i], limit) if i < len(self.ages) else limit
        gap = min(following - age, policy.max_interval)
        return gap * (1.0 + policy.jitter * (rng.random() - 0.5))


class DurationModel:
    """One workflow's observations, its estimate and plans (rebuilt as news comes)."""

    __slots__ = ("_alive", "_estimate", "_fresh", "_plans", "_recent", "observations", "observed")

    def __init__(self) -> None:
        self.observations: collections.deque[tuple[float, float]] = collections.deque(maxlen=WINDOW)
        self.observed = 0
        self._estimate: _Estimate | None = None
        self._fresh = 0  # observations since the estimate was made
        self._plans: dict[PollPolicy, Plan | None] = {}
        # The runs observed lately: a run seen end by two waits (or two processes) is
        # learned once.
        self._recent: collections.OrderedDict[str, None] = collections.OrderedDict()
        # Runs being waited for: the latest age each was seen unfinished at.
        self._alive: collections.OrderedDict[str, float] = collections.OrderedDict()

    def alive(self, run_id: str, low: float) -> None:
        """A run being waited for was seen unfinished ``low`` seconds after its start."""
        self._alive.pop(run_id, None)
        self._alive[run_id] = low
        if len(self._alive) > _MAX_ALIVE:
            self._alive.popitem(last=False)

    def observe(self, low: float, high: float, run_id: str | None = None) -> bool:
        """A run ended between ``low`` and ``high`` seconds after its start. Returns
        False if that run was learned already."""
        if run_id is not None:
            self._alive.pop(run_id, None)
            if run_id in self._recent:
                return False
            self._recent[run_id] = None
            if len(self._recent) > 2 * WINDOW:
                self._recent.popitem(last=False)
        self.observations.append((low, high))
        self.observed += 1
        self._fresh += 1
        return True

    def estimate(self) -> _Estimate | None:
        """The estimate from the latest observations (``None``: none yet); made again
        once a quarter of the window is new."""
        if not self.observations:
            return None
        if self._estimate is None or self._fresh >= max(1, len(self.observations) * _REBUILD):
            alive = list(itertools.islice(reversed(self._alive.values()), WINDOW))
            self._estimate = _Estimate.fit(self.observations, alive)
            self._fresh = 0
            self._plans.clear()
        return self._estimate

    def plan(self, policy: PollPolicy) -> Plan | None:
        """Where a new wait of ``policy`` polls (``None``: not ready, poll as plain)."""
        if len(self.observations) < READY:
            return None
        estimate = self.estimate()
        if estimate is None:  # pragma: no cover - observations were checked above
            return None
        if policy not in self._plans:
            if len(self._plans) >= 8:
                self._plans.clear()
            # The guard and the horizon from what runs were seen end by: the 5th and
            # the 99th percentiles of their upper bounds.
            highs = sorted(high for _, high in self.observations)
            guard = highs[int(len(highs) * _GUARD)]
            horizon = highs[min(len(highs) - 1, int(len(highs) * _HORIZON))]
            self._plans[policy] = Plan.build(estimate, policy, guard, horizon)
        return self._plans[policy]

    def summary(self, workflow_id: str, policy: PollPolicy) -> Durations:
        estimate = self.estimate()
        plan = self.plan(policy) if policy.adaptive else None
        return Durations(
            workflow_id=workflow_id,
            observed=self.observed,
            window=len(self.observations),
            ready=plan is not None,
            p50=None if estimate is None else estimate.quantile(0.5),
            p90=None if estimate is None else estimate.quantile(0.9),
            p99=None if estimate is None else estimate.quantile(0.99),
            schedule=() if plan is None else plan.ages,
        )


class DurationBook:
    """The models of a client's workflows: fed by its waits (and, with a relay, those of
    other processes), read by its new waits.

    Args:
        relay: passes this process's observations on to other processes (Redis):
            called with the workflow, the interval and the run's id.
    """

    def __init__(
        self, *, relay: Callable[[str, float, float, str | None], None] | None = None
    ) -> None:
        self._models: collections.OrderedDict[str, DurationModel] = collections.OrderedDict()
        self.relay = relay

    def observe(
        self,
        workflow_id: str,
        low: float,
        high: float,
        *,
        run_id: str | None = None,
        relayed: bool = False,
    ) -> None:
        """A run of the workflow ended between ``low`` and ``high`` seconds after its
        start. Nonsense (a negative, reversed or absurd interval) is ignored, and so is
        a run learned already."""
        if not (0.0 <= low < high <= _MAX_DURATION):
            return
        model = self._touch(workflow_id)
        if model.observe(low, high, run_id) and not relayed and self.relay is not None:
            self.relay(workflow_id, low, high, run_id)

    def alive(self, workflow_id: str, run_id: str, low: float) -> None:
        """A run of the workflow, waited for, was seen unfinished ``low`` seconds after
        its start (what the next estimate counts as "longer than that")."""
        self._touch(workflow_id).alive(run_id, low)

    def _touch(self, workflow_id: str) -> DurationModel:
        """The workflow's model (made if new), now the most recently used."""
        model = self._models.pop(workflow_id, None) or DurationModel()
        self._models[workflow_id] = model
        if len(self._models) > MAX_WORKFLOWS:
            self._models.popitem(last=False)
        return model

    def model(self, workflow_id: str) -> DurationModel | None:
        """The workflow's model, if any run of it was observed."""
        return self._models.get(workflow_id)

    def summary(self, workflow_id: str, policy: PollPolicy) -> Durations:
        model = self._models.get(workflow_id) or DurationModel()
        return model.summary(workflow_id, policy)
