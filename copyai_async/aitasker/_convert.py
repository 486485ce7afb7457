"""aitasker's wire format: snake_case JSON, a bare array for lists, no envelope."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import attrs

from .._convert import WireError, base_converter, wire_error
from ._models import AITaskerRun, NodeRun

if TYPE_CHECKING:
    import cattrs

if sys.version_info < (3, 11):  # pragma: no cover - version-dependent
    from exceptiongroup import ExceptionGroup

__all__ = ["AITASKER_WIRE", "AITaskerWire"]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@attrs.define
class AITaskerWire:
    """Turns aitasker's JSON into models, or raises WireError naming the JSON path.

    Args:
        strict: refuse keys the models do not know (the test twin).
    """

    strict: bool = False
    _built: cattrs.Converter | None = attrs.field(init=False, default=None)

    @property
    def _conv(self) -> cattrs.Converter:
        if self._built is None:
            conv = base_converter(strict=self.strict)
            node_runs = tuple[NodeRun, ...]
            conv.register_structure_hook_func(lambda t: bool(t == node_runs), self._node_runs)
            self._built = conv
        return self._built

    def _node_runs(self, value: Any, _: Any) -> tuple[NodeRun, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise ValueError(f"expected a list of node runs, got {_short(value)}")
        return tuple(self._conv.structure(item, NodeRun) for item in value)

    def run(self, body: Any, path: str = "$") -> AITaskerRun:
        """One run object."""
        if not isinstance(body, dict):
            raise WireError(path, f"expected a run object, got {_short(body)}")
        if body.get("total_cost_cents", 0) is None:  # documented default 0; null means 0
            body = {**body, "total_cost_cents": 0}
        try:
            return self._conv.structure(body, AITaskerRun)
        except (ExceptionGroup, ValueError, KeyError, TypeError) as exc:
            raise wire_error(exc, path) from exc

    def runs(self, body: Any) -> list[AITaskerRun]:
        """The bare JSON array of the list endpoint."""
        if not isinstance(body, list):
            raise WireError("$", f"expected a JSON array of runs, got {_short(body)}")
        return [self.run(item, f"$[{i}]") for i, item in enumerate(body)]


AITASKER_WIRE = AITaskerWire()
