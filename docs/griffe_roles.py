"""A Griffe extension for the docs build: Sphinx roles in docstrings become links.

The docstrings say :class:`~copyai_async.PollPolicy`, :meth:`start_run` and so on (what
IDEs and ``help()`` show); mkdocstrings links with ``[title][path]``. Each role is
rewritten to that, its target resolved from the object's class, module, package and the
top-level package; a target outside copyai_async (``time.monotonic``) stays code,
and one of ours that resolves nowhere is left for autorefs to report.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|data|attr|exc|obj|mod):`(~?)([^`<>]+)`")
_TOP = "copyai_async"


class SphinxRoles(griffe.Extension):
    """Rewrite ``:role:`target``` in every docstring of the package into a cross-reference."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._pkg = pkg
        self._walk(pkg)

    def _walk(self, obj: griffe.Object) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(lambda m: self._link(obj, m), obj.docstring.value)
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member)  # type: ignore[arg-type]

    def _resolve(self, path: str) -> str | None:
        """``path`` if the package has it (an import: the path it imports), else None."""
        if path == _TOP:
            return path
        if not path.startswith(_TOP + "."):
            return None
        try:
            found = self._pkg[path[len(_TOP) + 1 :]]
        except (KeyError, ValueError, griffe.AliasResolutionError):
            return None
        return found.target_path if found.is_alias else path

    def _link(self, obj: griffe.Object, match: re.Match[str]) -> str:
        short, text = match.group(1) == "~", match.group(2).strip()
        title = text.rsplit(".", 1)[-1] if short else text
        target = text.removesuffix("()")  # :class:`PollPolicy()` links to the class
        scopes = []
        scope: griffe.Object | None = obj
        while scope is not None:  # the object itself, its class, module, packages
            scopes.append(scope.path)
            scope = scope.parent
        candidates = [target] + [f"{s}.{target}" for s in scopes]
        for path in candidates:
            resolved = self._resolve(path)
            if resolved is not None:
                return f"[`{title}`][{resolved}]"
        if target.startswith(_TOP) or "." not in target:
            # Meant to be one of ours and not found: leave it to autorefs, which reports
            # it (a broken reference fails the strict build).
            return f"[`{title}`][{target}]"
        return f"`{title}`"
