"""The documentation site covers every public name and every example.

The site itself is built by CI (``mkdocs build --strict``: a broken reference fails);
these checks say what it must contain, and run without mkdocs installed.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

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
