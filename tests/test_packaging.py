"""What the sdist and the wheel carry: the licence, the metadata, and all the tests need."""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import pytest

hatchling_sdist = pytest.importorskip("hatchling.builders.sdist")
hatchling_wheel = pytest.importorskip("hatchling.builders.wheel")

ROOT = Path(__file__).resolve().parent.parent
# Everything the test suite reads or runs outside the package itself.
SUITE_DIRS = ("tests", "benchmarks", "examples")
IGNORED_PARTS = {"__pycache__", ".pytest_cache", "results", ".hypothesis"}


def _build(kind: str, out: Path) -> Path:
    module = hatchling_sdist if kind == "sdist" else hatchling_wheel
    builder_cls = module.SdistBuilder if kind == "sdist" else module.WheelBuilder
    (path,) = builder_cls(str(ROOT)).build(directory=str(out), versions=["standard"])
    return Path(path)


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tarfile.TarFile]:
    path = _build("sdist", tmp_path_factory.mktemp("sdist"))
    with tarfile.open(path) as tar:
        yield tar


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    path = _build("wheel", tmp_path_factory.mktemp("wheel"))
    with zipfile.ZipFile(path) as whl:
        yield whl


def _sdist_files(sdist: tarfile.TarFile) -> set[str]:
    # Members are "<name>-<version>/<path>"; strip the top folder.
    return {m.name.split("/", 1)[1] for m in sdist.getmembers() if m.isfile() and "/" in m.name}


def test_the_sdist_carries_everything_the_tests_need(sdist: tarfile.TarFile) -> None:
    # The suite must pass from an unpacked sdist: every file under the folders it reads.
    members = _sdist_files(sdist)
    needed = {
        p.relative_to(ROOT).as_posix()
        for d in SUITE_DIRS
        if (ROOT / d).is_dir()
        for p in (ROOT / d).rglob("*")
        if p.is_file() and not IGNORED_PARTS & set(p.relative_to(ROOT).parts) and p.suffix != ".pyc"
    }
    assert "benchmarks/run.py" in needed
    assert needed <= members, sorted(needed - members)
    assert {"LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml"} <= members


# What building, testing and serving the project leave in a work tree: none of it belongs in
# an sdist. mkdocs build writes site/ (site/examples/index.html was once packed).
BUILD_OUTPUT = [
    "site/index.html",
    "site/examples/index.html",
    "site/reference/client/index.html",
    "dist/copyai_async-0.0.tar.gz",
    "build/lib/copyai_async/__init__.py",
    "copyai_async.egg-info/PKG-INFO",
    ".venv/lib/python3.12/site-packages/copyai_async/__init__.py",
    "copyai_async/__pycache__/_client.cpython-312.pyc",
    "tests/__pycache__/test_docs.cpython-312-pytest-8.0.pyc",
    "examples/__pycache__/summaries.cpython-312.pyc",
    "tests/.pytest_cache/v/cache/lastfailed",
    "tests/.hypothesis/examples/0/0",
    "benchmarks/results/run.json",
]


def _copy_tree(to: Path) -> None:
    skip = shutil.ignore_patterns(
        ".git", ".venv*", "site", "dist", "build", "__pycache__", "*.egg-info", ".*_cache"
    )
    shutil.copytree(ROOT, to, ignore=skip)


@pytest.mark.parametrize("gitignore", [True, False], ids=["with-gitignore", "without"])
def test_the_sdist_leaves_build_output_out(tmp_path: Path, gitignore: bool) -> None:
    # Without .gitignore too: pyproject's own include and exclude must keep it out (an
    # unpacked sdist, or a tree where someone deleted the file, builds the same).
    tree = tmp_path / "tree"
    _copy_tree(tree)
    if not gitignore:
        (tree / ".gitignore").unlink()
    for name in BUILD_OUTPUT:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text("built\n")
    builder = hatchling_sdist.SdistBuilder(str(tree))
    (path,) = builder.build(directory=str(tmp_path / "out"), versions=["standard"])
    with tarfile.open(path) as tar:
        members = _sdist_files(tar)
    packed = sorted(set(BUILD_OUTPUT) & members)
    assert not packed, packed
    tops = {m.split("/", 1)[0] for m in members}
    assert not tops & {"site", "dist", "build", ".venv"}, sorted(tops)
    assert not [m for m in members if "__pycache__" in m or ".egg-info" in m]
    assert "copyai_async/_client.py" in members
    assert "examples/summaries.py" in members


def test_the_wheel_carries_the_licence_and_metadata(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    (dist_info,) = {n.split("/", 1)[0] for n in names if ".dist-info/" in n}
    licence = wheel.read(f"{dist_info}/licenses/LICENSE").decode()
    assert licence.startswith("MIT License")
    assert licence == (ROOT / "LICENSE").read_text()
    assert "copyai_async/py.typed" in names
    assert not any(n.startswith(("tests/", "benchmarks/", "examples/")) for n in names)

    meta = Parser().parsestr(wheel.read(f"{dist_info}/METADATA").decode())
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    urls = meta.get_all("Project-URL") or []
    assert urls, "project.urls is empty"
    assert all(u.split(", ", 1)[1].startswith("https://") for u in urls)
    classifiers = set(meta.get_all("Classifier") or [])
    requires = meta["Requires-Python"]
    assert requires == ">=3.10"
    for minor in (10, 11, 12, 13):
        assert f"Programming Language :: Python :: 3.{minor}" in classifiers


def test_the_docs_extra_formats_signatures(wheel: zipfile.ZipFile) -> None:
    # mkdocstrings spreads a long signature over lines only with ruff or black installed;
    # without either the reference prints CopyAIClient(...) on one line.
    (dist_info,) = {n.split("/", 1)[0] for n in wheel.namelist() if ".dist-info/" in n}
    meta = Parser().parsestr(wheel.read(f"{dist_info}/METADATA").decode())
    docs = [r for r in meta.get_all("Requires-Dist") or [] if "extra == 'docs'" in r]
    assert any(r.startswith(("ruff", "black")) for r in docs), docs
