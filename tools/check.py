"""The static checks (ruff, mypy, the import contracts) over every package, as CI runs them.

Usage, from anywhere: ``.venv/bin/python tools/check.py [ruff|mypy|imports] [ARGS...]``; with no name it
runs all three. ARGS go to that tool (e.g. ``tools/check.py mypy --strict``, ``tools/check.py imports
--verbose``). The exit status is 0 when every check passed. tests/test_tooling.py runs it.

Why a wrapper: ``drivers/`` and ``simulators/`` are installed as ``scanctl.drivers`` and
``scanctl.simulators`` (pyproject.toml ``[tool.setuptools.package-dir]``). An editable install maps them
with an import hook, which static tools do not follow: plain ``mypy`` types them as top-level ``drivers.*``
and ``simulators.*`` (their imports of ``scanctl.simulators.*`` then go unresolved), and plain
``lint-imports`` builds its graph from the ``scanctl/`` folder alone, blind to both. So here

- mypy is given every file under the module name it is installed with (a mypy build source names its
  module), the paths it reports stay the files in this tree;
- import-linter reads a view of the installed layout: a temporary ``scanctl/`` of links to the entries of
  ``scanctl/``, with ``drivers`` and ``simulators`` linked in where setuptools puts them.

Both mappings come from ``[tool.setuptools.package-dir]``, so a new mapped package needs no change here.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"


def package_dirs() -> dict[str, Path]:
    """``[tool.setuptools.package-dir]``: installed package name -> its folder in this tree."""
    config = tomllib.loads(PYPROJECT.read_text())
    mapping = config["tool"]["setuptools"].get("package-dir", {})
    return {package: ROOT / folder for package, folder in mapping.items()}


def installed_name(module: str, path: Path, mapping: dict[str, Path]) -> str:
    """The name ``module`` (mypy's name for the file ``path``, taken from the folders) is installed under."""
    for package, folder in mapping.items():
        head, _, rest = module.partition(".")
        if head == folder.name and path.resolve().is_relative_to(folder):
            return f"{package}.{rest}" if rest else package
    return module


def run_ruff(args: list[str]) -> int:
    """``ruff check`` over the tree (pyproject.toml's [tool.ruff]); ARGS replace the default ``.``."""
    sys.stdout.flush()
    return subprocess.run([sys.executable, "-m", "ruff", "check", *(args or ["."])], cwd=ROOT).returncode


def run_mypy(args: list[str]) -> int:
    """mypy over the files pyproject.toml's [tool.mypy] names (or ARGS), under their installed names."""
    from mypy import build, util
    from mypy.errors import CompileError
    from mypy.fscache import FileSystemCache
    from mypy.main import process_options
    from mypy.modulefinder import BuildSource

    os.chdir(ROOT)  # mypy reads pyproject.toml and resolves [tool.mypy] files from the working directory
    fscache = FileSystemCache()
    sources, options = process_options(args, stdout=sys.stdout, stderr=sys.stderr, fscache=fscache)
    mapping = package_dirs()
    sources = [BuildSource(s.path, installed_name(s.module, Path(s.path), mapping) if s.path else s.module,
                           s.text, s.base_dir, s.followed) for s in sources]
    messages: list[str] = []

    def flush(filename: str | None, new: list[str], serious: bool) -> None:
        messages.extend(new)
        for line in new:
            print(line, file=sys.stderr if serious else sys.stdout)

    blocked = False
    try:
        build.build(sources, options, None, flush, fscache, sys.stdout, sys.stderr)
    except CompileError:  # a blocking error (a syntax error, a bad option), already flushed
        blocked = True
    errors, notes, files = util.count_stats(messages)
    if errors or blocked:
        print(f"Found {errors} error{'s' if errors != 1 else ''} in {files} file{'s' if files != 1 else ''} "
              f"(checked {len(sources)} source files)")
        return 1
    print(f"Success: no issues found in {len(sources)} source files")
    return 0


@contextlib.contextmanager
def installed_layout() -> Iterator[Path]:
    """A temporary directory whose packages are laid out as installed: each root package a folder of links
    to its entries, each mapped package (``scanctl.drivers``) a link to its folder at its installed place."""
    mapping = package_dirs()
    with tempfile.TemporaryDirectory(prefix="scanctl-layout-") as tmp:
        base = Path(tmp)
        roots = {package.split(".")[0] for package in mapping}
        for root in roots:
            (base / root).mkdir()
            for entry in (ROOT / root).iterdir():
                if entry.name != "__pycache__":
                    (base / root / entry.name).symlink_to(entry)
        for package, folder in mapping.items():
            parts = package.split(".")
            if len(parts) != 2:  # a deeper mapping would need its parent made a folder of links too
                raise SystemExit(f"tools/check.py: package-dir {package!r}: only ROOT.NAME mappings are laid out")
            (base / parts[0] / parts[1]).symlink_to(folder, target_is_directory=True)
        yield base


def run_imports(args: list[str]) -> int:
    """import-linter's contracts (pyproject.toml [tool.importlinter]) on the installed layout."""
    from importlinter.cli import lint_imports

    unknown = [arg for arg in args if arg != "--verbose"]
    if unknown:
        print(f"tools/check.py imports: unknown argument {unknown[0]!r} (accepted: --verbose)", file=sys.stderr)
        return 2
    with installed_layout() as base, contextlib.chdir(base):  # lint-imports imports from its working directory
        return lint_imports(config_filename=str(PYPROJECT), no_cache=True, no_logo=True, verbose="--verbose" in args)


def import_cycles() -> list[list[str]]:
    """Every group of modules that import each other, directly or round a loop (imports made for type
    checking only do not count): Tarjan's strongly connected components of the installed layout's graph."""
    import grimp

    with installed_layout() as base, contextlib.chdir(base):
        sys.path.insert(0, str(base))
        try:
            graph = grimp.build_graph("scanctl", exclude_type_checking_imports=True)
        finally:
            sys.path.remove(str(base))
        edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in sorted(graph.modules)}
    return loops(edges)


def loops(edges: dict[str, list[str]]) -> list[list[str]]:
    """The groups of more than one node of ``edges`` (node -> the nodes it points at) that reach each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for root in edges:  # iterative, so the depth of the graph never meets Python's recursion limit
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def run_cycles(args: list[str]) -> int:
    """No import cycles between modules (issue 14's figure: 0)."""
    groups = import_cycles()
    print(f"{len(groups)} import cycles")
    for group in groups:
        print("  " + " <-> ".join(group))
    return 1 if groups else 0


CHECKS: dict[str, Callable[[list[str]], int]] = {"ruff": run_ruff, "mypy": run_mypy, "imports": run_imports,
                                                 "cycles": run_cycles}


def main(argv: list[str]) -> int:
    if argv and argv[0] in CHECKS:
        names, args = [argv[0]], argv[1:]
    elif not argv:
        names, args = list(CHECKS), []
    else:
        print(f"usage: tools/check.py [{'|'.join(CHECKS)}] [ARGS...]", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        start = time.perf_counter()
        print(f"== {name}", flush=True)
        if CHECKS[name](args) != 0:
            failed.append(name)
        print(f"== {name}: {time.perf_counter() - start:.1f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
