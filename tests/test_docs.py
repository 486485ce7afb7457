"""The documentation site covers every public name and every example, and reads well.

The site itself is built by CI (``mkdocs build --strict``: a broken reference fails).
Most checks here say what it must contain, and run without mkdocs installed; those that
look at the built pages (no reST left in them, signatures spread over lines) build it,
and skip where the docs extra is not installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PUBLIC_MODULES = [
    "copyai_async",
    "copyai_async.webhooks",
    "copyai_async.aitasker",
    "copyai_async.testing",
]
# Public names outside those modules' __all__: the plugin's fixtures and the CLI's entry.
OTHER_PUBLIC = [
    "copyai_async.testing.pytest_plugin.copyai_server",
    "copyai_async.testing.pytest_plugin.copyai_client",
    "copyai_async.cli.main",
]
# Described in prose on the reference page rather than rendered from a docstring.
IN_PROSE = {"copyai_async.__version__"}


def _directives() -> set[str]:
    found: set[str] = set()
    for page in (DOCS / "reference").glob("*.md"):
        found |= set(re.findall(r"^::: (\S+)$", page.read_text(), re.M))
    return found


def test_every_public_name_has_a_reference_entry() -> None:
    public = {f"{m}.{n}" for m in PUBLIC_MODULES for n in importlib.import_module(m).__all__}
    public |= set(OTHER_PUBLIC)
    rendered = _directives()
    assert public - IN_PROSE <= rendered, sorted(public - IN_PROSE - rendered)
    assert "`copyai_async.__version__`" in (DOCS / "reference" / "client.md").read_text()


def test_every_reference_entry_names_something_real() -> None:
    for path in _directives():
        module, _, name = path.rpartition(".")
        assert hasattr(importlib.import_module(module), name), path


def test_every_page_is_in_the_nav_and_every_example_on_the_examples_page() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    in_nav = set(re.findall(r":\s+(\S+\.md)$", config, re.M))
    assert pages == in_nav
    examples = (DOCS / "examples.md").read_text()
    for script in (ROOT / "examples").glob("*.py"):
        assert f'--8<-- "examples/{script.name}"' in examples, script.name


# Where users read how to install: every page, the README, and the package's and the
# examples' own text (docstrings, comments, error messages). CHANGELOG.md is left out: it
# records what was, and may quote it.
_INSTALL_TEXT = ["README.md", "mkdocs.yml", "docs/**/*.md", "benchmarks/**/*.md"]
_INSTALL_TEXT += [f"{d}/**/*.py" for d in ("copyai_async", "examples", "benchmarks")]
_INSTALLER = re.compile(r"\b(?:pip3?\s+install|pipx\s+install|uv\s+add|poetry\s+add)\b(.*)")
# The end of a command within a line: a shell operator, a comment, a closing backtick.
_COMMAND_END = re.compile(r"&&|\|\||[;|#`()]")
_DIST = re.compile(r"copyai[-_.]async(?:\[[^\]]*\])?(?:[<>=!~].*)?", re.I)


def _pypi_installs(text: str) -> list[str]:
    """The lines of ``text`` that install copyai-async by name (from a package index)."""
    found = []
    for line in text.splitlines():
        if re.search(r"copyai[-_]async\[", line, re.I):  # an extra of the distribution
            found.append(line.strip())
            continue
        for match in _INSTALLER.finditer(line):
            command = _COMMAND_END.split(match.group(1), maxsplit=1)[0]
            args = [a.strip("'\"\\") for a in command.split()]
            if any(_DIST.fullmatch(a) for a in args):
                found.append(line.strip())
    return found


def test_the_install_check_catches_what_it_must() -> None:
    assert _pypi_installs('pip install "copyai-async[redis]"')
    assert _pypi_installs("pip install copyai-async pytest pytest-asyncio")
    assert _pypi_installs("    raise X(\"needs redis: pip install 'copyai-async[redis]'\")")
    assert _pypi_installs("uv add copyai_async>=0.1")
    assert _pypi_installs("(install ``copyai-async[redis]``)")
    assert not _pypi_installs('pip install -e ".[redis]"  # in a checkout of copyai_async')
    assert not _pypi_installs('.venv/bin/pip install -e ".[cli]" && .venv/bin/copyai-async demo')
    assert not _pypi_installs("pip install -e . fastapi uvicorn")


def test_every_install_command_installs_from_a_checkout() -> None:
    # copyai_async is not on PyPI: `pip install copyai-async` fails, so no page, docstring
    # or message may say it.
    files = {p for pattern in _INSTALL_TEXT for p in ROOT.glob(pattern)}
    assert len(files) > 20
    found = {
        f"{p.relative_to(ROOT)}: {line}"
        for p in sorted(files)
        for line in _pypi_installs(p.read_text(encoding="utf-8"))
    }
    assert not found, sorted(found)


def _install_block(text: str) -> str:
    match = re.search(r"^## Install\n(.*?)^## ", text, re.M | re.S)
    assert match, "no ## Install section"
    return match.group(1).strip()


def test_the_getting_started_page_installs_as_the_readme_does() -> None:
    readme = _install_block((ROOT / "README.md").read_text())
    assert "not on PyPI" in readme
    assert "pip install -e ." in readme
    assert _install_block((DOCS / "index.md").read_text()) == readme


# -- the built site -------------------------------------------------------------------


def _griffe_extension() -> ModuleType:
    pytest.importorskip("griffe")
    spec = importlib.util.spec_from_file_location("griffe_roles", DOCS / "griffe_roles.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_literal_blocks_become_fences() -> None:
    to_fences = _griffe_extension().literal_blocks_to_fences
    text = "Use it so::\n\n    async with C() as c:\n        await c.go()\n\nThen more."
    assert to_fences(text) == (
        "Use it so:\n\n```python\nasync with C() as c:\n    await c.go()\n```\n\nThen more."
    )
    # A lone ``::`` goes; what is not Python is text; an entry's block stays in the entry.
    assert to_fences("Tree.\n\n::\n\n    A\n    └── B\n") == "Tree.\n\n\n```text\nA\n└── B\n```\n"
    assert to_fences("Args:\n    x: as in::\n\n        f(x)\n") == (
        "Args:\n    x: as in:\n\n    ```python\n    f(x)\n    ```\n"
    )
    # No block after it, or inside a fence: left alone.
    assert to_fences("Ends with::\nno block") == "Ends with::\nno block"
    assert to_fences("```\nx::\n    y\n```") == "```\nx::\n    y\n```"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    # Not -q: it hides the warnings --strict counts (a broken reference would pass).
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out


class _Prose(HTMLParser):
    """The text of each paragraph, list item and cell of a page, code left out."""

    BLOCKS = frozenset({"p", "li", "td", "th", "dt", "dd", "h1", "h2", "h3", "h4", "h5", "h6"})
    SKIP = frozenset({"code", "pre", "script", "style"})

    def __init__(self) -> None:
        super().__init__()
        self.blocks: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag in self.SKIP:
            self._skip += 1
        elif tag in self.BLOCKS:
            self.blocks.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self._skip -= 1
        elif tag in self.BLOCKS:
            self.blocks.append("")

    def handle_data(self, data: str) -> None:
        if not self._skip and self.blocks:
            self.blocks[-1] += data


def _pages(site: Path) -> Iterator[tuple[str, str]]:
    for page in sorted(site.rglob("*.html")):
        yield page.relative_to(site).as_posix(), page.read_text(encoding="utf-8")


_REST = re.compile(r"(?<!:)::(?=\s|$)|:(?:class|meth|func|data|attr|exc|obj|mod|ref):`?")


def test_the_site_shows_no_rest(site: Path) -> None:
    # A docstring's ``when done::`` or :class:`X` shown as written, outside code.
    found = []
    for name, html in _pages(site):
        prose = _Prose()
        prose.feed(html)
        found += [f"{name}: {b.strip()[-120:]}" for b in prose.blocks if _REST.search(b)]
    assert not found, found


def test_long_signatures_take_a_line_per_parameter(site: Path) -> None:
    html = (site / "reference" / "client" / "index.html").read_text(encoding="utf-8")
    match = re.search(r'class="doc-signature[^"]*"><pre>(.*?)</pre>', html, re.S)
    assert match, "no signature on the client's page"
    text = re.sub(r"<[^>]+>", "", match.group(1))
    assert text.startswith("CopyAIClient(\n")
    assert "\n    api_key: str | None = None,\n" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_long_code_lines_wrap(site: Path) -> None:
    # The theme scrolls wide code behind a scrollbar browsers hide; extra.css wraps it.
    html = (site / "index.html").read_text(encoding="utf-8")
    assert '<link rel="stylesheet" href="stylesheets/extra.css">' in html
    css = (site / "stylesheets" / "extra.css").read_text(encoding="utf-8")
    rule = re.search(r"\.md-typeset pre > code \{([^}]*)\}", css)
    assert rule, css
    assert "white-space: pre-wrap" in rule.group(1)
