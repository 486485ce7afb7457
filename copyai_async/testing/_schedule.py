"""How fake runs move through their statuses: :class:`Schedule`, and the run itself."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

import attrs

__all__ = ["TERMINAL", "FakeRun", "Schedule"]

TERMINAL = frozenset({"COMPLETE", "FAILED"})


def _check_duration(steps: tuple[tuple[str, float], ...]) -> None:
    for status, duration in steps:
        if not isinstance(status, str) or not status:
            raise TypeError(f"each step's status must be a non-empty str, got {status!r}")
        if not duration >= 0:
            raise ValueError(f"each step's duration must be >= 0, got {duration!r}")


@attrs.frozen(kw_only=True)
class Schedule:
    """How a fake run moves through its statuses.

    Each step is ``(status, duration)``; after the last step the run is ``final``.
    Durations count GETs of the run (``unit="polls"``: the first GET shows the first
    step) or seconds since the run was created (``unit="seconds"``, on the server's clock).

    Build one with :meth:`polls`, :meth:`seconds` or :meth:`immediate`.
    """

    steps: tuple[tuple[str, float], ...] = (("NEW", 1), ("WAITING", 1), ("PROCESSING", 2))
    final: str = "COMPLETE"
    unit: Literal["polls", "seconds"] = "polls"
    output: Mapping[str, Any] | None = None
    credits: int = 2

    def __attrs_post_init__(self) -> None:
        _check_duration(self.steps)
        if self.unit not in ("polls", "seconds"):
            raise ValueError(f"unit must be 'polls' or 'seconds', got {self.unit!r}")

    @classmethod
    def polls(cls, *steps: tuple[str, float], final: str = "COMPLETE", **kw: Any) -> Schedule:
        """Steps measured in GETs of the run, e.g. ``Schedule.polls(("PROCESSING", 3))``."""
        return cls(steps=tuple(steps), final=final, unit="polls", **kw)

    @classmethod
    def seconds(cls, *steps: tuple[str, float], final: str = "COMPLETE", **kw: Any) -> Schedule:
        """Steps measured in seconds since creation, e.g. ``(("PROCESSING", 2.5),)``."""
        return cls(steps=tuple(steps), final=final, unit="seconds", **kw)

    @classmethod
    def immediate(cls, final: str = "COMPLETE", **kw: Any) -> Schedule:
        """A run that is ``final`` from its first observation."""
        return cls(steps=(), final=final, **kw)

    def status_at(self, elapsed: float) -> str:
        """The status after ``elapsed`` polls or seconds."""
        edge = 0.0
        for status, duration in self.steps:
            edge += duration
            if elapsed < edge:
                return status
        return self.final


@attrs.define(kw_only=True, eq=False)
class FakeRun:
    """A run held by the fake server. Change its fields to steer a test."""

    id: str
    workflow_id: str
    input: dict[str, Any]
    metadata: dict[str, Any] | None
    created_at: datetime
    created_mono: float
    schedule: Schedule
    polls: int = 0
    emitted: str | None = None  # the last webhook event phase sent: "started" or "final"

    def status(self, now: float) -> str:
        """The run's status at server-clock time ``now`` (not counting a new poll)."""
        if self.schedule.unit == "polls":
            return self.schedule.status_at(self.polls)
        return self.schedule.status_at(now - self.created_mono)
