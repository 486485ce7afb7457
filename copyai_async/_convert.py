"""Every wire-format rule of the Copy.ai API, in one cattrs converter.

The models in :mod:`copyai_async._models` are plain data; this module knows how the API
spells them:

- camelCase keys (``workflowId``, ``createdAt``) and the ``{"status", "data"}`` envelope;
  an envelope whose ``status`` is ``"error"`` (in any case), even on a 2xx answer, is an
  error from the API (:class:`ErrorEnvelope`, with its ``errorCode``);
- ``id``, or only ``workflowRunId``, for a run's id; a missing ``workflowId`` is the id
  the run was asked for under;
- ``total`` and ``credits`` as integers or numeric strings (``"22"``); anything else, such
  as ``"lots"``, is an error rather than a silent 0;
- ``createdAt`` with or without fractional seconds, with any offset, leap seconds
  (``23:59:60``) included, always made timezone-aware. A run whose ``createdAt`` cannot
  be read keeps every other field and gets ``created_at=None`` (logged once at WARNING),
  so one odd timestamp does not fail a whole page; the strict twin refuses it;
- ``metadata`` as an object, ``null`` or missing; ``input``/``output``/``status`` missing;
- unknown status strings become ``RunStatus.UNKNOWN`` with the raw value kept;
- unknown keys are ignored (the strict twin, ``WireFormat(strict=True)``, refuses them
  so tests notice when the API's payloads change).

Runs of the common shape are built directly (``WireFormat._fast_run``), without cattrs;
any other body goes through the converter, which stays the one statement of the rules:
the fast path only ever agrees with it (tests compare the two on generated bodies).
When msgspec is installed (the ``fast`` extra), a listing's body is decoded straight into
Structs (:mod:`copyai_async._structs`: where the fields are, and their JSON types) and
its runs are built from them by the same rules (``WireFormat._typed_page``); a body the
Structs do not take exactly as the standard library would read it is decoded as JSON
and goes the dicts' way, and a run of another shape goes through the converter (tests
hold every decoder to one answer on bodies mutated byte by byte).

Failures raise :class:`WireError` naming the JSON path (``$.data.data[3].credits``); the
client turns it into :class:`~copyai_async.InvalidResponseError` with the request's
method, path and status.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import attrs

from ._models import RunPage, RunStatus, WorkflowRun

if TYPE_CHECKING:
    import cattrs
    from msgspec import UnsetType

    from ._structs import Envelope

# Pages decoded into msgspec Structs, when the fast extra is installed (as orjson is for
# every other body: see copyai_async._http.loads). Imported with the package, as orjson
# is: a few milliseconds, which would otherwise fall on the first listing.
_decode_typed_page: Callable[[bytes], Envelope | None] | None
_ENVELOPE: type[Envelope] | None
try:
    from ._structs import Envelope as _ENVELOPE
    from ._structs import decode_page as _decode_typed_page
except ImportError:  # pragma: no cover - depends on the environment
    _ENVELOPE = _decode_typed_page = None

if sys.version_info < (3, 11):  # pragma: no cover - version-dependent
    from exceptiongroup import ExceptionGroup

__all__ = [
    "WIRE",
    "ErrorEnvelope",
    "WireError",
    "WireFormat",
    "base_converter",
    "parse_datetime",
    "raise_error_envelope",
    "register_wire_names",
    "wire_error",
]

logger = logging.getLogger("copyai_async")


class WireError(Exception):
    """A payload does not have the documented shape.

    Attributes:
        json_path: where the problem is, e.g. ``"$.data.total"``.
        reason: what is wrong there.
    """

    def __init__(self, json_path: str, reason: str) -> None:
        super().__init__(f"{reason} at {json_path}")
        self.json_path = json_path
        self.reason = reason


class ErrorEnvelope(Exception):
    """A 2xx answer whose envelope says ``"status": "error"``: an error from the API.

    Attributes:
        error_code: its ``errorCode``, if it is a string.
        details: its ``details``, if any.
    """

    def __init__(self, error_code: str | None, details: Any) -> None:
        super().__init__(f"the API answered status 'error' ({error_code or 'no error code'})")
        self.error_code = error_code
        self.details = details


def raise_error_envelope(body: dict[str, Any]) -> None:
    """Raise :class:`ErrorEnvelope` if ``body`` says ``"status": "error"`` (in any case)."""
    status = body.get("status")
    if isinstance(status, str) and status.lower() == "error":
        code = body.get("errorCode")
        raise ErrorEnvelope(code if isinstance(code, str) else None, body.get("details"))


_INT_RE = re.compile(r"[+-]?[0-9]+")
# Python 3.10's fromisoformat takes only 3 or 6 fraction digits and no "Z"; this is the
# fallback for everything else ISO 8601 allows in an API timestamp.
_DT_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?"
    r"\s*(?:([Zz])|([+-])(\d{2}):?(\d{2}))?"
)
_STATUS_BY_VALUE = {s.value: s for s in RunStatus}
_RUN_RENAMES = {
    "workflow_id": "workflowId",
    "raw_status": "status",
    "created_at": "createdAt",
}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _structure_int(value: Any, _: Any) -> int:
    if type(value) is int:
        return value
    if isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"expected an integer or a numeric string, got {_short(value)}")


def _structure_str(value: Any, _: Any) -> str:
    if isinstance(value, str):
        return value
    raise ValueError(f"expected a string, got {_short(value)}")


def _structure_object(value: Any, _: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    raise ValueError(f"expected a JSON object, got {_short(value)}")


def _structure_status(value: Any, _: Any) -> RunStatus:
    if value is None:
        return RunStatus.UNKNOWN
    if isinstance(value, str):
        return _STATUS_BY_VALUE.get(value, RunStatus.UNKNOWN)
    raise ValueError(f"expected a status string, got {_short(value)}")


def parse_datetime(value: str) -> datetime:
    """Parse an ISO 8601 timestamp, with or without fractions; always timezone-aware.

    A timestamp without an offset is taken as UTC. A leap second (``23:59:60``) becomes
    ``23:59:59.999999``, as :class:`~datetime.datetime` has no 60th second.

    Raises:
        ValueError: the text is not an ISO 8601 date-time.
    """
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "Zz" else text)
    except ValueError:
        parsed = _parse_datetime_slow(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed


if sys.version_info >= (3, 11):
    # Takes "Z" and any number of fraction digits: the common spellings in one call.
    _fromisoformat = datetime.fromisoformat
else:  # pragma: no cover - version-dependent

    def _fromisoformat(text: str) -> datetime:
        if text[-1:] in "Zz":
            text = text[:-1] + "+00:00"
        return datetime.fromisoformat(text)


def _parse_datetime_slow(text: str) -> datetime:
    m = _DT_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"expected an ISO 8601 date-time, got {_short(text)}")
    year, month, day, hour, minute, second, frac, zulu, sign, off_h, off_m = m.groups()
    tz: timezone | None = None
    if zulu:
        tz = timezone.utc
    elif sign:
        delta = timedelta(hours=int(off_h), minutes=int(off_m))
        tz = timezone(-delta if sign == "-" else delta)
    micro = int((frac or "0")[:6].ljust(6, "0"))
    sec = int(second or 0)
    if sec == 60:
        # An RFC 3339 leap second: datetime has no 60th second, so it becomes the last
        # instant of the 59th (its order among the minute's other instants is kept).
        sec, micro = 59, 999_999
    return datetime(int(year), int(month), int(day), int(hour), int(minute), sec, micro, tz)


def _structure_datetime(value: Any, _: Any) -> datetime:
    if isinstance(value, datetime):  # already read (see WireFormat._prepare_run)
        return value
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected an ISO 8601 date-time string, got {_short(value)}")
    return parse_datetime(value)


_CLASS_HOOKS: tuple[tuple[type, Callable[[Any, Any], Any]], ...] = (
    (int, _structure_int),
    (str, _structure_str),
    (datetime, _structure_datetime),
)
_OBJECT = dict[str, Any]


def _or_none(hook: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    # cattrs' generic Optional hook dispatches on every call; this is a third of the cost
    # of structuring a run, so each ``X | None`` of the models gets a direct hook.
    def structure(value: Any, cls: Any) -> Any:
        return None if value is None else hook(value, cls)

    return structure


def _is(expected: Any) -> Callable[[Any], bool]:
    def predicate(candidate: Any) -> bool:
        return bool(candidate == expected)

    return predicate


def base_converter(*, strict: bool = False) -> cattrs.Converter:
    """A converter with the rules every API here shares: integers or numeric strings,
    strings that are strings, ISO 8601 timestamps made aware, objects kept as they are.

    cattrs is imported here, on first use, not when the package is imported.
    """
    import cattrs

    conv = cattrs.Converter(forbid_extra_keys=strict)
    for cls, hook in _CLASS_HOOKS:
        conv.register_structure_hook(cls, hook)
    conv.register_structure_hook_func(_is(_OBJECT), _structure_object)
    for typ, hook in (*_CLASS_HOOKS, (_OBJECT, _structure_object)):
        conv.register_structure_hook_func(_is(typ | None), _or_none(hook))
    return conv


def make_converter(*, strict: bool = False) -> cattrs.Converter:
    """The Copy.ai converter; ``strict=True`` makes the test twin that refuses unknown keys."""
    from cattrs.gen import make_dict_structure_fn, override

    conv = base_converter(strict=strict)
    conv.register_structure_hook(RunStatus, _structure_status)
    conv.register_structure_hook(
        WorkflowRun,
        make_dict_structure_fn(
            WorkflowRun,
            conv,
            _cattrs_forbid_extra_keys=strict,
            workflow_id=override(rename=_RUN_RENAMES["workflow_id"]),
            raw_status=override(rename=_RUN_RENAMES["raw_status"]),
            created_at=override(rename=_RUN_RENAMES["created_at"]),
        ),
    )
    return conv


def _slot_builder(cls: type) -> Callable[..., Any] | None:
    """A function building ``cls`` from its fields in order by setting its slots
    directly (half the cost of the keyword ``__init__`` of a frozen attrs class), or
    ``None`` when that would skip something ``__init__`` does (a validator, a
    converter, ``__attrs_post_init__``) or the class has no slots. Every field is given,
    so defaults play no part.

    The function is generated with one call per slot written out, as attrs generates
    ``__init__``: a loop over the setters costs a third more per object.
    """
    fields = attrs.fields(cls)
    if "__slots__" not in cls.__dict__ or hasattr(cls, "__attrs_post_init__"):
        return None
    if any(f.validator is not None or f.converter is not None for f in fields):
        return None
    names: dict[str, Any] = {"new": object.__new__, "cls": cls}
    args = [f"v{i}" for i in range(len(fields))]
    lines = [f"def build({', '.join(args)}):", "    obj = new(cls)"]
    for i, field in enumerate(fields):
        names[f"set{i}"] = cls.__dict__[field.name].__set__
        lines.append(f"    set{i}(obj, v{i})")
    lines.append("    return obj")
    exec(compile("\n".join(lines), f"<{cls.__name__} builder>", "exec"), names)  # noqa: S102
    build: Callable[..., Any] = names["build"]
    return build


_BUILD_RUN = _slot_builder(WorkflowRun)
_RUN_FIELDS = (
    "id",
    "workflow_id",
    "status",
    "raw_status",
    "input",
    "output",
    "metadata",
    "created_at",
    "credits",
)


def _draft_class(cls: type, names: tuple[str, ...]) -> type | None:
    """A plain class with the slots of ``cls`` (an attrs class with a slot builder and
    the fields ``names``, in order), or ``None``.

    A page loop builds each run as one of these, with plain attribute stores (a third
    of the cost of calling the slots' setters), and then makes it a ``cls`` by
    assigning ``__class__``, which CPython allows between two classes of one layout:
    the run is then a ``cls`` like any other. Tried once here; ``None`` if the model has
    other fields, no slot builder, or this Python refuses the assignment.
    """
    if _slot_builder(cls) is None or tuple(f.name for f in attrs.fields(cls)) != names:
        return None
    draft = type(f"_{cls.__name__}Draft", (), {"__slots__": cls.__dict__["__slots__"]})
    probe: Any = object.__new__(draft)
    try:
        for name in names:
            setattr(probe, name, name)
        probe.__class__ = cls
    except TypeError:  # pragma: no cover - a layout this Python will not swap
        return None
    if type(probe) is not cls or any(getattr(probe, name) != name for name in names):
        return None  # pragma: no cover - as above
    return draft


_RUN_DRAFT = _draft_class(WorkflowRun, _RUN_FIELDS)
_WIRE_NAMES: dict[type, dict[str, str]] = {WorkflowRun: _RUN_RENAMES}


def register_wire_names(cls: type, names: dict[str, str]) -> None:
    """Name ``cls``'s attributes as the wire does, in error paths (``$.workflowId``)."""
    _WIRE_NAMES[cls] = names


def _wire_name(cls: type, attribute: str) -> str:
    return _WIRE_NAMES.get(cls, {}).get(attribute, attribute)


def _leaf_reason(exc: BaseException) -> str:
    from cattrs.errors import ForbiddenExtraKeysError

    if isinstance(exc, KeyError):
        return "required field is missing"
    if isinstance(exc, ForbiddenExtraKeysError):
        return f"unexpected fields {sorted(exc.extra_fields)}"
    if isinstance(exc, ValueError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _walk(exc: BaseException, path: str) -> Iterator[tuple[str, str]]:
    """Yield (json_path, reason) for each leaf of a cattrs validation error."""
    from cattrs.errors import ClassValidationError, IterableValidationError

    if isinstance(exc, ClassValidationError):
        with_notes, without = exc.group_exceptions()
        for sub, attr_note in with_notes:
            yield from _walk(sub, f"{path}.{_wire_name(exc.cl, attr_note.name)}")
        for sub in without:
            yield from _walk(sub, path)
    elif isinstance(exc, IterableValidationError):
        item_notes, without = exc.group_exceptions()
        for sub, item_note in item_notes:
            yield from _walk(sub, f"{path}[{item_note.index}]")
        for sub in without:
            yield from _walk(sub, path)
    else:
        yield path, _leaf_reason(exc)


def wire_error(exc: Exception, path: str) -> WireError:
    """A cattrs validation error as a WireError naming the first bad JSON path."""
    leaves = list(_walk(exc, path))
    first_path, first_reason = leaves[0]
    more = f" (and {len(leaves) - 1} more problems)" if len(leaves) > 1 else ""
    return WireError(first_path, first_reason + more)


@attrs.define
class WireFormat:
    """Turns decoded JSON answers into models, or raises :class:`WireError`.

    Args:
        strict: refuse keys the models do not know (the test twin); the shipped
            instance, :data:`WIRE`, ignores them.
        fast: build runs of the common shape directly (a few microseconds each),
            leaving every other body to the converter. ``False`` sends every run through
            the converter (the tests compare the two). The strict twin never takes it.
    """

    strict: bool = False
    fast: bool = True
    _built: cattrs.Converter | None = attrs.field(init=False, default=None)
    _warned: bool = attrs.field(init=False, default=False)

    @property
    def _conv(self) -> cattrs.Converter:
        # Built on first use: the code generation costs milliseconds at import otherwise.
        if self._built is None:
            self._built = make_converter(strict=self.strict)
        return self._built

    def decode_page(self, raw: bytes) -> Envelope | None:
        """The body of a listing decoded into msgspec Structs, when msgspec is installed
        (the ``fast`` extra) and the body is one it decodes exactly as the standard
        library would; ``None`` for any other body (decode it with
        :func:`copyai_async._http.loads` and give that to :meth:`page`). Never raises.

        Only the fast, tolerant format takes Structs: they keep no unknown keys for
        the strict twin to refuse, and the converter takes dicts.
        """
        decode = _decode_typed_page
        if decode is None or not self.fast or self.strict:
            return None
        return decode(raw)

    def unwrap(self, body: Any) -> Any:
        """Return the ``data`` of a ``{"status": "success", "data": ...}`` envelope.

        Raises:
            ErrorEnvelope: the envelope's ``status`` is ``"error"`` (in any case).
            WireError: no envelope.
        """
        if not isinstance(body, dict):
            raise WireError("$", f"expected the {{status, data}} envelope, got {_short(body)}")
        raise_error_envelope(body)
        if "data" not in body:
            raise WireError("$.data", "the envelope has no 'data'")
        return body["data"]

    def _prepare_run(self, raw: Any, path: str, workflow_id: str) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise WireError(path, f"expected a run object, got {_short(raw)}")
        run = dict(raw)
        run_id_alias = run.pop("workflowRunId", None)
        if "id" not in run and run_id_alias is not None:
            run["id"] = run_id_alias
        if run.get("workflowId") is None:
            run["workflowId"] = workflow_id
        created = run.get("createdAt")
        if created is not None:
            try:
                run["createdAt"] = _structure_datetime(created, datetime)
            except ValueError as exc:
                if self.strict:
                    raise WireError(f"{path}.createdAt", str(exc)) from None
                run["createdAt"] = None
                self._odd_timestamp(run.get("id"))
        return run

    def _odd_timestamp(self, run_id: Any) -> None:
        # The value itself is not logged: it is the server's text, which could echo a
        # secret. Once at WARNING, then at DEBUG, so a whole page of them is one warning.
        level = logging.DEBUG if self._warned else logging.WARNING
        self._warned = True
        logger.log(
            level,
            "run %s: createdAt is not an ISO 8601 date-time; its created_at is None",
            run_id if isinstance(run_id, str) else "(no id)",
        )

    def _fast_run(self, raw: dict[str, Any], workflow_id: str) -> WorkflowRun | None:
        """The run, built directly when the body has the common shape; ``None`` for
        anything else, which then goes the converter's way (and gets its messages).

        The same rules as the converter, for the shapes they agree on (a test holds
        them to it on generated bodies): ``id`` (or ``workflowRunId``) and
        ``workflowId`` strings, a status string or none, objects or null for ``input``,
        ``output`` and ``metadata``, a readable ``createdAt`` or none, ``credits`` an
        integer or a numeric string or none. Unknown keys are ignored, as the tolerant
        converter does.
        """
        get = raw.get
        run_id = raw["id"] if "id" in raw else get("workflowRunId")
        workflow = get("workflowId")
        if workflow is None:
            workflow = workflow_id
        raw_status = get("status")
        if type(run_id) is not str or type(workflow) is not str:
            return None
        if type(raw_status) is str:
            status = _STATUS_BY_VALUE.get(raw_status, RunStatus.UNKNOWN)
        elif raw_status is None:
            status = RunStatus.UNKNOWN
        else:
            return None
        inputs = get("input")
        output = get("output")
        metadata = get("metadata")
        if (
            (inputs is not None and type(inputs) is not dict)
            or (output is not None and type(output) is not dict)
            or (metadata is not None and type(metadata) is not dict)
        ):
            return None
        created: Any = get("createdAt")
        if created is not None:
            if type(created) is not str:
                return None
            try:
                created = _fromisoformat(created)
            except ValueError:
                return None  # another spelling, or none: the converter decides
            if created.tzinfo is None:
                created = created.replace(tzinfo=timezone.utc)
        credits = get("credits")
        if credits is not None and type(credits) is not int:
            if type(credits) is not str or not _INT_RE.fullmatch(credits.strip()):
                return None
            try:
                credits = int(credits)
            except ValueError:  # more digits than int() takes from text
                return None
        if _BUILD_RUN is not None:  # the fields in their order
            built: WorkflowRun = _BUILD_RUN(
                run_id, workflow, status, raw_status, inputs, output, metadata, created, credits
            )
            return built
        return WorkflowRun(
            id=run_id,
            workflow_id=workflow,
            status=status,
            raw_status=raw_status,
            input=inputs,
            output=output,
            metadata=metadata,
            created_at=created,
            credits=credits,
        )

    def _structure_run(self, run: dict[str, Any], path: str) -> WorkflowRun:
        try:
            return self._conv.structure(run, WorkflowRun)
        except (ExceptionGroup, ValueError, KeyError, TypeError) as exc:
            raise wire_error(exc, path) from exc

    def run(self, body: Any, *, workflow_id: str) -> WorkflowRun:
        """Parse the answer of ``GET /workflow/{id}/run/{run_id}``."""
        data = self.unwrap(body)
        if self.fast and not self.strict and type(data) is dict:
            run = self._fast_run(data, workflow_id)
            if run is not None:
                return run
        return self._structure_run(self._prepare_run(data, "$.data", workflow_id), "$.data")

    def started_run(
        self,
        body: Any,
        *,
        workflow_id: str,
        start_variables: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> WorkflowRun:
        """Parse the answer of ``POST /workflow/{id}/run``; it may hold only ``id``.

        A run known only by its id has status ``NEW``, and the ``input`` and ``metadata``
        that were sent (the run has exactly those). ``url`` is a documented key of this
        answer that runs do not carry, so it is dropped here.
        """
        data = self.unwrap(body)
        if not isinstance(data, dict):
            raise WireError("$.data", f"expected a run object, got {_short(data)}")
        run = dict(data)
        run.pop("url", None)
        run.setdefault("status", RunStatus.NEW.value)
        if start_variables is not None:
            run.setdefault("input", start_variables)
        if metadata is not None and run.get("metadata") is None:
            run["metadata"] = metadata
        if self.fast and not self.strict:
            fast = self._fast_run(run, workflow_id)
            if fast is not None:
                return fast
        return self._structure_run(self._prepare_run(run, "$.data", workflow_id), "$.data")

    def page(self, body: Any, *, workflow_id: str, page: int, size: int) -> RunPage:
        """Parse the answer of ``GET /workflow/{id}/run?page=&size=``: decoded JSON, or
        the Structs of :meth:`decode_page`."""
        if type(body) is _ENVELOPE:
            if self.strict or not self.fast:
                raise TypeError("only the fast, tolerant format reads Structs; decode as JSON")
            return self._typed_page(body, workflow_id=workflow_id, page=page, size=size)
        data = self.unwrap(body)
        if not isinstance(data, dict):
            raise WireError(
                "$.data", f"expected an object with 'data' and 'total', got {_short(data)}"
            )
        if self.strict and (extra := set(data) - {"data", "total"}):
            raise WireError("$.data", f"unexpected fields {sorted(extra)}")
        raw_total = data.get("total")
        try:
            total = None if raw_total is None else _structure_int(raw_total, int)
        except ValueError as exc:
            raise WireError("$.data.total", str(exc)) from exc
        items = data.get("data")
        if not isinstance(items, list):
            raise WireError("$.data.data", f"expected a list of runs, got {_short(items)}")
        fast = None if self.strict or not self.fast else self._fast_run
        built: list[WorkflowRun] = []
        for i, item in enumerate(items):
            run = fast(item, workflow_id) if fast is not None and type(item) is dict else None
            if run is None:
                where = f"$.data.data[{i}]"
                run = self._structure_run(self._prepare_run(item, where, workflow_id), where)
            built.append(run)
        return RunPage(runs=tuple(built), total=total, page=page, size=size)

    def _dict_runs(self, items: list[Any], workflow_id: str, unset: Any) -> Iterator[WorkflowRun]:
        """The runs of a typed page one by one as dicts: for a model without a draft."""
        for i, item in enumerate(items):
            raw = _run_dict(item, unset)
            run = self._fast_run(raw, workflow_id)
            if run is None:
                where = f"$.data.data[{i}]"
                run = self._structure_run(self._prepare_run(raw, where, workflow_id), where)
            yield run

    def _typed_page(self, body: Envelope, *, workflow_id: str, page: int, size: int) -> RunPage:
        """:meth:`page` for a body decoded into Structs: the same rules, on attributes.

        The checks are those of :meth:`_fast_run`, written out for the Structs (which
        hold only the JSON types it takes, so fewer of them). A run they do not cover
        goes the converter's way, as a dict of the fields it was sent with.
        """
        status = body.status
        if isinstance(status, str) and status.lower() == "error":
            code = body.error_code
            raise ErrorEnvelope(code if isinstance(code, str) else None, body.details)
        data = body.data
        raw_total = data.total
        try:
            total = None if raw_total is None else _structure_int(raw_total, int)
        except ValueError as exc:
            raise WireError("$.data.total", str(exc)) from exc
        from msgspec import UNSET

        items = data.data
        draft = _RUN_DRAFT
        if draft is None:
            return RunPage(
                runs=tuple(self._dict_runs(items, workflow_id, UNSET)),
                total=total,
                page=page,
                size=size,
            )
        new = object.__new__
        cls = WorkflowRun
        by_value = _STATUS_BY_VALUE
        unknown = RunStatus.UNKNOWN
        fromiso = _fromisoformat
        utc = timezone.utc
        int_re = _INT_RE.fullmatch
        built: list[WorkflowRun] = []
        append = built.append
        for i, item in enumerate(items):
            run_id: str | UnsetType | None = item.id
            if run_id is UNSET:
                run_id = item.workflow_run_id
            created: Any = item.created_at
            credits: Any = item.credits
            try:
                if run_id is None:
                    raise ValueError  # no id: the converter says so
                if created is not None:
                    created = fromiso(created)
                    if created.tzinfo is None:
                        created = created.replace(tzinfo=utc)
                if type(credits) is str:
                    if not int_re(credits.strip()):
                        raise ValueError
                    credits = int(credits)
            except ValueError:
                # Not of the common shape: the converter decides, and words the error.
                where = f"$.data.data[{i}]"
                raw = _run_dict(item, UNSET)
                append(self._structure_run(self._prepare_run(raw, where, workflow_id), where))
                continue
            workflow = item.workflow_id
            raw_status = item.status
            run: Any = new(draft)  # see _draft_class
            run.id = run_id
            run.workflow_id = workflow_id if workflow is None else workflow
            run.status = unknown if raw_status is None else by_value.get(raw_status, unknown)
            run.raw_status = raw_status
            run.input = item.input
            run.output = item.output
            run.metadata = item.metadata
            run.created_at = created
            run.credits = credits
            run.__class__ = cls
            append(run)
        return RunPage(runs=tuple(built), total=total, page=page, size=size)


def _run_dict(item: Any, unset: Any) -> dict[str, Any]:
    """A run's Struct as the dict it was sent as, for the converter (unknown keys, which
    the tolerant converter ignores, are not kept; a field sent as null, or not sent,
    means the same to it, except ``id``)."""
    raw: dict[str, Any] = {
        "workflowRunId": item.workflow_run_id,
        "workflowId": item.workflow_id,
        "status": item.status,
        "input": item.input,
        "output": item.output,
        "metadata": item.metadata,
        "createdAt": item.created_at,
        "credits": item.credits,
    }
    if item.id is not unset:
        raw["id"] = item.id
    return raw


WIRE = WireFormat()
"""The shipped, tolerant wire format."""
