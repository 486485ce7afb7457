"""A Griffe extension for the docs build: the docstrings' reST becomes Markdown.

The docstrings are written for IDEs and ``help()``: they say
:class:`~copyai_async.PollPolicy`, :meth:`start_run` and so on, and introduce an example
with ``::`` and an indented block. mkdocstrings reads Markdown, which would show the roles
and the ``::`` as written. So:

- each role becomes a link, ``[title][path]``, its target resolved from the object's
  class, module, package and the top-level package; a target outside copyai_async
  (``time.monotonic``) stays code, and one of ours that resolves nowhere is left for
  autorefs to report;
- each literal block becomes a fenced one (Python when it parses as Python), and its
  ``::`` a colon, or nothing when it stands alone on its line.
"""

from __future__ import annotations

import ast
import re
import textwrap
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|data|attr|exc|obj|mod):`(~?)([^`<>]+)`")
_TOP = "copyai_async"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _language(code: str) -> str:
    if code.startswith(">>>"):
        return "pycon"
    try:
        compile(code, "<docstring>", "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    except SyntaxError:
        return "text"
    return "python"


def literal_blocks_to_fences(text: str) -> str:
    """Rewrite each reST literal block (``Paragraph::`` and an indented block) as a fence.

    ``Paragraph::`` becomes ``Paragraph:``, ``Paragraph ::`` becomes ``Paragraph``, and a
    ``::`` alone on its line goes. The block is dedented and fenced at the paragraph's
    indentation, so a block inside a section's entry stays in that entry. A ``::`` with no
    indented block after it, or inside a fence, is left as it is.
    """
    lines = text.split("\n")
    out: list[str] = []
    fenced = False
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        i += 1
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if fenced or not line.endswith("::"):
            out.append(line)
            continue
        end = i  # the block: blank lines and lines indented deeper than the paragraph
        while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > _indent(line)):
            end += 1
        code = textwrap.dedent("\n".join(lines[i:end])).strip("\n")
        if not code:
            out.append(line)
            continue
        head = line[:-2]
        if head.strip():
            out.append(head.rstrip() if head.endswith(" ") else head + ":")
        margin = line[: _indent(line)]
        out += ["", f"{margin}```{_language(code)}"]
        out += [f"{margin}{row}" if row else "" for row in code.split("\n")]
        out += [f"{margin}```", ""]
        i = end
    return "\n".join(out)


class SphinxToMarkdown(griffe.Extension):
    """Rewrite the reST in every docstring of the package: roles as cross-references,
    literal blocks as fenced code."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._pkg = pkg
        self._walk(pkg)

    def _walk(self, obj: griffe.Object) -> None:
        if obj.docstring is not None:
            value = _ROLE.sub(lambda m: self._link(obj, m), obj.docstring.value)
            obj.docstring.value = literal_blocks_to_fences(value)
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
