"""How fake runs move through their statuses: :class:`Schedule`, and the run itself."""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

import attrs

from .._check import fraction

__all__ = ["TERMINAL", "FakeRun", "Schedule"]

TERMINAL = frozenset({"COMPLETE", "FAILED"})
# The default schedule: 2.5 s in all, each step drawn within +-60% for every run (1 to 4 s).
_DEFAULT_STEPS = (("NEW", 0.3), ("WAITING", 0.5), ("PROCESSING", 1.7))
_DEFAULT_SPREAD = 0.6


def _check_steps(_instance: Any, _attribute: Any, steps: tuple[tuple[str, float], ...]) -> None:
    for status, duration in steps:
        if not isinstance(status, str) or not status:
            raise TypeError(f"each step's status must be a non-empty str, got {status!r}")
        if not duration >= 0:
            raise ValueError(f"each step's duration must be >= 0, got {duration!r}")


def _check_unit(_instance: Any, _attribute: Any, unit: str) -> None:
    if unit not in ("polls", "seconds"):
        raise ValueError(f"unit must be 'polls' or 'seconds', got {unit!r}")


def _check_spread(_instance: Any, _attribute: Any, spread: float) -> None:
    fraction("spread", spread)


@attrs.frozen(kw_only=True)
class Schedule:
    """How a fake run moves through its statuses.

    Each step is ``(status, duration)``; after the last step the run is ``final``.
    Durations are seconds since the run was created (``unit="seconds"``, on the server's
    clock), as in production, where runs finish with time whether or not anyone looks;
    or reads of the run (``unit="polls"``: the first read shows the first step), for
    tests that want a run to change exactly when it is read. A read is a GET of the run,
    or a page of the listing that shows it with its status (waits on many runs read
    pages: see "Sweeps" in the waiting guide).

    :meth:`default` is the fake server's default: NEW for 0.3 s, WAITING for 0.5 s and
    PROCESSING for 1.7 s, each duration drawn anew for every run within ``spread=0.6``
    of it, so each run finishes at its own time, 1 to 4 s after it starts. ``Schedule()``
    has the same steps with no spread (every run 2.5 s). Build others with
    :meth:`seconds`, :meth:`polls` or :meth:`immediate`.

    Attributes:
        steps: the ``(status, duration)`` steps before the final status.
        final: the status after the last step (``"COMPLETE"``, ``"FAILED"``, ...).
        unit: what the durations count: ``"seconds"`` or ``"polls"``.
        spread: how much the durations vary from run to run, 0..1. When a run is
            created (or rescheduled), each step's duration is multiplied by a factor of
            its own, drawn uniformly from ``1 - spread`` to ``1 + spread`` with the
            server's seed (so a seed gives the same durations every time); the run keeps
            the drawn durations as its ``schedule`` (:meth:`draw`). 0 (the default):
            every run alike.
        output: the output of a COMPLETE run (default: one generated text).
        credits: the credits a finished run reports.

    Raises:
        TypeError, ValueError: a step that is not ``(non-empty str, duration >= 0)``, a
            ``unit`` other than the two, or a ``spread`` outside 0..1 (the message
            names the argument).
    """

    steps: tuple[tuple[str, float], ...] = attrs.field(
        default=_DEFAULT_STEPS, validator=_check_steps
    )
    final: str = "COMPLETE"
    unit: Literal["polls", "seconds"] = attrs.field(default="seconds", validator=_check_unit)
    spread: float = attrs.field(default=0.0, validator=_check_spread)
    output: Mapping[str, Any] | None = None
    credits: int = 2

    @classmethod
    def default(cls) -> Schedule:
        """The fake server's default schedule: NEW, WAITING and PROCESSING for 0.3, 0.5
        and 1.7 s, each drawn for every run within 60% (``spread=0.6``): each run is
        COMPLETE at its own time, 1 to 4 s after it starts, as the server's seed draws."""
        return cls(steps=_DEFAULT_STEPS, unit="seconds", spread=_DEFAULT_SPREAD)

    @classmethod
    def seconds(
        cls, *steps: tuple[str, float], final: str = "COMPLETE", spread: float = 0.0, **kw: Any
    ) -> Schedule:
        """Steps measured in seconds since creation, e.g. ``Schedule.seconds(("PROCESSING",
        2.5))``; every run alike unless ``spread`` is given."""
        return cls(steps=steps, final=final, unit="seconds", spread=spread, **kw)

    @classmethod
    def polls(
        cls, *steps: tuple[str, float], final: str = "COMPLETE", spread: float = 0.0, **kw: Any
    ) -> Schedule:
        """Steps measured in reads of the run, e.g. ``Schedule.polls(("NEW", 1),
        ("WAITING", 1), ("PROCESSING", 2))``: NEW on the first read, WAITING on the
        second, PROCESSING on the next two, COMPLETE from the fifth. A read is a GET of
        the run, or a listing page that shows it with its status."""
        return cls(steps=steps, final=final, unit="polls", spread=spread, **kw)

    @classmethod
    def immediate(cls, final: str = "COMPLETE", **kw: Any) -> Schedule:
        """A run that is ``final`` from its first observation."""
        return cls(steps=(), final=final, unit="polls", spread=0.0, **kw)

    @property
    def total(self) -> float:
        """The polls or seconds after which the run is ``final``: the steps' durations summed."""
        return float(sum(duration for _, duration in self.steps))

    def draw(self, rng: random.Random) -> Schedule:
        """One run's schedule: each duration times its own factor drawn from ``rng`` within
        ``spread``, and no spread left (this schedule itself when ``spread`` is 0)."""
        if not self.spread or not self.steps:
            return self
        low, high = 1.0 - self.spread, 1.0 + self.spread
        steps = tuple((status, d * rng.uniform(low, high)) for status, d in self.steps)
        return attrs.evolve(self, steps=steps, spread=0.0)

    def status_at(self, elapsed: float) -> str:
        """The status after ``elapsed`` polls or seconds (the steps as they are: a spread is
        applied by :meth:`draw`, when a run is created)."""
        edge = 0.0
        for status, duration in self.steps:
            edge += duration
            if elapsed < edge:
                return status
        return self.final


@attrs.define(kw_only=True, eq=False)
class FakeRun:
    """A run held by the fake server. Change its fields to steer a test.

    Its ``schedule`` is the one it was given with the durations drawn for it
    (:meth:`Schedule.draw`), so two runs of the default schedule differ.
    """

    id: str
    workflow_id: str
    input: dict[str, Any]
    metadata: dict[str, Any] | None
    created_at: datetime
    created_mono: float
    schedule: Schedule
    polls: int = 0
    listed: int = 0  # listing pages that showed it with its status
    emitted: str | None = None  # the last webhook event phase sent: "started" or "final"

    @property
    def finishes_at(self) -> float | None:
        """When the run becomes final, on the server's clock (``unit="seconds"``); ``None``
        for a ``unit="polls"`` schedule, which ends when it is read."""
        if self.schedule.unit != "seconds":
            return None
        return self.created_mono + self.schedule.total

    def status(self, now: float) -> str:
        """The run's status at server-clock time ``now`` (not counting a new poll)."""
        if self.schedule.unit == "polls":
            return self.schedule.status_at(self.polls + self.listed)
        return self.schedule.status_at(now - self.created_mono)
